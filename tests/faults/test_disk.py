"""Attack: the run directory is full or cannot be written. What must hold: the loop
never sees an exception and loses no step, the failure is counted and logged once,
the agent still stops within 2 s."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from gpuwatch.agent import STOP_TIMEOUT_S, Agent
from gpuwatch.config import Settings
from gpuwatch.monitor import Monitor
from tests.disk import full_disk
from tests.fakes import solo
from tests.wait import wait_for


def _run(out_dir: Path, steps: int = 200) -> tuple[Agent, float]:
    s = Settings(out_dir=out_dir, sample_interval_s=0.05, flush_interval_s=0.05, nvml=False,
                 exporter={"enabled": False})
    agent = Agent(s, nvml_library=None, memory_stats=None, environ={}, identity=solo())
    monitor = Monitor(agent)
    agent.start()
    for _ in range(steps):
        with monitor.step(samples=1), monitor.phase("compute"):
            pass
    wait_for(lambda: agent.faults.counts, 10, "the failure to be counted")
    start = time.monotonic()
    agent.stop()
    return agent, time.monotonic() - start


def test_a_full_disk_under_the_run_log_is_counted_and_costs_the_loop_nothing(
        tmp_path: Path) -> None:
    with full_disk(tmp_path / "disk") as filler:  # the log is created; every write: ENOSPC
        agent, stop_s = _run(filler.parent / "rank0")
    assert stop_s < STOP_TIMEOUT_S
    assert agent.faults.counts["runlog"] >= 1 and agent.assembler.steps == 200


@pytest.mark.parametrize("how", ["parent-is-a-file", "read-only-directory"])
def test_an_unwritable_run_directory_is_counted_and_costs_the_loop_nothing(
        tmp_path: Path, how: str) -> None:
    if how == "parent-is-a-file":
        (tmp_path / "file").write_text("x")
        out = tmp_path / "file" / "run"
    else:
        if os.geteuid() == 0:
            pytest.skip("root writes into a read-only directory")
        out = tmp_path / "ro"
        out.mkdir()
        out.chmod(0o500)
    agent, stop_s = _run(out)
    assert stop_s < STOP_TIMEOUT_S
    assert sum(agent.faults.counts.values()) >= 1
