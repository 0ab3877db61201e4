"""Stop or checkpoint every rank of a training job after the same step.

Usage::

    import graceful_exit

    rank = graceful_exit.rank()               # this process's one Rank
    start = 1
    if rank.resume_path:                      # this rank's checkpoint of the committed step
        load_state(rank.resume_path)
        start = rank.resume_step + 1
    for step in range(start, steps + 1):
        train_one_step(step)
        if rank.should_stop(step):            # at every step boundary, right after `step`
            path = save_state(step)           # e.g. with graceful_exit.atomic_write(path) as f: ...
            rank.checkpointed(step, path)
            sys.exit(0)
        elif rank.should_checkpoint(step):    # right after should_stop, at every boundary too
            path = save_state(step)
            rank.checkpointed(step, path)     # and keep training

Public API (``__all__``):

- ``rank(control_file=None)`` returns the process's one `Rank`, creating it on the first call. A
  later call returns the same object; it raises ValueError when its `control_file` names another
  file than the one the Rank was created with (None names no file: it always matches).
- ``Rank(control_file=None)`` is the same accessor under the class's name: it never creates a second
  instance, and it never silently ignores a different argument either (ValueError, as `rank`).
- ``atomic_write(path, mode="wb", *, encoding=None)`` is a context manager for saving a
  checkpoint: ``with atomic_write(path) as f: torch.save(state, f)``. It writes a temporary file in
  the same directory, flushes and fsyncs it, renames it over `path` and fsyncs the directory; an
  exception inside the block removes the temporary and leaves `path` as it was. ``mode="w"``
  gives a text file (UTF-8 unless `encoding` says otherwise).

Under the `graceful` coordinator (GRACEFUL_CHANNEL_FD is set) the client speaks the rank protocol
of docs/PROTOCOL.md: a reader thread answers each stop or checkpoint request at once with the
rank's last boundary, and the doorbell (a shared page the coordinator writes before it sends a
request) makes the next boundary wait for that request even before the reader ran; `should_stop`
returns True exactly at the stop step T the coordinator chose,
and `should_checkpoint` exactly at the step T of a checkpoint without stopping, so all ranks save
after the same step and none is left alone in a collective. Anywhere else (plain `python`,
`torchrun`) `should_stop` returns True at the next boundary after SIGINT, SIGTERM, or a control
file requesting an exit ("graceful_exit.json" in the working directory unless
GRACEFUL_CONTROL_FILE or `control_file` says otherwise); a second SIGINT raises KeyboardInterrupt.

The control file is judged exactly as the coordinator judges it (MindSpore's convention): it
requests an exit iff it holds a JSON object whose "GracefulExit" member equals 1 the way Python's
``== 1`` does (1, 1.0, true). A missing member, 0, 2 or false request nothing, silently. Invalid
JSON (or NaN, Infinity, nesting deeper than 64, bytes that are not UTF-8), a top level that is not
an object, a flag of another type (a string, null, a list, an object), or a file that cannot be
used (empty, unreadable, larger than 1 MiB, a directory, a fifo) request nothing either, with one
warning on stderr per kind of problem until the file is valid or missing again.

Resuming: the coordinator sets GRACEFUL_RESUME_STEP and GRACEFUL_RESUME_PATH, read into
`resume_step` and `resume_path`:

- both None: nothing is committed; start from scratch.
- `resume_step` T and `resume_path` P: the job committed step T, and this rank's checkpoint of T
  is P (the path it confirmed): load it and continue at T + 1.
- `resume_step` T and `resume_path` None: the job committed step T, but this rank confirmed T
  with path None: it saved nothing of its own (say, rank 0 alone saves the model). Load the state
  of T from wherever the job keeps it and continue at T + 1; a rank that has nothing to load
  starts from scratch.
- `resume_path` without `resume_step` never comes from the coordinator.

Guarantees:

- While nothing is pending, `should_stop` makes no system call and costs well under a microsecond;
  `should_checkpoint` never takes a lock nor makes a system call.
- `should_stop` blocks only at the first boundary after the rank answered a stop or checkpoint
  request, and only until the coordinator sends T or goes away. Once it has returned True it keeps
  returning True.
- `should_checkpoint(step)` is True once per checkpoint round: at its T, or at the rank's next
  boundary when the rank was already past T. It is always False without the coordinator. A stop
  replaces a pending checkpoint round: that round never fires.
- `checkpointed` never raises because the coordinator is gone.
- The one Rank owns the channel: it removes GRACEFUL_CHANNEL_FD from os.environ and makes the
  descriptor non-inheritable so that child processes neither claim nor hold it. Likewise it maps
  the doorbell (GRACEFUL_DOORBELL_FD), closes that descriptor and removes the variable.

Python 3.9+, standard library only, fully typed (clean under ``mypy --strict``). Install it with
``pip install ./examples/python`` (distribution graceful-exit, module graceful_exit), or copy this
one file next to your script.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import json
import mmap
import os
import re
import signal
import socket
import stat
import sys
import threading
import time
from types import FrameType
from typing import (IO, Any, BinaryIO, Callable, Dict, Generator, List, Literal, NamedTuple,
                    Optional, Set, TextIO, Tuple, Union, cast, overload)


__all__ = ["Rank", "atomic_write", "rank"]

PROTOCOL = 1
MAX_LINE = 65536  # bytes, not counting the newline
MAX_INT = 2**53 - 1  # the largest step or id a message may carry (exact in every JSON reader)
DOORBELL_SIZE = 4096
# Seconds between two stats of the control file (standalone mode).
CONTROL_FILE_POLL = 0.5
# The coordinator's limits on a control file (Sources/Graceful/Process/ControlFileWatcher.swift,
# Sources/GracefulProtocol/JSONParser.swift).
CONTROL_FILE_MAX_SIZE = 1 << 20
CONTROL_FILE_MAX_DEPTH = 64
CONTROL_FILE_KEY = "GracefulExit"

StrPath = Union[str, "os.PathLike[str]"]
AnyPath = Union[str, bytes, "os.PathLike[str]", "os.PathLike[bytes]"]


class _Unknown(enum.Enum):
    """A request's T before its stop_at / checkpoint_at arrives."""

    UNKNOWN = 0


