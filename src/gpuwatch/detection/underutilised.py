"""underutilised: low GPU utilisation during typical steps that no other detector
explains (info). Samples taken during interruptions (an eval, a save, a recompile)
and stalls are not judged.

Every active finding that covers this rank explains it: the rank's own (data
starvation, blocking checkpoints, a hang, memory pressure) and the job's
(a straggler or a sync bottleneck leaves every rank waiting). A rank that spends
a large share of its steps waiting in collectives is explained by its peers even
where the job's findings are not judged (live ranks other than rank 0)."""

from __future__ import annotations

from gpuwatch.detection.context import Context, Detection, recent, window_s
from gpuwatch.detection.rules import Rule
from gpuwatch.telemetry import Telemetry

STALL_S = 10.0  # no step or progress for this long (or 3 median steps): not judged
EXPLANATIONS = frozenset({"data_starvation", "checkpoint_overhead", "hang", "straggler",
                          "sync_bottleneck", "fits_on_paper"})


def detect(view: Telemetry, rule: Rule, ctx: Context, now: float) -> Detection | None:
    if ctx.explained.get(view.rank, set()) & EXPLANATIONS:
        return None
    summary = recent(view, rule, now)
    if summary is None or now - view.last_progress > max(STALL_S, 3 * summary.mean_step_s):
        return None  # not stepping now: a stall is the hang detector's to judge
    if summary.collective_share >= rule.thresholds["collective_share"]:
        return None  # waiting for its peers: explained on every rank, even without rank 0's
    since = now - window_s(view, rule)
    count, total, gpus = view.uninterrupted("nvml", "gpu_utilization_ratio", since)
    if count < 3:
        return None
    util = total / count
    if util >= rule.thresholds["utilization_ratio"]:
        return None
    return Detection({"gpu_utilization_ratio": util, "step_seconds": summary.mean_step_s},
                     [view.rank], text={"rank": view.rank, "gpu": ",".join(map(str, gpus))})
