"""Rank 0's view of the other ranks: what each rank publishes (``summary``) and the
rank rank 0 knows from it (``PeerRank``, a ``rank_input.RankInput`` for the job-scope
detectors). The transport is ``probes.peers``."""

from __future__ import annotations

from collections import deque
from typing import Any

from gpuwatch.probes.peers import LINK_FACTS, PUBLISHED_STEPS, StepWait, decode_steps, encode_steps
from gpuwatch.series import Figure
from gpuwatch.telemetry import (
    MAX_CYCLE_STEPS,
    MAX_STEPS,
    WARMUP_STEPS,
    StepSummary,
    StepWindow,
    Telemetry,
)

MEDIAN_SPAN_S = 60.0  # a peer's typical step: its mean over this much of its newest totals


def summary(view: Telemetry, host: str, now: float) -> dict[str, Any]:
    """What a rank publishes: cumulative step totals and a few facts, as JSON-ready data:
    its own GPU's (the first it uses) name and links, and the GPUs of its host that GPU
    cannot reach peer to peer (``no_p2p_to``) or has no NVLink to (``no_nvlink_to``)."""
    gpu = next(iter(view.gpu_samples()), None)
    topology = view.topology or {}
    every = [d for d in topology.get("devices", []) if isinstance(d, dict)]
    mine = set(topology.get("job_gpus") or [])
    devices = [d for d in every if not mine or d.get("index") in mine] or every
    index = devices[0].get("index") if devices else None
    return {
        "rank": view.rank, "host": host, "t": now,
        "totals": list(view.window.last),
        "steps_total": view.steps_done,
        "cycle_steps": view.cycle_steps,
        "last_step_t": view.steps[-1].t if view.steps else None,
        "last_progress": view.last_progress,
        "nvlink_links_active": max((d.get("nvlink_links_active", 0) for d in devices),
                                   default=0),
        "gpu_name": devices[0].get("name") if devices else None,
        "links": {k: devices[0][k] for k in LINK_FACTS if devices and k in devices[0]},
        "infiniband": topology.get("infiniband", []),
        "clock_event_reasons": gpu.values.get("gpu_clock_event_reasons") if gpu else None,
        "steps": encode_steps(view.steps),
        "open_save": view.open_save(),
        "gpu_index": index,
        "no_p2p_to": _pairs_without(topology, index, "read"),
        "no_nvlink_to": _pairs_without(topology, index, "nvlink"),
    }


def _pairs_without(topology: dict[str, Any], index: Any, what: str) -> list[Any]:
    """The GPUs the topology's P2P map says GPU ``index`` has no ``what`` (``read``,
    ``nvlink``) with."""
    return sorted(other for pair in topology.get("p2p") or [] if isinstance(pair, dict)
                  and pair.get(what) is False and isinstance(pair.get("gpus"), list)
                  and index in pair["gpus"] for other in pair["gpus"] if other != index)


