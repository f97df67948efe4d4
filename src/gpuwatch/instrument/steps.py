"""Turn the hot path's raw marks into Step and Event records (agent thread only).

Steps are contiguous: a step's wall time runs from the end of the previous
step (or the first mark ever) to its own end, so the steps of a run add up to
its training time and every gap (logging, evaluation) is accounted for.
Steps end explicitly (``with monitor.step()``) or, when the loop never marks
them, at the first optimizer's post-step hook.
"""

from __future__ import annotations

from collections.abc import Iterable

from gpuwatch.instrument import ring
from gpuwatch.instrument.device import EventPool, PendingTimings
from gpuwatch.instrument.patches import EVENTS
from gpuwatch.records import Event, Record, Step

_NPHASES = max(ring.PHASES.values()) + 1


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
        self._batch: int | None = None
        self._batch_candidate: int | None = None

    def feed(self, marks: Iterable[ring.Mark], out: list[Record]) -> None:
        """Consume marks in order, appending finished records to ``out``. Device timings
        the GPU has finished are added to the step being assembled (they lag it by the
        depth of the stream's queue)."""
        for interval in self.device.ready():
            self._acc[interval.phase] += interval.seconds
            if interval.nbytes:
                self._timed_s += interval.seconds
                self._timed_bytes += interval.nbytes
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
                self.device.add(*value)
            elif code == ring.COLLECTIVE_DURATION:
                self._timed_s += value[0]
                self._timed_bytes += value[1]
            elif code == ring.COLLECTIVE_BYTES:
                self._collective_bytes += value
            elif code == ring.ACT_CKPT:
                self._act_ckpt_calls += 1
            elif code == ring.ERROR:
                self._error(str(value), t, out)

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
        out.append(Step(
            rank=self.rank, step=self.steps, t=t + self._offset, wall_s=wall,
            data_s=data, compute_s=compute, optimizer_s=opt, checkpoint_s=ckpt,
            collective_s=acc[ring.COLLECTIVE], recompute_s=acc[ring.RECOMPUTE],
            other_s=other, samples=self._samples, tokens=self._tokens,
            checkpoint_bytes=self._ckpt_bytes, collective_bytes=self._collective_bytes,
            collective_timed_s=self._timed_s, collective_timed_bytes=self._timed_bytes,
            act_ckpt_calls=self._act_ckpt_calls,
        ))
        self._prev_end = t
        for phase in range(_NPHASES):
            acc[phase] = 0.0
        self._samples = self._tokens = self._ckpt_bytes = self._act_ckpt_calls = 0
        self._collective_bytes = self._timed_bytes = 0
        self._timed_s = 0.0
