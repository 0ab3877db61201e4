#!/usr/bin/env python3
"""Data-parallel training with PyTorch DDP on CPU (gloo), stopped with graceful_exit.rank().

The same toy job as train.py: linear regression, each rank's batch drawn from a generator seeded by
(seed, step, rank) alone, gradients averaged by DDP in backward(). Under the graceful coordinator
every rank stops after the same step T and saves <checkpoint-dir>/rank<R>/step_<T>.pt
(checkpoint-dir: checkpoints/torch_ddp unless --checkpoint-dir says otherwise) with
graceful_exit.atomic_write, and saves the same file and goes on at the step T of a checkpoint
without stopping; run alone (WORLD_SIZE unset), Ctrl+C or a control file {"GracefulExit": 1} stops
it at the next step. The end of the run saves <checkpoint-dir>/final_rank<R>.pt.
Needs PyTorch 1.13 or later; without it, it says so and exits 0.

    python3 examples/python/torch_ddp.py --steps 2000
"""

import argparse
import hashlib
import os
import sys
import time

import graceful_exit


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=2000, help="last step to run (default 2000)")
    parser.add_argument("--dim", type=int, default=16, help="number of features (default 16)")
    parser.add_argument("--step-time", type=float, default=0.02,
                        help="seconds of simulated compute per step (default 0.02)")
    parser.add_argument("--checkpoint-dir", default=os.path.join("checkpoints", "torch_ddp"),
                        help="where checkpoints go (default checkpoints/torch_ddp)")
    parser.add_argument("--log-every", type=int, default=100,
                        help="rank 0 prints the loss every N steps; 0: never (default 100)")
    parser.add_argument("--batch", type=int, default=32,
                        help="examples per rank per step (default 32)")
    parser.add_argument("--lr", type=float, default=0.05, help="learning rate (default 0.05)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the data and model (default 0)")
    args = parser.parse_args()
    if args.steps < 0 or args.dim < 1 or args.batch < 1 or args.step_time < 0 or args.log_every < 0:
        parser.error("--steps, --step-time and --log-every must be >= 0; --dim and --batch >= 1")
    return args


def data_seed(seed, step, rank):
    # A digest, not hash(): the same batch in every run and every process. 63 bits fit manual_seed.
    digest = hashlib.sha256(f"{seed}:{step}:{rank}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def train(args, rank, torch, ddp_class):
    who = f"rank {rank.rank}/{rank.world_size}"
    torch.manual_seed(args.seed)  # the same initial model on every rank
    model = torch.nn.Linear(args.dim, 1, dtype=torch.float64)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr)
    first = 1
    if rank.resume_path:
        state = torch.load(rank.resume_path, map_location="cpu", weights_only=True)
        if state["step"] != rank.resume_step:
            print(f"{who}: error: {rank.resume_path} holds step {state['step']}, but "
                  f"GRACEFUL_RESUME_STEP is {rank.resume_step}", file=sys.stderr)
            return 1
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        first = rank.resume_step + 1
        print(f"{who}: resuming from {rank.resume_path} (step {rank.resume_step})", flush=True)
    elif rank.resume_step is not None:
        # The committed step holds no checkpoint of this rank's (it confirmed it with path None):
        # nothing of its own to load, so it starts afresh.
        print(f"{who}: the committed step {rank.resume_step} has no checkpoint of this rank "
              "(GRACEFUL_RESUME_PATH unset): starting at step 1", flush=True)
    else:
        print(f"{who}: starting at step 1", flush=True)
    ddp = ddp_class(model)

    truth = torch.Generator().manual_seed(args.seed)
    true_weights = torch.randn(args.dim, generator=truth, dtype=torch.float64)
    true_bias = torch.randn(1, generator=truth, dtype=torch.float64)

    for step in range(first, args.steps + 1):
        if args.step_time > 0:
            time.sleep(args.step_time)
        data = torch.Generator().manual_seed(data_seed(args.seed, step, rank.rank))
        x = torch.randn(args.batch, args.dim, generator=data, dtype=torch.float64)
        noise = torch.randn(args.batch, generator=data, dtype=torch.float64)
        y = x @ true_weights + true_bias + 0.01 * noise
        optimizer.zero_grad()
        loss = 0.5 * torch.nn.functional.mse_loss(ddp(x).squeeze(1), y)
        loss.backward()  # DDP averages the gradients over the ranks here
        optimizer.step()
        if rank.rank == 0 and args.log_every and step % args.log_every == 0:
            print(f"step {step}: loss {loss.item():.6g}", flush=True)
        if rank.should_stop(step):
            path = save_checkpoint(torch, args, step, rank, model, optimizer)
            print(f"{who}: stopped after step {step} ({rank.trigger}), saved {path}", flush=True)
            return 0
        elif rank.should_checkpoint(step):
            path = save_checkpoint(torch, args, step, rank, model, optimizer)
            trigger = f" ({rank.checkpoint_trigger})" if rank.checkpoint_trigger else ""
            print(f"{who}: checkpoint at step {step}{trigger} saved {path}", flush=True)
    path = os.path.join(args.checkpoint_dir, f"final_rank{rank.rank}.pt")
    save(torch, path, checkpoint(args.steps, rank, model, optimizer))
    print(f"{who}: finished {args.steps} steps, saved {path}", flush=True)
    return 0


def checkpoint(step, rank, model, optimizer):
    return {"step": step, "rank": rank.rank, "world_size": rank.world_size,
            "model": model.state_dict(), "optimizer": optimizer.state_dict()}


def save(torch, path, state):
    """Saves `state` at `path` atomically (graceful_exit.atomic_write), creating its directory."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with graceful_exit.atomic_write(path) as f:
        torch.save(state, f)


def save_checkpoint(torch, args, step, rank, model, optimizer):
    """Saves <checkpoint-dir>/rank<R>/step_<step>.pt, confirms it to the coordinator, and returns
    the path."""
    path = os.path.join(args.checkpoint_dir, f"rank{rank.rank}", f"step_{step}.pt")
    save(torch, path, checkpoint(step, rank, model, optimizer))
    rank.checkpointed(step, path)
    return path


def main():
    args = parse_args()
    try:
        import torch
        import torch.distributed as dist
        from torch.nn.parallel import DistributedDataParallel
    except ImportError:
        print("skipped: PyTorch is not installed (pip install torch)", file=sys.stderr)
        return 0
    rank = graceful_exit.rank()  # before the rendezvous, so that a stop during it is answered at once
    if "WORLD_SIZE" in os.environ:
        dist.init_process_group("gloo")  # MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE
    else:
        # Alone (plain python): a one-rank group needs no rendezvous.
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        return train(args, rank, torch, DistributedDataParallel)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
