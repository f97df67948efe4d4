"""The CUDA caching allocator, read from the agent thread (never per step).

``memory_stats`` is passed in: ``torch.cuda.memory_stats`` in a job, a fake in tests.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from gpuwatch.records import Event, Record, Sample

# memory_stats() key -> sample key
_KEYS = {
    "allocated_bytes.all.current": "allocator_allocated_bytes",
    "allocated_bytes.all.peak": "allocator_allocated_peak_bytes",
    "reserved_bytes.all.current": "allocator_reserved_bytes",
    "reserved_bytes.all.peak": "allocator_reserved_peak_bytes",
    "inactive_split_bytes.all.current": "allocator_inactive_split_bytes",
    "num_alloc_retries": "allocator_alloc_retries_total",
    "num_ooms": "allocator_ooms_total",
}


# OOMs already told in this process, by device: ``num_ooms`` counts for the whole
# process, and a later agent in it (a second fit, the next trial) must not tell them again
TOLD_OOMS: dict[int | None, float] = {}


class AllocatorProbe:
    """One Sample per read, plus an ``oom`` Event whenever ``num_ooms`` rises
    (OOMs the job caught and survived are still seen this way). The counter starts with
    the process: OOMs before the first read that no earlier probe in the process told
    (``told``: device -> count; a batch too big for the card, tried and cut before the
    agent's first read) are told at it."""

    def __init__(self, memory_stats: Callable[[], Mapping[str, Any]], rank: int,
                 gpu: int | None, told: dict[int | None, float] = TOLD_OOMS) -> None:
        self._memory_stats = memory_stats
        self.rank = rank
        self.gpu = gpu
        self._told = told

    def sample(self, now: float, mono: float) -> list[Record]:
        """What the allocator says at ``now`` (``mono`` unused: nothing here is paced)."""
        stats = self._memory_stats()
        if not stats:
            return []  # CUDA not initialised yet, or nothing allocated
        values = {key: float(stats[src]) for src, key in _KEYS.items() if src in stats}
        out: list[Record] = [Sample(self.rank, now, "allocator", values, gpu=self.gpu)]
        ooms = values.get("allocator_ooms_total")
        if ooms is not None:
            before = self._told.get(self.gpu, 0.0)
            if ooms > before:
                out.append(Event(self.rank, now, "oom",
                                 {"count": int(ooms - before), "source": "allocator"}))
            self._told[self.gpu] = ooms  # (a reset of the stats starts it again)
        return out


def torch_memory_stats(device: int) -> Callable[[], Mapping[str, Any]] | None:
    """``torch.cuda.memory_stats(device)``, or None without CUDA.

    Never initialises CUDA: until the job has done so, the reader returns nothing.
    The device is explicit because the current CUDA device is per thread.
    """
    import sys

    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return None

    def read() -> Mapping[str, Any]:
        if not torch.cuda.is_initialized():
            return {}
        stats: Mapping[str, Any] = torch.cuda.memory_stats(device)
        return stats

    return read
