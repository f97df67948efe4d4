"""One sampled value over time (one key of one probe on one GPU), with running
aggregates so any recent window's count, sum, extrema, newest value and counter rise
cost O(log n) to ask for, whatever its length: prefix sums for sums, monotonic index
queues for extrema (the classic sliding-window maximum, queried by bisection since
windows of different lengths are asked for), first/last readings for counters.

Entries carry the sequence number of the sample they came from, so a series drops
exactly the readings its probe's bounded window dropped.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Figure:
    """A window's readings of one key: their count, sum, least, greatest and newest
    (in the key's unit), and the GPUs they came from."""

    count: int
    total: float
    low: float
    high: float
    last: float
    gpus: tuple[int, ...] = ()

    @property
    def mean(self) -> float:
        return self.total / self.count


def mean_of(values: Iterable[float | None]) -> float | None:
    """The mean of the values present (None: none is), summed exactly (``math.fsum``);
    inf or nan where their sum overflows a float (readings no probe writes: a hostile
    log), never an OverflowError."""
    xs = [v for v in values if v is not None]
    if not xs:
        return None
    try:
        return math.fsum(xs) / len(xs)
    except OverflowError:
        return sum(xs) / len(xs)


def combined(parts: Iterable[tuple[int | None, Figure, float]]) -> Figure | None:
    """One figure of a key's readings on several GPUs, from each GPU's (index, figure,
    time of its newest reading): counts and sums added, extrema of all, the value of
    the newest reading (ties: the later GPU, as a stable time sort has it); None if
    there are none."""
    count, total, low, high = 0, 0.0, float("inf"), float("-inf")
    last_t, last, gpus = float("-inf"), 0.0, []
    for gpu, f, newest_t in parts:
        count, total = count + f.count, total + f.total
        low, high = min(low, f.low), max(high, f.high)
        if newest_t >= last_t:
            last_t, last = newest_t, f.last
        if gpu is not None:
            gpus.append(gpu)
    if not count:
        return None
    return Figure(count, total, low, high, last, tuple(sorted(set(gpus))))


def combined_rise(rises: Iterable[tuple[float, float] | None]) -> float:
    """How much a cumulative counter rose, from each GPU's (base, newest) (None: no
    readings): the first one's newest less the last one's base, never below 0."""
    newest = base = None
    for rise in rises:
        if rise is None:
            continue
        if newest is None:
            newest = rise[1]
        base = rise[0]
    return max(newest - base, 0.0) if newest is not None and base is not None else 0.0


class Series:
    """Readings of one key, oldest first, at non-decreasing times (Unix s)."""

    __slots__ = ("_cum", "_head", "_highs", "_lows", "_seq", "_t", "_v")

    def __init__(self) -> None:
        self._t: list[float] = []
        self._v: list[float] = []
        self._seq: list[int] = []
        self._cum: list[float] = []  # _cum[i]: sum of _v[0..i] (rebuilt on compaction)
        self._highs: list[int] = []  # indices of strictly decreasing values (suffix maxima)
        self._lows: list[int] = []  # indices of strictly increasing values (suffix minima)
        self._head = 0  # index of the oldest kept reading

    def append(self, seq: int, t: float, v: float) -> None:
        i = len(self._v)
        self._t.append(t)
        self._v.append(v)
        self._seq.append(seq)
        self._cum.append(self._cum[-1] + v if i else v)
        values, highs, lows = self._v, self._highs, self._lows
        while highs and values[highs[-1]] <= v:
            highs.pop()
        highs.append(i)
        while lows and values[lows[-1]] >= v:
            lows.pop()
        lows.append(i)

    def trim(self, oldest_seq: int) -> None:
        """Drop readings of samples older than sequence number ``oldest_seq``."""
        seq = self._seq
        head = self._head
        n = len(seq)
        while head < n and seq[head] < oldest_seq:
            head += 1
        if head == self._head:
            return
        self._head = head
        if head > 64 and head * 2 > n:  # amortised compaction
            self._compact()

    def _compact(self) -> None:
        h = self._head
        del self._t[:h], self._v[:h], self._seq[:h]
        self._cum = []
        total = 0.0
        for v in self._v:
            total += v
            self._cum.append(total)
        self._highs = [i - h for i in self._highs if i >= h]
        self._lows = [i - h for i in self._lows if i >= h]
        self._head = 0

    def start(self, since: float) -> int:
        """Index of the first kept reading at or after ``since`` (len if none)."""
        return bisect.bisect_left(self._t, since, self._head)

    def __len__(self) -> int:
        return len(self._v) - self._head

    def newest(self) -> tuple[float, float] | None:
        """(time, value) of the newest reading, if any."""
        return (self._t[-1], self._v[-1]) if len(self._v) > self._head else None

    def count_sum(self, since: float, until: float = float("inf")) -> tuple[int, float]:
        """Count and sum of readings with ``since <= t <= until``."""
        i = self.start(since)
        j = bisect.bisect_right(self._t, until, i) if until != float("inf") else len(self._v)
        if j <= i:
            return 0, 0.0
        return j - i, self._cum[j - 1] - (self._cum[i - 1] if i else 0.0)

    def extrema(self, since: float) -> tuple[float, float] | None:
        """(least, greatest) of the readings at or after ``since``; None if none."""
        i = self.start(since)
        if i >= len(self._v):
            return None
        values = self._v
        hi = self._highs[bisect.bisect_left(self._highs, i)]
        lo = self._lows[bisect.bisect_left(self._lows, i)]
        return values[lo], values[hi]

    def rise(self, since: float) -> tuple[float, float] | None:
        """(base, newest): the last reading before ``since`` (the oldest kept if none)
        and the newest reading; None if there are none."""
        if len(self._v) <= self._head:
            return None
        i = self.start(since)
        base = self._v[i - 1] if i > self._head else self._v[self._head]
        return base, self._v[-1]
