"""Collective time without syncing: the one home of the timing events and of what an
interval between two of them means.

An interval opens at one point of the training code and closes at another:

- on a CUDA stream, as a pair of pooled timing events recorded on that stream; the
  agent thread asks ``query()`` (non-blocking) and, once the end is done, reads
  ``elapsed_time``. The time between two events on the *compute* stream around a
  point where that stream waits for a collective (``Work.wait``, ``wait_tensor``,
  DDP's end of backward, FSDP2's wait for an all-gather) is exactly the exposed
  wait: the end event completes at ``max(compute reaches the wait, collective
  done)``, so overlapped communication counts zero and the rest counts in full.
  Around a blocking collective issued on a stream, the interval is the
  collective's full device duration (which is also exposed when that stream is
  the compute stream; not when it is a side stream, as with FSDP2's all-gather);
- on the host clock, for CPU tensors (gloo), where the call itself blocks.

Events are pooled: after warm-up a timed call allocates nothing.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gpuwatch.instrument import ring

MAX_POOLED = 1024
Push = Callable[..., None]

class EventPool:
    """Reusable timing events. ``factory`` makes one (``torch.cuda.Event(enable_timing=True)``
    by default); ``current_stream``/``default_stream`` name streams (torch.cuda's by
    default). Tests pass fakes that keep a device clock."""

    def __init__(self, factory: Callable[[], Any] | None = None,
                 current_stream: Callable[[], Any] | None = None,
                 default_stream: Callable[[], Any] | None = None) -> None:
        self._factory = factory
        self._current = current_stream
        self._default = default_stream
        self._free: deque[Any] = deque()

    def take(self) -> Any:
        return self._free.pop() if self._free else self._make()

    def pair(self) -> tuple[Any, Any]:
        return self.take(), self.take()

    def release(self, *events: Any) -> None:
        if len(self._free) < MAX_POOLED:
            self._free.extend(events)

    def stream(self) -> Any:
        """The current stream (where the next event would be recorded)."""
        if self._current is None:
            return sys.modules["torch"].cuda.current_stream()
        return self._current()

    def on_side_stream(self) -> bool:
        """Whether work is being issued on a stream other than the device's default one
        (a communication stream: what runs there overlaps by design)."""
        if self._default is None:
            cuda = sys.modules["torch"].cuda
            return bool(cuda.current_stream() != cuda.default_stream())
        return bool(self._current is not None and self._current() != self._default())

    def _make(self) -> Any:
        if self._factory is None:
            torch = sys.modules["torch"]
            return torch.cuda.Event(enable_timing=True)
        return self._factory()


EVENTS = EventPool()  # CUDA timing events, shared by the step assembler and the collective hooks


def on_device(obj: Any) -> bool:
    """Whether a tensor (or the first of a list of tensors) lives on a CUDA device."""
    if isinstance(obj, (list, tuple)):
        obj = obj[0] if obj else None
    return bool(getattr(obj, "is_cuda", False))


@dataclass(slots=True)
class Span:
    """An open interval: a recorded start event and its stream, or a host start time;
    ``inner`` when it opened inside another on the same thread (it then counts nothing:
    FSDP2's wait_for_unshard calls Work.wait, and the wait is counted once)."""

    start: Any
    stream: Any
    t0: float
    marked: bool  # host intervals: whether an open mark was pushed (hang detection sees it)
    tracked: bool = False  # counted in this thread's open intervals
    inner: bool = False
    waiting: bool = False  # host intervals: a WAITING mark was pushed (see ``begin``)


_open = threading.local()  # intervals open on this thread (begin and end in one call)


class Intervals:
    """Opens and closes intervals and hands them to the agent as marks.

    Closed device intervals become ``DEVICE_TIMING`` marks (phase, start, end, bus
    bytes); host intervals become a phase close (or ``PHASE_SECONDS``) plus, for a
    blocking collective, ``COLLECTIVE_DURATION`` (seconds, bus bytes). ``phase`` 0
    means the interval is a full collective duration that nothing waited on.
    """

    def __init__(self, pool: EventPool, push: Callable[[], Push]) -> None:
        self.pool = pool
        self._push = push  # the hooks' current push (it changes once the agent starts)

    def begin(self, cuda: bool, phase: int = ring.COLLECTIVE, mark: bool = True,
              nested: bool = True, waiting: bool = False) -> Span:
        """Open an interval now: on the current stream when ``cuda``, else on the host
        (``mark``: push the phase open, so a wait that never ends shows as open).
        ``nested``: it closes in the same call on the same thread, so an interval inside
        it is not counted twice (False for one that closes elsewhere, as DDP's).
        ``waiting``: a host interval not marked as a phase (one that may never close
        where it should) still shows as a wait in progress (``WAITING``) until it closes
        or the step ends: a rank blocked there reads as waiting in a collective."""
        depth = getattr(_open, "depth", 0)
        if nested and depth:
            span = Span(None, None, 0.0, False, inner=True)
        elif cuda:
            start = self.pool.take()
            stream = self.pool.stream()
            start.record(stream)
            span = Span(start, stream, 0.0, False)
        else:
            if mark and phase:
                self._push()(phase)
            elif waiting:
                self._push()(ring.WAITING, 1)
            span = Span(None, None, time.perf_counter(), mark and bool(phase),
                        waiting=waiting and not (mark and phase))
        if nested:
            span.tracked = True
            _open.depth = depth + 1
        return span

    def end(self, span: Span, phase: int = ring.COLLECTIVE, nbytes: int = 0) -> None:
        """Close ``span`` on its own stream (or the host clock). ``nbytes``: the bus bytes
        of a collective whose full duration this interval is (0 for a pure wait). Call
        it exactly once per ``begin`` made with ``nested``."""
        if span.tracked:
            _open.depth -= 1
        if span.inner:
            return
        push = self._push()
        if span.start is not None:
            end = self.pool.take()
            end.record(span.stream)
            push(ring.DEVICE_TIMING, (phase, span.start, end, nbytes))
            return
        seconds = time.perf_counter() - span.t0
        if span.waiting:
            push(ring.WAITING, 0)
        if span.marked:
            push(-phase)
        elif phase:
            push(ring.PHASE_SECONDS, (phase, seconds))
        if nbytes:
            push(ring.COLLECTIVE_DURATION, (seconds, nbytes))


@dataclass(frozen=True, slots=True)
class DeviceInterval:
    """A finished device interval: its phase (0: none), seconds, bus bytes when it is a
    collective's full duration, and the step it was recorded in."""

    phase: int
    seconds: float
    nbytes: int
    step: int


MAX_PENDING = 10_000  # event pairs waiting for the device; beyond, the oldest are dropped


class PendingTimings:
    """Event pairs waiting for the device (agent thread only): polled, never waited on."""

    def __init__(self, pool: EventPool, limit: int = MAX_PENDING) -> None:
        self._pool = pool
        self._pending: deque[tuple[int, Any, Any, int, int]] = deque()
        self._limit = limit
        self.dropped = 0

    def add(self, phase: int, start: Any, end: Any, nbytes: int = 0, step: int = 0) -> None:
        if len(self._pending) >= self._limit:
            self._pending.popleft()
            self.dropped += 1
        self._pending.append((phase, start, end, nbytes, step))

    def oldest_step(self) -> int | None:
        """The step of the oldest interval the device has not finished (None: none)."""
        return self._pending[0][4] if self._pending else None

    def ready(self) -> list[DeviceInterval]:
        """Every pair the device has finished, in the order they were recorded. A pair
        not yet done holds back the ones after it (one stream runs in order; across
        streams this only delays a reading, never loses it)."""
        done = []
        while self._pending:
            phase, start, end, nbytes, step = self._pending[0]
            if not end.query():
                break
            self._pending.popleft()
            done.append(DeviceInterval(phase, max(start.elapsed_time(end), 0.0) / 1000.0,
                                       nbytes, step))
            self._pool.release(start, end)
        return done
