"""Zero-code instrumentation of torch, through public or long-stable points only:

- optimizer step hooks (``register_optimizer_step_pre_hook``/``_post_hook``) delimit
  steps and time the optimizer;
- the DataLoader iterator's ``__next__`` times data wait and counts samples;
- ``torch.save``, ``torch.distributed.checkpoint.save``/``async_save``,
  ``safetensors.torch.save_file``, a Hugging Face ``Trainer``'s ``_save_checkpoint``
  and Lightning's and Fabric's ``_atomic_save`` time checkpoints (saves within a
  save are part of it; a save on another thread than the training loop's is a
  background save: timed, never blocking time);
- ``torch.utils.checkpoint.checkpoint`` counts activation checkpointing and times
  its recompute;
- ``torch.distributed`` collectives, their async waits, DDP's gradient all-reduce,
  FSDP2's waits and functional collectives time the exposed collective wait on the
  device timeline (``device.Intervals``) and count bus bytes.

Every hook only pushes marks. The agent starts at the first mark, so a process
that imports torch but never trains (a launcher, a DataLoader worker) never
starts one. This module imports nothing heavy: it runs in every process of a
``gpuwatch run``.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import itertools
import os
import sys
import threading
import time
import types
import weakref
from collections.abc import Callable, Collection
from types import ModuleType
from typing import Any

from gpuwatch.faults import log
from gpuwatch.instrument import ring
from gpuwatch.instrument.device import EVENTS, EventPool, Intervals, on_device
from gpuwatch.instrument.identity import HINTS, Hints
from gpuwatch.instrument.ring import Loader
from gpuwatch.instrument.sizes import (
    first_tensor,
    leading_size,
    saved_at,
    saved_bytes,
    tensor_bytes,
    token_ids,
)
from gpuwatch.vocabulary import bus_bytes

Push = Callable[..., None]
TAKEOVER_STEPS = 16  # steps of another optimizer while the first is idle: it was put aside


class LazyPush:
    """The hooks' way into the ring: the first push starts the agent (via ``start``),
    unless this process is a DataLoader worker, where every push is dropped."""

    def __init__(self, start: Callable[[], Push], in_worker: Callable[[], bool]) -> None:
        self._start = start
        self._in_worker = in_worker
        self.push: Push = self._first
        self.boundaries = itertools.count(1)  # step ordinals (see ring: lost marks leave gaps)
        self.loop_thread: int | None = None  # the thread optimizers step on: the loop's
        self._boundary: Callable[[], Any] = _nothing  # the optimizer whose steps end steps
        self._others: dict[int, int] = {}  # other optimizers' steps since its last one
        self._starting = threading.Lock()  # held while the first mark starts the agent
        self._starter: int | None = None  # the thread starting it
        self.saving = 0  # timed saves under way on the loop's thread (their writers' are theirs)
        # asynchronous saves still writing after their call returned (ids of their futures)
        self.writing: set[int] = set()

    def forget_agent(self) -> None:
        """In a forked child: the parent's agent does not run here (its ring would fill
        unread); the child's first mark starts one of its own, as in a child that was
        forked before any mark."""
        self.push = self._first
        self._starting, self._starter = threading.Lock(), None
        self.loop_thread, self._boundary, self._others = None, _nothing, {}
        self.saving, self.writing = 0, set()

    def ends_step(self, optimizer: Any) -> bool:
        """Whether ``optimizer``'s step ends a training step. The first optimizer to step
        ends them (with several, as in a GAN, its steps are the steps: one per iteration
        when it steps once in each, however often the others do) until it is gone
        (collected: replaced by a new optimizer for a second phase, a second
        ``Trainer``) or another has stepped ``TAKEOVER_STEPS`` times while it did not (it
        was put aside): that one ends them from then on."""
        self.loop_thread = threading.get_ident()
        boundary = self._boundary()
        if optimizer is not boundary:
            key = id(optimizer)
            seen = self._others[key] = self._others.get(key, 0) + 1
            if boundary is not None and seen < TAKEOVER_STEPS:
                return False
            try:
                self._boundary = weakref.ref(optimizer)
            except TypeError:  # (no weak references to it: a step is each of its steps)
                self._boundary = _nothing
        if self._others:
            self._others.clear()
        return True

    def release_boundary(self) -> None:
        """The optimizer whose steps ended steps is done with (its framework's loop
        ended): the next optimizer to step ends them at once."""
        self._boundary = _nothing
        self._others.clear()

    def off_loop(self) -> bool:
        """Whether the calling thread is not the training loop's (the thread optimizers
        step on, else the one that marked first; before any mark, the caller's): a save
        there (a writer thread, the main thread beside a loop on a thread of its own)
        blocks no step."""
        return self.loop_thread is not None and threading.get_ident() != self.loop_thread

    def _first(self, code: int, value: Any = None) -> None:
        """Start the agent, then push: once (a failing start is not retried on every
        mark); marks of other threads meanwhile wait for it, the start's own are dropped."""
        me = threading.get_ident()
        if me == self._starter:
            return  # a mark of the start itself
        with self._starting:
            if self.push == self._first:  # (not started by another thread meanwhile)
                self._starter = self.loop_thread = me  # (the loop's until an optimizer steps)
                try:
                    self.push = _drop if self._in_worker() else self._start()
                except Exception as exc:  # the job runs on, unmonitored
                    self.push = _drop
                    log.warning("gpuwatch: could not start the agent (%s: %s); running "
                                "unmonitored", type(exc).__name__, exc)
                finally:
                    self._starter = None
            push = self.push
        push(code, value)


