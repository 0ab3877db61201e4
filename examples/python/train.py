#!/usr/bin/env python3
"""Deterministic data-parallel toy training (linear regression), standard library only.

Each rank draws its batch from a generator seeded by (seed, step, rank) alone, and the ranks average
their gradients every step through a small TCP all-reduce at MASTER_ADDR:MASTER_PORT in which rank 0
sums in rank order. So the ranks run in lockstep like DDP, and a run is bit-for-bit reproducible,
across a stop and a resume too. It stops through graceful_exit.rank(): under the graceful
coordinator every rank stops after the same step; run alone (WORLD_SIZE unset), Ctrl+C or a control
file {"GracefulExit": 1} stops it at the next step. A stop saves <checkpoint-dir>/rank<R>/step_<T>.json
(checkpoint-dir: checkpoints/train unless --checkpoint-dir says otherwise) with
graceful_exit.atomic_write; the coordinator's checkpoints without stopping save the same file and
training goes on; once a step is committed, each rank deletes its own checkpoints of earlier steps.
The end of the run saves <checkpoint-dir>/final_rank<R>.json.

    python3 examples/python/train.py --steps 2000
"""

import argparse
import json
import os
import random
import re
import socket
import struct
import sys
import time

import graceful_exit

# Seconds a socket operation may block: a guard against a dead peer, never reached in a healthy run.
GUARD_TIMEOUT = 300.0
# Seconds a rank other than 0 keeps trying to reach rank 0, which may start later.
CONNECT_WINDOW = 60.0
# The name of a checkpoint in <checkpoint-dir>/rank<R>/.
CHECKPOINT_NAME = re.compile(r"step_([0-9]+)\.json")


class TrainingError(Exception):
    pass


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=2000, help="last step to run (default 2000)")
    parser.add_argument("--dim", type=int, default=16, help="number of features (default 16)")
    parser.add_argument("--step-time", type=float, default=0.02,
                        help="seconds of simulated compute per step (default 0.02)")
    parser.add_argument("--checkpoint-dir", default=os.path.join("checkpoints", "train"),
                        help="where checkpoints go (default checkpoints/train)")
    parser.add_argument("--log-every", type=int, default=100,
                        help="rank 0 prints the loss every N steps; 0: never (default 100)")
    parser.add_argument("--batch", type=int, default=32,
                        help="examples per rank per step (default 32)")
    parser.add_argument("--lr", type=float, default=0.05, help="learning rate (default 0.05)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data (default 0)")
    args = parser.parse_args()
    if args.steps < 0 or args.dim < 1 or args.batch < 1 or args.step_time < 0 or args.log_every < 0:
        parser.error("--steps, --step-time and --log-every must be >= 0; --dim and --batch >= 1")
    return args


def true_model(dim, seed):
    rng = random.Random(f"{seed}:true-model")
    return [rng.uniform(-1.0, 1.0) for _ in range(dim)], rng.uniform(-1.0, 1.0)


def local_gradient(weights, bias, truth, step, rank, args):
    """Mean gradient of 0.5 * error**2 over this rank's batch of `step`, then the mean loss."""
    true_weights, true_bias = truth
    # A str seed goes through SHA-512, not hash(): the same batch in every run and every process.
    rng = random.Random(f"{args.seed}:{step}:{rank}")
    grad_w = [0.0] * args.dim
    grad_b = 0.0
    loss = 0.0
    for _ in range(args.batch):
        x = [rng.gauss(0.0, 1.0) for _ in range(args.dim)]
        y = sum(t * v for t, v in zip(true_weights, x)) + true_bias + 0.01 * rng.gauss(0.0, 1.0)
        error = sum(w * v for w, v in zip(weights, x)) + bias - y
        for i, v in enumerate(x):
            grad_w[i] += error * v
        grad_b += error
        loss += 0.5 * error * error
    return [g / args.batch for g in grad_w] + [grad_b / args.batch, loss / args.batch]


def recv_exact(sock, size, what):
    data = bytearray(size)
    view = memoryview(data)
    received = 0
    while received < size:
        count = sock.recv_into(view[received:])
        if count == 0:
            raise TrainingError(f"{what} closed the connection")
        received += count
    return bytes(data)


