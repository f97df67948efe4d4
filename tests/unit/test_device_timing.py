"""Collective wait measured on the device timeline, never by syncing.

A fake device keeps a device clock per stream and an NCCL-like group whose works and
futures are complete at enqueue while the collective runs later on the device (what
``ProcessGroupNCCL`` does). Host timing around such a wait reads about zero; the
event interval on the compute stream must read the exposed wait exactly.
"""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import pytest

from gpuwatch.instrument import ring
from gpuwatch.instrument.device import EventPool, Intervals, PendingTimings, on_device
from gpuwatch.instrument.patches import (
    AsyncWorks,
    LazyPush,
    patch_distributed,
    patch_fsdp2,
    patch_functional_collectives,
    timed_comm_hook,
)
from gpuwatch.instrument.ring import MarkRing
from gpuwatch.instrument.steps import HOLD_STEPS as STEPS_HELD
from gpuwatch.instrument.steps import StepAssembler
from gpuwatch.records import Record, Step
from gpuwatch.vocabulary import bus_bytes
from tests import fake_cuda
from tests.fake_cuda import Device, NcclGroup, Tensor

MB = 1_000_000


class Rig:
    """A ring, the hooks' push, a pool of device-clock events and an assembler."""

    def __init__(self, device: Device) -> None:
        self.device = device
        self.ring = MarkRing(256)
        self.lazy = LazyPush(lambda: self.ring.push, in_worker=lambda: False)
        self.pool = EventPool(factory=device.event, current_stream=device.current_stream,
                              default_stream=device.default_stream)
        self.asm = StepAssembler(rank=0, clock_offset=0.0, events=self.pool)
        self.out: list[Record] = []

    def step(self) -> Step:
        """End the step: it is held back (nothing waits on the device) until the device
        has finished it, then comes out with its device time and host counts."""
        self.lazy.push(ring.STEP_END)
        self.asm.feed(self.ring.drain(), self.out)
        assert not [s for s in self.out if isinstance(s, Step)]  # the device is not done
        self.device.finish()
        self.asm.feed(self.ring.drain(), self.out)
        (step,) = [s for s in self.out if isinstance(s, Step)]
        return step


def patched(group: NcclGroup, rig: Rig) -> Any:
    dist = group.module()
    patch_distributed(rig.lazy, dist, pool=rig.pool, works=AsyncWorks())
    return dist


def test_async_all_reduce_exposed_wait_is_what_the_compute_stream_waits() -> None:
    dev = Device()
    rig = Rig(dev)
    dist = patched(NcclGroup(dev, size=2, bytes_per_ms=1 * MB), rig)
    rig.lazy.push(ring.STEP_BEGIN)
    dev.run(50)  # backward up to the gradients
    work = dist.all_reduce(Tensor(80 * MB), async_op=True)  # 80 ms on the NCCL stream: 50-130
    dev.run(20)  # overlapped compute: 50-70
    work.wait()  # compute waits 70-130: 60 ms exposed; the host did not wait at all
    dev.run(10)
    step = rig.step()
    assert step.collective_s == pytest.approx(0.060)
    assert step.collective_bytes == 80 * MB  # all-reduce at n=2: 2(n-1)/n = 1
    assert step.collective_timed_s == 0  # an async collective's full duration is not seen


def test_fully_overlapped_collective_is_no_wait() -> None:
    dev = Device()
    rig = Rig(dev)
    dist = patched(NcclGroup(dev, size=4, bytes_per_ms=1 * MB), rig)
    dev.run(10)
    work = dist.all_to_all_single(Tensor(8 * MB), Tensor(8 * MB), async_op=True)  # 10-18
    dev.run(30)  # MoE expert compute covers it
    work.wait()
    step = rig.step()
    assert step.collective_s == 0
    assert step.collective_bytes == 6 * MB  # all-to-all: (n-1)/n of the buffer


def test_blocking_collective_is_exposed_in_full_and_gives_its_bandwidth() -> None:
    dev = Device()
    rig = Rig(dev)
    dist = patched(NcclGroup(dev, size=4, bytes_per_ms=2 * MB), rig)
    dev.run(5)
    dist.reduce_scatter_tensor(Tensor(10 * MB), Tensor(40 * MB))  # 20 ms, blocking
    step = rig.step()
    assert step.collective_s == pytest.approx(0.020)
    # reduce-scatter: (n-1)/n of the *input* (the whole buffer), not the 1/n output
    assert step.collective_bytes == 30 * MB
    assert step.collective_timed_s == pytest.approx(0.020)
    assert step.collective_timed_bytes / step.collective_timed_s == pytest.approx(1.5e9)


