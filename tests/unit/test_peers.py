"""The cross-rank exchange over a store passed in: publish, collect on rank 0, rebuild
the other ranks' windows, and never wait on a store that hangs."""

from __future__ import annotations

import threading
import time
from typing import Any

from gpuwatch.detection.peer_view import PeerRank, summary
from gpuwatch.faults import FaultLog
from gpuwatch.probes.peers import PeerExchange
from gpuwatch.telemetry import Telemetry
from tests.runs import START, meta, steps
from tests.wait import wait_for


class DictStore:
    """A c10d-store stand-in: set, get, check (torch's stores are real but need a job)."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.lock = threading.Lock()

    def set(self, key: str, value: str) -> None:
        with self.lock:
            self.data[key] = value.encode()

    def get(self, key: str) -> bytes:
        with self.lock:
            return self.data[key]

    def check(self, keys: list[str]) -> bool:
        with self.lock:
            return all(k in self.data for k in keys)


def rank_view(rank: int, compute: float) -> Telemetry:
    view = Telemetry(rank)
    view.add([meta(rank, 3, host=f"node-{rank}"), *steps(20, rank=rank, compute_s=compute)])
    return view


def test_rank_zero_collects_every_rank_and_rebuilds_their_windows() -> None:
    store = DictStore()
    exchanges = [PeerExchange(r, 3, FaultLog(), store=lambda: store, interval_s=0.05)
                 for r in range(3)]
    for r, ex in enumerate(exchanges):
        ex.publish(summary(rank_view(r, 0.05 + 0.05 * (r == 2)), f"node-{r}", START + 20))
        ex.start()
    wait_for(lambda: len(exchanges[0].peers()) >= 2, 5, "rank 0 to hear from both peers")
    for ex in exchanges:
        ex.stop()
    received = exchanges[0].peers()
    assert sorted(received) == [1, 2]
    assert exchanges[1].peers() == {}  # only rank 0 collects
    peer = PeerRank(2)
    peer.update(received[2], 3)
    s = peer.summarise(START)
    assert s is not None and s.steps == 200 - 5  # every step but the warm-up
    assert abs(s.compute_s - 0.1) < 1e-9
    assert peer.host == "node-2" and peer.world_size == 3 and peer.steps_done == 200
    assert sorted(peer.step_waits(START)) == list(range(6, 201))  # warm-up left out
    peer.update(received[2], 3)  # the same publication twice: counted once
    assert peer.summarise(START).steps == 195  # type: ignore[union-attr]


def test_a_hanging_store_never_blocks_publishing_or_stopping() -> None:
    release, entered = threading.Event(), threading.Event()

    class HangingStore(DictStore):
        def set(self, key: str, value: str) -> None:
            entered.set()
            release.wait(30)

    faults = FaultLog()
    ex = PeerExchange(1, 2, faults, store=HangingStore, interval_s=0.01)
    ex.publish({"n": -1})
    ex.start()
    assert entered.wait(5)  # the store call hangs now
    start = time.monotonic()
    for i in range(100):
        ex.publish({"n": i})
    ex.stop()
    assert time.monotonic() - start < 0.1
    release.set()


def test_store_errors_are_counted_not_raised() -> None:
    class BrokenStore(DictStore):
        def set(self, key: str, value: str) -> None:
            raise RuntimeError("store is gone")

    faults = FaultLog()
    ex = PeerExchange(1, 2, faults, store=BrokenStore, interval_s=0.01)
    ex.publish({"x": 1})
    ex.start()
    wait_for(lambda: faults.counts["peers"] >= 1, 5, "the store error to be counted")
    ex.stop()


def test_summary_carries_totals_and_facts() -> None:
    view = rank_view(1, 0.05)
    s: dict[str, Any] = summary(view, "node-1", START + 21)
    assert s["rank"] == 1 and s["host"] == "node-1" and s["steps_total"] == 200
    assert s["totals"][0] == 195 and s["last_step_t"] == START + 20


def test_rank_zero_s_job_findings_reach_the_other_ranks_and_explain_them() -> None:
    """A straggler judged at rank 0 explains low utilisation on rank 1 too: rank 0
    publishes what its job findings cover; rank 1 reads it without waiting."""
    from datetime import timedelta

    from torch.distributed import TCPStore

    from gpuwatch.config import Settings
    from gpuwatch.detection.engine import engine_from_settings
    from gpuwatch.detection.peer_view import JobCover

    store = TCPStore("127.0.0.1", 0, 2, is_master=True, timeout=timedelta(seconds=10),
                     wait_for_workers=False)
    leader = PeerExchange(0, 2, FaultLog(), store=lambda: store, interval_s=0.02)
    follower = PeerExchange(1, 2, FaultLog(), store=lambda: store, interval_s=0.02)
    for ex in (leader, follower):
        ex.start()
    try:
        leader.publish_job({"covered": [["straggler", [1]], ["bogus"], 7]})
        wait_for(lambda: follower.job_word(), 5, "rank 0's word to reach rank 1")
    finally:
        leader.stop()
        follower.stop()
    cover = JobCover()
    cover.update(follower.job_word())
    assert cover.covered() == [("straggler", [1])]  # malformed entries left out
    engine = engine_from_settings(Settings(), "rank")
    engine.view(0)
    engine.view(1)
    engine.peers.append(cover)
    engine.evaluate(1.0)
    assert all("straggler" in engine.context.explained.get(r, set()) for r in (0, 1))
    cover.update({"covered": []})  # rank 0's straggler finding resolved: seen at once
    engine.evaluate(2.0)
    assert not any("straggler" in engine.context.explained.get(r, set()) for r in (0, 1))


def test_a_published_rank_answers_job_detectors_as_its_own_telemetry_does() -> None:
    """What rank 0 knows of a peer from its summary reads as the peer's own telemetry
    for what a summary carries: step means, per-step waits, host, GPU and link facts,
    clock-event reasons (a power cap here)."""
    from gpuwatch.detection.context import job_devices
    from gpuwatch.records import Event, Sample

    own = rank_view(1, 0.05)
    own.add([Event(1, START + 20, "topology", {
                 "devices": [{"index": 0, "name": "NVIDIA A100-SXM4-80GB",
                              "nvlink_links_active": 12, "nvlink_bytes_per_second": 3e11}],
                 "job_gpus": [0], "infiniband": []}),
             Sample(1, START + 20, "nvml", {"gpu_clock_event_reasons": 0x4}, gpu=0)])
    peer = PeerRank(1)
    peer.update(summary(own, "node-1", START + 21), 3)
    assert peer.summarise(START) == own.summarise(START)  # (totals: as fine as published)
    theirs, mine = peer.step_waits(START), own.step_waits(START)
    assert sorted(theirs) == sorted(mine)
    assert all(abs(theirs[k].wait_s - mine[k].wait_s) < 1e-6 for k in mine)
    assert (peer.host, peer.world_size) == (own.host, own.world_size) == ("node-1", 3)
    assert peer.clock_event_reasons() == own.clock_event_reasons() == [0x4]
    assert job_devices(peer) == job_devices(own)


def test_a_peer_writing_a_save_covers_every_rank_at_rank_0_until_it_is_done() -> None:
    """A rank writing a save (``if rank == 0: torch.save`` anywhere but rank 0) holds
    the others at their next collective: rank 0 learns it from the rank's summary and
    says so in its word (``HOLDING``, job-wide), until the save is done or the word is
    stale (the saver's process gone)."""
    from gpuwatch.config import Settings
    from gpuwatch.detection.context import HOLDING
    from gpuwatch.detection.engine import HOLD_FRESH_S, engine_from_settings
    from gpuwatch.records import Sample

    own = rank_view(1, 0.05)
    own.add([Sample(1, START + 30, "agent", {"agent_cpu_seconds_total": 1.0,
                                             "open_checkpoint_seconds": 9.0})])
    peer = PeerRank(1)
    peer.update(summary(own, "node-1", START + 31), 2)
    assert peer.open_save() == own.open_save() == (START + 30, 9.0)
    job = engine_from_settings(Settings(), "job")
    job.views[0] = rank_view(0, 0.05)
    job.published[1] = peer
    job.evaluate(START + 32)
    assert (HOLDING, [1]) in job.covered()
    job.evaluate(START + 31 + HOLD_FRESH_S)  # no newer word: the save may have died
    assert HOLDING not in dict(job.covered())
    job.evaluate(START + 32)  # (a fresh word again)
    own.add([Sample(1, START + 33, "agent", {"agent_cpu_seconds_total": 1.1})])
    peer.update(summary(own, "node-1", START + 34), 2)  # saved: nothing open
    job.evaluate(START + 35)
    assert peer.open_save() is None and HOLDING not in dict(job.covered())


def test_published_ranks_say_when_their_gpus_cannot_reach_each_other() -> None:
    """GeForce cards have no P2P: rank 0 must see, from the summaries, what a replay sees
    from the logs (``host_staged``; cards bridged in pairs: ``pcie_between``), and each
    rank's own GPU, not its host's first."""
    from gpuwatch.detection.context import host_staged, job_devices, pcie_between
    from gpuwatch.records import Event

    def on_gpu(rank: int, read: bool) -> Telemetry:
        view = Telemetry(rank)
        view.add([meta(rank, 2, host="node-0"), *steps(20, rank=rank, compute_s=0.05),
                  Event(rank, START + 20, "topology", {
            "devices": [{"index": i, "name": f"NVIDIA GeForce RTX 5090 #{i}",
                         "nvlink_links_active": 0, "pcie_bytes_per_second": 63e9}
                        for i in range(2)],
            "gpu_count": 2, "job_gpus": [rank],
            "p2p": [{"gpus": [0, 1], "nvlink": read, "read": read}]})])
        return view

    for read in (False, True):
        own = [on_gpu(r, read) for r in range(2)]
        peers = []
        for view in own:
            peer = PeerRank(view.rank)
            peer.update(summary(view, "node-0", START + 21), 2)
            peers.append(peer)
        assert host_staged(peers) == host_staged(own) == (not read)
        assert pcie_between(peers) == pcie_between(own) == (not read)
        # one rank seen alone (a rank-scope projection): its peers' GPUs are the host's
        # others, so it reads the links as the job-wide judgement does
        assert host_staged(own[1:]) == pcie_between(own[1:]) == (not read)
        assert [job_devices(p)[0]["name"] for p in peers] == \
            [job_devices(v)[0]["name"] for v in own]  # each its own GPU