class AllReduce:
    """Averages a vector of floats over the ranks. Rank 0 receives every vector, sums them in rank
    order and sends the mean back, so every rank gets the same bits in every run."""

    HANDSHAKE = struct.Struct("<iiiq")  # rank, world size, vector length, first step

    def __init__(self, rank, world_size, length, first_step):
        self.rank = rank
        self.world_size = world_size
        self.message = struct.Struct(f"<q{length}d")  # the step, then the vector
        self.peers = {}  # rank 0: rank -> socket
        self.root = None  # other ranks: the socket to rank 0
        if world_size == 1:
            return
        address = os.environ.get("MASTER_ADDR", "127.0.0.1")
        port = os.environ.get("MASTER_PORT")
        if not port:
            raise TrainingError("WORLD_SIZE > 1 needs MASTER_ADDR and MASTER_PORT")
        hello = (rank, world_size, length, first_step)
        if rank == 0:
            self._accept(address, int(port), hello)
        else:
            self._connect(address, int(port), hello)

    def _accept(self, address, port, hello):
        family = socket.getaddrinfo(address, port, type=socket.SOCK_STREAM)[0][0]
        # create_server sets SO_REUSEADDR, so a quick restart does not fail on TIME_WAIT.
        with socket.create_server((address, port), family=family,
                                  backlog=self.world_size) as server:
            server.settimeout(GUARD_TIMEOUT)
            while len(self.peers) < self.world_size - 1:
                sock, _ = server.accept()
                self._tune(sock)
                peer = self.HANDSHAKE.unpack(recv_exact(sock, self.HANDSHAKE.size, "a rank"))
                expected = 0 < peer[0] < self.world_size and peer[0] not in self.peers
                if peer[1:] != hello[1:] or not expected:
                    sock.close()
                    raise TrainingError(
                        f"rank 0 expects each of ranks 1..{self.world_size - 1} once, with "
                        f"(world size, vector length, first step) = {hello[1:]}; got rank "
                        f"{peer[0]} with {peer[1:]}")
                self.peers[peer[0]] = sock

    def _connect(self, address, port, hello):
        deadline = time.monotonic() + CONNECT_WINDOW
        while True:
            try:
                self.root = socket.create_connection((address, port), timeout=GUARD_TIMEOUT)
                break
            except OSError as error:
                if time.monotonic() >= deadline:
                    raise TrainingError(f"cannot reach rank 0 at {address}:{port}: {error}")
                time.sleep(0.1)
        self._tune(self.root)
        self.root.sendall(self.HANDSHAKE.pack(*hello))

    @staticmethod
    def _tune(sock):
        sock.settimeout(GUARD_TIMEOUT)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def mean(self, step, vector):
        if self.world_size == 1:
            return vector
        if self.root is not None:
            self.root.sendall(self.message.pack(step, *vector))
            reply = self.message.unpack(recv_exact(self.root, self.message.size, "rank 0"))
            self._check_step(reply[0], step, 0)
            return list(reply[1:])
        total = list(vector)
        for peer in range(1, self.world_size):
            values = self.message.unpack(recv_exact(self.peers[peer], self.message.size,
                                                    f"rank {peer}"))
            self._check_step(values[0], step, peer)
            total = [a + b for a, b in zip(total, values[1:])]
        mean = [value / self.world_size for value in total]
        packed = self.message.pack(step, *mean)
        for peer in range(1, self.world_size):
            self.peers[peer].sendall(packed)
        return mean

    @staticmethod
    def _check_step(theirs, ours, peer):
        if theirs != ours:
            raise TrainingError(f"rank {peer} is at step {theirs}, this rank at step {ours}")

    def close(self):
        for sock in [self.root, *self.peers.values()]:
            if sock is not None:
                sock.close()


def save(path, step, rank, weights, bias):
    state = {"step": step, "rank": rank.rank, "world_size": rank.world_size,
             "weights": [w.hex() for w in weights], "bias": bias.hex()}
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with graceful_exit.atomic_write(path, "w") as f:
        f.write(json.dumps(state) + "\n")


def delete_older_checkpoints(directory, committed):
    """Deletes the checkpoints step_<S>.json in `directory` with S < `committed`: the coordinator
    recorded step `committed`, so no resume needs them. That step's own checkpoint stays, and so
    do newer ones: a later round may fail, and then `committed` is still what a resume uses."""
    if committed is None:
        return
    for name in os.listdir(directory):
        match = CHECKPOINT_NAME.fullmatch(name)
        if match and int(match.group(1)) < committed:
            path = os.path.join(directory, name)
            try:
                os.unlink(path)
            except OSError as error:
                # A full disk later is better than losing the run now.
                print(f"warning: cannot delete {path}: {error.strerror}", file=sys.stderr,
                      flush=True)


