"""Stop or checkpoint every rank of a training job after the same step.

Usage::

    from graceful_exit import Rank

    rank = Rank()
    start = 1
    if rank.resume_path:                      # set when `graceful` committed a checkpoint
        load_state(rank.resume_path)
        start = rank.resume_step + 1
    for step in range(start, steps + 1):
        train_one_step(step)
        if rank.should_stop(step):            # at every step boundary, right after `step`
            path = save_state(step)
            rank.checkpointed(step, path)
            sys.exit(0)
        elif rank.should_checkpoint(step):    # right after should_stop, at every boundary too
            path = save_state(step)
            rank.checkpointed(step, path)     # and keep training

Under the `graceful` coordinator (GRACEFUL_CHANNEL_FD is set) the client speaks the rank protocol
of docs/PROTOCOL.md: a reader thread answers each stop or checkpoint request at once with the
rank's last boundary, and the doorbell (a shared page the coordinator writes before it sends a
request) makes the next boundary wait for that request even before the reader ran; `should_stop`
returns True exactly at the stop step T the coordinator chose,
and `should_checkpoint` exactly at the step T of a checkpoint without stopping, so all ranks save
after the same step and none is left alone in a collective. Anywhere else (plain `python`,
`torchrun`) `should_stop` returns True at the next boundary after SIGINT, SIGTERM, or a control
file holding {"GracefulExit": 1} (MindSpore's convention; "graceful_exit.json" in the working
directory unless GRACEFUL_CONTROL_FILE or the constructor says otherwise); a second SIGINT raises
KeyboardInterrupt.

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
- `Rank()` is a per-process singleton (later calls return the first instance and ignore their
  arguments): it owns the channel, and removes GRACEFUL_CHANNEL_FD from os.environ and makes the
  descriptor non-inheritable so that child processes neither claim nor hold it. Likewise it maps
  the doorbell (GRACEFUL_DOORBELL_FD), closes that descriptor and removes the variable.

Python 3.9+, standard library only.
"""

import json
import mmap
import os
import signal
import socket
import sys
import threading
import time

__all__ = ["Rank"]

PROTOCOL = 1
MAX_LINE = 65536  # bytes, not counting the newline
MAX_INT = 2**53 - 1  # the largest step or id a message may carry (exact in every JSON reader)
DOORBELL_SIZE = 4096
# Seconds between two stats of the control file (standalone mode).
CONTROL_FILE_POLL = 0.5

_UNKNOWN = object()  # a request's T before its stop_at / checkpoint_at arrives
_STOP = "stop"
_CHECKPOINT = "checkpoint"
_KIND_OF_TARGET = {"stop_at": _STOP, "checkpoint_at": _CHECKPOINT}
_NOSIGNAL = getattr(socket, "MSG_NOSIGNAL", 0)
# Without a doorbell, should_stop reads this constant zero instead.
_SILENT_BELL = b"\0"
# How long a boundary waits for the request a ring announced before letting the ring go.
_BELL_PATIENCE = 1.0

_instance = None
_instance_lock = threading.Lock()


def _say(message):
    # os.write, not print: this also runs in signal handlers, which must not re-enter sys.stderr.
    try:
        os.write(2, ("graceful_exit: " + message + "\n").encode("utf-8", "replace"))
    except OSError:
        pass


def _env_int(name, default):
    text = os.environ.get(name, "")
    if text == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{name}={text!r} is not an integer") from None


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _is_step(value):
    return _is_int(value) and 0 <= value <= MAX_INT


def _is_id(value):
    return _is_int(value) and 1 <= value <= MAX_INT


class _Request:
    """The coordinator's current stop or checkpoint request."""

    __slots__ = ("kind", "id", "trigger", "answered", "target")

    def __init__(self, kind, request_id, trigger, answered):
        self.kind = kind
        self.id = request_id
        self.trigger = trigger
        self.answered = answered  # the position sent in the answer
        self.target = _UNKNOWN    # T: an int, or None for "at the next boundary"


