"""Tests of examples/python/train.py and torch_ddp.py: determinism, and a coordinated stop and
resume of two ranks with the test playing the coordinator. The torch_ddp.py tests that need
PyTorch are skipped where it is not installed."""

import importlib.util
import json
import os
import queue
import socket
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import support  # noqa: E402

TORCH_DDP = os.path.join(support.EXAMPLES, "torch_ddp.py")
HAVE_TORCH = importlib.util.find_spec("torch") is not None


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class JobTestCase(unittest.TestCase):
    def setUp(self):
        directory = tempfile.TemporaryDirectory()
        self.addCleanup(directory.cleanup)
        self.root = directory.name

    def directory(self, name):
        path = os.path.join(self.root, name)
        os.makedirs(path)
        return path

    def start(self, script, cwd, *args, channel=False, env=None):
        return support.Child(support.python(script, "--step-time", "0", *args), self,
                             channel=channel, env=env, cwd=cwd)

    def job(self, script, cwd, world_size, *args, channel=False, env_of=lambda rank: {}):
        port = free_port()
        return [self.start(script, cwd, *args, channel=channel,
                           env={"RANK": rank, "LOCAL_RANK": rank, "WORLD_SIZE": world_size,
                                "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, **env_of(rank)})
                for rank in range(world_size)]

    def finish(self, child):
        self.assertEqual(child.wait(), 0, child.stderr.text())

    def await_line(self, child, prefix):
        while True:
            try:
                line = child.stdout.next()
            except queue.Empty:
                self.fail(f"no line starting with {prefix!r} within {support.GUARD} s")
            if line is None:
                self.fail(f"the rank exited before printing {prefix!r}: {child.stderr.text()}")
            if line.startswith(prefix):
                return

    def stop_resume_and_whole_run(self, script, extension):
        """Runs two ranks of `script`, stops them through their channels as the coordinator
        would, resumes them from their checkpoints, and runs the whole job again elsewhere without
        a stop. Returns the directory of the stopped-and-resumed run, the checkpoints of the stop
        in it, and the directory of the whole run."""
        args = ("--steps", "300", "--step-time", "0.002", "--log-every", "50",
                "--checkpoint-dir", "ckpt")
        stopped = self.directory("stopped")
        ranks = self.job(script, stopped, 2, *args, channel=True)
        for child in ranks:
            self.assertEqual(child.channel.receive()["type"], "hello")
        self.await_line(ranks[0], "step 50:")

        for child in ranks:
            child.channel.send({"type": "stop", "id": 1, "trigger": "SIGINT"})
        positions = [child.channel.receive() for child in ranks]
        self.assertEqual([p["type"] for p in positions], ["position"] * 2)
        stop_step = 1 + max(p["step"] for p in positions)
        self.assertLess(stop_step, 300)
        for child in ranks:
            child.channel.send({"type": "stop_at", "id": 1, "step": stop_step})
        paths = []
        for rank, child in enumerate(ranks):
            path = f"ckpt/rank{rank}/step_{stop_step}.{extension}"
            self.assertEqual(child.channel.receive(),
                             {"type": "checkpointed", "step": stop_step, "path": path})
            self.finish(child)
            paths.append(path)

        resumed = self.job(script, stopped, 2, *args, env_of=lambda rank: {
            "GRACEFUL_RESUME_STEP": stop_step, "GRACEFUL_RESUME_PATH": paths[rank]})
        whole = self.directory("whole")
        for child in resumed + self.job(script, whole, 2, *args):
            self.finish(child)
        return stopped, [os.path.join(stopped, path) for path in paths], whole


def read(path):
    with open(path, "rb") as f:
        return f.read()


class TrainTests(JobTestCase):
    def test_standalone_runs_are_byte_identical(self):
        finals = []
        for name in ("first", "second"):
            cwd = self.directory(name)
            child = self.start(support.TRAIN, cwd, "--steps", "30", "--checkpoint-dir", "ckpt")
            self.finish(child)
            self.assertIn("finished 30 steps", child.stdout.text())
            finals.append(read(os.path.join(cwd, "ckpt", "final_rank0.json")))
        self.assertEqual(finals[0], finals[1])
        state = json.loads(finals[0])
        self.assertEqual((state["step"], state["rank"], state["world_size"]), (30, 0, 1))
        self.assertEqual(len(state["weights"]), 16)

    def test_resume_from_a_checkpoint_of_another_step_fails_clearly(self):
        cwd = self.directory("run")
        self.finish(self.start(support.TRAIN, cwd, "--steps", "5", "--checkpoint-dir", "ckpt"))
        child = self.start(support.TRAIN, cwd, "--steps", "10", env={
            "GRACEFUL_RESUME_STEP": 4, "GRACEFUL_RESUME_PATH": "ckpt/final_rank0.json"})
        self.assertEqual(child.wait(), 1)
        self.assertIn("holds step 5, but GRACEFUL_RESUME_STEP is 4", child.stderr.text())

    def test_coordinated_stop_and_resume_match_an_uninterrupted_run(self):
        stopped, checkpoints, whole = self.stop_resume_and_whole_run(support.TRAIN, "json")
        states = [json.loads(read(path)) for path in checkpoints]
        self.assertEqual(states[0]["weights"], states[1]["weights"])
        self.assertEqual(states[0]["bias"], states[1]["bias"])
        for rank in range(2):
            final = os.path.join("ckpt", f"final_rank{rank}.json")
            self.assertEqual(read(os.path.join(stopped, final)), read(os.path.join(whole, final)))


class TorchDDPTests(JobTestCase):
    @unittest.skipIf(HAVE_TORCH, "PyTorch is installed")
    def test_without_pytorch_says_so_and_exits_0(self):
        child = self.start(TORCH_DDP, self.directory("run"), "--steps", "3")
        self.finish(child)
        self.assertIn("skipped: PyTorch is not installed", child.stderr.text())

    @unittest.skipUnless(HAVE_TORCH, "PyTorch is not installed")
    def test_coordinated_stop_and_resume_match_an_uninterrupted_run(self):
        import torch

        def model(path):
            return torch.load(path, map_location="cpu", weights_only=True)["model"]

        stopped, checkpoints, whole = self.stop_resume_and_whole_run(TORCH_DDP, "pt")
        self.assert_same_model(model(checkpoints[0]), model(checkpoints[1]))
        for rank in range(2):
            final = os.path.join("ckpt", f"final_rank{rank}.pt")
            self.assert_same_model(model(os.path.join(stopped, final)),
                                   model(os.path.join(whole, final)))

    def assert_same_model(self, first, second):
        import torch

        self.assertEqual(list(first), list(second))
        for name in first:
            self.assertTrue(torch.equal(first[name], second[name]), name)


if __name__ == "__main__":
    unittest.main()
