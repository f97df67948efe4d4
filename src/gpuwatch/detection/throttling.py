"""throttling: the GPU runs below its clocks while the job keeps it busy, because it is
too hot or its board cuts power (NVML's clock-event reasons: thermal slowdown, hardware
slowdown, power brake). A fault of this machine (cooling, airflow, power supply), not a
reason to move: projections from a throttled card overstate any card's gain, so none is
judged until it is fixed (``moves.FIX_FIRST``). Judged per GPU over the window (a
card slowed now and then, or one of several a process drives; reaching back far enough
for ``min_samples`` readings where NVML is sampled seldom), where its clock lost at
least ``min_clock_loss_ratio`` to it. Running at the power cap (``sw_power_cap``) is
how a busy card works, not a fault. One rank slowed among faster ones is also the
straggler's case, which names the reasons too."""

from __future__ import annotations

from gpuwatch.detection.context import Context, Detection, recent, window_start
from gpuwatch.detection.rules import Rule
from gpuwatch.records import Sample
from gpuwatch.series import mean_of
from gpuwatch.telemetry import Telemetry
from gpuwatch.vocabulary import CLOCK_EVENT_REASONS, SLOWDOWN_BITS

KEY = "gpu_clock_event_reasons"


def detect(view: Telemetry, rule: Rule, ctx: Context, now: float) -> Detection | None:
    th = rule.thresholds
    # (NVML sampled seldom, the window reaches back for min_samples readings of it)
    since = min(window_start(view, rule, now),
                now - th["min_samples"] * (view.sample_interval_s("nvml") or 0.0))
    if view.slowed_at < since or recent(view, rule, now) is None:
        return None  # (the common case: no reading in the window had a fault bit)
    busy: dict[int | None, list[Sample]] = {}
    for s in view.samples_since("nvml", since):
        if s.values.get("gpu_utilization_ratio", 0.0) >= th["busy_ratio"]:
            busy.setdefault(s.gpu, []).append(s)
    held = [h for samples in busy.values() if len(samples) >= th["min_samples"]
            and (h := _held(samples, th)) is not None]
    if not held:
        return None
    share, slowed, free = max(held, key=lambda h: h[0])
    reasons, gpus = 0, sorted({s.gpu for _, sl, _ in held for s in sl if s.gpu is not None})
    for _, sl, _ in held:
        for s in sl:
            reasons |= int(s.values.get(KEY, 0))
    evidence = {"throttled_share_ratio": share, "gpus_throttled": float(max(len(held), 1))}
    clocks = mean_of(s.values.get("gpu_sm_clock_hertz") for s in slowed)
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
            "reasons": ", ".join(name.replace("_", " ") for bit, name in
                                 CLOCK_EVENT_REASONS.items() if bit & reasons & SLOWDOWN_BITS),
            "clocks": clause}
    return Detection(evidence, [view.rank], text=text)


def _held(busy: list[Sample], th: dict[str, float]
          ) -> tuple[float, list[Sample], float | None] | None:
    """One GPU's busy readings: (the share slowed by a fault, those readings, the mean SM
    clock of the others) where the share reaches ``throttled_share`` and the clock, where
    both are read, lost at least ``min_clock_loss_ratio`` to it; else None."""
    slowed = [s for s in busy if int(s.values.get(KEY, 0)) & SLOWDOWN_BITS]
    share = len(slowed) / len(busy)
    if share < th["throttled_share"]:
        return None
    free = mean_of(s.values.get("gpu_sm_clock_hertz") for s in busy
                 if not int(s.values.get(KEY, 0)) & SLOWDOWN_BITS)
    clocks = mean_of(s.values.get("gpu_sm_clock_hertz") for s in slowed)
    if free and clocks is not None and (free - clocks) / free < th["min_clock_loss_ratio"]:
        return None  # (slowed in name only)
    return share, slowed, free

