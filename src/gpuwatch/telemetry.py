"""Telemetry windows of one rank: the recent past of each signal, bounded, plus the
few run-long facts detectors need (OOMs, the training batch size, checkpoint time,
progress, topology, total steps).

The same class serves the live agent and offline replay: feed it records in
run-log order and it holds the same state either way.

Step windows hold *typical* steps only: the first ``WARMUP_STEPS`` steps a process
logs (allocation, compilation, worker start) and every interruption (a step more
than ``INTERRUPTION_MULTIPLE`` times the running median: an eval loop, a blocking
save, a recompile, a DataLoader epoch restart) are left out of the means and kept
as progress only. A long step that carries the job's gradient sync (gradient
accumulation's all-reduce every N micro-steps, each a step) is the job's rhythm: kept.
"""

from __future__ import annotations

import bisect
import itertools
import math
import operator
import statistics
from array import array
from collections import deque
from collections.abc import Iterable
from typing import Any, NamedTuple

from gpuwatch.probes.peers import StepWait
from gpuwatch.records import Event, Meta, OomTally, Record, Sample, Step
from gpuwatch.series import Figure, Series, combined, combined_rise, mean_of
from gpuwatch.vocabulary import LOWEST_SLOWDOWN, SLOWDOWN_BITS, unwaited_compute_s

MAX_STEPS = 8192
MAX_SAMPLES = 900  # per (source, gpu): 15 minutes at 1 Hz
# The (source, GPU) pairs a rank's samples may come from: a few sources on up to a
# node's GPUs; the readings of others are left out
MAX_GROUPS = 256
TRIM_EVERY = 64  # samples between trims of a tracked key's series
SUMMARIES_KEPT = 16  # window summaries kept between steps (a stalled rank's: new each time)
MAX_EVENTS = 256
CKPT_STRETCH_STEPS = 10  # steps in a row with(out) activation checkpointing: a switch
WARMUP_STEPS = 5  # the first steps (allocation, compilation, worker start) are not typical
MEDIAN_STEPS = 15  # the running median step is taken over this many recent steps
# A long step is a long batch where its cost per token (or sample) is about that of the
# heaviest quarter of the newest WORK_STEPS (by their work): attention's cost per token
# grows with the sequence, so a batch of the longest sequences costs more per token than
# the median step does, not more than the other long batches.
WORK_STEPS = 100
INTERRUPTION_MULTIPLE = 4.0  # a step this many times the running median is an interruption
PAUSE_S = 60.0  # a silence this long that a step ends is one of the job's pauses
BATCH_SIZES = 64  # batch sizes whose tokens per step a rank remembers
RHYTHM_SHARE = 0.10  # interruptions more frequent than this share of steps are the rhythm
RECURRING = 2  # an interruption's kind seen this often recurs (once: an event)
SYNC_BYTES_MULTIPLE = 4.0  # a long step with this many times the typical bytes is a sync
SYNCS_KEPT = 5  # the gradient syncs whose gaps give the job's cycle
CYCLE_LAPSE = 3  # no sync for this many cycles: the rhythm lapsed
MAX_CYCLE_STEPS = 64  # a longer cycle is taken as this (windows stay within MAX_STEPS)
GPU_BUSY_RATIO = 0.5  # an interruption the GPU was this busy through is GPU work
TYPICAL_S = 60.0  # an interruption is weighed against the typical steps of this long before
# Events that show the job is working between steps (besides steps themselves).
PROGRESS_EVENTS = frozenset({"progress", "checkpoint_save"})
EVAL_OOM_S = 3.0  # an OOM this near an eval's batches (its progress records) is the eval's
OPEN_SAVE_KEY = "open_checkpoint_seconds"  # agent samples: how long a save has been open
_CHANGES = itertools.count(1)  # stamps of steps and events, unique across views


class StepSummary(NamedTuple):
    """Steps over a recent span: their count and the mean of each part per step
    (seconds; ``samples``, ``tokens`` and the bytes per step). A named tuple:
    detectors make one per judgement, and it is built three times faster than a frozen
    dataclass.

    The one list of what step windows sum (``SUMMED``): the count, then these fields
    of ``records.Step``."""

    steps: int
    wall_s: float
    data_s: float
    compute_s: float
    checkpoint_s: float
    collective_s: float
    recompute_s: float
    other_s: float
    collective_bytes: float
    p2p_bytes: float
    optimizer_s: float
    samples: float
    tokens: float

    @property
    def unwaited_compute_s(self) -> float:
        """Compute without the exposed collective wait nested in it (recompute included;
        ``vocabulary.unwaited_compute_s``)."""
        return unwaited_compute_s(self.compute_s, self.collective_s)

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


# What step windows sum, in this order (published totals too): the step count, then
# these fields of each step.
SUMMED = StepSummary._fields
_summed_of = operator.attrgetter(*SUMMED[1:])  # a Step -> its summed fields


