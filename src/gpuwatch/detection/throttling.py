"""throttling: the GPU runs below its clocks while the job keeps it busy, because it is
too hot or its board cuts power (NVML's clock-event reasons: thermal slowdown, hardware
slowdown, power brake). A fault of this machine (cooling, airflow, power supply), not a
reason to move: projections from a throttled card overstate any card's gain, so none is
judged until it is fixed (``moves.FIX_FIRST``). Running at the power cap
(``sw_power_cap``) is how a busy card works, not a fault. One rank slowed among faster
ones is also the straggler's case, which names the reasons too."""

from __future__ import annotations

import math
from collections.abc import Iterable

from gpuwatch.detection.context import Context, Detection, recent, window_s
from gpuwatch.detection.rules import Rule
from gpuwatch.telemetry import Telemetry
from gpuwatch.vocabulary import CLOCK_EVENT_REASONS

FAULTS = ("sw_thermal_slowdown", "hw_thermal_slowdown", "hw_slowdown",
          "hw_power_brake_slowdown")
FAULT_BITS = sum(bit for bit, name in CLOCK_EVENT_REASONS.items() if name in FAULTS)
KEY = "gpu_clock_event_reasons"


def detect(view: Telemetry, rule: Rule, ctx: Context, now: float) -> Detection | None:
    if not any(bits & FAULT_BITS for bits in view.clock_event_reasons()):
        return None  # (the common case: no GPU of the rank slowed at its newest sample)
    if recent(view, rule, now) is None:
        return None
    th = rule.thresholds
    busy = [s for s in view.samples_since("nvml", now - window_s(view, rule))
            if s.values.get("gpu_utilization_ratio", 0.0) >= th["busy_ratio"]]
    slowed = [s for s in busy if int(s.values.get(KEY, 0)) & FAULT_BITS]
    if len(busy) < rule.min_steps or len(slowed) < th["throttled_share"] * len(busy):
        return None
    bits = 0
    for s in slowed:
        bits |= int(s.values.get(KEY, 0))
    reasons = [name.replace("_", " ") for bit, name in CLOCK_EVENT_REASONS.items()
               if bit & bits & FAULT_BITS]
    gpus = sorted({s.gpu for s in slowed if s.gpu is not None})
    evidence = {"throttled_share_ratio": len(slowed) / len(busy),
                "gpus_throttled": float(max(len(gpus), 1))}
    clocks = _mean(s.values.get("gpu_sm_clock_hertz") for s in slowed)
    free = _mean(s.values.get("gpu_sm_clock_hertz") for s in busy if s not in slowed)
    hottest = max((t for s in slowed if (t := s.values.get("gpu_temperature_celsius"))),
                  default=None)
    clause = ""
    if clocks is not None:
        evidence["sm_clock_throttled_hertz"] = clocks
        clause = f"; SM clock {clocks / 1e9:.2f} GHz"
        if free is not None:
            evidence["sm_clock_unthrottled_hertz"] = free
            clause += f" ({free / 1e9:.2f} GHz when not slowed)"
    if hottest is not None:
        evidence["temperature_max_celsius"] = hottest
        clause += f", up to {hottest:.0f} °C"
    text = {"rank": view.rank, "gpus": ", ".join(map(str, gpus)) or "?",
            "reasons": ", ".join(reasons), "clocks": clause}
    return Detection(evidence, [view.rank], text=text)


def _mean(values: Iterable[float | None]) -> float | None:
    xs = [v for v in values if v is not None]
    return math.fsum(xs) / len(xs) if xs else None
