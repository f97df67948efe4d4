"""Rule files and the GPU catalogue and projection model."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpuwatch.config import ConfigError
from gpuwatch.detection.engine import JOB_DETECTORS, RANK_DETECTORS
from gpuwatch.detection.projection import (
    StepParts,
    catalogue,
    identify,
    project,
    ring_allreduce_seconds,
)
from gpuwatch.detection.rules import load_rules, rules_dir

REQUIRED_GPUS = {"RTX 4090", "RTX 5090", "L40S", "A100 SXM 40GB", "A100 SXM 80GB", "H100 PCIe",
                 "H100 SXM", "H200", "B200"}


def test_every_detector_has_a_valid_rule_file_and_code() -> None:
    rules = load_rules()
    assert set(rules) == set(RANK_DETECTORS) | set(JOB_DETECTORS)
    for rule in rules.values():
        assert (rule.scope == "job") == (rule.id in JOB_DETECTORS)
        assert rule.runbook.startswith("docs/runbooks.md#")
        assert (rules_dir() / f"{rule.id}.yaml").is_file()


def test_a_malformed_rule_file_is_a_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "broken.yaml").write_text("id: broken\nscope: everywhere\n")
    with pytest.raises(ConfigError, match=r"^gpuwatch rules: broken.yaml: ") as err:
        load_rules(tmp_path)
    assert "\n" not in str(err.value)


def test_catalogue_has_the_cards_that_matter_and_identifies_nvml_names() -> None:
    gpus = catalogue({"H100 SXM": 1.99})
    assert set(gpus) >= REQUIRED_GPUS
    for g in gpus.values():
        assert g.memory_bytes > 0 and g.memory_bandwidth > 0 and g.bf16_flops > 0
        assert g.price_per_hour > 0
    assert gpus["H100 SXM"].price_per_hour == 1.99
    assert gpus["RTX 5090"].nvlink_bandwidth == 0 and gpus["H100 SXM"].nvlink_bandwidth == 450e9
    assert identify("NVIDIA H100 80GB HBM3", gpus).name == "H100 SXM"  # type: ignore[union-attr]
    assert identify("NVIDIA H100 PCIe", gpus).name == "H100 PCIe"  # type: ignore[union-attr]
    assert identify("NVIDIA GeForce RTX 4090", gpus).name == "RTX 4090"  # type: ignore[union-attr]
    assert identify("NVIDIA A100-SXM4-80GB", gpus).name == "A100 SXM 80GB"  # type: ignore[union-attr]
    assert identify("Tesla K80", gpus) is None


def test_ring_allreduce_model() -> None:
    assert ring_allreduce_seconds(1e9, 8, 100e9) == pytest.approx(2 * 7 / 8 * 1e9 / 100e9)
    assert ring_allreduce_seconds(1e9, 1, 100e9) == 0


def test_projection_scales_each_part_by_its_own_ratio() -> None:
    gpus = catalogue()
    now = StepParts(compute=1.0, recompute=0.2, comm=0.4, data=0.1, checkpoint=0.05,
                    other=0.01, comm_bytes=2e9)
    p = project(now, gpus["H100 SXM"], gpus["RTX 5090"], ranks=4, tensor_share=1.0,
                drop_recompute=True, total_steps=1000)
    flops = gpus["RTX 5090"].bf16_flops / gpus["H100 SXM"].bf16_flops
    assert p.projected.compute == pytest.approx(1.0 * flops)
    assert p.projected.recompute == 0
    assert p.projected.comm == pytest.approx(ring_allreduce_seconds(2e9, 4, 450e9))
    assert (p.projected.data, p.projected.checkpoint, p.projected.other) == (0.1, 0.05, 0.01)
    d = p.as_dict()
    assert d["speedup_ratio"] == pytest.approx(now.total / p.projected.total)
    assert d["cost_per_step_now_usd"] == pytest.approx(now.total * 0.70 / 3600 * 4)
    assert d["cost_per_run_target_usd"] == pytest.approx(d["cost_per_step_target_usd"] * 1000)
    share = 0.2 / now.total
    assert d["workarounds_dropped"] == [f"activation checkpointing off: -{share:.0%} step time"]
    memory_bound = project(now, gpus["H100 SXM"], gpus["RTX 5090"], tensor_share=0.0)
    bandwidth = gpus["RTX 5090"].memory_bandwidth / gpus["H100 SXM"].memory_bandwidth
    assert memory_bound.projected.compute == pytest.approx(bandwidth)


def test_projection_never_makes_communication_slower() -> None:
    gpus = catalogue()
    now = StepParts(compute=1.0, comm=0.001, comm_bytes=1e9)  # already faster than NVLink
    p = project(now, gpus["H100 SXM"], None, ranks=2)
    assert p.projected.comm == 0.001
    assert p.projected.compute == 1.0  # current GPU unknown: not scaled
