"""Per-step cost of the plain-PyTorch API on the hot path, with the agent running.

    python benchmarks/hook_cost.py [--steps 200000]

Each step is timed with perf_counter_ns; the cost is the monitored step minus an
empty step timed the same way (interleaved in blocks, so both see the same
machine). Reported: median and p99 of the per-step cost in microseconds, for a
bare step, a step with three pre-built phase spans (data, compute, optimizer), and
the README's own usage: ``with monitor.phase("data"):`` looked up by name inside
every step. RESULTS.md reports the median and spread of five such runs.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from time import perf_counter_ns

import gpuwatch

BLOCK = 1000


def quantiles(ns: list[int]) -> tuple[float, float]:
    ns.sort()
    return statistics.median(ns) / 1e3, ns[int(len(ns) * 0.99)] / 1e3


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=200_000)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as out:
        monitor = gpuwatch.watch(out_dir=out, job="bench")
        data, compute, opt = (monitor.phase(n) for n in ("data", "compute", "optimizer"))
        empty: list[int] = []
        bare: list[int] = []
        phased: list[int] = []
        readme: list[int] = []
        phase = monitor.phase
        for _ in range(args.steps // BLOCK):
            for _ in range(BLOCK):
                t0 = perf_counter_ns()
                t1 = perf_counter_ns()
                empty.append(t1 - t0)
            for _ in range(BLOCK):
                t0 = perf_counter_ns()
                with monitor.step():
                    pass
                t1 = perf_counter_ns()
                bare.append(t1 - t0)
            for _ in range(BLOCK):
                t0 = perf_counter_ns()
                with monitor.step():
                    with data:
                        pass
                    with compute:
                        pass
                    with opt:
                        pass
                t1 = perf_counter_ns()
                phased.append(t1 - t0)
            for _ in range(BLOCK):
                t0 = perf_counter_ns()
                with monitor.step():
                    with phase("data"):
                        pass
                    with phase("compute"):
                        pass
                    with phase("optimizer"):
                        pass
                t1 = perf_counter_ns()
                readme.append(t1 - t0)
        monitor.stop()
        dropped = monitor.agent.ring.dropped
        logged = monitor.agent.assembler.steps
    base_med, base_p99 = quantiles(empty)
    print(f"steps per variant: {len(bare)}; steps assembled by the agent: {logged}; "
          f"marks dropped: {dropped}")
    print(f"timer floor (empty step):          median {base_med:.3f} us, p99 {base_p99:.3f} us")
    for name, ns in (("step()", bare), ("step() + 3 pre-built phases", phased),
                     ('step() + 3 x phase("name") (README)', readme)):
        med, p99 = quantiles(ns)
        print(f"{name:<34} median {med - base_med:.3f} us, p99 {p99 - base_med:.3f} us "
              "(floor subtracted)")


if __name__ == "__main__":
    main()
