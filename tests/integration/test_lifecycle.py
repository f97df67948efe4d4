"""The agent stops (and the run log is complete) at exit and when the loop raises;
SIGTERM kills at once with the log flushed up to the last flush interval; a forked
child never writes to the parent's log."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gpuwatch.records import Event, Meta
from tests.integration.conftest import SCRIPTS, read, run, steps
from tests.wait import wait_for

pytestmark = pytest.mark.integration
SCRIPT = str(SCRIPTS / "explicit_loop.py")


def test_normal_exit_flushes_every_step(tmp_path: Path) -> None:
    proc = run([sys.executable, SCRIPT, str(tmp_path), "exit"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert len(steps(read(tmp_path / "run.jsonl"))) == 50


def test_a_job_that_closed_its_stderr_loses_no_step_and_gets_no_exception(
        tmp_path: Path) -> None:
    """gpuwatch's warnings went to logging's last resort, a closed sys.stderr, which
    raised ValueError: into the job from bad settings and a misused phase, and in the
    agent's thread, which died with every step unwritten (0 of 200)."""
    out = tmp_path / "out"
    proc = run([sys.executable, str(SCRIPTS / "closed_stderr.py"), str(out), "200"],
               cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.splitlines() == ["trained 200"], proc.stdout
    assert len(steps(read(out / "run.jsonl"))) == 200


def test_loop_that_raises_keeps_its_traceback_and_the_log(tmp_path: Path) -> None:
    proc = run([sys.executable, SCRIPT, str(tmp_path), "raise"], cwd=tmp_path)
    assert proc.returncode == 1
    assert "RuntimeError: training blew up" in proc.stderr
    records = read(tmp_path / "run.jsonl")
    assert len(steps(records)) == 51
    errors = [e for e in records if isinstance(e, Event) and e.name == "step_error"]
    assert [e.data["type"] for e in errors] == ["RuntimeError"]


def test_sigterm_kills_at_once_and_leaves_the_steps_flushed_so_far(tmp_path: Path) -> None:
    """No handler of gpuwatch's delays SIGTERM; the log is flushed every flush interval."""
    proc = subprocess.Popen([sys.executable, SCRIPT, str(tmp_path), "sigterm"],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    log = tmp_path / "run.jsonl"  # created once the identity settles (at the first step)
    wait_for(lambda: log.exists() and len(steps(read(log))) > 50, 10, "step 51 logged")
    start = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=10)
    assert time.monotonic() - start < 1.0
    assert code == -signal.SIGTERM
    numbers = [s.step for s in steps(read(tmp_path / "run.jsonl"))]
    assert len(numbers) > 50 and numbers == list(range(1, len(numbers) + 1))


def test_forked_child_does_not_write_to_the_parent_log(tmp_path: Path) -> None:
    proc = run([sys.executable, SCRIPT, str(tmp_path), "fork"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    records = read(tmp_path / "run.jsonl")
    assert sum(isinstance(r, Meta) for r in records) == 1
    assert [s.step for s in steps(records)] == list(range(1, 51))
