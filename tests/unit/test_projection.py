"""The GPU catalogue against its sources, exact name matching, and the step projection:
every part accounted for, each scaled by its own ratio, as a range."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest

from gpuwatch.config import Settings
from gpuwatch.detection.catalogue import catalogue, identify
from gpuwatch.detection.context import Context, mean_parts
from gpuwatch.detection.engine import engine_from_settings
from gpuwatch.detection.projection import (
    Inputs,
    StepParts,
    mean_step_parts,
    project,
    speedup_text,
)
from gpuwatch.records import Event
from gpuwatch.telemetry import Telemetry
from tests.runs import GB, START, meta, samples, steps

GPUS = catalogue()
H100, RTX5090 = GPUS["H100 SXM"], GPUS["RTX 5090"]
FLOPS = RTX5090.bf16_flops / H100.bf16_flops  # 209.5 / 989.4
BANDWIDTH = RTX5090.memory_bandwidth / H100.memory_bandwidth  # 1.792 / 3.35


# -- the catalogue ------------------------------------------------------------------------

def test_every_entry_cites_a_dated_source_and_a_dated_price() -> None:
    for g in GPUS.values():
        assert "datasheet" in g.source or "whitepaper" in g.source, g.name
        assert re.fullmatch(r"20\d\d-\d\d", g.source_date), g.name
        assert re.fullmatch(r"default as of 20\d\d-\d\d", g.price_source), g.name
        assert g.memory_bytes > 0 and g.memory_bandwidth > 0 and g.power_watts > 0
        assert g.price_per_hour > 0


def test_each_entry_keeps_its_sources_own_ratios() -> None:
    """Dense figures on these parts: BF16 = 2 x TF32, FP8 = 2 x BF16, FP4 = 2 x FP8 (at
    the same accumulate); GeForce alone halves FP32 accumulate."""
    for g in GPUS.values():
        assert g.bf16_flops == pytest.approx(2 * g.tf32_flops, rel=0.02), g.name
        if g.fp8_flops:
            assert g.fp8_flops == pytest.approx(2 * g.bf16_flops, rel=0.02), g.name
        if g.fp4_flops:
            assert g.fp4_flops == pytest.approx(2 * g.fp8acc16_flops, rel=0.02), g.name
        geforce = any("GeForce" in m for m in g.match)
        halved = 2.0 if geforce else 1.0
        assert g.fp16acc_flops == pytest.approx(halved * g.bf16_flops, rel=0.01), g.name
        assert g.fp8acc16_flops == pytest.approx(halved * g.fp8_flops, rel=0.01), g.name


def test_spec_sheet_figures_of_the_cards_that_matter() -> None:
    dense_bf16 = {"RTX 5090": 209.5, "RTX 4090": 165.2, "L40S": 362.05, "H100 SXM": 989.4,
                  "H100 PCIe": 756, "H100 NVL": 835.5, "H200": 989.5, "RTX PRO 6000 Blackwell":
                  503.8, "B200": 2250}
    for name, tflops in dense_bf16.items():
        assert GPUS[name].bf16_flops == pytest.approx(tflops * 1e12), name
    bandwidth = {"H100 SXM": 3.35, "H100 PCIe": 2.0, "H100 NVL": 3.9, "H200": 4.8,
                 "GH200 96GB": 4.0, "GH200 144GB": 4.9, "RTX 5090": 1.792}
    for name, tbs in bandwidth.items():
        assert GPUS[name].memory_bandwidth == pytest.approx(tbs * 1e12), name
    # a card's "GB" are binary: what NVML reports (an A100 80GB: 81,920 MiB)
    assert GPUS["H200"].memory_bytes == 141 * 2**30
    assert GPUS["GH200 144GB"].memory_bytes == 144 * 2**30
    assert GPUS["A100 SXM 80GB"].memory_bytes == 81920 * 2**20
    assert GPUS["RTX 5090"].fp8_flops == pytest.approx(419e12)
    assert GPUS["L40S"].fp8_flops == pytest.approx(733e12)
    assert GPUS["A100 SXM 80GB"].fp8_flops == 0 and GPUS["H100 SXM"].fp4_flops == 0
    assert RTX5090.nvlink_bandwidth == 0 and H100.nvlink_bandwidth == 450e9
    assert GPUS["H800 SXM"].nvlink_bandwidth == 200e9


@pytest.mark.parametrize(("device", "entry"), [
    ("NVIDIA GeForce RTX 5090", "RTX 5090"),
    ("NVIDIA GeForce RTX 4090", "RTX 4090"),
    ("NVIDIA H100 80GB HBM3", "H100 SXM"),
    ("NVIDIA H100 PCIe", "H100 PCIe"),
    ("NVIDIA H100 NVL", "H100 NVL"),
    ("NVIDIA H800", "H800 SXM"),
    ("NVIDIA H200", "H200"),
    ("NVIDIA H200 NVL", "H200 NVL"),
    ("NVIDIA GH200 480GB", "GH200 96GB"),
    ("NVIDIA GH200 144G HBM3e", "GH200 144GB"),
    ("NVIDIA A100-SXM4-80GB", "A100 SXM 80GB"),
    ("NVIDIA A100 80GB PCIe", "A100 PCIe 80GB"),
    ("NVIDIA RTX PRO 6000 Blackwell Workstation Edition", "RTX PRO 6000 Blackwell"),
    ("NVIDIA L40S", "L40S"),
    ("NVIDIA A30", "A30"),
    ("NVIDIA A40", "A40"),
    ("NVIDIA RTX A6000", "RTX A6000"),
    ("NVIDIA RTX 6000 Ada Generation", "RTX 6000 Ada"),
    ("NVIDIA B200", "B200"),
    ("RTX 5090", "RTX 5090"),  # a catalogue name (the gpu_model setting)
])
def test_nvml_names_match_their_own_entry(device: str, entry: str) -> None:
    gpu = identify(device, GPUS)
    assert gpu is not None and gpu.name == entry


@pytest.mark.parametrize("device", [
    "NVIDIA H100 80GB HBM3 MIG 1g.10gb",  # a MIG slice is not the full card
    "NVIDIA H200 MIG 3g.71gb",
    "NVIDIA GH200 999GB",  # a GH200 never matches H200 by substring
    "NVIDIA GeForce RTX 5090 D",
    "NVIDIA RTX PRO 6000 Blackwell Max-Q Workstation Edition",  # other clocks: not guessed
    "Tesla K80",
    "NVIDIA A10G",  # AWS's variant of the A10, with no datasheet of its own
    "NVIDIA A40-48Q",  # a vGPU profile
])
def test_other_names_are_unknown_not_guessed(device: str) -> None:
    assert identify(device, GPUS) is None


# -- the projection -----------------------------------------------------------------------

def test_the_parts_sum_to_the_measured_step_and_idle_time_is_kept() -> None:
    now = StepParts(compute=0.5, optimizer=0.2, data=0.2, checkpoint=0.05, other=0.05)
    p = project(now, H100, RTX5090, gpu_busy=0.5, tensor_share=1.0)
    # 50% idle = 0.5 s; 0.3 s of it is data, checkpoint, other; 0.2 s lies in compute + optimizer
    assert p.now.total == pytest.approx(now.total)
    assert p.now.idle == pytest.approx(0.2)
    assert p.now.compute == pytest.approx(0.5 * (1 - 0.2 / 0.7))
    assert p.now.optimizer == pytest.approx(0.2 * (1 - 0.2 / 0.7))
    for end in (p.projected, p.slowest, p.fastest):
        assert (end.idle, end.data, end.checkpoint, end.other) == (p.now.idle, 0.2, 0.05, 0.05)
        assert end.optimizer == pytest.approx(p.now.optimizer * BANDWIDTH)
    assert p.projected.compute == pytest.approx(p.now.compute * FLOPS)
    assert "GPU 50% busy (NVML): 20% of the step is idle time" in " ".join(p.assumptions)


def test_unmeasured_tensor_share_spans_memory_bound_to_tensor_bound() -> None:
    p = project(StepParts(compute=1.0), H100, RTX5090)
    assert p.speedup_low == pytest.approx(1 / BANDWIDTH)  # all memory-bound: 1.87x
    assert p.speedup_high == pytest.approx(1 / FLOPS)  # all tensor-bound: 4.72x
    assert p.speedup == pytest.approx(1 / (0.5 * FLOPS + 0.5 * BANDWIDTH))  # 2.68x
    assert speedup_text(p.as_dict()) == "1.9\u20134.7\u00d7 (2.7\u00d7 at the middle)"
    d = p.as_dict()
    assert d["tensor_share_measured"] is False
    assert (d["tensor_share_low_ratio"], d["tensor_share_high_ratio"]) == (0.0, 1.0)
    assert any("tensor share not measured" in a for a in d["assumptions"])


def test_a_measured_tensor_share_narrows_the_range() -> None:
    wide = project(StepParts(compute=1.0), H100, RTX5090)
    narrow = project(StepParts(compute=1.0), H100, RTX5090, tensor_share=0.6)
    assert wide.speedup_low < narrow.speedup_low < narrow.speedup < narrow.speedup_high
    assert narrow.speedup_high < wide.speedup_high
    assert narrow.tensor_share == pytest.approx((0.45, 0.6, 0.75))
    assert narrow.as_dict()["tensor_share_measured"] is True


def test_a_busy_card_drawing_little_power_keeps_compute_at_the_low_end() -> None:
    """NVML says 90% busy, yet the RTX 5090 draws 150 W of its 575 W: kernels too small to
    fill it, launch-bound; the low end keeps compute as measured (a faster card barely
    helps), the middle and the high end stay the catalogue's. At 500 W it is the
    catalogue's range."""
    light = project(StepParts(compute=1.0), H100, RTX5090,
                    inputs=Inputs(gpu_busy=0.9, power_watts=150.0))
    assert light.speedup_low == pytest.approx(1.0)  # busy and idle time alike as they are
    assert light.speedup == pytest.approx(
        project(StepParts(compute=1.0), H100, RTX5090, gpu_busy=0.9).speedup)
    assert any("board power" in a for a in light.assumptions)
    full = project(StepParts(compute=1.0), H100, RTX5090,
                   inputs=Inputs(gpu_busy=0.9, power_watts=500.0))
    assert full.speedup_low > 1.5 and not any("board power" in a for a in full.assumptions)


