"""The public hot-path API for a hand-written loop.

    monitor = gpuwatch.watch(job="gpt-small")
    for batch in loader:
        with monitor.step(samples=len(batch)):
            with monitor.phase("data"): ...
            with monitor.phase("compute"): ...
            with monitor.phase("optimizer"): ...

Each ``with`` costs two ring pushes (a ``perf_counter()`` and a few list stores);
nothing here syncs the GPU, takes a lock, allocates a record or does I/O.
"""

from __future__ import annotations

import itertools
import os
import sys
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

from gpuwatch.agent import Agent
from gpuwatch.config import ConfigError, Settings, disabled, load_settings
from gpuwatch.faults import log
from gpuwatch.instrument import ring
from gpuwatch.instrument.attach import install_own_agent_hooks
from gpuwatch.instrument.attach import installed as hooks_installed
from gpuwatch.instrument.identity import Identity, explicit
from gpuwatch.instrument.patches import in_dataloader_worker
from gpuwatch.instrument.sizes import saved_at


class Span:
    """A reusable context manager that marks an interval in the ring."""

    __slots__ = ("_close", "_open", "_push")

    def __init__(self, push: Any, open_code: int, close_code: int) -> None:
        self._push = push
        self._open = open_code
        self._close = close_code

    def __enter__(self) -> None:
        self._push(self._open)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._push(self._close)


class StepSpan(Span):
    """A step: its end carries the step's ordinal (lost marks leave a gap in the
    numbers); also marks the type of an exception leaving it (an OOM becomes an event)."""

    __slots__ = ("_ends",)

    def __init__(self, push: Any) -> None:
        super().__init__(push, ring.STEP_BEGIN, ring.STEP_END)
        self._ends = itertools.count(1)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._push(self._close, next(self._ends))
        if exc_type is not None:
            self._push(ring.ERROR, exc_type.__name__)


class CheckpointSpan(Span):
    """A checkpoint save to ``path``: on exit, the bytes it wrote (``sizes.saved_at``: a
    file, or what a directory gained since the save began)."""

    __slots__ = ("_path", "_since")

    def __init__(self, push: Any, path: str | os.PathLike[str]) -> None:
        super().__init__(push, ring.CHECKPOINT, -ring.CHECKPOINT)
        self._path = path
        self._since = 0.0

    def __enter__(self) -> None:
        self._since = time.time()
        super().__enter__()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._push(ring.CHECKPOINT_TARGET, saved_at(self._path, self._since))
        self._push(self._close)


class Monitor:
    """Marks steps and phases of one training process for its agent (into its ring, or
    through ``push`` where the agent starts at the first mark)."""

    def __init__(self, agent: Agent, push: Callable[..., None] | None = None) -> None:
        self.agent = agent
        push = agent.ring.push if push is None else push
        self._push = push
        self._step = StepSpan(push)
        self._phases = {name: Span(push, code, -code) for name, code in ring.PHASES.items()}
        self._noop = Span(lambda code, value=None: None, 0, 0)

    def step(self, samples: int | None = None, tokens: int | None = None) -> Span:
        """The context of one training step; ``samples``/``tokens`` count its batch.
        Counts are checked by the agent, never here (a tensor is not read: no sync)."""
        if samples is not None:
            self._push(ring.SAMPLES, samples)
        if tokens is not None:
            self._push(ring.TOKENS, tokens)
        return self._step

    def phase(self, name: str) -> Span:
        """The context of a phase: data, compute (or forward, backward), optimizer,
        checkpoint, collective, recompute."""
        try:
            span = self._phases.get(name)
        except Exception:  # an unhashable name, one whose hash or == raises: misuse,
            span = None  # never an exception
        if span is None:
            self.agent.faults.record("api", f"unknown phase {_shown(name)}; choose from "
                                     + ", ".join(ring.PHASES))
            return self._noop
        return span

    def checkpoint(self, path: str | os.PathLike[str] | None = None) -> Span:
        """The context of a checkpoint save; its size is read from ``path`` afterwards."""
        if not isinstance(path, (str, os.PathLike)):
            return self._phases["checkpoint"]
        return CheckpointSpan(self._push, path)

    def count(self, samples: int | None = None, tokens: int | None = None) -> None:
        """Add samples or tokens to the current step (when not known at its start)."""
        if samples is not None:
            self._push(ring.SAMPLES, samples)
        if tokens is not None:
            self._push(ring.TOKENS, tokens)

    def summary(self) -> dict[str, float]:
        """The latest figures for a tracker: ``gpuwatch/step_seconds``, each phase's
        ``..._share_ratio``, samples/tokens per second, the GPU's newest reading and
        ``gpuwatch/<verdict>/<detector>`` per finding (1 active, 0 resolved). The agent
        refreshes them once a sample interval; this only copies a dict, so log it at
        your logger's cadence. Empty until the agent's first refresh."""
        return dict(self.agent.figures)

    def stop(self, failed: bool = False) -> None:
        """Stop the agent: the run log is complete when this returns (≤ 2 s, or up to
        exporter.final_scrape_s more on a normal end for a last scrape; none when the job
        ``failed``)."""
        self.agent.stop(failed=failed)

    def __enter__(self) -> Monitor:
        return self

    def __exit__(self, kind: object, *exc: object) -> None:
        self.stop(failed=kind is not None)


_current: Monitor | None = None
_starting = threading.RLock()  # one thread starts the agent; another finds it started


def _forget_after_fork() -> None:
    """A forked child does not run its parent's agent: its next ``watch`` (or first
    zero-code mark) starts its own (its lock a fresh one: another thread of the parent
    may have held it at the fork)."""
    global _current, _starting
    _current = None
    _starting = threading.RLock()