def test_ddp_last_bucket_to_end_of_backward_is_the_exposed_wait() -> None:
    """DDP: the hook's future is complete at enqueue; the engine runs DDP's own
    end-of-backward callback (compute stream waits on every bucket) after ours is
    queued, and ours queues a second one that runs after DDP's."""
    dev = Device()
    rig = Rig(dev)
    group = NcclGroup(dev, size=2, bytes_per_ms=1 * MB)
    callbacks: list[Any] = []
    works: list[fake_cuda.Work] = []

    def allreduce_hook(state: Any, bucket: Any) -> fake_cuda.Future:
        works.append(group.collective("all_reduce", bucket.nbytes))
        return fake_cuda.Future()

    hook = timed_comm_hook(allreduce_hook, Intervals(rig.pool, lambda: rig.lazy.push),
                           callbacks.append)
    buckets = [SimpleNamespace(nbytes=50 * MB, is_last=lambda: False, buffer=lambda: Tensor(1)),
               SimpleNamespace(nbytes=60 * MB, is_last=lambda: True, buffer=lambda: Tensor(1))]
    dev.run(40)
    assert hook(None, buckets[0]).done()  # 40-90 on the NCCL stream
    dev.run(60)  # more backward: 40-100
    hook(None, buckets[1])  # 100-160
    callbacks.append(lambda: [w.wait() for w in works])  # DDP's finalize_backward, queued after
    i = 0
    while i < len(callbacks):  # the engine: callbacks may queue more, run in order
        callbacks[i]()
        i += 1
    dev.run(30)  # optimizer
    step = rig.step()
    assert step.collective_s == pytest.approx(0.060)


def test_a_rank_blocked_in_ddp_s_host_all_reduce_reads_as_waiting_in_a_collective() -> None:
    """On the host clock (gloo, CPU tensors) backward blocks until every bucket's
    all-reduce is done. A peer that never joins leaves the rank blocked there: its open
    phases must say "collective" (hang names the rank that is *not* waiting), yet the
    wait, never marked as a phase, cannot leak into the steps after it."""
    rig = Rig(Device())
    callbacks: list[Any] = []
    hook = timed_comm_hook(lambda state, bucket: fake_cuda.Future(),
                           Intervals(rig.pool, lambda: rig.lazy.push), callbacks.append)
    hook(None, SimpleNamespace(is_last=lambda: True, buffer=lambda: "host tensor"))
    rig.asm.feed(rig.ring.drain(), rig.out)  # the engine has not reached our callback: blocked
    assert "collective" in rig.asm.open_phases(time.perf_counter())
    for callback in callbacks:  # (it queues a second, which the engine runs after DDP's)
        callback()
    for callback in callbacks[1:]:
        callback()
    rig.asm.feed(rig.ring.drain(), rig.out)
    assert "collective" not in rig.asm.open_phases(time.perf_counter())
    hook(None, SimpleNamespace(is_last=lambda: True, buffer=lambda: "host tensor"))
    rig.lazy.push(ring.STEP_END)  # a backward that raised before its end: the step's end
    rig.asm.feed(rig.ring.drain(), rig.out)  # clears the wait
    assert "collective" not in rig.asm.open_phases(time.perf_counter())


def test_fsdp_side_stream_all_gather_counts_its_wait_not_its_duration() -> None:
    """FSDP2 issues all-gathers on a side stream (blocking there) and the compute stream
    waits for them in wait_for_unshard: only that wait is exposed, and the side-stream
    interval is the all-gather's full duration (its bandwidth)."""
    dev = Device()
    rig = Rig(dev)
    dist = patched(NcclGroup(dev, size=4, bytes_per_ms=1 * MB), rig)
    side = fake_cuda.Stream("all_gather")
    done: list[float] = []

    class FSDPParamGroup:
        device = SimpleNamespace(type="cuda")

        def wait_for_unshard(self) -> None:
            dev.wait_stream(dev.current, done[-1])

    patch_fsdp2(rig.lazy, SimpleNamespace(FSDPParamGroup=FSDPParamGroup), pool=rig.pool)
    dev.run(30)  # previous layer's compute: 0-30
    dev.current = side
    dev.wait_stream(side, 10)  # prefetch issued after layer start
    dist.all_gather_into_tensor(Tensor(40 * MB), Tensor(10 * MB))  # 10-50 on NCCL
    dev.wait_stream(side, dev.nccl.tail_ms)
    done.append(side.tail_ms)
    dev.current = dev.compute
    FSDPParamGroup().wait_for_unshard()  # compute waits 30-50
    step = rig.step()
    assert step.collective_s == pytest.approx(0.020)
    assert step.collective_bytes == 30 * MB  # all-gather: (n-1)/n of the output
    assert step.collective_timed_s == pytest.approx(0.040)


