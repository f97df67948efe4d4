"""How long the scenario corpus takes to replay: `gpuwatch analyze` over every job.

    python benchmarks/corpus_replay.py [--rounds 3]

Writes every corpus job's run logs (tests/scenarios), then replays them all with
the detectors, ``--rounds`` times; reports the records and the CPU seconds of each
round (median and spread), and the slowest job.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpuwatch.config import Settings
from gpuwatch.detection.replay import analyze
from tests.scenarios import JOBS, write


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        logs = {j.name: write(j.shape, Path(tmp) / j.name, job=j.name) for j in JOBS}
        totals: list[float] = []
        per_job: dict[str, list[float]] = {j.name: [] for j in JOBS}
        records = 0
        for _ in range(args.rounds):
            records = 0
            start = time.process_time()
            for j in JOBS:
                t = time.process_time()
                records += analyze(logs[j.name], Settings(**j.settings)).records
                per_job[j.name].append(time.process_time() - t)
            totals.append(time.process_time() - start)
    slowest = max(per_job, key=lambda n: statistics.median(per_job[n]))
    print(f"{len(JOBS)} jobs, {records} records: median {statistics.median(totals):.2f} s of CPU "
          f"per replay of the corpus (min {min(totals):.2f}, max {max(totals):.2f}, "
          f"{args.rounds} rounds); slowest job {slowest} "
          f"{statistics.median(per_job[slowest]):.2f} s")


if __name__ == "__main__":
    main()
