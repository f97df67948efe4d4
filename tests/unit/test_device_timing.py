"""Collectives on CUDA tensors are timed with events read later, never by syncing:
with fake events and tensors (no GPU here), the bookkeeping is exact."""

from __future__ import annotations

from typing import Any

from gpuwatch.instrument import ring
from gpuwatch.instrument.device import EventPool, PendingTimings, on_device
from gpuwatch.instrument.patches import LazyPush, timed_collective
from gpuwatch.instrument.ring import MarkRing
from gpuwatch.instrument.steps import StepAssembler
from gpuwatch.records import Record, Step


class FakeEvent:
    """A CUDA event stand-in: the "device" finishes when the test says so."""

    made = 0

    def __init__(self) -> None:
        FakeEvent.made += 1
        self.recorded = 0
        self.done = False
        self.at_ms = 0.0

    def record(self) -> None:
        self.recorded += 1

    def query(self) -> bool:
        return self.done

    def elapsed_time(self, end: FakeEvent) -> float:
        return end.at_ms - self.at_ms


class FakeCudaTensor:
    is_cuda = True

    def numel(self) -> int:
        return 1000

    def element_size(self) -> int:
        return 2


def test_cuda_collectives_push_event_pairs_and_bytes_not_host_time() -> None:
    r = MarkRing(64)
    lazy = LazyPush(lambda: r.push, in_worker=lambda: False)
    pool = EventPool(factory=FakeEvent)
    calls: list[Any] = []
    all_reduce = timed_collective(lambda t, **kw: calls.append(t), lazy, pool)
    all_reduce(FakeCudaTensor())
    marks = list(r.drain())
    codes = [c for c, _, _ in marks]
    assert codes == [ring.COLLECTIVE_BYTES, ring.DEVICE_TIMING]  # no host-time phase
    assert marks[0][2] == 2000
    phase, start, end = marks[1][2]
    assert phase == ring.COLLECTIVE and start.recorded == 1 and end.recorded == 1
    assert len(calls) == 1


def test_device_time_joins_the_step_once_the_gpu_has_finished() -> None:
    pool = EventPool(factory=FakeEvent)
    asm = StepAssembler(rank=0, clock_offset=0.0, events=pool)
    start, end = pool.pair()
    end.at_ms = 250.0
    out: list[Record] = []
    asm.feed([(ring.STEP_BEGIN, 0.0, None),
              (ring.DEVICE_TIMING, 0.1, (ring.COLLECTIVE, start, end)),
              (ring.STEP_END, 1.0, None)], out)
    (first,) = [s for s in out if isinstance(s, Step)]
    assert first.collective_s == 0  # the GPU has not finished: not waited for
    end.done = True
    asm.feed([(ring.STEP_END, 2.0, None)], out)
    second = [s for s in out if isinstance(s, Step)][-1]
    assert second.collective_s == 0.25
    made = FakeEvent.made
    assert pool.pair() == (end, start)  # released events are reused: nothing allocated
    assert FakeEvent.made == made


def test_pending_timings_are_bounded_and_in_stream_order() -> None:
    pool = EventPool(factory=FakeEvent)
    pending = PendingTimings(pool, limit=3)
    pairs = [pool.pair() for _ in range(5)]
    for s, e in pairs:
        pending.add(ring.COLLECTIVE, s, e)
    assert pending.dropped == 2
    pairs[3][1].done = True  # a later pair cannot finish before an earlier one is read
    assert pending.ready() == []
    pairs[2][1].done = True
    assert len(pending.ready()) == 2


def test_on_device_reads_tensors_and_lists() -> None:
    assert on_device(FakeCudaTensor()) and on_device([FakeCudaTensor()])
    assert not on_device([]) and not on_device(object()) and not on_device(None)
