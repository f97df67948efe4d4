"""Zero-code instrumentation of torch, through public or long-stable points only:

- optimizer step hooks (``register_optimizer_step_pre_hook``/``_post_hook``) delimit
  steps and time the optimizer;
- the DataLoader iterator's ``__next__`` times data wait and counts samples;
- ``torch.save`` and ``torch.distributed.checkpoint.save`` time checkpoints;
- ``torch.utils.checkpoint.checkpoint`` counts activation checkpointing and times
  its recompute;
- ``torch.distributed`` collectives time exposed collective wait and count bytes.

Every hook only pushes marks. The agent starts at the first mark, so a process
that imports torch but never trains (a launcher, a DataLoader worker) never
starts one. This module imports nothing heavy: it runs in every process of a
``gpuwatch run``.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from gpuwatch.instrument import ring
from gpuwatch.instrument.device import EventPool, on_device
from gpuwatch.instrument.identity import HINTS, Hints

Push = Callable[..., None]
log = logging.getLogger("gpuwatch")
EVENTS = EventPool()  # CUDA timing events, reused across collectives


class LazyPush:
    """The hooks' way into the ring: the first push starts the agent (via ``start``),
    unless this process is a DataLoader worker, where every push is dropped."""

    def __init__(self, start: Callable[[], Push], in_worker: Callable[[], bool]) -> None:
        self._start = start
        self._in_worker = in_worker
        self.push: Push = self._first
        self.boundary_optimizer: int | None = None

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
            lazy.push(ring.STEP_BOUNDARY)

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
    watch_device(torch, register_optimizer_step_pre_hook)


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
    """Time ``torch.distributed.checkpoint.save`` (its size: the checkpoint directory's)."""
    for name in ("save", "save_state_dict"):
        original = getattr(module, name, None)
        if original is not None:
            setattr(module, name, timed_checkpoint_save(original, lazy,
                                                        target_kwarg="checkpoint_id"))


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


def watch_device(torch: Any, register_pre_hook: Callable[[Any], Any],
                 hints: Hints = HINTS) -> None:
    """Tell ``hints`` which CUDA device this process uses: the one ``torch.cuda.set_device``
    chose, else that of the first CUDA parameters an optimizer steps (metadata only,
    once per optimizer until one is found)."""
    set_device = torch.cuda.set_device

    @functools.wraps(set_device)
    def chosen(device: Any) -> None:
        set_device(device)
        with contextlib.suppress(Exception):  # the job's call has succeeded: that is what counts
            hints.saw_device(int(torch.cuda.current_device()), chosen=True)

    torch.cuda.set_device = chosen

    def first_cuda_params(optimizer: Any, args: Any, kwargs: Any) -> None:
        if hints.device is not None or getattr(optimizer, "_gpuwatch_device_seen", False):
            return
        optimizer._gpuwatch_device_seen = True
        for group in optimizer.param_groups:
            for param in group["params"]:
                if getattr(param, "is_cuda", False):
                    hints.saw_device(param.device.index, chosen=False)
                    return

    register_pre_hook(first_cuda_params)


def watch_process_group(lazy: LazyPush, c10d: Any, hints: Hints = HINTS) -> None:
    """Tell ``hints`` the rank and world size once ``init_process_group`` returns (every
    launcher and spawn strategy goes through it). Patched in ``distributed_c10d`` and,
    if it already re-exported the original, in ``torch.distributed``."""
    import sys

    original = c10d.init_process_group

    @functools.wraps(original)
    def init_process_group(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        with contextlib.suppress(Exception):  # the group is up: that is what counts
            hints.saw_group(int(c10d.get_rank()), int(c10d.get_world_size()))
        return result

    c10d.init_process_group = init_process_group
    dist = sys.modules.get("torch.distributed")
    if dist is not None and getattr(dist, "init_process_group", None) is original:
        setattr(dist, "init_process_group", init_process_group)  # noqa: B010


PATCHES: dict[str, Callable[[LazyPush, ModuleType], None]] = {
    "torch": patch_torch,
    "torch.utils.checkpoint": patch_activation_checkpoint,
    "torch.distributed": patch_distributed,
    "torch.distributed.checkpoint": patch_distributed_checkpoint,
    "torch.distributed.distributed_c10d": watch_process_group,
}
