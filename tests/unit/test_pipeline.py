"""The agent's pipeline: the engine judges, every sink gets the batch, a failing sink is
counted and never keeps the batch from the others."""

from __future__ import annotations

from pathlib import Path

from gpuwatch.config import Settings
from gpuwatch.detection.engine import engine_from_settings
from gpuwatch.faults import FaultLog
from gpuwatch.pipeline import Batch, Pipeline, RunLogSink
from gpuwatch.records import SCHEMA_VERSION, Meta, Record, Step
from gpuwatch.runlog import RunLogReader, RunLogWriter


class Broken:
    def deliver(self, batch: Batch) -> None:
        raise OSError("disk full")


class Kept:
    def __init__(self) -> None:
        self.batches: list[Batch] = []

    def deliver(self, batch: Batch) -> None:
        self.batches.append(batch)


def test_a_failing_sink_is_counted_and_the_sinks_after_it_still_get_every_batch(
        tmp_path: Path) -> None:
    faults = FaultLog()
    pipeline = Pipeline(engine_from_settings(Settings(), "rank", "job"), faults)
    writer = RunLogWriter(tmp_path / "run.jsonl")
    kept = Kept()
    pipeline.add("broken", Broken())
    pipeline.add("runlog", RunLogSink(writer))
    pipeline.add("kept", kept)
    meta = Meta(schema=SCHEMA_VERSION, gpuwatch="t", job="job", host="h", rank=0,
                local_rank=0, world_size=1, pid=1, started=0.0)
    batches: list[list[Record]] = [[meta], [Step(rank=0, step=i, t=float(i), wall_s=0.1)
                                            for i in range(1, 4)]]
    for records in batches:
        pipeline.write(records)
    writer.close()
    assert faults.counts["broken"] == 2
    assert [b.records for b in kept.batches] == batches
    assert len(list(RunLogReader(tmp_path / "run.jsonl"))) == 4
