"""Collective wait split step by step: transfer (the least wait across ranks) versus
waiting on a slower rank, and the verdicts that follow, judged offline (every rank's
steps) and live (rank 0's own steps plus the others' published per-step waits)."""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Any

import pytest

from gpuwatch.config import Settings
from gpuwatch.detection.engine import engine_from_settings
from gpuwatch.detection.peer_view import PeerRank, summary
from gpuwatch.detection.skew import split
from gpuwatch.probes.peers import decode_steps, encode_steps
from gpuwatch.records import Event, Finding, Meta, Record, Step
from gpuwatch.telemetry import Telemetry
from tests.runs import START, judge, meta, only
from tests.scenarios.simulate import L40S, RTX_5090, Evals, Memory, Saves, Shape, simulate

WALL = 0.1
N_STEPS = 150


def run(world: int, wait: Any, nbytes: int = 64_000_000, devices: dict[str, Any] | None = None,
        same_host: bool = False) -> list[Record]:
    """``world`` ranks of 0.1 s steps; ``wait(rank, step)`` is that rank's exposed wait."""
    out: list[Record] = []
    for r in range(world):
        out.append(meta(r, world, host="node-a" if same_host else f"node-{r}"))
        out.append(Event(r, START, "topology", {"devices": [{
            "index": 0, "name": "NVIDIA GeForce RTX 5090", "nvlink_links_active": 0,
            **(devices or {})}], "job_gpus": [0]}))
        for k in range(1, N_STEPS + 1):
            w = wait(r, k)
            out.append(Step(rank=r, step=k, t=START + k * WALL, wall_s=WALL, compute_s=0.095,
                            collective_s=w, collective_bytes=nbytes, samples=8))
    return out


def rotating(r: int, k: int) -> float:
    """Each step a different rank is slow (its batch is the long one): it arrives last
    and waits only the transfer; the others wait for it."""
    return 0.004 + (0.0 if k % 4 == r else 0.05)


def fixed(r: int, k: int) -> float:
    return 0.004 + (0.0 if r == 2 else 0.05)


def slow_rank_two() -> list[Record]:
    """Rank 2 computes longer, every step, by what the others wait for it."""
    return [Step(rank=r.rank, step=r.step, t=r.t, wall_s=r.wall_s,
                 compute_s=r.compute_s + (0.05 if r.rank == 2 else 0.0),
                 collective_s=r.collective_s, collective_bytes=r.collective_bytes)
            if isinstance(r, Step) else r for r in run(4, fixed)]


def slow_node() -> list[Record]:
    """16 ranks on two hosts; the eight of node-1 compute 0.05 s longer every step, the
    last to arrive rotating among them (they differ by a hair); the others wait."""
    out: list[Record] = []
    for r in range(16):
        out.append(meta(r, 16, host=f"node-{r // 8}"))
        slow = r >= 8
        for k in range(1, N_STEPS + 1):
            wait = 0.004 + 0.0001 * ((r + k) % 8) if slow else 0.054
            out.append(Step(rank=r, step=k, t=START + k * WALL, wall_s=WALL,
                            compute_s=0.095,
                            collective_s=wait, collective_bytes=64_000_000, samples=8))
    return out


def test_a_node_throttled_by_a_quarter_is_a_straggler_too() -> None:
    """Node 1's eight GPUs compute 1.25x slower (thermal slowdown), waiting on each
    other's jitter a little: past work_ratio (1.2), so stragglers, however many."""
    out: list[Record] = []
    for r in range(16):
        out.append(meta(r, 16, host=f"node-{r // 8}"))
        slow = r >= 8
        for k in range(1, N_STEPS + 1):
            jitter = 0.006 * ((r + k) % 4) / 3
            wait = 0.006 + jitter if slow else 0.006 + 0.025 + 0.003
            compute = 0.1 * 1.25 if slow else 0.1
            out.append(Step(rank=r, step=k, t=START + k * 0.14, wall_s=0.14,
                            compute_s=compute - (0.006 + jitter if slow else 0.0) + wait,
                            collective_s=wait, collective_bytes=64_000_000, samples=8))
    f = only(judge(out, scope="job"), "straggler")
    assert f.ranks == list(range(8, 16))


