"""A training loop to be signalled. argv: OUT_DIR MODE [HANDLER]

MODE: 'loop' (steps forever), 'c-call' (50 steps, then one long torch op in C).
HANDLER: 'before' or 'after' installs the user's own SIGTERM handler before or after
gpuwatch.watch(); it writes OUT_DIR/handled and exits 0. 'catch' catches Ctrl-C's
KeyboardInterrupt, cleans up and exits 1 (as Lightning does); 'catch-exit' does the
same with the builtin ``exit(1)`` (a script without ``sys``); 'catch-return' catches it,
saves and ends normally (status 0).
"""

import signal
import sys
import time
from pathlib import Path

out, mode = Path(sys.argv[1]), sys.argv[2]
handler = sys.argv[3] if len(sys.argv) > 3 else ""


def on_sigterm(signum, frame):  # type: ignore[no-untyped-def]
    (out / "handled").write_text("yes")
    sys.exit(0)


if handler == "before":
    signal.signal(signal.SIGTERM, on_sigterm)
import gpuwatch  # noqa: E402

monitor = gpuwatch.watch(out_dir=str(out), flush_interval_s=0.1, sample_interval_s=0.1)
if handler == "after":
    signal.signal(signal.SIGTERM, on_sigterm)
if mode == "c-call":
    import torch

    torch.set_num_threads(1)
    x = torch.rand(2048, 2048) / 2048
for _ in range(50):
    with monitor.step(samples=1), monitor.phase("compute"):
        time.sleep(0.001)
print("ready", flush=True)
if mode == "c-call":
    with monitor.step():
        torch.linalg.matrix_power(x, 1 << 20)  # one C call of many seconds
try:
    while True:
        with monitor.step(samples=1), monitor.phase("compute"):
            time.sleep(0.001)
except KeyboardInterrupt:
    if not handler.startswith("catch"):
        raise
    (out / "handled").write_text("yes")
    if handler == "catch-return":
        sys.exit(0)
    if handler == "catch-exit":
        exit(1)  # (the builtin, as a script without sys calls it)
    sys.exit(1)
