"""Framework-free marking of a training loop from its callbacks.

Lightning's and Hugging Face's callbacks are thin adapters over this: each
framework hook calls one method here, which pushes ring marks. Nothing here
knows a framework; everything here is hot-path cheap.
"""

from __future__ import annotations

import itertools
import os
import time
from typing import Any

from gpuwatch.instrument import ring
from gpuwatch.instrument.attach import framework_loop_ended
from gpuwatch.instrument.sizes import batch_size, saved_at

Push = Any  # MarkRing.push


class LoopMarker:
    """Steps, phases, checkpoints and plans of a callback-driven loop.

    Steps are batches: ``batch_start`` .. ``batch_end``. Between them the loop
    fetches data; inside, forward, backward and the optimizer. Phases left open
    by a framework that skipped a hook are closed at the next step boundary.
    """

    __slots__ = ("_ends", "_eval_paused", "_open", "_paused", "_push", "_save_since")

    def __init__(self, push: Push) -> None:
        self._push = push
        self._open: list[int] = []  # phases this marker opened, innermost last
        self._paused = 0  # the phase a checkpoint interrupted
        self._eval_paused = 0  # the phase an evaluation interrupted
        self._ends = itertools.count(1)  # step ordinals (lost marks leave gaps, see ring)
        self._save_since = 0.0  # when the open save began (Unix s)

    def _enter(self, phase: int) -> None:
        self._close_all()
        self._push(phase)
        self._open.append(phase)

    def _close_all(self) -> None:
        while self._open:
            self._push(-self._open.pop())

    def loop_start(self) -> None:
        """The loop is about to fetch its first batch."""
        self._enter(ring.DATA)

    def batch_start(self, batch: Any = None, phase: int = ring.FORWARD, samples: int = 0) -> None:
        """A batch arrived: data wait ends, ``phase`` (forward, or compute) begins. Its
        samples are counted from ``batch``, else taken from ``samples``."""
        self._close_all()
        self._push(ring.STEP_BEGIN)
        try:
            n = batch_size(batch) if batch is not None else samples
        except Exception:  # an exotic batch: no sample count, never an error
            n = 0
        if n:
            self._push(ring.SAMPLES, n)
        self._enter(phase)

    def backward(self) -> None:
        self._enter(ring.BACKWARD)

    def optimizer(self) -> None:
        self._enter(ring.OPTIMIZER)

    def optimizer_done(self) -> None:
        self._close_all()

    def batch_end(self, then_data: bool = True, step: bool = True) -> None:
        """The batch is over, and with ``step`` its step (a batch that only accumulates
        gradients leaves it open); the loop goes back to its data (timed here unless the
        adapter reports it with ``elapsed``)."""
        self._close_all()
        if step:
            self._push(ring.STEP_END, next(self._ends))
        if then_data:
            self._enter(ring.DATA)

    def loop_end(self) -> None:
        """The framework's loop is over: what the process trains next (a plain loop, the
        next fit) steps on its own marks."""
        self._close_all()
        self._push(ring.LOOP_END)
        framework_loop_ended()

    def elapsed(self, phase: int, seconds: float) -> None:
        """Time measured by the adapter, for a phase the framework has no hooks around
        (the patches' own timing of it, under ``gpuwatch run``, stands instead)."""
        self._push(ring.ADAPTER_SECONDS, (phase, seconds, None))

    def saved(self, seconds: float, path: str | os.PathLike[str] | None) -> None:
        """A checkpoint save the framework announces only once done (the patches' own
        timing of its files, under ``gpuwatch run``, stands instead)."""
        saved = saved_at(path, time.time() - seconds) if path is not None else None
        self._push(ring.ADAPTER_SECONDS, (ring.CHECKPOINT, seconds, saved))

    def checkpoint_start(self) -> None:
        """A save begins; the phase it interrupts (data wait, usually) resumes after it."""
        self._paused = self._open[-1] if self._open else 0
        self._close_all()
        self._save_since = time.time()
        self._push(ring.CHECKPOINT)

    def checkpoint_end(self, path: str | os.PathLike[str] | None) -> None:
        if path is not None:
            self._push(ring.CHECKPOINT_TARGET, saved_at(path, self._save_since))
        self._push(-ring.CHECKPOINT)
        if self._paused:
            self._enter(self._paused)
            self._paused = 0

    def eval_start(self) -> None:
        """An evaluation loop begins between steps: the training loop's data wait pauses
        (its time is no wait for training data) and resumes at ``eval_end``."""
        self._eval_paused = self._open[-1] if self._open else 0
        self._close_all()

    def eval_end(self) -> None:
        if self._eval_paused:
            self._enter(self._eval_paused)
            self._eval_paused = 0

    def eval_batch(self) -> None:
        """An evaluation batch is done (progress between training steps)."""
        self._push(ring.EVAL_BATCH)

    def plan(self, total_steps: int | None) -> None:
        """The steps the run will take (for time-to-finish projections)."""
        if total_steps and total_steps > 0:
            self._push(ring.TOTAL_STEPS, int(total_steps))

