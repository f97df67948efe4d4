"""checkpoint_overhead: blocking checkpoint saves eat the run's wall time (fix here)."""

from __future__ import annotations

from gpuwatch.detection.context import Context, Detection, recent
from gpuwatch.detection.rules import Rule
from gpuwatch.telemetry import Telemetry


def detect(view: Telemetry, rule: Rule, ctx: Context, now: float) -> Detection | None:
    since = now - rule.window_s
    summary = recent(view, rule, now)
    if summary is None:
        return None
    if summary.checkpoint_share < rule.thresholds["checkpoint_share"]:
        return None
    saves = [e for e in view.events if e.name == "checkpoint_save" and e.t >= since]
    if not saves:
        return None
    seconds = sum(float(e.data.get("seconds", 0.0)) for e in saves)
    nbytes = sum(float(e.data.get("bytes", 0)) for e in saves)
    evidence = {
        "checkpoint_share_ratio": summary.checkpoint_share,
        "saves_total": float(len(saves)),
        "seconds_per_save": seconds / len(saves),
        "bytes_per_save": nbytes / len(saves),
        "save_bytes_per_second": nbytes / seconds if seconds > 0 else 0.0,
    }
    text = {"rank": view.rank, "megabytes_per_save": evidence["bytes_per_save"] / 1e6,
            "save_megabytes_per_second": evidence["save_bytes_per_second"] / 1e6}
    return Detection(evidence, [view.rank], text=text)
