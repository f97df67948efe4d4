"""The hot-path ring buffer: training code pushes marks, the agent thread drains them.

A push is one ``perf_counter()`` and five list stores into preallocated slots:
no lock, no allocation beyond the float it stores, no I/O. Slots are claimed
with ``itertools.count`` (atomic under the GIL); a writer marks its slot as
being written, fills it and commits it by writing the sequence number last
(a seqlock), so the reader never yields a half-written or overwritten slot and
knows exactly how many marks it missed when writers lap it: it says so with a
``LOST`` mark in the stream, where the gap is.

Steps are numbered where they end (``STEP_END``/``STEP_BOUNDARY`` carry the
ordinal from their producer's ``itertools.count``), so marks lost in a lap leave
missing step numbers, never renumbered ones.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from time import perf_counter
from typing import Any

from gpuwatch.vocabulary import Phase

# Mark codes. A phase code P opens with +P and closes with -P.
STEP_BEGIN = 100
STEP_END = 101  # explicit end of a step (the `with monitor.step()` API)
STEP_BOUNDARY = 102  # implicit end of a step (optimizer post-hook), ignored once explicit
SAMPLES = 103  # value: samples in the batch just fetched
TOKENS = 104  # value: tokens in the step
CHECKPOINT_TARGET = 105  # value: bytes a save wrote
ACT_CKPT = 106  # one activation-checkpointed region entered (forward)
ERROR = 107  # value: exception type name raised out of a step
COLLECTIVE_BYTES = 108  # value: bus bytes of a collective (nccl-tests convention)
PHASE_SECONDS = 109  # value: (phase code, seconds) of a host interval timed elsewhere (a wait)
TOTAL_STEPS = 110  # value: the steps the run plans (from the framework or the user)
DEVICE_TIMING = 111  # value: (phase or 0, start event, end event, bus bytes) read off the hot path
LOST = 112  # from drain, never pushed: value marks were lost here (writers lapped the reader)
_WRITING = -2  # a slot's sequence while a writer fills it
EVAL_BATCH = 113  # an evaluation batch done (a framework's eval hook)
BACKGROUND_SAVE = 114  # value: (seconds, bytes) of a save written off the training thread
COLLECTIVE_DURATION = 115  # value: (seconds, bus bytes) of one blocking collective (host clock)
LOADER_BATCH = 116  # value: (*Loader, samples) of the DataLoader batch just fetched
Loader = tuple[int, ...]  # a DataLoader as its batches name it: its dataset's and sampler's ids
WAITING = 117  # value: 1 a wait timed elsewhere begins (DDP's, on the host), 0 it ends
P2P_BYTES = 118  # value: bus bytes of a point-to-point send (collective bytes too)
# value: (phase code, seconds, a save's ``sizes.saved_at`` or None) an adapter timed between
# a framework's hooks: counted only where the patches timed none of that phase in the step
ADAPTER_SECONDS = 119
LOOP_END = 120  # a framework's training loop ended: its explicit steps end with it
# value: (*Loader, samples) of a DataLoader batch whose wait the loop times itself
# (``watch()``, a callback): its loader alone, no wait of its own
LOADER_BATCH_UNTIMED = 121
# value: (*Loader, tokens) of the DataLoader batch about to be noted: its token ids' count
# (``sizes.token_ids``), for a step whose loop counts none itself
LOADER_TOKENS = 122

# Phase codes (``vocabulary.Phase``) as plain ints: the hot path pushes them.
DATA = int(Phase.DATA)
COMPUTE = int(Phase.COMPUTE)
FORWARD = int(Phase.FORWARD)
BACKWARD = int(Phase.BACKWARD)
OPTIMIZER = int(Phase.OPTIMIZER)
CHECKPOINT = int(Phase.CHECKPOINT)
COLLECTIVE = int(Phase.COLLECTIVE)
RECOMPUTE = int(Phase.RECOMPUTE)

PHASES: dict[str, int] = {p.label: int(p) for p in Phase}  # name -> code

Mark = tuple[int, float, Any]


class MarkRing:
    """A bounded multi-producer, single-consumer ring of (code, time, value) marks.

    ``capacity`` is rounded up to a power of two. Time is ``perf_counter()``
    seconds. When producers lap the consumer the oldest marks are lost and
    counted in ``dropped`` and announced by a ``LOST`` mark where they were.
    """

    __slots__ = (
        "_claim",
        "_codes",
        "_half_mask",
        "_mask",
        "_read",
        "_seqs",
        "_times",
        "_values",
        "_wake",
        "capacity",
        "dropped",
    )

    def __init__(self, capacity: int = 65536, wake: threading.Event | None = None) -> None:
        size = 1
        while size < max(capacity, 16):
            size <<= 1
        self.capacity = size
        self._mask = size - 1
        self._half_mask = (size >> 1) - 1
        self._codes = [0] * size
        self._times = [0.0] * size
        self._values: list[Any] = [None] * size
        self._seqs = [-1] * size
        self._claim = itertools.count()
        self._read = 0
        self._wake = wake
        self.dropped = 0

    def push(self, code: int, value: Any = None) -> None:
        """Record ``code`` at the current ``perf_counter()`` with an optional value."""
        seq = next(self._claim)
        slot = seq & self._mask
        self._seqs[slot] = _WRITING
        self._codes[slot] = code
        self._times[slot] = perf_counter()
        self._values[slot] = value
        self._seqs[slot] = seq
        if not seq & self._half_mask and self._wake is not None:
            self._wake.set()

    def pending(self) -> bool:
        """Whether a committed (or lapped) mark waits to be drained."""
        return self._seqs[self._read & self._mask] >= self._read

    def drain(self) -> Iterator[Mark]:
        """Yield the committed marks not yet read, oldest first (consumer side only).

        At most ``capacity`` marks per call, so a consumer slower than its producers
        works in bounded batches (and the ring, not the consumer, absorbs the excess).
        Marks lost to a lap are counted in ``dropped`` and yielded as one
        ``(LOST, time of the next mark, count)`` before the marks that follow them.
        """
        mask, seqs = self._mask, self._seqs
        codes, times, values = self._codes, self._times, self._values
        read = self._read
        budget = self.capacity
        lost = 0
        while budget:
            slot = read & mask
            seq = seqs[slot]
            if seq < read:
                break  # not yet written (or being written)
            if seq > read:
                # Lapped: everything between read and the oldest live slot is lost.
                oldest = max(seq - self.capacity + 1, read + 1)
                lost += oldest - read
                read = oldest
                continue
            code, t, value = codes[slot], times[slot], values[slot]
            if seqs[slot] != seq:  # a writer took the slot while we copied it
                continue
            if lost:
                self.dropped += lost
                self._read = read
                yield LOST, t, lost
                lost = 0
            read += 1
            budget -= 1
            self._read = read
            yield code, t, value
        if lost:  # the marks after the gap are not committed yet: report it next time
            self._read = read - lost
