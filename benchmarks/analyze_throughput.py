"""Offline analysis speed and memory on the shape real jobs write: `gpuwatch analyze`
over a corpus-generated multi-rank log (tests/scenarios, the corpus's own generator).

    python benchmarks/analyze_throughput.py [--ranks 8] [--hours 0.5] [--runs 5]
    python benchmarks/analyze_throughput.py --memory 1000000,10000000
    python benchmarks/analyze_throughput.py --job 64 --minutes 10
    python benchmarks/analyze_throughput.py --bytes-per-day
    python benchmarks/analyze_throughput.py --codecs --hours 6

Throughput: ``--ranks`` ranks of 4 s steps (LLM pretraining, 10% in collectives,
hourly blocking saves) with the usual 1 Hz NVML, host, allocator and agent samples,
``--hours`` of training. Each run replays the logs on one core (the serial path),
then parses the same lines with a bare ``json.loads``; the two alternate, ``--runs``
times. Reports CPU seconds (parsing included), records/s and the ratio to the bare
parse: median and spread (min-max).

Memory (``--memory N,M``): one rank's log of each record count, replayed in a fresh
process each; reports the peak RSS, which stays flat when replay streams.

Job (``--job R --minutes M``): R ranks of the same shape for M minutes, analysed with
every core (``analyze`` as the CLI calls it); wall and CPU time, and the wall time
scaled linearly to 24 hours (replay cost is linear in records: memory is flat).

Bytes per rank per day (``--bytes-per-day``): one rank's 24 hours written by the run-log
writer at the default segment size (rotation and gzip), on disk at the end.

Codecs (``--codecs``): gzip levels against zstd levels (if ``zstandard`` is installed)
on one rank's ``--hours``: ratio and speed each way.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpuwatch.config import Settings
from gpuwatch.detection.replay import analyze
from gpuwatch.runlog import RunLogWriter, encode, segments
from tests.scenarios import Saves, Shape, simulate, write

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
    """Each log written by one process, replayed by a fresh one (its peak RSS is the
    replay's own)."""
    for n in counts:
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run([sys.executable, "-c", WRITE.format(root=str(ROOT), records=n,
                                                                 tmp=tmp)], check=True)
            out = subprocess.run([sys.executable, __file__, "--one-rank-rss", tmp],
                                 check=True, capture_output=True, text=True).stdout
            print(out.strip())


ROOT = Path(__file__).resolve().parents[1]
WRITE = """import sys; sys.path.insert(0, {root!r}); sys.path.insert(0, {root!r} + '/benchmarks')
from collections.abc import Callable
from pathlib import Path
from typing import Any
from analyze_throughput import shape, RECORDS_PER_RANK_S
from tests.scenarios import write
write(shape(1, {records} / RECORDS_PER_RANK_S), Path({tmp!r}))
"""


def one_rank_rss(directory: str) -> None:
    result = analyze([Path(directory)], Settings(), workers=1)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"{result.records:>10} records: peak RSS of the replay {peak / 1024:.0f} MiB")


def job(ranks: int, minutes: float, workers: int | None) -> None:
    """Write the job's logs here; analyse them in a fresh process (whose memory is the
    analysis's own)."""
    with tempfile.TemporaryDirectory() as tmp:
        write(shape(ranks, minutes * 60), Path(tmp))
        command = [sys.executable, __file__, "--analyze-dir", tmp]
        if workers is not None:
            command += ["--workers", str(workers)]
        out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        wall = float(out.split()[0])
        print(f"{ranks} ranks x {minutes} min: {out.split(maxsplit=1)[1].strip()}; "
              f"24 h scaled: wall {wall * 24 * 60 / minutes / 60:.1f} min")


