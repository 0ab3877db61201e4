"""Tests of examples/python/train.py and torch_ddp.py: determinism, a coordinated stop and resume
of two ranks, and checkpoints without stopping, with the test playing the coordinator. The
torch_ddp.py tests that need PyTorch are skipped where it is not installed."""

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
                return line

    def round(self, ranks, kind, request_id, trigger, extension="json"):
        """Plays one round of the coordinator: sends `kind` ("stop" or "checkpoint"), chooses
        T = 1 + the largest position, sends it, and awaits every rank's confirmation of T with
        its path. Returns T."""
        for child in ranks:
            child.channel.send({"type": kind, "id": request_id, "trigger": trigger})
        positions = [child.channel.receive() for child in ranks]
        self.assertEqual([(p["type"], p["id"]) for p in positions],
                         [("position", request_id)] * len(ranks))
        step = 1 + max(p["step"] for p in positions)
        for child in ranks:
            child.channel.send({"type": f"{kind}_at", "id": request_id, "step": step})
        for rank, child in enumerate(ranks):
            self.assertEqual(child.channel.receive(),
                             {"type": "checkpointed", "step": step,
                              "path": f"ckpt/rank{rank}/step_{step}.{extension}"})
        return step

    def stop_resume_and_whole_run(self, script, extension):
        """Runs two ranks of `script`, has them checkpoint without stopping, then stops them
        through their channels as the coordinator would, resumes them from their checkpoints of the
        stop, and runs the whole job again elsewhere without a stop. Returns the directory of the
        stopped-and-resumed run, the checkpoints of the stop in it, and the directory of the whole
        run."""
        args = ("--steps", "300", "--step-time", "0.002", "--log-every", "50",
                "--checkpoint-dir", "ckpt")
        stopped = self.directory("stopped")
        ranks = self.job(script, stopped, 2, *args, channel=True)
        for child in ranks:
            self.assertEqual(child.channel.receive()["type"], "hello")
        self.await_line(ranks[0], "step 50:")
        checkpoint_step = self.round(ranks, "checkpoint", 1, "periodic", extension)
        for rank in range(2):
            self.assertTrue(os.path.exists(os.path.join(
                stopped, f"ckpt/rank{rank}/step_{checkpoint_step}.{extension}")))
        stop_step = self.round(ranks, "stop", 2, "SIGINT", extension)
        self.assertLess(stop_step, 300)
        for child in ranks:
            self.finish(child)
        paths = [f"ckpt/rank{rank}/step_{stop_step}.{extension}" for rank in range(2)]

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

    def test_resume_step_without_a_path_of_this_rank_starts_afresh(self):
        # The committed step was confirmed with path None: nothing of this rank's to load.
        fresh = self.directory("fresh")
        self.finish(self.start(support.TRAIN, fresh, "--steps", "8", "--checkpoint-dir", "ckpt"))
        cwd = self.directory("run")
        child = self.start(support.TRAIN, cwd, "--steps", "8", "--checkpoint-dir", "ckpt",
                           env={"GRACEFUL_RESUME_STEP": 5})
        self.finish(child)
        self.assertEqual(child.stdout.text().splitlines()[0],
                         "rank 0/1: the committed step 5 has no checkpoint of this rank "
                         "(GRACEFUL_RESUME_PATH unset): starting at step 1")
        final = os.path.join("ckpt", "final_rank0.json")
        self.assertEqual(read(os.path.join(cwd, final)), read(os.path.join(fresh, final)))

    def test_default_checkpoint_directory_is_the_examples_own(self):
        cwd = self.directory("run")
        with open(os.path.join(cwd, "graceful_exit.json"), "w") as f:
            f.write('{"GracefulExit": 1}')
        child = self.start(support.TRAIN, cwd, "--steps", "5")
        self.finish(child)
        self.assertIn("rank 0/1: stopped after step 1 (control-file), saved "
                      "checkpoints/train/rank0/step_1.json", child.stdout.text())
        os.unlink(os.path.join(cwd, "graceful_exit.json"))
        self.finish(self.start(support.TRAIN, cwd, "--steps", "2"))
        self.assertEqual(sorted(os.listdir(os.path.join(cwd, "checkpoints"))), ["train"])
        self.assertEqual(sorted(os.listdir(os.path.join(cwd, "checkpoints", "train"))),
                         ["final_rank0.json", "rank0"])
        self.assertEqual(os.listdir(os.path.join(cwd, "checkpoints", "train", "rank0")),
                         ["step_1.json"])

    def test_coordinated_stop_and_resume_match_an_uninterrupted_run(self):
        stopped, checkpoints, whole = self.stop_resume_and_whole_run(support.TRAIN, "json")
        states = [json.loads(read(path)) for path in checkpoints]
        self.assertEqual(states[0]["weights"], states[1]["weights"])
        self.assertEqual(states[0]["bias"], states[1]["bias"])
        for rank in range(2):
            final = os.path.join("ckpt", f"final_rank{rank}.json")
            self.assertEqual(read(os.path.join(stopped, final)), read(os.path.join(whole, final)))

    def test_checkpoints_without_stopping_then_a_stop_and_the_cleanup_of_older_ones(self):
        cwd = self.directory("run")
        folders = [os.path.join(cwd, "ckpt", f"rank{rank}") for rank in range(2)]
        # Besides an old checkpoint, files the cleanup must leave: a checkpoint newer than any
        # commit, and files that are not checkpoints.
        others = ["step_99999999.json", "step_x.json", "step_1.json.bak", "notes.txt"]
        for folder in folders:
            os.makedirs(folder)
            for name in ["step_3.json", *others]:
                with open(os.path.join(folder, name), "w") as f:
                    f.write("{}\n")

        def present():
            return [sorted(os.listdir(folder)) for folder in folders]

        def expect_present(*steps):
            self.assertEqual(present(), [sorted(others + [f"step_{s}.json" for s in steps])] * 2)

        ranks = self.job(support.TRAIN, cwd, 2, "--steps", "100000", "--step-time", "0.002",
                         "--log-every", "50", "--checkpoint-dir", "ckpt", channel=True)
        for child in ranks:
            self.assertEqual(child.channel.receive()["type"], "hello")
        self.await_line(ranks[0], "step 50:")

        first = self.round(ranks, "checkpoint", 1, "periodic")
        for rank, child in enumerate(ranks):
            self.assertEqual(
                self.await_line(child, f"rank {rank}/2: checkpoint"),
                f"rank {rank}/2: checkpoint at step {first} (periodic) saved "
                f"ckpt/rank{rank}/step_{first}.json\n")
            state = json.loads(read(os.path.join(folders[rank], f"step_{first}.json")))
            self.assertEqual(state["step"], first)
        expect_present(3, first)  # nothing committed yet: nothing deleted

        for child in ranks:
            child.channel.send({"type": "committed", "step": first})
        # The reader handles messages in order, so the save of the next round sees the commit.
        second = self.round(ranks, "checkpoint", 2, "SIGUSR2")
        self.assertGreater(second, first)  # training went on past the first checkpoint
        expect_present(first, second)

        for child in ranks:
            child.channel.send({"type": "committed", "step": second})
        stop_step = self.round(ranks, "stop", 3, "SIGTERM")
        for rank, child in enumerate(ranks):
            self.finish(child)
            self.assertIn(f"rank {rank}/2: stopped after step {stop_step} (SIGTERM)",
                          child.stdout.text())
        expect_present(second, stop_step)

        # The checkpoint taken while training went on resumes to the very bits of the stop's.
        resumed = self.job(support.TRAIN, cwd, 2, "--steps", str(stop_step), "--checkpoint-dir",
                           "ckpt", env_of=lambda rank: {
                               "GRACEFUL_RESUME_STEP": second,
                               "GRACEFUL_RESUME_PATH": f"ckpt/rank{rank}/step_{second}.json"})
        for rank, child in enumerate(resumed):
            self.finish(child)
            self.assertEqual(read(os.path.join(cwd, "ckpt", f"final_rank{rank}.json")),
                             read(os.path.join(folders[rank], f"step_{stop_step}.json")))


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

    @unittest.skipUnless(HAVE_TORCH, "PyTorch is not installed")
    def test_default_checkpoint_directory_is_the_examples_own(self):
        cwd = self.directory("run")
        self.finish(self.start(TORCH_DDP, cwd, "--steps", "2"))
        self.assertEqual(os.listdir(os.path.join(cwd, "checkpoints")), ["torch_ddp"])
        self.assertEqual(os.listdir(os.path.join(cwd, "checkpoints", "torch_ddp")),
                         ["final_rank0.pt"])

    def assert_same_model(self, first, second):
        import torch

        self.assertEqual(list(first), list(second))
        for name in first:
            self.assertTrue(torch.equal(first[name], second[name]), name)


if __name__ == "__main__":
    unittest.main()
