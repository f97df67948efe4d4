"""A job that closes its sys.stderr (a daemonised trainer, a launcher that closed it),
then trains under watch(): gpuwatch's warnings have nowhere to go.

    python closed_stderr.py OUT_DIR STEPS

Prints (to stdout) what reached the job: ``raised NAME`` for each exception a gpuwatch
call let through, then ``trained N``.
"""

import sys

import gpuwatch


def attempt(call, *args, **kwargs):
    try:
        return call(*args, **kwargs)
    except Exception as exc:  # what must never happen: gpuwatch raising into the job
        print("raised", type(exc).__name__, flush=True)
        return None


sys.stderr.close()
out, count = sys.argv[1], int(sys.argv[2])
attempt(gpuwatch.watch, sample_interval_s=-1)  # bad settings: told in a line, to stderr
monitor = attempt(gpuwatch.watch, out_dir=out, job="closed")
for _ in range(count):
    with monitor.step(samples=1):
        span = attempt(monitor.phase, "no such phase")  # misuse: counted and told once
        with span or monitor.phase("compute"):
            pass
attempt(monitor.stop)
print("trained", count, flush=True)
