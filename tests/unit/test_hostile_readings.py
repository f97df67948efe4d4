"""Readings no probe writes, in a hostile log, are judged like any others: an analysis
ends with findings, never an exception, in bounded memory."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from gpuwatch.config import Settings
from gpuwatch.detection.replay import analyze
from gpuwatch.detection.step_digest import StepDigest, StepDigester
from gpuwatch.records import Sample, Step
from gpuwatch.runlog import RunLogWriter
from gpuwatch.telemetry import MAX_GROUPS, Telemetry
from tests.scenarios import START, job, simulate


@pytest.mark.parametrize("value", [1e308, -1e308])
def test_readings_whose_sum_overflows_a_float_end_in_findings(tmp_path: Path,
                                                                value: float) -> None:
    """Every GPU's utilisation read as ±1e308: their exact sum (math.fsum) raised
    OverflowError out of `gpuwatch analyze`."""
    records = [replace(r, values={**r.values, "gpu_utilization_ratio": value})
               if isinstance(r, Sample) and r.source == "nvml" else r
               for r in simulate(job("hourly_blocking_save").shape)[0]]
    writer = RunLogWriter(tmp_path / "run.jsonl")
    writer.write(records)
    writer.close()
    result = analyze([tmp_path / "run.jsonl"], Settings(), workers=1)
    assert result.records == len(records)


def test_samples_of_thousands_of_sources_or_gpus_hold_bounded_memory() -> None:
    """A log of a million samples, each from a source of its own, held a window per
    source: 1.35 GB for `gpuwatch analyze` of a 98 MB log (7 MB gzipped)."""
    view, digester = Telemetry(0), StepDigester()
    for i in range(5 * MAX_GROUPS):
        view.add_one(Sample(0, START + i * 1e-3, f"s{i}", {"x": 1.0}))
        digester.add(Sample(0, START + i * 1e-3, "nvml", {"gpu_power_watts": 300.0}, gpu=i))
    digest = digester.add(Step(rank=0, step=1, t=START + 10, wall_s=10.0))
    assert len(view.samples) == MAX_GROUPS
    assert isinstance(digest, StepDigest) and len(digest.readings) == MAX_GROUPS
