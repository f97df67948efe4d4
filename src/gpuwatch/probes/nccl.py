"""NCCL's own per-collective timing, where the job turned it on: the flight recorder
(``TORCH_FR_BUFFER_SIZE`` or ``TORCH_NCCL_TRACE_BUFFER_SIZE`` > 0) keeps each
collective's ``duration_ms`` when ``TORCH_NCCL_ENABLE_TIMING=1``.

Read from the agent thread at most once a second, without stack traces (which are the
costly part of a dump). Each completed collective is counted once: its full device
duration and its bus bytes (nccl-tests convention) become cumulative counters, from
which detectors take achieved bus bandwidth over any window.
"""

from __future__ import annotations

import json
import pickle
import sys
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from gpuwatch.records import Sample
from gpuwatch.vocabulary import MIN_BANDWIDTH_BYTES, bus_bytes

MIN_INTERVAL_S = 1.0
SEEN_LIMIT = 8192
# torch dtype names as the flight recorder writes them -> bytes per element
DTYPE_BYTES = {"Float": 4, "Double": 8, "Half": 2, "BFloat16": 2, "Int": 4, "Long": 8,
               "Short": 2, "Char": 1, "Byte": 1, "Bool": 1, "Float8_e4m3fn": 1,
               "Float8_e5m2": 1, "ComplexFloat": 8}
# profiling name fragment -> (bus-bandwidth kind, buffer: "input" or "output")
KINDS = (("all_reduce", ("all_reduce", "input")), ("allreduce", ("all_reduce", "input")),
         ("allgather", ("all_gather", "output")), ("all_gather", ("all_gather", "output")),
         ("reduce_scatter", ("reduce_scatter", "input")),
         ("all_to_all", ("all_to_all", "input")), ("alltoall", ("all_to_all", "input")),
         ("broadcast", ("broadcast", "input")), ("reduce", ("reduce", "input")),
         ("send", ("send_recv", "input")), ("recv", ("send_recv", "input")))


def timing_setting(environ: Mapping[str, str]) -> tuple[bool, str]:
    """Whether NCCL's own collective timing is on in this environment, and why (not)."""
    timing = environ.get("TORCH_NCCL_ENABLE_TIMING", "").lower() in ("1", "true", "yes")
    size = environ.get("TORCH_FR_BUFFER_SIZE") or environ.get("TORCH_NCCL_TRACE_BUFFER_SIZE")
    try:
        recorder = int(size or 0) > 0
    except ValueError:
        recorder = False
    if timing and recorder:
        return True, "on (TORCH_NCCL_ENABLE_TIMING=1, flight recorder buffer set)"
    missing = [name for name, ok in (("TORCH_NCCL_ENABLE_TIMING=1", timing),
                                     ("TORCH_FR_BUFFER_SIZE>0", recorder)) if not ok]
    return False, "off (set " + " and ".join(missing) + " for per-collective durations)"


def default_dump() -> Callable[[], bytes] | None:
    """torch's flight-recorder dump (torch 2.3-2.13: ``_dump_nccl_trace``; newer builds
    also ``_dump_fr_trace``), without stack traces; None where torch has neither."""
    c10d = sys.modules.get("torch._C._distributed_c10d")
    fn = getattr(c10d, "_dump_nccl_trace", None) or getattr(c10d, "_dump_fr_trace", None)
    if fn is None:
        return None

    def dump() -> bytes:
        return bytes(fn(includeCollectives=True, includeStackTraces=False, onlyActive=False))

    return dump


class FlightRecorderProbe:
    """Cumulative NCCL-timed collectives (source ``nccl``): their count, and the seconds
    and bus bytes of those of ``MIN_BANDWIDTH_BYTES`` or more (the achieved bandwidth's)."""

    def __init__(self, rank: int, dump: Callable[[], bytes]) -> None:
        self.rank = rank
        self._dump = dump
        self._last = float("-inf")
        self._seen: set[int] = set()
        self._order: deque[int] = deque()
        self.count = 0
        self.seconds = 0.0
        self.bytes = 0

    def sample(self, now: float, mono: float) -> list[Sample]:
        if mono - self._last < MIN_INTERVAL_S:
            return []
        self._last = mono
        data = pickle.loads(self._dump())  # torch's own dump, made in this process
        sizes = group_sizes(data.get("pg_config") or {})
        for entry in data.get("entries") or ():
            self._take(entry, sizes)
        if not self.count:
            return []
        return [Sample(self.rank, now, "nccl", {
            "nccl_collectives_timed_total": float(self.count),
            "nccl_collective_seconds_total": self.seconds,
            "nccl_bus_bytes_total": float(self.bytes)})]

    def _take(self, entry: dict[str, Any], sizes: dict[str, int]) -> None:
        record = entry.get("record_id")
        duration = entry.get("duration_ms")
        if not isinstance(record, int) or duration is None or record in self._seen:
            return
        if entry.get("state") != "completed":
            return
        self._seen.add(record)
        self._order.append(record)
        if len(self._order) > SEEN_LIMIT:
            self._seen.discard(self._order.popleft())
        self.count += 1
        nbytes = entry_bus_bytes(entry, sizes)
        if nbytes >= MIN_BANDWIDTH_BYTES:  # (the achieved bandwidth's: no small ones)
            self.seconds += float(duration) / 1000.0
            self.bytes += nbytes


def group_sizes(pg_config: dict[str, Any]) -> dict[str, int]:
    """Process-group name -> its number of ranks, from the dump's ``pg_config``."""
    out = {}
    for name, cfg in pg_config.items():
        try:
            out[str(name)] = len(json.loads(cfg.get("ranks", "[]")))
        except (ValueError, AttributeError, TypeError):
            continue
    return out


def entry_bus_bytes(entry: dict[str, Any], sizes: dict[str, int]) -> int:
    """Bus bytes of one recorded collective (0 when its kind or group is unknown)."""
    name = str(entry.get("profiling_name", "")).lower()
    kind = next((k for fragment, k in KINDS if fragment in name), None)
    group = entry.get("process_group") or ("", "")
    n = sizes.get(str(group[0]), next(iter(sizes.values())) if len(sizes) == 1 else 0)
    if kind is None or n == 0:
        return 0
    which = kind[1]
    total = 0
    for shape, dtype in zip(entry.get(f"{which}_sizes") or [],
                            entry.get(f"{which}_dtypes") or [], strict=False):
        count = 1
        for dim in shape:
            count *= int(dim)
        total += count * DTYPE_BYTES.get(str(dtype), 0)
    return bus_bytes(kind[0], total, n)
