"""Telemetry windows of one rank: the recent past of each signal, bounded, plus the
few run-long facts detectors need (OOMs, batch cuts, topology, total steps).

The same class serves the live agent and offline replay: feed it records in
run-log order and it holds the same state either way.
"""

from __future__ import annotations

import bisect
import itertools
import operator
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from gpuwatch.records import Event, Meta, Record, Sample, Step

MAX_STEPS = 8192
MAX_SAMPLES = 900  # per (source, gpu): 15 minutes at 1 Hz
MAX_EVENTS = 256
WARMUP_STEPS = 5  # the first steps (allocation, compilation, worker start) are not typical


# What step windows sum: the step count, then these step fields.
SUMMED = ("steps", "wall_s", "data_s", "compute_s", "checkpoint_s", "collective_s",
          "recompute_s", "other_s", "collective_bytes", "optimizer_s", "samples", "tokens")


@dataclass(frozen=True, slots=True)
class StepSummary:
    """Steps over a recent span: their count and the mean of each part per step
    (seconds; ``samples``, ``tokens`` and ``collective_bytes`` per step)."""

    steps: int
    wall_s: float
    data_s: float
    compute_s: float
    checkpoint_s: float
    collective_s: float
    recompute_s: float
    other_s: float
    collective_bytes: float
    optimizer_s: float = 0.0
    samples: float = 0.0
    tokens: float = 0.0

    @property
    def pure_compute_s(self) -> float:
        """Compute without the exposed collective wait nested in it."""
        return max(self.compute_s - self.collective_s, 0.0)

    @property
    def mean_step_s(self) -> float:
        return self.wall_s

    @property
    def data_share(self) -> float:
        return self.data_s / self.wall_s

    @property
    def checkpoint_share(self) -> float:
        return self.checkpoint_s / self.wall_s

    @property
    def collective_share(self) -> float:
        return self.collective_s / self.wall_s

    @property
    def recompute_share(self) -> float:
        return self.recompute_s / self.wall_s


class StepWindow:
    """Running totals of steps by end time, so any recent window sums in O(log n).

    Entries are single steps (``add``) or, for another rank's published totals,
    many steps at once (``add_totals``).
    """

    def __init__(self, maxlen: int) -> None:
        self._maxlen = maxlen
        self._t: list[float] = []
        self._totals: list[tuple[float, ...]] = []
        self.last: tuple[float, ...] = (0.0,) * len(SUMMED)  # cumulative, in SUMMED order

    def add(self, s: Step) -> None:
        self._append(s.t, (1, s.wall_s, s.data_s, s.compute_s, s.checkpoint_s, s.collective_s,
                           s.recompute_s, s.other_s, s.collective_bytes, s.optimizer_s,
                           s.samples, s.tokens))

    def add_totals(self, t: float, totals: tuple[float, ...]) -> None:
        """Steps that ended by ``t``, summed (SUMMED order, the count first)."""
        self._append(t, totals)

    def _append(self, t: float, values: tuple[float, ...]) -> None:
        self.last = tuple(map(operator.add, self.last, values))
        self._t.append(t)
        self._totals.append(self.last)
        if len(self._t) > 2 * self._maxlen:  # amortised trim
            del self._t[: self._maxlen], self._totals[: self._maxlen]

    def since(self, since: float) -> StepSummary | None:
        """Mean step over the steps that ended at or after ``since``; None if none."""
        i = bisect.bisect_left(self._t, since)
        if i >= len(self._t):
            return None
        base = self._totals[i - 1] if i > 0 else (0.0,) * len(SUMMED)
        n = self.last[0] - base[0]
        if n <= 0:
            return None
        sums = [(a - b) / n for a, b in zip(self.last[1:], base[1:], strict=True)]
        if sums[0] <= 0:
            return None
        return StepSummary(int(n), *sums)


class Telemetry:
    """Bounded windows of one rank's records. ``clock`` is the newest record time seen."""

    def __init__(self, rank: int = 0) -> None:
        self.rank = rank
        self.meta: Meta | None = None
        self.steps: deque[Step] = deque(maxlen=MAX_STEPS)
        self.window = StepWindow(MAX_STEPS)
        self.events: deque[Event] = deque(maxlen=MAX_EVENTS)
        self.samples: dict[tuple[str, int | None], deque[Sample]] = {}
        self.total_steps = 0
        self.clock = 0.0
        self.started = 0.0
        self.ooms = 0
        self.batch_changes: list[tuple[int, int]] = []  # (from, to), run-long, bounded below
        self.topology: dict[str, Any] | None = None
        self.planned_steps: int | None = None

    def add(self, records: Iterable[Record]) -> None:
        for r in records:
            self.add_one(r)

    def add_one(self, r: Record) -> None:
        if isinstance(r, Step):
            self.steps.append(r)
            self.total_steps = r.step
            if r.step > WARMUP_STEPS:
                self.window.add(r)
        elif isinstance(r, Sample):
            window = self.samples.get((r.source, r.gpu))
            if window is None:
                window = self.samples[(r.source, r.gpu)] = deque(maxlen=MAX_SAMPLES)
            window.append(r)
        elif isinstance(r, Event):
            self._event(r)
        else:
            if isinstance(r, Meta):
                self.meta = r
                self.rank = r.rank
                self.started = self.started or r.started
            return
        if r.t > self.clock:
            self.clock = r.t

    def _event(self, e: Event) -> None:
        self.events.append(e)
        if e.name == "oom":
            self.ooms += int(e.data.get("count", 1))
        elif e.name == "batch_size_changed" and len(self.batch_changes) < 64:
            self.batch_changes.append((int(e.data["from"]), int(e.data["to"])))
        elif e.name == "topology":
            self.topology = e.data
        elif e.name == "total_steps":
            self.planned_steps = int(e.data["steps"])

    # -- queries ---------------------------------------------------------------------

    def summarise(self, since: float) -> StepSummary | None:
        """The mean step over steps that ended at or after ``since`` (warm-up left out)."""
        return self.window.since(since)

    def samples_since(self, source: str, since: float) -> list[Sample]:
        """Every sample of ``source`` (all GPUs) at or after ``since``, oldest first."""
        parts: list[list[Sample]] = []
        for (src, _), window in self.samples.items():
            if src == source:
                part = list(itertools.takewhile(lambda s: s.t >= since, reversed(window)))
                part.reverse()
                parts.append(part)
        if len(parts) == 1:
            return parts[0]
        return sorted(itertools.chain.from_iterable(parts), key=lambda s: s.t)

    def counter_rise(self, source: str, key: str, since: float) -> float:
        """How much a cumulative counter rose since the last reading before ``since``."""
        newest = base = None
        for (src, _), window in self.samples.items():
            if src != source:
                continue
            for sample in reversed(window):
                value = sample.values.get(key)
                if value is None:
                    continue
                if newest is None:
                    newest = value
                base = value
                if sample.t < since:
                    break
        return max(newest - base, 0.0) if newest is not None and base is not None else 0.0

    def latest(self, source: str, gpu: int | None = None) -> Sample | None:
        window = self.samples.get((source, gpu))
        return window[-1] if window else None

    def gpu_samples(self) -> list[Sample]:
        """The newest NVML sample of each GPU, by GPU index."""
        latest = [w[-1] for (src, _), w in self.samples.items() if src == "nvml" and w]
        return sorted(latest, key=lambda s: s.gpu or 0)

    def values_since(self, source: str, key: str, since: float) -> list[float]:
        return [s.values[key] for s in self.samples_since(source, since) if key in s.values]
