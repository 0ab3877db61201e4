"""A rank whose training loop the tests drive line by line through stdin: the Python driver of the
conformance suite (test_conformance.py). Sources/graceful-conformance-rank is the Swift one; both
take the same commands and print the same reports (compared as JSON, not as text).

Commands (one per line on stdin):
  N           run N steps, each ending at a boundary
  run SECS    run steps 10 ms apart until a stop or SECS seconds have passed
  time N      time N calls of should_stop, then N boundaries of should_stop and
              should_checkpoint, with nothing pending
  checkpointed STEP   call rank.checkpointed(STEP, None)
  checkpointed-path STEP HEX   call rank.checkpointed(STEP, bytes.fromhex(HEX)) (HEX absent: b"")
  info        report the client's state
  child       run this program again as a child (`--child CHANNEL_FD DOORBELL_FD`) that inherits
              every inheritable descriptor and the environment, starts its own client, and reports
              {"child": {...}}: whether it found a channel; then {"child_exit": status}
Reports go to stdout, one JSON object per line: {"at": s} just before should_stop(s),
{"boundary": s, "stop": bool, "checkpoint": bool} after it and should_checkpoint(s) (called only
when should_stop returned False), and one object per other command. On a stop the script calls
checkpointed(s, "ckpt/step_<s>") and exits 0, unless --keep-going; on a checkpoint it calls the same
and keeps going. A KeyboardInterrupt is reported as {"keyboard_interrupt": true} with exit status 3.
"""

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                "examples", "python"))

import graceful_exit  # noqa: E402


def report(**fields):
    print(json.dumps(fields), flush=True)


def is_open(fd_text):
    try:
        os.fstat(int(fd_text))
    except (TypeError, ValueError, OSError):
        return False
    return True


def info(rank, channel_fd, doorbell_fd):
    return {
        "doorbell_fd_in_environ": "GRACEFUL_DOORBELL_FD" in os.environ,
        "doorbell_fd_open": is_open(doorbell_fd),
        "fd_in_environ": "GRACEFUL_CHANNEL_FD" in os.environ,
        "fd_inheritable": os.get_inheritable(int(channel_fd)) if rank.coordinated else None,
        "coordinated": rank.coordinated,
        "rank": rank.rank, "world_size": rank.world_size, "local_rank": rank.local_rank,
        "resume_step": rank.resume_step, "resume_path": rank.resume_path,
        "stop_step": rank.stop_step, "trigger": rank.trigger,
        "checkpoint_trigger": rank.checkpoint_trigger,
        "committed_step": rank.committed_step, "same_instance": graceful_exit.Rank() is rank,
    }


def boundary(rank, step, keep_going):
    report(at=step)
    stop = rank.should_stop(step)
    checkpoint = not stop and rank.should_checkpoint(step)
    report(boundary=step, stop=stop, checkpoint=checkpoint)
    if stop:
        rank.checkpointed(step, f"ckpt/step_{step}")
        report(checkpointed=step, stop_step=rank.stop_step, trigger=rank.trigger)
        if not keep_going:
            sys.exit(0)
    elif checkpoint:
        rank.checkpointed(step, f"ckpt/step_{step}")
        report(checkpointed=step, checkpoint_trigger=rank.checkpoint_trigger)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--keep-going", action="store_true")
    parser.add_argument("--poll", type=float, help="seconds between control-file checks")
    parser.add_argument("--control-file")
    parser.add_argument("--child", nargs=2, metavar=("CHANNEL_FD", "DOORBELL_FD"))
    args = parser.parse_args()
    if args.poll is not None:
        graceful_exit.CONTROL_FILE_POLL = args.poll
    channel_fd = os.environ.get("GRACEFUL_CHANNEL_FD")
    doorbell_fd = os.environ.get("GRACEFUL_DOORBELL_FD")
    rank = graceful_exit.Rank(control_file=args.control_file)
    if args.child:
        # A program the rank started: what it inherited of the channel and the doorbell.
        report(child={
            "coordinated": rank.coordinated,
            "fd_in_environ": "GRACEFUL_CHANNEL_FD" in os.environ,
            "doorbell_fd_in_environ": "GRACEFUL_DOORBELL_FD" in os.environ,
            "channel_fd_open": is_open(args.child[0]), "doorbell_fd_open": is_open(args.child[1]),
        })
        return
    report(ready=info(rank, channel_fd, doorbell_fd))
    step = 0
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        if words[0] == "run":
            deadline = time.monotonic() + float(words[1])
            stopped = False
            while not stopped and time.monotonic() < deadline:
                step += 1
                stopped = rank.should_stop(step)
                time.sleep(0.01)
            report(ran=step, stopped=stopped, trigger=rank.trigger)
        elif words[0] == "time":
            count = int(words[1])
            should_stop = rank.should_stop
            should_checkpoint = rank.should_checkpoint
            start = time.perf_counter_ns()
            for i in range(step + 1, step + 1 + count):
                should_stop(i)
            middle = time.perf_counter_ns()
            for i in range(step + 1 + count, step + 1 + 2 * count):
                if not should_stop(i):
                    should_checkpoint(i)
            end = time.perf_counter_ns()
            step += 2 * count
            report(ns_per_call=(middle - start) / count, ns_per_boundary=(end - middle) / count)
        elif words[0] == "checkpointed":
            rank.checkpointed(int(words[1]), None)
            report(checkpointed_returned=True)
        elif words[0] == "checkpointed-path":
            # The path as hex bytes, so a test can send any name, valid UTF-8 or not.
            try:
                rank.checkpointed(int(words[1]), bytes.fromhex(words[2]) if len(words) > 2 else b"")
                report(checkpointed_returned=True)
            except ValueError as error:
                report(value_error=str(error))
        elif words[0] == "info":
            report(info=info(rank, channel_fd, doorbell_fd))
        elif words[0] == "child":
            # close_fds=False: the child gets every descriptor that is inheritable, as a program
            # started with fork and exec would.
            child = subprocess.run([sys.executable, os.path.abspath(__file__), "--child",
                                    channel_fd or "-", doorbell_fd or "-"],
                                   stdin=subprocess.DEVNULL, close_fds=False)
            report(child_exit=child.returncode)
        else:
            for _ in range(int(words[0])):
                step += 1
                boundary(rank, step, args.keep_going)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        report(keyboard_interrupt=True)
        sys.exit(3)
