"""straggler: one rank, or a few (a slow node's), take longer to reach the collectives
and the others wait for them (fix here: a bigger GPU for everyone would not help,
however long the others' wait).

A rank's *work* is its step without its collective wait: data wait, compute, optimizer,
whatever it does before it arrives. A slow rank takes ``work_ratio`` times the fastest's
work on average, or, slow in only some steps (its mean under that), it caused most of
the others' waiting; either way its extra costs ``min_extra_share`` of a step. A rank
slow to compute and a rank whose own loader starves it hold the others back alike; the
summary names which part makes it slow.

Where ranks' per-step waits are known (``skew.split``), the slow ranks must also have
caused most of the others' waiting (arriving last; slow in every step or only in
some), and arrive late more surely than chance (``min_lateness_t`` standard errors:
with work that varies from step to step on every rank, one of two ranks is slower
over a dozen steps by a fifth now and then): a slowness that rotates among most ranks
is an imbalance (sync_bottleneck's fix-here case), not stragglers."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from gpuwatch.detection import skew
from gpuwatch.detection.context import (
    LONG_WINDOWS,
    Context,
    Detection,
    job_devices,
    window_s,
    window_start,
)
from gpuwatch.detection.rank_input import RankInput
from gpuwatch.detection.rules import Rule
from gpuwatch.telemetry import StepSummary
from gpuwatch.vocabulary import CLOCK_EVENT_REASONS

# Clock-event reasons that slow a GPU down (idle, boost and settings do not).
SLOWING = ("sw_power_cap", "hw_slowdown", "sw_thermal_slowdown", "hw_thermal_slowdown",
           "hw_power_brake_slowdown")


def detect(views: Sequence[RankInput], rule: Rule, ctx: Context, now: float) -> Detection | None:
    # every rank over the same span (the longest of their windows): ranks compared over
    # different spans (each sized by its own median step) saw different evals, syncs
    # and stalls, and the gap between them came and went. Then over LONG_WINDOWS of it:
    # a rank slow in some steps only shows its cost over many of them.
    window = max(window_s(v, rule) for v in views)
    since = min(window_start(v, rule, now) for v in views)
    return _over(views, rule, since) or _over(views, rule, now - LONG_WINDOWS * window)


def _over(views: Sequence[RankInput], rule: Rule, since: float) -> Detection | None:
    """The stragglers of the steps since ``since``, if any."""
    summaries = {v.rank: s for v in views if (s := v.summarise(since)) is not None
                 and s.steps >= rule.min_steps}
    if len(summaries) < 2:
        return None
    work = {r: s.wall_s - s.collective_s for r, s in summaries.items()}
    fastest = min(work.values())
    if fastest <= 0:
        return None
    th = rule.thresholds
    costly = {r: w / fastest for r, w in work.items()
              if (w - fastest) / summaries[r].mean_step_s >= th["min_extra_share"]}
    slow = {r: ratio for r, ratio in costly.items() if ratio > th["work_ratio"]}
    split, compared = None, False  # (the per-step comparison, made once if at all)
    if len(costly) > len(slow):
        compared = True  # slow in only some steps, their mean under work_ratio:
        split = skew.split(views, since, rule.min_steps)  # what they caused decides
        if split is not None and sum(split.caused_share[r] for r in costly) >= th[
                "fixed_rank_share"]:
            slow = costly
    if not slow or len(slow) > len(summaries) // 2:
        return None  # none, or most: the typical speed, not a few holding the rest back
    waits = [summaries[r].collective_share for r in work if r not in slow]
    others_wait = sum(waits) / len(waits)
    slow_wait = sum(summaries[r].collective_share for r in slow) / len(slow)
    if others_wait - slow_wait < th["min_wait_gap"]:
        return None  # everyone waits alike: no rank holds the others back
    worst = max(slow, key=lambda r: slow[r])
    fast = min(work, key=lambda r: work[r])
    mine, theirs = summaries[worst], summaries[fast]
    evidence = {"work_ratio": slow[worst], "slow_work_seconds": work[worst],
                "fastest_work_seconds": fastest,
                "slow_data_seconds": mine.data_s, "fastest_data_seconds": theirs.data_s,
                "slow_collective_share_ratio": slow_wait,
                "others_collective_share_ratio": others_wait, "slow_ranks": float(len(slow))}
    if not compared:
        split = skew.split(views, since, rule.min_steps)
    if split is not None:
        caused = sum(split.caused_share[r] for r in slow)
        if caused < th["fixed_rank_share"]:
            return None  # not the same ranks holding the rest: an imbalance, not stragglers
        if min(split.lateness_t[r] for r in slow) < th["min_lateness_t"]:
            return None  # late no more surely than chance makes one of them (batches of
            # varying length on every rank): an imbalance, not stragglers
        evidence["wait_caused_share_ratio"] = caused
    by_rank = {v.rank: v for v in views}
    reasons = sorted({reason for r in slow for reason in clock_events(by_rank[r])})
    one = len(slow) == 1
    card, fast_card = card_name(by_rank[worst]), card_name(by_rank[fast])
    mixed = card is not None and fast_card is not None and card != fast_card
    text = {"who": who(sorted(slow), by_rank), "cause": cause(mine, theirs, one=len(slow) == 1),
            "them": "it" if one else "them",
            "throttle": (f" ({'its GPU reports' if one else 'their GPUs report'} "
                         f"{', '.join(reasons)})") if reasons else "",
            "card": f", on {card} among {fast_card}" if mixed else "",
            "mixed": ("A slower card among faster ones: run the job on matching cards, or "
                      "give it a smaller share of each batch. ") if mixed else ""}
    return Detection(evidence, sorted(slow), text=text)


def card_name(view: RankInput) -> str | None:
    """What NVML calls the rank's (first) GPU; None where no topology says."""
    return next((str(d["name"]) for d in job_devices(view) if d.get("name")), None)


