"""Ranks replayed side by side give the serial replay's findings; the progress bar shows
only on a terminal, and only once the analysis has run a while; a judgement is reused
only while nothing it can see changed."""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import pty
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path

import psutil
import pytest

from gpuwatch.config import Settings
from gpuwatch.detection.engine import engine_from_settings
from gpuwatch.detection.replay import JobTimeline, _replay_rank, analyze, default_workers
from gpuwatch.detection.step_digest import JOB_SOURCES
from gpuwatch.records import Sample, Step
from gpuwatch.runlog import RunLogReader, encode
from gpuwatch.telemetry import Telemetry
from tests.scenarios import JOBS, job, write
from tests.wait import wait_for

MULTI_RANK = [j for j in JOBS if j.shape.world > 1]


@pytest.mark.parametrize("j", MULTI_RANK, ids=lambda j: j.name)
def test_parallel_replay_finds_what_serial_replay_finds(j, tmp_path):
    logs = write(j.shape, tmp_path, job=j.name)
    settings = Settings(**j.settings)
    serial = analyze(logs, settings, workers=1)
    parallel = analyze(logs, settings, workers=3)
    assert parallel.findings == serial.findings
    assert (parallel.records, parallel.skipped_lines) == (serial.records, serial.skipped_lines)


@pytest.mark.parametrize("restarted", [4, 1])
def test_parallel_replay_keeps_attempts_apart(tmp_path, restarted):
    """Two attempts of a 4-rank job (all ranks restarted, or one: an attempt of one log
    has no job engine pass): each attempt's job engine and ranks, in parallel, as
    serially."""
    shape = job("nccl_hang").shape
    first = write(shape, tmp_path / "a")
    second = write(replace(shape, seed=1), tmp_path / "b")
    logs = []
    for rank, (a, b) in enumerate(zip(first, second, strict=True)):
        logs.append(a.rename(tmp_path / f"run-rank{rank}.jsonl"))
        if rank >= restarted:
            continue
        text = b.read_text().replace('"attempt":0', '"attempt":1', 1)
        if '"attempt":1' not in text:  # attempt 0 is left out of the meta line: add it
            text = text.replace('"kind":"meta",', '"kind":"meta","attempt":1,', 1)
        target = tmp_path / f"run-rank{rank}.attempt1.jsonl"
        target.write_text(text)
        logs.append(target)
    serial = analyze(logs, Settings(), workers=1)
    parallel = analyze(logs, Settings(), workers=2)
    assert parallel.findings == serial.findings
    assert {f.detector for f in serial.findings} >= {"hang"}


def test_a_log_s_end_is_placed_alike_whether_its_reader_passes_samples_over(tmp_path):
    """A log's end (where its digester flushes) is placed by its reader's clock and lines
    read: a worker's reader, which passes over the samples no job detector reads, must
    place it where the serial replay's reader does, after every line of the log, also
    when the log ends with such samples."""
    path = write(job("nccl_hang").shape, tmp_path)[0]
    last = max(RunLogReader(path), key=lambda r: getattr(r, "t", 0.0))
    with path.open("a") as f:  # the host and the agent sample last
        f.write(encode(Sample(0, last.t + 1.0, "host", {"workers": 8.0})).decode())
        f.write(encode(Sample(0, last.t + 2.0, "agent", {"agent_cpu_seconds_total": 1.0})).decode())
    ends = []
    for reader in (RunLogReader(path), RunLogReader(path, JOB_SOURCES)):
        lines = [reader.line for _ in reader]
        assert reader.lines_read > max(lines)
        ends.append((reader.clock, reader.lines_read))
    assert ends[0] == ends[1] == (last.t + 2.0, len(path.read_text().splitlines()))


@pytest.mark.parametrize("line", [
    '{"rank":2,"t":1800000000.0,"source":"host","values":{"workers":"lots"}}',
    '{"rank":2,"t":1800000000.0,"source":"host","values":{"workers":"lots"},"kind":"sample"}',
    '{"rank":2,"t":1800000000.0,"source":"host","values":{"workers":1},"kind":"sample","x":1}',
    '{"rank":2,"t":1800000000.0,"source":"host","values":{"workers":1e400},"kind":"sample"}',
])
def test_a_damaged_sample_line_is_judged_alike_serially_and_in_parallel(tmp_path, line):
    """A line shaped like a sample, with a far-future time, that the full reader refuses
    (a reading not a number, or one no double holds) or takes on its general path (a
    field of a newer schema): a worker's reader, which passes samples over unparsed,
    moves its clock only where the full reader would."""
    j = job("slow_rank_of_four")
    logs = write(j.shape, tmp_path)
    lines = logs[2].read_text().splitlines(keepends=True)
    logs[2].write_text("".join([*lines[:5], line + "\n", *lines[5:]]))  # early in the log
    serial = analyze(logs, Settings(), workers=1)
    if '"x"' not in line:  # (a valid record two years ahead ends the judging: a hang)
        assert {f.detector for f in serial.findings} == {"straggler"}
    assert analyze(logs, Settings(), workers=2).findings == serial.findings