def test_a_point_is_shown_as_one_number() -> None:
    same = project(StepParts(compute=1.0), H100, H100)
    assert speedup_text(same.as_dict()) == "1.0\u00d7"
    # ends 4% apart that print alike: one number, not "1.2-1.2x"
    close = {"speedup_ratio": 1.22, "speedup_low_ratio": 1.20, "speedup_high_ratio": 1.249}
    assert speedup_text(close) == "1.2\u00d7"


def test_each_part_scales_by_its_own_ratio() -> None:
    now = StepParts(compute=1.0, recompute=0.2, comm=0.4, data=0.1, checkpoint=0.05,
                    other=0.01, comm_bytes=2e9, optimizer=0.3)
    p = project(now, H100, RTX5090, ranks=4, tensor_share=1.0, drop_recompute=True)
    assert p.projected.compute == pytest.approx(FLOPS)
    assert p.projected.recompute == 0
    assert p.projected.optimizer == pytest.approx(0.3 * BANDWIDTH)
    assert p.projected.comm == pytest.approx(2e9 / 450e9)  # bus bytes over the target's link
    assert (p.projected.data, p.projected.checkpoint, p.projected.other) == (0.1, 0.05, 0.01)
    assert p.workarounds_dropped == [f"activation checkpointing off: -{0.2 / now.total:.0%} "
                                     "step time"]
    kept = project(now, H100, RTX5090, ranks=4, tensor_share=0.0)
    assert kept.projected.recompute == pytest.approx(0.2 * BANDWIDTH)  # scaled like compute
    assert kept.projected.compute == pytest.approx(BANDWIDTH)