_UNKNOWN = _Unknown.UNKNOWN
_STOP = "stop"
_CHECKPOINT = "checkpoint"
_KIND_OF_TARGET = {"stop_at": _STOP, "checkpoint_at": _CHECKPOINT}
_NOSIGNAL: int = getattr(socket, "MSG_NOSIGNAL", 0)
# Without a doorbell, should_stop reads this constant zero instead.
_SILENT_BELL = b"\0"
# How long a boundary waits for the request a ring announced before letting the ring go.
_BELL_PATIENCE = 1.0

_instance: Optional[Rank] = None
_instance_lock = threading.Lock()


def _say(message: str) -> None:
    # os.write, not print: this also runs in signal handlers, which must not re-enter sys.stderr.
    try:
        os.write(2, ("graceful_exit: " + message + "\n").encode("utf-8", "replace"))
    except OSError:
        pass


def _env_int(name: str) -> Optional[int]:
    text = os.environ.get(name, "")
    if text == "":
        return None
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{name}={text!r} is not an integer") from None


def _env_int_or(name: str, default: int) -> int:
    value = _env_int(name)
    return default if value is None else value


def _is_step(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_INT


def _is_id(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_INT


def _resolve_control_file(control_file: Optional[StrPath]) -> str:
    path = control_file or os.environ.get("GRACEFUL_CONTROL_FILE") or "graceful_exit.json"
    return os.path.abspath(os.fspath(path))


# -- the one Rank ---------------------------------------------------------------------------------

def rank(control_file: Optional[StrPath] = None) -> Rank:
    """This process's one Rank, created on the first call (see the module docstring).

    `control_file` is the control file watched without the coordinator (default:
    $GRACEFUL_CONTROL_FILE, else "graceful_exit.json"; relative to the working directory). A later
    call returns the same Rank; with a `control_file` naming another file than the one in use it
    raises ValueError instead of ignoring the argument."""
    return Rank(control_file)


# -- atomic saves ---------------------------------------------------------------------------------

@overload
def atomic_write(path: StrPath, mode: Literal["wb"] = ..., *,
                 encoding: None = ...) -> contextlib.AbstractContextManager[BinaryIO]: ...


@overload
def atomic_write(path: StrPath, mode: Literal["w"], *,
                 encoding: Optional[str] = ...) -> contextlib.AbstractContextManager[TextIO]: ...


def atomic_write(path: StrPath, mode: str = "wb", *,
                 encoding: Optional[str] = None) -> contextlib.AbstractContextManager[IO[Any]]:
    """A context manager that saves a file atomically::

        with atomic_write(path) as f:       # binary; mode="w" for text (UTF-8 unless `encoding`)
            torch.save(state, f)

    The block writes a new temporary file in the directory of `path` (which must exist, as with
    open()); on leaving the block the file is flushed, fsynced, renamed over `path`, and the
    directory is fsynced: a crash leaves the old file or the new one, never a torn one. An exception
    inside the block removes the temporary file and leaves `path` untouched. The file gets the
    permissions open() would give it (0o666 less the umask)."""
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_write mode must be 'wb' or 'w', not {mode!r}")
    if mode == "wb" and encoding is not None:
        raise ValueError("atomic_write in binary mode takes no encoding")
    return _atomic_write(os.fspath(path), mode == "wb", encoding)


@contextlib.contextmanager
def _atomic_write(path: str, binary: bool,
                  encoding: Optional[str]) -> Generator[IO[Any], None, None]:
    directory, name = os.path.split(os.path.abspath(path))
    fd, temporary = _create_temporary(directory, name)
    try:
        f: IO[Any]
        if binary:
            f = os.fdopen(fd, "wb")
        else:
            f = os.fdopen(fd, "w", encoding=encoding or "utf-8")
    except BaseException:
        os.close(fd)
        _remove(temporary)
        raise
    try:
        with f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        _remove(temporary)
        raise
    _fsync_directory(directory)


def _create_temporary(directory: str, name: str) -> Tuple[int, str]:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    while True:
        temporary = os.path.join(directory, f".{name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
        try:
            return os.open(temporary, flags, 0o666), temporary
        except FileExistsError:
            continue


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _fsync_directory(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError as error:
        if error.errno not in (errno.EINVAL, errno.ENOTSUP):  # filesystems without directory fsync
            raise
    finally:
        os.close(fd)


# -- the control file -----------------------------------------------------------------------------

class _Verdict(NamedTuple):
    """What a read of the control file found: `exit` when it requests one; `problem` (a kind, as the
    coordinator's ControlFileProblem.Kind plus "unusable") and its text when it cannot count."""

    exit: bool
    problem: Optional[str] = None
    text: str = ""


_MISSING_OR_CLEAR = _Verdict(False)
_REQUESTS_EXIT = _Verdict(True)
_INVALID_JSON = "invalid-json"
_NOT_AN_OBJECT = "not-an-object"
_FLAG_OF_WRONG_TYPE = "flag-of-wrong-type"
_UNUSABLE = "unusable"
# A JSON string, or a bracket: what the nesting count looks at in a document already parsed.
_STRING_OR_BRACKET = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.DOTALL)


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


def _parse_int(text: str) -> Union[int, float]:
    # Beyond Python's digit limit for int() the coordinator reads a double, which is never 1 either.
    return int(text) if len(text) < 4000 else float(text)


def _nesting(text: str) -> int:
    depth = deepest = 0
    for match in _STRING_OR_BRACKET.finditer(text):
        token = match.group()
        if token in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif token in "]}":
            depth -= 1
    return deepest


def _judge_control_text(data: bytes) -> _Verdict:
    """The meaning of the control file's bytes, as ControlFileState(contents:) decides it."""
    if not data:
        return _Verdict(False, _INVALID_JSON, " is not valid JSON (the file is empty)")
    try:
        text = data.decode("utf-8")  # strict: no BOM or UTF-16 guessing, as json.loads(bytes) does
        document: object = json.loads(text, parse_constant=_refuse_constant, parse_int=_parse_int)
    except (ValueError, RecursionError) as error:  # UnicodeDecodeError is a ValueError
        return _Verdict(False, _INVALID_JSON, f" is not valid JSON ({error})")
    if _nesting(text) > CONTROL_FILE_MAX_DEPTH:
        return _Verdict(False, _INVALID_JSON,
                        f" is not valid JSON (nesting deeper than {CONTROL_FILE_MAX_DEPTH})")
    if not isinstance(document, dict):
        return _Verdict(False, _NOT_AN_OBJECT, " does not hold a JSON object")
    fields = cast(Dict[str, object], document)
    if CONTROL_FILE_KEY not in fields:
        return _MISSING_OR_CLEAR  # other tools' keys may share the file
    flag = fields[CONTROL_FILE_KEY]
    if isinstance(flag, (bool, int, float)):
        return _REQUESTS_EXIT if flag == 1 else _MISSING_OR_CLEAR
    kind = ("a string" if isinstance(flag, str) else "null" if flag is None
            else "a list" if isinstance(flag, list) else "an object")
    shown = json.dumps(flag)
    if len(shown) > 40:
        shown = shown[:37] + "..."
    return _Verdict(False, _FLAG_OF_WRONG_TYPE, f': "{CONTROL_FILE_KEY}" is {shown} ({kind}); '
                    "only 1, 1.0 or true request an exit")


def _file_kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a fifo"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "a special file"


def _read_control_file(path: str) -> _Verdict:
    """Reads and judges the control file now, as ControlFileWatcher.read() does. Never blocks: a
    fifo is opened non-blocking and refused."""
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as error:
        if error.errno in (errno.ENOENT, errno.ENOTDIR):
            return _MISSING_OR_CLEAR
        return _Verdict(False, _UNUSABLE, f" cannot be opened: {error.strerror}")
    try:
        try:
            info = os.fstat(fd)
        except OSError as error:
            return _Verdict(False, _UNUSABLE, f" cannot be examined: {error.strerror}")
        if not stat.S_ISREG(info.st_mode):
            return _Verdict(False, _UNUSABLE, f" is {_file_kind(info.st_mode)}, not a regular file")
        too_large = _Verdict(False, _UNUSABLE, f" is larger than {CONTROL_FILE_MAX_SIZE} bytes")
        if info.st_size > CONTROL_FILE_MAX_SIZE:
            return too_large
        chunks: List[bytes] = []
        size = 0
        while size <= CONTROL_FILE_MAX_SIZE:
            try:
                chunk = os.read(fd, 65536)
            except OSError as error:
                return _Verdict(False, _UNUSABLE, f" cannot be read: {error.strerror}")
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > CONTROL_FILE_MAX_SIZE:
            return too_large
        return _judge_control_text(b"".join(chunks))
    finally:
        os.close(fd)


class _ControlFile:
    """The control file of standalone mode: read when its identity changed, judged as the
    coordinator judges it, and each kind of problem reported once until the file is valid or
    missing again."""

    __slots__ = ("path", "_identity", "_checked", "_warned")

    def __init__(self, path: str) -> None:
        self.path = path
        self._identity: Optional[Tuple[int, ...]] = None
        self._checked = False
        self._warned: Set[str] = set()

    def _current_identity(self) -> Optional[Tuple[int, ...]]:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_dev, st.st_ino, st.st_size, st.st_mode, st.st_mtime_ns, st.st_ctime_ns)

    def changed(self) -> bool:
        """True when the file's identity (device, inode, size, mode, times) changed since the last
        call; the first call says True."""
        identity = self._current_identity()
        if not self._checked or identity != self._identity:
            self._checked = True
            self._identity = identity
            return True
        return False

    def evaluate(self, warn: Callable[[str], None] = _say) -> bool:
        """Reads the file and decides: True when it requests an exit."""
        verdict = _read_control_file(self.path)
        if verdict.problem is None:
            self._warned.clear()
            return verdict.exit
        if verdict.problem not in self._warned:
            self._warned.add(verdict.problem)
            warn(f"{self.path}{verdict.text}; ignoring it")
        return False


# -- the protocol ---------------------------------------------------------------------------------

class _Request:
    """The coordinator's current stop or checkpoint request."""

    __slots__ = ("kind", "id", "trigger", "answered", "target")

    def __init__(self, kind: str, request_id: int, trigger: Optional[str],
                 answered: Optional[int]) -> None:
        self.kind = kind
        self.id = request_id
        self.trigger = trigger
        self.answered = answered  # the position sent in the answer
        # T: an int, or None for "at the next boundary"; _UNKNOWN until the *_at message.
        self.target: Union[int, None, _Unknown] = _UNKNOWN


class Rank:
    """This process's view of the job; see the module docstring. ``Rank(control_file)`` is
    ``rank(control_file)``: it returns the process's one instance."""

    __slots__ = (
        "rank", "world_size", "local_rank", "resume_step", "resume_path",
        "_position", "_attention", "_stop_now", "_stopped", "_request", "_ckpt_due", "_stop_step",
        "_trigger", "_checkpoint_trigger", "_committed", "_cond", "_write_lock", "_sock",
        "_control_file", "_watched", "_bell", "_heard",
    )

    rank: int
    world_size: int
    local_rank: int
    resume_step: Optional[int]
    resume_path: Optional[str]

    def __new__(cls, control_file: Optional[StrPath] = None) -> Rank:
        global _instance
        with _instance_lock:
            current = _instance
            if current is None:
                current = super().__new__(cls)
                current._start(_resolve_control_file(control_file))
                _instance = current
            elif control_file is not None:
                wanted = _resolve_control_file(control_file)
                if wanted != current._control_file:
                    raise ValueError(
                        f"graceful_exit.rank(control_file={os.fspath(control_file)!r}): this "
                        f"process's Rank already exists and watches {current._control_file}; there "
                        "is one Rank per process, so call rank() without arguments to get it")
            return current

    def _start(self, control_file: str) -> None:
        self.rank = _env_int_or("RANK", 0)
        self.world_size = _env_int_or("WORLD_SIZE", 1)
        self.local_rank = _env_int_or("LOCAL_RANK", 0)
        self.resume_step = _env_int("GRACEFUL_RESUME_STEP")
        self.resume_path = os.environ.get("GRACEFUL_RESUME_PATH") or None
        # _position is stored at every boundary; _attention is the one flag the fast path tests,
        # set whenever anything (a request, end of file, a trigger) needs the slow path.
        # _stop_now: end of file, or a trigger in standalone mode. _ckpt_due: the step at which
        # should_checkpoint returns True; only the training loop's thread touches it.
        self._position: Optional[int] = None
        self._attention = False
        self._stop_now = False
        self._stopped = False
        self._request: Optional[_Request] = None
        self._ckpt_due: Optional[int] = None
        self._stop_step: Optional[int] = None
        self._trigger: Optional[str] = None
        self._checkpoint_trigger: Optional[str] = None
        self._committed: Optional[int] = None
        self._cond = threading.Condition(threading.Lock())
        self._write_lock = threading.Lock()
        self._control_file = control_file  # watched only in standalone mode
        self._watched: Optional[_ControlFile] = None
        self._sock: Optional[socket.socket] = None
        fd_text = os.environ.pop("GRACEFUL_CHANNEL_FD", None)
        if fd_text is not None:
            self._sock = self._open_channel(fd_text)
        # _bell[0] is the low byte of the doorbell's word; _heard, that byte of the latest request
        # the reader handled. They differ while a rung request has not been read yet.
        self._bell: Union[bytes, mmap.mmap] = _SILENT_BELL
        # Removed in any case: without a channel the variable is stale, its number names nothing of
        # ours, and children must not claim it either.
        bell_text = os.environ.pop("GRACEFUL_DOORBELL_FD", None)
        if self._sock is not None and bell_text is not None and sys.byteorder == "little":
            self._bell = self._map_doorbell(bell_text, self._sock.fileno())
        self._heard = self._bell[0]
        if self._sock is not None:
            self._send({"type": "hello", "protocol": PROTOCOL, "pid": os.getpid()})
            threading.Thread(target=self._read_channel, name="graceful-exit-channel",
                             daemon=True).start()
        else:
            self._start_standalone()

    # -- public API ---------------------------------------------------------------------------

    @property
    def coordinated(self) -> bool:
        """True when running under the coordinator."""
        return self._sock is not None

    @property
    def control_file(self) -> str:
        """The absolute path of the control file watched without the coordinator."""
        return self._control_file

    @property
    def stop_step(self) -> Optional[int]:
        """T once known, else None. Without a numeric T (standalone, stop_at null, coordinator
        gone) it is the boundary where should_stop returned True. A rank that was already past T
        stops later than stop_step."""
        return self._stop_step

    @property
    def trigger(self) -> Optional[str]:
        """What requested the stop ("SIGINT", "SIGTERM", "control-file", ..., or
        "channel-closed" when the coordinator went away), or None."""
        return self._trigger

    @property
    def checkpoint_trigger(self) -> Optional[str]:
        """What requested the checkpoint of the last round that should_checkpoint returned True
        for ("periodic", "SIGUSR2", ...), or None."""
        return self._checkpoint_trigger

    @property
    def committed_step(self) -> Optional[int]:
        """The last step the coordinator reported committed, or None."""
        return self._committed

    def should_stop(self, step: int) -> bool:
        """Call at every step boundary, right after finishing `step`. True: save, call
        checkpointed(step, path), exit."""
        self._position = step
        if self._attention or self._bell[0] != self._heard:
            return self._decide(step)
        return False

    def should_checkpoint(self, step: int) -> bool:
        """Call right after should_stop(step) returned False, at every boundary. True: save, call
        checkpointed(step, path), and keep training."""
        if self._ckpt_due == step:
            self._ckpt_due = None
            return True
        return False

    def checkpointed(self, step: int, path: Optional[AnyPath]) -> None:
        """Report that the state after `step` was saved at `path` (str, bytes, path-like, or None
        when this rank saved nothing of its own). A name that is not UTF-8 travels exactly
        (docs/PROTOCOL.md, "Paths"). Raises ValueError for a step outside 0..2**53-1, or an empty
        path or one holding NUL: no file has it."""
        step = int(step)
        if not 0 <= step <= MAX_INT:
            raise ValueError(f"step {step} is outside 0..{MAX_INT}")
        name: Optional[str] = None
        if path is not None:
            name = os.fsdecode(path)  # bytes that are not UTF-8 become lone surrogates
            if name == "" or "\0" in name:
                raise ValueError(f"{name!r} is not a path")
        if self._sock is not None:
            self._send({"type": "checkpointed", "step": step, "path": name})

    # -- the decision -------------------------------------------------------------------------

    def _decide(self, step: int) -> bool:
        give_up: Optional[float] = None
        with self._cond:
            while True:
                if self._stopped:
                    return True
                if self._stop_now:
                    # A stop's T stays stop_step when this boundary is T or past it (rule 5).
                    if self._stop_step is None or step < self._stop_step:
                        self._stop_step = step
                    self._stopped = True
                    return True
                rung = self._bell[0]
                if rung != self._heard:
                    # A request is on its way on the channel: wait for it at this boundary. A ring
                    # whose message never comes (not meant for this rank) is let go.
                    if give_up is None:
                        give_up = time.monotonic() + _BELL_PATIENCE
                    remaining = give_up - time.monotonic()
                    if remaining > 0:
                        self._cond.wait(remaining)
                    else:
                        self._heard = rung
                    continue
                request = self._request
                if request is None:
                    # Nothing else needs the slow path: the stop triggers were tested above.
                    self._attention = False
                    return False
                target = request.target
                if target is _UNKNOWN:
                    answered = request.answered
                    if answered is not None and step <= answered:
                        return False
                    # Rule 3: the first boundary after the answered one waits for T. T >= every
                    # answered position + 1, so no other rank needs this one to go further.
                    self._cond.wait()
                    continue
                if target is not None and step < target:
                    return False
                # step == T, or past T (rule 5): either way this boundary is the one to save.
                if request.kind == _STOP:
                    if target is None:
                        self._stop_step = step
                    self._stopped = True
                    return True
                self._ckpt_due = step
                self._checkpoint_trigger = request.trigger
                self._request = None  # the round is over: the next pass clears the flag

    # -- coordinator mode ---------------------------------------------------------------------

    @staticmethod
    def _map_doorbell(fd_text: str, channel_fd: int) -> Union[bytes, mmap.mmap]:
        """Maps the doorbell's memory file read-only, then closes its descriptor (mmap keeps its own,
        close-on-exec). Only speed is lost when it cannot be used: requests still come on the
        channel."""
        try:
            fd = int(fd_text)
        except ValueError:
            return _SILENT_BELL
        if fd <= 2 or fd == channel_fd:
            return _SILENT_BELL
        try:
            # A mapping beyond the file's end would fault at the first read.
            if os.fstat(fd).st_size < DOORBELL_SIZE:
                return _SILENT_BELL
            return mmap.mmap(fd, DOORBELL_SIZE, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
        except (OSError, ValueError):
            return _SILENT_BELL
        finally:
            try:
                os.close(fd)
            except OSError:
                pass

    @staticmethod
    def _open_channel(fd_text: str) -> Optional[socket.socket]:
        try:
            sock = socket.socket(fileno=int(fd_text))
        except (ValueError, OSError) as error:
            _say(f"GRACEFUL_CHANNEL_FD={fd_text!r} is not a usable socket ({error}); "
                 "running standalone")
            return None
        sock.settimeout(None)  # ignore socket.setdefaulttimeout(): the reader blocks by design
        sock.set_inheritable(False)
        return sock

    def _send(self, message: Dict[str, object]) -> None:
        sock = self._sock
        if sock is None:
            return
        data = (json.dumps(message, separators=(",", ":")) + "\n").encode()
        try:
            with self._write_lock:
                sock.sendall(data, _NOSIGNAL)
        except OSError:
            pass  # the coordinator is gone; the reader sees end of file and stops the rank

    def _read_channel(self) -> None:
        sock = self._sock
        assert sock is not None
        pending = b""
        discarding = False  # inside a line longer than MAX_LINE
        while True:
            try:
                chunk = sock.recv(65536)
            except OSError:
                chunk = b""
            if not chunk:
                break
            pending += chunk
            while True:
                end = pending.find(b"\n")
                if end < 0:
                    break
                line, pending = pending[:end], pending[end + 1:]
                if not discarding and len(line) <= MAX_LINE:
                    self._handle(line)
                discarding = False
            if len(pending) > MAX_LINE:
                pending = b""
                discarding = True
        with self._cond:
            if self._trigger is None:
                self._trigger = "channel-closed"
            self._stop_now = True
            self._attention = True
            self._cond.notify_all()

    def _handle(self, line: bytes) -> None:
        try:
            document: object = json.loads(line)
        except (ValueError, RecursionError):
            return
        if not isinstance(document, dict):
            return
        message = cast(Dict[str, object], document)
        kind = message.get("type")
        if not isinstance(kind, str):
            return
        if kind == _STOP or kind == _CHECKPOINT:
            request_id = message.get("id")
            if not isinstance(request_id, int) or not _is_id(request_id):
                return
            trigger = message.get("trigger")
            if not isinstance(trigger, str):
                return  # a request without its trigger is not a valid message
            with self._cond:
                if self._bell is not _SILENT_BELL:
                    # Without a doorbell _heard stays 0, or every boundary would await a ring.
                    self._heard = request_id & 0xFF
                # A boundary waiting for the doorbell's request re-checks, whatever becomes of it.
                self._cond.notify_all()
                current = self._request
                if kind == _CHECKPOINT and current is not None and current.kind == _STOP:
                    return  # a checkpoint never replaces a stop (and gets no answer)
                if kind == _STOP:
                    if self._trigger is None:
                        self._trigger = trigger
                    if not self._stopped:  # once stopped, stop_step stays what it was
                        self._stop_step = None  # a replaced stop's T no longer holds
                # Raise the flag before reading the position: should_stop stores the position
                # before testing the flag, so a boundary that missed the flag is in the answer.
                self._attention = True
                position = self._position
                # Any older request is forgotten, with its T; a boundary waiting for that T
                # re-decides under this one.
                self._request = _Request(kind, request_id, trigger, position)
                self._cond.notify_all()
            self._send({"type": "position", "id": request_id, "step": position})
        elif kind in _KIND_OF_TARGET:
            t = message.get("step", _UNKNOWN)  # absent is not null
            if _is_id(message.get("id")) and (t is None or (isinstance(t, int) and _is_step(t))):
                with self._cond:
                    request = self._request
                    # Only T of the current request counts: an *_at of a forgotten request, or
                    # of the other kind, is ignored.
                    if (request is None or request.id != message.get("id")
                            or request.kind != _KIND_OF_TARGET[kind]):
                        return
                    request.target = t
                    if request.kind == _STOP and t is not None and not self._stopped:
                        self._stop_step = t
                    self._cond.notify_all()
        elif kind == "committed":
            step = message.get("step")
            if isinstance(step, int) and _is_step(step):
                self._committed = step

    # -- standalone mode ----------------------------------------------------------------------

    def _start_standalone(self) -> None:
        self._watched = _ControlFile(self._control_file)
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                # An ignored signal stays ignored, as Python itself leaves it (nohup, background).
                if signal.getsignal(signum) is not signal.SIG_IGN:
                    signal.signal(signum, self._on_signal)
        self._check_control_file()  # an exit requested already counts at the first boundary
        threading.Thread(target=self._watch_control_file, name="graceful-exit-control-file",
                         daemon=True).start()

    def _request_stop(self, trigger: str) -> None:
        # No lock: this runs in signal handlers, possibly while the main thread holds _cond.
        if self._trigger is None:
            self._trigger = trigger
        self._stop_now = True
        self._attention = True

    def _on_signal(self, signum: int, frame: Optional[FrameType]) -> None:
        if signum == signal.SIGINT and self._stop_now:
            raise KeyboardInterrupt
        name = signal.Signals(signum).name
        self._request_stop(name)
        hint = " (press Ctrl+C again to abort)" if signum == signal.SIGINT else ""
        _say(f"{name} received: stopping at the next step boundary{hint}")

    def _watch_control_file(self) -> None:
        while not self._stop_now:
            time.sleep(CONTROL_FILE_POLL)
            self._check_control_file()

    def _check_control_file(self) -> None:
        watched = self._watched
        if watched is None or not watched.changed():
            return
        if watched.evaluate(_say):
            self._request_stop("control-file")
            _say(f"{watched.path} requests an exit: stopping at the next step boundary")