def test_a_worker_sends_back_its_findings_not_the_rank_s_telemetry(tmp_path):
    """What a worker returns is pickled across to the parent: 64 ranks' windows would
    weigh more than the job engine itself."""
    (log,) = write(job("frequent_blocking_saves").shape, tmp_path)
    engine, records, _ = _replay_rank(log, Settings(), 0, JobTimeline(), 0)
    windows: list[Telemetry] = []

    class Sent(pickle.Pickler):
        def reducer_override(self, obj: object) -> object:
            if isinstance(obj, Telemetry):
                windows.append(obj)
            return NotImplemented

    Sent(io.BytesIO()).dump(engine)
    assert records > 1000 and engine.findings
    assert windows == []


def _long_log(tmp_path: Path) -> list[Path]:
    return write(replace(job("slow_rank_of_four").shape, duration_s=120), tmp_path)


def test_no_progress_bar_off_a_terminal(tmp_path):
    stream = io.StringIO()
    analyze(_long_log(tmp_path), Settings(), workers=1, progress=stream, progress_delay_s=0)
    assert stream.getvalue() == ""


def _on_terminal(tmp_path: Path, delay_s: float) -> str:
    leader, follower = pty.openpty()
    with os.fdopen(follower, "w") as terminal:
        analyze(_long_log(tmp_path), Settings(), workers=2, progress=terminal,
                progress_delay_s=delay_s)
    out = b""
    os.set_blocking(leader, False)
    try:
        while chunk := os.read(leader, 65536):
            out += chunk
    except (BlockingIOError, OSError):
        pass
    os.close(leader)
    return out.decode(errors="replace")


def test_progress_bar_on_a_terminal_once_the_analysis_runs_long(tmp_path):
    assert "gpuwatch analyze" in _on_terminal(tmp_path, delay_s=0)


def test_no_progress_bar_for_a_short_analysis(tmp_path):
    assert _on_terminal(tmp_path, delay_s=600) == ""


def _workers_busy(engine) -> float:
    (finding,) = [f for f in engine.findings.values() if f.detector == "data_starvation"]
    return finding.evidence["workers_cpu_ratio"]


def test_a_judgement_is_reused_only_while_nothing_changed():
    """Samples alone (the rank still stepping) leave the last judgement standing; the
    first evaluation after the next step judges afresh, with what the samples said in
    the meantime."""
    engine = engine_from_settings(Settings(), "rank")
    t, step = 1000.0, 0

    def steps(seconds: float, busy: float) -> None:
        nonlocal t, step
        end = t + seconds
        while t < end:
            step += 1
            t += 0.5
            engine.feed([Step(rank=0, step=step, t=t, wall_s=0.5, data_s=0.3, compute_s=0.2),
                         Sample(0, t, "host", {"workers": 4.0, "workers_cpu_ratio": busy})])

    steps(120.0, busy=0.2)
    for k, busy in enumerate([0.2] * 3 + [0.9] * 4, 1):  # samples only, 3.5 s (no stall):
        engine.feed([Sample(0, t + 0.5 * k, "host",  # the workers look saturated now
                            {"workers": 4.0, "workers_cpu_ratio": busy})])
    assert _workers_busy(engine) == pytest.approx(0.2)  # judged after the last step only
    t += 3.5
    steps(1.0, busy=0.9)  # (two steps: the evaluation due a second after the last one
    assert _workers_busy(engine) > 0.2  # comes with the second; 0.2 passed on float noise)


def test_analysis_forks_workers_only_from_a_single_threaded_process() -> None:
    """A fork copies other threads' locks as they are, so with another thread running
    the default is one process; alone (a fresh interpreter), every core it may use."""
    alone = subprocess.run(
        [sys.executable, "-c", "from gpuwatch.detection.replay import default_workers; "
                               "print(default_workers())"],
        capture_output=True, text=True, timeout=60, check=True)
    assert int(alone.stdout) == len(os.sched_getaffinity(0))
    release = threading.Event()
    other = threading.Thread(target=release.wait, args=(30,))
    other.start()
    try:
        assert default_workers() == 1
    finally:
        release.set()
        other.join()


def test_workers_of_an_analysis_killed_mid_way_die_with_it(tmp_path):
    """`gpuwatch analyze` killed by SIGKILL (a supervisor's timeout) left its pool's
    workers waiting for work for ever, orphaned."""
    logs = write(replace(job("slow_rank_of_four").shape, duration_s=1800), tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "gpuwatch", "analyze", *map(str, logs)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: list[psutil.Process] = []
    try:
        workers = wait_for(lambda: psutil.Process(proc.pid).children(), 60,
                           "the analysis's workers started")
        proc.kill()
        proc.wait(10)
        wait_for(lambda: not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE
                                 for w in workers), 10, "the workers ended")
    finally:
        for w in workers:
            with contextlib.suppress(psutil.Error):
                w.kill()
        proc.kill()
