"""A loop using the plain API. argv: OUT_DIR MODE where MODE is
'exit' (return normally), 'raise' (the loop raises), 'sigterm' (wait to be killed),
'fork' (a forked child exits through atexit)."""

import os
import sys
import time

import gpuwatch

out, mode = sys.argv[1], sys.argv[2]
monitor = gpuwatch.watch(out_dir=out, sample_interval_s=0.1)
for _ in range(50):
    with monitor.step(samples=2), monitor.phase("compute"):
        time.sleep(0.002)
if mode == "fork":
    pid = os.fork()
    if pid == 0:
        sys.exit(0)  # runs atexit in the child: it must not write to the parent's log
    os.waitpid(pid, 0)
if mode == "raise":
    with monitor.step():
        raise RuntimeError("training blew up")
if mode == "sigterm":
    print("ready", flush=True)
    while True:
        with monitor.step():
            time.sleep(0.01)
