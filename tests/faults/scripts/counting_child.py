"""A command for ``gpuwatch run`` that counts the signals it gets. argv: RECORD

It writes RECORD.ready once its handlers are in place, appends the name of every
signal it gets to RECORD, and after the first one shuts down gracefully (0.5 s of
"saving"), then exits 0. A second signal during the shutdown is recorded too."""

import signal
import sys
import time
from pathlib import Path

record = Path(sys.argv[1])
got: list[str] = []


def on_signal(signum, frame):  # type: ignore[no-untyped-def]
    got.append(signal.Signals(signum).name)
    with record.open("a") as f:
        f.write(signal.Signals(signum).name + "\n")


for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1):
    signal.signal(sig, on_signal)
record.with_suffix(".ready").write_text("ready")
deadline = time.monotonic() + 60  # (a test's own bound)
while not got and time.monotonic() < deadline:
    time.sleep(0.01)
time.sleep(0.5)  # the graceful shutdown: a checkpoint
sys.exit(0 if got else 3)
