"""Helpers shared by the Python tests: processes whose output is awaited line by line, the
coordinator's end of a rank's channel, and a test case driving a rank through a driver program
(fake_rank.py, or the Swift client's driver)."""

import fcntl
import json
import mmap
import os
import queue
import socket
import subprocess
import sys
import tempfile
import threading
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
EXAMPLES = os.path.join(ROOT, "examples", "python")
FAKE_RANK = os.path.join(HERE, "fake_rank.py")
TRAIN = os.path.join(EXAMPLES, "train.py")

# Seconds any single wait may take: a guard against a hung test, never a synchronisation. Generous:
# four PyTorch ranks importing torch on 2 busy CPUs take most of a minute.
GUARD = 120.0

_JOB_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def clean_env(**extra):
    """The test's environment without anything that would tell a rank it is part of a job."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("GRACEFUL_") and key not in _JOB_VARIABLES}
    env["PYTHONUNBUFFERED"] = "1"
    env.update({key: str(value) for key, value in extra.items()})
    return env


class Lines:
    """Pumps a stream into a queue from a thread, so a test can await one line with a guard."""

    def __init__(self, stream):
        self.queue = queue.Queue()
        self.all = []
        self.thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self.thread.start()

    def _pump(self, stream):
        for line in stream:
            self.all.append(line)
            self.queue.put(line)
        self.queue.put(None)

    def next(self, timeout=GUARD):
        """The next line, or None at end of stream; raises queue.Empty after `timeout`."""
        return self.queue.get(timeout=timeout)

    def text(self):
        """Everything read, once the stream has ended."""
        self.thread.join(GUARD)
        return "".join(self.all)


class Channel:
    """The coordinator's end of a rank's channel."""

    def __init__(self, sock):
        self.sock = sock
        self.sock.settimeout(GUARD)
        self.pending = b""

    def send(self, message):
        self.sock.sendall(json.dumps(message).encode() + b"\n")

    def send_raw(self, data):
        self.sock.sendall(data)

    def receive(self):
        while b"\n" not in self.pending:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("the rank closed its channel")
            self.pending += chunk
        line, self.pending = self.pending.split(b"\n", 1)
        return json.loads(line)

    def close(self):
        self.sock.close()


# Not in Python's fcntl module: <linux/fcntl.h>.
F_SEAL_FUTURE_WRITE = 0x0010


class Doorbell:
    """The doorbell as the coordinator makes it: a sealed memory file the test writes through its
    own mapping, handed to the rank as a descriptor."""

    def __init__(self, size=4096):
        self.fd = os.memfd_create("graceful-doorbell", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        os.ftruncate(self.fd, size)
        self.page = mmap.mmap(self.fd, size, flags=mmap.MAP_SHARED,
                              prot=mmap.PROT_READ | mmap.PROT_WRITE) if size else None
        fcntl.fcntl(self.fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW
                    | F_SEAL_FUTURE_WRITE | fcntl.F_SEAL_SEAL)

    def ring(self, request_id):
        self.page[0:4] = request_id.to_bytes(4, sys.byteorder)

    def close(self):
        if self.page is not None:
            self.page.close()
        os.close(self.fd)


class Child:
    """A process with stdin, stdout and stderr piped and, with `channel`, a channel as the
    coordinator gives it. Killed and reaped when the test ends."""

    def __init__(self, argv, test, channel=True, env=None, cwd=None, doorbell=None):
        extra = dict(env or {})
        pass_fds = ()
        ours = theirs = None
        if channel:
            ours, theirs = socket.socketpair()
            extra["GRACEFUL_CHANNEL_FD"] = theirs.fileno()
            pass_fds = (theirs.fileno(),)
        if doorbell is not None:
            extra["GRACEFUL_DOORBELL_FD"] = doorbell.fd
            pass_fds += (doorbell.fd,)
        self.process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True,
                                        env=clean_env(**extra), cwd=cwd, pass_fds=pass_fds)
        if theirs is not None:
            theirs.close()
        self.stdout = Lines(self.process.stdout)
        self.stderr = Lines(self.process.stderr)
        self.channel = Channel(ours) if ours else None
        test.addCleanup(self._reap)

    def write(self, line):
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def wait(self):
        """Closes stdin and returns the exit status."""
        self.process.stdin.close()
        return self.process.wait(GUARD)

    def _reap(self):
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(GUARD)
        self.stdout.thread.join(GUARD)
        self.stderr.thread.join(GUARD)
        if not self.process.stdin.closed:
            self.process.stdin.close()
        self.process.stdout.close()
        self.process.stderr.close()
        if self.channel is not None:
            self.channel.close()


def python(*args):
    return [sys.executable, *args]


class RankTestCase(unittest.TestCase):
    """Drives a rank process: a driver program (fake_rank.py unless `driver_argv` says otherwise)
    whose training loop the test steps through stdin, reporting one JSON object per line."""

    def setUp(self):
        directory = tempfile.TemporaryDirectory()
        self.addCleanup(directory.cleanup)
        self.cwd = directory.name

    def driver_argv(self, *args):
        return python(FAKE_RANK, *args)

    def start(self, *args, channel=True, env=None, doorbell=None):
        rank = Child(self.driver_argv(*args), self, channel=channel, env=env, cwd=self.cwd,
                     doorbell=doorbell)
        rank.ready = self.event(rank)["ready"]
        return rank

    def event(self, rank, timeout=GUARD):
        try:
            line = rank.stdout.next(timeout)
        except queue.Empty:
            self.fail(f"no report from the rank within {timeout} s")
        if line is None:
            self.fail(f"the rank exited ({rank.process.wait(GUARD)}): {rank.stderr.text()}")
        return json.loads(line)

    def expect(self, rank, **fields):
        event = self.event(rank)
        self.assertEqual({key: event.get(key) for key in fields}, fields, event)
        return event

    def expect_boundaries(self, rank, first, last, stop_at=None, checkpoint_at=None):
        """Awaits the reports of boundaries first..last; should_stop is True only at `stop_at`
        and should_checkpoint only at `checkpoint_at` (if any). A checkpoint, if any, is last."""
        for step in range(first, last + 1):
            self.expect(rank, at=step)
            self.expect(rank, boundary=step, stop=step == stop_at,
                        checkpoint=step == checkpoint_at)

    def run_steps(self, rank, first, count):
        rank.write(str(count))
        self.expect_boundaries(rank, first, first + count - 1)

    def expect_no_event(self, rank, seconds):
        try:
            line = rank.stdout.next(seconds)
        except queue.Empty:
            return
        self.fail(f"the rank reported {line!r} while it should be waiting")

    def expect_exit(self, rank, status=0):
        self.assertEqual(rank.wait(), status, rank.stderr.text())

    def doorbell(self, size=4096):
        """A doorbell as the coordinator makes it (a sealed memory file), closed at the end."""
        bell = Doorbell(size)
        self.addCleanup(bell.close)
        return bell

    def write_control_file(self, content, name="graceful_exit.json"):
        """Replaces the file in one rename, so the rank never reads half of it."""
        path = os.path.join(self.cwd, name)
        with open(path + ".tmp", "w") as f:
            f.write(content)
        os.replace(path + ".tmp", path)
        return path
