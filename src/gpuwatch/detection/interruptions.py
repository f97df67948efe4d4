"""interruptions: steps far longer than the typical one (``INTERRUPTION_MULTIPLE`` x the
running median, and as much longer than their tokens make them) that recur and
together take a large share of the run: recompiles, DataLoader restarts, host work,
evaluations. While they are rare among the steps the windows leave them out
(``Telemetry.summarise``), so no other detector sees them, however much time they take.

The share is run-long: the seconds those steps took beyond a typical step over the
wall time since training began, counting only what they were stalls or evaluations
for (``Telemetry.interrupted_by``): blocking saves are ``checkpoint_overhead``'s, a wait in
collectives is for another rank working alone (that rank's own finding says what),
and GPU work through them (an RL rollout, generation) is the job's own work, which a
faster card speeds up like any other. Judged once training has run ``min_run_s`` and
only if they recur through it (a burst of start-up recompiles is no rhythm).

Mostly evaluations (eval batches seen in them): ``info``, a choice worth its cost being
known. Else ``fix_here``, the cause named by the part that grew most over a typical
step: data wait (the loader starting over, or its storage stalling), compute with the
GPU idle (recompiles, host work in the step), or time no phase accounts for (work
between steps)."""

from __future__ import annotations

from gpuwatch.detection.context import Context, Detection, window_s
from gpuwatch.detection.rules import Rule
from gpuwatch.telemetry import Interruptions, Telemetry, cycle_end, mean_step
from gpuwatch.vocabulary import duration

NO_CARD = " A bigger GPU would not help."
CAUSES = {
    "data": ("mostly data wait: the DataLoader starting over (an epoch's workers) or its "
             "storage stalling",
             "A loader starting over: keep its workers between epochs "
             "(persistent_workers=True) and make its first batches cheap (a lighter worker "
             "start-up). Storage that stalls (network file systems, object stores): more "
             "workers and a deeper prefetch_factor to ride over it, or shards cached on "
             "local disk." + NO_CARD),
    "compute": ("mostly compute with the GPU idle: recompiles, host work or an evaluation "
                "gpuwatch cannot tell as one",
                "Recompiles (torch.compile meeting new shapes): pad or bucket them "
                "(torch._dynamo.mark_dynamic, dynamic=True). Host work in the step (logging, "
                "metric syncs, garbage collection): move it out. An evaluation this often "
                "costs this share: evaluate less often or on fewer batches." + NO_CARD),
    "other": ("mostly time no phase accounts for: work between steps",
              "Find the work between steps (logging, metric gathering, an eval outside the "
              "marked loop) and do it less often or off the training thread." + NO_CARD),
}
# Stalls that each hold a blocking save, most of their time after it returned
SAVES = ("mostly after a checkpoint save in each: the checkpoint written or uploaded "
         "where gpuwatch times no save (torch.save into a buffer, then an upload)",
         "Upload or copy checkpoints off the training thread (a background thread or "
         "process), or save with torch.distributed.checkpoint.async_save; save less "
         "often." + NO_CARD)
SAVES_SHARE = 0.8  # stalls with a save at least this often are the saves'
# (GPU work: a faster card runs them faster, as it runs training)
EVALS = ("mostly evaluations (eval batches ran in them)",
         "Evaluate less often or on fewer batches, or on another GPU: the run pays this "
         "share for them (a faster card shortens their forward passes as it does training's).")


def detect(view: Telemetry, rule: Rule, ctx: Context, now: float) -> Detection | None:
    th = rule.thresholds
    start = view.first_step_start
    kinds = view.interrupted_by
    if start is None or now - start < th["min_run_s"]:
        return None
    share = view.interruption_share(now, Interruptions.JUDGED)
    count = kinds.count["eval"] + kinds.count["stall"]
    run_s = cycle_end(now, kinds.last_end, kinds.longest_gap_s) - start  # (whole cycles)
    if (share < th["interruption_share"] or count < max(th["min_interruptions"], 1)
            or kinds.last_t - kinds.first_t < th["spread_ratio"] * run_s):
        return None  # rare, few, or a burst (start-up recompiles) rather than a rhythm
    seconds = kinds.seconds["eval"] + kinds.seconds["stall"]
    evals = kinds.mostly_evals
    evidence = {"interruption_share_ratio": share, "interruptions_total": float(count),
                "seconds_per_interruption": seconds / count,
                "seconds_between_interruptions": run_s / count,
                "eval_seconds_share_ratio": kinds.seconds["eval"] / seconds}
    if evals:
        cause, advice = EVALS
    else:
        stalls = mean_step(kinds.stalled.sums_since(start))
        typical = view.summarise(now - window_s(view, rule))
        if stalls is None or typical is None:
            return None
        grew = {"data": stalls.data_s - typical.data_s,
                "compute": stalls.unwaited_compute_s - typical.unwaited_compute_s,
                "other": stalls.other_s - typical.other_s}
        part = max(grew, key=grew.__getitem__)
        cause, advice = CAUSES[part]
        if part != "data" and kinds.saving >= SAVES_SHARE * kinds.count["stall"]:
            cause, advice = SAVES  # (a save at each epoch's end, then a loader starting
            # over: the data wait is the loader's)
        evidence |= {"typical_step_seconds": typical.wall_s,
                     **{f"{part}_seconds_beyond_typical": max(s, 0.0)
                        for part, s in grew.items()}}
    text = {"rank": view.rank, "cause": cause, "advice": advice,
            "every": duration(evidence["seconds_between_interruptions"])}
    return Detection(evidence, [view.rank], text=text, verdict="info" if evals else None,
                     severity="info" if evals else None)
