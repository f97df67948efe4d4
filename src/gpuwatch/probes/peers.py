"""The cross-rank view, without collectives: each rank publishes a small summary to
the job's own c10d store every few seconds; rank 0 reads the others' and judges
across ranks (straggler, symmetric sync wait).

Every store call runs on this module's own thread: a store that hangs stalls
that thread only, never the training loop or the agent. A rank that stops
publishing is simply absent from rank 0's view (and reports its own hang).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

from gpuwatch.faults import FaultLog
from gpuwatch.records import SCHEMA_VERSION, Event, Meta, Sample
from gpuwatch.telemetry import Telemetry

PREFIX = "gpuwatch/"


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
        "clock_event_reasons": gpu.values.get("gpu_clock_event_reasons") if gpu else None,
    }


class PeerView:
    """Rank 0's telemetry of another rank, rebuilt from its published summaries."""

    def __init__(self, rank: int) -> None:
        self.telemetry = Telemetry(rank)
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
                             "nvlink_links_active": s.get("nvlink_links_active", 0)}],
                "job_gpus": [0]}))
        delta = tuple(a - b for a, b in zip(s["totals"], view.window.last, strict=True))
        end = s.get("last_step_t") or s["t"]
        if delta[0] > 0:
            view.window.add_totals(end, delta)
        view.total_steps = s.get("steps_total", view.total_steps)
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