def save_checkpoint(args, step, rank, weights, bias):
    """Saves <checkpoint-dir>/rank<R>/step_<step>.json, deletes this rank's checkpoints older than
    the committed step, confirms the save to the coordinator, and returns the path."""
    directory = os.path.join(args.checkpoint_dir, f"rank{rank.rank}")
    path = os.path.join(directory, f"step_{step}.json")
    save(path, step, rank, weights, bias)
    delete_older_checkpoints(directory, rank.committed_step)
    rank.checkpointed(step, path)
    return path


def load(path, step, dim):
    try:
        with open(path, encoding="utf-8") as f:
            state = json.load(f)
        saved_step = state["step"]
        weights = [float.fromhex(w) for w in state["weights"]]
        bias = float.fromhex(state["bias"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise TrainingError(f"cannot load checkpoint {path}: {error}") from None
    if saved_step != step:
        raise TrainingError(f"{path} holds step {saved_step}, but GRACEFUL_RESUME_STEP is {step}")
    if len(weights) != dim:
        raise TrainingError(f"{path} has {len(weights)} weights, but --dim is {dim}")
    return weights, bias


def train(args, rank):
    who = f"rank {rank.rank}/{rank.world_size}"
    weights, bias, first = [0.0] * args.dim, 0.0, 1
    if rank.resume_path:
        if rank.resume_step is None:
            raise TrainingError(f"GRACEFUL_RESUME_PATH is {rank.resume_path} but "
                                "GRACEFUL_RESUME_STEP is not set")
        weights, bias = load(rank.resume_path, rank.resume_step, args.dim)
        first = rank.resume_step + 1
        print(f"{who}: resuming from {rank.resume_path} (step {rank.resume_step})", flush=True)
    elif rank.resume_step is not None:
        # The committed step holds no checkpoint of this rank's (it confirmed it with path None):
        # nothing of its own to load, so it starts afresh.
        print(f"{who}: the committed step {rank.resume_step} has no checkpoint of this rank "
              "(GRACEFUL_RESUME_PATH unset): starting at step 1", flush=True)
    else:
        print(f"{who}: starting at step 1", flush=True)
    truth = true_model(args.dim, args.seed)
    reduce = AllReduce(rank.rank, rank.world_size, args.dim + 2, first)
    try:
        loss = None
        for step in range(first, args.steps + 1):
            if args.step_time > 0:
                time.sleep(args.step_time)
            grad = reduce.mean(step, local_gradient(weights, bias, truth, step, rank.rank, args))
            loss = grad[-1]
            weights = [w - args.lr * g for w, g in zip(weights, grad)]
            bias -= args.lr * grad[-2]
            if rank.rank == 0 and args.log_every and step % args.log_every == 0:
                print(f"step {step}: loss {loss:.6g}", flush=True)
            if rank.should_stop(step):
                path = save_checkpoint(args, step, rank, weights, bias)
                print(f"{who}: stopped after step {step} ({rank.trigger}), saved {path}",
                      flush=True)
                return
            elif rank.should_checkpoint(step):
                path = save_checkpoint(args, step, rank, weights, bias)
                trigger = f" ({rank.checkpoint_trigger})" if rank.checkpoint_trigger else ""
                print(f"{who}: checkpoint at step {step}{trigger} saved {path}", flush=True)
        path = os.path.join(args.checkpoint_dir, f"final_rank{rank.rank}.json")
        save(path, args.steps, rank, weights, bias)
        error = max(abs(w - t) for w, t in zip(weights, truth[0]))
        shown = "n/a" if loss is None else f"{loss:.6g}"
        print(f"{who}: finished {args.steps} steps, loss {shown}, max |w - w_true| {error:.3g}, "
              f"saved {path}", flush=True)
    finally:
        reduce.close()


def main():
    args = parse_args()
    rank = graceful_exit.rank()
    try:
        train(args, rank)
    except (TrainingError, OSError) as error:
        print(f"rank {rank.rank}: error: {error}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
