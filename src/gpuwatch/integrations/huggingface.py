"""Hugging Face Transformers: ``Trainer(..., callbacks=[GpuWatchCallback()])``.

Install with ``pip install 'gpuwatch[hf]'``. The Trainer has no hook around a
backward or a save, so: compute runs from ``on_step_begin`` to
``on_pre_optimizer_step``; a save takes the time since the last step, log or
evaluation ended (``on_save`` comes once it is written); data wait is the time
from the last of those to the next ``on_step_begin``.

At each ``on_log`` (the Trainer's ``logging_steps`` cadence) gpuwatch's figures
(``Monitor.summary()``) join the logs. The Trainer calls its ``report_to``
callbacks before the ones a user passes, so this callback moves itself ahead of
them when training begins; W&B, MLflow, TensorBoard and the rest then carry the
figures.
"""

from __future__ import annotations

import os
import sys
from time import perf_counter
from typing import Any

from transformers import TrainerCallback

from gpuwatch.instrument import ring
from gpuwatch.instrument.loop import LoopMarker
from gpuwatch.instrument.patches import hf_checkpoint_dir
from gpuwatch.monitor import CopiedAsSettings, Monitor, attach, owns_next_agent


class GpuWatchCallback(CopiedAsSettings, TrainerCallback):
    """Attach gpuwatch to ``Trainer.train`` on every rank; keyword arguments are settings."""

    def __init__(self, **settings: Any) -> None:
        self._settings = settings
        self.monitor: Monitor | None = None
        self._owned = False  # this callback started the agent (not gpuwatch run's hooks)
        self._marker: LoopMarker | None = None
        self._last = 0.0  # perf_counter at the end of the last step, log, evaluation or save

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.monitor is None or self.monitor.agent.stopped:  # (a train after one ended)
            self._owned = owns_next_agent()
            self.monitor = attach(self._settings, rank=args.process_index,
                                  local_rank=args.local_process_index,
                                  world_size=args.world_size)
            self._marker = LoopMarker(self.monitor.agent.ring.push)
        if self._marker is not None:  # (a resumed run: the steps still to go; its log counts
            self._marker.plan(max(state.max_steps - state.global_step, 0))  # from 1)
        self._run_before_reporters(sys._getframe(1).f_locals.get("self"))
        self._last = perf_counter()

    def _run_before_reporters(self, handler: Any) -> None:
        """Move this callback first in the calling ``CallbackHandler`` (a new list: the
        handler is iterating over the old one), so figures added in ``on_log`` reach the
        ``report_to`` callbacks."""
        callbacks = getattr(handler, "callbacks", None)
        if isinstance(callbacks, list) and self in callbacks and callbacks[0] is not self:
            handler.callbacks = [self, *(c for c in callbacks if c is not self)]

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._marker is not None:
            self._marker.elapsed(ring.DATA, perf_counter() - self._last)
            self._marker.batch_start(phase=ring.COMPUTE, samples=_samples_per_step(args))

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._marker is not None:
            self._marker.optimizer()

    def on_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._marker is not None:
            self._marker.optimizer_done()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._marker is not None:
            self._marker.batch_end(then_data=False)
        self._last = perf_counter()

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None,
               **kwargs: Any) -> None:
        if logs is not None and self.monitor is not None:
            figures = self.monitor.summary()
            logs.update(figures)
            if state.log_history and state.log_history[-1].get("step") == state.global_step:
                state.log_history[-1].update(figures)  # trainer_state.json keeps them too
        self._last = perf_counter()

    def on_prediction_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._marker is not None:
            self._marker.eval_batch()

    def on_evaluate(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._last = perf_counter()

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        now = perf_counter()
        if self._marker is not None:
            path = hf_checkpoint_dir(args, state.global_step)  # (None: another wrote it)
            self._marker.saved(now - self._last,
                               path if path is not None and os.path.isdir(path) else None)
        self._last = perf_counter()

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._marker is not None:
            self._marker.loop_end()
        if self.monitor is not None and self._owned:  # (another's goes on: gpuwatch run's)
            self.monitor.stop()


def _samples_per_step(args: Any) -> int:
    """Samples one optimizer step of this process trains on: its micro-batch times the
    micro-batches it accumulates (the step hooks see no batch; 0 if unknown)."""
    batch = getattr(args, "per_device_train_batch_size", 0)
    accumulate = getattr(args, "gradient_accumulation_steps", 1)
    ok = isinstance(batch, int) and isinstance(accumulate, int) and batch > 0 and accumulate > 0
    return batch * accumulate if ok else 0
