"""On a real GPU: the allocator probe reads what ``torch.cuda.memory_stats`` says, and a
device interval timed with pooled CUDA events is the work's device time, read by
polling (no synchronisation added on the hot path).

Skipped where torch sees no CUDA device (CI has none); run on a GPU machine.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def busy(a: Any, n: int) -> Any:
    for _ in range(n):
        a = a @ a / a.shape[0]
    return a


def test_allocator_probe_reads_what_memory_stats_says() -> None:
    from gpuwatch.probes.allocator import AllocatorProbe, torch_memory_stats
    from gpuwatch.records import Event, Sample

    stats = torch_memory_stats(0)
    assert stats is not None
    held = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")  # 256 MiB
    with pytest.raises(torch.OutOfMemoryError):
        torch.empty(1 << 50, dtype=torch.uint8, device="cuda")  # caught: an OOM survived
    probe = AllocatorProbe(stats, rank=0, gpu=0, told={})
    first = probe.sample(time.time(), time.monotonic())
    truth = torch.cuda.memory_stats(0)
    (sample,) = [r for r in first if isinstance(r, Sample)]
    (before,) = [r for r in first if isinstance(r, Event)]  # the OOMs before the first read
    assert before.name == "oom" and before.data["count"] == truth["num_ooms"]
    assert sample.values["allocator_allocated_bytes"] == truth["allocated_bytes.all.current"]
    assert sample.values["allocator_reserved_bytes"] == truth["reserved_bytes.all.current"]
    assert sample.values["allocator_allocated_bytes"] >= held.numel()
    assert sample.values["allocator_ooms_total"] == truth["num_ooms"] >= 1
    with pytest.raises(torch.OutOfMemoryError):
        torch.empty(1 << 50, dtype=torch.uint8, device="cuda")
    records = probe.sample(time.time(), time.monotonic())
    assert [r.name for r in records if isinstance(r, Event)] == ["oom"]  # the new one
    del held


def test_a_device_interval_is_the_work_s_device_time_read_without_a_sync() -> None:
    from gpuwatch.instrument import ring
    from gpuwatch.instrument.device import EventPool, Intervals, PendingTimings

    a = torch.randn(4096, 4096, device="cuda")
    busy(a, 3)  # warm-up (cuBLAS handles, clocks)
    ref0, ref1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    ref0.record()
    busy(a, 40)
    ref1.record()
    torch.cuda.synchronize()
    reference = ref0.elapsed_time(ref1) / 1000
    pool = EventPool()
    pushed: list[tuple[Any, ...]] = []
    intervals = Intervals(pool, lambda: lambda *m: pushed.append(m))
    pending = PendingTimings(pool)
    torch.cuda.set_sync_debug_mode("error")  # the timed path must not synchronise
    try:
        span = intervals.begin(cuda=True)
        busy(a, 40)
        intervals.end(span)
        ((kind, (phase, start, end, nbytes)),) = pushed
        assert kind == ring.DEVICE_TIMING and phase == ring.COLLECTIVE
        pending.add(phase, start, end, nbytes)
        early = pending.ready()  # polled while the work still runs: not done yet
    finally:
        torch.cuda.set_sync_debug_mode(0)
    deadline = time.monotonic() + 30
    got = early
    while not got and time.monotonic() < deadline:
        got = pending.ready()
    (interval,) = got
    assert interval.seconds == pytest.approx(reference, rel=0.15)
    assert pending.oldest_step() is None
