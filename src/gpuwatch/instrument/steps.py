"""Turn the hot path's raw marks into Step and Event records (agent thread only).

Steps are contiguous: a step's wall time runs from the end of the previous
step (or the first mark ever) to its own end, so the steps of a run add up to
its training time and every gap (logging, evaluation) is accounted for.
Steps end explicitly (``with monitor.step()``) or, when the loop never marks
them, at the first optimizer's post-step hook.

Device timings (collective waits on the GPU timeline) belong to the step they were
recorded in, which the GPU finishes later: such a step is held back until they are
read (at most ``HOLD_STEPS`` later steps), so ranks compare the same step's waits.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from gpuwatch.instrument import ring
from gpuwatch.instrument.device import EventPool, PendingTimings
from gpuwatch.instrument.patches import EVENTS
from gpuwatch.records import Event, Record, Step

_NPHASES = max(ring.PHASES.values()) + 1
HOLD_STEPS = 64  # a step waits for its device timings behind at most this many steps


class StepAssembler:
    """Folds marks into records. ``clock_offset`` turns perf_counter seconds into Unix time."""

    def __init__(self, rank: int, clock_offset: float, events: EventPool = EVENTS) -> None:
        self.rank = rank
        self.steps = 0
        self.device = PendingTimings(events)
        self._offset = clock_offset
        self._explicit = False
        self._prev_end: float | None = None
        self._depth = [0] * _NPHASES
        self._opened = [0.0] * _NPHASES
        self._acc = [0.0] * _NPHASES
        self._samples = 0
        self._tokens = 0
        self._ckpt_bytes = 0
        self._ckpt_targets: list[int] = []  # bytes of each file the save wrote
        self._act_ckpt_calls = 0
        self._collective_bytes = 0
        self._timed_s = 0.0
        self._timed_bytes = 0
        self._held: deque[Step] = deque()  # finished steps waiting for the device
        self._batch: int | None = None
        self._batch_candidate: int | None = None

    def feed(self, marks: Iterable[ring.Mark], out: list[Record], final: bool = False) -> None:
        """Consume marks in order, appending finished records to ``out``. A step with
        device timings the GPU has not finished is held back until it has (``final``:
        release every held step now)."""
        self._read_device()
        for code, t, value in marks:
            if self._prev_end is None:
                self._prev_end = t  # the first mark ever opens the first step
            if 0 < code < _NPHASES:
                self._open(code, t)
            elif -_NPHASES < code < 0:
                self._close(-code, t, out)
            elif code == ring.STEP_END:
                self._finish(t, out)
            elif code == ring.STEP_BOUNDARY:
                if not self._explicit:
                    self._finish(t, out)
            elif code == ring.STEP_BEGIN:
                self._explicit = True
            elif code == ring.SAMPLES:
                self._samples += value
                self._track_batch(int(value), t, out)
            elif code == ring.TOKENS:
                self._tokens += value
            elif code == ring.CHECKPOINT_TARGET:
                if self._depth[ring.CHECKPOINT] <= 1:  # a nested save is part of the outer one
                    self._ckpt_targets.append(value)
            elif code == ring.PHASE_SECONDS:
                phase, seconds = value
                if 0 < phase < _NPHASES and seconds > 0:
                    self._acc[phase] += seconds
                    if phase == ring.CHECKPOINT:
                        self._saved(seconds, t, out)
            elif code == ring.TOTAL_STEPS:
                out.append(Event(self.rank, t + self._offset, "total_steps", {"steps": int(value)}))
            elif code == ring.DEVICE_TIMING:
                phase, start, end, nbytes = value
                self.device.add(phase, start, end, nbytes, self.steps + 1)
            elif code == ring.COLLECTIVE_DURATION:
                self._timed_s += value[0]
                self._timed_bytes += value[1]
            elif code == ring.COLLECTIVE_BYTES:
                self._collective_bytes += value
            elif code == ring.ACT_CKPT:
                self._act_ckpt_calls += 1
            elif code == ring.ERROR:
                self._error(str(value), t, out)
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
                if interval.nbytes:
                    self._timed_s += interval.seconds
                    self._timed_bytes += interval.nbytes
                continue
            if interval.phase == ring.COLLECTIVE:
                step.collective_s += interval.seconds
            if interval.nbytes:
                step.collective_timed_s += interval.seconds
                step.collective_timed_bytes += interval.nbytes

    def _waiting(self, step: int) -> bool:
        oldest = self.device.oldest_step()
        return oldest is not None and oldest <= step

    def _release(self, out: list[Record], final: bool) -> None:
        held = self._held
        while held and (final or len(held) > HOLD_STEPS or not self._waiting(held[0].step)):
            out.append(held.popleft())

    def open_phases(self, now: float) -> dict[str, float]:
        """Phases open at perf_counter time ``now``: name -> seconds open."""
        return {name: now - self._opened[code] for name, code in ring.PHASES.items()
                if self._depth[code]}

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
        self._acc[phase] += seconds
        if phase == ring.CHECKPOINT:
            self._saved(seconds, t, out)

    def _saved(self, seconds: float, t: float, out: list[Record]) -> None:
        nbytes = sum(self._ckpt_targets)
        self._ckpt_targets.clear()
        self._ckpt_bytes += nbytes
        out.append(Event(self.rank, t + self._offset, "checkpoint_save",
                         {"seconds": seconds, "bytes": nbytes}))

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

    def _finish(self, t: float, out: list[Record]) -> None:
        acc = self._acc
        for phase in range(1, _NPHASES):  # split phases still open across the boundary
            if self._depth[phase]:
                acc[phase] += t - self._opened[phase]
                self._opened[phase] = t
        start = self._prev_end if self._prev_end is not None else t
        wall = t - start
        data, opt, ckpt = acc[ring.DATA], acc[ring.OPTIMIZER], acc[ring.CHECKPOINT]
        compute = acc[ring.COMPUTE] + acc[ring.FORWARD] + acc[ring.BACKWARD]
        rest = wall - data - opt - ckpt
        if compute > 0.0:
            other = max(rest - compute, 0.0)
        else:
            compute, other = max(rest, 0.0), 0.0
        self.steps += 1
        step = Step(
            rank=self.rank, step=self.steps, t=t + self._offset, wall_s=wall,
            data_s=data, compute_s=compute, optimizer_s=opt, checkpoint_s=ckpt,
            collective_s=acc[ring.COLLECTIVE], recompute_s=acc[ring.RECOMPUTE],
            other_s=other, samples=self._samples, tokens=self._tokens,
            checkpoint_bytes=self._ckpt_bytes, collective_bytes=self._collective_bytes,
            collective_timed_s=self._timed_s, collective_timed_bytes=self._timed_bytes,
            act_ckpt_calls=self._act_ckpt_calls,
        )
        if self._held or self._waiting(step.step):
            self._held.append(step)
        else:
            out.append(step)
        self._prev_end = t
        for phase in range(_NPHASES):
            acc[phase] = 0.0
        self._samples = self._tokens = self._ckpt_bytes = self._act_ckpt_calls = 0
        self._collective_bytes = self._timed_bytes = 0
        self._timed_s = 0.0