def _drop(code: int, value: Any = None) -> None:
    return None


CLOSURE_TYPES = (types.FunctionType, types.MethodType, functools.partial)


def _closure_outside_the_update(lazy: LazyPush, optimizer: Any, args: Any, kwargs: Any
                                ) -> tuple[Any, Any] | None:
    """``optimizer.step(closure)`` (Lightning, LBFGS) runs forward and backward inside the
    step: the closure, wrapped, closes the optimizer phase while it runs, so the update
    alone is optimizer time. ``args`` are the step's, the optimizer first (as torch hands
    them to a step pre-hook). None (nothing changed) without a closure: one passed by
    position must be a function (a custom optimizer's ``step(model)`` takes a callable
    object that is no closure, and gets it unchanged)."""
    try:
        at = 1 if isinstance(args, tuple) and args and args[0] is optimizer else 0
        if isinstance(kwargs, dict) and callable(kwargs.get("closure")):
            closure, place = kwargs["closure"], -1
        elif (isinstance(args, tuple) and len(args) > at
              and isinstance(args[at], CLOSURE_TYPES)):
            closure, place = args[at], at
        else:
            return None
    except Exception:
        return None

    def outside(*a: Any, **kw: Any) -> Any:  # (once per step: no functools.wraps copying)
        lazy.push(-ring.OPTIMIZER)
        try:
            return closure(*a, **kw)
        finally:
            lazy.push(ring.OPTIMIZER)

    if place < 0:
        return args, {**kwargs, "closure": outside}
    return (*args[:place], outside, *args[place + 1:]), kwargs


def patch_torch(lazy: LazyPush, torch: Any) -> None:
    """Optimizer hooks, DataLoader wait and torch.save (torch has just been imported)."""
    from torch.optim.optimizer import (
        register_optimizer_step_post_hook,
        register_optimizer_step_pre_hook,
    )
    from torch.utils.data.dataloader import _BaseDataLoaderIter

    def before_step(optimizer: Any, args: Any, kwargs: Any) -> tuple[Any, Any] | None:
        lazy.push(ring.OPTIMIZER)
        return _closure_outside_the_update(lazy, optimizer, args, kwargs)

    def after_step(optimizer: Any, args: Any, kwargs: Any) -> None:
        lazy.push(-ring.OPTIMIZER)
        if lazy.ends_step(optimizer):
            lazy.push(ring.STEP_BOUNDARY, next(lazy.boundaries))

    register_optimizer_step_pre_hook(before_step)
    register_optimizer_step_post_hook(after_step)

    _BaseDataLoaderIter.__next__ = timed_loader_next(  # type: ignore[method-assign,assignment]
        _BaseDataLoaderIter.__next__, lazy)
    from torch.nn.parallel import DistributedDataParallel

    patch_ddp(lazy, DistributedDataParallel)
    timed_save = timed_checkpoint_save(torch.save, lazy, target_arg=1)
    torch.save = timed_save
    torch.serialization.save = timed_save
    watch_device(torch, register_optimizer_step_pre_hook)


def loader_key(iterator: Any) -> Loader:
    """The loader a DataLoader iterator draws for, the same every epoch (its dataset and
    sampler; two loaders over one dataset split by samplers are two)."""
    return (id(getattr(iterator, "_dataset", None)), id(getattr(iterator, "_index_sampler", None)))


class LoaderWorkers:
    """The DataLoader iterators the job drew batches from (held weakly), for the host
    probe to tell their worker processes from the job's other children, and the
    workers of the loaders that feed training from an eval loader's, idle between
    evaluations."""

    def __init__(self) -> None:
        self._iterators: weakref.WeakSet[Any] = weakref.WeakSet()
        self._seen = False

    def add(self, iterator: Any) -> None:
        """Note ``iterator`` (once: it is marked with its loader and its batches drawn,
        in all and as of the last ``pids``)."""
        iterator._gpuwatch_draws = iterator._gpuwatch_told = 0
        iterator._gpuwatch_loader = loader_key(iterator)
        self._iterators.add(iterator)
        self._seen = True

    def pids(self, feeding: Collection[Loader] | None = None) -> set[int] | None:
        """The worker processes (pids; none for a loader without workers) of the live
        iterators of the loaders in ``feeding`` (those whose batches feed training
        steps; None: not known yet, every loader's), of any a batch is being drawn from
        now (an eval loader starting up is at work, not idle) and, where no batch of
        those was drawn since the last call, of any that was (a training loader made
        anew, before a step tells it feeds training; an eval loader between two reads
        while training waited); None before any batch was drawn through a DataLoader.
        Only reads: never polls a worker (a waitpid from here could reap the loader's)."""
        if not self._seen:
            return None
        for _ in range(3):  # (the loop adds iterators while this one reads them)
            try:
                iterators = list(self._iterators)
                break
            except RuntimeError:
                continue
        else:
            return None
        chosen: list[Any] = []
        drawn_only: list[Any] = []  # drawn since the last call, of loaders feeding no step
        fed = False  # whether a batch of a loader that feeds steps was drawn since then
        for it in iterators:
            draws = getattr(it, "_gpuwatch_draws", 0)
            drawn, it._gpuwatch_told = draws != getattr(it, "_gpuwatch_told", 0), draws
            feeds = feeding is None or getattr(it, "_gpuwatch_loader", None) in feeding
            if feeds or getattr(it, "_gpuwatch_drawing", False):
                chosen.append(it)
                fed = fed or (feeds and drawn)
            elif drawn:
                drawn_only.append(it)
        pids: set[int] = set()
        for it in chosen if fed else chosen + drawn_only:
            for worker in getattr(it, "_workers", None) or ():
                pid = getattr(worker, "pid", None)
                if isinstance(pid, int):
                    pids.add(pid)
        return pids


