"""Turn the hot path's raw marks into Step and Event records (agent thread only).

Steps are contiguous: a step's wall time runs from the end of the previous
step (or the first mark ever) to its own end, so the steps of a run add up to
its training time and every gap (logging, evaluation) is accounted for.
Steps end explicitly (``with monitor.step()``) or, when the loop never marks
them, at the first optimizer's post-step hook. A step's number is its
producer's ordinal: when the ring lost marks, the step they cut into is not
emitted and the numbers skip the lost steps (never renumbered).

Marks carry what the training code gave: a value that is not a finite count
is ignored (and counted in ``bad_values``), never raised on.

them, at the first optimizer's post-step hook.

Between steps the job may still be working (an eval loop, a long step of many
micro-batches): loader and eval batches seen more than ``PROGRESS_EVERY_S`` after
the last step or progress record make a ``progress`` event, at most one per
``PROGRESS_EVERY_S``, and eval batches not told yet one as their step ends (an eval
shorter than that is an eval too, not a stall). The training batch size is the last
batch fetched before a step ends (an eval loader's batches come earlier), reported
when it changes and the new size repeats.

Device timings (collective waits on the GPU timeline) belong to the step they were
recorded in, which the GPU finishes later: such a step is held back until they are
read (at most ``HOLD_STEPS`` later steps), so ranks compare the same step's waits.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import Callable, Iterable
from typing import Any

from gpuwatch.config import MAX_COUNT
from gpuwatch.instrument import ring
from gpuwatch.instrument.device import EVENTS, EventPool, PendingTimings
from gpuwatch.instrument.ring import Loader
from gpuwatch.instrument.sizes import saved_bytes
from gpuwatch.records import Event, Record, Step
from gpuwatch.vocabulary import COMPUTE_PHASES, MIN_BANDWIDTH_BYTES, Phase

_NPHASES = max(Phase) + 1
PROGRESS_EVERY_S = 1.0
HOLD_STEPS = 64  # a step waits for its device timings behind at most this many steps


class StepAssembler:
    """Folds marks into records. ``clock_offset`` turns perf_counter seconds into Unix time."""

    def __init__(self, rank: int, clock_offset: float, events: EventPool = EVENTS) -> None:
        self.rank = rank
        self.steps = 0  # the number of the last step ended (emitted or lost)
        self.bad_values = 0  # marks whose value was not a usable count
        self.device = PendingTimings(events)
        self._offset = clock_offset
        self._explicit = False
        self._plan_base: int | None = None  # steps ended before the loop that planned
        self._prev_end: float | None = None
        self._depth = [0] * _NPHASES
        self._opened = [0.0] * _NPHASES
        self._acc = [0.0] * _NPHASES
        self._timed = [False] * _NPHASES  # phases an interval of closed in this step
        self._samples = 0
        self._tokens = 0
        self._ckpt_bytes = 0
        self._ckpt_targets: list[int] = []  # bytes of each file the save wrote
        self._act_ckpt_calls = 0
        self._collective_bytes = 0
        self._p2p_bytes = 0
        self._timed_s = 0.0
        self._timed_bytes = 0
        self._held: deque[Step] = deque()  # finished steps waiting for the device
        self._batch: int | None = None
        self._batch_candidate: int | None = None
        self._ordinals = {ring.STEP_END: 0, ring.STEP_BOUNDARY: 0}  # last seen per producer
        self._torn = False  # marks of the step being assembled were lost
        self._last_batch = 0  # size of the newest batch fetched in this step (0: none)
        self._progress_at = 0.0  # perf_counter time of the last step end or progress event
        self._loader_batches = 0  # batches fetched since then
        self._eval_batches = 0  # eval batches done since then
        self._hooked_evals = False  # some were a framework eval hook's (this step)
        self._by_loader: dict[Loader, list[float]] = {}  # loader -> [samples, data s] this step
        self._tokens_by_loader: dict[Loader, int] = {}  # loader -> token ids this step
        self._fetches: list[tuple[Loader, float, float]] = []  # (loader, wait start, arrival)
        self._loader: Loader = ()  # the loader of the step's newest batch: one that feeds steps
        self._fed_by: set[Loader] | None = None  # the loaders the last step counted
        # loaders that fed no step yet, by their batches in this step (an eval's, or a
        # training loader's made anew): told apart as the step ends
        self._unsure: dict[Loader, int] = {}
        self._data_closed_s = 0.0  # the newest data wait closed (for the batch that ends it)
        # collectives waited in while a data wait was open (a framework's between two
        # micro-batches): their time, not the loader's
        self._in_data = 0.0
        self._loose = 0.0  # collectives waited in outside any marked compute (this step)
        self._waiting_at: float | None = None  # a wait timed elsewhere in progress since
        self._handlers: dict[int, Callable[[int, float, Any, list[Record]], None]] = {
            ring.STEP_END: self._on_step_end, ring.STEP_BOUNDARY: self._on_step_end,
            ring.STEP_BEGIN: self._on_step_begin, ring.LOST: self._on_lost,
            ring.SAMPLES: self._on_samples, ring.EVAL_BATCH: self._on_eval_batch,
            ring.LOADER_BATCH: self._on_loader_batch, ring.WAITING: self._on_waiting,
            ring.LOADER_BATCH_UNTIMED: self._on_loader_batch,
            ring.LOADER_TOKENS: self._on_loader_tokens,
            ring.BACKGROUND_SAVE: self._on_background_save, ring.TOKENS: self._on_tokens,
            ring.CHECKPOINT_TARGET: self._on_checkpoint_target,
            ring.PHASE_SECONDS: self._on_phase_seconds,
            ring.ADAPTER_SECONDS: self._on_adapter_seconds, ring.LOOP_END: self._on_loop_end,
            ring.TOTAL_STEPS: self._on_total_steps, ring.DEVICE_TIMING: self._on_device_timing,
            ring.COLLECTIVE_DURATION: self._on_collective_duration,
            ring.COLLECTIVE_BYTES: self._on_collective_bytes, ring.P2P_BYTES: self._on_p2p_bytes,
            ring.ACT_CKPT: self._on_act_ckpt,
            ring.ERROR: self._on_error}  # mark code -> what it does (phases aside)

    def feed(self, marks: Iterable[ring.Mark], out: list[Record], final: bool = False) -> None:
        """Consume marks in order, appending finished records to ``out``. A step with
        device timings the GPU has not finished is held back until it has (``final``:
        release every held step now)."""
        self._read_device()
        for code, t, value in marks:
            if self._prev_end is None:
                self._prev_end = self._progress_at = t  # the first mark opens the first step
            try:
                self._mark(code, t, value, out)
            except Exception:  # a value the training code got wrong (of a type of its
                self.bad_values += 1  # own whose arithmetic may raise anything)
        self._read_device()
        self._release(out, final)

    def _read_device(self) -> None:
        """Add finished device intervals to the step they were recorded in: a held one,
        else the one being assembled."""
        held = {s.step: s for s in self._held} if self._held else {}
        for interval in self.device.ready():
            step = held.get(interval.step)
            if step is None:
                self._acc[interval.phase] += interval.seconds
                if interval.nbytes >= MIN_BANDWIDTH_BYTES:
                    self._timed_s += interval.seconds
                    self._timed_bytes += interval.nbytes
                continue
            if interval.phase == ring.COLLECTIVE:
                step.collective_s += interval.seconds
            if interval.nbytes >= MIN_BANDWIDTH_BYTES:
                step.collective_timed_s += interval.seconds
                step.collective_timed_bytes += interval.nbytes

    def _waiting(self, step: int) -> bool:
        oldest = self.device.oldest_step()
        return oldest is not None and oldest <= step

    def _release(self, out: list[Record], final: bool) -> None:
        held = self._held
        while held and (final or len(held) > HOLD_STEPS or not self._waiting(held[0].step)):
            out.append(held.popleft())

    def _mark(self, code: int, t: float, value: Any, out: list[Record]) -> None:
        if 0 < code < _NPHASES:
            self._open(code, t)
        elif -_NPHASES < code < 0:
            self._close(-code, t, out)
        else:
            handle = self._handlers.get(code)
            if handle is not None:
                handle(code, t, value, out)

    def _on_step_end(self, code: int, t: float, value: Any, out: list[Record]) -> None:
        ended = self._ended(code, value)
        if code == ring.STEP_END or not self._explicit:
            self._finish(t, ended, out)

    def _on_step_begin(self, code: int, t: float, value: Any, out: list[Record]) -> None:
        self._explicit = True

    def _on_loop_end(self, code: int, t: float, value: Any, out: list[Record]) -> None:
        self._explicit = False  # (implicit boundaries end steps again after a framework's fit)
        self._plan_base = None

    def _on_lost(self, code: int, t: float, value: Any, out: list[Record]) -> None:
        self._lost()

    def _on_samples(self, code: int, t: float, value: Any, out: list[Record]) -> None:
        n = self._count(value)
        self._samples += n
        self._fetched(n, t, out)

    def _fetched(self, n: int, t: float, out: list[Record]) -> None:
        """A batch of ``n`` samples arrived (progress between steps, a batch size seen)."""
        if n:
            self._last_batch = n
        self._loader_batches += 1
        self._progress(t, out)

    def _on_loader_batch(self, code: int, t: float, value: Any, out: list[Record]) -> None:
        """A DataLoader batch: its samples and the wait that fetched it (the data wait
        just closed; none where the loop times its own: ``LOADER_BATCH_UNTIMED``), by
        loader. A step counts the loaders that feed training (``_feeding``); an eval
        loader iterated between two steps counts for neither."""
        *loader, n = value
        key = tuple(loader)
        n = self._count(n)
        waited = self._data_closed_s if code == ring.LOADER_BATCH else 0.0
        spent = self._by_loader.setdefault(key, [0.0, 0.0])
        spent[0] += n
        spent[1] += waited
        self._fetches.append((key, t - waited, t))
        if code == ring.LOADER_BATCH:
            self._data_closed_s = 0.0
        self._loader = key
        if self._fed_by is not None and key not in self._fed_by:  # fed no step yet: an
            # eval loop's, or a training loader made anew (each epoch, its micro-batches
            # too): the step's end tells (``_finish``)
            self._unsure[key] = self._unsure.get(key, 0) + 1
        self._fetched(n, t, out)

    def _on_loader_tokens(self, code: int, t: float, value: Any, out: list[Record]) -> None:
        """A DataLoader batch's token ids (before its ``LOADER_BATCH``), by loader: the
        step's tokens where its loop counts none (``_finish``)."""
        *loader, n = value
        key = tuple(loader)
        self._tokens_by_loader[key] = self._tokens_by_loader.get(key, 0) + self._count(n)

    def _on_waiting(self, code: int, t: float, value: Any, out: list[Record]) -> None:
        if not value:
            self._waiting_at = None
        elif self._waiting_at is None:
            self._waiting_at = t

    def _on_eval_batch(self, code: int, t: float, value: Any, out: list[Record]) -> None:
        self._eval_batches += 1
        self._hooked_evals = True
        self._progress(t, out)

    def _on_background_save(self, code: int, t: float, value: Any, out: list[Record]) -> None:
        seconds, written = value  # (bytes, or a ``saved_at`` value to size here)
        out.append(Event(self.rank, t + self._offset, "checkpoint_save",
                         {"seconds": seconds, "bytes": saved_bytes(written), "blocking": False}))

    def _on_tokens(self, code: int, t: float, value: Any, out: list[Record]) -> None:
        self._tokens += self._count(value)

    def _on_checkpoint_target(self, code: int, t: float, value: Any,
                              out: list[Record]) -> None:
        if self._depth[ring.CHECKPOINT] <= 1:  # a nested save is part of the outer one
            self._ckpt_targets.append(saved_bytes(value))

    def _on_phase_seconds(self, code: int, t: float, value: Any, out: list[Record]) -> None:
        phase, seconds = value
        if 0 < phase < _NPHASES and seconds > 0:
            self._acc[phase] += seconds

    def _on_adapter_seconds(self, code: int, t: float, value: Any, out: list[Record]) -> None:
        """An adapter's time between a framework's hooks: the same time the patches
        timed closer where they timed that phase in this step (the DataLoader's fetches,
        the save's files), so it counts only where they did not."""
        phase, seconds, saved = value
        if not 0 < phase < _NPHASES or seconds <= 0 or self._timed[phase]:
            return
        self._acc[phase] += seconds
        if phase == ring.CHECKPOINT:
            self._ckpt_targets.append(saved_bytes(saved))
            self._saved(seconds, t, out)

    def _on_total_steps(self, code: int, t: float, value: Any, out: list[Record]) -> None:
        """A loop's plan, counted from its first step: the run's is the steps ended before
        that loop began (a second fit in the same process goes on counting) and it."""
        if self._plan_base is None:
            self._plan_base = self.steps
        out.append(Event(self.rank, t + self._offset, "total_steps",
                         {"steps": self._plan_base + int(value)}))

    def _on_device_timing(self, code: int, t: float, value: Any, out: list[Record]) -> None:
        phase, start, end, nbytes = value
        self.device.add(phase, start, end, nbytes, self.steps + 1)

    def _on_collective_duration(self, code: int, t: float, value: Any,
                                out: list[Record]) -> None:
        seconds, nbytes = value
        nbytes = self._count(nbytes)
        if nbytes >= MIN_BANDWIDTH_BYTES:
            self._timed_s += seconds
            self._timed_bytes += nbytes

    def _on_collective_bytes(self, code: int, t: float, value: Any,
                             out: list[Record]) -> None:
        self._collective_bytes += self._count(value)

    def _on_p2p_bytes(self, code: int, t: float, value: Any, out: list[Record]) -> None:
        nbytes = self._count(value)
        self._collective_bytes += nbytes
        self._p2p_bytes += nbytes

    def _on_act_ckpt(self, code: int, t: float, value: Any, out: list[Record]) -> None:
        self._act_ckpt_calls += 1

    def _on_error(self, code: int, t: float, value: Any, out: list[Record]) -> None:
        self._error(str(value), t, out)

    def _count(self, value: Any) -> int:
        """A mark's count (samples, tokens, bytes): a number in [0, 2**63) (what a run-log
        line holds), else 0 (counted)."""
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_COUNT:
            return value
        if isinstance(value, float) and math.isfinite(value) and 0 <= value <= MAX_COUNT:
            return int(value)
        self.bad_values += 1
        return 0

    def _ended(self, code: int, value: Any) -> int:
        """Steps ended by this mark: its ordinal minus the last one its producer sent
        (more than one when marks were lost); 1 for a mark without an ordinal."""
        last = self._ordinals[code]
        if isinstance(value, int) and value > last:
            self._ordinals[code] = value
            return value - last
        return 1

    def _lost(self) -> None:
        """Marks were lost here: the step they cut into is dropped, open phases and all."""
        self._torn = True
        self._depth = [0] * _NPHASES
        self._ckpt_targets.clear()
        self._in_data = 0.0

    def open_phases(self, now: float) -> dict[str, float]:
        """Phases open at perf_counter time ``now``: name -> seconds open. A wait timed
        elsewhere in progress (``WAITING``: DDP's all-reduce at the end of backward,
        on the host) reads as an open collective."""
        phases = {name: now - self._opened[code] for name, code in ring.PHASES.items()
                  if self._depth[code]}
        if self._waiting_at is not None and "collective" not in phases:
            phases["collective"] = now - self._waiting_at
        return phases

    def _open(self, phase: int, t: float) -> None:
        self._depth[phase] += 1
        if self._depth[phase] == 1:
            self._opened[phase] = t

    def _close(self, phase: int, t: float, out: list[Record]) -> None:
        if self._depth[phase] == 0:
            return  # a close without its open (the agent started mid-phase)
        self._depth[phase] -= 1
        if self._depth[phase]:
            return
        seconds = t - self._opened[phase]
        if phase == ring.COLLECTIVE:
            if self._depth[ring.CHECKPOINT]:
                return  # a save's own collectives (DCP's): the save's time, not a wait
            if self._depth[ring.DATA]:  # (only the part inside the data wait: one a
                # writer thread opened before it counts no more than that)
                self._in_data += t - max(self._opened[phase], self._opened[ring.DATA])
            if not any(self._depth[p] for p in (*COMPUTE_PHASES, ring.OPTIMIZER)):
                self._loose += seconds  # (compute's part all the same: see ``_finish``)
        elif phase == ring.DATA:
            seconds = max(seconds - self._in_data, 0.0)
            self._in_data = 0.0
        self._acc[phase] += seconds
        self._timed[phase] = True
        if phase == ring.CHECKPOINT:
            self._saved(seconds, t, out)
        elif phase == ring.DATA:
            self._data_closed_s = seconds

    def _saved(self, seconds: float, t: float, out: list[Record]) -> None:
        nbytes = sum(self._ckpt_targets)
        self._ckpt_targets.clear()
        self._ckpt_bytes += nbytes
        out.append(Event(self.rank, t + self._offset, "checkpoint_save",
                         {"seconds": seconds, "bytes": nbytes}))

    def _progress(self, t: float, out: list[Record], every_s: float = PROGRESS_EVERY_S) -> None:
        """A ``progress`` event for the batches seen since the last step or progress
        record, once that is ``every_s`` ago."""
        if t - self._progress_at < every_s:
            return
        out.append(Event(self.rank, t + self._offset, "progress",
                         {"loader_batches": self._loader_batches,
                          "eval_batches": self._eval_batches}))
        self._progress_at = t
        self._loader_batches = self._eval_batches = 0

    def _track_batch(self, size: int, t: float, out: list[Record]) -> None:
        """Report a batch-size change once the new size repeats (a short last batch does not)."""
        if self._batch is None or size == self._batch:
            self._batch = size
            self._batch_candidate = None
        elif size == self._batch_candidate:
            out.append(Event(self.rank, t + self._offset, "batch_size_changed",
                             {"from": self._batch, "to": size}))
            self._batch = size
            self._batch_candidate = None
        else:
            self._batch_candidate = size

    def _error(self, type_name: str, t: float, out: list[Record]) -> None:
        name = "oom" if type_name == "OutOfMemoryError" else "step_error"
        out.append(Event(self.rank, t + self._offset, name, {"type": type_name}))

    def _finish(self, t: float, ended: int, out: list[Record]) -> None:
        self.steps += ended
        if self._torn:  # its start and phases are unknown: it stays a missing number
            self._torn = False
            self._reset(t)
            return
        acc = self._acc
        for phase in range(1, _NPHASES):  # split phases still open across the boundary
            if self._depth[phase]:
                acc[phase] += t - self._opened[phase]
                self._opened[phase] = t
        if self._depth[ring.DATA]:
            acc[ring.DATA] = max(acc[ring.DATA] - self._in_data, 0.0)
            self._in_data = 0.0
        start = self._prev_end if self._prev_end is not None else t
        wall = t - start
        samples, tokens, data = self._samples, self._tokens, acc[ring.DATA]
        evaluating = 0.0
        if self._by_loader:
            feeding = self._feeding()
            if not samples:  # (samples the loop or its framework counts come first)
                samples = int(sum(n for k, (n, _) in self._by_loader.items() if k in feeding))
            if not tokens:  # (as the loop's own tokens do)
                tokens = sum(n for k, n in self._tokens_by_loader.items() if k in feeding)
            data = max(data - sum(w for k, (_, w) in self._by_loader.items()
                                  if k not in feeding), 0.0)
            evaluating = self._evaluating(feeding)
            self._eval_batches += sum(n for k, n in self._unsure.items() if k not in feeding)
        opt, ckpt = acc[ring.OPTIMIZER], acc[ring.CHECKPOINT]
        compute = sum(acc[p] for p in COMPUTE_PHASES)
        rest = wall - data - opt - ckpt
        if compute > 0.0:
            compute = min(compute + self._loose, max(rest, 0.0))  # (a collective's wait
            # outside the marked compute is compute's part, as inside it)
            other = max(rest - compute, 0.0)
        else:  # no compute marked: the rest, but for an eval loop seen through its loader
            other = min(evaluating, max(rest, 0.0))
            compute = max(rest - other, 0.0)
        if self._last_batch:
            self._track_batch(self._last_batch, t, out)
        if self._eval_batches and (evaluating > 0 or self._hooked_evals):
            # an eval shorter than PROGRESS_EVERY_S: its step held one (a framework's eval
            # hook said so, or a loader that feeds no step fetched in it; not loaders a
            # loop takes turns with, each feeding the steps it fetches in)
            self._progress(t, out, every_s=0.0)
        step = Step(
            rank=self.rank, step=self.steps, t=t + self._offset, wall_s=wall,
            data_s=data, compute_s=compute, optimizer_s=opt, checkpoint_s=ckpt,
            collective_s=acc[ring.COLLECTIVE], recompute_s=acc[ring.RECOMPUTE],
            other_s=other, samples=samples, tokens=tokens,
            checkpoint_bytes=self._ckpt_bytes, collective_bytes=self._collective_bytes,
            p2p_bytes=self._p2p_bytes, act_ckpt_calls=self._act_ckpt_calls,
            collective_timed_s=self._timed_s, collective_timed_bytes=self._timed_bytes,
        )
        if self._held or self._waiting(step.step):
            self._held.append(step)
        else:
            out.append(step)
        self._reset(t)

    @property
    def feeding(self) -> set[Loader] | None:
        """The loaders whose batches fed the last step (an eval loader's feed none); None
        before the first step. Read from other threads: the set is replaced, never
        changed."""
        return self._fed_by

    def _feeding(self) -> set[Loader]:
        """The loaders that feed this step: those the last step counted that fetched here
        too (several loaders zipped feed every step; an eval loader iterated between two
        steps, or inside one before its optimizer step, feeds none), else the one whose
        batch came last before it ended (training went on with another loader). The
        first step counts the loaders that fetched the fewest batches in it (a baseline
        eval before it fetches many)."""
        seen = set(self._by_loader)
        if self._fed_by is None:
            counts = Counter(key for key, _, _ in self._fetches)
            least = min(counts.values(), default=0)
            fed = {key for key, n in counts.items() if n == least} or seen
        else:
            fed = (self._fed_by & seen) or {self._loader}
        self._fed_by = fed
        return fed

    def _evaluating(self, feeding: set[Loader]) -> float:
        """Seconds this step spent iterating loaders that do not feed it (an eval loop
        between two steps): from its first batch's wait to the next wait for a feeding
        loader's batch after its last one (or that last batch, if none came)."""
        first: float | None = None
        last = 0.0
        for key, start, arrival in self._fetches:
            if key not in feeding:
                first = start if first is None else first
                last = arrival
            elif first is not None:
                return start - first
        return last - first if first is not None else 0.0

    def _reset(self, t: float) -> None:
        """Start the next step at ``t``."""
        acc = self._acc
        self._prev_end = t
        self._progress_at = t
        self._loader_batches = self._eval_batches = 0
        self._hooked_evals = False
        for phase in range(_NPHASES):
            acc[phase] = 0.0
            self._timed[phase] = False
        self._samples = self._tokens = self._ckpt_bytes = self._act_ckpt_calls = 0
        self._last_batch = 0  # (a step that fetched none, a prefetching loop's, says no size)
        self._collective_bytes = self._p2p_bytes = self._timed_bytes = 0
        self._loose = 0.0
        self._by_loader.clear()
        self._tokens_by_loader.clear()
        self._fetches.clear()
        self._unsure.clear()
        self._waiting_at = None  # (a wait that never said it ended ends with its step)
        self._data_closed_s = 0.0
        self._timed_s = 0.0
