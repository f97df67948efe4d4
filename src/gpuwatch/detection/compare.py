"""Two runs of the same job, side by side per unit of work (``gpuwatch compare``).

The unit is a token when both runs counted tokens, else a sample when both
counted samples (so a changed batch size compares fairly), else a step (and
the result says so). Speedups are BEFORE's seconds per unit over AFTER's: above
1 means AFTER is faster. When BEFORE's findings carried a projection onto
AFTER's GPU, the measured speedup is set against the projected one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gpuwatch.detection.run_profile import RunProfile
from gpuwatch.records import Finding
from gpuwatch.vocabulary import PARTS

# Projection parts (detection/projection.py) -> the report's phases.
PROJECTION_PARTS = {"compute": "compute", "recompute": "recompute", "comm": "collective",
                    "data": "data", "checkpoint": "checkpoint", "other": "other"}


@dataclass(frozen=True, slots=True)
class SpeedRange:
    """A projected speedup: its central value and, when the projection gave one, a range."""

    speedup: float
    low: float | None = None
    high: float | None = None


def projected_speedup(p: dict[str, Any]) -> SpeedRange | None:
    """The speedup a finding's projection promised, whichever keys it carries:
    ``speedup_ratio`` or ``speedup`` (else step seconds now over projected), and a range from
    ``speedup_low_ratio``/``speedup_high_ratio`` or projected step seconds (slower is lower)."""
    mid = _number(p.get("speedup_ratio", p.get("speedup")))
    now = _number(p.get("step_seconds_now"))
    if mid is None and now is not None:
        proj = _number(p.get("step_seconds_projected"))
        mid = now / proj if proj else None
    if mid is None:
        return None
    low = _number(p.get("speedup_low_ratio"))
    high = _number(p.get("speedup_high_ratio"))
    if now and low is None and high is None:
        slow = _number(p.get("step_seconds_projected_slowest"))
        fast = _number(p.get("step_seconds_projected_fastest"))
        low = now / slow if slow else None
        high = now / fast if fast else None
    return SpeedRange(mid, low, high)


def _number(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


@dataclass
class RunSide:
    """One run's figures per unit of work."""

    gpu: str | None
    ranks: int
    steps: int
    units: float
    seconds_per_unit: dict[str, float]  # "step" (the whole step) and each phase
    usd_per_unit: float | None
    memory_peak_bytes: float | None
    memory_limit_bytes: float | None

    @property
    def memory_headroom_ratio(self) -> float | None:
        if not self.memory_peak_bytes or not self.memory_limit_bytes:
            return None
        return max(1.0 - self.memory_peak_bytes / self.memory_limit_bytes, 0.0)


@dataclass
class ProjectionCheck:
    """How far BEFORE's projection onto AFTER's GPU was from what happened.

    ``error_ratio`` is measured over projected speedup minus 1 (negative: the projection
    promised more than AFTER delivered); ``phases`` compares projected and measured
    speedup per phase where both exist.
    """

    detector: str
    target: str
    projected: SpeedRange
    measured: float
    error_ratio: float
    within_range: bool | None
    phases: dict[str, tuple[float, float]] = field(default_factory=dict)  # projected, measured
    assumptions: list[str] = field(default_factory=list)


@dataclass
class Comparison:
    """BEFORE against AFTER per ``unit``; speedups above 1 mean AFTER is faster."""

    unit: str
    before: RunSide
    after: RunSide
    speedup: dict[str, float]  # "step" (overall) and each phase both runs spent time in
    cost_ratio: float | None  # AFTER's cost per unit over BEFORE's
    projection: ProjectionCheck | None
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        def side(s: RunSide) -> dict[str, Any]:
            return {"gpu": s.gpu, "ranks": s.ranks, "steps": s.steps, "units": s.units,
                    "seconds_per_unit": s.seconds_per_unit, "usd_per_unit": s.usd_per_unit,
                    "memory_peak_bytes": s.memory_peak_bytes,
                    "memory_limit_bytes": s.memory_limit_bytes,
                    "memory_headroom_ratio": s.memory_headroom_ratio}

        out: dict[str, Any] = {"unit": self.unit, "before": side(self.before),
                               "after": side(self.after), "speedup": self.speedup,
                               "cost_ratio": self.cost_ratio, "notes": self.notes,
                               "projection": None}
        if self.projection is not None:
            p = self.projection
            out["projection"] = {
                "detector": p.detector, "target": p.target,
                "speedup_projected": p.projected.speedup,
                "speedup_projected_low": p.projected.low,
                "speedup_projected_high": p.projected.high, "speedup_measured": p.measured,
                "error_ratio": p.error_ratio, "within_range": p.within_range,
                "phases": {k: {"projected": a, "measured": b} for k, (a, b) in p.phases.items()},
                "assumptions": p.assumptions}
        return out


