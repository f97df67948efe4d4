"""One rank of a job that tells Slack through gpuwatch: rank 0 sends, the others relay
through the job's c10d store (a real TCPStore served by the test).

Usage: slack_rank.py RUNDIR STORE_PORT RANK WORLD_SIZE. Slack settings come from
GPUWATCH_* variables. Commands on stdin, one a line, each answered "ok":
``raise DETECTOR`` (a fix_here finding of DETECTOR on this rank), ``resolve DETECTOR``,
``exit``. Between commands the rank reminds its notifier, as the agent does.
"""

from __future__ import annotations

import select
import sys
from datetime import timedelta
from pathlib import Path

from torch.distributed import TCPStore

from gpuwatch.config import load_settings
from gpuwatch.records import Finding
from gpuwatch.sinks.slack import job_notifier


def finding(detector: str, rank: int, state: str = "active") -> Finding:
    return Finding(detector=detector, verdict="fix_here", severity="warning",
                   summary=f"{detector} on rank {rank}.", action="Fix it.",
                   evidence={"data_share_ratio": 0.97, "data_seconds_per_step": 0.076,
                             "step_seconds": 0.078},
                   ranks=[rank], first_seen=1000.0, last_seen=1000.0,
                   fingerprint=f"{detector}-{rank}", job="gpt", state=state)  # type: ignore[arg-type]


def main() -> None:
    run_dir, port, rank, world = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), \
        int(sys.argv[4])
    store = TCPStore("127.0.0.1", port, world, is_master=False,
                     timeout=timedelta(seconds=60), wait_for_workers=False)
    notifier, relay = job_notifier(load_settings(), run_dir, rank, world, lambda: store)
    assert notifier is not None and relay is not None
    relay.interval_s = 0.2
    relay.start()
    notifier.start()
    print("ready", flush=True)
    while True:
        readable, _, _ = select.select([sys.stdin], [], [], 0.2)
        notifier.remind([])
        if not readable:
            continue
        command = sys.stdin.readline().split()
        if not command or command[0] == "exit":
            break
        state = "active" if command[0] == "raise" else "resolved"
        notifier.notify([finding(command[1], rank, state)])
        print("ok", flush=True)
    relay.exchange()  # hand over what is queued before leaving
    notifier.flush(timeout=10)
    notifier.stop()
    print("bye", flush=True)


if __name__ == "__main__":
    main()
