"""Telemetry windows of one rank: the recent past of each signal, bounded, plus the
few run-long facts detectors need (OOMs, batch cuts, topology, total steps).

The same class serves the live agent and offline replay: feed it records in
run-log order and it holds the same state either way.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from gpuwatch.records import Event, Meta, Record, Sample, Step

MAX_STEPS = 8192
MAX_SAMPLES = 900  # per (source, gpu): 15 minutes at 1 Hz
MAX_EVENTS = 256
WARMUP_STEPS = 5  # the first steps (allocation, compilation, worker start) are not typical


@dataclass(frozen=True, slots=True)
class StepSummary:
    """Steps over a recent span: count, mean step seconds, phase shares of wall time."""

    steps: int
    wall_s: float
    mean_step_s: float
    data_share: float
    compute_share: float
    checkpoint_share: float
    collective_share: float
    recompute_share: float
    samples_per_s: float
    compute_s: float


class Telemetry:
    """Bounded windows of one rank's records. ``clock`` is the newest record time seen."""

    def __init__(self, rank: int = 0) -> None:
        self.rank = rank
        self.meta: Meta | None = None
        self.steps: deque[Step] = deque(maxlen=MAX_STEPS)
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
            if isinstance(r, Step):
                self.steps.append(r)
                self.total_steps = r.step
            elif isinstance(r, Sample):
                window = self.samples.get((r.source, r.gpu))
                if window is None:
                    window = self.samples[(r.source, r.gpu)] = deque(maxlen=MAX_SAMPLES)
                window.append(r)
            elif isinstance(r, Event):
                self._event(r)
            elif isinstance(r, Meta):
                self.meta = r
                self.rank = r.rank
                self.started = self.started or r.started
                continue
            else:
                continue
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

    def steps_since(self, since: float) -> list[Step]:
        """Steps that ended at or after ``since``, oldest first, warm-up steps left out."""
        out = []
        for s in reversed(self.steps):
            if s.t < since or s.step <= WARMUP_STEPS:
                break
            out.append(s)
        out.reverse()
        return out

    def summarise(self, since: float) -> StepSummary | None:
        """Summary of the steps that ended at or after Unix time ``since``; None if none."""
        return summarise(self.steps_since(since))

    def samples_since(self, source: str, since: float) -> list[Sample]:
        """Every sample of ``source`` (all GPUs) at or after ``since``, oldest first."""
        out: list[Sample] = []
        for (src, _), window in self.samples.items():
            if src == source:
                out.extend(s for s in window if s.t >= since)
        out.sort(key=lambda s: s.t)
        return out

    def latest(self, source: str, gpu: int | None = None) -> Sample | None:
        window = self.samples.get((source, gpu))
        return window[-1] if window else None

    def gpu_samples(self) -> list[Sample]:
        """The newest NVML sample of each GPU, by GPU index."""
        latest = [w[-1] for (src, _), w in self.samples.items() if src == "nvml" and w]
        return sorted(latest, key=lambda s: s.gpu or 0)

    def values_since(self, source: str, key: str, since: float) -> list[float]:
        return [s.values[key] for s in self.samples_since(source, since) if key in s.values]


def summarise(steps: list[Step]) -> StepSummary | None:
    wall = sum(s.wall_s for s in steps)
    if not steps or wall <= 0:
        return None
    return StepSummary(
        steps=len(steps),
        wall_s=wall,
        mean_step_s=wall / len(steps),
        data_share=sum(s.data_s for s in steps) / wall,
        compute_share=sum(s.compute_s for s in steps) / wall,
        checkpoint_share=sum(s.checkpoint_s for s in steps) / wall,
        collective_share=sum(s.collective_s for s in steps) / wall,
        recompute_share=sum(s.recompute_s for s in steps) / wall,
        samples_per_s=sum(s.samples for s in steps) / wall,
        compute_s=sum(s.compute_s for s in steps),
    )
