"""data_starvation: the loop waits for input while its loader cannot keep up (fix here).

Judged over the rule's window, and over ``LONG_WINDOWS`` of them: a loader that stalls
every few steps (network storage) shows its mean only over several stalls, while one
window holds one stall or two."""

from __future__ import annotations

from gpuwatch.detection.context import (
    LONG_WINDOWS,
    Context,
    Detection,
    recent,
    window_s,
    window_start,
)
from gpuwatch.detection.rules import Rule
from gpuwatch.telemetry import Telemetry


def detect(view: Telemetry, rule: Rule, ctx: Context, now: float) -> Detection | None:
    since = window_start(view, rule, now)
    summary = recent(view, rule, now)
    if summary is None or summary.data_share < rule.thresholds["data_share"]:
        since = now - LONG_WINDOWS * window_s(view, rule)
        summary = view.summarise(since)
        if (summary is None or summary.steps < rule.min_steps
                or summary.data_share < rule.thresholds["data_share"]):
            return None
    evidence = {
        "data_share_ratio": summary.data_share,
        "data_seconds_per_step": summary.data_share * summary.mean_step_s,
        "step_seconds": summary.mean_step_s,
    }
    host = view.latest("host")
    counted = host.values.get("workers") if host else None
    workers = int(counted) if counted is not None else 0
    busy = view.figure("host", "workers_cpu_ratio", since)
    system = view.figure("host", "system_cpu_ratio", since)
    if counted is not None:
        evidence["workers"] = float(workers)
    if workers and busy:
        evidence["workers_cpu_ratio"] = busy.mean
    if workers and system:
        evidence["host_cpu_ratio"] = system.mean
    if counted is None:  # no host probe: nothing says how batches are loaded
        text = "its DataLoader workers are not known (no host readings)"
        advice = ("Check the loader: enough workers (num_workers), CPU cores for them, "
                  "fast enough storage, prefetch_factor, pin_memory.")
    elif not workers:
        text = "batches are loaded in the training process itself (no DataLoader workers)"
        advice = ("Load in worker processes: DataLoader(num_workers=N, pin_memory=True, "
                  "persistent_workers=True).")
    elif evidence.get("workers_cpu_ratio", 0.0) >= rule.thresholds["workers_saturated"]:
        text = (f"its {workers} DataLoader workers are CPU-bound "
                f"({evidence['workers_cpu_ratio']:.0%} busy)")
        advice = ("Add DataLoader workers or CPU cores, or make the transforms cheaper "
                  "(move augmentation to the GPU, pre-tokenise, cache decoded data).")
    elif (evidence.get("host_cpu_ratio", 0.0) >= rule.thresholds["host_saturated"]
          and evidence.get("workers_cpu_ratio", 0.0) >= rule.thresholds["workers_contended"]):
        text = (f"its {workers} DataLoader workers wait for a core: the host's CPUs are "
                f"{evidence['host_cpu_ratio']:.0%} busy")
        advice = ("The host's CPUs are the limit: make the transforms cheaper (move "
                  "augmentation to the GPU, pre-tokenise, cache decoded data), run no more "
                  "workers than the cores free for them, or give the job more cores.")
    else:
        text = f"its {workers} DataLoader workers are mostly idle: storage or prefetch is the limit"
        advice = ("Read from faster storage, raise prefetch_factor, or use a streaming "
                  "dataset format.")
    return Detection(evidence, [view.rank],
                     text={"rank": view.rank, "workers_text": text, "advice": advice})