class StepWindow:
    """Running totals of steps by end time, so any recent window sums in O(log n).

    Entries are single steps (``add``) or, for another rank's published totals
    (``detection.peer_view``), many steps at once (``add_totals``). The running totals
    are kept flat, ``len(SUMMED)`` doubles an entry (a tuple of floats would take
    about four times the memory: a job engine holds one window per rank).
    """

    def __init__(self, maxlen: int) -> None:
        self._maxlen = maxlen
        self._t = array("d")
        self._totals = array("d")
        self._counts = array("d")  # the steps summed up to each entry (bisected)
        self.last: tuple[float, ...] = (0.0,) * len(SUMMED)  # cumulative, in SUMMED order

    def add(self, s: Step) -> None:
        self._append(s.t, (1, *_summed_of(s)))

    def add_totals(self, t: float, totals: tuple[float, ...]) -> None:
        """Steps that ended by ``t``, summed (SUMMED order, the count first)."""
        self._append(t, totals)

    def _append(self, t: float, values: tuple[float, ...]) -> None:
        self.last = tuple(map(operator.add, self.last, values))
        self._t.append(t)
        self._totals.extend(self.last)
        self._counts.append(self.last[0])
        if len(self._t) > 2 * self._maxlen:  # amortised trim
            del self._t[: self._maxlen], self._totals[: self._maxlen * _WIDTH]
            del self._counts[: self._maxlen]

    def since(self, since: float) -> StepSummary | None:
        """Mean step over the steps that ended at or after ``since``; None if none."""
        return mean_step(self.sums_since(since))

    def since_holding(self, steps: int) -> float | None:
        """The latest end time from which the window holds at least ``steps`` steps (Unix
        s: ``sums_since`` of it counts them), in O(log n); None where it holds fewer."""
        last = self.last[0]
        if not self._t or last < steps:
            return None
        # the latest entry i with ``steps`` from it on: the steps up to the one before it
        # (``_counts[i - 1]``) at most ``last - steps``
        i = bisect.bisect_right(self._counts, last - steps)
        return self._t[min(i, len(self._t) - 1)]

    def sums_since(self, since: float) -> tuple[float, ...]:
        """Sums (SUMMED order, the count first) of the steps that ended at or after ``since``."""
        i = bisect.bisect_left(self._t, since)
        if i >= len(self._t):
            return ZERO
        if i == 0:
            return self.last
        base = self._totals[(i - 1) * _WIDTH: i * _WIDTH]
        return tuple(map(operator.sub, self.last, base))


ZERO = (0.0,) * len(SUMMED)
_WIDTH = len(SUMMED)


class Ending(NamedTuple):
    """How a rank's log ended: whether an OOM killed it (``Telemetry.died_of_oom``), and
    what its newest steps (``ENDING_STEPS``) trained, step by step at their median:
    samples and tokens (0 where not logged), and whether with activation checkpointing
    (most of them); of how many ranks; how long it ran steps (s, first step's start to
    the newest step's end)."""

    died_of_oom: bool
    samples: int
    tokens: int
    act_ckpt: bool
    ran_s: float
    world_size: int


ENDING_STEPS = 50  # the newest steps an ending is read from (a last, partial batch aside)


def _checkpointed(s: Step) -> bool:
    """Whether a step ran with activation checkpointing (its regions, or their recompute)."""
    return bool(s.act_ckpt_calls or s.recompute_s > 0)


def mean_step(sums: tuple[float, ...]) -> StepSummary | None:
    """The mean step of summed steps (SUMMED order); None for no steps or no time."""
    n = sums[0]
    if n <= 0 or sums[1] <= 0:
        return None
    return StepSummary(int(n), *[x / n for x in sums[1:]])


