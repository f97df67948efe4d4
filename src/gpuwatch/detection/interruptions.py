"""interruptions: steps far longer than the typical one (``INTERRUPTION_MULTIPLE`` x the
running median) that recur and together take a large share of the run: evaluations,
recompiles, DataLoader restarts. While they are rare among the steps the windows leave
them out (``Telemetry.summarise``), so no other detector sees them, however much time
they take; blocking saves are ``checkpoint_overhead``'s.

The share is run-long: the seconds those steps took beyond a typical step, saves
aside, over the wall time since training began. What they took it in names the
cause: eval batches seen in them (an evaluation: ``info``, a choice worth its cost
being known), else the part that grew most over a typical step: data wait (the
loader restarting), compute (recompiles, host work in the step), time no phase
accounts for (work between steps), or a wait in collectives (another rank working
alone: an eval or a save on rank 0 only). Those are ``fix_here``."""

from __future__ import annotations

from gpuwatch.detection.context import Context, Detection, window_s
from gpuwatch.detection.rules import Rule
from gpuwatch.telemetry import Telemetry, mean_step
from gpuwatch.vocabulary import duration

CAUSES = {
    "data": ("mostly data wait: the DataLoader starting over",
             "Keep the loader's workers between epochs (persistent_workers=True) and make "
             "its first batches cheap (prefetch_factor, a lighter worker start-up)."),
    "compute": ("mostly compute while no typical step runs: an evaluation, recompiles or "
                "host work",
                "An evaluation this often costs this share: evaluate less often or on fewer "
                "batches. Recompiles (torch.compile meeting new shapes): pad or bucket them "
                "(torch._dynamo.mark_dynamic, dynamic=True). Host work in the step (logging, "
                "metric syncs, garbage collection): move it out."),
    "collective": ("mostly waiting in collectives: another rank works alone (an eval or a "
                   "save on rank 0 only)",
                   "Spread the work over every rank (a sharded eval, a distributed "
                   "checkpoint) or run it off the training path: the ranks that do not run "
                   "it wait for the one that does."),
    "other": ("mostly time no phase accounts for: work between steps",
              "Find the work between steps (logging, metric gathering, an eval outside the "
              "marked loop) and do it less often or off the training thread."),
}
EVALS = ("evaluations (eval batches ran in them)",
         "Evaluate less often or on fewer batches, or on another GPU: the run pays this "
         "share for them.")


def detect(view: Telemetry, rule: Rule, ctx: Context, now: float) -> Detection | None:
    th = rule.thresholds
    share = view.interruption_share(now)
    count = view.interrupting_steps
    start = view.first_step_start
    if share < th["interruption_share"] or count < th["min_interruptions"] or start is None:
        return None
    stalls = mean_step(view.interrupting.sums_since(start))
    typical = view.summarise(now - window_s(view, rule))
    if stalls is None or typical is None:
        return None
    grew = {"data": stalls.data_s - typical.data_s,
            "compute": stalls.unwaited_compute_s - typical.unwaited_compute_s,
            "collective": stalls.collective_s - typical.collective_s,
            "other": stalls.other_s - typical.other_s}
    evals = view.eval_interrupted_s >= 0.5 * view.interrupted_s
    cause, advice = EVALS if evals else CAUSES[max(grew, key=grew.__getitem__)]
    evidence = {"interruption_share_ratio": share, "interruptions_total": float(count),
                "seconds_per_interruption": view.interrupted_s / count,
                "seconds_between_interruptions": (now - start) / count,
                "typical_step_seconds": typical.wall_s,
                "eval_seconds_share_ratio": view.eval_interrupted_s / view.interrupted_s,
                **{f"{part}_seconds_beyond_typical": max(s, 0.0) for part, s in grew.items()}}
    text = {"rank": view.rank, "cause": cause, "advice": advice,
            "every": duration(evidence["seconds_between_interruptions"])}
    return Detection(evidence, [view.rank], text=text, verdict="info" if evals else None)