LOADER_WORKERS = LoaderWorkers()


def timed_loader_next(next_batch: Callable[[Any], Any], lazy: LazyPush,
                      loaders: LoaderWorkers = LOADER_WORKERS,
                      timed: bool = True) -> Callable[[Any], Any]:
    """Wrap a DataLoader iterator's ``__next__``: the training loop's wait for the batch
    (on its own thread only: a thread that fetches ahead of the loop, a prefetcher,
    keeps the loop waiting on nothing of its own; not ``timed``: none, the loop marks
    its own) and the batch's samples (and token ids, where it holds them), by loader;
    each iterator is noted once in ``loaders`` (whose workers are the job's loaders')."""

    @functools.wraps(next_batch)
    def timed_next(self: Any) -> Any:
        loader: Loader | None = getattr(self, "_gpuwatch_loader", None)
        if loader is None:
            with contextlib.suppress(Exception):  # (an iterator that takes no attribute)
                loaders.add(self)
                loader = self._gpuwatch_loader
        drawing = loader is not None
        if drawing:
            self._gpuwatch_drawing = True
        try:
            if not timed or lazy.off_loop():
                batch = next_batch(self)
            else:
                lazy.push(ring.DATA)
                try:
                    batch = next_batch(self)
                finally:
                    lazy.push(-ring.DATA)
        finally:
            if drawing:
                self._gpuwatch_drawing = False
                self._gpuwatch_draws += 1
        try:  # (the batch's first tensor found once, for its samples and its token ids)
            tensor = first_tensor(batch)
            n = leading_size(tensor)
        except Exception:
            tensor, n = None, 0
        try:
            tokens = token_ids(tensor)
        except Exception:
            tokens = 0
        # by loader (``loader_key``): an eval loader's batches are not the step's
        key = loader or loader_key(self)
        if tokens:
            lazy.push(ring.LOADER_TOKENS, (*key, tokens))
        lazy.push(ring.LOADER_BATCH if timed else ring.LOADER_BATCH_UNTIMED, (*key, n))
        return batch

    return timed_next


def timed_checkpoint_save(save: Callable[..., Any], lazy: LazyPush, target_arg: int | None = None,
                          target_kwarg: str | None = None,
                          target_of: Callable[[tuple[Any, ...], dict[str, Any]], Any] | None
                          = None) -> Callable[..., Any]:
    """Wrap a save function: a checkpoint phase, and the target (path or bytes written):
    the ``target_kwarg`` or ``target_arg`` argument, else what ``target_of`` finds in the
    arguments (None: unsized). A save made while the loop's own save is under way, on
    the loop (a framework's checkpoint writing its files) or on another thread (a
    distributed checkpoint's writer threads), is a part of that one, not a save of its
    own. A save whose call returns a future (``async_save``) blocked only for that call
    (its staging): its writing goes on in the background until the future is done, one
    background save sized by its target then, of which the saves its writer threads
    make meanwhile are parts."""

    @functools.wraps(save)
    def timed(*args: Any, **kwargs: Any) -> Any:
        target = kwargs.get(target_kwarg) if target_kwarg else None
        if target is None and target_arg is not None and len(args) > target_arg:
            target = args[target_arg]
        elif target is None and target_arg is not None:
            target = kwargs.get("f")
        if lazy.saving or (lazy.writing and lazy.off_loop()):  # (part of a save under way)
            return save(*args, **kwargs)
        if target is None and target_of is not None:
            try:
                target = target_of(args, kwargs)
            except Exception:  # (never raised into the job: the save goes unsized)
                target = None
        if lazy.off_loop():
            return _background_save(save, target, lazy, args, kwargs)
        start, since = _tell(target), time.time()
        lazy.push(ring.CHECKPOINT)
        lazy.saving += 1
        result = None
        try:
            result = save(*args, **kwargs)
            return result
        finally:
            lazy.saving -= 1
            later = _future(result)
            # (an asynchronous save's call wrote nothing yet of its own: its writer's
            # first files are the background write's, sized when that is done)
            written = None if later is not None else _written(target, start, since)
            if written is not None:
                lazy.push(ring.CHECKPOINT_TARGET, written)
            lazy.push(-ring.CHECKPOINT)
            if later is not None:
                _written_later(later, target, since, lazy)

    return timed