def analyze_dir(directory: str, workers: int | None) -> None:
    """Wall seconds first, then records, CPU (with the workers') and peak RSS."""
    wall0 = time.perf_counter()
    result = analyze([Path(directory)], Settings(), workers=workers)
    wall = time.perf_counter() - wall0
    own, children = (resource.getrusage(who) for who in
                     (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    cpu = own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime
    print(f"{wall:.1f} {result.records} records, workers {workers or 'default'} of "
          f"{len(os.sched_getaffinity(0))} cores: wall {wall:.1f} s, CPU {cpu:.1f} s, peak "
          f"RSS {own.ru_maxrss / 1024:.0f} MiB (this process), {children.ru_maxrss / 1024:.0f}"
          " MiB (a worker)")


def bytes_per_day() -> None:
    settings = Settings()
    (records,) = simulate(shape(1, 24 * 3600))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "run-rank0.jsonl"
        writer = RunLogWriter(path, segment_bytes=int(settings.runlog_segment_mb * 2**20))
        for k in range(0, len(records), 64):  # the agent writes in small batches
            writer.write(records[k:k + 64])
        writer.close()
        raw = sum(len(encode(r)) for r in records)
        on_disk = sum(p.stat().st_size for p in Path(tmp).iterdir())
        print(f"one rank, 24 h, {len(records)} records: {raw / 1e6:.1f} MB of JSON lines, "
              f"{on_disk / 1e6:.1f} MB on disk with {len(segments(path))} gzip segments "
              f"of {settings.runlog_segment_mb:g} MiB (the live file is the rest)")


def codecs(hours: float) -> None:
    """gzip (what the writer uses, from the standard library) against zstd (the
    ``zstandard`` package, if installed: not a gpuwatch dependency) on one rank's log:
    ratio, and MB/s of compressing and decompressing (median of 5)."""
    (records,) = simulate(shape(1, hours * 3600))
    raw = b"".join(encode(r) for r in records)
    candidates: dict[str, tuple[Any, Any]] = {
        f"gzip -{level}": (lambda b, lv=level: gzip.compress(b, compresslevel=lv),
                           gzip.decompress) for level in (1, 6, 9)}
    try:
        import zstandard
    except ImportError:
        print("zstandard not installed: gzip only")
    else:
        for level in (3, 9, 19):
            candidates[f"zstd -{level}"] = (zstandard.ZstdCompressor(level=level).compress,
                                            zstandard.ZstdDecompressor().decompress)
    print(f"one rank, {hours:g} h: {len(records)} records, {len(raw) / 1e6:.1f} MB of JSON lines")
    for name, (compress, decompress) in candidates.items():
        packed = compress(raw)
        put = statistics.median(_seconds(lambda c=compress: c(raw)) for _ in range(5))
        get = statistics.median(_seconds(lambda d=decompress, p=packed: d(p)) for _ in range(5))
        print(f"{name:>8}: {len(raw) / len(packed):5.1f}x, compress {len(raw) / put / 1e6:6.0f} "
              f"MB/s, decompress {len(raw) / get / 1e6:6.0f} MB/s")


def _seconds(work: Callable[[], Any]) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--ranks", type=int, default=8)
    p.add_argument("--hours", type=float, default=0.5)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--memory", type=lambda s: [int(x) for x in s.split(",")])
    p.add_argument("--one-rank-rss", help=argparse.SUPPRESS)
    p.add_argument("--analyze-dir", help=argparse.SUPPRESS)
    p.add_argument("--job", type=int, metavar="RANKS")
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--workers", type=int, help="default: analyze's own")
    p.add_argument("--bytes-per-day", action="store_true")
    p.add_argument("--codecs", action="store_true", help="gzip against zstd on --hours")
    args = p.parse_args()
    if args.codecs:
        codecs(args.hours)
    elif args.bytes_per_day:
        bytes_per_day()
    elif args.job:
        job(args.job, args.minutes, args.workers)
    elif args.analyze_dir:
        analyze_dir(args.analyze_dir, args.workers)
    elif args.one_rank_rss:
        one_rank_rss(args.one_rank_rss)
    elif args.memory:
        memory(args.memory)
    else:
        throughput(args.ranks, args.hours, args.runs)


if __name__ == "__main__":
    main()
