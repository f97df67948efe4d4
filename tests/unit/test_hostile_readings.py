"""Readings no probe writes, in a hostile log, are judged like any others: an analysis
ends with findings, never an exception."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from gpuwatch.config import Settings
from gpuwatch.detection.replay import analyze
from gpuwatch.records import Sample
from gpuwatch.runlog import RunLogWriter
from tests.scenarios import job, simulate


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