def test_a_slow_node_is_eight_stragglers_not_a_rotating_imbalance() -> None:
    """The last to arrive rotates, but only among node-1's ranks: a slow node to fix,
    not batches to balance."""
    findings = judge(slow_node(), scope="job")
    f = only(findings, "straggler")
    assert f.ranks == list(range(8, 16)) and "Ranks 8-15 (host node-1) take" in f.summary
    assert f.evidence["wait_caused_share_ratio"] == pytest.approx(1.0)
    assert not [x for x in findings if x.detector == "sync_bottleneck"]


def test_a_straggler_on_a_slower_card_is_named_by_its_card() -> None:
    same = only(judge(slow_rank_two(), scope="job"), "straggler")
    assert "among" not in same.summary and not same.action.startswith("A slower card")
    mixed = [Event(r.rank, r.t, "topology", {**r.data, "devices": [
                 {**r.data["devices"][0], "name": "NVIDIA GeForce RTX 3090"}]})
             if isinstance(r, Event) and r.rank == 2 else r for r in slow_rank_two()]
    f = only(judge(mixed, scope="job"), "straggler")
    assert f.ranks == [2] and (", on NVIDIA GeForce RTX 3090 among NVIDIA GeForce RTX 5090"
                               in f.summary)
    assert f.action.startswith("A slower card among faster ones")


def transfer(r: int, k: int) -> float:
    return 0.06 + 0.001 * ((k + r) % 3)  # everyone waits about alike: the transfer itself


def test_rotating_skew_is_fixed_here_by_balancing_not_a_move_nor_a_straggler() -> None:
    findings = judge(run(4, rotating), scope="job")
    f = only(findings, "sync_bottleneck")
    assert f.verdict == "fix_here"
    assert "different one from step to step" in f.summary and "Balance" in f.action
    assert f.evidence["transfer_seconds_per_step"] < 0.005
    assert f.evidence["skew_seconds_per_step"] > 0.03
    assert not [x for x in findings if x.detector == "straggler" or x.verdict == "move_to_h100"]


@pytest.mark.parametrize("offset_s", [3.0, 9.5])
def test_hosts_whose_clocks_disagree_are_compared_step_for_step(offset_s: float) -> None:
    """Ranks 2 and 3 on a host whose clock runs ``offset_s`` ahead (most of the 10 s
    window): their steps come that much later in the merged log, yet step k is still
    compared with step k, and the verdict is that of synchronised clocks."""
    shifted = [replace(r, t=r.t + offset_s) if isinstance(r, Step) and r.rank >= 2 else r
               for r in run(4, rotating)]
    f = only(judge(shifted, scope="job"), "sync_bottleneck")
    same = only(judge(run(4, rotating), scope="job"), "sync_bottleneck")
    assert (f.verdict, f.state) == (same.verdict, "active") == ("fix_here", "active")
    assert f.evidence["skew_seconds_per_step"] == pytest.approx(
        same.evidence["skew_seconds_per_step"], rel=0.05)


def test_a_rank_slow_in_a_third_of_the_steps_is_a_straggler_not_an_imbalance() -> None:
    """Rank 2 computes 0.15 s longer in every third step (its long sequences, a periodic
    host task) and the others wait for it; in the other steps whoever is last rotates
    by a hair. Rank 2 is last in only half the steps, but caused nearly all the waiting:
    a straggler to fix, not batches to balance."""
    out: list[Record] = []
    for r in range(4):
        out.append(meta(r, 4, host=f"node-{r}"))
        for k in range(1, N_STEPS + 1):
            slow_step = k % 3 == 0
            extra = 0.15 if slow_step else 0.0
            if slow_step:
                wait = 0.004 if r == 2 else 0.004 + extra
            else:
                wait = 0.004 if k % 4 == r else 0.006
            wall = WALL + extra
            out.append(Step(rank=r, step=k, t=START + k * 0.15, wall_s=wall,
                            compute_s=wall - 0.005, collective_s=wait,
                            collective_bytes=64_000_000, samples=8))
    findings = judge(out, scope="job")
    f = only(findings, "straggler")
    assert f.ranks == [2] and f.evidence["wait_caused_share_ratio"] > 0.9
    assert not [x for x in findings if x.detector == "sync_bottleneck"]


