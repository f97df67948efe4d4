"""Zero-code instrumentation of torch, through public or long-stable points only:

- optimizer step hooks (``register_optimizer_step_pre_hook``/``_post_hook``) delimit
  steps and time the optimizer;
- the DataLoader iterator's ``__next__`` times data wait and counts samples;
- ``torch.save``, ``torch.distributed.checkpoint.save``/``async_save`` and
  ``safetensors.torch.save_file`` time checkpoints (a save on another thread than
  the training loop's is a background save: timed, never blocking time);
- ``torch.utils.checkpoint.checkpoint`` counts activation checkpointing and times
  its recompute;
- ``torch.distributed`` collectives time exposed collective wait and count bytes.

Every hook only pushes marks. The agent starts at the first mark, so a process
that imports torch but never trains (a launcher, a DataLoader worker) never
starts one. This module imports nothing heavy: it runs in every process of a
``gpuwatch run``.
"""

from __future__ import annotations

import functools
import itertools
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from gpuwatch.faults import log
from gpuwatch.instrument import ring
from gpuwatch.instrument.device import EventPool, on_device

Push = Callable[..., None]
EVENTS = EventPool()  # CUDA timing events, reused across collectives


class LazyPush:
    """The hooks' way into the ring: the first push starts the agent (via ``start``),
    unless this process is a DataLoader worker, where every push is dropped."""

    def __init__(self, start: Callable[[], Push], in_worker: Callable[[], bool]) -> None:
        self._start = start
        self._in_worker = in_worker
        self.push: Push = self._first
        self.boundary_optimizer: int | None = None
        self.boundaries = itertools.count(1)  # step ordinals (see ring: lost marks leave gaps)

    def _first(self, code: int, value: Any = None) -> None:
        self.push = _drop  # a failing start is not retried on every mark
        if self._in_worker():
            return
        try:
            self.push = self._start()
        except Exception as exc:  # the job runs on, unmonitored
            log.warning("gpuwatch: could not start the agent (%s: %s); running unmonitored",
                        type(exc).__name__, exc)
            return
        self.push(code, value)


def _drop(code: int, value: Any = None) -> None:
    return None


def batch_size(batch: Any, depth: int = 0) -> int:
    """Leading dimension of the first tensor-like in a batch (0 when there is none)."""
    shape = getattr(batch, "shape", None)
    if shape is not None:
        return int(shape[0]) if len(shape) else 0
    if depth < 3:
        if isinstance(batch, (list, tuple)) and batch:
            return batch_size(batch[0], depth + 1)
        if isinstance(batch, dict) and batch:
            return batch_size(next(iter(batch.values())), depth + 1)
    return 0


def patch_torch(lazy: LazyPush, torch: Any) -> None:
    """Optimizer hooks, DataLoader wait and torch.save (torch has just been imported)."""
    from torch.optim.optimizer import (
        register_optimizer_step_post_hook,
        register_optimizer_step_pre_hook,
    )
    from torch.utils.data.dataloader import _BaseDataLoaderIter

    def before_step(optimizer: Any, args: Any, kwargs: Any) -> None:
        lazy.push(ring.OPTIMIZER)

    def after_step(optimizer: Any, args: Any, kwargs: Any) -> None:
        lazy.push(-ring.OPTIMIZER)
        if lazy.boundary_optimizer is None:
            lazy.boundary_optimizer = id(optimizer)  # with several optimizers, the first ends steps
        if id(optimizer) == lazy.boundary_optimizer:
            lazy.push(ring.STEP_BOUNDARY, next(lazy.boundaries))

    register_optimizer_step_pre_hook(before_step)
    register_optimizer_step_post_hook(after_step)

    next_batch = _BaseDataLoaderIter.__next__

    @functools.wraps(next_batch)
    def timed_next(self: Any) -> Any:
        lazy.push(ring.DATA)
        try:
            batch = next_batch(self)
        finally:
            lazy.push(-ring.DATA)
        try:
            n = batch_size(batch)
        except Exception:
            n = 0
        if n:
            lazy.push(ring.SAMPLES, n)
        return batch

    _BaseDataLoaderIter.__next__ = timed_next  # type: ignore[method-assign]
    from torch.nn.parallel import DistributedDataParallel

    patch_ddp(lazy, DistributedDataParallel)
    timed_save = timed_checkpoint_save(torch.save, lazy, target_arg=1)
    torch.save = timed_save
    torch.serialization.save = timed_save


