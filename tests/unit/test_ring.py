"""The hot-path ring: order, loss accounting, wake-ups, and what a push costs in calls."""

from __future__ import annotations

import sys
import threading
import tracemalloc

from gpuwatch import monitor
from gpuwatch.agent import Agent
from gpuwatch.config import Settings
from gpuwatch.instrument import ring
from gpuwatch.instrument.ring import MarkRing
from gpuwatch.monitor import Monitor, Span


def test_drain_returns_marks_in_order_once() -> None:
    r = MarkRing(64)
    for i in range(10):
        r.push(ring.SAMPLES, i)
    marks = list(r.drain())
    assert [v for _, _, v in marks] == list(range(10))
    assert [t for _, t, _ in marks] == sorted(t for _, t, _ in marks)
    assert list(r.drain()) == []
    r.push(ring.STEP_END)
    assert [c for c, _, _ in r.drain()] == [ring.STEP_END]
    assert r.dropped == 0


def test_lapped_reader_counts_exactly_what_it_lost() -> None:
    r = MarkRing(16)
    assert r.capacity == 16
    for i in range(50):
        r.push(ring.SAMPLES, i)
    marks = list(r.drain())
    assert marks[0][0] == ring.LOST and marks[0][2] == 34  # the gap, where it is
    assert [v for _, _, v in marks[1:]] == list(range(34, 50))  # the newest `capacity` survive
    assert r.dropped == 34
    r.push(ring.SAMPLES, 99)
    assert [v for _, _, v in r.drain()] == [99]
    assert r.dropped == 34


def test_capacity_rounds_up_to_power_of_two() -> None:
    assert MarkRing(1000).capacity == 1024
    assert MarkRing(1).capacity == 16


def test_push_wakes_consumer_every_half_ring() -> None:
    wake = threading.Event()
    r = MarkRing(64, wake=wake)
    r.push(1)  # seq 0
    assert wake.is_set()
    wake.clear()
    for _ in range(31):
        r.push(1)
    assert not wake.is_set()
    r.push(1)  # seq 32
    assert wake.is_set()


