"""hang: no step completes for max(min_seconds, median_multiple x median step) while the
process lives (its agent still reports). Severity critical."""

from __future__ import annotations

import itertools
import statistics

from gpuwatch.detection.context import Context, Detection, host_of
from gpuwatch.detection.rules import Rule
from gpuwatch.telemetry import Telemetry


def detect(view: Telemetry, rule: Rule, ctx: Context, now: float) -> Detection | None:
    if len(view.steps) < max(rule.min_steps, 1):
        return None  # a job that never stepped is starting, not hung
    last = view.steps[-1]
    recent = [s.wall_s for s in itertools.islice(reversed(view.steps), 100)]
    median = statistics.median(recent)
    bound = max(rule.thresholds["min_seconds"], rule.thresholds["median_multiple"] * median)
    stalled = now - last.t
    if stalled < bound:
        return None
    agent = view.latest("agent")
    open_phases = {k[len("open_"):-len("_seconds")]: v for k, v in
                   (agent.values.items() if agent else ()) if k.startswith("open_")}
    evidence = {"stalled_seconds": stalled, "bound_seconds": bound,
                "median_step_seconds": median, "last_step_time_seconds": last.t,
                "steps_total": float(view.total_steps)}
    if "collective" in open_phases:
        evidence["in_collective_seconds"] = open_phases["collective"]
        where = (f"it has waited {open_phases['collective']:.0f} s in a collective, "
                 "so another rank stopped first")
    elif open_phases:
        phase, seconds = max(open_phases.items(), key=lambda kv: kv[1])
        where = f"it is stuck in {phase} ({seconds:.0f} s), not in a collective"
    else:
        where = "it is not in a collective or a marked phase"
    pid = view.meta.pid if view.meta else 0
    return Detection(evidence, [view.rank],
                     text={"rank": view.rank, "host": host_of(view), "where": where, "pid": pid})