os.register_at_fork(after_in_child=_forget_after_fork)


class CopiedAsSettings:
    """A framework callback that copies as its settings alone: a copy (``deepcopy``,
    ``pickle``: a hyperparameter search's trials, a spawned rank) starts unattached and
    attaches an agent of its own when it first trains; the running agent (its threads
    and locks) stays this process's."""

    _settings: dict[str, Any]

    def __reduce__(self) -> tuple[Any, ...]:
        return (_from_settings, (type(self), self._settings))


def _from_settings(cls: type[Any], settings: dict[str, Any]) -> Any:
    return cls(**settings)


def attach(settings: dict[str, Any], *, rank: int, local_rank: int,
           world_size: int) -> Monitor:
    """``watch`` for a framework adapter that knows this process's place in the job."""
    return _start(settings, lambda job: explicit(job, rank, local_rank, world_size))


def running() -> Monitor | None:
    """This process's monitor while its agent runs (whoever started it: ``watch``, an
    adapter, ``gpuwatch run``'s hooks), else None."""
    return _current if _current is not None and not _current.agent.stopped else None


def owns_next_agent() -> bool:
    """Whether an adapter's ``attach`` now starts an agent of its own, to stop at its
    loop's end: none runs, and ``gpuwatch run``'s hooks (whose agent is the process's,
    whoever starts it) are not installed."""
    return running() is None and not hooks_installed()


def watch(**settings: Any) -> Monitor:
    """Attach gpuwatch to this training process and start its agent.

    Keyword arguments override configuration (see ``gpuwatch.config.Settings``).
    A process has one agent: a second call returns the running monitor. Bad
    configuration is logged in one line and yields an inert monitor; it never
    raises into the job.
    """
    return _start(settings, None)


def start_agent() -> Callable[..., None]:
    """Start (or find) this process's agent; returns where the zero-code hooks push marks
    (``instrument.attach.install`` calls it at the first mark)."""
    return watch().agent.ring.push


def _start(settings: dict[str, Any],
           identity: Callable[[str], Identity] | None) -> Monitor:
    """Start this process's one agent; ``identity`` (given the job name) when the
    caller knows it, else the agent resolves it (``instrument.identity``). Threads that
    call at once get the one agent the first starts."""
    with _starting:
        return _start_one(settings, identity)


def _start_one(settings: dict[str, Any],
               identity: Callable[[str], Identity] | None) -> Monitor:
    global _current
    if _current is not None and not _current.agent.stopped:
        return _current
    if disabled(os.environ, settings):
        return _inert()
    if rerunning_main():
        return _FirstMark(settings, identity).monitor
    try:
        loaded = load_settings(**settings)
        if not loaded.enabled:
            return _inert()
        agent = Agent(loaded, identity=identity(loaded.job) if identity else None)
    except ConfigError as exc:
        log.error("%s; gpuwatch is off for this run", exc)
        return _inert()
    except Exception as exc:  # whatever else: the job runs on, unmonitored
        log.error("gpuwatch could not start (%s: %s); gpuwatch is off for this run",
                  type(exc).__name__, exc)
        return _inert()
    _current = monitor = Monitor(agent)
    try:
        agent.start()
        install_own_agent_hooks(agent.ring.push)  # (its own steps; collectives, loaders)
    except Exception as exc:  # no thread to be had, ...: the job runs on, unmonitored
        log.error("gpuwatch could not start (%s: %s); gpuwatch is off for this run",
                  type(exc).__name__, exc)
        _current = None
        return _inert()
    return monitor


def _inert() -> Monitor:
    """A monitor whose marks go nowhere: its agent never starts, reads nothing, writes nothing."""
    return Monitor(Agent(Settings.model_construct(enabled=False, nvml=False,
                                                  ring_capacity=INERT_RING),
                         nvml_library=None, memory_stats=None, environ={}))


INERT_RING = 1024  # marks an inert agent's ring holds (none is ever read)


def rerunning_main() -> bool:
    """Whether multiprocessing is running the main module again in a child it starts
    (spawn, forkserver: a DataLoader worker's or an ``mp.spawn`` rank's start-up): a
    ``watch()`` at the module's top level is then the parent program's, not yet this
    child's."""
    process = sys.modules.get("multiprocessing.process")
    try:
        return process is not None and bool(getattr(process.current_process(),
                                                    "_inheriting", False))
    except Exception:  # (a multiprocessing without it: the child is past its start-up)
        return False


class _FirstMark:
    """Where a monitor made while multiprocessing ran the main module again in a child
    (``rerunning_main``) marks: its first mark once that is over, in a process that is
    not a DataLoader worker (an ``mp.spawn`` rank's first step), starts the process's
    agent, the monitor's from then on; a DataLoader worker, which marks nothing, starts
    none (no run log, no port of its own)."""

    def __init__(self, settings: dict[str, Any],
                 identity: Callable[[str], Identity] | None) -> None:
        self._settings = settings
        self._identity = identity
        self._push: Callable[..., None] | None = None
        self.monitor = Monitor(_inert().agent, self.push)

    def push(self, code: int, value: Any = None) -> None:
        push = self._push
        if push is None:
            if rerunning_main() or in_dataloader_worker():
                return
            started = _start(self._settings, self._identity)
            self.monitor.agent = started.agent
            push = self._push = started.agent.ring.push
        push(code, value)


def _shown(value: object) -> str:
    """``value`` as a fault names it: its repr, cut to 60 characters (its type's name
    where the repr raises: a proxy whose target is gone)."""
    try:
        return f"{value!r:.60}"
    except Exception:
        return f"<a {type(value).__name__} whose repr raises>"
