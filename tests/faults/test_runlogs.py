"""Attack: run logs damaged or hostile. What must hold: `gpuwatch analyze` never
tracebacks: a bad line is skipped and counted (the good ones still judged), an
unreadable file is a one-line error, exit 2."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gpuwatch import cli
from gpuwatch.records import SCHEMA_VERSION, Meta, Step, to_dict
from gpuwatch.runlog import MAX_LINE_BYTES, RunLogReader, RunLogWriter

META = Meta(schema=SCHEMA_VERSION, gpuwatch="0", job="j", host="h", rank=0, local_rank=0,
            world_size=1, pid=1, started=0.0)
STEP = to_dict(Step(rank=0, step=1, t=10.0, wall_s=0.5, data_s=0.4, samples=8))
SAMPLE = {"kind": "sample", "rank": 0, "t": 10.0, "source": "host",
          "values": {"host_cpu_ratio": 0.5}}
EVENT = {"kind": "event", "rank": 0, "t": 10.0, "name": "oom", "data": {"count": 1}}
FINDING = {"kind": "finding", "detector": "hang", "verdict": "fix_here", "severity": "critical",
           "summary": "s", "action": "a", "evidence": {"x_seconds": 1.0}, "ranks": [0],
           "first_seen": 1.0, "last_seen": 2.0, "fingerprint": "f"}


def _with(base: dict[str, Any], **change: Any) -> bytes:
    return json.dumps({**base, **change}).encode()


BAD_LINES: list[tuple[str, bytes]] = [  # (row id, one hostile line)
    ("step-null-wall", _with(STEP, wall_s=None)),
    ("step-string-wall", _with(STEP, wall_s="0.5")),
    ("step-string-rank", _with(STEP, rank="0")),
    ("step-bool-samples", _with(STEP, samples=True)),
    ("step-list-data", _with(STEP, data_s=[1])),
    ("step-missing-time", json.dumps({k: v for k, v in STEP.items() if k != "t"}).encode()),
    ("sample-values-not-dict", _with(SAMPLE, values=[1, 2])),
    ("sample-string-reading", _with(SAMPLE, values={"host_cpu_ratio": "high"})),
    ("sample-string-gpu", _with(SAMPLE, gpu="0")),
    ("event-data-not-dict", _with(EVENT, data="oom")),
    ("event-oom-count-string", _with(EVENT, data={"count": "many"})),
    ("event-batch-cut-missing", _with(EVENT, name="batch_size_changed", data={"from": 8})),
    ("event-total-steps-null", _with(EVENT, name="total_steps", data={"steps": None})),
    ("event-checkpoint-string", _with(EVENT, name="checkpoint_save", data={"seconds": "1s"})),
    ("event-topology-devices-string", _with(EVENT, name="topology", data={"devices": "x"})),
    # a device field of the wrong type read as valid turned a detector off for the replay
    ("event-topology-name-number", _with(EVENT, name="topology",
                                         data={"devices": [{"index": 0, "name": 5090}]})),
    ("event-topology-memory-string", _with(EVENT, name="topology", data={
        "devices": [{"index": 0, "memory_total_bytes": "32 GB"}]})),
    ("event-topology-index-string", _with(EVENT, name="topology",
                                          data={"devices": [{"index": "0"}]})),
    ("event-topology-p2p-string", _with(EVENT, name="topology", data={"devices": [],
                                                                      "p2p": "nvlink"})),
    ("finding-bad-verdict", _with(FINDING, verdict="panic")),
    ("finding-ranks-strings", _with(FINDING, ranks=["0"])),
    ("meta-detection-not-dict", json.dumps({**to_dict(META), "detection": 5}).encode()),
    ("unknown-kind", b'{"kind": "nope", "t": 1}'),
    ("not-an-object", b"[1, 2, 3]"),
    # several values on one line: the block parsed as one array held more than its lines
    ("two-values", b"1, 2"),
    ("two-objects", b'{"kind": "nope"}, {"kind": "nope"}'),
    ("not-json", b"step 1 took 0.5 s"),
    ("binary", bytes(b for b in range(256) if b != ord("\n")) * 4),
    ("invalid-utf8", b'{"kind": "step", "rank": 0, "note": "\xff\xfe"}'),
    ("deeply-nested", b"[" * 5000 + b"]" * 5000),
    ("huge-line", b'{"kind": "event", "pad": "' + b"x" * (MAX_LINE_BYTES + 10) + b'"}'),
    ("torn-last-line", b'{"kind": "step", "rank": 0, "st'),
]


def _log(path: Path, bad: bytes, meta: Meta = META) -> Path:
    """A run log: meta, a good step, the hostile line, another good step."""
    w = RunLogWriter(path)
    w.write([meta, Step(rank=0, step=1, t=10.0, wall_s=0.5)])
    w.close()
    with open(path, "ab") as f:
        f.write(bad + b"\n")
        f.write(json.dumps(to_dict(Step(rank=0, step=2, t=10.5, wall_s=0.5))).encode() + b"\n")
    return path


@pytest.mark.parametrize("bad", [pytest.param(b, id=i) for i, b in BAD_LINES])
def test_a_hostile_line_is_skipped_and_counted_and_the_rest_is_read(
        tmp_path: Path, bad: bytes) -> None:
    reader = RunLogReader(_log(tmp_path / "run.jsonl", bad))
    records = list(reader)
    assert [r.step for r in records if isinstance(r, Step)] == [1, 2]
    assert reader.skipped == 1


def test_a_line_of_two_values_balanced_by_two_torn_lines_gives_no_record(
        tmp_path: Path) -> None:
    """Parsed a block at a time as one array, a line holding two values and two lines
    holding one between them ('[1', '2]') made as many values as lines: the second
    value of the bad line was taken as the next line's record. Each line is its own."""
    path = tmp_path / "run.jsonl"
    good = [json.dumps(to_dict(Step(rank=0, step=k, t=10.0 + k, wall_s=0.5))).encode()
            for k in (1, 2)]
    hidden = json.dumps(to_dict(Step(rank=0, step=99, t=11.5, wall_s=0.5))).encode()
    path.write_bytes(json.dumps(to_dict(META)).encode() + b"\n" + b"\n".join(
        [good[0], b'{"kind": "nope"}, ' + hidden, b"[1", b"2]", good[1]]) + b"\n")
    reader = RunLogReader(path)
    assert [r.step for r in reader if isinstance(r, Step)] == [1, 2]
    assert reader.skipped == 3


