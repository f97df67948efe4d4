"""Run log: round trip, and a reader that survives torn and garbage lines."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import tracemalloc
from dataclasses import replace
from pathlib import Path

import pytest

from gpuwatch.records import SCHEMA_VERSION, Event, Meta, Record, Sample, Step
from gpuwatch.runlog import (
    MAX_BLANK_LINES,
    MAX_EXPANSION,
    MAX_UNREADABLE_LINES,
    MIN_EXPANDED_BYTES,
    RunLogReader,
    RunLogWriter,
    encode,
)

META = Meta(schema=SCHEMA_VERSION, gpuwatch="0.1.0", job="j", host="h", rank=0, local_rank=0,
            world_size=1, pid=1, started=0.0)


def test_records_round_trip(tmp_path: Path) -> None:
    records = [META, Step(rank=0, step=1, t=1.0, wall_s=0.5, data_s=0.1, samples=8),
               Sample(rank=0, t=1.0, source="nvml", values={"gpu_utilization_ratio": 0.5}, gpu=0),
               Event(rank=0, t=2.0, name="oom", data={"count": 1})]
    w = RunLogWriter(tmp_path / "sub" / "run.jsonl")
    w.write(records)
    w.close()
    w.write(records)  # after close: ignored, not raised
    reader = RunLogReader(tmp_path / "sub" / "run.jsonl")
    assert list(reader) == records
    assert reader.skipped == 0


def test_truncated_and_garbage_lines_are_skipped_and_counted(tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    w = RunLogWriter(path)
    w.write([META] + [Step(rank=0, step=i, t=float(i), wall_s=0.1) for i in range(1, 4)])
    w.close()
    whole = path.read_text()
    torn = whole + '{"rank":0,"step":4,"t":4.0,"wall'  # the process died mid-line
    path.write_text("not json\n[1,2]\n" + '{"kind":"nope"}\n' + '{"kind":"step","rank":0}\n'
                    + "\n" + torn)
    reader = RunLogReader(path)
    got = list(reader)
    assert [r.step for r in got if isinstance(r, Step)] == [1, 2, 3]
    assert reader.skipped == 5


@pytest.mark.parametrize("field, value", [
    ("wall_s", 0.0), ("wall_s", 5e-324), ("wall_s", -1.0), ("wall_s", 1e308),
    ("data_s", -0.5), ("compute_s", 1e308), ("collective_s", -1e308)])
def test_a_step_no_clock_measured_is_skipped_and_counted(
        tmp_path: Path, field: str, value: float) -> None:
    """A step whose wall time or part is negative, denormal or past any run's length
    (a hostile log) made confident nonsense: "waits for data nan% of each step"."""
    path = tmp_path / "run.jsonl"
    w = RunLogWriter(path)
    bad = Step(rank=0, step=2, t=2.0, wall_s=0.1, data_s=0.02, compute_s=0.08)
    w.write([META, Step(rank=0, step=1, t=1.0, wall_s=0.1), replace(bad, **{field: value}),
             Step(rank=0, step=3, t=3.0, wall_s=0.1, data_s=0.05, compute_s=0.05)])
    w.close()
    reader = RunLogReader(path)
    assert [r.step for r in reader if isinstance(r, Step)] == [1, 3]
    assert reader.skipped == 1


def test_a_logs_job_and_host_are_read_with_their_secrets_masked(tmp_path: Path) -> None:
    """A report shows the job and hosts its logs name: a secret in them (a hostile log,
    an older agent's) was shown whole."""
    token = "hf_" + "abcdefghijklmnopqrstuvwxyz123456"
    path = tmp_path / "run.jsonl"
    w = RunLogWriter(path)
    w.write([replace(META, job=f"exp --token {token}",
                     host="https://user:hunter2pass@example.com")])
    w.close()
    (meta,) = list(RunLogReader(path))
    assert isinstance(meta, Meta)
    assert token not in meta.job and "hunter2pass" not in meta.host
    assert meta.job.startswith("exp --token ")


def test_lines_naming_another_rank_are_not_the_logs_own(tmp_path: Path) -> None:
    """A rank's log holds its rank's records: lines naming thousands of other ranks (a
    hostile or corrupted file) are skipped and counted, never judged as ranks (each
    would be a view the engine judges at every interval)."""
    path = tmp_path / "run.jsonl"
    w = RunLogWriter(path)
    w.write([META, *(Step(rank=r, step=1, t=1.0 + r, wall_s=0.1) for r in range(1, 2001)),
             Step(rank=0, step=1, t=3000.0, wall_s=0.1)])
    w.close()
    reader = RunLogReader(path)
    got = list(reader)
    assert [(r.rank, r.t) for r in got if isinstance(r, Step)] == [(0, 3000.0)]
    assert reader.skipped == 2000 and reader.clock == 3000.0
    # a stray line first does not make its rank the log's: the meta line (or, before it,
    # the log's name) says whose log it is
    stray = tmp_path / "run-rank0.jsonl"
    stray.write_bytes(encode(Step(rank=1, step=1, t=1.0, wall_s=0.1)) + path.read_bytes())
    kept = list(RunLogReader(stray))
    assert [r.rank for r in kept] == [0, 0] and isinstance(kept[0], Meta)


def test_a_file_of_blank_lines_ends_where_no_log_would_go_on(tmp_path: Path) -> None:
    """The writer writes no blank line: past MAX_BLANK_LINES the rest of the file is no
    log's (a compressed segment of newlines expands a thousandfold), skipped as one line."""
    path = tmp_path / "run.jsonl"
    w = RunLogWriter(path)
    w.write([META, Step(rank=0, step=1, t=1.0, wall_s=0.1)])
    w.close()
    with path.open("ab") as f:
        f.write(b"\n" * 10 + encode(Step(rank=0, step=2, t=2.0, wall_s=0.1)) + b"\n")
        f.write(b"\n" * (MAX_BLANK_LINES + 1) + encode(Step(rank=0, step=3, t=3.0, wall_s=0.1)))
    reader = RunLogReader(path)
    assert [r.step for r in reader if isinstance(r, Step)] == [1, 2]  # a few blanks: read on
    assert reader.skipped == 1


def test_non_finite_floats_are_written_as_null(tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    w = RunLogWriter(path)
    w.write([Step(rank=0, step=1, t=1.0, wall_s=float("nan"))])
    w.close()
    assert json.loads(path.read_text())["wall_s"] is None


def _read_peak(path: Path, steps: int) -> int:
    """Peak bytes allocated while counting the records of a fresh log of ``steps`` steps."""
    w = RunLogWriter(path)
    for chunk in range(steps // 1000):
        w.write([Step(rank=0, step=chunk * 1000 + i, t=float(i), wall_s=0.1, data_s=0.01,
                      samples=64) for i in range(1000)])
    w.close()
    tracemalloc.start()
    count = sum(1 for _ in RunLogReader(path))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert count == steps
    return peak


def test_reader_streams_a_large_log_without_holding_it(tmp_path: Path) -> None:
    """Memory while reading is bounded by a block of lines: five times the log, not
    more memory (a reader holding the log would need five times as much)."""
    small = _read_peak(tmp_path / "small.jsonl", 20_000)
    large = _read_peak(tmp_path / "large.jsonl", 100_000)
    assert large < 1.5 * small, (small, large)


def test_a_reader_of_some_sources_agrees_with_a_full_reader_on_where_it_is(
        tmp_path: Path) -> None:
    """Passing over the samples of other sources (unparsed) yields the rest with the line
    numbers and clock a full reader gives them, even where a passed-over sample is the
    newest time so far (records are written in batches, not in time order), and torn
    or impossible lines count as skipped in both, moving no clock."""
    records: list[Record] = [META]
    for i in range(1, 3000):  # more than one parse block
        t = float(i)
        records.append(Sample(rank=0, t=t + 0.9, source="host", values={"workers": 2.0}))
        records.append(Sample(rank=0, t=t, source="nvml", values={"gpu_power_watts": 300.0},
                              gpu=0))
        if i % 4 == 0:
            records.append(Step(rank=0, step=i // 4, t=t + 0.5, wall_s=4.0))
    path = tmp_path / "run.jsonl"
    half = len(records) // 2
    path.write_bytes(b"".join(map(encode, records[:half]))
                     + b'{"rank":0,"t":9e9,"source":"host","val\n'  # torn: skipped, no time
                     + b'{"rank":0,"t":1e999,"source":"host","values":{}}\n'  # not JSON's
                     + b"".join(map(encode, records[half:])))
    full = RunLogReader(path)
    where = {}
    for r in full:  # (the reader's line and clock describe the record it just gave)
        where[full.line] = (full.clock, r)
    some = RunLogReader(path, frozenset({"nvml"}))
    kept = [(some.line, some.clock, r) for r in some]
    assert [r for _, _, r in kept] == [r for r in records
                                        if not (isinstance(r, Sample) and r.source == "host")]
    assert all(where[line] == (clock, r) for line, clock, r in kept)
    assert some.passed_over == 2999 and some.records + some.passed_over == full.records
    assert (some.skipped, full.skipped) == (2, 2)


def test_a_record_json_cannot_hold_is_left_out_the_rest_written_the_error_raised(
        tmp_path: Path) -> None:
    """One number too big for a JSON integer must not cost the records around it."""
    writer = RunLogWriter(tmp_path / "run.jsonl")
    records: list[Record] = [Step(rank=0, step=1, t=1.0, wall_s=0.1),
                             Step(rank=0, step=2, t=2.0, wall_s=0.1, tokens=2**64),
                             Step(rank=0, step=3, t=3.0, wall_s=0.1)]
    with pytest.raises(TypeError):
        writer.write(records)
    writer.close()
    assert [r.step for r in RunLogReader(tmp_path / "run.jsonl") if isinstance(r, Step)] == [1, 3]


def test_a_compressed_segment_inflating_past_any_logs_ratio_is_cut(tmp_path: Path) -> None:
    """A small gzip segment of 200 MB of junk lines (a "gzip bomb": a thousandfold)
    would be read line by line for minutes; past MAX_EXPANSION times its size (at least
    MIN_EXPANDED_BYTES) the segment ends there, counted as skipped. The live file after
    it is still read."""
    path = tmp_path / "run-rank0.jsonl"
    w = RunLogWriter(path)
    w.write([META, Step(rank=0, step=2, t=2.0, wall_s=0.1)])
    w.close()
    bomb = tmp_path / "run-rank0.part00001.jsonl.gz"
    junk = (b"x" * (64 * 1024 - 1) + b"\n") * 16  # 1 MiB
    with gzip.open(bomb, "wb", compresslevel=9) as f:
        f.write(encode(META) + b"\n" + encode(Step(rank=0, step=1, t=1.0, wall_s=0.1)) + b"\n")
        for _ in range(200):  # 200 MiB of junk lines
            f.write(junk)
    limit = max(bomb.stat().st_size * MAX_EXPANSION, MIN_EXPANDED_BYTES)
    assert limit < 50 << 20  # a quarter of what it inflates to
    reader = RunLogReader(path)
    assert [r.step for r in reader if isinstance(r, Step)] == [1, 2]
    assert reader.skipped > 0 and reader.lines_read < limit // (64 * 1024) + 10


def test_a_segment_of_lines_that_hold_no_record_ends_after_enough_of_them(
        tmp_path: Path) -> None:
    """A 780 KB segment of "{}" lines inflates (within MAX_EXPANSION) to fifty million
    of them: 47 s of reading nothing. Past MAX_UNREADABLE_LINES in a row the segment
    ends; the live file after it is still read."""
    path = tmp_path / "run-rank0.jsonl"
    w = RunLogWriter(path)
    w.write([META, Step(rank=0, step=2, t=2.0, wall_s=0.1)])
    w.close()
    with gzip.open(tmp_path / "run-rank0.part00001.jsonl.gz", "wb") as f:
        f.write(encode(META) + b"\n" + encode(Step(rank=0, step=1, t=1.0, wall_s=0.1)) + b"\n")
        f.write(b"{}\n" * (3 * MAX_UNREADABLE_LINES))
    reader = RunLogReader(path)
    assert [r.step for r in reader if isinstance(r, Step)] == [1, 2]
    assert reader.skipped == MAX_UNREADABLE_LINES + 1


def test_a_file_is_written_whole_in_place_of_a_fifo_or_a_link(tmp_path: Path) -> None:
    """A reused run directory holding a FIFO named findings.json (writing waited for a
    reader forever: `gpuwatch run` never returned the job's status) or a link named
    report.html (the file it points to was written over): both replaced, neither
    followed. In a child process with a deadline: a FIFO opened for writing blocks."""
    os.mkfifo(tmp_path / "findings.json")
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (tmp_path / "report.html").symlink_to(victim)
    (tmp_path / "kept").mkdir()
    (tmp_path / "summary.json").symlink_to(tmp_path / "kept")  # (a link to a directory)
    code = ("import sys; from pathlib import Path; from gpuwatch.runlog import write_whole; "
            "d = Path(sys.argv[1]); write_whole(d / 'findings.json', '[]\\n'); "
            "write_whole(d / 'report.html', '<html></html>'); "
            "write_whole(d / 'summary.json', '{}')")
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True, timeout=60)
    assert (tmp_path / "findings.json").read_text() == "[]\n"
    assert not (tmp_path / "report.html").is_symlink() and victim.read_text() == "precious"
    assert (tmp_path / "summary.json").read_text() == "{}" and (tmp_path / "kept").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "findings.json", "kept", "report.html", "summary.json",
        "victim.txt"]  # no temporary file left
