"""What the agent costs off the hot path: its thread's CPU, and the process's memory.

    python benchmarks/agent_footprint.py cpu [--seconds 60]
    python benchmarks/agent_footprint.py memory [--steps 1000000]
    python benchmarks/agent_footprint.py nvml [--runs 5] [--seconds 20]

cpu: a training-like loop (a small torch MLP on CPU, ~10 ms steps) under the
agent at default settings; reports the agent thread's CPU time (thread_time,
read inside the thread) as a share of one core over the run.

memory: a million recorded steps, each with --work-us of busy work (the agent,
sharing the GIL, must keep up: marks dropped must be 0); reports RSS after a
warm-up of 100,000 steps and at the end, and how many steps the agent wrote.

nvml: the agent with NVML present: a fake NVML (tests/fakes.py) of 8 H100s with
NVLink whose calls block for a healthy driver's per-call times (REALISTIC_LATENCY:
PCIe throughput reads ~20 ms, NVLink state queries, GPM samples), at default
intervals. A pure-Python step (~20 ms, holding the GIL throughout) runs
``--seconds`` without gpuwatch, then as long with the agent; ``--runs`` such pairs,
in alternating order. Reports the agent thread's CPU as a share of one core and
the step's median and p99 with and without the agent (their ratio), and the samples the
agent took per second (it is set to 1 Hz; a sampler starved of the GIL falls behind)
with the agent's CPU per sample.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil
from workload import cpu_mlp

import gpuwatch
from gpuwatch.agent import Agent
from gpuwatch.config import load_settings
from gpuwatch.monitor import Monitor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.fakes import REALISTIC_LATENCY, FakeGpu, FakeNvml


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


def python_step(n: int = 200_000) -> float:
    """A step of pure Python work (holds the GIL throughout): its seconds."""
    t0 = time.perf_counter()
    x = 0
    for i in range(n):
        x += i * i % 7
    return time.perf_counter() - t0


def steps_for(seconds: float, monitor: Monitor | None) -> list[float]:
    out: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        if monitor is None:
            out.append(python_step())
        else:
            with monitor.step(samples=8):
                out.append(python_step())
    return out


def with_nvml(runs: int, seconds: float) -> None:
    gpus = [FakeGpu(uuid=f"GPU-{i:08d}-0000-0000-0000-000000000000",
                    pci_bus_id=f"00000000:{0x18 + i:02X}:00.0") for i in range(8)]
    cpu_shares: list[float] = []
    rates: list[float] = []  # samples of every GPU taken per second
    per_sample: list[float] = []  # agent CPU per sample of every GPU (s)
    ratio_med: list[float] = []
    ratio_p99: list[float] = []
    meds: dict[str, list[float]] = {"without": [], "with": []}
    calls = 0
    for run in range(runs):
        order = ("without", "with") if run % 2 == 0 else ("with", "without")
        got: dict[str, list[float]] = {}
        for kind in order:
            if kind == "without":
                got[kind] = steps_for(seconds, None)
                continue
            nvml = FakeNvml(gpus, latency=REALISTIC_LATENCY)
            with tempfile.TemporaryDirectory() as out:
                agent = Agent(load_settings(out_dir=out, job="bench",
                                            exporter={"enabled": False}),
                              nvml_library=nvml, memory_stats=None)
                monitor = Monitor(agent)
                agent.start()
                start = time.monotonic()
                got[kind] = steps_for(seconds, monitor)
                wall = time.monotonic() - start
                agent.stop()
                cpu_shares.append(agent.thread_cpu_s / wall)
                calls += sum(nvml.calls.values())
                taken = nvml.calls["nvmlDeviceGetUtilizationRates"] / len(gpus)
                rates.append(taken / wall)
                per_sample.append(agent.thread_cpu_s / max(taken, 1.0))
        for kind in got:
            meds[kind].append(statistics.median(got[kind]))
        q = {k: statistics.quantiles(v, n=100)[98] for k, v in got.items()}
        ratio_med.append(meds["with"][-1] / meds["without"][-1])
        ratio_p99.append(q["with"] / q["without"])
    print(f"{runs} interleaved pairs of {seconds:.0f} s; NVML calls made: {calls}")

    def show(name: str, xs: list[float], fmt: str) -> None:
        print(f"  {name:<34} median {format(statistics.median(xs), fmt)}  "
              f"[{format(min(xs), fmt)} - {format(max(xs), fmt)}]")
    show("agent thread CPU, share of a core", cpu_shares, ".3%")
    show("samples taken per second (1 Hz set)", rates, ".2f")
    show("agent CPU per sample (ms)", [c * 1e3 for c in per_sample], ".1f")
    show("step median without agent (ms)", [m * 1e3 for m in meds["without"]], ".3f")
    show("step median with agent (ms)", [m * 1e3 for m in meds["with"]], ".3f")
    show("step median ratio with/without", ratio_med, ".4f")
    show("step p99 ratio with/without", ratio_p99, ".4f")


def main() -> None:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="what", required=True)
    c = sub.add_parser("cpu")
    c.add_argument("--seconds", type=float, default=60.0)
    m = sub.add_parser("memory")
    m.add_argument("--steps", type=int, default=1_000_000)
    m.add_argument("--work-us", type=float, default=30.0)
    n = sub.add_parser("nvml")
    n.add_argument("--runs", type=int, default=5)
    n.add_argument("--seconds", type=float, default=20.0)
    args = p.parse_args()
    if args.what == "cpu":
        cpu(args.seconds)
    elif args.what == "nvml":
        with_nvml(args.runs, args.seconds)
    else:
        memory(args.steps, args.work_us)


if __name__ == "__main__":
    main()