def test_comm_without_bytes_scales_by_todays_link_and_never_slows_down() -> None:
    now = StepParts(compute=1.0, comm=0.5)
    p = project(now, H100, RTX5090, ranks=2, link_now=16e9)
    assert p.projected.comm == pytest.approx(0.5 * 16e9 / 450e9)
    assert "today's link 16 GB/s per direction (topology)" in p.assumptions
    catalogued = project(now, H100, RTX5090, ranks=2)  # the card's own PCIe gen5 x16
    assert catalogued.projected.comm == pytest.approx(0.5 * 64e9 / 450e9)
    guessed = project(now, H100, None, ranks=2)
    assert guessed.projected.comm == pytest.approx(0.5 * 32e9 / 450e9)
    assert "today's link unknown: taken as PCIe gen4 x16 (32 GB/s)" in guessed.assumptions
    fast = project(StepParts(compute=1.0, comm=0.001, comm_bytes=1e9), H100, None, ranks=2)
    assert fast.projected.comm == 0.001


def test_collective_time_is_kept_where_the_link_does_not_change() -> None:
    now = StepParts(compute=1.0, comm=0.5, comm_bytes=4e9)
    p = project(now, GPUS["H200"], H100, ranks=8)  # NVLink 900 GB/s on both
    assert p.projected.comm == 0.5  # the ring model's ideal would be 0.0156 s
    assert any(a.startswith("collectives kept: H200's link (450 GB/s per direction)")
               for a in p.assumptions)
    pcie = project(now, GPUS["L40S"], GPUS["RTX 4090"], ranks=2, link_now=32e9)
    assert pcie.projected.comm == 0.5