def who(ranks: list[int], views: dict[int, RankInput]) -> str:
    """The slow ranks as the summary's subject: "Rank 2 (host a, GPU 2) takes",
    "Ranks 8-15 (host b) take up to"."""
    hosts = sorted({views[r].host for r in ranks})
    if len(ranks) == 1:
        gpus = ",".join(str(d.get("index")) for d in job_devices(views[ranks[0]])) or "none"
        return f"Rank {ranks[0]} (host {hosts[0]}, GPU {gpus}) takes"
    runs = [[r for _, r in run]  # consecutive ranks: (position - rank) stays the same
            for _, run in itertools.groupby(enumerate(ranks), lambda p: p[1] - p[0])]
    spans = [str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}" for run in runs]
    where = f"host {hosts[0]}" if len(hosts) == 1 else f"hosts {', '.join(hosts)}"
    return f"Ranks {', '.join(spans)} ({where}) take up to"


def cause(slow: StepSummary, fast: StepSummary, one: bool = True) -> str:
    """Which part of its step makes the slow rank (``one``, else the slowest of several)
    slower than the fast one, in words."""
    its = "its" if one else "their"
    extra = {
        f"waiting for {its} data ({slow.data_share:.0%} of each step)": slow.data_s - fast.data_s,
        "computing": slow.unwaited_compute_s - fast.unwaited_compute_s,
        f"in {its} optimizer step": slow.optimizer_s - fast.optimizer_s,
        "saving checkpoints": slow.checkpoint_s - fast.checkpoint_s,
        "outside the training phases (host work: logging, metrics)": slow.other_s - fast.other_s,
    }
    return max(extra, key=lambda k: extra[k])


def clock_events(view: RankInput) -> list[str]:
    """The slowing clock-event reasons this rank's GPUs report now."""
    names: list[str] = []
    for bits in view.clock_event_reasons():
        names += [name for bit, name in CLOCK_EVENT_REASONS.items()
                  if bits & bit and name in SLOWING and name not in names]
    return [n.replace("_", " ") for n in names]
