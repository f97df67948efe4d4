"""Offline analysis speed and memory on the shape real jobs write: `gpuwatch analyze`
over a corpus-generated multi-rank log (tests/scenarios, the corpus's own generator).

    python benchmarks/analyze_throughput.py [--ranks 8] [--hours 0.5] [--runs 5]
    python benchmarks/analyze_throughput.py --memory 1000000,10000000

Throughput: ``--ranks`` ranks of 4 s steps (LLM pretraining, 10% in collectives,
hourly blocking saves) with the usual 1 Hz NVML, host, allocator and agent samples,
``--hours`` of training. Each run replays the logs on one core (the serial path),
then parses the same lines with a bare ``json.loads``; the two alternate, ``--runs``
times. Reports CPU seconds (parsing included), records/s and the ratio to the bare
parse: median and spread (min-max).

Memory (``--memory N,M``): one rank's log of each record count, replayed in a fresh
process each; reports the peak RSS, which stays flat when replay streams.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpuwatch.config import Settings
from gpuwatch.detection.replay import analyze
from tests.scenarios import Shape, Saves, write

RECORDS_PER_RANK_S = 4.25  # four 1 Hz samples and a 4 s step's record per second


def shape(ranks: int, seconds: float) -> Shape:
    """Multi-second LLM steps on ``ranks`` ranks, sampled at 1 Hz."""
    return Shape(step_s=4.0, duration_s=seconds, world=ranks, collective_share=0.1,
                 collective_bytes=int(2e9), saves=Saves(every_s=3600.0, blocking_s=30.0),
                 total_steps=100_000)


def bare_parse(paths: list[Path]) -> tuple[int, float]:
    """(lines, CPU seconds) of json.loads over every line."""
    start = time.process_time()
    n = 0
    for path in paths:
        with path.open("rb") as f:
            for line in f:
                json.loads(line)
                n += 1
    return n, time.process_time() - start


def replay(paths: list[Path]) -> tuple[int, float]:
    """(records, CPU seconds) of the serial replay."""
    start = time.process_time()
    result = analyze(paths, Settings(), workers=1)
    return result.records, time.process_time() - start


def throughput(ranks: int, hours: float, runs: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        paths = write(shape(ranks, hours * 3600), Path(tmp))
        size = sum(p.stat().st_size for p in paths)
        rates, ratios, cpus = [], [], []
        for _ in range(runs):
            records, cpu = replay(paths)
            _, parse = bare_parse(paths)
            cpus.append(cpu)
            rates.append(records / cpu)
            ratios.append(cpu / parse)
        print(f"{ranks} ranks x {hours} h: {records} records, {size / 2**20:.1f} MiB")
        print(f"  replay CPU s   median {statistics.median(cpus):.2f}  "
              f"[{min(cpus):.2f}-{max(cpus):.2f}]")
        print(f"  records/s      median {statistics.median(rates):,.0f}  "
              f"[{min(rates):,.0f}-{max(rates):,.0f}]")
        print(f"  x json.loads   median {statistics.median(ratios):.2f}  "
              f"[{min(ratios):.2f}-{max(ratios):.2f}]")


def memory(counts: list[int]) -> None:
    for n in counts:
        out = subprocess.run([sys.executable, __file__, "--one-rank-rss", str(n)],
                             check=True, capture_output=True, text=True).stdout
        print(out.strip())


def one_rank_rss(records: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        paths = write(shape(1, records / RECORDS_PER_RANK_S), Path(tmp))
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        result = analyze(paths, Settings(), workers=1)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(f"{result.records:>10} records: peak RSS {peak / 1024:.0f} MiB "
              f"(writing the log peaked at {before / 1024:.0f} MiB)")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--ranks", type=int, default=8)
    p.add_argument("--hours", type=float, default=0.5)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--memory", type=lambda s: [int(x) for x in s.split(",")])
    p.add_argument("--one-rank-rss", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one_rank_rss:
        one_rank_rss(args.one_rank_rss)
    elif args.memory:
        memory(args.memory)
    else:
        throughput(args.ranks, args.hours, args.runs)


if __name__ == "__main__":
    main()