def test_a_wait_todays_link_does_not_explain_is_kept_on_any_card() -> None:
    """sync_bottleneck's reading: few bytes (latency-bound), or bytes today's link moves
    in a fraction of the wait (contention, a misconfigured NCCL), are not the link's
    bandwidth; only the link's part of the wait shrinks on the target. A wait the link
    explains goes at the target's rate."""
    judged = Inputs(link_now=64e9, latency_bytes=8e6, link_explained=0.3, tensor_share=1.0)
    small = project(StepParts(compute=1.0, comm=0.35, comm_bytes=4e6), H100, RTX5090,
                    ranks=4, inputs=judged)
    assert small.projected.comm == pytest.approx(0.35 - 4e6 / 64e9 + 4e6 / 450e9)
    assert any("(latency, contention) kept on any card" in a for a in small.assumptions)
    unexplained = project(StepParts(compute=1.0, comm=0.6, comm_bytes=1.2e9), H100, RTX5090,
                          ranks=4, inputs=judged)  # 0.019 s at 64 GB/s
    assert unexplained.projected.comm == pytest.approx(0.6 - 1.2e9 / 64e9 + 1.2e9 / 450e9)
    explained = project(StepParts(compute=1.0, comm=0.6, comm_bytes=20e9), H100, RTX5090,
                        ranks=4, inputs=judged)  # 0.31 s at 64 GB/s: bandwidth-bound
    assert explained.projected.comm == pytest.approx(20e9 / 450e9)
    staged = project(StepParts(compute=1.0, comm=0.6, comm_bytes=1.2e9), H100, RTX5090,
                     ranks=4, inputs=replace(judged, host_staged=True))
    assert staged.projected.comm == pytest.approx(1.2e9 / 450e9)  # that path's bandwidth
    # where the ranks were compared, waiting on a slower rank is no latency: 3 GB take
    # 0.047 s of a 0.15 s transfer (explained), the other 0.21 s of the wait is skew
    skewed = project(StepParts(compute=1.0, comm=0.36, comm_bytes=3e9), H100, RTX5090,
                     ranks=4, inputs=replace(judged, transfer_s=0.15))
    assert skewed.projected.comm == pytest.approx(3e9 / 450e9)


def test_a_pipelines_wait_beyond_its_bytes_is_a_bubble_scaled_like_compute() -> None:
    # 0.3 s of receives a step, 400 MB of activations sent: through host memory at a
    # quarter of PCIe gen5 x16 (16 GB/s) that is 0.025 s; the rest is the bubble.
    now = StepParts(compute=1.0, comm=0.3, comm_bytes=400e6, p2p_bytes=400e6)
    staged = Inputs(link_now=64e9, host_staged=True, tensor_share=1.0)
    p = project(now, H100, RTX5090, ranks=4, inputs=staged)
    assert p.now.comm == pytest.approx(0.025) and p.now.bubble == pytest.approx(0.275)
    assert p.now.total == pytest.approx(now.total)  # carved out, nothing lost
    assert p.projected.bubble == pytest.approx(0.275 * FLOPS)  # shrinks with compute only
    assert p.projected.comm == pytest.approx(400e6 / 450e9)
    assert any("the pipeline's bubble, scaled with compute" in a for a in p.assumptions)
    # the same bytes from all-reduces: all of the wait is transfer, as before
    reduced = project(now._replace(p2p_bytes=0.0), H100, RTX5090, ranks=4, inputs=staged)
    assert reduced.now.bubble == 0 and reduced.projected.comm == pytest.approx(400e6 / 450e9)
    # bytes that take the whole wait over today's path: no bubble
    heavy = project(now._replace(comm_bytes=8e9, p2p_bytes=8e9), H100, RTX5090, ranks=4,
                    inputs=staged)
    assert heavy.now.bubble == 0 and heavy.now.comm == 0.3


def test_a_pipeline_whose_all_reduce_carries_most_bytes_still_has_its_bubble() -> None:
    # PP x DP (3-D parallel): 9.5 GB of the DP pair's all-reduce and 0.5 GB of sends a
    # step, 0.88 s of wait; PCIe gen4 x16 (31.5 GB/s) moves the 10 GB in 0.32 s, the
    # other 0.56 s is the stages waiting on each other: compute, not link
    now = StepParts(compute=1.1, comm=0.88, comm_bytes=10e9, p2p_bytes=0.5e9)
    pcie = Inputs(link_now=31.5e9, tensor_share=1.0)
    p = project(now, H100, RTX5090, ranks=8, inputs=pcie)
    assert p.now.comm == pytest.approx(10e9 / 31.5e9)
    assert p.now.bubble == pytest.approx(0.88 - 10e9 / 31.5e9)
    assert p.projected.bubble == pytest.approx(p.now.bubble * FLOPS)
    # no point-to-point sends at all: no pipeline, the wait is transfer as measured
    flat = project(now._replace(p2p_bytes=0.0), H100, RTX5090, ranks=8, inputs=pcie)
    assert flat.now.bubble == 0


