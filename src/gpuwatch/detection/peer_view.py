"""Rank 0's view of the other ranks: what each rank publishes (``summary``) and the
telemetry rank 0 rebuilds from it (``PeerView``), for the job-scope detectors.
The transport is ``probes.peers``."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import Any

from gpuwatch.probes.peers import LINK_FACTS, PUBLISHED_STEPS, StepWait, decode_steps, encode_steps
from gpuwatch.records import SCHEMA_VERSION, Event, Meta, Sample
from gpuwatch.telemetry import Telemetry


class PeerTelemetry(Telemetry):
    """Another rank's telemetry on rank 0: window totals, plus its newest per-step
    waits by step number (``published_steps``)."""

    def __init__(self, rank: int) -> None:
        super().__init__(rank)
        self.published_steps: dict[int, StepWait] = {}
        self._order: deque[int] = deque()

    def add_step_waits(self, waits: Iterable[StepWait]) -> None:
        for w in waits:
            if w.step not in self.published_steps:
                self._order.append(w.step)
            self.published_steps[w.step] = w
        while len(self._order) > 4 * PUBLISHED_STEPS:
            self.published_steps.pop(self._order.popleft(), None)


def summary(view: Telemetry, host: str, now: float) -> dict[str, Any]:
    """What a rank publishes: cumulative step totals and a few facts, as JSON-ready data."""
    gpu = next(iter(view.gpu_samples()), None)
    devices = (view.topology or {}).get("devices", [])
    return {
        "rank": view.rank, "host": host, "t": now,
        "totals": list(view.window.last),
        "steps_total": view.steps_done,
        "last_step_t": view.steps[-1].t if view.steps else None,
        "nvlink_links_active": max((d.get("nvlink_links_active", 0) for d in devices),
                                   default=0),
        "gpu_name": devices[0].get("name") if devices else None,
        "links": {k: devices[0][k] for k in LINK_FACTS if devices and k in devices[0]},
        "infiniband": (view.topology or {}).get("infiniband", []),
        "clock_event_reasons": gpu.values.get("gpu_clock_event_reasons") if gpu else None,
        "steps": encode_steps(view.steps),
    }


class PeerView:
    """Rank 0's telemetry of another rank, rebuilt from its published summaries."""

    def __init__(self, rank: int) -> None:
        self.telemetry = PeerTelemetry(rank)
        self._seen_t = 0.0

    def update(self, s: dict[str, Any], job: str, world_size: int) -> None:
        if s["t"] <= self._seen_t:
            return  # nothing new published
        view = self.telemetry
        if view.meta is None:
            view.add_one(Meta(schema=SCHEMA_VERSION, gpuwatch="", job=job, host=s["host"],
                              rank=s["rank"], local_rank=-1, world_size=world_size, pid=0,
                              started=s["t"]))
        if view.topology is None and s.get("gpu_name"):
            view.add_one(Event(s["rank"], s["t"], "topology", {
                "devices": [{"index": 0, "name": s.get("gpu_name"),
                             "nvlink_links_active": s.get("nvlink_links_active", 0),
                             **s.get("links", {})}],
                "job_gpus": [0], "infiniband": s.get("infiniband", [])}))
        delta = tuple(a - b for a, b in zip(s["totals"], view.window.last, strict=True))
        end = s.get("last_step_t") or s["t"]
        if delta[0] > 0:
            view.window.add_totals(end, delta)
        view.steps_done = s.get("steps_total", view.steps_done)
        if s.get("steps"):
            view.add_step_waits(decode_steps(s["steps"]))
        if s.get("clock_event_reasons") is not None:
            view.add_one(Sample(s["rank"], s["t"], "nvml",
                                {"gpu_clock_event_reasons": s["clock_event_reasons"]}, gpu=0))
        self._seen_t = s["t"]


class JobCover:
    """What rank 0's job-scope findings cover, as another rank reads it from the store
    (``Explains`` for that rank's engine): a straggler or sync finding judged at rank 0
    explains low utilisation on every rank, not only on rank 0."""

    def __init__(self) -> None:
        self._covered: list[tuple[str, list[int]]] = []

    def update(self, word: dict[str, Any]) -> None:
        """Take rank 0's newest word (``{"covered": [[detector, [ranks...]], ...]}``);
        entries of the wrong shape are left out."""
        covered = word.get("covered")
        if not isinstance(covered, list):
            return
        self._covered = [(d, [r for r in ranks if isinstance(r, int)])
                         for item in covered if isinstance(item, list) and len(item) == 2
                         for d, ranks in [item] if isinstance(d, str) and isinstance(ranks, list)]

    def covered(self) -> list[tuple[str, list[int]]]:
        return list(self._covered)
