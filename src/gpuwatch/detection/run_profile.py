"""A whole run in figures: the fold behind ``gpuwatch report`` and ``gpuwatch compare``.

One pass over every rank's run log builds a :class:`RunProfile`: phase totals
per rank, the units of work done (samples, tokens), a timeline of the step's
phases and of each GPU's utilisation and memory, checkpoint saves, peak memory
against the card's limit, and the GPU the job ran on. Memory stays bounded
whatever the run's length: timelines keep at most ``MAX_BINS`` bins, merging
neighbours (and doubling the bin width) when they would hold more.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpuwatch.detection.projection import Gpu, catalogue, identify
from gpuwatch.detection.replay import run_logs
from gpuwatch.records import Event, Meta, OomTally, Record, Sample, Step
from gpuwatch.runlog import RunLogReader
from gpuwatch.telemetry import WARMUP_STEPS
from gpuwatch.vocabulary import PARTS, split_step

MAX_BINS = 240
MAX_CHECKPOINTS = 2000
GPU_SERIES = ("gpu_utilization_ratio", "gpu_memory_used_bytes", "gpu_memory_total_bytes")




class Bins:
    """Sums of fixed-length value tuples in bins of ``width`` along a key (step number or
    seconds); at most ``MAX_BINS`` bins: when full, neighbours merge and the width doubles."""

    def __init__(self, size: int, width: float) -> None:
        self.size = size
        self.width = width
        self.sums: dict[int, list[float]] = {}  # bin -> [count, key sum, *value sums]
        self.maxima: dict[int, list[float]] = {}

    def add(self, key: float, values: tuple[float, ...]) -> None:
        b = int(key // self.width)
        acc = self.sums.get(b)
        if acc is None:
            while len(self.sums) >= MAX_BINS and b not in self.sums:
                self._halve()
                b = int(key // self.width)
            acc = self.sums.get(b)
            if acc is None:
                acc = self.sums[b] = [0.0] * (self.size + 2)
                self.maxima[b] = [float("-inf")] * self.size
        acc[0] += 1
        acc[1] += key
        peak = self.maxima[b]
        for i, v in enumerate(values):
            acc[i + 2] += v
            if v > peak[i]:
                peak[i] = v

    def _halve(self) -> None:
        self.width *= 2
        sums: dict[int, list[float]] = {}
        maxima: dict[int, list[float]] = {}
        for b in sorted(self.sums):
            nb = b // 2
            if nb in sums:
                sums[nb] = [a + c for a, c in zip(sums[nb], self.sums[b], strict=True)]
                maxima[nb] = [max(a, c) for a, c in zip(maxima[nb], self.maxima[b], strict=True)]
            else:
                sums[nb], maxima[nb] = list(self.sums[b]), list(self.maxima[b])
        self.sums, self.maxima = sums, maxima

    def means(self) -> list[tuple[float, list[float]]]:
        """(mean key, mean values) per bin, in key order."""
        return [(acc[1] / acc[0], [v / acc[0] for v in acc[2:]])
                for _, acc in sorted(self.sums.items())]

    def peaks(self) -> list[tuple[float, list[float]]]:
        """(mean key, maximum values) per bin, in key order."""
        return [(self.sums[b][1] / self.sums[b][0], self.maxima[b]) for b in sorted(self.sums)]


@dataclass
class RankTotals:
    """One rank's steps after warm-up: their count and the sum of each phase (seconds)."""

    steps: int = 0
    last_step: int = 0
    wall_s: float = 0.0
    phases: list[float] = field(default_factory=lambda: [0.0] * len(PARTS))
    samples: int = 0
    tokens: int = 0
    counted_steps: int = 0  # steps that counted samples or tokens
    collective_bytes: float = 0.0

    def add(self, s: Step) -> None:
        self.last_step = max(self.last_step, s.step)
        if s.step <= WARMUP_STEPS:
            return
        self.steps += 1
        self.wall_s += s.wall_s
        for i, v in enumerate(split_step(s)):
            self.phases[i] += v
        self.samples += s.samples
        self.tokens += s.tokens
        self.counted_steps += 1 if (s.samples or s.tokens) else 0
        self.collective_bytes += s.collective_bytes