def test_precision_picks_the_tensor_figure_and_a_card_without_fp8_runs_bf16() -> None:
    fp8 = project(StepParts(compute=1.0), H100, RTX5090, tensor_share=1.0,
                  inputs=Inputs(precision="fp8"))
    assert fp8.projected.compute == pytest.approx(419 / 1978.9)
    a100 = GPUS["A100 SXM 80GB"]
    down = project(StepParts(compute=1.0), a100, H100, tensor_share=1.0,
                   inputs=Inputs(precision="fp8"))
    assert down.projected.compute == pytest.approx(1978.9 / 312)
    assert "A100 SXM 80GB has no FP8 tensor cores: it would run BF16" in down.assumptions
    up = project(StepParts(compute=1.0), H100, a100, tensor_share=1.0,
                 inputs=Inputs(precision="fp8"))
    assert up.projected.compute == pytest.approx(312 / 989.4)


def test_an_unknown_card_is_named_and_its_compute_not_scaled() -> None:
    p = project(StepParts(compute=1.0, optimizer=0.5), H100, None,
                inputs=Inputs(device_name="NVIDIA H100 80GB HBM3 MIG 1g.10gb"))
    assert p.projected.total == pytest.approx(1.5) and p.speedup == 1.0
    assert p.assumptions[0] == ("current GPU 'NVIDIA H100 80GB HBM3 MIG 1g.10gb' is not in "
                                "the catalogue: compute is not scaled")
    assert p.as_dict()["current_device"] == "NVIDIA H100 80GB HBM3 MIG 1g.10gb"


def test_the_mean_of_ranks_keeps_every_part() -> None:
    a = StepParts(compute=1.0, optimizer=0.2, comm=0.4, comm_bytes=2e6)
    b = StepParts(compute=3.0, optimizer=0.4, idle=0.2)
    m = mean_step_parts([a, b])
    assert (m.compute, m.optimizer, m.comm, m.idle, m.comm_bytes) == pytest.approx(
        (2.0, 0.3, 0.2, 0.1, 1e6))


# -- what the context measures for a projection ------------------------------------------

def test_the_context_feeds_the_projection_what_the_run_measured() -> None:
    view = Telemetry()
    topo = {"devices": [{"index": 0, "name": "NVIDIA GeForce RTX 4090",
                         "memory_total_bytes": 24 * GB, "nvlink_links_active": 0,
                         "pcie_generation_max": 4, "pcie_width_max": 8}], "job_gpus": [0]}
    view.add([meta(0, 2), Event(0, START, "topology", topo),
              *steps(60, wall=0.5, data_s=0.05, optimizer_s=0.05, collective_s=0.1,
                     tokens=4096),
              *samples("nvml", 60, {"gpu_utilization_ratio": 0.8, "gpu_tensor_active_ratio": 0.3,
                                    "gpu_dram_active_ratio": 0.1, "gpu_power_watts": 400.0},
                       gpu=0)])
    ctx = Context(gpus=GPUS, planned_steps=10_000)
    since = START + 30
    summary = view.summarise(since)
    assert summary is not None
    parts = mean_parts(summary)
    assert parts.total == pytest.approx(0.5)  # optimizer included: the parts sum to the step
    p = ctx.project([view], parts, since)
    i = p.inputs
    assert i.tensor_share == pytest.approx(0.75) and i.gpu_busy == pytest.approx(0.8)
    assert i.link_now == pytest.approx(1.969e9 * 8)  # PCIe gen4 x8
    assert (i.unit, i.units_per_step) == ("1M tokens", 2 * 4096)  # two ranks
    assert i.power_watts == 400 and i.remaining_steps == 10_000 - 120
    assert p.current is not None and p.current.name == "RTX 4090" and p.gpus == 2
    d = p.as_dict()
    assert d["hours_to_finish_now"] == pytest.approx(9_880 * 0.5 / 3600)
    assert d["cost_per_unit_now_usd"] == pytest.approx(0.5 * 0.40 / 3600 * 2 * 1e6 / 8192)


def test_projections_read_a_link_as_sync_bottleneck_does_with_the_users_thresholds() -> None:
    context = engine_from_settings(Settings(detectors={"sync_bottleneck": {
        "link_explained_ratio": 0.5, "min_bytes_per_step": 1e6}}), "job").context
    assert (context.link_explained, context.latency_bytes) == (0.5, 1e6)
