"""Device time without syncing: CUDA events recorded on the hot path, read later.

An event pair brackets work on the current stream; the agent thread asks
``query()`` (non-blocking) and, once both are done, reads ``elapsed_time``.
Events are pooled: after warm-up a timed call allocates nothing.
"""

from __future__ import annotations

import sys
from collections import deque
from collections.abc import Callable
from typing import Any

MAX_POOLED = 1024


class EventPool:
    """Reusable timing events. ``factory`` makes one (``torch.cuda.Event(enable_timing=True)``
    by default; a fake in tests)."""

    def __init__(self, factory: Callable[[], Any] | None = None) -> None:
        self._factory = factory
        self._free: deque[Any] = deque()

    def pair(self) -> tuple[Any, Any]:
        free = self._free
        start = free.pop() if free else self._make()
        end = free.pop() if free else self._make()
        return start, end

    def release(self, *events: Any) -> None:
        if len(self._free) < MAX_POOLED:
            self._free.extend(events)

    def _make(self) -> Any:
        if self._factory is None:
            torch = sys.modules["torch"]
            return torch.cuda.Event(enable_timing=True)
        return self._factory()


def on_device(obj: Any) -> bool:
    """Whether a tensor (or the first of a list of tensors) lives on a CUDA device."""
    if isinstance(obj, (list, tuple)):
        obj = obj[0] if obj else None
    return bool(getattr(obj, "is_cuda", False))


class PendingTimings:
    """Event pairs waiting for the device (agent thread only): polled, never waited on."""

    def __init__(self, pool: EventPool, limit: int = 10_000) -> None:
        self._pool = pool
        self._pending: deque[tuple[int, Any, Any]] = deque()
        self._limit = limit
        self.dropped = 0

    def add(self, phase: int, start: Any, end: Any) -> None:
        if len(self._pending) >= self._limit:
            self._pending.popleft()
            self.dropped += 1
        self._pending.append((phase, start, end))

    def ready(self) -> list[tuple[int, float]]:
        """(phase, seconds) of every pair the device has finished, in order."""
        done = []
        while self._pending:
            phase, start, end = self._pending[0]
            if not end.query():
                break  # the stream runs in order: later pairs are not done either
            self._pending.popleft()
            done.append((phase, start.elapsed_time(end) / 1000.0))
            self._pool.release(start, end)
        return done