def timed_checkpoint_save(save: Callable[..., Any], lazy: LazyPush, target_arg: int | None = None,
                          target_kwarg: str | None = None) -> Callable[..., Any]:
    """Wrap a save function: a checkpoint phase, and the target (path or bytes written)."""

    @functools.wraps(save)
    def timed(*args: Any, **kwargs: Any) -> Any:
        target = kwargs.get(target_kwarg) if target_kwarg else None
        if target is None and target_arg is not None and len(args) > target_arg:
            target = args[target_arg]
        elif target is None and target_arg is not None:
            target = kwargs.get("f")
        if threading.current_thread() is not threading.main_thread():
            return _background_save(save, target, lazy, args, kwargs)
        start = _tell(target)
        lazy.push(ring.CHECKPOINT)
        try:
            return save(*args, **kwargs)
        finally:
            if isinstance(target, (str, os.PathLike)):
                lazy.push(ring.CHECKPOINT_TARGET, size_on_disk(target))
            elif start is not None:
                end = _tell(target)
                if end is not None and end > start:
                    lazy.push(ring.CHECKPOINT_TARGET, end - start)
            lazy.push(-ring.CHECKPOINT)

    return timed


def _background_save(save: Callable[..., Any], target: Any, lazy: LazyPush,
                     args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """A save on a writer thread: timed and sized, but the training loop does not wait."""
    start = time.perf_counter()
    try:
        return save(*args, **kwargs)
    finally:
        nbytes = size_on_disk(target) if isinstance(target, (str, os.PathLike)) else 0
        lazy.push(ring.BACKGROUND_SAVE, (time.perf_counter() - start, nbytes))


def size_on_disk(target: Any) -> int:
    """Bytes of a saved file, or of every file under a saved directory; 0 if unknown."""
    try:
        path = Path(os.fspath(target))
        if path.is_dir():
            return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        return path.stat().st_size
    except (OSError, TypeError):
        return 0


def _tell(f: Any) -> int | None:
    try:
        pos = f.tell()
    except Exception:
        return None
    return pos if isinstance(pos, int) else None


def patch_activation_checkpoint(lazy: LazyPush, module: Any) -> None:
    """Count checkpointed regions; time every re-run of one (the recompute in backward)."""
    original = module.checkpoint

    @functools.wraps(original)
    def checkpoint(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        lazy.push(ring.ACT_CKPT)
        calls = 0

        def run(*a: Any, **k: Any) -> Any:
            nonlocal calls
            calls += 1
            if calls == 1:
                return function(*a, **k)
            lazy.push(ring.RECOMPUTE)
            try:
                return function(*a, **k)
            finally:
                lazy.push(-ring.RECOMPUTE)

        return original(run, *args, **kwargs)

    module.checkpoint = checkpoint


def patch_distributed_checkpoint(lazy: LazyPush, module: Any) -> None:
    """Time ``torch.distributed.checkpoint.save`` (its size: the checkpoint directory's)
    and ``async_save``, whose call is the part that blocks (staging to host memory)."""
    for name in ("save", "save_state_dict", "async_save"):
        original = getattr(module, name, None)
        if original is not None:
            setattr(module, name, timed_checkpoint_save(original, lazy,
                                                        target_kwarg="checkpoint_id"))


def patch_safetensors(lazy: LazyPush, module: Any) -> None:
    """Time ``safetensors.torch.save_file`` (``save_model`` calls it)."""
    original = getattr(module, "save_file", None)
    if original is not None:
        module.save_file = timed_checkpoint_save(original, lazy, target_arg=1,
                                                 target_kwarg="filename")


COLLECTIVES = ("all_reduce", "all_gather", "all_gather_into_tensor", "reduce_scatter",
               "reduce_scatter_tensor", "broadcast", "reduce", "all_to_all_single", "barrier")


def patch_distributed(lazy: LazyPush, dist: Any, pool: EventPool = EVENTS) -> None:
    """Time and size each torch.distributed collective.

    CPU tensors (gloo): host wall time in the call. CUDA tensors (NCCL): CUDA events
    on the current stream around the call, read later by the agent, so the time is
    how long that stream waited; nothing syncs the host.
    """
    for name in COLLECTIVES:
        original = getattr(dist, name, None)
        if original is not None:
            setattr(dist, name, timed_collective(original, lazy, pool))


def timed_collective(collective: Callable[..., Any], lazy: LazyPush,
                     pool: EventPool) -> Callable[..., Any]:
    @functools.wraps(collective)
    def timed(*args: Any, **kwargs: Any) -> Any:
        tensor = args[0] if args else kwargs.get("tensor", kwargs.get("tensor_list"))
        nbytes = tensor_bytes(tensor)
        if nbytes:
            lazy.push(ring.COLLECTIVE_BYTES, nbytes)
        if on_device(tensor):
            start, end = pool.pair()
            start.record()
            try:
                return collective(*args, **kwargs)
            finally:
                end.record()
                lazy.push(ring.DEVICE_TIMING, (ring.COLLECTIVE, start, end))
        lazy.push(ring.COLLECTIVE)
        try:
            return collective(*args, **kwargs)
        finally:
            lazy.push(-ring.COLLECTIVE)

    return timed


def patch_ddp(lazy: LazyPush, ddp: Any) -> None:
    """Time DDP's gradient all-reduce: exposed wait and bytes, through a comm hook.

    The user's own hook is wrapped when registered; otherwise the default all-reduce
    hook, wrapped, is registered at the first forward (after the user's chance).
    """
    register, forward = ddp.register_comm_hook, ddp.forward

    def register_comm_hook(self: Any, state: Any, hook: Callable[..., Any]) -> Any:
        self._gpuwatch_hooked = True
        return register(self, state, timed_comm_hook(hook, lazy))

    def timed_forward(self: Any, *args: Any, **kwargs: Any) -> Any:
        if not getattr(self, "_gpuwatch_hooked", False):
            self._gpuwatch_hooked = True
            try:
                from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import (
                    allreduce_hook,
                )

                register(self, self.process_group, timed_comm_hook(allreduce_hook, lazy))
            except Exception:  # a built-in hook already in place: leave it alone
                pass
        return forward(self, *args, **kwargs)

    ddp.register_comm_hook = functools.wraps(register)(register_comm_hook)
    ddp.forward = functools.wraps(forward)(timed_forward)


def timed_comm_hook(hook: Callable[..., Any], lazy: LazyPush) -> Callable[..., Any]:
    """A comm hook that, on the last bucket of a backward, reports the exposed wait: from
    that bucket being ready to its all-reduce done (the time backward waits with nothing
    left to compute). Host time: exact for gloo. Bytes are counted by the collective the
    hook calls (``torch.distributed`` is timed too)."""

    def timed(state: Any, bucket: Any) -> Any:
        ready = time.perf_counter()
        future = hook(state, bucket)
        if not bucket.is_last():
            return future

        def done(f: Any) -> Any:
            lazy.push(ring.PHASE_SECONDS, (ring.COLLECTIVE, time.perf_counter() - ready))
            return f.value()

        return future.then(done)

    timed.__annotations__ = {}  # DDP rejects any bucket annotation but dist.GradBucket
    return timed


def tensor_bytes(obj: Any) -> int:
    """Bytes of a tensor or a list of tensors (metadata only: no device sync)."""
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(t) for t in obj)
    try:
        return int(obj.numel() * obj.element_size())
    except Exception:
        return 0


def in_dataloader_worker() -> bool:
    """True inside a DataLoader worker process (which must stay untouched)."""
    import sys

    data = sys.modules.get("torch.utils.data")
    try:
        return data is not None and data.get_worker_info() is not None
    except Exception:
        return True


PATCHES: dict[str, Callable[[LazyPush, ModuleType], None]] = {
    "torch": patch_torch,
    "torch.utils.checkpoint": patch_activation_checkpoint,
    "torch.distributed": patch_distributed,
    "torch.distributed.checkpoint": patch_distributed_checkpoint,
    "safetensors.torch": patch_safetensors,
}
