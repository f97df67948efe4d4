"""The hook bodies shared by the ``lightning`` and ``pytorch_lightning`` callbacks
(the two namespaces have distinct Callback classes with the same hooks)."""

from __future__ import annotations

import contextlib
import functools
import math
from typing import Any

from gpuwatch.instrument.loop import LoopMarker
from gpuwatch.monitor import CopiedAsSettings, Monitor, attach, owns_next_agent

MANUAL_WAIT = 64  # batches a manual optimization may accumulate before its first step


class LightningHooks(CopiedAsSettings):
    """Steps are optimizer steps: a training batch, or with ``accumulate_grad_batches``
    the batches up to the one the optimizer steps in; data wait is the gap before each
    batch starts; backward and optimizer from their hooks; a checkpoint from
    ``on_save_checkpoint`` to the end of the strategy's ``save_checkpoint``. Every
    ``log_every_n_steps`` (the trainer's own cadence) and at the end, gpuwatch's
    figures (``Monitor.summary()``) go to each of ``trainer.loggers``."""

    def __init__(self, **settings: Any) -> None:
        """Keyword arguments are gpuwatch settings (see ``gpuwatch.config.Settings``)."""
        super().__init__()
        self._settings = settings
        self.monitor: Monitor | None = None
        self._owned = False  # this callback started the agent (not gpuwatch run's hooks)
        self._marker: LoopMarker | None = None
        self._logged_step = -1
        self._stepped = 0  # optimizer steps in the batch under way
        self._plan: int | None = None  # the plan told at the fit's start, from max_steps
        self._per_batch = 0  # optimizer steps in a stepping batch of a manual optimization
        self._unstepped = 0  # batches ended since an optimizer last stepped

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage != "fit" or (self.monitor is not None and not self.monitor.agent.stopped):
            return
        # (a fit after one this callback ended starts the next attempt's log)
        self._owned = owns_next_agent()
        self.monitor = attach(self._settings, rank=trainer.global_rank,
                              local_rank=trainer.local_rank, world_size=trainer.world_size)
        self._marker = LoopMarker(self.monitor.agent.ring.push)
        self._time_checkpoint_io(trainer)

    def _time_checkpoint_io(self, trainer: Any) -> None:
        """A save ends where the strategy's ``save_checkpoint`` returns, on every rank (DDP
        writes on rank 0 alone, yet every rank's ``on_save_checkpoint`` opened it); its
        files are sized only where this rank's ``CheckpointIO`` wrote them."""
        strategy = trainer.strategy
        io = getattr(strategy, "checkpoint_io", None)
        write, save = getattr(io, "save_checkpoint", None), getattr(strategy, "save_checkpoint",
                                                                     None)
        marker = self._marker
        if io is None or write is None or save is None or marker is None:
            return
        written: list[Any] = []  # the paths this rank's CheckpointIO wrote in the save

        @functools.wraps(write)
        def writing(checkpoint: Any, path: Any, *args: Any, **kwargs: Any) -> Any:
            written.append(path)
            return write(checkpoint, path, *args, **kwargs)

        @functools.wraps(save)
        def saving(checkpoint: Any, path: Any, *args: Any, **kwargs: Any) -> Any:
            written.clear()
            try:
                return save(checkpoint, path, *args, **kwargs)
            finally:
                marker.checkpoint_end(written[-1] if written else None)

        with contextlib.suppress(AttributeError, TypeError):
            io.save_checkpoint = writing
            strategy.save_checkpoint = saving

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if self._marker is None:
            return
        plan = _planned_steps(trainer)
        self._marker.plan(plan)
        # (max_steps counts every optimizer's steps: a manual optimization's may be many)
        self._plan = plan if trainer.max_steps and trainer.max_steps > 0 else None
        self._per_batch = self._unstepped = 0
        self._marker.loop_start()

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any,
                             batch_idx: int) -> None:
        if self._marker is not None:
            self._marker.batch_start(batch)

    def on_before_backward(self, trainer: Any, pl_module: Any, loss: Any) -> None:
        if self._marker is not None:
            self._marker.backward()

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        self._stepped += 1
        if self._marker is not None:
            self._marker.optimizer()

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        manual = not getattr(pl_module, "automatic_optimization", True)
        if self._marker is not None:  # (a batch that only accumulates goes on to the next)
            # (a manual optimization accumulates its own way: until a first optimizer
            # step shows it, for at most MANUAL_WAIT batches: one whose optimizers step
            # past Lightning's hooks must not make the run one endless step)
            waiting = manual and not self._per_batch and self._unstepped < MANUAL_WAIT
            accumulating = (int(getattr(trainer, "accumulate_grad_batches", 1) or 1) > 1
                            or (manual and self._per_batch > 0) or waiting)
            self._marker.batch_end(step=self._stepped > 0 or not accumulating)
            self._unstepped = 0 if self._stepped else self._unstepped + 1
            if manual and self._stepped and not self._per_batch:
                self._per_batch = self._stepped
                if self._plan and self._stepped > 1:  # (a GAN's two optimizers)
                    self._marker.plan(-(-self._plan // self._stepped))
        self._stepped = 0
        step = trainer.global_step
        if step != self._logged_step and step % max(trainer.log_every_n_steps or 1, 1) == 0:
            self._log_figures(trainer)

    def _log_figures(self, trainer: Any) -> None:
        """The latest figures to every logger of the trainer (CSV, TensorBoard, W&B, MLflow:
        each writes them on rank 0). A logger's failure is counted, never raised."""
        if self.monitor is None:
            return
        self._logged_step = trainer.global_step
        metrics = self.monitor.summary()
        if not metrics:
            return
        for logger in trainer.loggers:
            try:
                logger.log_metrics(metrics, step=trainer.global_step)
            except Exception as exc:
                self.monitor.agent.faults.record("tracker", exc)

    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        if self._marker is not None:
            self._marker.eval_start()

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if self._marker is not None:
            self._marker.eval_end()

    def on_validation_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        if self._marker is not None:
            self._marker.eval_batch()

    def on_save_checkpoint(self, trainer: Any, pl_module: Any,
                           checkpoint: dict[str, Any]) -> None:
        if self._marker is not None:
            self._marker.checkpoint_start()

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        if self._marker is not None:
            self._marker.loop_end()
        if trainer.global_step != self._logged_step:
            self._log_figures(trainer)

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        """Lightning caught it (a Ctrl-C too) and will exit through ``sys.exit``: stop now,
        without waiting for a last scrape."""
        if self.monitor is not None:
            self.monitor.stop(failed=True)

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        """The end of a fit ends the agent this callback started (another's, gpuwatch
        run's, goes on for what the process does next)."""
        if stage == "fit" and self.monitor is not None and self._owned:
            self.monitor.stop()


def _planned_steps(trainer: Any) -> int | None:
    """Optimizer steps the fit will run from here: max_steps, else Lightning's estimate,
    less the steps a resumed checkpoint already trained (this log counts from 1)."""
    done = int(getattr(trainer, "global_step", 0) or 0)
    if trainer.max_steps and trainer.max_steps > 0:
        return max(int(trainer.max_steps) - done, 0)
    try:
        estimate = trainer.estimated_stepping_batches
    except Exception:  # no dataloader length: an iterable dataset
        return None
    if not isinstance(estimate, (int, float)) or math.isinf(estimate):
        return None
    return max(int(estimate) - done, 0)
