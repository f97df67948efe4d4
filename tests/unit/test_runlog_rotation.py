"""Run logs rotated into gzip segments past a size, read back as one stream."""

from __future__ import annotations

import gzip
from pathlib import Path

from gpuwatch.config import Settings
from gpuwatch.detection.replay import analyze, run_logs
from gpuwatch.records import Sample, Step
from gpuwatch.runlog import (
    RunLogReader,
    RunLogWriter,
    compress,
    encode,
    next_attempt,
    segments,
)
from tests.scenarios import job, write


def _records(n: int, start: int = 0) -> list[Step | Sample]:
    out: list[Step | Sample] = []
    for i in range(start, start + n):
        out.append(Step(rank=0, step=i + 1, t=float(i), wall_s=1.0, compute_s=0.9))
        out.append(Sample(0, float(i), "nvml", {"gpu_utilization_ratio": 0.5}, gpu=0))
    return out


def test_a_log_that_rotates_while_it_is_read_is_read_whole(tmp_path):
    """The writer rotates its current file into new segments while a reader is still in
    an older one: the reader follows, reading each new segment once and then the
    current file, so it sees every record written before it got there, in order."""
    path = tmp_path / "run.jsonl"
    writer = RunLogWriter(path, segment_bytes=4096)
    first = _records(200)
    for k in range(0, len(first), 20):
        writer.write(first[k:k + 20])
    assert len(segments(path)) >= 2
    reader = iter(RunLogReader(path))
    got = [next(reader)]  # in the oldest segment
    later = _records(200, start=200)
    for k in range(0, len(later), 20):  # meanwhile: more segments, a new current file
        writer.write(later[k:k + 20])
    writer.close()
    got += list(reader)
    assert got == first + later


def test_writer_rotates_into_compressed_segments_and_the_reader_reads_across_them(tmp_path):
    path = tmp_path / "run-rank0.jsonl"
    writer = RunLogWriter(path, segment_bytes=4096)
    written = _records(400)
    for k in range(0, len(written), 20):  # batches, as the agent writes them
        writer.write(written[k:k + 20])
    writer.close()
    parts = segments(path)
    assert len(parts) >= 3
    assert all(p.name.startswith("run-rank0.part") and p.name.endswith(".jsonl.gz")
               for p in parts)
    assert all(gzip.decompress(p.read_bytes()).endswith(b"\n") for p in parts)  # whole lines
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob("*.part*.jsonl"))
    reader = RunLogReader(path)
    assert list(reader) == written
    assert reader.skipped == 0


def test_a_reopened_log_numbers_its_segments_on(tmp_path):
    path = tmp_path / "run.jsonl"
    first = RunLogWriter(path, segment_bytes=2048)
    first.write(_records(50))
    first.close()
    before = segments(path)
    second = RunLogWriter(path, segment_bytes=2048)
    second.write(_records(50, start=50))
    second.close()
    after = segments(path)
    assert after[:len(before)] == before and len(after) > len(before)
    assert list(RunLogReader(path)) == _records(100)


def test_torn_last_line_in_a_compressed_segment_is_skipped_and_the_rest_read(tmp_path):
    path = tmp_path / "run.jsonl"
    writer = RunLogWriter(path)
    writer.write(_records(10))
    writer.close()
    whole = path.read_bytes()
    part = tmp_path / "run.part00001.jsonl"
    part.write_bytes(whole[: len(whole) - 30])  # a torn last line
    compress(part)
    RunLogWriter(path).close()
    path.write_bytes(b"")
    tail = RunLogWriter(path)
    tail.write(_records(2, start=10))
    tail.close()
    reader = RunLogReader(path)
    got = list(reader)
    assert got == _records(10)[:-1] + _records(2, start=10)
    assert reader.skipped == 1


