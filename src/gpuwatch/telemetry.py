"""Telemetry windows: the recent past of each signal, bounded, for detectors and status."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from gpuwatch.records import Event, Record, Sample, Step


@dataclass(frozen=True, slots=True)
class StepSummary:
    """Steps over a recent span: counts, mean step seconds and phase shares of wall time."""

    steps: int
    mean_step_s: float
    data_share: float
    checkpoint_share: float
    samples_per_s: float


class Telemetry:
    """Bounded windows of recent steps, the latest sample per (source, gpu), recent events."""

    def __init__(self, max_steps: int = 4096, max_events: int = 256) -> None:
        self.steps: deque[Step] = deque(maxlen=max_steps)
        self.events: deque[Event] = deque(maxlen=max_events)
        self.latest: dict[tuple[str, int | None], Sample] = {}
        self.total_steps = 0

    def add(self, records: Iterable[Record]) -> None:
        for r in records:
            if isinstance(r, Step):
                self.steps.append(r)
                self.total_steps += 1
            elif isinstance(r, Sample):
                self.latest[(r.source, r.gpu)] = r
            elif isinstance(r, Event):
                self.events.append(r)

    def summarise(self, since: float) -> StepSummary | None:
        """Summary of the steps that ended at or after Unix time ``since``; None if none."""
        recent = [s for s in reversed(self.steps) if s.t >= since]
        if not recent:
            return None
        wall = sum(s.wall_s for s in recent)
        if wall <= 0:
            return None
        return StepSummary(
            steps=len(recent),
            mean_step_s=wall / len(recent),
            data_share=sum(s.data_s for s in recent) / wall,
            checkpoint_share=sum(s.checkpoint_s for s in recent) / wall,
            samples_per_s=sum(s.samples for s in recent) / wall,
        )

    def gpu_samples(self) -> list[Sample]:
        return [s for (source, _), s in sorted(self.latest.items(), key=lambda kv: str(kv[0]))
                if source == "nvml"]