@dataclass
class Checkpoint:
    """A checkpoint save: when (Unix s), which rank, how long (s), how big (bytes)."""

    t: float
    rank: int
    seconds: float
    nbytes: float


LATEST_UNIX_S = 1e11  # a start time later than this (year 5138) is a damaged one


@dataclass
class RunProfile:
    """Everything the report and the comparison show of one run (all ranks)."""

    job: str = ""
    hosts: set[str] = field(default_factory=set)
    world_size: int = 1
    started: float = 0.0
    ended: float = 0.0
    detection: dict[str, Any] = field(default_factory=dict)
    ranks: dict[int, RankTotals] = field(default_factory=dict)
    timeline: Bins = field(default_factory=lambda: Bins(len(PARTS) + 1, 1.0))  # by step
    gpu_timelines: dict[tuple[int, int], Bins] = field(default_factory=dict)  # (rank, gpu), by t
    checkpoints: list[Checkpoint] = field(default_factory=list)
    checkpoints_total: int = 0
    device_names: dict[int, str] = field(default_factory=dict)  # rank -> its GPU's NVML name
    memory_limit_bytes: float | None = None
    memory_peak_bytes: float | None = None  # the largest a GPU's memory use reached
    planned_steps: int | None = None
    _set_plan: bool = False  # planned_steps is the user's setting (else the newest loop's)
    ooms: int = 0
    _oom_tallies: dict[int, OomTally] = field(default_factory=dict)  # by rank
    skipped_lines: int = 0

    # -- building ------------------------------------------------------------------

    def add(self, records: Iterable[Record]) -> None:
        for r in records:
            if isinstance(r, Step):
                self._step(r)
            elif isinstance(r, Sample):
                self._sample(r)
            elif isinstance(r, Event):
                self._event(r)
            elif isinstance(r, Meta):
                self._meta(r)

    def _meta(self, m: Meta) -> None:
        self.job = self.job or m.job
        self.hosts.add(m.host)
        self.world_size = max(self.world_size, m.world_size)
        if 0 < m.started < LATEST_UNIX_S:  # (a damaged line's start is no start)
            self.started = min(self.started, m.started) if self.started else m.started
        if m.rank == 0 or not self.detection:
            self.detection = dict(m.detection)
        total = self.detection.get("total_steps")
        if isinstance(total, int) and total > 0:
            self.planned_steps = total
            self._set_plan = True

    def _step(self, s: Step) -> None:
        totals = self.ranks.get(s.rank)
        if totals is None:
            totals = self.ranks[s.rank] = RankTotals()
        totals.add(s)
        self.timeline.add(float(s.step), (*split_step(s), s.t))
        self.ended = max(self.ended, s.t)

    def _sample(self, s: Sample) -> None:
        v = s.values
        if s.source == "nvml" and s.gpu is not None and "gpu_memory_total_bytes" in v:
            bins = self.gpu_timelines.get((s.rank, s.gpu))
            if bins is None:
                bins = self.gpu_timelines[(s.rank, s.gpu)] = Bins(len(GPU_SERIES), 1.0)
            util = v.get("gpu_utilization_ratio", float("nan"))
            used, total = v.get("gpu_memory_used_bytes", float("nan")), v["gpu_memory_total_bytes"]
            bins.add(s.t, (util, used, total))  # Unix seconds: ranks' logs agree
            self._memory(used, total)
        elif s.source == "allocator":
            self._memory(max(v.get("allocator_reserved_peak_bytes", 0.0),
                             v.get("allocator_reserved_bytes", 0.0)) or float("nan"), None)
        self.ended = max(self.ended, s.t)

    def _memory(self, used: float, limit: float | None) -> None:
        if used == used:  # not NaN
            self.memory_peak_bytes = max(self.memory_peak_bytes or 0.0, used)
        if limit:
            self.memory_limit_bytes = max(self.memory_limit_bytes or 0.0, limit)

    def _event(self, e: Event) -> None:
        if e.name == "checkpoint_save":
            self.checkpoints_total += 1
            if len(self.checkpoints) < MAX_CHECKPOINTS:
                self.checkpoints.append(Checkpoint(e.t, e.rank, float(e.data.get("seconds", 0.0)),
                                                   float(e.data.get("bytes", 0.0))))
        elif e.name == "topology":
            devices = e.data.get("devices") or []
            mine = set(e.data.get("job_gpus") or [])
            for d in devices:
                if not mine or d.get("index") in mine:
                    if d.get("name"):
                        self.device_names.setdefault(e.rank, str(d["name"]))
                    if d.get("memory_total_bytes"):
                        self._memory(float("nan"), float(d["memory_total_bytes"]))
        elif e.name == "total_steps" and not self._set_plan:  # (the newest loop's plan)
            self.planned_steps = int(e.data.get("steps", 0)) or self.planned_steps
        elif e.name == "oom":
            self.ooms += self._oom_tallies.setdefault(e.rank, OomTally()).add(e)

    # -- figures -------------------------------------------------------------------

    @property
    def steps(self) -> int:
        """Steps after warm-up, summed over ranks."""
        return sum(t.steps for t in self.ranks.values())

    @property
    def last_step(self) -> int:
        return max((t.last_step for t in self.ranks.values()), default=0)

    def unit(self) -> str:
        """What a unit of work is: ``token`` or ``sample`` when every step counted them,
        else ``step``."""
        counted = all(t.counted_steps == t.steps for t in self.ranks.values())
        if self.steps and counted and all(t.tokens for t in self.ranks.values()):
            return "token"
        if self.steps and counted and all(t.samples for t in self.ranks.values()):
            return "sample"
        return "step"

    def units(self, unit: str) -> float:
        """Units of work the job did after warm-up (all ranks: data parallel)."""
        if unit == "token":
            return float(sum(t.tokens for t in self.ranks.values()))
        if unit == "sample":
            return float(sum(t.samples for t in self.ranks.values()))
        return float(max((t.steps for t in self.ranks.values()), default=0))

    def mean_step_s(self) -> float | None:
        """Mean wall seconds per step after warm-up (mean over ranks)."""
        n = self.steps
        return sum(t.wall_s for t in self.ranks.values()) / n if n else None

    def phase_seconds(self) -> dict[str, float]:
        """Each phase's total seconds, summed over ranks."""
        return {p: sum(t.phases[i] for t in self.ranks.values()) for i, p in enumerate(PARTS)}

    def seconds_per_unit(self, unit: str) -> dict[str, float] | None:
        """Job seconds per unit of work: ``step`` the whole step, then each phase (they add
        up). Ranks run side by side, so the job's seconds are the rank mean."""
        units, n = self.units(unit), len(self.ranks)
        wall = sum(t.wall_s for t in self.ranks.values())
        if units <= 0 or wall <= 0:
            return None
        out = {"step": wall / n / units}
        out.update({p: s / n / units for p, s in self.phase_seconds().items()})
        return out

    def gpu(self, gpus: dict[str, Gpu] | None = None) -> Gpu | None:
        """The catalogue entry of the job's GPU: NVML's name of rank 0's GPU, else the
        run's ``gpu_model`` setting (``Context.current_gpu``); prices from the run's
        ``prices`` setting."""
        gpus = gpus or self.catalogue()
        name = self.device_names.get(0) or next(iter(self.device_names.values()), None)
        model = self.detection.get("gpu_model")
        return identify(name, gpus) or (identify(model, gpus) if isinstance(model, str)
                                        and model else None)

    def gpu_name(self) -> str | None:
        """What the job ran on, for people: the catalogue name, else NVML's, else None."""
        gpu = self.gpu()
        if gpu is not None:
            return gpu.name
        return self.device_names.get(0) or next(iter(self.device_names.values()), None)

    def catalogue(self) -> dict[str, Gpu]:
        prices = self.detection.get("prices")
        return catalogue(prices if isinstance(prices, dict) else None)

    def usd_per_hour(self) -> float | None:
        """What the job's GPUs cost per hour (all ranks), if the GPU is known."""
        gpu = self.gpu()
        return gpu.price_per_hour * max(self.world_size, len(self.ranks), 1) if gpu else None


def profile(paths: list[Path]) -> RunProfile:
    """The profile of the run logs in ``paths`` (files or run directories).

    Raises FileNotFoundError naming a path that holds no run log.
    """
    out = RunProfile()
    for path in run_logs(paths):
        reader = RunLogReader(path)
        out.add(reader)
        out.skipped_lines += reader.skipped
    return out
