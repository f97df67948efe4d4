"""The command line: version, doctor, demo, argument errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpuwatch._version import __version__
from gpuwatch.records import Event, Sample
from tests.integration.conftest import gpuwatch_cmd, read, run, steps
from tests.scenarios import job, write

pytestmark = pytest.mark.integration


def test_version(tmp_path: Path) -> None:
    proc = run(gpuwatch_cmd("--version"), cwd=tmp_path)
    assert proc.stdout.strip() == f"gpuwatch {__version__}"


def test_doctor_reports_host_only_on_this_machine(tmp_path: Path) -> None:
    proc = run(gpuwatch_cmd("doctor"), cwd=tmp_path)
    assert proc.returncode == 0
    assert "torch" in proc.stdout
    assert "NVML" in proc.stdout and "host-only" in proc.stdout
    assert "NCCL timing        off" in proc.stdout


def test_demo_trains_prints_status_and_writes_a_run_log(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    proc = run(gpuwatch_cmd("demo", "--seconds", "8", "--out", str(out)), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    status = [line for line in proc.stderr.splitlines() if line.startswith("gpuwatch | step")]
    assert any("ms/step" in line and "data wait" in line for line in status), proc.stderr
    records = read(out / "run.jsonl")
    got = steps(records)  # (how many in 8 s depends on the box and its load: a few)
    assert len(got) >= 5 and [s.step for s in got] == list(range(1, len(got) + 1))
    assert all(s.tokens == 16 * 64 and s.compute_s > 0 for s in got)
    assert any(isinstance(r, Sample) and r.source == "host" for r in records)
    assert next(e.name for e in records if isinstance(e, Event)) == "host_only"


@pytest.mark.parametrize("args", [["demo", "--seconds", "zero"], ["frobnicate"], []])
def test_bad_arguments_exit_2_without_traceback(tmp_path: Path, args: list[str]) -> None:
    proc = run(gpuwatch_cmd(*args), cwd=tmp_path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "error:" in proc.stderr


@pytest.mark.parametrize("args", [["analyze", "a\nb\x1b[31m"], ["demo", "--seconds", "1\n2"]])
def test_an_argument_holding_control_characters_is_shown_on_one_line(
        tmp_path: Path, args: list[str]) -> None:
    """A path holding a newline made the error two lines; an ESC would move the
    terminal. They are shown as escapes."""
    proc = run(gpuwatch_cmd(*args), cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == (1 if args[0] == "analyze" else 2)
    assert "\x1b" not in proc.stderr and "\\n" in proc.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("args", [["dashboards", "export", "d", "--kubernetes", "."],
                                  ["rules", "export", "r", "--kubernetes", "/"],
                                  ["rules", "export", "r", "--kubernetes", "/proc/gw.yaml"]])
def test_a_file_to_write_that_is_a_directory_or_nowhere_is_one_line(
        tmp_path: Path, args: list[str]) -> None:
    """`--kubernetes .` gave a traceback (no file name to write beside); an unwritable
    path named gpuwatch's temporary file, not the one asked for."""
    proc = run(gpuwatch_cmd(*args), cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("gpuwatch: ") and args[-1] in line and ".tmp" not in line


def test_analysis_to_a_terminal_that_writes_ascii_escapes_what_it_cannot_show(
        tmp_path: Path) -> None:
    """Findings of several ranks name them with an en dash ("ranks 0-3"): to an ASCII stdout
    that was a UnicodeEncodeError's traceback."""
    write(job("pcie_sync_bound").shape, tmp_path / "run")
    proc = run(gpuwatch_cmd("analyze", str(tmp_path / "run")), cwd=tmp_path,
               extra_env={"PYTHONIOENCODING": "ascii"})
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert "\\u2013" in proc.stdout


@pytest.mark.parametrize("target", ["its own log", "the compared run's log", "a new run log"])
def test_a_report_is_never_written_over_or_as_a_run_log(tmp_path: Path, target: str) -> None:
    """`report RUN --out RUN/run.jsonl` replaced the run's only record with HTML, and
    exited 0; a report named like a run log is read as one, every line unreadable."""
    after = write(job("vision_small_steps").shape, tmp_path / "after")
    before = write(job("vision_small_steps").shape, tmp_path / "before")
    out = {"its own log": after[0], "the compared run's log": before[0],
           "a new run log": tmp_path / "after" / "run-copy.jsonl"}[target]
    kept = {p: p.read_bytes() for p in [*after, *before]}
    proc = run(gpuwatch_cmd("report", str(tmp_path / "after"), "--compare",
                            str(tmp_path / "before"), "--out", str(out)), cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(f"gpuwatch: --out {out}")
    assert {p: p.read_bytes() for p in kept} == kept and not (
        target == "a new run log" and out.exists())


def test_a_report_is_written_over_an_earlier_report_but_no_other_file(tmp_path: Path) -> None:
    """`report RUN --out RUN/findings.json` (or a Slack note still to send) replaced it
    with HTML without a word. Only an earlier report is written over."""
    write(job("vision_small_steps").shape, tmp_path / "run")
    findings = tmp_path / "run" / "findings.json"
    findings.write_text('{"findings": []}\n')
    refused = run(gpuwatch_cmd("report", str(tmp_path / "run"), "--out", str(findings)),
                  cwd=tmp_path)
    assert refused.returncode == 2 and "no gpuwatch report" in refused.stderr, refused.stderr
    assert findings.read_text() == '{"findings": []}\n'
    report = tmp_path / "report.html"
    for _ in range(2):  # (the second over the first)
        done = run(gpuwatch_cmd("report", str(tmp_path / "run"), "--out", str(report)),
                   cwd=tmp_path)
        assert done.returncode == 0, done.stderr
    assert report.read_bytes().startswith(b"<!DOCTYPE html>")


@pytest.mark.parametrize("theirs", ["findings.json", "report.html"])
def test_a_run_into_a_directory_of_someone_else_s_outputs_is_refused(
        tmp_path: Path, theirs: str) -> None:
    """`gpuwatch run --out .` in a project directory holding its own findings.json (or
    report.html) replaced it at the end, without a word. A directory with no run log
    is no run's: the run is refused before it starts, and the file is kept."""
    (tmp_path / theirs).write_text("mine\n")
    ran = tmp_path / "ran"
    proc = run(gpuwatch_cmd("run", "--out", ".", "--", "python", "-c",
                            f"open({str(ran)!r}, 'w')"), cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert theirs in proc.stderr.strip().splitlines()[-1]
    assert (tmp_path / theirs).read_text() == "mine\n" and not ran.exists()


def test_a_run_too_short_for_a_run_long_rule_is_not_called_clean(tmp_path: Path) -> None:
    """An 80 s run found nothing, and said "nothing held this run back": its loader's
    restarts (41% of it) were never judged, since interruptions judges runs from 5 min.
    The line under it says so; a run long enough says nothing more."""
    from tests.scenarios import Shape

    write(Shape(step_s=0.5, duration_s=80), tmp_path / "short")
    write(Shape(step_s=0.5, duration_s=400), tmp_path / "long")
    short = run(gpuwatch_cmd("analyze", str(tmp_path / "short")), cwd=tmp_path)
    assert short.returncode == 0 and short.stdout.startswith("No findings"), short.stderr
    assert "interruptions judges runs from 5 min on" in short.stderr
    long = run(gpuwatch_cmd("analyze", str(tmp_path / "long")), cwd=tmp_path)
    assert long.stdout.startswith("No findings") and "judges runs from" not in long.stderr