def varying(world: int, seed: int, steps: int = 600) -> list[Record]:
    """Batches of varying length on every rank alike: each rank's work drawn anew every
    step (0.4-1.0 s: a window holds a dozen steps), every rank waiting at the collective
    for that step's last."""
    rng = random.Random(seed)
    out: list[Record] = [meta(r, world, host=f"node-{r}") for r in range(world)]
    t = START
    for k in range(1, steps + 1):
        work = [rng.uniform(0.4, 1.0) for _ in range(world)]
        wall = max(work) + 0.03
        t += wall
        out += [Step(rank=r, step=k, t=t, wall_s=wall, compute_s=wall,
                     collective_s=wall - work[r], collective_bytes=64_000_000, samples=8)
                for r in range(world)]
    return out


@pytest.mark.parametrize("world", [2, 4])
def test_batches_of_varying_length_on_every_rank_name_no_straggler(world: int) -> None:
    """Over a dozen steps one of two ranks is a fifth slower by chance now and then, and
    caused most of that window's waiting: it was named a straggler ("check its clocks
    and cooling") in turn, though no rank is slower than another."""
    for seed in range(1, 6):
        findings = judge(varying(world, seed), scope="job")
        assert not [f for f in findings if f.detector == "straggler"], seed


def test_a_rank_whose_mean_is_under_the_work_ratio_holds_the_others_all_the_same() -> None:
    """Rank 2 is 0.05 s slower in every third step: its mean work is 1.17x the fastest
    (under work_ratio, 1.2), yet it caused all the waiting, which costs the others 14%
    of each step: a straggler."""
    out: list[Record] = []
    for r in range(4):
        out.append(meta(r, 4, host=f"node-{r}"))
        t = START
        for k in range(1, N_STEPS + 1):
            slow_step = k % 3 == 0
            wall = WALL + (0.05 if slow_step else 0.0)
            last = r == 2 if slow_step else k % 4 == r  # (who arrives last)
            wait = 0.004 if last else (0.054 if slow_step else 0.005)
            t += wall
            out.append(Step(rank=r, step=k, t=t, wall_s=wall, compute_s=wall - 0.004,
                            collective_s=wait, collective_bytes=64_000_000, samples=8))
    f = only(judge(out, scope="job"), "straggler")
    assert f.ranks == [2] and f.evidence["work_ratio"] < 1.2
    assert f.evidence["wait_caused_share_ratio"] > 0.9


def test_the_same_slow_rank_every_step_is_a_straggler_only() -> None:
    findings = judge(slow_rank_two(), scope="job")
    f = only(findings, "straggler")
    assert f.ranks == [2] and f.evidence["wait_caused_share_ratio"] == 1.0
    assert not [x for x in findings if x.detector == "sync_bottleneck"]


def test_transfer_a_slow_link_explains_is_a_move() -> None:
    pcie1 = {"pcie_bytes_per_second": 0.25e9 * 4, "pcie_generation": 1, "pcie_width": 4}
    f = only(judge(run(2, transfer, devices=pcie1, same_host=True), scope="job"),
             "sync_bottleneck")
    assert f.verdict == "move_to_h100" and "bandwidth-bound over PCIe gen 1 x4" in f.summary
    assert f.evidence["link_bytes_per_second"] == 1e9
    assert f.evidence["link_seconds_per_step"] == 0.064


def test_transfer_a_fast_link_does_not_explain_is_fixed_here() -> None:
    pcie4 = {"pcie_bytes_per_second": 1.969e9 * 16, "pcie_generation": 4, "pcie_width": 16}
    f = only(judge(run(2, transfer, devices=pcie4, same_host=True), scope="job"),
             "sync_bottleneck")
    assert f.verdict == "fix_here" and "not the link's bandwidth" in f.summary


