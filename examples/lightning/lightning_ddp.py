#!/usr/bin/env python3
"""PyTorch Lightning DDP on CPU (gloo), stopped and resumed with graceful's GracefulStop callback.

    graceful torchrun --standalone --nnodes 1 --nproc-per-node 2 examples/lightning/lightning_ddp.py

A tiny linear regression (16 features) on a dataset generated here from --seed (no download),
``Trainer(strategy="ddp", accelerator="cpu", devices=<LOCAL_WORLD_SIZE>)``, for --steps optimizer
steps. The callback (graceful_callback.py, beside this file) stops every rank after the same global
step, saves <checkpoint-dir>/step_<T>.ckpt with ``trainer.save_checkpoint`` and confirms it; the
next launch resumes with ``trainer.fit(..., ckpt_path=rank.resume_path)``. Why and how Lightning's
own SIGTERM handler is taken out of the way: graceful_callback.py's docstring.

Where graceful_exit comes from: a user copies graceful_exit.py (and graceful_callback.py) beside
their script, where Python finds it first (the script's directory is sys.path[0]); an installed
``pip install ./examples/python`` works too. In this clone the client lives in examples/python, so
that directory is appended to sys.path, last: a copy beside the script or an installed one wins.

Needs lightning 2.x and torch; without them it says so and exits 0.
"""

import argparse
import os
import sys
import time

sys.path.append(os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "python"))


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=2000, help="optimizer steps (default 2000)")
    parser.add_argument("--step-time", type=float, default=0.02,
                        help="seconds of simulated compute per step (default 0.02)")
    parser.add_argument("--checkpoint-dir", default=os.path.join("checkpoints", "lightning"),
                        help="where checkpoints go (default checkpoints/lightning)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data and model (default 0)")
    args = parser.parse_args()
    if args.steps < 1 or args.step_time < 0:
        parser.error("--steps must be >= 1 and --step-time >= 0")
    return args


def main():
    args = parse_args()
    try:
        import torch
        import lightning.pytorch as pl
    except ImportError as error:
        print(f"skipped: {error.name} is not installed (pip install lightning)", file=sys.stderr)
        return 0
    from graceful_callback import GracefulStop

    # Before the rendezvous, so that a stop during it is answered at once.
    stop = GracefulStop(checkpoint_dir=args.checkpoint_dir)

    class Regression(pl.LightningModule):
        def __init__(self):
            super().__init__()
            torch.manual_seed(args.seed)  # the same initial model on every rank
            self.linear = torch.nn.Linear(16, 1)

        def training_step(self, batch, batch_idx):
            if args.step_time > 0:
                time.sleep(args.step_time)
            x, y = batch
            loss = torch.nn.functional.mse_loss(self.linear(x).squeeze(1), y)
            if self.global_rank == 0 and (self.global_step + 1) % 100 == 0:
                print(f"step {self.global_step + 1}: loss {loss.item():.6g}", flush=True)
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.05)

    data = torch.Generator().manual_seed(args.seed)
    x = torch.randn(4096, 16, generator=data)
    y = x @ torch.randn(16, generator=data) + 0.5 + 0.01 * torch.randn(4096, generator=data)
    # Lightning adds a DistributedSampler: each rank gets its own half (or quarter, ...) of it.
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32)

    devices = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    trainer = pl.Trainer(strategy="ddp", accelerator="cpu", devices=devices, num_nodes=1,
                         max_steps=args.steps, max_epochs=-1, callbacks=[stop], logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=args.checkpoint_dir)
    trainer.fit(Regression(), loader, ckpt_path=stop.rank.resume_path)  # None: from scratch
    if not trainer.should_stop:
        print(f"rank {trainer.global_rank}: finished {trainer.global_step} steps", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