class Telemetry:
    """Bounded windows of one rank's records. ``clock`` is the newest record time seen."""

    def __init__(self, rank: int = 0) -> None:
        self.rank = rank
        self.meta: Meta | None = None
        self.steps: deque[Step] = deque(maxlen=MAX_STEPS)
        self._waits: deque[StepWait] = deque(maxlen=MAX_STEPS)  # each step's, made once
        self.window = StepWindow(MAX_STEPS)  # typical steps (what peers are sent)
        self.interrupting = StepWindow(MAX_EVENTS)  # the steps that were interruptions
        self.events: deque[Event] = deque(maxlen=MAX_EVENTS)
        self.samples: dict[tuple[str, int | None], deque[Sample]] = {}
        # Running aggregates of the keys detectors ask about, per (source, GPU): made on
        # the first question (from the window), kept current as samples arrive.
        self._series: dict[tuple[str, int | None], dict[str, Series]] = {}
        self._seq: dict[tuple[str, int | None], int] = {}  # samples seen per (source, GPU)
        self._tracked: dict[str, tuple[str, ...]] = {}  # keys asked about, by source
        # (source, key) -> its series on each GPU, in window order (cleared when one is made)
        self._key_lists: dict[tuple[str, str], list[tuple[tuple[str, int | None], Series]]] = {}
        self.steps_done = 0  # the number of the newest step (steps done so far)
        self.clock = 0.0
        self.started = 0.0
        self.oom_times: deque[float] = deque(maxlen=MAX_EVENTS)
        self._ooms = OomTally()
        self.oom_left_step_at = 0.0  # when an OOM last left a step (Unix s; 0: never)
        self.ended = False  # the log ended (``end``)
        # steps per cycle of the job's rhythm: 1, or N where a gradient sync every N steps
        # sets it (gradient accumulation with each micro-batch a step); the newest syncs
        self.cycle_steps = 1
        self._syncs: deque[int] = deque(maxlen=SYNCS_KEPT)
        self.slowed_at = 0.0  # the newest NVML reading with a slowdown reason (Unix s)
        self.batch = TrainingBatch()
        self.tokens_at: dict[int, int] = {}  # samples in a step -> the newest such step's tokens
        self.saves = SaveTotals()
        self.topology: dict[str, Any] | None = None
        self.planned_steps: int | None = None
        self.steps_seen = 0  # steps this log holds (a resumed run counts from its first)
        # (start, end) of recent steps left out of the windows as interruptions
        self.interruptions: deque[tuple[float, float]] = deque(maxlen=MAX_EVENTS)
        # run-long: how many steps were interruptions, and the seconds they took beyond a
        # typical step, their blocking saves aside (those are ``saves``)
        self.interrupted_by = Interruptions()
        self._eval_at = 0.0  # when the newest eval batch was seen (a progress event)
        # [first, last] of recent evaluation work (Unix s): eval batches' progress times
        # (gaps of EVAL_OOM_S apart), and long steps of GPU work outside training
        self._evaluating: deque[list[float]] = deque(maxlen=MAX_EVENTS)
        # (work, wall s) of the newest typical steps with work
        self._work_walls: deque[tuple[int, float]] = deque(maxlen=WORK_STEPS)
        # what the allocator held at the first reading after warm-up (bytes): the floor a
        # leak grows from
        self.allocated_at_start: float | None = None
        self.first_step_start: float | None = None  # start of the first step (Unix s)
        # when activation checkpointing came on after a stretch of CKPT_STRETCH_STEPS
        # steps without it (the start of its first step; None: off for as long, or on
        # from the start): a step or a few without it (toggling) move nothing
        self.act_ckpt_on_at: float | None = None
        self._plain_steps = 0  # steps without activation checkpointing in a row
        self.warmed_at = 0.0  # when warm-up (loading, the first steps) ended (Unix s)
        # recent silences (no step, batch or save for PAUSE_S or more) a step ended (s)
        self.pauses: deque[float] = deque(maxlen=8)
        self.last_progress = 0.0  # newest step or progress event time
        self.changed = 0  # a stamp that changes with every step or event (not samples)
        # the summaries made since the last change: (``changed`` then, since -> summary)
        self._summaries: tuple[int, dict[float, StepSummary | None]] = (0, {})
        self.event_stamp = 0  # one that changes with every event (not steps or samples)
        self._walls: deque[float] = deque(maxlen=MEDIAN_STEPS)  # recent step walls
        self._median = 0.0  # their median (0: none yet)
        self._stepping_power: deque[float] = deque(maxlen=120)  # watts while steps ran

    def add(self, records: Iterable[Record]) -> None:
        for r in records:
            self.add_one(r)

    def _note_slowdown(self, r: Sample) -> None:
        if int(r.values["gpu_clock_event_reasons"]) & SLOWDOWN_BITS:
            self.slowed_at = r.t

    def add_one(self, r: Record) -> None:
        if type(r) is Sample:  # (most records)
            source, values = r.source, r.values
            group = (source, r.gpu)
            window = self.samples.get(group)
            if window is None:
                if len(self.samples) >= MAX_GROUPS:
                    return  # (a hostile log's thousands of sources or GPUs: memory stays bounded)
                window = self.samples[group] = deque(maxlen=MAX_SAMPLES)
                self._seq[group] = 0
            window.append(r)
            if self.allocated_at_start is None and self.warmed_at and source == "allocator":
                self.allocated_at_start = values.get("allocator_allocated_bytes")
            seq = self._seq[group] = self._seq[group] + 1
            tracked = self._tracked.get(source)
            if tracked:
                self._track(group, seq, r, tracked)
            if source == "nvml":  # (the readings below are NVML's alone)
                if values.get("gpu_clock_event_reasons", 0) >= LOWEST_SLOWDOWN:  # (rare)
                    self._note_slowdown(r)
                power = values.get("gpu_power_watts")
                if power is not None and self.steps and r.t - self.steps[-1].t <= max(
                        5.0, 2 * self._median):  # (0 before the warm-up ends)
                    self._stepping_power.append(power)
        elif isinstance(r, Step):
            self._step(r)
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

    def _step(self, s: Step) -> None:
        self.changed = next(_CHANGES)
        self.steps.append(s)
        self._waits.append(StepWait.of(s))
        self.steps_done = s.step
        self.steps_seen += 1
        if self.cycle_steps > 1 and s.step - self._syncs[-1] > CYCLE_LAPSE * self.cycle_steps:
            self.cycle_steps = 1  # the rhythm lapsed
            self._syncs.clear()
        if self.last_progress and s.t - self.last_progress >= PAUSE_S:
            self.pauses.append(s.t - self.last_progress)  # a silence that ended on its own
        if s.samples and (s.samples in self.tokens_at or len(self.tokens_at) < BATCH_SIZES):
            self.tokens_at[s.samples] = s.tokens
        if s.t > self.last_progress:
            self.last_progress = s.t
        if self.first_step_start is None:
            self.first_step_start = s.t - s.wall_s
        if not _checkpointed(s):
            self._plain_steps += 1
            if self._plain_steps >= CKPT_STRETCH_STEPS:
                self.act_ckpt_on_at = None
        else:
            if self._plain_steps >= CKPT_STRETCH_STEPS:
                self.act_ckpt_on_at = s.t - s.wall_s
            self._plain_steps = 0
        if self.steps_seen <= WARMUP_STEPS:
            self.warmed_at = s.t
            return
        median = self._median if len(self._walls) >= 5 else 0.0
        self._walls.append(s.wall_s)
        ordered = sorted(self._walls)
        self._median = ordered[len(ordered) // 2]  # (the upper median of an even count)
        work = s.tokens or s.samples
        long = median and s.wall_s > INTERRUPTION_MULTIPLE * median
        if long and self._syncing(s, median):
            self._note_sync(s.step)
        elif long and not self._long_batch(s.wall_s, work):
            self.interruptions.append((s.t - s.wall_s, s.t))  # an eval, a save, a recompile
            self.interrupting.add(s)
            excess = max(s.wall_s - median - s.checkpoint_s, 0.0)
            kind = self._interruption_kind(s, excess)
            self.interrupted_by.add(kind, s, excess)
            if kind in ("eval", "gpu"):  # (an eval without progress records: GPU work)
                self._evaluating.append([s.t - s.wall_s, s.t])
            return
        if work:
            self._work_walls.append((work, s.wall_s))
        self.window.add(s)

    def _long_batch(self, wall: float, work: int) -> bool:
        """Whether a long step is long in proportion to its tokens (or samples), at the
        median step's cost per token (the newest ``MEDIAN_STEPS``) or the heaviest
        quarter's (``WORK_STEPS``): a long batch (variable-length sequences grouped by
        length), not an interruption."""
        recent = list(itertools.islice(reversed(self._work_walls), MEDIAN_STEPS))
        if not work or len(recent) < 5:
            return False
        per_work = [w / n for n, w in recent]
        if wall / work <= INTERRUPTION_MULTIPLE * sorted(per_work)[len(per_work) // 2]:
            return True
        works = sorted(n for n, _ in self._work_walls)
        heavy = works[3 * len(works) // 4]
        costs = sorted(w / n for n, w in self._work_walls if n >= heavy)
        return wall / work <= INTERRUPTION_MULTIPLE * costs[len(costs) // 2]

    def _syncing(self, s: Step, median: float) -> bool:
        """Whether a long step is the job's gradient sync, part of its rhythm: it carries
        ``SYNC_BYTES_MULTIPLE`` times the bytes of the steps around it (the micro-steps of
        gradient accumulation carry none) and spent most of its extra time in them. A
        peer's save or eval makes the next collective long too, but carries no more."""
        if s.checkpoint_s or s.collective_bytes <= 0:
            return False
        typical = mean_step(self.window.sums_since(s.t - s.wall_s - TYPICAL_S))
        if typical is not None and s.collective_bytes <= (
                SYNC_BYTES_MULTIPLE * typical.collective_bytes):
            return False
        return s.collective_s >= 0.5 * (s.wall_s - median)

    def _note_sync(self, step: int) -> None:
        """A gradient sync at ``step``: the job's cycle is the (lower) median gap between
        its recent syncs (steps; from the third on)."""
        syncs = self._syncs
        syncs.append(step)
        gaps = sorted(b - a for a, b in itertools.pairwise(syncs))
        self.cycle_steps = min(max(gaps[(len(gaps) - 1) // 2], 1), MAX_CYCLE_STEPS) \
            if len(gaps) >= 2 else 1

    def _interruption_kind(self, s: Step, excess: float) -> str:
        """What an interruption was (``Interruptions.KINDS``): eval batches seen in it, a
        wait in collectives for most of its excess (another rank worked alone), the GPU
        busy through it (GPU work outside the loop's steps), else a stall."""
        start = s.t - s.wall_s
        if self._eval_at >= start:
            return "eval"
        typical = mean_step(self.window.sums_since(start - TYPICAL_S))
        waited = s.collective_s - (typical.collective_s if typical else 0.0)
        if excess > 0 and waited >= 0.5 * excess:
            return "waited"
        busy = self._gpu_busy(start, s.t)
        return "gpu" if busy is not None and busy >= GPU_BUSY_RATIO else "stall"

    def _gpu_busy(self, start: float, end: float) -> float | None:
        """Mean NVML utilisation of the rank's GPUs over [start, end] (newest samples
        first, back to ``start``); None without readings."""
        busy: list[float] = []
        for (source, _), samples in self.samples.items():
            if source != "nvml":
                continue
            for sample in reversed(samples):
                if sample.t < start:
                    break
                v = sample.values.get("gpu_utilization_ratio")
                if v is not None and sample.t <= end:
                    busy.append(v)
        return mean_of(busy)

    def _event(self, e: Event) -> None:
        self.changed = self.event_stamp = next(_CHANGES)
        self.events.append(e)
        if e.name in PROGRESS_EVENTS:
            self.last_progress = max(self.last_progress, e.t)
            batches = e.data.get("eval_batches")
            if isinstance(batches, (int, float)) and batches > 0:
                self._eval_at = e.t
                spans = self._evaluating
                if spans and e.t - spans[-1][1] <= EVAL_OOM_S:
                    spans[-1][1] = max(spans[-1][1], e.t)
                else:
                    spans.append([e.t, e.t])
        if e.name == "oom":
            self.oom_times.extend([e.t] * min(self._ooms.add(e), MAX_EVENTS))
            if "type" in e.data:
                self.oom_left_step_at = e.t
        elif e.name == "batch_size_changed":
            self.batch.change(int(e.data["from"]), int(e.data["to"]), e.t, self.steps_seen)
        elif e.name == "checkpoint_save":
            self.saves.add(e, self.steps_seen)
        elif e.name == "topology":
            self.topology = e.data
        elif e.name == "total_steps":
            self.planned_steps = int(e.data["steps"])

    # -- queries ---------------------------------------------------------------------

    def summarise(self, since: float) -> StepSummary | None:
        """The mean step over steps that ended at or after ``since``: warm-up left out,
        and interruptions too while they are rare (under ``RHYTHM_SHARE`` of the steps);
        more often than that they are the job's rhythm (a loader that stalls every few
        steps) and count. (Rules whose windows match ask alike: each window's is made
        once until the next step or event.)"""
        stamp, made = self._summaries
        if stamp != self.changed or len(made) >= SUMMARIES_KEPT:
            made = {}
            self._summaries = (self.changed, made)
        elif since in made:
            return made[since]
        typical = self.window.sums_since(since)
        if self.rhythmic(since):
            typical = tuple(map(operator.add, typical, self.interrupting.sums_since(since)))
        summary = made[since] = mean_step(typical)
        return summary

    def rhythmic(self, since: float) -> bool:
        """Whether the interruptions among the steps that ended at or after ``since``
        are the job's rhythm (over ``RHYTHM_SHARE`` of those steps: a loader that stalls
        every few steps), counted with the steps; else they are rare, and left out."""
        if not self.interruptions or self.interruptions[-1][1] < since:
            return False  # (the common case: no interruption in the window)
        typical = self.window.sums_since(since)[0]
        interrupting = self.interrupting.sums_since(since)[0]
        return interrupting > RHYTHM_SHARE * (typical + interrupting)

    def since_holding(self, steps: int) -> float | None:
        """The latest time from which ``steps`` typical steps ended (Unix s); None before
        that many."""
        return self.window.since_holding(steps)

    def median_step_s(self) -> float | None:
        """The running median of recent steps (seconds); None before the warm-up ends."""
        return self._median if self._walls else None

    @property
    def host(self) -> str:
        return str(self.meta.host) if self.meta else "?"

    @property
    def world_size(self) -> int:
        return self.meta.world_size if self.meta else 1

    def step_waits(self, since: float) -> dict[int, StepWait]:
        """Per-step waits by step number of the steps that ended at or after ``since``:
        warm-up left out, and interruptions as ``summarise`` leaves them out (an eval
        every rank ran made one step's wall a minute, and the collectives' share of the
        window's steps a fraction of theirs)."""
        skipped: set[float] = set()  # (the interruptions' end times: their steps')
        if (self.interruptions and self.interruptions[-1][1] >= since
                and not self.rhythmic(since)):  # (rare: left out)
            skipped = {end for _, end in self.interruptions}
        out: dict[int, StepWait] = {}
        for s, wait in zip(reversed(self.steps), reversed(self._waits), strict=True):
            if s.t < since:
                break
            if s.step > WARMUP_STEPS and s.t not in skipped:
                out[s.step] = wait
        return out

    def timed_collectives(self, since: float) -> tuple[float, float]:
        """Bus bytes and device seconds of the blocking collectives timed in the steps
        that ended at or after ``since``."""
        nbytes = seconds = 0.0
        for s in reversed(self.steps):
            if s.t < since:
                break
            nbytes += s.collective_timed_bytes
            seconds += s.collective_timed_s
        return nbytes, seconds

    def collective_timing(self) -> dict[str, Any]:
        """The newest ``collective_timing`` event's data: what was and was not timed."""
        event = next((e for e in reversed(self.events) if e.name == "collective_timing"), None)
        return event.data if event else {}

    def clock_event_reasons(self) -> list[int]:
        """The clock-event reason bits of each GPU's newest NVML sample."""
        return [int(s.values.get("gpu_clock_event_reasons", 0)) for s in self.gpu_samples()]

    def working_power_w(self) -> float | None:
        """The GPU's median power draw while the job was stepping (watts), if sampled."""
        return statistics.median(self._stepping_power) if self._stepping_power else None

    def interrupted(self, t: float) -> bool:
        """Whether time ``t`` fell inside warm-up (before ``warmed_at``) or a recent
        interruption (an eval, a save...)."""
        if t < self.warmed_at:
            return True
        if not self.interruptions or t > self.interruptions[-1][1]:
            return False
        return any(a <= t <= b for a, b in reversed(self.interruptions))

    def ooms_since(self, since: float) -> int:
        return sum(1 for t in self.oom_times if t >= since)

    def training_oom_times(self, since: float) -> list[float]:
        """When the OOMs since ``since`` outside evaluations came (Unix s): none within
        ``EVAL_OOM_S`` of an eval's work (an eval batch too big is the eval's to cut, not
        training's)."""
        return [t for t in self.oom_times if t >= since and not any(
            first - EVAL_OOM_S <= t <= last + EVAL_OOM_S for first, last in self._evaluating)]

    def samples_since(self, source: str, since: float) -> list[Sample]:
        """Every sample of ``source`` (all GPUs) at or after ``since``, oldest first.
        For per-sample judgements over short spans (since the last step); a window's
        figures come from ``figure``."""
        parts: list[list[Sample]] = []
        for (src, _), window in self.samples.items():
            if src == source:
                part = list(itertools.takewhile(lambda s: s.t >= since, reversed(window)))
                part.reverse()
                parts.append(part)
        if len(parts) == 1:
            return parts[0]
        return sorted(itertools.chain.from_iterable(parts), key=lambda s: s.t)

    def figure(self, source: str, key: str, since: float) -> Figure | None:
        """The readings of ``key`` from ``source`` (all GPUs) at or after ``since`` as one
        figure (None if there are none), in O(log n) of the window."""
        parts = []
        for group, series in self._key_series(source, key):
            n, s = series.count_sum(since)
            extrema, newest = series.extrema(since), series.newest()
            if n and extrema is not None and newest is not None:
                parts.append((group[1], Figure(n, s, *extrema, newest[1]), newest[0]))
        return combined(parts)

    def uninterrupted(self, source: str, key: str, since: float
                      ) -> tuple[int, float, tuple[int, ...]]:
        """Count, sum and GPUs of the readings of ``key`` at or after ``since`` taken
        outside recent interruptions (as ``interrupted`` tells them apart) and after
        warm-up (loading, the first steps: ``warmed_at``)."""
        cuts = self._interrupted_spans(since)
        if since < self.warmed_at:  # (a reading at warmed_at itself is after warm-up)
            cuts = [(since, math.nextafter(self.warmed_at, -math.inf)), *cuts]
        count, total, gpus = 0, 0.0, set()
        for group, series in self._key_series(source, key):
            n, s = series.count_sum(since)
            for a, b in cuts:
                dn, ds = series.count_sum(a, b)
                n, s = n - dn, s - ds
            if n > 0:
                count, total = count + n, total + s
                if group[1] is not None:
                    gpus.add(group[1])
        return count, total, tuple(sorted(gpus))

    def counter_rise(self, source: str, key: str, since: float) -> float:
        """How much a cumulative counter rose since the last reading before ``since``."""
        return combined_rise(series.rise(since) for _, series in self._key_series(source, key))

    def _key_series(self, source: str, key: str) -> list[tuple[tuple[str, int | None], Series]]:
        """The series of ``key`` on each GPU of ``source`` (window order), trimmed to the
        window; tracked from now on if it was not."""
        out = self._key_lists.get((source, key))
        if out is None:
            tracked = self._tracked.get(source, ())
            if key not in tracked:
                self._tracked[source] = (*tracked, key)
                for group, window in self.samples.items():
                    if group[0] == source:
                        made = self._series.setdefault(group, {})[key] = Series()
                        first = self._seq[group] - len(window) + 1
                        for seq, sample in enumerate(window, first):
                            value = sample.values.get(key)
                            if value is not None:
                                made.append(seq, sample.t, value)
            out = self._key_lists[(source, key)] = [
                (group, series) for group, by_key in self._series.items()
                if group[0] == source and (series := by_key.get(key)) is not None]
        for group, series in out:
            series.trim(self._seq[group] - MAX_SAMPLES + 1)
        return out

    def _track(self, group: tuple[str, int | None], seq: int, r: Sample,
               keys: tuple[str, ...]) -> None:
        by_key = self._series.get(group)
        if by_key is None:
            by_key = self._series[group] = {k: Series() for k in keys}
            self._key_lists.clear()
        values, t = r.values, r.t
        trim = seq > MAX_SAMPLES and not seq % TRIM_EVERY  # (questions trim first: this
        for key in keys:  # only bounds memory, to MAX_SAMPLES + TRIM_EVERY readings)
            value = values.get(key)
            if value is not None:
                series = by_key.get(key)
                if series is None:
                    series = by_key[key] = Series()
                    self._key_lists.clear()
                series.append(seq, t, value)
                if trim:
                    series.trim(seq - MAX_SAMPLES + 1)

    def _interrupted_spans(self, since: float) -> list[tuple[float, float]]:
        """The union of recent interruptions that reach ``since`` or later, as disjoint
        closed spans clipped to start no earlier than ``since``."""
        spans: list[tuple[float, float]] = []
        for a, b in sorted(self.interruptions):
            if b < since:
                continue
            a = max(a, since)
            if spans and a <= spans[-1][1]:
                spans[-1] = (spans[-1][0], max(spans[-1][1], b))
            else:
                spans.append((a, b))
        return spans

    def latest(self, source: str, gpu: int | None = None) -> Sample | None:
        window = self.samples.get((source, gpu))
        return window[-1] if window else None

    def saves_wall_s(self, now: float) -> float:
        """Wall time since training (or the first save, if earlier) began, up to ``now``
        (Unix s; 0 before any blocking save)."""
        first = self.saves.first_start
        return 0.0 if first is None else now - min(first, self.first_step_start or first)

    def save_share(self, now: float) -> float:
        """The run-long share of time blocking saves cost the loop: their seconds over
        the wall time since training (or the first save) began, counted in whole cycles
        while they recur (``cycle_end``: up to now it fell a cycle in n before each save
        and rose after, and a finding at its threshold came and went with every save);
        a seed save, written before the first cycle was half over (right after the
        first step), is left out with the time up to its end (it closes no cycle: it
        counted one twice)."""
        saves = self.saves
        first = saves.first_start
        if first is None:
            return 0.0
        interval = saves.interval_s()
        start = min(first, self.first_step_start or first)
        blocking = saves.blocking_s
        if interval and first - start < SEED_SHARE * interval:
            blocking, start = blocking - saves.first_s, saves.first_end
        wall = cycle_end(now, saves.last_end, saves.longest_gap_s) - start
        return min(blocking / wall, 1.0) if wall > 0 else 0.0

    def interruption_share(self, now: float, kinds: Iterable[str] | None = None) -> float:
        """The run-long share of time (up to ``now``, Unix s) interruptions took beyond a
        typical step, blocking saves aside: evals, recompiles, epoch restarts; only those
        of ``kinds`` (``Interruptions.KINDS``) if given, and only kinds seen
        ``RECURRING`` times (one recompile is an event, not a share of every step to
        come). 0 while they are the job's rhythm (over ``RHYTHM_SHARE`` of the steps: the
        windows' means hold them already)."""
        start = self.first_step_start
        by = self.interrupted_by
        if (start is None or now <= start
                or sum(by.count.values()) > RHYTHM_SHARE * self.steps_seen):
            return 0.0
        seconds = math.fsum(by.seconds[k] for k in (by.KINDS if kinds is None else kinds)
                            if by.count[k] >= RECURRING)
        return min(seconds / (cycle_end(now, by.last_end, by.longest_gap_s) - start), 1.0)

    @property
    def last_step_t(self) -> float:
        """When its newest step ended (Unix s; 0 before any)."""
        return self.steps[-1].t if self.steps else 0.0

    @property
    def died_of_oom(self) -> bool:
        """Whether the log ended (``end``) with an OOM that left its newest step and no
        step after it: the process died of it (while it lives, a job may catch one)."""
        return self.ended and self.oom_left_step_at > self.last_step_t

    def ending(self) -> Ending:
        """How the log ended (see ``Ending``); its step figures are 0 before any step."""
        if not self.steps:
            return Ending(self.died_of_oom, 0, 0, False, 0.0, self.world_size)
        newest = list(itertools.islice(reversed(self.steps), ENDING_STEPS))
        samples = sorted(s.samples for s in newest)[len(newest) // 2]
        tokens = sorted(s.tokens for s in newest)[len(newest) // 2]
        checkpointed = sum(1 for s in newest if _checkpointed(s))
        return Ending(self.died_of_oom, samples, tokens, 2 * checkpointed > len(newest),
                      newest[0].t - (self.first_step_start or newest[0].t), self.world_size)

    def end(self) -> None:
        """The log ends here. Dying of an OOM is news its detectors judge (a change)."""
        self.ended = True
        if self.died_of_oom:
            self.changed = self.event_stamp = next(_CHANGES)

    def open_save(self) -> tuple[float, float] | None:
        """(when, seconds open) of a save its newest agent sample says is being written
        (Unix s, s); None if that sample shows none."""
        agent = self.latest("agent")
        seconds = agent.values.get(OPEN_SAVE_KEY, 0.0) if agent is not None else 0.0
        return (agent.t, seconds) if agent is not None and seconds > 0 else None

    def sample_interval_s(self, source: str) -> float | None:
        """How often ``source`` is sampled (seconds): the mean gap over the newest
        ``INTERVAL_SAMPLES`` of its first GPU's (or its only) series; None with fewer
        than two."""
        window = next((w for (src, _), w in self.samples.items() if src == source), None)
        if window is None or len(window) < 2:
            return None
        k = min(len(window), INTERVAL_SAMPLES)
        return (window[-1].t - window[-k].t) / (k - 1)

    def gpu_samples(self) -> list[Sample]:
        """The newest NVML sample of each GPU, by GPU index."""
        latest = [w[-1] for (src, _), w in self.samples.items() if src == "nvml" and w]
        return sorted(latest, key=lambda s: s.gpu or 0)


INTERVAL_SAMPLES = 10  # a sampling interval is their mean gap over this many
OVERDUE = 1.5  # a recurring cost is overdue this many of its longest gaps after the last
SEED_SHARE = 0.5  # a first save this early in its cycle (of the mean interval) is a seed


def cycle_end(now: float, last_end: float, longest_s: float) -> float:
    """Up to when (Unix s) a recurring cost's run-long share counts the run: while it
    recurs (its newest occurrence ended at ``last_end``, and the next is not
    ``OVERDUE`` of the longest gap between two, ``longest_s``: a mean would lag gaps that
    grow and sink under a burst of two; 0 before two: no rhythm yet), that end, so
    the share counts whole cycles (read up to ``now`` it fell a cycle in n before each
    occurrence and rose after, and a finding at its threshold came and went with every
    save or eval); else ``now``."""
    recurring = 0.0 <= now - last_end < OVERDUE * longest_s
    return last_end if recurring else now


class Interruptions:
    """Run-long totals of the steps left out of the windows as interruptions, by what
    they were (``KINDS``): seconds beyond a typical step (blocking saves aside) and
    counts; when the first and the newest judged one (evals and stalls) ended; the
    stalls' own steps (their parts, for what grew in them) and how many held a save."""

    # eval: eval batches ran in it; waited: mostly a wait in collectives (another rank
    # worked alone); gpu: the GPU busy through it (a rollout, generation); stall: the rest
    KINDS = ("eval", "waited", "gpu", "stall")
    JUDGED = ("eval", "stall")

    __slots__ = ("count", "first_t", "last_end", "last_t", "longest_gap_s", "saving",
                 "seconds", "stalled")

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(self.KINDS, 0.0)
        self.count = dict.fromkeys(self.KINDS, 0)
        self.saving = 0  # stalls that held a blocking save
        self.first_t = self.last_t = 0.0
        self.last_end = 0.0  # when the newest of any kind ended (Unix s)
        self.longest_gap_s = 0.0  # the longest from one's end to the next's (s)
        self.stalled = StepWindow(MAX_EVENTS)

    def add(self, kind: str, s: Step, excess: float) -> None:
        self.seconds[kind] += excess
        self.count[kind] += 1
        if self.last_end:
            self.longest_gap_s = max(self.longest_gap_s, s.t - self.last_end)
        self.last_end = s.t
        if kind in self.JUDGED:
            self.first_t = self.first_t or s.t
            self.last_t = s.t
        if kind == "stall":
            self.stalled.add(s)
            if s.checkpoint_s > 0:
                self.saving += 1

    @property
    def mostly_evals(self) -> bool:
        """Whether evaluations took at least as long as stalls: GPU work, which a faster
        card runs faster as it runs training."""
        return self.seconds["eval"] >= self.seconds["stall"]


class TrainingBatch:
    """The training loader's batch size over the run, from ``batch_size_changed`` events.

    A cut is a drop below the largest size that trained at least one step, which never
    rises again: a batch-size finder that grows, hits its limit and settles lower is
    one cut; a size that held no step (an eval loader's batches between two steps, in
    older logs) is no peak, and sizes that go up and down again are no cut at all.
    """

    __slots__ = ("_since", "current", "cut_at", "flipped", "grew", "peak")

    def __init__(self) -> None:
        self.peak = 0
        self.current = 0
        self.cut_at: float | None = None  # when the size first fell below its peak
        self.grew: deque[float] = deque(maxlen=BATCH_SIZES)  # when it rose (a search)
        self.flipped = False  # it rose again after a cut
        self._since = 0  # steps seen when the current size began

    def change(self, before: int, after: int, t: float, steps: int) -> None:
        """The size went from ``before`` to ``after`` at ``t``, ``steps`` steps in."""
        if steps > self._since or not self.current:
            self.peak = max(self.peak, before)  # ``before`` trained at least one step
        if after > before:
            self.grew.append(t)
            if self.cut_at is not None:
                self.flipped = True
        self.current, self._since = after, steps
        if after < self.peak and self.cut_at is None:
            self.cut_at = t

    @property
    def cut(self) -> tuple[int, int] | None:
        """(largest size, size now) while the training batch stays cut, else None."""
        if self.flipped or self.cut_at is None or self.current >= self.peak:
            return None
        return self.peak, self.current


class SaveTotals:
    """Run-long checkpoint totals from ``checkpoint_save`` events (seconds, bytes).

    A save the event marks ``blocking: false`` (written by a background thread, the
    background part of ``async_save``) is counted but costs the loop no time.
    """

    __slots__ = ("_steps_at_last", "async_bytes", "async_saves", "blocking_bytes",
                 "blocking_s", "checkpoints", "first_end", "first_s", "first_start",
                 "last_end", "last_start", "longest_gap_s", "saves")

    def __init__(self) -> None:
        self.saves = 0  # blocking saves
        self.checkpoints = 0  # runs of blocking saves with no step between them
        self.async_saves = 0
        self.async_bytes = 0.0  # what the background saves wrote
        self.blocking_s = 0.0
        self.blocking_bytes = 0.0
        self.first_start: float | None = None
        self.last_start: float | None = None  # of the newest checkpoint
        self.last_end = 0.0  # when the newest blocking save ended
        self.first_s = self.first_end = 0.0  # the first checkpoint's seconds, and its end
        self.longest_gap_s = 0.0  # the longest from one checkpoint's start to the next's
        self._steps_at_last = -1

    def add(self, e: Event, steps: int) -> None:
        """Take a ``checkpoint_save`` event, ``steps`` steps into the run: saves with no
        step between them (a model file, then the optimizer's) are one checkpoint."""
        seconds = float(e.data.get("seconds", 0.0))
        if not e.data.get("blocking", True):
            self.async_saves += 1
            self.async_bytes += float(e.data.get("bytes", 0))
            return
        self.saves += 1
        self.blocking_s += seconds
        self.blocking_bytes += float(e.data.get("bytes", 0))
        start = e.t - seconds
        self.last_end = max(self.last_end, e.t)
        if self.first_start is None or start < self.first_start:
            self.first_start = start
        if steps != self._steps_at_last:
            self.checkpoints += 1
            if self.last_start is not None:
                self.longest_gap_s = max(self.longest_gap_s, start - self.last_start)
            self.last_start = start
            self._steps_at_last = steps
        if self.checkpoints == 1:
            self.first_s += seconds
            self.first_end = max(self.first_end, e.t)

    def interval_s(self) -> float | None:
        """The mean time from one checkpoint's start to the next's (s); None before two."""
        if self.checkpoints < 2 or self.first_start is None or self.last_start is None:
            return None
        return (self.last_start - self.first_start) / (self.checkpoints - 1)