def test_a_link_trained_down_at_idle_is_judged_at_its_slot_s_rate() -> None:
    """An idle card's PCIe link runs at gen 1 to save power, as when the agent reads the
    topology at start-up (and narrower); under load it trains up to the slot's maximum. The wait is
    judged against the slot's gen 4 x16, not the idle gen 1."""
    idle = {"pcie_bytes_per_second": 0.25e9 * 8, "pcie_generation": 1, "pcie_width": 8,
            "pcie_generation_max": 4, "pcie_width_max": 16}
    f = only(judge(run(2, transfer, devices=idle, same_host=True), scope="job"),
             "sync_bottleneck")
    assert f.verdict == "fix_here" and "PCIe gen 4 x16 could move" in f.summary
    assert f.evidence["link_bytes_per_second"] == pytest.approx(1.969e9 * 16)


def with_p2p(records: list[Record], read: bool) -> list[Record]:
    """Each rank on its own GPU of one node, with the P2P map the agent writes."""
    return [Event(r.rank, r.t, "topology", {
                **r.data, "devices": [{**r.data["devices"][0], "index": r.rank}],
                "job_gpus": [r.rank], "p2p": [{"gpus": [0, 1], "nvlink": False, "read": read}]})
            if isinstance(r, Event) else r for r in records]


def test_transfer_through_host_memory_is_that_path_s_bandwidth_whatever_the_slot() -> None:
    """GeForce cards cannot copy peer to peer: each byte crosses PCIe twice and the
    host's memory, far below the slot's rate. The wait a gen4 x16 slot would not explain
    is that path's bandwidth, and NVLink would fix it."""
    pcie4 = {"pcie_bytes_per_second": 1.969e9 * 16, "pcie_generation": 4, "pcie_width": 16}
    records = run(2, transfer, nbytes=400_000_000, devices=pcie4, same_host=True)
    staged = only(judge(with_p2p(records, read=False), scope="job"), "sync_bottleneck")
    assert staged.verdict == "move_to_h100" and "through host memory" in staged.summary
    direct = only(judge(with_p2p(records, read=True), scope="job"), "sync_bottleneck")
    assert direct.verdict == "fix_here" and "not the link's bandwidth" in direct.summary


@pytest.mark.parametrize("port", [25e9, 100e9])
def test_a_fabric_faster_than_the_path_through_host_memory_is_not_the_link(
        port: float) -> None:
    """Two hosts of two GPUs without P2P, one InfiniBand port each, 400 MB a step in a
    0.06 s wait: the path through host memory (a quarter of a gen4 slot shared by two
    GPUs: 0.05 s) is the slowest, whatever the port's rate. The host-staged floor was
    applied to the fabric where the fabric was the slower raw link (at 25 GB/s: "fix
    the fabric"), and to the slot where the fabric was faster (at 100 GB/s: a move)."""
    pcie4 = {"pcie_bytes_per_second": 1.969e9 * 16, "pcie_generation": 4, "pcie_width": 16}
    ib = [{"device": "mlx5_0", "port": 1, "link_layer": "InfiniBand", "bytes_per_second": port}]
    records: list[Record] = []
    for r in with_p2p(run(4, transfer, nbytes=400_000_000, devices=pcie4), read=False):
        if isinstance(r, Meta):
            r = replace(r, host=f"node-{r.rank // 2}", local_rank=r.rank % 2)
        elif isinstance(r, Event):
            gpu = {**r.data["devices"][0], "index": r.rank % 2}
            r = replace(r, data={**r.data, "devices": [gpu], "job_gpus": [r.rank % 2],
                                 "infiniband": ib})
        records.append(r)
    f = only(judge(records, scope="job"), "sync_bottleneck")
    assert "PCIe gen 4 x16 through host memory" in f.summary and "InfiniBand" not in f.summary
    assert f.evidence["link_seconds_per_step"] == pytest.approx(400e6 / (31.5e9 / 4 / 2),
                                                                rel=0.01)


