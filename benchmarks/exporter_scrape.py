"""Exporter cost: scrape latency with 8 GPUs' worth of metrics, and what 100 scrapes/s
do to a CPU training step.

    python benchmarks/exporter_scrape.py [--pairs 20]

latency: 1,000 HTTP scrapes of a real endpoint whose state changes before every
scrape (so each one renders: the worst case); p50 and p99 in ms.

overhead: a small torch MLP training under the agent, in blocks of 150 steps,
with and without a separate process scraping /metrics 100 times a second;
blocks interleaved in pairs (order alternating); reports the mean step time of
each and the ratio with a 95% interval over the pairs.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

from workload import cpu_mlp

import gpuwatch
from gpuwatch.records import Finding, Sample, Step
from gpuwatch.sinks.prometheus import Exporter, ExporterState, catalogue

SCRAPER = """
import sys, time, urllib.request
url, period = sys.argv[1], 1 / float(sys.argv[2])
next_t = time.monotonic()
while True:
    urllib.request.urlopen(url, timeout=5).read()
    next_t += period
    time.sleep(max(next_t - time.monotonic(), 0))
"""


def eight_gpus() -> list[Sample]:
    gpu = {m.key: 1.0 for m in catalogue() if m.source == "nvml"}
    alloc = {m.key: 1.0 for m in catalogue() if m.source == "allocator"}
    return ([Sample(0, 1.0, "nvml", dict(gpu), gpu=g) for g in range(8)]
            + [Sample(0, 1.0, "allocator", dict(alloc), gpu=g) for g in range(8)])


def latency(scrapes: int) -> None:
    state = ExporterState({"training_job": "bench", "run": "bench-1", "host": "h", "rank": "0",
                           "local_rank": "0"})
    state.update([Step(rank=0, step=1, t=0.0, wall_s=0.1)], [], {})  # the step histogram
    finding = Finding(detector="fits_on_paper", verdict="move_to_h100", severity="warning",
                      summary="", action="", evidence={}, ranks=[0], first_seen=0.0,
                      last_seen=0.0, fingerprint="f",
                      projection={"target": "H100 SXM", "speedup_ratio": 2.0})
    exporter = Exporter(state, on_error=print)
    exporter.start("127.0.0.1", 0)
    url = f"http://127.0.0.1:{exporter.port}/metrics"
    samples = eight_gpus()
    times = []
    for _ in range(scrapes):
        state.update(samples, [finding], {})  # a new state: this scrape renders
        t0 = time.perf_counter()
        body = urllib.request.urlopen(url, timeout=5).read()
        times.append(time.perf_counter() - t0)
    exporter.stop()
    series = sum(1 for line in body.decode().splitlines() if not line.startswith("#"))
    times.sort()
    print(f"scrape of {series} series, {len(body) / 1024:.0f} KiB, rendered every time: "
          f"p50 {statistics.median(times) * 1e3:.2f} ms, "
          f"p99 {times[int(len(times) * 0.99)] * 1e3:.2f} ms")


def overhead(pairs: int, steps: int) -> None:
    with tempfile.TemporaryDirectory() as out:
        monitor = gpuwatch.watch(out_dir=out, job="bench", exporter={"port": 0})
        train_step = cpu_mlp(monitor)
        time.sleep(1.5)  # the agent starts the endpoint on its thread
        port = monitor.agent.exporter.port if monitor.agent.exporter else None
        assert port, "no endpoint"
        url = f"http://127.0.0.1:{port}/metrics"

        def block() -> float:
            t0 = time.perf_counter()
            for _ in range(steps):
                train_step()
            return (time.perf_counter() - t0) / steps

        block()  # warm-up
        ratios, quiet_all, scraped_all = [], [], []
        for i in range(pairs):
            results = {}
            for scraped in ((False, True) if i % 2 == 0 else (True, False)):
                scraper = None
                if scraped:
                    scraper = subprocess.Popen([sys.executable, "-c", SCRAPER, url, "100"])
                    time.sleep(0.3)
                results[scraped] = block()
                if scraper is not None:
                    scraper.terminate()
                    scraper.wait()
            quiet_all.append(results[False])
            scraped_all.append(results[True])
            ratios.append(results[True] / results[False])
        renders = monitor.agent.exporter.renders if monitor.agent.exporter else 0
        monitor.stop()
    mean = statistics.fmean(ratios)
    half = 1.96 * statistics.stdev(ratios) / len(ratios) ** 0.5
    print(f"step without scrapes {statistics.fmean(quiet_all) * 1e3:.3f} ms, with 100 scrapes/s "
          f"{statistics.fmean(scraped_all) * 1e3:.3f} ms ({renders} renders)")
    print(f"ratio {mean:.4f} (95% CI {mean - half:.4f} .. {mean + half:.4f}) over {pairs} pairs")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--scrapes", type=int, default=1000)
    p.add_argument("--pairs", type=int, default=20)
    p.add_argument("--steps", type=int, default=150)
    args = p.parse_args()
    latency(args.scrapes)
    overhead(args.pairs, args.steps)


if __name__ == "__main__":
    main()