def common_unit(before: RunProfile, after: RunProfile) -> str:
    """The finest unit both runs counted: token, sample, else step."""
    units = {before.unit(), after.unit()}
    if units == {"token"}:
        return "token"
    if units <= {"token", "sample"} and before.units("sample") and after.units("sample"):
        return "sample"
    return "step"


def _side(run: RunProfile, unit: str) -> RunSide:
    per_unit = run.seconds_per_unit(unit) or {}
    price = run.usd_per_hour()
    step = per_unit.get("step")
    return RunSide(gpu=run.gpu_name(), ranks=max(len(run.ranks), 1), steps=run.steps,
                   units=run.units(unit), seconds_per_unit=per_unit,
                   usd_per_unit=price * step / 3600 if price is not None and step else None,
                   memory_peak_bytes=run.memory_peak_bytes,
                   memory_limit_bytes=run.memory_limit_bytes)


def compare(before: RunProfile, after: RunProfile,
            before_findings: list[Finding] | None = None) -> Comparison:
    """BEFORE against AFTER. Raises ValueError when either run has no steps after warm-up."""
    for name, run in (("BEFORE", before), ("AFTER", after)):
        if not run.steps:
            raise ValueError(f"{name} has no training steps after warm-up to compare")
    unit = common_unit(before, after)
    b, a = _side(before, unit), _side(after, unit)
    notes = []
    if unit == "step":
        notes.append("compared per step: the runs did not both count samples or tokens, so a "
                     "changed batch size is not accounted for")
    if b.ranks != a.ranks:
        notes.append(f"ranks differ ({b.ranks} vs {a.ranks}): per-unit figures are for the "
                     "whole job")
    speedup = {k: b.seconds_per_unit[k] / a.seconds_per_unit[k]
               for k in ("step", *PARTS)
               if b.seconds_per_unit.get(k, 0.0) > 0 and a.seconds_per_unit.get(k, 0.0) > 0}
    cost_ratio = (a.usd_per_unit / b.usd_per_unit
                  if a.usd_per_unit is not None and b.usd_per_unit else None)
    if cost_ratio is None:
        notes.append("cost per unit needs both runs' GPU in the catalogue (set gpu_model)")
    check = _projection_check(before_findings or [], a.gpu, b, a, speedup.get("step"))
    if check is None and a.gpu and before_findings is not None:
        notes.append(f"BEFORE carried no projection onto {a.gpu}")
    return Comparison(unit, b, a, speedup, cost_ratio, check, notes)


def _projection_check(findings: list[Finding], target: str | None, b: RunSide, a: RunSide,
                      measured: float | None) -> ProjectionCheck | None:
    if target is None or measured is None:
        return None
    for f in findings:
        p = f.projection
        if not p or p.get("target") != target:
            continue
        projected = projected_speedup(p)
        if projected is None or projected.speedup <= 0:
            continue
        within = None
        if projected.low is not None and projected.high is not None:
            within = projected.low <= measured <= projected.high
        return ProjectionCheck(
            detector=f.detector, target=target, projected=projected, measured=measured,
            error_ratio=measured / projected.speedup - 1.0, within_range=within,
            phases=_phase_checks(p, b, a), assumptions=list(p.get("assumptions") or []))
    return None


def _phase_checks(p: dict[str, Any], b: RunSide,
                  a: RunSide) -> dict[str, tuple[float, float]]:
    """Per phase: projected speedup (parts now over projected) and measured speedup."""
    now, proj = p.get("parts_seconds_now") or {}, p.get("parts_seconds_projected") or {}
    out = {}
    for part, phase in PROJECTION_PARTS.items():
        n, q = _number(now.get(part)), _number(proj.get(part))
        mb, ma = b.seconds_per_unit.get(phase, 0.0), a.seconds_per_unit.get(phase, 0.0)
        if n and q and mb > 0 and ma > 0:
            out[phase] = (n / q, mb / ma)
    return out
