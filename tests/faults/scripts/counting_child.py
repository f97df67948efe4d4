"""A command for ``gpuwatch run`` that counts the signals it gets. argv: RECORD

It writes RECORD.ready once its handlers are in place, appends the name of every
signal it gets to RECORD, and after the first one shuts down gracefully: it stays up
for a second one (at most 0.5 s, the time a checkpoint would take), then exits 0. A
second signal is recorded too."""

import signal
import sys
import threading
from pathlib import Path

record = Path(sys.argv[1])
first, second = threading.Event(), threading.Event()


def on_signal(signum, frame):  # type: ignore[no-untyped-def]
    with record.open("a") as f:
        f.write(signal.Signals(signum).name + "\n")
    (second if first.is_set() else first).set()


for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1):
    signal.signal(sig, on_signal)
record.with_suffix(".ready").write_text("ready")
got = first.wait(60)  # (a test's own bound)
second.wait(0.5)  # the graceful shutdown: a second signal would cut into it
sys.exit(0 if got else 3)
