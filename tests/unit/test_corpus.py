"""The scenario corpus replayed through ``gpuwatch analyze``: every job gets exactly the
verdicts a senior engineer would give, none of the wrong ones it is built to tempt."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gpuwatch.config import Settings
from gpuwatch.detection.replay import analyze
from gpuwatch.records import Finding
from tests.scenarios import JOBS, Job, Verdict, job, write


def matches(f: Finding, v: Verdict) -> bool:
    return (f.detector == v.detector and f.verdict == v.verdict
            and (v.ranks is None or tuple(f.ranks) == v.ranks)
            and (v.severity is None or f.severity == v.severity))


@pytest.mark.parametrize("j", JOBS, ids=[j.name for j in JOBS])
def test_analyze_gives_the_senior_engineers_verdicts(j: Job, tmp_path: Path) -> None:
    findings = analyze(write(j.shape, tmp_path, job=j.name), Settings(**j.settings)).findings
    for v in j.expected:
        assert any(matches(f, v) for f in findings), (v, findings)
    unexpected = [f for f in findings if not any(matches(f, v) for v in j.expected)]
    assert unexpected == [], f"{j.story}\n{unexpected}"
    tempting = [f for f in findings for v in j.wrong if matches(f, v)]
    assert tempting == []


def test_the_corpus_covers_the_jobs_training_teams_run() -> None:
    shapes = [j.shape for j in JOBS]
    assert len(JOBS) >= 15 and len({j.name for j in JOBS}) == len(JOBS)
    assert min(s.step_s for s in shapes) <= 0.05 and max(s.step_s for s in shapes) >= 30
    assert {1, 16} <= {s.world for s in shapes}
    assert any(s.evals for s in shapes) and any(s.accumulation > 1 for s in shapes)
    assert any(s.saves and s.saves.background_s for s in shapes)  # async saves
    assert any(s.saves and s.saves.every_s >= 3600 for s in shapes)  # rare saves
    assert any(s.saves and s.saves.every_s <= 60 for s in shapes)  # frequent saves
    assert any(s.slow_rank is not None for s in shapes)
    assert any(s.first_step > 1 for s in shapes)  # a resumed run
    assert any(not s.progress_records for s in shapes)  # logs from before progress records
    assert all(j.story and (j.expected or j.wrong) for j in JOBS)


def test_the_real_cli_reads_a_multi_rank_corpus_job(tmp_path: Path) -> None:
    j = job("slow_rank_of_four")
    write(j.shape, tmp_path, job=j.name)
    proc = subprocess.run([sys.executable, "-m", "gpuwatch", "analyze", "--json", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    got = {(f["detector"], f["verdict"], tuple(f["ranks"])) for f in json.loads(proc.stdout)}
    assert got == {("straggler", "fix_here", (2,))}


def test_the_generator_is_deterministic(tmp_path: Path) -> None:
    a = write(job("nccl_hang").shape, tmp_path / "a")
    b = write(job("nccl_hang").shape, tmp_path / "b")
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
