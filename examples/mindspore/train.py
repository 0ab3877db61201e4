"""Data-parallel training with MindSpore on CPU, stopped with graceful (examples/mindspore).

    graceful msrun --worker_num=2 --local_worker_num=2 --log_dir=logs --join=True \\
        examples/mindspore/train.py

Each worker calls `mindspore.communication.init()`, sets
`set_auto_parallel_context(parallel_mode=DATA_PARALLEL, gradients_mean=True)` and trains a linear
regression with `Model.train` (no dataset sink, so the callback runs after every step). The data is
generated here, deterministically: worker R's batch i is the same in every epoch and every run
(seeded by seed, R and i), so nothing is downloaded and a resumed run sees what an uninterrupted one
would. The gradients are averaged over the workers by TrainOneStepCell's all-reduce.

graceful's GracefulCallback (graceful_callback.py, next to this file) stops every worker after the
same step T on Ctrl+C, SIGTERM or the control file `{"GracefulExit": 1}`, after saving
<checkpoint-dir>/rank<R>/step_<T>.ckpt; the next launch loads it and continues at step T + 1,
inside the epoch where it stopped (the rest of that epoch, then the following epochs). Steps are
counted over the whole job, from 1.

Pitfalls of MindSpore 2.10 on CPU (graceful_callback.py says more): leave MS_ENABLE_GRACEFUL_EXIT
unset (with 1 the first step fails: its exit all-reduce is Int32, which the CPU AllReduce lacks), and
install numpy<2 (`pip install mindspore "numpy<2"`; with numpy 2 the training fails).

`graceful_exit` comes from examples/python, put on sys.path relative to this file by
graceful_callback.py: nothing to install for the example.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

import mindspore  # noqa: E402
from mindspore import nn  # noqa: E402
from mindspore.communication import get_group_size, get_rank, init  # noqa: E402
from mindspore.dataset import GeneratorDataset  # noqa: E402
from mindspore.train import Callback, Model  # noqa: E402

from graceful_callback import GracefulCallback  # noqa: E402


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=20, help="epochs to train (default 20)")
    parser.add_argument("--steps-per-epoch", type=int, default=50,
                        help="batches per epoch and worker (default 50)")
    parser.add_argument("--batch", type=int, default=16, help="examples per batch (default 16)")
    parser.add_argument("--dim", type=int, default=8, help="number of features (default 8)")
    parser.add_argument("--step-time", type=float, default=0.02,
                        help="seconds of simulated compute per step (default 0.02)")
    parser.add_argument("--checkpoint-dir", default=os.path.join("checkpoints", "mindspore"),
                        help="where checkpoints go (default checkpoints/mindspore)")
    parser.add_argument("--log-every", type=int, default=10,
                        help="worker 0 prints the loss every N steps; 0: never (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data (default 0)")
    args = parser.parse_args()
    if min(args.epochs, args.steps_per_epoch, args.batch, args.dim) < 1 or args.step_time < 0 or args.log_every < 0:
        parser.error("--epochs, --steps-per-epoch, --batch and --dim must be >= 1; the others >= 0")
    return args


class Batches:
    """Worker `rank`'s batches `first`..steps_per_epoch-1 of an epoch (the same in every epoch)."""

    def __init__(self, args, rank, first=0):
        truth = np.random.default_rng(args.seed)
        self.weights = truth.standard_normal((args.dim, 1)).astype(np.float32)
        self.args, self.rank, self.first = args, rank, first

    def __len__(self):
        return self.args.steps_per_epoch - self.first

    def __getitem__(self, index):
        rng = np.random.default_rng([self.args.seed, self.rank, self.first + index])
        x = rng.standard_normal((self.args.batch, self.args.dim)).astype(np.float32)
        return x, x @ self.weights + np.float32(0.5)


def dataset(args, rank, first=0):
    # One batch per item, in order, in this process: no worker processes to outlive a stop.
    return GeneratorDataset(Batches(args, rank, first), ["x", "y"], shuffle=False,
                            num_parallel_workers=1, python_multiprocessing=False)


class Progress(Callback):
    """Simulated compute per step, and worker 0's loss every `log_every` steps."""

    def __init__(self, args, rank, graceful):
        super().__init__()
        self.args, self.rank, self.graceful = args, rank, graceful

    def on_train_step_end(self, run_context):
        params = run_context.original_args()
        step = self.graceful.offset + params.cur_step_num
        if self.rank == 0 and self.args.log_every and step % self.args.log_every == 0:
            print(f"step {step}: loss {float(params.net_outputs.asnumpy()):.6f}", flush=True)
        time.sleep(self.args.step_time)


def main():
    args = parse_args()
    if os.environ.get("MS_ENABLE_GRACEFUL_EXIT") == "1":
        print("warning: MS_ENABLE_GRACEFUL_EXIT=1 makes CPU training fail in MindSpore 2.10 "
              "(an Int32 all-reduce); graceful does not need it", file=sys.stderr, flush=True)
    mindspore.set_context(mode=mindspore.GRAPH_MODE, device_target="CPU")
    init()
    rank, size = get_rank(), get_group_size()
    mindspore.set_auto_parallel_context(parallel_mode=mindspore.ParallelMode.DATA_PARALLEL,
                                        gradients_mean=True, device_num=size)
    mindspore.set_seed(args.seed)  # the same initial model on every worker

    net = nn.Dense(args.dim, 1)
    optimizer = nn.Momentum(net.trainable_params(), learning_rate=0.01, momentum=0.9)
    train_net = nn.TrainOneStepCell(nn.WithLossCell(net, nn.MSELoss()), optimizer)
    graceful = GracefulCallback(args.checkpoint_dir)
    first = graceful.load(train_net)
    steps = args.epochs * args.steps_per_epoch
    print(f"rank {rank}/{size}: starting at step {first} of {steps}", flush=True)
    model = Model(train_net)
    callbacks = [graceful, Progress(args, rank, graceful)]

    done = first - 1
    epoch, within = divmod(done, args.steps_per_epoch)
    if within and graceful.stopped_at is None:
        # The rest of the epoch where the last run stopped, then the next epochs.
        graceful.offset = done
        model.train(1, dataset(args, rank, within), callbacks=callbacks, dataset_sink_mode=False)
        epoch += 1
    if epoch < args.epochs and graceful.stopped_at is None:
        graceful.offset = epoch * args.steps_per_epoch
        model.train(args.epochs, dataset(args, rank), callbacks=callbacks, dataset_sink_mode=False,
                    initial_epoch=epoch)
    if graceful.stopped_at is None:
        print(f"rank {rank}: trained to step {steps}", flush=True)


if __name__ == "__main__":
    main()