def _future(result: Any) -> Any:
    """The future a save's result completes with where it writes on after returning
    (``async_save``'s Future, or its response's upload future); else None."""
    for candidate in (result, getattr(result, "upload_completion", None)):
        if callable(getattr(candidate, "add_done_callback", None)):
            return candidate
    return None


def _written_later(future: Any, target: Any, since: float, lazy: LazyPush) -> None:
    """One background save for an asynchronous save's writing: from its call's return to
    its future's completion, sized by its target then (``saved_at``: at once, as on the
    training thread, where a future done already calls back; a large directory later,
    by the agent). Never raises into the job."""
    key, begun = id(future), time.perf_counter()

    def done(_: Any) -> None:
        lazy.writing.discard(key)
        try:
            written = _written(target, None, since)
        except Exception:  # (unsized rather than raised in the writer's thread)
            written = None
        lazy.push(ring.BACKGROUND_SAVE, (time.perf_counter() - begun, written))

    lazy.writing.add(key)
    try:
        future.add_done_callback(done)
    except Exception:  # (a future that takes no callback: its writing goes unseen)
        lazy.writing.discard(key)


def _background_save(save: Callable[..., Any], target: Any, lazy: LazyPush,
                     args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """A save on a writer thread: timed and sized, but the training loop does not wait."""
    start, since, position = time.perf_counter(), time.time(), _tell(target)
    try:
        return save(*args, **kwargs)
    finally:
        nbytes = saved_bytes(_written(target, position, since))  # (the writer's thread)
        lazy.push(ring.BACKGROUND_SAVE, (time.perf_counter() - start, nbytes))


def _written(target: Any, start: int | None,
             since: float) -> int | tuple[str, float, int | None] | None:
    """What a save to ``target`` wrote (``sizes.saved_at``): a path's file or directory,
    or the bytes a file object moved on from ``start`` (its position before); None when
    nothing tells."""
    if isinstance(target, (str, os.PathLike)):  # (``saved_at``: a large directory later)
        return saved_at(target, since, _group_rank())
    if start is None:
        return None
    end = _tell(target)
    return end - start if end is not None and end > start else None


def _group_rank() -> int | None:
    """This process's rank in torch.distributed's default group, if one is up: the
    shards of a distributed checkpoint it wrote are named by it."""
    dist = sys.modules.get("torch.distributed")
    try:
        return int(dist.get_rank()) if dist is not None and dist.is_initialized() else None
    except Exception:
        return None


def _tell(f: Any) -> int | None:
    try:
        pos = f.tell()
    except Exception:
        return None
    return pos if isinstance(pos, int) else None


def patch_activation_checkpoint(lazy: LazyPush, module: Any) -> None:
    """Count checkpointed regions; time every re-run of one (the recompute in backward).
    Under ``no_grad`` (an eval's forward) nothing is checkpointed: not counted."""
    original = module.checkpoint
    grad_enabled = getattr(sys.modules.get("torch"), "is_grad_enabled", None) or _always

    @functools.wraps(original)
    def checkpoint(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if not grad_enabled():
            return original(function, *args, **kwargs)
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
            setattr(module, name, timed_checkpoint_save(
                original, lazy, target_kwarg="checkpoint_id", target_of=_writer_path))


def _writer_path(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Where a distributed checkpoint goes when only its storage writer says so
    (``storage_writer=FileSystemWriter(path)``)."""
    return getattr(kwargs.get("storage_writer"), "path", None)


def patch_hf_trainer(lazy: LazyPush, module: Any) -> None:
    """Time a Hugging Face ``Trainer``'s checkpoint as one save (``_save_checkpoint``: the
    model, optimizer, scheduler, RNG and trainer state files it writes), sized by its
    directory on the process that writes it (``should_save``)."""
    trainer: Any = getattr(module, "Trainer", None)
    original = getattr(trainer, "_save_checkpoint", None)
    if original is not None:
        trainer._save_checkpoint = timed_checkpoint_save(original, lazy,
                                                         target_of=_hf_checkpoint_dir)


def _hf_checkpoint_dir(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The directory ``Trainer._save_checkpoint(model, trial)`` writes (a plain run's, on
    the process that saves the model); None elsewhere (unsized)."""
    trainer, trial = args[0], (args[2] if len(args) > 2 else kwargs.get("trial"))
    return hf_checkpoint_dir(trainer.args, trainer.state.global_step) if trial is None else None


def hf_checkpoint_dir(training_args: Any, step: int) -> str | None:
    """Where a Hugging Face ``Trainer`` writes the checkpoint of ``step``, on the process
    that writes it (``should_save``: one per job, or per node); None on the others."""
    if not getattr(training_args, "should_save", True):
        return None
    return os.path.join(training_args.output_dir, f"checkpoint-{step}")


def patch_lightning_save(lazy: LazyPush, module: Any) -> None:
    """Time Lightning's and Fabric's checkpoint write as one save: ``_atomic_save``
    serialises into memory (``torch.save``, part of it) and then writes the file
    (fsspec), which ``torch.save`` alone left out; sized by the file."""
    original = getattr(module, "_atomic_save", None)
    if original is not None:
        module._atomic_save = timed_checkpoint_save(original, lazy, target_arg=1,
                                                    target_kwarg="filepath")


def patch_safetensors(lazy: LazyPush, module: Any) -> None:
    """Time ``safetensors.torch.save_file`` (``save_model`` calls it)."""
    original = getattr(module, "save_file", None)
    if original is not None:
        module.save_file = timed_checkpoint_save(original, lazy, target_arg=1,
                                                 target_kwarg="filename")


# name -> (bus-bandwidth kind, the argument holding the whole buffer, whether that
# argument is one rank's shard of it). The signature gives the group/async_op positions.
COLLECTIVES: dict[str, tuple[str, str, bool]] = {
    "all_reduce": ("all_reduce", "tensor", False),
    "all_gather": ("all_gather", "tensor_list", False),
    "all_gather_into_tensor": ("all_gather", "output_tensor", False),
    "all_gather_single": ("all_gather", "output_tensor", False),  # torch 2.13 (FSDP2's)
    "reduce_scatter": ("reduce_scatter", "input_list", False),
    "reduce_scatter_tensor": ("reduce_scatter", "input", False),
    "reduce_scatter_single": ("reduce_scatter", "input", False),  # torch 2.13 (FSDP2's)
    "broadcast": ("broadcast", "tensor", False),
    "reduce": ("reduce", "tensor", False),
    "all_to_all_single": ("all_to_all", "input", False),
    "all_to_all": ("all_to_all", "input_tensor_list", False),
    "gather": ("reduce", "tensor", False),  # (rooted, like a reduce: its bytes once)
    "scatter": ("broadcast", "tensor", False),  # (rooted, like a broadcast)
    "barrier": ("", "", False),
    # object collectives: pickled on the host, blocking (their buffers' sizes are
    # internal); their inner collectives are distributed_c10d's own, never this wrapper's
    "all_gather_object": ("", "", False),
    "gather_object": ("", "", False),
    "broadcast_object_list": ("", "", False),
    "scatter_object_list": ("", "", False),
    "send": ("send_recv", "tensor", False),
    "recv": ("", "tensor", False),  # (timed; its bytes are the sender's, counted there once)
}
# isend/irecv stay unwrapped: P2POp checks its op *is* torch's own isend or irecv.
# batch_isend_irecv (what pipeline schedules use) counts their bytes instead.
# Functional collectives (under DTensor, and in eager code): their buffer is the first
# argument; an all-gather's input is one shard of the output.
FUNCTIONAL: dict[str, tuple[str, str, bool]] = {
    "all_reduce": ("all_reduce", "self", False),
    "all_gather_tensor": ("all_gather", "self", True),
    "reduce_scatter_tensor": ("reduce_scatter", "self", False),
    "all_to_all_single": ("all_to_all", "self", False),
}
COVERAGE: dict[str, str] = {}  # what collective timing was installed: name -> how (or why not)


class AsyncWorks:
    """Which issued ``Work`` objects run on a CUDA device, until waited on (bounded:
    a work never waited on is forgotten after ``limit`` newer ones)."""

    def __init__(self, limit: int = 4096) -> None:
        self._cuda: dict[int, bool] = {}
        self._limit = limit

    def issued(self, work: Any, cuda: bool) -> None:
        if work is None:
            return
        if len(self._cuda) >= self._limit:
            self._cuda.pop(next(iter(self._cuda)))
        self._cuda[id(work)] = cuda

    def waited(self, work: Any) -> bool | None:
        """Whether ``work`` ran on CUDA (None: not issued through a timed call)."""
        return self._cuda.pop(id(work), None)


WORKS = AsyncWorks()


def patch_distributed(lazy: LazyPush, dist: Any, pool: EventPool = EVENTS,
                      works: AsyncWorks = WORKS) -> None:
    """Time and size torch.distributed's collectives and the waits on async ones.

    A blocking collective is an interval on the issuing stream (CUDA) or the host
    (gloo): its full duration, exposed unless issued from a side stream. An async one
    (``async_op=True``, ``batch_isend_irecv``) is exposed where the compute stream
    waits: ``Work.wait`` is bracketed on the current stream.
    Bytes are bus bytes (``device.bus_bytes``).
    """
    timer = Intervals(pool, lambda: lazy.push)
    for name, spec in COLLECTIVES.items():
        original = getattr(dist, name, None)
        if original is not None:
            setattr(dist, name, timed_collective(original, lazy, timer, works, spec,
                                                 _world_size(dist)))
    batch = getattr(dist, "batch_isend_irecv", None)
    if batch is not None:
        dist.batch_isend_irecv = tracked_batch(batch, lazy, works)
    work = getattr(dist, "Work", None)
    if work is not None and hasattr(work, "wait"):
        work.wait = timed_work_wait(work.wait, timer, works)
        COVERAGE["work_wait"] = "Work.wait on the current stream"


def _nothing() -> None:
    return None


def _never() -> bool:
    return False


def _always() -> bool:
    return True


def _is_compiling() -> Callable[[], bool]:
    """``torch.compiler.is_compiling`` (True while dynamo traces; torch >= 2.3), so a
    wrapper traced into a compiled graph steps aside instead of breaking the graph."""
    compiler = getattr(sys.modules.get("torch"), "compiler", None)
    fn = getattr(compiler, "is_compiling", None)
    return fn if callable(fn) else _never


def _world_size(dist: Any) -> Callable[[Any], int]:
    def size(group: Any) -> int:
        try:
            return int(dist.get_world_size(group))
        except Exception:
            return 0

    return size


def _positions(fn: Callable[..., Any]) -> dict[str, int]:
    try:
        return {name: i for i, name in enumerate(inspect.signature(fn).parameters)}
    except (TypeError, ValueError):
        return {}


def _arg(args: tuple[Any, ...], kwargs: dict[str, Any], at: dict[str, int], name: str) -> Any:
    if name in kwargs:
        return kwargs[name]
    i = at.get(name, -1)
    return args[i] if 0 <= i < len(args) else None


def timed_collective(collective: Callable[..., Any], lazy: LazyPush, timer: Intervals,
                     works: AsyncWorks | None, spec: tuple[str, str, bool],
                     world_size: Callable[[Any], int],
                     always_async: bool = False) -> Callable[..., Any]:
    """Wrap one collective: count its bus bytes; time it when it blocks, or remember
    where its work runs when it is async (timed at its wait)."""
    kind, buffer_arg, is_shard = spec
    at = _positions(collective)
    compiling = _is_compiling()

    @functools.wraps(collective)
    def timed(*args: Any, **kwargs: Any) -> Any:
        if compiling():
            return collective(*args, **kwargs)
        try:
            buffer = _arg(args, kwargs, at, buffer_arg) if buffer_arg else None
            cuda = on_device(buffer)
            nbytes = 0
            if kind:
                n = world_size(_arg(args, kwargs, at, "group"))
                nbytes = bus_bytes(kind, tensor_bytes(buffer) * (n if is_shard else 1), n)
            if nbytes:
                lazy.push(ring.P2P_BYTES if kind == "send_recv" else ring.COLLECTIVE_BYTES,
                          nbytes)
            is_async = always_async or bool(_arg(args, kwargs, at, "async_op"))
        except Exception:  # never let the bookkeeping break the call
            return collective(*args, **kwargs)
        if is_async:
            work = collective(*args, **kwargs)
            if works is not None:
                works.issued(work, cuda)
            return work
        phase = 0 if cuda and timer.pool.on_side_stream() else ring.COLLECTIVE
        span = timer.begin(cuda, phase)
        try:
            return collective(*args, **kwargs)
        finally:
            timer.end(span, phase, nbytes)

    return timed


def tracked_batch(batch: Callable[..., Any], lazy: LazyPush,
                  works: AsyncWorks) -> Callable[..., Any]:
    """``batch_isend_irecv``: the bytes its sends carry (send/recv bus bytes: the bytes,
    counted once, on the sending side); its works are remembered so their waits are
    timed on the right clock."""

    @functools.wraps(batch)
    def tracked(p2p_op_list: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            tensors = [op.tensor for op in p2p_op_list]
            nbytes = tensor_bytes([op.tensor for op in p2p_op_list
                                   if getattr(op.op, "__name__", "") == "isend"])
            if nbytes:
                lazy.push(ring.P2P_BYTES, nbytes)
        except Exception:
            tensors = []
        result = batch(p2p_op_list, *args, **kwargs)
        cuda = on_device(tensors)
        for work in result or ():
            works.issued(work, cuda)
        return result

    return tracked


def timed_work_wait(wait: Callable[..., Any], timer: Intervals,
                    works: AsyncWorks) -> Callable[..., Any]:
    """``Work.wait`` bracketed where it waits: the compute stream (CUDA) or the host."""

    compiling = _is_compiling()

    @functools.wraps(wait)
    def timed(self: Any, *args: Any, **kwargs: Any) -> Any:
        if compiling():
            return wait(self, *args, **kwargs)
        cuda = works.waited(self)
        if cuda is None or (cuda and timer.pool.on_side_stream()):
            return wait(self, *args, **kwargs)  # not ours, or a wait that overlaps by design
        span = timer.begin(cuda)
        try:
            return wait(self, *args, **kwargs)
        finally:
            timer.end(span)

    return timed


def timed_wait(wait: Callable[..., Any], timer: Intervals,
               cuda: Callable[..., bool]) -> Callable[..., Any]:
    """Any other wait point (``wait_tensor``, FSDP2's waits) bracketed where it waits;
    ``cuda(*args)`` says whether it waits on a CUDA stream."""

    compiling = _is_compiling()

    @functools.wraps(wait)
    def timed(*args: Any, **kwargs: Any) -> Any:
        if compiling():
            return wait(*args, **kwargs)
        try:
            span = timer.begin(cuda(*args), mark=False)
        except Exception:
            return wait(*args, **kwargs)
        try:
            return wait(*args, **kwargs)
        finally:
            timer.end(span)

    return timed


def patch_functional_collectives(lazy: LazyPush, funcol: Any, pool: EventPool = EVENTS,
                                 group_size: Callable[[Any], int] | None = None) -> None:
    """Functional collectives (and DTensor, built on them), eager mode: bytes at issue,
    exposed wait at ``wait_tensor``. Inside a compiled graph neither runs in Python, so
    such collectives are not seen (torch 2.1-2.13 layout: ``wait_tensor`` and the four
    collectives as module functions, groups resolved by ``_resolve_group_name``)."""
    timer = Intervals(pool, lambda: lazy.push)
    size = group_size or _funcol_group_size(funcol)
    for name, spec in FUNCTIONAL.items():
        original = getattr(funcol, name, None)
        if original is not None:
            setattr(funcol, name, timed_collective(original, lazy, timer, None, spec, size,
                                                   always_async=True))
    wait = getattr(funcol, "wait_tensor", None)
    if wait is not None:
        funcol.wait_tensor = timed_wait(wait, timer, lambda tensor, *a, **k: on_device(tensor))
        COVERAGE["funcol"] = "wait_tensor (eager; not inside compiled graphs)"


def _funcol_group_size(funcol: Any) -> Callable[[Any], int]:
    """A functional collective's group (a group, mesh, ranks or name) to its size."""

    def size(group: Any) -> int:
        try:
            name = funcol._resolve_group_name(group, "")
            c10d = sys.modules["torch.distributed"].distributed_c10d
            return int(c10d._resolve_process_group(name).size())
        except Exception:
            return 0

    return size


def patch_fsdp2(lazy: LazyPush, module: Any, pool: EventPool = EVENTS) -> None:
    """FSDP2 (``fully_shard``): the compute stream's waits for an all-gather
    (``FSDPParamGroup.wait_for_unshard``, which also copies the gathered parameters
    out) and for the reduce-scatter at the end of backward (``finalize_backward``).
    Private API, present in torch 2.4-2.13; absent methods are left alone."""
    group = getattr(module, "FSDPParamGroup", None)
    if group is None:
        COVERAGE["fsdp2"] = "not timed: FSDPParamGroup not found in this torch"
        return
    timer = Intervals(pool, lambda: lazy.push)

    def cuda(self: Any, *args: Any, **kwargs: Any) -> bool:
        return getattr(getattr(self, "device", None), "type", None) == "cuda"

    for name in ("wait_for_unshard", "finalize_backward"):
        original = getattr(group, name, None)
        if original is not None:
            setattr(group, name, timed_wait(original, timer, cuda))
    COVERAGE["fsdp2"] = "wait_for_unshard, finalize_backward"


def patch_ddp(lazy: LazyPush, ddp: Any, pool: EventPool = EVENTS,
              queue_callback: Callable[[Callable[[], None]], None] | None = None) -> None:
    """Time DDP's gradient all-reduce: exposed wait through a comm hook.

    The user's own hook is wrapped when registered; otherwise a hook is registered at
    the first forward (after the user's chance) that sends the buckets through the
    default all-reduce until the job registers its own (DDP takes one hook, once: a job
    that registers it after a first forward, a dry run, gets its hook in that one's
    place, a built-in one as its Python twin). ``queue_callback`` is the autograd
    engine's (``Variable._execution_engine``, a private API present in torch
    1.x-2.13); without it DDP is not timed.
    """
    if queue_callback is None:
        queue_callback = _engine_queue_callback()
    if queue_callback is None:
        COVERAGE["ddp"] = "not timed: no autograd queue_callback in this torch"
        return
    timer = Intervals(pool, lambda: lazy.push)
    register, forward = ddp.register_comm_hook, ddp.forward
    enqueue = queue_callback

    def register_comm_hook(self: Any, state: Any, hook: Callable[..., Any]) -> Any:
        if getattr(self, "_gpuwatch_standing_in", False):  # (ours came first: the job's
            self._gpuwatch_standing_in = False              # takes its place, once)
            self._gpuwatch_hook = (state, hook)
            return None
        self._gpuwatch_hooked = True
        return register(self, state, timed_comm_hook(hook, timer, enqueue))

    def timed_forward(self: Any, *args: Any, **kwargs: Any) -> Any:
        if not getattr(self, "_gpuwatch_hooked", False):
            self._gpuwatch_hooked = True
            try:
                from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import (
                    allreduce_hook,
                )

                self._gpuwatch_hook = (self.process_group, allreduce_hook)
                register(self, None, timed_comm_hook(_standing_hook(self), timer, enqueue))
                self._gpuwatch_standing_in = True
            except Exception:  # a built-in hook already in place: leave it alone
                pass
        return forward(self, *args, **kwargs)

    ddp.register_comm_hook = functools.wraps(register)(register_comm_hook)
    builtin = getattr(ddp, "_register_builtin_comm_hook", None)
    if builtin is not None:

        def register_builtin_comm_hook(self: Any, comm_hook_type: Any) -> Any:
            twin = _python_twin(comm_hook_type)
            if getattr(self, "_gpuwatch_standing_in", False) and twin is not None:
                return register_comm_hook(self, self.process_group, twin)
            self._gpuwatch_hooked = True
            return builtin(self, comm_hook_type)

        ddp._register_builtin_comm_hook = functools.wraps(builtin)(register_builtin_comm_hook)
    ddp.forward = functools.wraps(forward)(timed_forward)
    COVERAGE["ddp"] = "last bucket ready to end of backward"


def _standing_hook(model: Any) -> Callable[[Any, Any], Any]:
    """The hook gpuwatch registers on a DDP ``model``: the one it holds now (the default
    all-reduce, until the job registers its own). It holds the model weakly: the model's
    reducer holds the hook, and a strong reference back would keep every DDP model (its
    parameters) alive for good."""
    held = weakref.ref(model)

    def hook(_: Any, bucket: Any) -> Any:
        state, inner = held()._gpuwatch_hook  # type: ignore[union-attr]  # (it is running)
        return inner(state, bucket)

    return hook


def _python_twin(comm_hook_type: Any) -> Callable[..., Any] | None:
    """The Python hook that does what a built-in DDP comm hook type does (its state: the
    process group); None for a type without one."""
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

    twins = {"ALLREDUCE": default_hooks.allreduce_hook,
             "FP16_COMPRESS": default_hooks.fp16_compress_hook}
    return twins.get(getattr(comm_hook_type, "name", ""))


def _engine_queue_callback() -> Callable[[Callable[[], None]], None] | None:
    torch = sys.modules.get("torch")
    engine = getattr(getattr(getattr(torch, "autograd", None), "Variable", None),
                     "_execution_engine", None)
    return getattr(engine, "queue_callback", None)


def timed_comm_hook(hook: Callable[..., Any], timer: Intervals,
                    queue_callback: Callable[[Callable[[], None]], None]) -> Callable[..., Any]:
    """A comm hook that, on the last bucket of a backward, opens an interval on the
    compute stream (or host clock) once that bucket's all-reduce is issued, and closes
    it when backward returns: after DDP's own end-of-backward callback, which makes the
    compute stream (or the host) wait for every bucket's all-reduce. That interval is
    the exposed wait. DDP queues its callback after this hook returns, so ours queues a
    second one from the first, which the engine runs after DDP's."""

    def timed(state: Any, bucket: Any) -> Any:
        future = hook(state, bucket)
        if bucket.is_last():
            try:
                span = timer.begin(on_device(bucket.buffer()), mark=False, nested=False,
                                   waiting=True)
                queue_callback(lambda: queue_callback(lambda: timer.end(span)))
            except Exception:
                pass
        return future

    timed.__annotations__ = {}  # DDP rejects any bucket annotation but dist.GradBucket
    return timed


def in_dataloader_worker() -> bool:
    """True inside a DataLoader worker process (which must stay untouched)."""
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


def patch_ddp_module(lazy: LazyPush, module: Any) -> None:
    """``torch.nn.parallel.distributed``: its DistributedDataParallel's all-reduce timed."""
    patch_ddp(lazy, module.DistributedDataParallel)


def patch_loader_batches(lazy: LazyPush, module: Any) -> None:
    """``torch.utils.data.dataloader``: each batch's loader and samples, the wait
    untimed (for an agent whose loop marks its own data)."""
    module._BaseDataLoaderIter.__next__ = timed_loader_next(
        module._BaseDataLoaderIter.__next__, lazy, timed=False)


# For an agent the job's own code started (``watch()``, a framework callback), which
# marks its own steps, samples and data: the collectives' timing, whose waits become
# the collective phase of its steps (a straggler's wait in DDP's all-reduce was none),
# and the DataLoader batches by loader, which tell the training loaders and their
# workers from an eval loader's and the job's other children.
OWN_AGENT_PATCHES: dict[str, Callable[[LazyPush, ModuleType], None]] = {
    "torch.utils.data.dataloader": patch_loader_batches,
    "torch.nn.parallel.distributed": patch_ddp_module,
    "torch.distributed": patch_distributed,
    "torch.distributed._functional_collectives": patch_functional_collectives,
    "torch.distributed.fsdp._fully_shard._fsdp_param_group": patch_fsdp2,  # torch >= 2.6
    "torch.distributed._composable.fsdp._fsdp_param_group": patch_fsdp2,  # torch 2.4-2.5
}
PATCHES: dict[str, Callable[[LazyPush, ModuleType], None]] = {
    "torch": patch_torch,
    "torch.utils.checkpoint": patch_activation_checkpoint,
    "torch.distributed": patch_distributed,
    "torch.distributed.checkpoint": patch_distributed_checkpoint,
    "safetensors.torch": patch_safetensors,
    "lightning.fabric.utilities.cloud_io": patch_lightning_save,
    "lightning_fabric.utilities.cloud_io": patch_lightning_save,
    "transformers.trainer": patch_hf_trainer,
    "torch.distributed._functional_collectives": patch_functional_collectives,
    "torch.distributed.fsdp._fully_shard._fsdp_param_group": patch_fsdp2,  # torch >= 2.6
    "torch.distributed._composable.fsdp._fsdp_param_group": patch_fsdp2,  # torch 2.4-2.5
    "torch.distributed.distributed_c10d": watch_process_group,
}