@pytest.mark.parametrize("bad", [pytest.param(b, id=i) for i, b in BAD_LINES])
def test_analyze_never_tracebacks_on_a_hostile_line(tmp_path: Path, clean_env: Path,
                                                    capsys: pytest.CaptureFixture[str],
                                                    bad: bytes) -> None:
    path = _log(tmp_path / "run.jsonl", bad)
    assert cli.main(["analyze", str(path), "--json"]) == 0
    out, err = capsys.readouterr()
    assert isinstance(json.loads(out), list)
    assert "skipped 1 unreadable line" in err and "Traceback" not in err


BAD_DETECTION: list[tuple[str, Any]] = [  # the meta line's recorded detection settings
    ("interval-string", {"detect_interval_s": "fast"}),
    ("interval-negative", {"detect_interval_s": -1}),
    ("detectors-not-dict", {"detectors": 5}),
    ("threshold-string", {"detectors": {"hang": {"min_seconds": "soon"}}}),
    ("prices-string", {"prices": "cheap"}),
    ("total-steps-null-and-target-list", {"total_steps": "x", "target_gpu": ["H100 SXM"]}),
    # valid in shape, unknown to this gpuwatch (a newer writer's): the engine refuses them
    ("unknown-detector", {"detectors": {"new_detector": {"threshold": 0.5}}}),
    ("unknown-threshold", {"detectors": {"hang": {"new_threshold": 1.0}}}),
    ("unknown-target-gpu", {"target_gpu": "Z900", "detect_interval_s": 2.0}),
]


@pytest.mark.parametrize("detection", [pytest.param(d, id=i) for i, d in BAD_DETECTION])
def test_a_bad_recorded_detection_block_falls_back_to_the_analysts_settings(
        tmp_path: Path, clean_env: Path, capsys: pytest.CaptureFixture[str],
        detection: Any) -> None:
    meta = Meta(**{**to_dict(META), "detection": detection})
    path = _log(tmp_path / "run.jsonl", b"", meta)
    assert cli.main(["analyze", str(path)]) == 0
    assert "Traceback" not in capsys.readouterr().err