@pytest.mark.parametrize("nbytes", [40_000_000, 200_000_000])
def test_a_wait_even_the_host_staged_path_would_be_quick_over_is_no_move(nbytes: int) -> None:
    """4 RTX 5090s without P2P wait 40% of each step (0.4 s) in collectives moving 40 or
    200 MB: even at the host-staged path's slowest (a quarter of a gen5 slot shared by
    the 4 GPUs: 4 GB/s) that is 0.01-0.05 s, so the wait is latency, contention or
    NCCL's transport, which no card fixes. It was a move, "bandwidth-bound through host
    memory", its own evidence saying the slot would take under 3 ms."""
    shape = Shape(step_s=1.0, duration_s=300, world=4, gpu=RTX_5090, collective_share=0.4,
                  collective_bytes=nbytes, memory=Memory(14, 8))
    f = only(judge([r for rank in simulate(shape) for r in rank], scope="job"),
             "sync_bottleneck")
    assert f.verdict == "fix_here" and f.projection is None
    assert "through host memory" in f.summary and "not the link's bandwidth" in f.summary
    assert f.evidence["link_seconds_per_step"] < 0.3 * f.evidence["transfer_seconds_per_step"]


def test_a_pipelines_bubble_is_told_from_its_sends_through_host_memory() -> None:
    """Pipeline stages wait in their receives alike (the schedule's bubble). When even
    the host-staged path at its worst moves the sends in a fraction of that wait, the
    stages wait on each other, not on the link: fix here. Sends that take the wait are
    that path's bandwidth, as all-reduces are."""
    pcie4 = {"pcie_bytes_per_second": 1.969e9 * 16, "pcie_generation": 4, "pcie_width": 16}

    def sent(nbytes: int) -> list[Record]:
        records = with_p2p(run(2, transfer, nbytes=nbytes, devices=pcie4, same_host=True),
                           read=False)
        return [replace(r, p2p_bytes=r.collective_bytes) if isinstance(r, Step) else r
                for r in records]

    bubble = only(judge(sent(64_000_000), scope="job"), "sync_bottleneck")
    assert bubble.verdict == "fix_here" and "the pipeline's bubble" in bubble.summary
    assert bubble.projection is None and "speedup_ratio" not in bubble.evidence
    assert "micro-batches" in bubble.action
    assert bubble.evidence["p2p_bytes_per_step"] == 64_000_000
    heavy = only(judge(sent(2_000_000_000), scope="job"), "sync_bottleneck")
    assert heavy.verdict == "move_to_h100" and "bandwidth-bound" in heavy.summary
    # PP x DP: 8 MB of sends beside a DP all-reduce of 8x their bytes, which the path
    # still moves in a fraction of the wait: the bubble, not latency or NCCL
    mixed = [replace(r, collective_bytes=9 * r.p2p_bytes) if isinstance(r, Step) else r
             for r in sent(8_000_000)]
    dp = only(judge(mixed, scope="job"), "sync_bottleneck")
    assert dp.verdict == "fix_here" and "the pipeline's bubble" in dp.summary
    assert "(8 MB point-to-point)" in dp.summary and "NCCL" not in dp.action