class PeerRank:
    """Another rank as rank 0 knows it from its published summaries: step totals (in a
    window by end time), its newest per-step waits by step number, its host, GPU and
    link facts, its GPUs' clock-event reasons and a save it is writing. Samples and
    records it does not publish read as absent (no figures, no timed collectives)."""

    def __init__(self, rank: int) -> None:
        self.rank = rank
        self.host = "?"
        self.world_size = 1
        self.topology: dict[str, Any] | None = None
        self.window = StepWindow(MAX_STEPS)
        self.steps_done = 0
        self.cycle_steps = 1
        self.planned_steps: int | None = None
        self.changed = 0  # counts the summaries that said something new
        self.last_progress = 0.0  # its newest step or progress (Unix s, its clock)
        self.last_step_t = 0.0  # its newest step's end (Unix s, its clock)
        self._published_t = 0.0  # when it last published (its clock)
        self._clock_reasons: int | None = None
        self._open_save: tuple[float, float] | None = None
        self._waits: dict[int, StepWait] = {}
        self._order: deque[int] = deque()

    @property
    def event_stamp(self) -> int:
        """Any new summary may carry news (a peer publishes no events apart)."""
        return self.changed

    def update(self, s: dict[str, Any], world_size: int) -> None:
        """Fold in a published summary (``summary``); one seen before changes nothing."""
        if s["t"] <= self._published_t:
            return
        self.host, self.world_size = s["host"], world_size
        if self.topology is None and s.get("gpu_name"):
            index = s.get("gpu_index") if isinstance(s.get("gpu_index"), int) else 0
            self.topology = {
                "devices": [{"index": index, "name": s.get("gpu_name"),
                             "nvlink_links_active": s.get("nvlink_links_active", 0),
                             **s.get("links", {})}],
                "job_gpus": [index], "infiniband": s.get("infiniband", []),
                "p2p": [*({"gpus": [index, other], "read": False}
                          for other in s.get("no_p2p_to") or [] if isinstance(other, int)),
                        *({"gpus": [index, other], "nvlink": False}
                          for other in s.get("no_nvlink_to") or [] if isinstance(other, int))]}
        delta = tuple(a - b for a, b in zip(s["totals"], self.window.last, strict=True))
        end = s.get("last_step_t") or s["t"]
        if delta[0] > 0:
            self.window.add_totals(end, delta)
        self.steps_done = s.get("steps_total", self.steps_done)
        cycle = s.get("cycle_steps")
        self.cycle_steps = min(cycle, MAX_CYCLE_STEPS) if isinstance(cycle, int) and cycle >= 1 \
            else 1
        self.last_step_t = max(self.last_step_t, s.get("last_step_t") or 0.0)
        self.last_progress = max(self.last_progress, self.last_step_t,
                                 float(s.get("last_progress") or 0.0))
        if s.get("steps"):
            self._add_waits(decode_steps(s["steps"]))
        if s.get("clock_event_reasons") is not None:
            self._clock_reasons = int(s["clock_event_reasons"])
        save = s.get("open_save")  # [when, seconds open] or None
        self._open_save = ((float(save[0]), float(save[1]))
                           if isinstance(save, (list, tuple)) and len(save) == 2 else None)
        self._published_t = s["t"]
        self.changed += 1

    def _add_waits(self, waits: list[StepWait]) -> None:
        for w in waits:
            if w.step not in self._waits:
                self._order.append(w.step)
            self._waits[w.step] = w
        while len(self._order) > 4 * PUBLISHED_STEPS:
            self._waits.pop(self._order.popleft(), None)

    def summarise(self, since: float) -> StepSummary | None:
        return self.window.since(since)

    def since_holding(self, steps: int) -> float | None:
        return self.window.since_holding(steps)

    def working_power_w(self) -> float | None:
        return None  # (no samples published)

    def median_step_s(self) -> float | None:
        """Its mean step over the last ``MEDIAN_SPAN_S`` of totals it published (only
        totals travel, not steps)."""
        summary = self.window.since(self._published_t - MEDIAN_SPAN_S)
        return summary.wall_s if summary is not None else None

    def step_waits(self, since: float) -> dict[int, StepWait]:
        """Every per-step wait it published and rank 0 still holds (its step times are
        on its own clock, so ``since`` does not apply: ranks align by step number)."""
        return {k: w for k, w in self._waits.items() if k > WARMUP_STEPS}

    def figure(self, source: str, key: str, since: float) -> Figure | None:
        return None  # samples are not published

    def counter_rise(self, source: str, key: str, since: float) -> float:
        return 0.0

    def clock_event_reasons(self) -> list[int]:
        return [self._clock_reasons] if self._clock_reasons is not None else []

    def timed_collectives(self, since: float) -> tuple[float, float]:
        return 0.0, 0.0

    def open_save(self) -> tuple[float, float] | None:
        return self._open_save

    def collective_timing(self) -> dict[str, Any]:
        return {}


class JobCover:
    """What rank 0's job-scope findings cover, as another rank reads it from the store
    (``Explains`` for that rank's engine): a straggler or sync finding judged at rank 0
    explains low utilisation on every rank, not only on rank 0."""

    def __init__(self) -> None:
        self._covered: list[tuple[str, list[int]]] = []
        self.revision = 0  # changes with what ``covered`` returns

    def update(self, word: dict[str, Any]) -> None:
        """Take rank 0's newest word (``{"covered": [[detector, [ranks...]], ...]}``);
        entries of the wrong shape are left out."""
        covered = word.get("covered")
        if not isinstance(covered, list):
            return
        taken = [(d, [r for r in ranks if isinstance(r, int)])
                 for item in covered if isinstance(item, list) and len(item) == 2
                 for d, ranks in [item] if isinstance(d, str) and isinstance(ranks, list)]
        if taken != self._covered:
            self._covered = taken
            self.revision += 1

    def covered(self) -> list[tuple[str, list[int]]]:
        return list(self._covered)
