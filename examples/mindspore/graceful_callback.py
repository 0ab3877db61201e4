"""A MindSpore `Callback` that stops or checkpoints every rank after the same step, with graceful.

    from graceful_callback import GracefulCallback

    graceful = GracefulCallback("checkpoints/mindspore")
    first_step = graceful.load(train_net)           # resume: rank.resume_path, else step 1
    ...
    model.train(epochs, dataset, callbacks=[graceful], dataset_sink_mode=False)

At the end of every step (`cur_step_num`, counted over the epochs, plus the offset the caller passes
on resume, so that the step is the job's, not Model.train's) it asks `graceful_exit`:

- `should_stop(step)`: saves this rank's checkpoint of `step`, confirms it with
  `checkpointed(step, path)` and calls `run_context.request_stop()`: Model.train returns after this
  step, on every rank after the same one, so none is left waiting in an all-reduce.
- `should_checkpoint(step)`: the same save and confirmation, and training goes on.

The checkpoint is `mindspore.save_checkpoint` of the whole train network (the model's parameters
and the optimizer's, momentum included) plus `{"step": step}`, written to a temporary name in the
same directory, fsynced, then renamed over `<directory>/rank<R>/step_<T>.ckpt` (and the directory
fsynced): a crash leaves the old file or the new one, never a torn one. `load` reads it back from
`rank.resume_path` and checks that it holds `rank.resume_step`.

MindSpore's own graceful exit, and why this does not use it (MindSpore 2.10, CPU):

- `MS_ENABLE_GRACEFUL_EXIT=1` (what arms `OnRequestExit` and the control-file check in
  `mindspore.train`) makes CPU training fail at the first step: its exit flag is all-reduced as an
  Int32 tensor, and the CPU AllReduce kernel has no Int32. Leave it unset under graceful.
- Without it, `OnRequestExit`'s SIGTERM handler only sets a flag that nothing reads: the worker
  trains on until it is killed, and each rank would stop at its own step anyway.
- msrun itself SIGKILLs every worker on Ctrl+C and has no SIGTERM handler; `graceful msrun`
  watches the control file (`{"GracefulExit": 1}`, MindSpore's convention) and the signals once, in
  the coordinator, and chooses the step.

`graceful_exit` is imported from `examples/python` (found relative to this file, through
sys.path), so the example runs from a checkout without installing anything; in your own project,
`pip install ./examples/python` or copy `graceful_exit.py` next to your script instead.
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "python"))

import graceful_exit  # noqa: E402
import mindspore  # noqa: E402
from mindspore.train import Callback  # noqa: E402


class GracefulCallback(Callback):
    """Stops or checkpoints at graceful's step T; see the module docstring."""

    def __init__(self, directory, rank=None, log=print):
        super().__init__()
        self.rank = rank or graceful_exit.rank()
        self.directory = os.path.join(directory, f"rank{self.rank.rank}")
        self.offset = 0  # steps done before this Model.train call began counting
        self.stopped_at = None
        self.log = log

    def checkpoint_path(self, step):
        return os.path.join(self.directory, f"step_{step}.ckpt")

    def load(self, network):
        """Loads this rank's checkpoint of the committed step into `network` (the train network, or
        anything holding the same parameters) and returns the first step to train: 1 without one."""
        rank = self.rank
        if rank.resume_path:
            state = mindspore.load_checkpoint(rank.resume_path)
            saved = int(state.pop("step").asnumpy())
            if saved != rank.resume_step:
                raise RuntimeError(f"{rank.resume_path} holds step {saved}, but GRACEFUL_RESUME_STEP "
                                   f"is {rank.resume_step}")
            not_loaded, _ = mindspore.load_param_into_net(network, state, strict_load=True)
            if not_loaded:
                raise RuntimeError(f"{rank.resume_path} lacks {', '.join(not_loaded)}")
            self.log(f"rank {rank.rank}: resuming from {rank.resume_path} (step {saved})", flush=True)
            return saved + 1
        if rank.resume_step is not None:
            self.log(f"rank {rank.rank}: the committed step {rank.resume_step} has no checkpoint of "
                     "this rank (GRACEFUL_RESUME_PATH unset): starting at step 1", flush=True)
        return 1

    def save(self, network, step):
        """Saves `network` and `step` to this rank's checkpoint of `step`, atomically; returns its path."""
        os.makedirs(self.directory, exist_ok=True)
        path = self.checkpoint_path(step)
        # save_checkpoint appends ".ckpt" to a name without it: the temporary name ends with it too.
        temporary = os.path.join(self.directory, f".step_{step}.{os.getpid()}.tmp.ckpt")
        try:
            mindspore.save_checkpoint(network, temporary, append_dict={"step": step})
            fd = os.open(temporary, os.O_RDONLY)  # MindSpore leaves the file read-only (0400)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temporary, path)
        except BaseException:
            if os.path.exists(temporary):
                os.unlink(temporary)
            raise
        fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        return path

    def on_train_step_end(self, run_context):
        params = run_context.original_args()
        step = self.offset + params.cur_step_num
        if self.rank.should_stop(step):
            path = self.save(params.train_network, step)
            self.rank.checkpointed(step, path)
            self.stopped_at = step
            self.log(f"rank {self.rank.rank}: stopping after step {step}, saved {path}", flush=True)
            run_context.request_stop()
        elif self.rank.should_checkpoint(step):
            path = self.save(params.train_network, step)
            self.rank.checkpointed(step, path)
            self.log(f"rank {self.rank.rank}: checkpoint of step {step}, saved {path}", flush=True)
