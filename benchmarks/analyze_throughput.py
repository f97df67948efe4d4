"""Offline analysis speed and memory: `gpuwatch analyze` over a synthetic run log.

    python benchmarks/analyze_throughput.py [--records 1000000]

Writes a run log of --records records (steps at 20 ms plus host, agent and
two GPUs' NVML samples at 1 Hz, as a 2-GPU job would log them), then replays it
through every detector on one core, for logs of a tenth, one and three times
--records. Reports records/s (CPU time) and the process's RSS after each
replay: flat memory means the RSS does not grow with the log.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import psutil

from gpuwatch.config import Settings
from gpuwatch.detection.replay import analyze
from gpuwatch.records import SCHEMA_VERSION, Meta, Record, Sample, Step
from gpuwatch.runlog import RunLogWriter

STEP_S = 0.02
GPU = {"gpu_utilization_ratio": 0.9, "gpu_memory_used_bytes": 6e10, "gpu_memory_total_bytes": 8e10,
       "gpu_power_watts": 400.0, "gpu_energy_joules_total": 1e6, "gpu_temperature_celsius": 60.0,
       "gpu_sm_clock_hertz": 1.9e9, "gpu_memory_clock_hertz": 2.6e9,
       "gpu_clock_event_reasons": 0.0, "gpu_tensor_active_ratio": 0.5,
       "gpu_dram_active_ratio": 0.4}


def write_log(path: Path, records: int) -> None:
    w = RunLogWriter(path)
    w.write([Meta(schema=SCHEMA_VERSION, gpuwatch="bench", job="bench", host="h", rank=0,
                  local_rank=0, world_size=1, pid=1, started=0.0)])
    n, step, t = 1, 0, 0.0
    batch: list[Record] = []
    while n < records:
        step += 1
        t += STEP_S
        batch.append(Step(rank=0, step=step, t=t, wall_s=STEP_S, data_s=0.001, compute_s=0.017,
                          optimizer_s=0.002, samples=32))
        n += 1
        if step % 50 == 0:  # once a second
            batch += [Sample(0, t, "nvml", dict(GPU), gpu=0),
                      Sample(0, t, "nvml", dict(GPU), gpu=1),
                      Sample(0, t, "host", {"process_cpu_cores": 1.0, "workers": 4.0,
                                            "workers_cpu_ratio": 0.3}),
                      Sample(0, t, "agent", {"agent_cpu_seconds_total": 1.0})]
            n += 4
            w.write(batch)
            batch = []
    w.write(batch)
    w.close()


def replay(path: Path) -> tuple[int, float, float]:
    """(records, CPU seconds, RSS after the replay in MiB)."""
    start = time.process_time()
    result = analyze([path], Settings())
    cpu = time.process_time() - start
    return result.records, cpu, psutil.Process().memory_info().rss / 2**20


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--records", type=int, default=1_000_000)
    args = p.parse_args()
    sizes = (args.records // 10, args.records, 3 * args.records)
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            path = Path(tmp) / f"{n}.jsonl"
            write_log(path, n)
            records, cpu, rss = replay(path)
            path.unlink()
            print(f"{records:>9} records: {cpu:6.2f} s of CPU, {records / cpu:,.0f} records/s; "
                  f"RSS after {rss:.1f} MiB")


if __name__ == "__main__":
    main()
