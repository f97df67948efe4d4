"""The cross-rank view, without collectives: each rank publishes a small summary to
the job's own c10d store every few seconds; rank 0 reads the others' and judges
across ranks (straggler, symmetric sync wait).

Every store call runs on this module's own thread: a store that hangs stalls
that thread only, never the training loop or the agent. A rank that stops
publishing is simply absent from rank 0's view (and reports its own hang).
"""

from __future__ import annotations

import itertools
import json
import threading
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from gpuwatch.faults import FaultLog
from gpuwatch.records import SCHEMA_VERSION, Event, Meta, Sample, Step
from gpuwatch.telemetry import Telemetry

PREFIX = "gpuwatch/"
PUBLISHED_STEPS = 256  # per-step waits each summary carries (the newest)
LINK_FACTS = ("nvlink_bytes_per_second", "pcie_bytes_per_second", "pcie_generation",
              "pcie_width")


@dataclass(frozen=True, slots=True)
class StepWait:
    """One step of one rank, for comparing ranks step by step: its number, exposed
    collective wait, compute without that wait, and wall time (seconds)."""

    step: int
    wait_s: float
    compute_s: float
    wall_s: float

    @classmethod
    def of(cls, s: Step) -> StepWait:
        return cls(s.step, s.collective_s, max(s.compute_s - s.collective_s, 0.0), s.wall_s)


def encode_steps(steps: Sequence[Step], limit: int = PUBLISHED_STEPS) -> dict[str, Any]:
    """The newest ``limit`` steps as parallel lists (microsecond precision): step numbers,
    waits, computes, walls. Compact in JSON, aligned by step number on the reader's side
    (never by clock, so host clock skew does not matter)."""
    waits = [StepWait.of(s) for s in itertools.islice(reversed(steps), limit)][::-1]
    return {"step": [w.step for w in waits],
            "wait": [round(w.wait_s, 6) for w in waits],
            "compute": [round(w.compute_s, 6) for w in waits],
            "wall": [round(w.wall_s, 6) for w in waits]}


def decode_steps(data: dict[str, Any]) -> list[StepWait]:
    """``encode_steps``'s inverse; raises ValueError on malformed data."""
    try:
        return [StepWait(int(k), float(w), float(c), float(t)) for k, w, c, t in
                zip(data["step"], data["wait"], data["compute"], data["wall"], strict=True)]
    except (KeyError, TypeError) as exc:
        raise ValueError(f"bad per-step data from a peer: {exc}") from None


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


def job_store() -> Any:
    """The default process group's c10d store (prefixed), once the job has initialised
    torch.distributed; None before that or without it."""
    import sys

    dist = sys.modules.get("torch.distributed")
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return None
    return dist.PrefixStore(PREFIX, dist.distributed_c10d._get_default_store())


def summary(view: Telemetry, host: str, now: float) -> dict[str, Any]:
    """What a rank publishes: cumulative step totals and a few facts, as JSON-ready data."""
    gpu = next(iter(view.gpu_samples()), None)
    devices = (view.topology or {}).get("devices", [])
    return {
        "rank": view.rank, "host": host, "t": now,
        "totals": list(view.window.last),
        "steps_total": view.total_steps,
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
        view.total_steps = s.get("steps_total", view.total_steps)
        if s.get("steps"):
            view.add_step_waits(decode_steps(s["steps"]))
        if s.get("clock_event_reasons") is not None:
            view.add_one(Sample(s["rank"], s["t"], "nvml",
                                {"gpu_clock_event_reasons": s["clock_event_reasons"]}, gpu=0))
        self._seen_t = s["t"]


class PeerExchange:
    """Publishes this rank's summary and, on rank 0, collects every other rank's."""

    def __init__(self, rank: int, world_size: int, faults: FaultLog,
                 store: Callable[[], Any] = job_store, interval_s: float = 5.0) -> None:
        self.rank = rank
        self.world_size = world_size
        self.interval_s = interval_s
        self.received: dict[int, dict[str, Any]] = {}  # rank -> newest summary (rank 0)
        self._store = store
        self._faults = faults
        self._outgoing: dict[str, Any] | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gpuwatch-peers", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()  # not joined: a store call may be stuck, and that is its own business

    def publish(self, data: dict[str, Any]) -> None:
        with self._lock:
            self._outgoing = data

    def peers(self) -> dict[int, dict[str, Any]]:
        with self._lock:
            return dict(self.received)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                store = self._store()
                if store is None:
                    continue
                with self._lock:
                    outgoing, self._outgoing = self._outgoing, None
                if outgoing is not None:
                    store.set(f"rank{self.rank}", json.dumps(outgoing))
                if self.rank == 0:
                    self._collect(store)
            except Exception as exc:  # a store gone with its job: counted, never raised
                self._faults.record("peers", exc)

    def _collect(self, store: Any) -> None:
        for rank in range(1, self.world_size):
            key = f"rank{rank}"
            if not store.check([key]):  # never wait on a rank that has not published
                continue
            data = json.loads(store.get(key))
            with self._lock:
                self.received[rank] = data

