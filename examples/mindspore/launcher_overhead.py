"""msrun next to graceful msrun on the same 2-worker job (examples/mindspore/train.py): seconds from
the launch to worker 0's first training step, the launcher's peak RSS (VmHWM of the launcher process
alone: msrun's Python, which imports MindSpore, or graceful's coordinator), and seconds to the end.

    PATH=$HOME/.cache/graceful/venv-mindspore/bin:$PATH \\
        python examples/mindspore/launcher_overhead.py --graceful .build/debug/graceful --runs 3

Standard library only; each run in a fresh temporary directory, one at a time, alternating.
"""

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TRAIN = os.path.join(HERE, "train.py")
JOB = ["--epochs", "1", "--steps-per-epoch", "20", "--step-time", "0.02", "--log-every", "1"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def peak_rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def run(launcher):
    directory = tempfile.mkdtemp(prefix="launcher-overhead-")
    command = launcher + ["--worker_num=2", "--local_worker_num=2", f"--master_port={free_port()}",
                          "--log_dir=logs", "--join=True", TRAIN] + JOB
    log = os.path.join(directory, "logs", "worker_0.log")
    start = time.monotonic()
    job = subprocess.Popen(command, cwd=directory, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first_step = None
    peak = 0
    while job.poll() is None:
        peak = max(peak, peak_rss_kib(job.pid) or 0)
        if first_step is None and os.path.exists(log):
            with open(log, errors="replace") as f:
                if "step 1: loss" in f.read():
                    first_step = time.monotonic() - start
        time.sleep(0.02)
    total = time.monotonic() - start
    shutil.rmtree(directory, ignore_errors=True)
    if job.returncode != 0 or first_step is None:
        sys.exit(f"{' '.join(command)}: exit {job.returncode}, first step seen: {first_step is not None}")
    return first_step, peak / 1024, total


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--graceful", default="graceful", help="the graceful binary")
    parser.add_argument("--msrun", default=shutil.which("msrun") or "msrun", help="msrun")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    # Each run works in its own directory: a relative path of a launcher is made absolute first.
    absolute = [os.path.abspath(p) if os.sep in p else p for p in (args.msrun, args.graceful)]
    launchers = {"msrun": [absolute[0]], "graceful msrun": [absolute[1], "msrun"]}
    results = {name: [] for name in launchers}
    for _ in range(args.runs):
        for name, launcher in launchers.items():
            results[name].append(run(launcher))
    print("launcher        first step (s)        launcher peak RSS (MiB)  end (s)   runs")
    for name, rows in results.items():
        first, rss, total = zip(*rows)
        print(f"{name:<15} {statistics.median(first):5.1f} ({min(first):.1f}-{max(first):.1f})"
              f"      {statistics.median(rss):7.1f}                  {statistics.median(total):5.1f}     {len(rows)}")


if __name__ == "__main__":
    main()
