# python3 launchers.py N LAUNCHER... : N launches; for each, seconds from start to rank 0's
# "step 1:" line and to exit, and the launcher process's VmHWM (MB), polled every 20 ms.
import os, subprocess, sys, tempfile, threading, time, statistics
n, command = int(sys.argv[1]), sys.argv[2:]
rows = []
for _ in range(n):
    with tempfile.TemporaryDirectory() as cwd:
        t0 = time.monotonic()
        p = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        hwm, first = [0], [None]
        def poll():
            while p.poll() is None:
                try:
                    for line in open(f"/proc/{p.pid}/status"):
                        if line.startswith("VmHWM:"): hwm[0] = max(hwm[0], int(line.split()[1]))
                except OSError: pass
                time.sleep(0.02)
        threading.Thread(target=poll, daemon=True).start()
        for line in p.stdout:
            if first[0] is None and "step 1:" in line: first[0] = time.monotonic() - t0
        rc = p.wait(); total = time.monotonic() - t0
        rows.append((first[0], total, hwm[0] / 1024, rc))
for r in rows: print("first step %.2f s, exit %.2f s, VmHWM %.1f MB, rc %d" % r)
print("median: first step %.2f s, exit %.2f s, VmHWM %.1f MB" % tuple(statistics.median(r[i] for r in rows) for i in range(3)))