def test_nvlink_bridges_in_pairs_leave_the_ring_on_pcie() -> None:
    """Four GPUs bridged two by two (RTX 3090s, H100 NVL): the ring crosses PCIe between
    the pairs, through host memory where those cannot copy peer to peer. The slowest
    link is that path, not the bridges' NVLink."""
    pcie4 = {"pcie_bytes_per_second": 1.969e9 * 16, "pcie_generation": 4, "pcie_width": 16,
             "nvlink_links_active": 4, "nvlink_bytes_per_second": 112e9}
    pairs = [{"gpus": [a, b], "nvlink": a // 2 == b // 2, "read": a // 2 == b // 2}
             for a in range(4) for b in range(a + 1, 4)]
    records = [Event(r.rank, r.t, "topology", {
                   **r.data, "devices": [{**r.data["devices"][0], "index": r.rank}],
                   "job_gpus": [r.rank], "p2p": pairs})
               if isinstance(r, Event) else r
               for r in run(4, transfer, nbytes=1_000_000_000, devices=pcie4, same_host=True)]
    f = only(judge(records, scope="job"), "sync_bottleneck")
    assert f.verdict == "move_to_h100" and "over PCIe gen 4 x16 through host memory" in f.summary
    assert f.evidence["link_bytes_per_second"] == pytest.approx(1.969e9 * 16)
    bridged = [Event(r.rank, r.t, "topology", {**r.data, "p2p": [
                   {**pair, "nvlink": True, "read": True} for pair in pairs]})
               if isinstance(r, Event) else r for r in records]  # NVSwitch: every pair
    f = only(judge(bridged, scope="job"), "sync_bottleneck")
    assert f.verdict == "fix_here" and "NVLink could move these bytes" in f.summary
    assert "not the link's bandwidth" in f.summary


def test_a_wait_whose_bytes_were_not_seen_is_no_move() -> None:
    """With no bytes, nothing tells a slow link from latency or a misconfigured NCCL:
    the wait is reported, no move is (and no link is blamed for it)."""
    pcie4 = {"pcie_bytes_per_second": 1.969e9 * 16, "pcie_generation": 4, "pcie_width": 16}
    for devices in (pcie4, None):
        f = only(judge(run(2, transfer, nbytes=0, devices=devices, same_host=True),
                       scope="job"), "sync_bottleneck")
        assert f.verdict == "info" and "bytes per step not seen" in f.summary
        assert "link_seconds_per_step" not in f.evidence


def test_inter_node_link_from_infiniband_is_the_slowest_link_and_no_move_changes_it() -> None:
    """A wait the 10 Gb/s link between nodes explains: bandwidth-bound over InfiniBand,
    which H100 nodes on the same fabric would wait on as long. No move: fix the
    fabric."""
    records = run(2, transfer, devices={"pcie_bytes_per_second": 31.5e9,
                                        "nvlink_links_active": 18,
                                        "nvlink_bytes_per_second": 450e9})
    ib = [{"device": "mlx5_0", "port": 1, "link_layer": "InfiniBand",
           "bytes_per_second": 12.5e9 / 10}]  # a 10 Gb/s port
    records = [Event(r.rank, r.t, "topology", {**r.data, "infiniband": ib})
               if isinstance(r, Event) else r for r in records]
    f = only(judge(records, scope="job"), "sync_bottleneck")
    assert f.verdict == "fix_here" and "bandwidth-bound over InfiniBand (inter-node)" in f.summary
    assert "faster fabric" in f.action and "on the same fabric the wait stays" in f.summary
    assert f.projection is not None
    assert f.projection["parts_seconds_projected"]["comm"] == pytest.approx(
        f.projection["parts_seconds_now"]["comm"])  # the fabric stays: so does the wait
    # eight such rails on each node carry 8x the bytes: NCCL spreads its rings over all
    rails = [Event(r.rank, r.t, "topology", {**r.data, "infiniband": [
        {**ib[0], "device": f"mlx5_{k}"} for k in range(8)]}) if isinstance(r, Event) else r
        for r in records]
    railed = only(judge(rails, scope="job"), "sync_bottleneck")
    assert railed.evidence["link_bytes_per_second"] == pytest.approx(8 * 12.5e9 / 10)
    # the same job told its inter-node link is 400 Gb/s: not the link
    fast = only(judge(records, scope="job", detectors={"sync_bottleneck": {
        "inter_node_bytes_per_second": 50e9}}), "sync_bottleneck")
    assert fast.verdict == "fix_here"


def test_a_node_short_of_its_rails_is_named() -> None:
    """Node 1 lost one of its eight rails: whatever the verdict, the advice names it."""
    records = run(2, transfer, nbytes=64_000_000, devices={
        "pcie_bytes_per_second": 31.5e9, "nvlink_links_active": 18,
        "nvlink_bytes_per_second": 450e9})
    port = {"device": "mlx5_0", "port": 1, "link_layer": "InfiniBand",
            "bytes_per_second": 50e9}
    railed = [Event(r.rank, r.t, "topology", {**r.data, "infiniband": [
        {**port, "device": f"mlx5_{k}"} for k in range(8 - r.rank)]})
        if isinstance(r, Event) else r for r in records]
    f = only(judge(railed, scope="job"), "sync_bottleneck")
    assert "host node-1 has 7 ports up, the others 8" in f.action
    even = [Event(r.rank, r.t, "topology", {**r.data, "infiniband": [
        {**port, "device": f"mlx5_{k}"} for k in range(8)]})
        if isinstance(r, Event) else r for r in records]
    assert "ports up" not in only(judge(even, scope="job"), "sync_bottleneck").action


def test_what_was_not_timed_is_said() -> None:
    records = run(4, rotating)
    records.append(Event(0, START + 1, "collective_timing", {
        "ddp": "not timed: no autograd queue_callback in this torch",
        "work_wait": "Work.wait on the current stream"}))
    f = only(judge(records, scope="job"), "sync_bottleneck")
    assert "; not timed: ddp (no autograd queue_callback in this torch)." in f.summary
    assert "work_wait" not in f.summary


def test_split_aligns_steps_by_number_and_breaks_ties_evenly() -> None:
    views = []
    for r in range(2):
        v = Telemetry(r)
        v.add([s for s in run(2, lambda r, k: 0.01)[1:] if isinstance(s, Step) and s.rank == r])
        views.append(v)
    result = split(views, START, 10)
    assert result is not None and result.caused_share == {0: 0.5, 1: 0.5}
    assert abs(result.transfer_s - 0.01) < 1e-12 and result.mean_skew_s == 0


def test_published_step_waits_round_trip_compactly() -> None:
    steps = [s for s in run(1, rotating) if isinstance(s, Step)]
    data = encode_steps(steps)
    waits = decode_steps(data)
    assert [w.step for w in waits] == list(range(N_STEPS - len(waits) + 1, N_STEPS + 1))
    assert abs(waits[-1].wait_s - rotating(0, N_STEPS)) < 1e-6


def live(records: list[Record], **settings: Any) -> list[Finding]:
    """Rank 0's live judgement: its own steps, the others only as published summaries."""
    engine = engine_from_settings(Settings(**settings), "job", "job")
    own = Telemetry(0)
    own.add([r for r in records if r.rank == 0])
    engine.views[0] = own
    world = 1 + max(r.rank for r in records)
    for rank in range(1, world):
        peer = Telemetry(rank)
        peer.add([r for r in records if r.rank == rank])
        known = engine.published[rank] = PeerRank(rank)
        known.update(summary(peer, f"node-{rank}", START + N_STEPS * WALL), world)
    end = START + N_STEPS * WALL
    engine.evaluate(end)
    engine.evaluate(end + 6)  # past the rules' for_s
    return engine.active()


def test_live_judgement_from_published_waits_matches_offline() -> None:
    rotating_live = only(live(run(4, rotating)), "sync_bottleneck")
    assert rotating_live.verdict == "fix_here"
    assert "different one from step to step" in rotating_live.summary
    verdicts = {(f.detector, tuple(f.ranks)) for f in live(slow_rank_two())}
    assert verdicts == {("straggler", (2,))}


def accumulating(world: int, every: int, sync_s: float, steps: int = 480,
                 slow: float = 1.0) -> list[Record]:
    """``world`` ranks on one host of GeForce cards without P2P; the loop marks each
    micro-batch (0.25 s) as a step, and every ``every``-th ends with the all-reduce of
    the accumulated gradients (2.1 GB, ``sync_s``); the others move no bytes. The last
    rank computes ``slow`` times as long: at each sync the others wait for the micro-
    steps it fell behind by."""
    out: list[Record] = []
    for r in range(world):
        out.append(meta(r, world, host="node-a"))
        out.append(Event(r, START, "topology", {
            "devices": [{"index": i, "name": "NVIDIA GeForce RTX 4090",
                         "nvlink_links_active": 0, "pcie_generation": 4,
                         "pcie_generation_max": 4, "pcie_width": 16, "pcie_width_max": 16}
                        for i in range(world)],
            "job_gpus": [r], "gpu_count": world,
            "p2p": [{"gpus": [a, b], "nvlink": False, "read": False}
                    for a in range(world) for b in range(world) if a < b]}))
        t = START
        micro = 0.25 * (slow if r == world - 1 else 1.0)
        behind = every * 0.25 * (slow - 1.0)  # what the others wait at a sync for the last
        for k in range(1, steps + 1):
            sync = k % every == 0
            wait = sync_s + (behind if r != world - 1 else 0.0) if sync else 0.0
            wall = micro + wait
            t += wall
            out.append(Step(rank=r, step=k, t=t, wall_s=wall, compute_s=wall - 0.01,
                            data_s=0.01, collective_s=wait,
                            collective_bytes=int(2.1e9) if sync else 0, samples=4))
    return out


def test_a_gradient_sync_every_sixteenth_micro_step_is_the_jobs_rhythm() -> None:
    """The all-reduce step is 7x the median and one step in 16 (too rare to be the
    rhythm by count alone): it carries the job's bytes and its wait, so it is kept in
    the windows (not an interruption), and the windows span cycles, not micro-steps:
    27% of the time in a transfer through host memory holds as one verdict."""
    records = accumulating(4, 16, 1.5)
    view = Telemetry(0)
    view.add([r for r in records if r.rank == 0])
    assert view.cycle_steps == 16 and not any(view.interrupted_by.count.values())
    f = only(judge(records, scope="job"), "sync_bottleneck")
    assert f.state == "active" and "bandwidth-bound" in f.summary
    # (within the cycles' share a window ending at any step of a cycle holds)
    assert f.evidence["collective_bytes_per_step"] == pytest.approx(2.1e9 / 16, rel=0.15)
    assert f.evidence["collective_share_ratio"] == pytest.approx(1.5 / 5.5, rel=0.1)


@pytest.mark.parametrize("alone", [
    Evals(every_s=600, seconds=240, ranks=(0,)),
    Saves(every_s=600, blocking_s=120, nbytes=int(60e9), ranks=(0,))])
def test_the_wait_for_a_rank_that_evaluates_or_saves_alone_is_no_imbalance(
        alone: Evals | Saves) -> None:
    """DDP on 4 H100s, 0.5 s steps; rank 0 alone runs a 240 s eval or writes a 120 s
    save every 10 minutes and the others wait in the next all-reduce. That one step's
    wait is rank 0's doing every time: not an imbalance to balance, nor a straggler."""
    shape = Shape(step_s=0.5, duration_s=1500, world=4, collective_share=0.05,
                  collective_bytes=int(2e9), memory=Memory(60, 35),
                  evals=alone if isinstance(alone, Evals) else None,
                  saves=alone if isinstance(alone, Saves) else None)
    records = [r for rank in simulate(shape) for r in rank]
    findings = judge(records, scope="job")
    assert not [f for f in findings if f.detector in ("sync_bottleneck", "straggler")]


def test_a_straggler_among_accumulating_ranks_is_named_once_from_the_start() -> None:
    """Rank 3 computes each micro-step 1.3x as long; at each sync (every 8th) the others
    wait 0.6 s more for it. Each rank's window was sized by its own median step, so the
    ranks were compared over spans holding different syncs, and the straggler came and
    went; over one span for all it holds from the start."""
    records = accumulating(4, 8, 1.0, steps=1200, slow=1.3)
    stragglers = [f for f in judge(records, scope="job") if f.detector == "straggler"]
    assert [(f.ranks, f.state) for f in stragglers] == [([3], "active")]
    assert stragglers[0].first_seen < START + 60


def test_a_move_for_the_link_is_priced_with_the_run_s_saves_as_time_to_finish_is() -> None:
    """4 L40S over PCIe, 30% of each step in a 9 GB all-reduce, and rank 0 writing a 15 s
    blocking save every minute while the others wait: the run pays a fifth of its time
    for saves no card shortens. sync_bottleneck priced the typical window alone and
    called the H100 cheaper where the time to finish, with the saves, showed it dearer."""
    shape = Shape(step_s=1.0, duration_s=600, world=4, gpu=L40S, collective_share=0.3,
                  collective_bytes=int(9e9), total_steps=100_000, memory=Memory(40, 25),
                  saves=Saves(every_s=60, blocking_s=15, ranks=(0,)))
    findings = judge([r for rank in simulate(shape) for r in rank], scope="job")
    sync = only(findings, "sync_bottleneck")
    assert sync.projection is not None
    assert sync.projection["step_seconds_now"] > 1.2  # (1 s steps, with the saves spread)
    assert sync.projection["decision"]["cheaper_at_low_end"] is False