def test_a_cut_compressed_segment_gives_what_it_holds(tmp_path):
    """A segment cut short (a copy that stopped, a full disk): its readable lines, then
    the next segments; the cut counted."""
    path = tmp_path / "run.jsonl"
    part = tmp_path / "run.part00001.jsonl"
    RunLogWriter(part).write(_records(2000))
    packed = compress(part)
    packed.write_bytes(packed.read_bytes()[: packed.stat().st_size // 2])
    writer = RunLogWriter(path)
    writer.write(_records(3, start=2000))
    writer.close()
    reader = RunLogReader(path)
    got = list(reader)
    assert 0 < len(got) - 6 < 4000 and got[-6:] == _records(3, start=2000)
    assert got[: len(got) - 6] == _records(2000)[: len(got) - 6]
    assert reader.skipped >= 1


def _rotated(plain: list[Path], directory: Path) -> None:
    """Each of the ``plain`` logs written again into ``directory`` in 64 KiB segments."""
    for p in plain:
        writer = RunLogWriter(directory / p.name, segment_bytes=64 << 10)
        writer.write(list(RunLogReader(p)))
        writer.close()


def test_analyze_reads_rotated_logs_with_the_same_findings(tmp_path):
    j = job("nccl_hang")
    plain = write(j.shape, tmp_path / "plain", job=j.name)
    rotated_dir = tmp_path / "rotated"
    _rotated(plain, rotated_dir)
    assert len(run_logs([rotated_dir])) == len(plain)  # segments are not logs of their own
    assert all(segments(rotated_dir / p.name) for p in plain)
    settings = Settings(**j.settings)
    assert (analyze([rotated_dir], settings).findings
            == analyze([tmp_path / "plain"], settings).findings)


def test_a_rotated_log_named_through_a_link_is_read_whole(tmp_path):
    """A directory of links gathering a job's logs: each link's log is read with the
    segments beside its target, not only the newest file (it was, with no word, and a
    starved job read as clean)."""
    j = job("llm_pretrain_starved_loader")
    plain = write(j.shape, tmp_path / "plain", job=j.name)
    _rotated(plain, tmp_path / "rotated")
    links = tmp_path / "links"
    links.mkdir()
    for p in plain:
        (links / p.name).symlink_to(Path("..") / "rotated" / p.name)
    assert all(segments(links / p.name) for p in plain)
    settings = Settings(**j.settings)
    found = analyze([links], settings).findings
    assert found and found == analyze([tmp_path / "plain"], settings).findings


def test_segments_of_one_log_are_not_anothers(tmp_path):
    for name in ("run-rank1.part00001.jsonl.gz", "run-rank10.part00001.jsonl.gz",
                 "run-rank1.attempt2.part00001.jsonl.gz", "run-rank1.part00002.jsonl"):
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in segments(Path(tmp_path / "run-rank1.jsonl"))] == [
        "run-rank1.part00001.jsonl.gz", "run-rank1.part00002.jsonl"]


def test_a_log_of_more_segments_than_races_allowed_is_read_whole(tmp_path):
    """10,050 segments (a small segment size over a long run): every one is read, in
    order, listed once rather than once per segment (which took minutes), and none is
    taken for a rotation raced."""
    path = tmp_path / "run.jsonl"
    n = 10_050
    records = _records(n)
    for k in range(n):
        (tmp_path / f"run.part{k + 1}.jsonl.gz").write_bytes(gzip.compress(
            b"".join(encode(r) for r in records[2 * k:2 * k + 2]), compresslevel=1))
    path.write_bytes(b"")
    assert list(RunLogReader(path)) == records


def test_a_log_whose_writer_died_mid_rotation_is_read_from_its_segments(tmp_path):
    """A writer killed between making its full file the next segment and making a new
    file leaves the log's segments and no file of its own name: the log is found in its
    directory, read whole, analysed as before, and a restart counts it as an attempt."""
    j = job("nccl_hang")
    plain = write(j.shape, tmp_path / "plain", job=j.name)
    died = tmp_path / "died"
    _rotated(plain, died)
    victim = died / plain[0].name
    stem = victim.name.removesuffix(".jsonl")
    victim.replace(died / f"{stem}.part{len(segments(victim)) + 1:05d}.jsonl")
    assert not victim.exists()
    assert [p.name for p in run_logs([died])] == [p.name for p in plain]
    assert list(RunLogReader(victim)) == list(RunLogReader(plain[0]))
    settings = Settings(**j.settings)
    assert analyze([died], settings).findings == analyze([tmp_path / "plain"], settings).findings
    assert next_attempt(died) == 1