def test_a_wait_inside_a_timed_wait_counts_once() -> None:
    """FSDP2's async path: wait_for_unshard calls Work.wait itself."""
    dev = Device()
    rig = Rig(dev)
    dist = patched(NcclGroup(dev, size=2, bytes_per_ms=1 * MB), rig)
    works: list[Any] = []

    class FSDPParamGroup:
        device = SimpleNamespace(type="cuda")

        def wait_for_unshard(self) -> None:
            works.pop().wait()

    patch_fsdp2(rig.lazy, SimpleNamespace(FSDPParamGroup=FSDPParamGroup), pool=rig.pool)
    works.append(dist.all_gather_into_tensor(Tensor(20 * MB), Tensor(10 * MB), async_op=True))
    dev.run(5)  # 0-5 compute; the all-gather runs 0-20
    FSDPParamGroup().wait_for_unshard()  # compute waits 5-20
    step = rig.step()
    assert step.collective_s == pytest.approx(0.015)


def test_functional_collective_wait_tensor_is_timed_on_the_device() -> None:
    dev = Device()
    rig = Rig(dev)
    group = NcclGroup(dev, size=8, bytes_per_ms=1 * MB)
    pending: dict[int, float] = {}

    def all_gather_tensor(self: Tensor, gather_dim: int, group_: Any, tag: str = "") -> Tensor:
        out = Tensor(self.nbytes * 8)
        pending[id(out)] = group.collective("all_gather", out.nbytes).done_ms
        return out

    def wait_tensor(tensor: Tensor) -> Tensor:
        dev.wait_stream(dev.current, pending[id(tensor)])
        return tensor

    funcol = SimpleNamespace(all_gather_tensor=all_gather_tensor, wait_tensor=wait_tensor)
    patch_functional_collectives(rig.lazy, funcol, pool=rig.pool, group_size=lambda g: 8)
    dev.run(5)
    out = funcol.all_gather_tensor(Tensor(2 * MB), 0, None)  # 16 MB: 5-21
    dev.run(10)
    funcol.wait_tensor(out)  # 15-21
    step = rig.step()
    assert step.collective_s == pytest.approx(0.006)
    assert step.collective_bytes == 14 * MB


def test_no_event_is_read_before_the_device_finishes_and_events_are_reused() -> None:
    dev = Device()
    pool = EventPool(factory=dev.event, current_stream=dev.current_stream)
    pending = PendingTimings(pool, limit=3)
    pairs = [pool.pair() for _ in range(5)]
    for i, (s, e) in enumerate(pairs):
        s.record()
        dev.run(1)
        e.record()
        pending.add(ring.COLLECTIVE, s, e, i)
    assert pending.dropped == 2
    assert pending.ready() == []
    dev.finish()
    ready = pending.ready()
    assert [r.nbytes for r in ready] == [2, 3, 4] and all(r.seconds == 0.001 for r in ready)
    made = fake_cuda.Event.made
    pool.pair()
    assert fake_cuda.Event.made == made


def test_bus_bytes_follow_nccl_tests() -> None:
    assert bus_bytes("all_reduce", 1000, 4) == 1500
    assert bus_bytes("all_gather", 1000, 4) == 750
    assert bus_bytes("reduce_scatter", 1000, 4) == 750
    assert bus_bytes("all_to_all", 1000, 4) == 750
    assert bus_bytes("broadcast", 1000, 4) == 1000
    assert bus_bytes("send_recv", 1000, 2) == 1000
    assert bus_bytes("all_reduce", 1000, 1) == 0  # nothing crosses a link


def test_on_device_reads_tensors_and_lists() -> None:
    assert on_device(Tensor(4)) and on_device([Tensor(4)])
    assert not on_device([]) and not on_device(object()) and not on_device(None)


def test_each_step_gets_its_own_device_time_in_order_and_never_waits_forever() -> None:
    dev = Device()
    rig = Rig(dev)
    dist = patched(NcclGroup(dev, size=2, bytes_per_ms=1 * MB), rig)

    def one_step(wait_ms: float) -> None:
        dev.run(10)
        work = dist.all_reduce(Tensor(int(wait_ms * MB)), async_op=True)
        work.wait()  # compute waits the whole all-reduce
        rig.lazy.push(ring.STEP_END)

    one_step(30)
    one_step(50)
    rig.asm.feed(rig.ring.drain(), rig.out)
    dev.now_ms = 45  # the first step's wait is done (ends at 40), the second's is not
    rig.asm.feed(rig.ring.drain(), rig.out)
    steps = [s for s in rig.out if isinstance(s, Step)]
    assert [(s.step, round(s.collective_s, 6)) for s in steps] == [(1, 0.030)]
    dev.finish()
    rig.asm.feed(rig.ring.drain(), rig.out)
    steps = [s for s in rig.out if isinstance(s, Step)]
    assert [(s.step, round(s.collective_s, 6)) for s in steps] == [(1, 0.030), (2, 0.050)]

    for _ in range(STEPS_HELD + 1):  # a device that never finishes holds no step forever
        one_step(1)
    rig.asm.feed(rig.ring.drain(), rig.out)
    assert len([s for s in rig.out if isinstance(s, Step)]) == 3
    rig.asm.feed([], rig.out, final=True)  # the run ends: everything held comes out
    assert len([s for s in rig.out if isinstance(s, Step)]) == 2 + STEPS_HELD + 1