class Rank:
    """This process's view of the job; see the module docstring."""

    __slots__ = (
        "rank", "world_size", "local_rank", "resume_step", "resume_path",
        "_position", "_attention", "_stop_now", "_stopped", "_request", "_ckpt_due", "_stop_step",
        "_trigger", "_checkpoint_trigger", "_committed", "_cond", "_write_lock", "_sock",
        "_control_file", "_control_key", "_warned", "_bell", "_heard",
    )

    def __new__(cls, control_file=None):
        global _instance
        with _instance_lock:
            if _instance is None:
                self = super().__new__(cls)
                self._start(control_file)
                _instance = self
            return _instance

    def _start(self, control_file):
        self.rank = _env_int("RANK", 0)
        self.world_size = _env_int("WORLD_SIZE", 1)
        self.local_rank = _env_int("LOCAL_RANK", 0)
        self.resume_step = _env_int("GRACEFUL_RESUME_STEP", None)
        self.resume_path = os.environ.get("GRACEFUL_RESUME_PATH") or None
        # _position is stored at every boundary; _attention is the one flag the fast path tests,
        # set whenever anything (a request, end of file, a trigger) needs the slow path.
        # _stop_now: end of file, or a trigger in standalone mode. _ckpt_due: the step at which
        # should_checkpoint returns True; only the training loop's thread touches it.
        self._position = None
        self._attention = False
        self._stop_now = False
        self._stopped = False
        self._request = None
        self._ckpt_due = None
        self._stop_step = None
        self._trigger = None
        self._checkpoint_trigger = None
        self._committed = None
        self._cond = threading.Condition(threading.Lock())
        self._write_lock = threading.Lock()
        self._warned = set()
        self._control_file = None
        self._control_key = None
        self._sock = None
        fd_text = os.environ.pop("GRACEFUL_CHANNEL_FD", None)
        if fd_text is not None:
            self._sock = self._open_channel(fd_text)
        # _bell[0] is the low byte of the doorbell's word; _heard, that byte of the latest request
        # the reader handled. They differ while a rung request has not been read yet.
        self._bell = _SILENT_BELL
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
            self._start_standalone(control_file)

    # -- public API ---------------------------------------------------------------------------

    @property
    def coordinated(self):
        """True when running under the coordinator."""
        return self._sock is not None

    @property
    def stop_step(self):
        """T once known, else None. Without a numeric T (standalone, stop_at null, coordinator
        gone) it is the boundary where should_stop returned True. A rank that was already past T
        stops later than stop_step."""
        return self._stop_step

    @property
    def trigger(self):
        """What requested the stop ("SIGINT", "SIGTERM", "control-file", ..., or
        "channel-closed" when the coordinator went away), or None."""
        return self._trigger

    @property
    def checkpoint_trigger(self):
        """What requested the checkpoint of the last round that should_checkpoint returned True
        for ("periodic", "SIGUSR2", ...), or None."""
        return self._checkpoint_trigger

    @property
    def committed_step(self):
        """The last step the coordinator reported committed, or None."""
        return self._committed

    def should_stop(self, step):
        """Call at every step boundary, right after finishing `step`. True: save, call
        checkpointed(step, path), exit."""
        self._position = step
        if self._attention or self._bell[0] != self._heard:
            return self._decide(step)
        return False

    def should_checkpoint(self, step):
        """Call right after should_stop(step) returned False, at every boundary. True: save, call
        checkpointed(step, path), and keep training."""
        if self._ckpt_due == step:
            self._ckpt_due = None
            return True
        return False

    def checkpointed(self, step, path):
        """Report that the state after `step` was saved at `path` (str, bytes, path-like or None).
        A name that is not UTF-8 travels exactly (docs/PROTOCOL.md, "Paths"). Raises ValueError
        for a step outside 0..2**53-1, or an empty path or one holding NUL: no file has it."""
        step = int(step)
        if not 0 <= step <= MAX_INT:
            raise ValueError(f"step {step} is outside 0..{MAX_INT}")
        if path is not None:
            path = os.fsdecode(path)  # bytes that are not UTF-8 become lone surrogates
            if path == "" or "\0" in path:
                raise ValueError(f"{path!r} is not a path")
        if self._sock is not None:
            self._send({"type": "checkpointed", "step": step, "path": path})

    # -- the decision -------------------------------------------------------------------------

    def _decide(self, step):
        give_up = None
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
    def _map_doorbell(fd_text, channel_fd):
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

    def _open_channel(self, fd_text):
        try:
            sock = socket.socket(fileno=int(fd_text))
        except (ValueError, OSError) as error:
            _say(f"GRACEFUL_CHANNEL_FD={fd_text!r} is not a usable socket ({error}); "
                 "running standalone")
            return None
        sock.settimeout(None)  # ignore socket.setdefaulttimeout(): the reader blocks by design
        sock.set_inheritable(False)
        return sock

    def _send(self, message):
        data = (json.dumps(message, separators=(",", ":")) + "\n").encode()
        try:
            with self._write_lock:
                self._sock.sendall(data, _NOSIGNAL)
        except OSError:
            pass  # the coordinator is gone; the reader sees end of file and stops the rank

    def _read_channel(self):
        pending = b""
        discarding = False  # inside a line longer than MAX_LINE
        while True:
            try:
                chunk = self._sock.recv(65536)
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

    def _handle(self, line):
        try:
            message = json.loads(line)
        except (ValueError, RecursionError):
            return
        if not isinstance(message, dict):
            return
        kind = message.get("type")
        if kind in (_STOP, _CHECKPOINT):
            request_id = message.get("id")
            if not _is_id(request_id):
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
            if _is_id(message.get("id")) and (t is None or _is_step(t)):
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
            if _is_step(step):
                self._committed = step

    # -- standalone mode ----------------------------------------------------------------------

    def _start_standalone(self, control_file):
        path = control_file or os.environ.get("GRACEFUL_CONTROL_FILE") or "graceful_exit.json"
        self._control_file = os.path.abspath(os.fspath(path))
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                # An ignored signal stays ignored, as Python itself leaves it (nohup, background).
                if signal.getsignal(signum) is not signal.SIG_IGN:
                    signal.signal(signum, self._on_signal)
        self._check_control_file()  # an exit requested already counts at the first boundary
        threading.Thread(target=self._watch_control_file, name="graceful-exit-control-file",
                         daemon=True).start()

    def _request_stop(self, trigger):
        # No lock: this runs in signal handlers, possibly while the main thread holds _cond.
        if self._trigger is None:
            self._trigger = trigger
        self._stop_now = True
        self._attention = True

    def _on_signal(self, signum, frame):
        if signum == signal.SIGINT and self._stop_now:
            raise KeyboardInterrupt
        name = signal.Signals(signum).name
        self._request_stop(name)
        hint = " (press Ctrl+C again to abort)" if signum == signal.SIGINT else ""
        _say(f"{name} received: stopping at the next step boundary{hint}")

    def _warn_once(self, problem, message):
        if problem not in self._warned:
            self._warned.add(problem)
            _say(message)

    def _watch_control_file(self):
        while not self._stop_now:
            time.sleep(CONTROL_FILE_POLL)
            self._check_control_file()

    def _check_control_file(self):
        path = self._control_file
        try:
            st = os.stat(path)
        except FileNotFoundError:
            self._control_key = None
            return
        except OSError as error:
            self._warn_once(("stat", error.errno), f"cannot stat {path}: {error.strerror}")
            return
        key = (st.st_ino, st.st_size, st.st_mtime_ns)
        if key == self._control_key:
            return
        self._control_key = key
        try:
            with open(path, "rb") as f:
                content = json.load(f)
        except OSError as error:
            self._control_key = None  # try again at the next poll
            self._warn_once(("read", error.errno), f"cannot read {path}: {error.strerror}")
            return
        except (ValueError, RecursionError):
            self._warn_once("json", f"{path} is not valid JSON; ignoring it")
            return
        if not isinstance(content, dict):
            self._warn_once("top", f"{path} does not hold a JSON object; ignoring it")
            return
        if "GracefulExit" not in content:
            self._warn_once("key", f'{path} has no "GracefulExit" key; ignoring it')
            return
        value = content["GracefulExit"]
        if value == 1:  # MindSpore's test: 1, 1.0 and true request an exit
            self._request_stop("control-file")
            _say(f"{path} requests an exit: stopping at the next step boundary")
        elif not (isinstance(value, (int, float)) and value == 0):
            shown = json.dumps(value)
            self._warn_once(("value", shown),
                            f'{path}: "GracefulExit" is {shown}; only 1 requests an exit')