def test_concurrent_producers_lose_nothing_when_ring_is_large() -> None:
    r = MarkRing(1 << 16)

    def produce(tag: int) -> None:
        for i in range(5000):
            r.push(tag, i)

    threads = [threading.Thread(target=produce, args=(t,)) for t in (1, 2, 3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    marks = list(r.drain())
    assert len(marks) == 15000
    for tag in (1, 2, 3):
        assert [v for c, _, v in marks if c == tag] == list(range(5000))


def _monitor(capacity: int = 1024) -> Monitor:
    return Monitor(Agent(Settings(ring_capacity=capacity, nvml=False), nvml_library=None,
                         memory_stats=None))


def test_a_monitored_step_calls_nothing_but_the_ring() -> None:
    """Per step: the span methods and ring pushes; no lock, no I/O, no NVML, no torch."""
    m = _monitor()
    m.count(samples=1)  # the very first push also wakes the agent; steady state does not
    called: list[str] = []

    def profile(frame, event, arg):  # type: ignore[no-untyped-def]
        if event == "call":
            called.append(frame.f_code.co_name)
        elif event == "c_call":
            called.append(f"c:{arg.__qualname__}")

    sys.setprofile(profile)
    try:
        with m.step(samples=32):
            with m.phase("data"):
                pass
            with m.phase("compute"):
                pass
    finally:
        sys.setprofile(None)
    allowed = {"step", "phase", "push", "__enter__", "__exit__", "c:perf_counter",
               "c:next", "c:dict.get", "c:setprofile"}
    assert set(called) <= allowed, set(called) - allowed
    assert called.count("push") == 7  # samples + step open/close + 2 phases x 2
    assert called.count("c:perf_counter") == 7


def test_steady_state_steps_allocate_nothing_that_lasts() -> None:
    m = _monitor(capacity=1024)
    tracemalloc.start()
    for _ in range(2000):  # cycle the ring: from here on each slot is overwritten
        with m.step(), m.phase("compute"):
            pass
    before = tracemalloc.take_snapshot()
    for _ in range(10_000):
        with m.step(), m.phase("compute"):
            pass
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    # only what the hot path's own code allocated: other threads of the test process
    # (an agent of an earlier test still draining) allocate meanwhile
    hot = [tracemalloc.Filter(True, ring.__file__), tracemalloc.Filter(True, monitor.__file__)]
    growth = sum(s.size_diff for s in after.filter_traces(hot).compare_to(
        before.filter_traces(hot), "filename"))
    assert growth < 8 * 1024, growth


def test_span_is_reusable_and_marks_balanced() -> None:
    r = MarkRing(64)
    span = Span(r.push, ring.DATA, -ring.DATA)
    for _ in range(3):
        with span:
            pass
    assert [c for c, _, _ in r.drain()] == [ring.DATA, -ring.DATA] * 3


def test_one_drain_yields_at_most_one_ring_of_marks() -> None:
    """A slow consumer works in bounded batches while producers keep pushing."""
    r = MarkRing(16)
    for i in range(16):
        r.push(ring.SAMPLES, i)
    got = []
    for _, _, v in r.drain():
        got.append(v)
        r.push(ring.SAMPLES, 100 + len(got))  # a producer racing the consumer
    assert got == list(range(16))
    assert [v for _, _, v in r.drain()] == list(range(101, 117))


def test_pending_says_whether_marks_wait() -> None:
    r = MarkRing(16)
    assert not r.pending()
    r.push(ring.STEP_END)
    assert r.pending()
    list(r.drain())
    assert not r.pending()
    for _ in range(40):
        r.push(ring.STEP_END)
    assert r.pending()  # lapped counts as pending too


def test_zero_code_hooks_never_raise_when_the_agent_cannot_start() -> None:
    from gpuwatch.instrument.patches import LazyPush

    def broken_start() -> object:
        raise OSError("read-only file system")

    lazy = LazyPush(broken_start, in_worker=lambda: False)  # type: ignore[arg-type]
    lazy.push(ring.DATA)  # the first mark tries to start the agent: no exception
    lazy.push(-ring.DATA)


def test_lazy_push_starts_the_agent_once_in_a_trainer_and_never_in_a_worker() -> None:
    from gpuwatch.instrument.patches import LazyPush

    r = MarkRing(64)
    starts: list[str] = []

    def start() -> object:
        starts.append("started")
        return r.push

    trainer = LazyPush(start, in_worker=lambda: False)  # type: ignore[arg-type]
    trainer.push(ring.DATA)
    trainer.push(-ring.DATA)
    assert starts == ["started"]  # once, at the first mark
    assert [c for c, _, _ in r.drain()] == [ring.DATA, -ring.DATA]  # the first mark is kept
    worker = LazyPush(start, in_worker=lambda: True)  # type: ignore[arg-type]
    worker.push(ring.DATA)
    worker.push(-ring.DATA)
    assert starts == ["started"]  # a DataLoader worker never starts an agent
    assert list(r.drain()) == []


def test_a_reader_draining_while_writers_lap_it_yields_no_torn_mark_and_loses_count() -> None:
    """Writers push (tag, i) pairs into a small ring while a reader drains in a loop:
    every yielded mark is whole (code matches value), each writer's marks come in
    order without repeats, and yielded + announced losses == pushed."""
    r = MarkRing(16)
    per_writer = 20_000
    writers_done = threading.Event()
    got: list[tuple[int, int]] = []
    lost = 0

    def write(tag: int) -> None:
        for i in range(per_writer):
            r.push(tag, (tag, i))

    def read() -> None:
        nonlocal lost
        while True:
            finished = writers_done.is_set()
            for code, _, value in r.drain():
                if code == ring.LOST:
                    lost += value
                else:
                    got.append((code, value))
            if finished:
                return

    sys.setswitchinterval(1e-6)  # switch threads as often as the interpreter can
    try:
        reader = threading.Thread(target=read)
        writers = [threading.Thread(target=write, args=(tag,)) for tag in (1, 2, 3)]
        reader.start()
        for w in writers:
            w.start()
        for w in writers:
            w.join(timeout=60)
        writers_done.set()
        reader.join(timeout=60)
    finally:
        sys.setswitchinterval(0.005)
    assert not reader.is_alive()
    assert all(code == value[0] for code, value in got)  # never a half-written slot
    for tag in (1, 2, 3):
        seen = [v[1] for c, v in got if c == tag]
        assert seen == sorted(set(seen))  # in order, no repeats
    assert lost > 0, "the writers never lapped the reader: the test proves nothing"
    assert len(got) + lost == 3 * per_writer
    assert r.dropped == lost
