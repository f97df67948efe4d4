"""What the agent costs off the hot path: its thread's CPU, and the process's memory.

    python benchmarks/agent_footprint.py cpu [--seconds 60]
    python benchmarks/agent_footprint.py memory [--steps 1000000]

cpu: a training-like loop (a small torch MLP on CPU, ~10 ms steps) under the
agent at default settings; reports the agent thread's CPU time (thread_time,
read inside the thread) as a share of one core over the run.

memory: a million recorded steps, each with --work-us of busy work (the agent,
sharing the GIL, must keep up: marks dropped must be 0); reports RSS after a
warm-up of 100,000 steps and at the end, and how many steps the agent wrote.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import psutil
from workload import cpu_mlp

import gpuwatch


def cpu(seconds: float) -> None:
    with tempfile.TemporaryDirectory() as out:
        monitor = gpuwatch.watch(out_dir=out, job="bench")  # default intervals
        step = cpu_mlp(monitor)
        start = time.monotonic()
        steps = 0
        while time.monotonic() - start < seconds:
            step()
            steps += 1
        wall = time.monotonic() - start
        monitor.stop()
        thread_cpu = monitor.agent.thread_cpu_s
    print(f"steps {steps} in {wall:.1f} s ({wall / steps * 1e3:.1f} ms/step)")
    print(f"agent thread CPU {thread_cpu:.3f} s = {thread_cpu / wall:.3%} of one core")


def busy(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def memory(steps: int, work_us: float) -> None:
    proc = psutil.Process()
    work = work_us * 1e-6
    with tempfile.TemporaryDirectory() as out:
        monitor = gpuwatch.watch(out_dir=out, job="bench")
        warmup = 100_000
        for _ in range(warmup):
            with monitor.step(samples=8):
                busy(work)
        time.sleep(1.0)  # let the agent catch up before the baseline
        rss0 = proc.memory_info().rss
        start = time.monotonic()
        for _ in range(steps):
            with monitor.step(samples=8):
                busy(work)
        wall = time.monotonic() - start
        time.sleep(1.0)
        rss1 = proc.memory_info().rss
        monitor.stop()
        written = monitor.agent.assembler.steps
        dropped = monitor.agent.ring.dropped
    print(f"steps after warm-up {steps} ({steps / wall:,.0f} steps/s); "
          f"steps written {written} of {warmup + steps}; marks dropped {dropped}")
    print(f"RSS after warm-up {rss0 / 2**20:.1f} MiB, at end {rss1 / 2**20:.1f} MiB, "
          f"growth {(rss1 - rss0) / 2**20:.2f} MiB")


def main() -> None:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="what", required=True)
    c = sub.add_parser("cpu")
    c.add_argument("--seconds", type=float, default=60.0)
    m = sub.add_parser("memory")
    m.add_argument("--steps", type=int, default=1_000_000)
    m.add_argument("--work-us", type=float, default=30.0)
    args = p.parse_args()
    if args.what == "cpu":
        cpu(args.seconds)
    else:
        memory(args.steps, args.work_us)


if __name__ == "__main__":
    main()
