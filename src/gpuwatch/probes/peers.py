"""The cross-rank exchange, without collectives: each rank publishes a small summary to
the job's own c10d store every few seconds; rank 0 reads the others' and judges
across ranks (straggler, symmetric sync wait) through ``detection.peer_view``.

Every store call runs on this module's own thread: a store that hangs stalls
that thread only, never the training loop or the agent. A rank that stops
publishing is simply absent from rank 0's view (and reports its own hang).
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from gpuwatch.faults import FaultLog
from gpuwatch.records import Step
from gpuwatch.vocabulary import unwaited_compute_s

PREFIX = "gpuwatch/"
PUBLISHED_STEPS = 256  # per-step waits each summary carries (the newest)
LINK_FACTS = ("nvlink_bytes_per_second", "pcie_bytes_per_second", "pcie_generation",
              "pcie_width", "pcie_generation_max", "pcie_width_max")


class StepWait(NamedTuple):
    """One step of one rank, for comparing ranks step by step: its number, exposed
    collective wait, compute without that wait, and wall time (seconds). A named tuple:
    a judgement across ranks makes one per step of each rank's window."""

    step: int
    wait_s: float
    compute_s: float
    wall_s: float

    @classmethod
    def of(cls, s: Step) -> StepWait:
        return cls(s.step, s.collective_s, unwaited_compute_s(s.compute_s, s.collective_s),
                   s.wall_s)


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


def job_store() -> Any:
    """The default process group's c10d store (prefixed), once the job has initialised
    torch.distributed; None before that or without it."""
    import sys

    dist = sys.modules.get("torch.distributed")
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return None
    return dist.PrefixStore(PREFIX, dist.distributed_c10d._get_default_store())


JOB_KEY = "job"  # rank 0's word on the job (what its job-scope findings cover)
RUN_KEY = "run_key"  # rank 0's name for the run, which every rank's run directory takes
RUN_KEY_POLL_S = 0.05  # how often a rank asks for it (s)


def agree_run_key(store: Any, rank: int, mine: str, wait_s: float,
                  pause: Callable[[float], object] = time.sleep) -> str | None:
    """The run's name every rank of one job takes: rank 0 publishes ``mine`` in the job's
    store, the others read it, asking every ``RUN_KEY_POLL_S`` for at most ``wait_s``
    (``pause`` waits; it ends the wait early by returning True). Each job has a store
    of its own, so no other job's rank can read it. None where the store fails or rank 0
    says nothing in time. Called on the agent's thread; every store call returns at once
    (a blocking wait would hold the connection the training thread shares)."""
    deadline = time.monotonic() + wait_s
    try:
        if rank == 0:
            store.set(RUN_KEY, mine)
            return mine
        while not store.check([RUN_KEY]):
            if time.monotonic() >= deadline or pause(RUN_KEY_POLL_S) is True:
                return None
        return bytes(store.get(RUN_KEY)).decode()
    except Exception:  # a store down, a rank 0 without gpuwatch
        return None


class PeerExchange:
    """Publishes this rank's summary and, on rank 0, collects every other rank's; rank 0
    also publishes what its job-scope judgement found, which every other rank reads."""

    def __init__(self, rank: int, world_size: int, faults: FaultLog,
                 store: Callable[[], Any] = job_store, interval_s: float = 5.0) -> None:
        self.rank = rank
        self.world_size = world_size
        self.interval_s = interval_s
        self.received: dict[int, dict[str, Any]] = {}  # rank -> newest summary (rank 0)
        self.job: dict[str, Any] = {}  # rank 0's newest word on the job (other ranks)
        self._job_outgoing: dict[str, Any] | None = None
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

    def publish_job(self, data: dict[str, Any]) -> None:
        """Rank 0: what the job-scope judgement found, for the other ranks."""
        with self._lock:
            self._job_outgoing = data

    def peers(self) -> dict[int, dict[str, Any]]:
        with self._lock:
            return dict(self.received)

    def job_word(self) -> dict[str, Any]:
        """Rank 0's newest word on the job, as published ({} before any)."""
        with self._lock:
            return dict(self.job)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                store = self._store()
                if store is None:
                    continue
                with self._lock:
                    outgoing, self._outgoing = self._outgoing, None
                    job, self._job_outgoing = self._job_outgoing, None
                if outgoing is not None:
                    store.set(f"rank{self.rank}", json.dumps(outgoing))
                if self.rank == 0:
                    if job is not None:
                        store.set(JOB_KEY, json.dumps(job))
                    self._collect(store)
                elif store.check([JOB_KEY]):  # never wait for rank 0's word
                    word = json.loads(store.get(JOB_KEY))
                    with self._lock:
                        self.job = word if isinstance(word, dict) else {}
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