def test_mixed_schema_versions_in_one_directory_are_read_alike(
        tmp_path: Path, clean_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A newer writer adds fields and kinds; an older one lacks optional fields."""
    newer = {**to_dict(META), "schema": SCHEMA_VERSION + 1, "world_size": 2,
             "cluster": {"name": "x"}}
    older = {k: v for k, v in to_dict(META).items() if k not in ("argv", "torch", "detection")}
    older.update(rank=1, world_size=2)
    (tmp_path / "run-rank0.jsonl").write_text(
        json.dumps(newer) + "\n" + json.dumps({**STEP, "tflops": 3.5}) + "\n"
        + json.dumps({"kind": "sample", "rank": 0, "t": 1.0, "source": "nvml", "gpu": 0,
                      "values": {"gpu_utilization_ratio": 0.5}, "sampler": "v2"}) + "\n"
        + '{"kind": "span", "t": 1.0}\n')
    (tmp_path / "run-rank1.jsonl").write_text(
        json.dumps(older) + "\n" + json.dumps({**STEP, "rank": 1}) + "\n")
    assert cli.main(["analyze", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert "skipped 1 unreadable line" in err  # only the unknown kind


def test_an_unreadable_run_log_is_a_one_line_error(tmp_path: Path, clean_env: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "run-rank0.jsonl").write_text(json.dumps(to_dict(META)) + "\n")
    (tmp_path / "run-rank1.jsonl").mkdir()  # matches the glob, cannot be read
    assert cli.main(["analyze", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "run-rank1.jsonl" in err, err


def test_a_fifo_or_a_device_among_the_logs_is_an_error_or_left_out_never_read_forever(
        tmp_path: Path, clean_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A FIFO named like a run log would block the analysis; a segment linked to
    /dev/zero would be read forever: neither is a regular file."""
    (tmp_path / "run-rank0.jsonl").write_text(json.dumps(to_dict(META)) + "\n")
    (tmp_path / "run-rank0.part00001.jsonl.gz").symlink_to("/dev/zero")  # left out
    assert cli.main(["analyze", str(tmp_path)]) == 0
    os.mkfifo(tmp_path / "run-rank1.jsonl")  # (opening it would wait for a writer)
    for args in ([str(tmp_path)], [str(tmp_path / "run-rank1.jsonl")]):
        capsys.readouterr()
        assert cli.main(["analyze", *args]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "not a regular file" in err and "run-rank1" in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file whatever its mode")
def test_a_run_log_without_read_permission_is_a_one_line_error(
        tmp_path: Path, clean_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "run.jsonl"
    path.write_text(json.dumps(to_dict(META)) + "\n")
    path.chmod(0)
    assert cli.main(["analyze", str(path)]) == 2
    assert "Permission denied" in capsys.readouterr().err


def test_a_huge_line_is_read_past_in_bounded_pieces(tmp_path: Path) -> None:
    """Memory stays bounded: the reader never holds more than MAX_LINE_BYTES of a line."""
    import tracemalloc

    path = _log(tmp_path / "run.jsonl", b"{" + b" " * (8 * MAX_LINE_BYTES) + b"}")
    tracemalloc.start()
    reader = RunLogReader(path)
    steps = [r for r in reader if isinstance(r, Step)]
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(steps) == 2 and reader.skipped == 1
    assert peak < 3 * MAX_LINE_BYTES, peak  # the line is 8 times that


def test_a_recorded_override_this_gpuwatch_refuses_costs_only_itself(tmp_path: Path) -> None:
    """One threshold a newer gpuwatch recorded (unknown here) is left out; the run's other
    overrides still judge its log: a hang bound of 900 s keeps a 200 s stall quiet."""
    from dataclasses import replace as replaced

    from gpuwatch.config import Settings
    from gpuwatch.detection.replay import analyze
    from tests.scenarios import Shape, Stop, simulate

    records = simulate(Shape(step_s=1.0, duration_s=300, stop=Stop(at_s=60, ranks=(0,),
                                                                   kind="loader")))[0]
    path = tmp_path / "run.jsonl"

    def judged(detectors: dict[str, Any]) -> set[str]:
        meta = records[0]
        assert isinstance(meta, Meta)
        path.unlink(missing_ok=True)
        w = RunLogWriter(path)
        w.write([replaced(meta, detection={"detectors": detectors}), *records[1:]])
        w.close()
        return {f.detector for f in analyze([path], Settings(), workers=1).findings}

    assert "hang" in judged({})
    assert "hang" not in judged({"hang": {"min_seconds": 900}})
    assert "hang" not in judged({"hang": {"min_seconds": 900, "new_threshold": 1.0},
                                 "new_detector": {"x": 1.0}})
    # a damaged meta line with thousands of them: the first ones checked, the rest left out
    # (each check builds an engine: 20,000 took 24 s)
    assert "hang" not in judged({"hang": {"min_seconds": 900,
                                          **{f"bogus_{i}": 1.0 for i in range(5000)}}})
    assert "hang" in judged({"hang": {**{f"bogus_{i}": 1.0 for i in range(5000)},
                                      "min_seconds": 900}})  # (past the budget: not read)


def test_a_command_line_and_run_directory_not_in_utf8_lose_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A data path in Latin-1 on the command line and a run directory named in it (Python
    holds the bytes as surrogates, which JSON cannot): the meta line is written, with
    those bytes replaced, and the endpoint labelled with the run's name still answers."""
    import sys
    import urllib.request

    from gpuwatch.agent import Agent
    from gpuwatch.config import load_settings
    from tests.fakes import solo
    from tests.wait import wait_for

    latin1 = os.fsdecode(b"donn\xe9es")
    monkeypatch.setattr(sys, "argv", ["train.py", "--data", f"/mnt/{latin1}"])
    out = tmp_path / os.fsdecode(b"caf\xe9-run")
    agent = Agent(load_settings(out_dir=out, nvml=False, exporter={"port": 0}),
                  nvml_library=None, memory_stats=None, environ={}, identity=solo())
    agent.start()
    try:
        wait_for(lambda: agent.exporter is not None and agent.runlog_path is not None
                 and agent.runlog_path.exists() and agent.runlog_path.stat().st_size, 10,
                 "the meta line and the endpoint")
        assert agent.exporter is not None
        port = agent.exporter.port
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            assert reply.status == 200 and b'run="caf?-run"' in reply.read()
    finally:
        agent.stop()
    assert agent.runlog_path is not None
    (meta,) = [r for r in RunLogReader(agent.runlog_path) if isinstance(r, Meta)]
    assert meta.argv == ["train.py", "--data", "/mnt/donn?es"] and meta.run == "caf?-run"


CLOSING_JOB = """
import os, sys, time, gpuwatch
from pathlib import Path
from gpuwatch.records import Step
from gpuwatch.runlog import RunLogReader
m = gpuwatch.watch(job="cf", out_dir=sys.argv[1], exporter={"enabled": False},
                   flush_interval_s=0.05)
def train(n):
    for _ in range(n):
        with m.step(samples=1):
            pass
def logged():
    path = Path(sys.argv[1]) / "run.jsonl"
    return path.exists() and sum(isinstance(r, Step) for r in RunLogReader(path))
train(200)
deadline = time.monotonic() + 30
while logged() < 200 and time.monotonic() < deadline:  # the agent's thread writes them
    time.sleep(0.05)
os.closerange(3, 4096)  # (daemonising code, a "clean" subprocess helper)
fd = os.open(sys.argv[2], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
train(500)
deadline = time.monotonic() + 30
while not m.agent.faults.counts["runlog"] and time.monotonic() < deadline:
    time.sleep(0.05)  # (until the agent tried to write the 500: refused, counted)
os.write(fd, b"JOBDATA\\n")
os.close(fd)
print("refused" if m.agent.faults.counts["runlog"] else "written")
m.stop()
"""


def test_a_job_that_closes_the_log_s_descriptor_gets_none_of_its_lines(tmp_path: Path) -> None:
    """The job closes every descriptor and opens a file of its own, which gets the number
    the run log had: the log's lines went into the job's file. The log stops instead
    (what it wrote before stays readable) and the job's file holds only its own bytes."""
    import subprocess
    import sys

    mine = tmp_path / "job_output.bin"
    proc = subprocess.run([sys.executable, "-c", CLOSING_JOB, str(tmp_path / "run"), str(mine)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "refused" and mine.read_bytes() == b"JOBDATA\n"
    logged = [r for r in RunLogReader(tmp_path / "run" / "run.jsonl") if isinstance(r, Step)]
    assert len(logged) >= 200 and [s.step for s in logged] == list(range(1, len(logged) + 1))


MOVING_JOB = """
import os, sys, gpuwatch
os.chdir(sys.argv[1])
m = gpuwatch.watch(job="cd", runlog_segment_mb=0.02, exporter={"enabled": False},
                   flush_interval_s=0.05)
def train(n):
    for _ in range(n):
        with m.step(samples=1):
            pass
train(1500)
os.makedirs("elsewhere")
os.chdir("elsewhere")
train(1500)
m.stop()
"""


def test_a_job_that_changes_directory_keeps_its_log_through_rotations(tmp_path: Path) -> None:
    """The default run directory is relative (``runs/...``): after the job's ``chdir`` the
    next rotation renamed a path that was not there, and every later record was lost."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", MOVING_JOB, str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (log,) = (tmp_path / "runs").glob("cd-*/run.jsonl")
    reader = RunLogReader(log)
    logged = [r.step for r in reader if isinstance(r, Step)]
    assert logged == list(range(1, 3001)) and reader.skipped == 0
    assert not (tmp_path / "elsewhere" / "runs").exists()


REMOVING_JOB = """
import os, shutil, sys
from pathlib import Path
import gpuwatch
from gpuwatch.records import Step
from gpuwatch.runlog import RunLogReader
from tests.wait import wait_for
run, what = sys.argv[1], sys.argv[2]
m = gpuwatch.watch(job="rm", out_dir=run, exporter={"enabled": False}, flush_interval_s=0.05)
def train(first, n):
    for k in range(first, first + n):
        with m.step(samples=1):
            pass
def logged():
    try:
        return sum(1 for r in RunLogReader(Path(run) / "run.jsonl") if isinstance(r, Step))
    except FileNotFoundError:  # (not made yet: the agent starts beside the job)
        return 0
train(1, 400)
wait_for(lambda: logged() >= 400, 60, "400 steps in the log")  # (written every flush)
if what == "log":
    os.unlink(Path(run) / "run.jsonl")  # a cleanup script removes the log file
else:
    shutil.rmtree(run)  # a person, or a temporary directory's end, removes the directory
train(401, 400)
m.stop()
print("faults", m.agent.faults.counts["runlog"])
"""


@pytest.mark.parametrize("what", ["log", "directory"])
def test_a_run_log_removed_mid_run_is_said_and_made_again_where_its_directory_stands(
        tmp_path: Path, what: str) -> None:
    """The log went on into the removed file, and the run ended with no log anywhere,
    without a word. A log removed from its directory is made again there, holding the
    lines written before (nothing lost); a directory removed (deleted, or a temporary
    one the job left) stays removed and the log ends. Either is counted (one fault) and
    said, and the job is unaffected."""
    import subprocess
    import sys

    run = tmp_path / "run"
    root = str(Path(__file__).resolve().parents[2])  # (its tests.wait)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (root, os.environ.get("PYTHONPATH", "")) if p)}
    proc = subprocess.run([sys.executable, "-c", REMOVING_JOB, str(run), what],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["faults", "1"], proc.stderr[-2000:]
    if what == "directory":
        assert "run directory was removed" in proc.stderr and not run.exists()
        return
    assert "removed while the job ran" in proc.stderr
    reader = RunLogReader(run / "run.jsonl")
    logged = [r.step for r in reader if isinstance(r, Step)]
    assert logged == list(range(1, 801)) and reader.skipped == 0


def _many_ranks(run: Path, ranks: int) -> None:
    run.mkdir()
    for rank in range(ranks):
        writer = RunLogWriter(run / f"run-rank{rank}.jsonl")
        writer.write([Meta(schema=SCHEMA_VERSION, gpuwatch="test", job="j", host="h",
                           rank=rank, local_rank=rank, world_size=ranks, pid=1, started=1e9),
                      *(Step(rank=rank, step=k, t=1e9 + k, wall_s=1.0) for k in range(1, 4))])
        writer.close()


ANALYZE_UNDER_A_LIMIT = """
import resource, sys
from gpuwatch import cli
soft, hard = (int(x) for x in sys.argv[2:4])
resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
sys.exit(cli.main(["analyze", sys.argv[1]]))
"""


@pytest.mark.parametrize("hard", [None, 100, 60])
def test_a_job_of_more_ranks_than_the_soft_open_file_limit_is_analysed(
        tmp_path: Path, hard: int | None) -> None:
    """1,100 ranks under the usual soft limit of 1,024 open files (here 80 ranks under
    60): every rank's log is read at once, and analyze said "Too many open files",
    naming the rules directory. The soft limit is raised as far as the hard one allows
    (100 holds 80 logs, if not every spare file a replay may want); where even the hard
    limit cannot hold the logs, one line says so."""
    _many_ranks(tmp_path / "run", 80)
    limit = hard if hard is not None else resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    proc = subprocess.run([sys.executable, "-c", ANALYZE_UNDER_A_LIMIT, str(tmp_path / "run"),
                           "60", str(limit)], capture_output=True, text=True, timeout=300)
    if hard != 60:
        assert proc.returncode == 0, proc.stderr
        return
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "80 run logs are read at once" in proc.stderr and "ulimit" in proc.stderr
