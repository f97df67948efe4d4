"""Collective wait split step by step into transfer and waiting on a slower rank.

In a step every rank leaves a collective together, so the rank that arrives last waits
least: that least wait is the transfer itself (bytes over the link, latency), and what
another rank waits beyond it is time spent waiting for the last rank to arrive. Over
a window: the mean transfer, each rank's mean skew, and what share of the others'
waiting each rank caused by arriving last (one rank, or a few — a slow node's — most
of it: stragglers, even slow in only some steps; spread among most ranks: a rotating
imbalance, e.g. variable-length batches or uneven MoE routing).

Steps are aligned by step number, never by clock (host clocks differ).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from gpuwatch.detection.rank_input import RankInput

TIE_S = 1e-5  # waits this close are equal (the published precision is 1e-6 s)


@dataclass(frozen=True, slots=True)
class SkewSplit:
    """Per-step comparison of ranks over a window (seconds are means per step)."""

    steps: int
    wall_s: float
    transfer_s: float  # least wait across ranks
    skew_s: dict[int, float]  # rank -> its wait beyond the least
    caused_share: dict[int, float]  # rank -> share of the waiting it caused (arrived last)
    # rank -> how surely it arrives after the others: its mean lateness (the others' mean
    # wait less its own) over that mean's standard error (inf: late alike in every step)
    lateness_t: dict[int, float]

    @property
    def mean_skew_s(self) -> float:
        return statistics.fmean(self.skew_s.values())

    @property
    def transfer_share(self) -> float:
        return self.transfer_s / self.wall_s

    @property
    def skew_share(self) -> float:
        return self.mean_skew_s / self.wall_s

    def fixed_last(self, share: float) -> int | None:
        """The rank that caused at least ``share`` of the waiting, if one did."""
        rank = max(self.caused_share, key=lambda r: self.caused_share[r])
        return rank if self.caused_share[rank] >= share else None


def split(views: Sequence[RankInput], since: float, min_steps: int) -> SkewSplit | None:
    """Compare ranks over the newest steps every rank has, as many as the window
    holds (``RankInput.step_waits``: from ``since`` on the rank's own clock; a peer's
    every published step). Where ranks' newest step numbers differ (their hosts' clocks
    disagree, or some records lag), each is read back far enough for the steps the
    others have. None with fewer than ``min_steps`` such steps or under two ranks."""
    if len(views) < 2:
        return None
    per_rank = {v.rank: v.step_waits(since) for v in views}
    if not all(per_rank.values()):
        return None
    span = max(len(w) for w in per_rank.values())
    newest = {r: max(w) for r, w in per_rank.items()}
    upto = min(newest.values())
    if max(newest.values()) > upto:
        lag_s = (max(newest.values()) - upto) * max(v.median_step_s() or 0.0 for v in views)
        per_rank = {v.rank: v.step_waits(since - lag_s) for v in views}
    common = {k for k in set.intersection(*(set(w) for w in per_rank.values()))
              if upto - span < k <= upto}
    if len(common) < max(min_steps, 1):
        return None
    ranks = sorted(per_rank)
    transfer = walls = 0.0
    skew = dict.fromkeys(ranks, 0.0)
    caused = dict.fromkeys(ranks, 0.0)
    last = dict.fromkeys(ranks, 0.0)
    late = dict.fromkeys(ranks, 0.0)  # sums of each rank's lateness, and of its squares
    late_sq = dict.fromkeys(ranks, 0.0)
    rows = [per_rank[r] for r in ranks]
    for k in common:
        step = [row[k] for row in rows]
        waits = [w.wait_s for w in step]
        least = min(waits)
        total_wait = math.fsum(waits)
        transfer += least
        walls += math.fsum([w.wall_s for w in step]) / len(step)  # (their fmean)
        tied = []
        held = 0.0
        for r, wait in zip(ranks, waits, strict=True):
            skew[r] += wait - least
            held += wait - least
            lateness = (total_wait - wait) / (len(waits) - 1) - wait
            late[r] += lateness
            late_sq[r] += lateness * lateness
            if wait - least <= TIE_S:
                tied.append(r)
        for r in tied:  # equal waits: no one rank was last
            caused[r] += held / len(tied)
            last[r] += 1 / len(tied)
    n = len(common)
    if walls <= 0:
        return None
    total = sum(caused.values())
    shares = {r: c / total for r, c in caused.items()} if total > 0 else \
        {r: c / n for r, c in last.items()}
    return SkewSplit(n, walls / n, transfer / n, {r: v / n for r, v in skew.items()}, shares,
                     {r: _t(late[r], late_sq[r], n) for r in ranks})


def _t(total: float, squares: float, n: int) -> float:
    """A mean over its standard error, from ``n`` values' sum and sum of squares."""
    mean = total / n
    var = max(squares / n - mean * mean, 0.0) * n / (n - 1) if n > 1 else 0.0
    if var <= (TIE_S * TIE_S):  # late alike in every step (or never)
        return math.inf if mean > TIE_S else 0.0
    return mean / math.sqrt(var / n)
