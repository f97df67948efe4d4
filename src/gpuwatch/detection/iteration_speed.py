"""iteration_speed: with the total steps known, time to finish here versus on the target
GPU (as many GPUs as now, and scaled out): days versus hours; judged on rank 0 of a job
of several (every rank's step lasts as long: each waits for the others), or the lowest
rank a replay has a log of (``Context.first_rank``). On a rank short of memory
(``fits_on_paper``) it moves nothing: that finding moves it, to a card that holds it.
Steps are the window's typical ones with the run's blocking saves and other
interruptions (evals) spread over them (``with_interruptions``): a week-long run pays
for every one, and a faster card writes no save faster."""

from __future__ import annotations

from gpuwatch.detection.context import (
    Context,
    Detection,
    mean_parts,
    recent,
    window_start,
    with_interruptions,
)
from gpuwatch.detection.moves import unknown_card
from gpuwatch.detection.projection import DASH, speedup_text
from gpuwatch.detection.rules import Rule
from gpuwatch.telemetry import Telemetry

WIDE = 1.5  # the low end's time this many times the middle's: both are told


def detect(view: Telemetry, rule: Rule, ctx: Context, now: float) -> Detection | None:
    planned = ctx.planned_steps or view.planned_steps
    if not planned or (view.rank != ctx.first_rank and view.world_size > 1):
        return None  # (a job's ranks step together: its first rank's time is the job's)
    since = window_start(view, rule, now)
    summary = recent(view, rule, now)
    if summary is None:
        return None
    remaining = planned - view.steps_done
    th = rule.thresholds
    parts = with_interruptions(mean_parts(summary), view, now)
    hours_now = remaining * parts.total / 3600
    if remaining <= 0 or hours_now < th["min_remaining_hours"]:
        return None
    current = ctx.current_gpu(view)
    if current is None:  # (no other card's time can be told from it)
        return Detection({"remaining_steps": float(remaining), "step_seconds": parts.total,
                          "remaining_hours_now": hours_now}, [view.rank],
                         text={"why": unknown_card(ctx.device_name(view))}, verdict="info",
                         variant="unknown_card")
    world = view.meta.world_size if view.meta else 1
    scale = max(th["scale_out_gpus"], world)  # (a job already larger is not scaled down)
    proj = ctx.project([view], parts, since, target_gpus=int(scale))
    hours_target = remaining * proj.projected.total / 3600
    hours_scaled = hours_target * world / scale  # data-parallel, linear scaling
    evidence = {"remaining_steps": float(remaining), "step_seconds": parts.total,
                "remaining_hours_now": hours_now, "remaining_hours_target": hours_target,
                "speedup_ratio": proj.speedup}
    scaled = ""  # the scale-out clause, when the job is smaller than the scale-out
    if scale > world:
        evidence |= {"remaining_hours_scaled": hours_scaled, "scale_out_gpus": scale}
        scaled = f", {hours_scaled:.1f} h on {scale:.0f}"
    # a rank short of memory is moved (or not) by fits_on_paper, to the card that holds
    # what it needs: one move per report, not a second to another card
    memory_bound = "fits_on_paper" in ctx.explained.get(view.rank, ())
    verdict = "info" if memory_bound else ctx.decide(proj, otherwise="info")
    hours_low = remaining * proj.slowest.total / 3600
    # (the middle alone where the low end says otherwise: kernels bound by their
    # launches, which a faster card barely shortens)
    there = (f"{hours_target:.1f} h" if hours_low <= WIDE * hours_target
             else f"{hours_target:.1f}{DASH}{hours_low:.1f} h")
    if verdict == "move_to_h100":
        gpus = f"{world} GPUs" if world > 1 else "one GPU"
        advice = (f"Move to {proj.target.name}: {hours_now / 24:.1f} days become "
                  f"{_span(hours_target)} ({_span(hours_low)} at the low end) on {gpus} "
                  "as now"
                  + (f" ({_span(hours_scaled)} on {scale:.0f}, scaled out)." if scaled
                     else "."))
    elif memory_bound:
        advice = ("Memory decides where this job should run (fits_on_paper's finding names "
                  f"the card that holds it); this is its time on {proj.target.name} as it runs "
                  "now.")
    elif current.name == proj.target.name:  # (the target, or the card memory needs)
        advice = (f"The job already runs on {current.name}: scale out (data parallel) or "
                  "make the step itself cheaper to finish sooner.")
    else:
        advice = (f"No move to {proj.target.name} ({speedup_text(proj.as_dict())} projected): "
                  f"{proj.economics['decision']['why']}. Scale out or make the step itself "
                  "cheaper.")
    text = {"target": proj.target.name, "advice": advice, "scaled": scaled, "there": there,
            "gpus_now": "one" if world == 1 else f"{world}"}
    return Detection(evidence, [view.rank], text=text, projection=proj.as_dict(),
                     verdict=verdict,
                     variant="on_its_card" if current.name == proj.target.name else None)


def _span(hours: float) -> str:
    """Hours as a person says them: "31.2 h", "4.5 days"."""
    return f"{hours / 24:.1f} days" if hours >= 72 else f"{hours:.1f} h"
