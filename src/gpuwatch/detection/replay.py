"""Offline analysis: replay run logs through the same detectors the live agent runs.

Each log goes through its own rank-scope engine, fed in file order exactly as
the live agent fed it, so the live findings come back unchanged; all logs merged
by time go through one job-scope engine for the cross-rank detectors. Each
attempt (a restart, a resumed job: the ``attempt`` of a log's meta line) is a
timeline of its own, so the time between attempts is a restart, never a stall.
Records stream: memory stays flat whatever the logs' size.
"""

from __future__ import annotations

import contextlib
import gc
import heapq
import itertools
import os
import threading
from collections.abc import Generator, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from tqdm import tqdm

from gpuwatch.config import Settings, replay_settings
from gpuwatch.detection.engine import JOB_SOURCES, Engine, engine_from_settings, for_job
from gpuwatch.records import Finding, Meta, Record
from gpuwatch.runlog import RunLogReader, is_segment

SEVERITY_ORDER = {"critical": 0, "warning": 1, "info": 2}
TICK_RECORDS = 65536  # the progress bar moves every this many records


@dataclass
class Analysis:
    """Every finding of the run (latest state of each), and what the readers skipped."""

    findings: list[Finding] = field(default_factory=list)
    records: int = 0
    skipped_lines: int = 0
    logs: list[Path] = field(default_factory=list)


def run_logs(paths: list[Path]) -> list[Path]:
    """Run-log files named directly or found in directories (``run*.jsonl``).

    Raises FileNotFoundError naming the first path that is neither.
    """
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            found = sorted(f for f in p.glob("run*.jsonl") if not is_segment(f.name))
            if not found:
                raise FileNotFoundError(f"no run*.jsonl run log in {p}")
            out += found
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"no such run log or directory: {p}")
    return out


def analyze(paths: list[Path], settings: Settings, *, workers: int | None = None,
            progress: TextIO | None = None, progress_delay_s: float = 3.0) -> Analysis:
    """Findings of the runs in ``paths``, judged with the detection settings each run
    recorded (except those the caller's ``settings`` set explicitly).

    ``workers``: processes that replay ranks side by side (forked); by default every
    core, unless this process runs other threads (a fork copies their locks as they
    are: a held one would never be released), then 1: all in this process. The
    findings are the same either way. ``progress``: a stream (stderr) for a progress
    bar, shown only on a terminal and once the analysis has run ``progress_delay_s``
    seconds."""
    if workers is None:
        workers = default_workers()
    with _without_cyclic_gc():
        return _analyze(run_logs(paths), settings, workers, progress, progress_delay_s)


def default_workers() -> int:
    """Every core this process may run on; 1 while it runs other threads."""
    return _cores() if threading.active_count() == 1 else 1


def _cores() -> int:
    """The cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


@contextlib.contextmanager
def _without_cyclic_gc() -> Iterator[None]:
    """Replay allocates millions of short-lived, acyclic records: the cycle collector's
    passes over them are pure cost (about 15% of replay time)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@dataclass
class Log:
    """One run log opened for replay: its reader, the settings and attempt its meta line
    recorded, its first record and the reader's stream of the rest."""

    reader: RunLogReader
    settings: Settings
    attempt: int
    first: Record | None
    rest: Generator[Record, None, None]

    @property
    def records(self) -> Iterator[Record]:
        """Every record of the log, the first included (once)."""
        return itertools.chain((self.first,) if self.first is not None else (), self.rest)

    def close(self) -> None:
        """Done with the stream: its file closes, its parsed block goes."""
        self.rest.close()


def _analyze(paths: list[Path], settings: Settings, workers: int,
             progress: TextIO | None, delay_s: float) -> Analysis:
    logs = [_open(path, settings) for path in paths]
    readers = [log.reader for log in logs]
    attempts: dict[int, list[Log]] = {}
    for log in logs:
        attempts.setdefault(log.attempt, []).append(log)
    size = sum(p.stat().st_size for p in paths)
    parallel = workers > 1 and any(len(a) > 1 for a in attempts.values())
    # (in parallel, the logs are read twice: by the job engine, then by the rank engines)
    with _bar(2 * size if parallel else size, progress, delay_s) as bar:
        if parallel:
            engines, n_records, skipped = _parallel(
                [attempts[a] for a in sorted(attempts)], workers, bar)
        else:
            engines = [_replay_attempt(attempts[a], Reading(readers, bar))
                       for a in sorted(attempts)]
            n_records = sum(r.records for r in readers)
            skipped = sum(r.skipped for r in readers)
    return Analysis(findings=_ordered(engines), records=n_records, skipped_lines=skipped,
                    logs=paths)


@dataclass
class Reading:
    """The readers of a replay and the bar that shows how far they got (by bytes)."""

    readers: list[RunLogReader]
    bar: tqdm[Any] | None

    def tick(self) -> None:
        if self.bar is not None:
            done = sum(r.bytes_read for r in self.readers)
            self.bar.update(done - self.bar.n)


@contextlib.contextmanager
def _bar(total: int, stream: TextIO | None, delay_s: float) -> Iterator[tqdm[Any] | None]:
    """A progress bar over ``total`` bytes on ``stream`` if it is a terminal."""
    if stream is None or not stream.isatty():
        yield None
        return
    with tqdm(total=total, file=stream, unit="B", unit_scale=True, delay=delay_s,
              desc="gpuwatch analyze", leave=False) as bar:
        yield bar


def _replay_attempt(logs: list[Log], reading: Reading) -> tuple[list[Engine], Engine]:
    """One attempt's logs through their rank engines and a job engine of their own.

    The job engine judges when the merged clock reaches its next evaluation at a
    record it reads (``for_job``), so a job pass that reads only those (``_job_pass``)
    judges at the same moments."""
    rank_engines = [engine_from_settings(log.settings, "rank") for log in logs]
    job_engine = engine_from_settings(logs[0].settings, "job")
    for engine in rank_engines:  # every rank's telemetry, ingested once, by its own log's engine
        engine.views = job_engine.views
        engine.peers = [job_engine]  # a straggler or sync finding explains every rank
    if len(logs) == 1:  # one log: nothing to compare across ranks
        for n, record in enumerate(logs[0].records):
            rank_engines[0].take(record)
            if not n % TICK_RECORDS:
                reading.tick()
    else:
        streams = [_tagged(i, log.reader, log.records) for i, log in enumerate(logs)]
        for n, (clock, index, _, record) in enumerate(heapq.merge(*streams)):
            rank_engines[index].take(record)
            if clock >= job_engine.next_eval and for_job(record):
                job_engine.observe(clock)
            if not n % TICK_RECORDS:
                reading.tick()
    for engine in [*rank_engines, job_engine]:
        engine.close()
    reading.tick()
    return rank_engines, job_engine


# -- ranks side by side ---------------------------------------------------------------
# The job engine needs every rank's records; each rank engine needs only its own log and
# what the job engine's findings explained at each moment. So one pass in this process
# runs the job engine over all logs merged (the rank engines ingest but judge nothing)
# and notes each change of what its findings cover, at its place in the merged order
# (clock, log, line); then each log's rank engine replays in a process of its own,
# taking in those changes at the same places. The findings are the serial replay's.

Position = tuple[float, int, int]  # (merged clock, log index, record index in the log)
Covered = list[tuple[str, list[int]]]


@dataclass
class JobTimeline:
    """What the job engine's findings covered, from each position of the merged replay."""

    changes: list[tuple[Position, Covered]] = field(default_factory=list)
    _at: int = 0
    _covered: Covered = field(default_factory=list)
    revision: int = 0  # the changes taken in

    def note(self, at: Position, covered: Covered) -> None:
        if covered != (self.changes[-1][1] if self.changes else []):
            self.changes.append((at, covered))

    def advance(self, before: Position) -> None:
        """Take in every change made before ``before``."""
        while self._at < len(self.changes) and self.changes[self._at][0] < before:
            self._covered = self.changes[self._at][1]
            self._at += 1
            self.revision = self._at

    def covered(self) -> Covered:
        return self._covered


def _parallel(attempts: list[list[Log]], workers: int, bar: tqdm[Any] | None) -> tuple[
        list[tuple[list[Engine], Engine]], int, int]:
    """Each attempt's job engine here, its rank engines in ``workers`` processes."""
    job_engines = []
    every = [log for logs in attempts for log in logs]
    for log in every:
        log.close()  # the job pass reads each log afresh, the workers too
    readers = {id(log): RunLogReader(log.reader.path, JOB_SOURCES) for log in every}
    reading = Reading(list(readers.values()), bar)
    with ProcessPoolExecutor(max_workers=min(workers, len(every))) as pool:
        pool.submit(int)  # forks every worker now, before the job pass makes this process big
        futures: dict[int, Future[tuple[Engine, int, int]]] = {}
        for logs in attempts:
            job_engine, timeline = _job_pass(logs, [readers[id(log)] for log in logs],
                                             reading)
            job_engines.append(job_engine)
            for tag, log in enumerate(logs):  # the log's merge tag: its place in the attempt
                futures[id(log)] = pool.submit(_replay_rank, log.reader.path, log.settings,
                                               tag, timeline)
        path_of = {f: log.reader.path for log in every for f in [futures[id(log)]]}
        for future in as_completed(path_of):
            future.result()
            if reading.bar is not None:
                reading.bar.update(path_of[future].stat().st_size)
    results = [futures[id(log)].result() for log in every]
    out, done = [], iter(results)
    for logs, job in zip(attempts, job_engines, strict=True):
        out.append(([next(done)[0] for _ in logs], job))
    return out, sum(r[1] for r in results), sum(r[2] for r in results)


def _job_pass(logs: list[Log], readers: list[RunLogReader], reading: Reading
              ) -> tuple[Engine, JobTimeline]:
    """The job engine over one attempt's logs merged, and what its findings covered
    (one log: nothing to compare across ranks, as in the serial replay). ``readers``
    read the logs again, passing over the samples no job detector reads
    (``JOB_SOURCES``)."""
    job_engine = engine_from_settings(logs[0].settings, "job")
    if len(logs) == 1:
        return job_engine, JobTimeline()
    ingest = [engine_from_settings(log.settings, "rank") for log in logs]
    for engine in ingest:
        engine.rules = {}  # they only ingest: their own judgements come later, per log
        engine.views = job_engine.views
    timeline = JobTimeline()
    streams = [_tagged(i, reader, iter(reader)) for i, reader in enumerate(readers)]
    for n, (clock, index, line, record) in enumerate(heapq.merge(*streams)):
        ingest[index].take(record)
        if clock >= job_engine.next_eval and for_job(record):
            job_engine.observe(clock)
            timeline.note((clock, index, line), job_engine.covered())
        if not n % TICK_RECORDS:
            reading.tick()
    for engine in ingest:
        engine.close()
    job_engine.close()
    reading.tick()
    return job_engine, timeline


def _replay_rank(path: Path, settings: Settings, index: int,
                 timeline: JobTimeline) -> tuple[Engine, int, int]:
    """One log's rank engine, explained by the job engine's timeline (in a worker)."""
    reader = RunLogReader(path)
    engine = engine_from_settings(settings, "rank")
    engine.peers = [timeline]
    with _without_cyclic_gc():
        for clock, _, line, record in _tagged(index, reader, iter(reader)):
            timeline.advance((clock, index, line))
            engine.take(record)
        timeline.advance((float("inf"), 0, 0))
        engine.close()
    engine.drop_windows()  # what goes back is the findings, not the telemetry
    return engine, reader.records, reader.skipped


def _open(path: Path, settings: Settings) -> Log:
    """A log with the settings and attempt its run recorded in its meta line."""
    reader = RunLogReader(path)
    records = iter(reader)
    first = next(records, None)
    if first is None:
        return Log(reader, settings, 0, None, records)
    meta = first if isinstance(first, Meta) else None
    recorded = meta.detection if meta else {}
    return Log(reader, replay_settings(recorded, settings), meta.attempt if meta else 0,
               first, records)


def _tagged(index: int, reader: RunLogReader, records: Iterator[Record]
            ) -> Iterator[tuple[float, int, int, Record]]:
    """(clock, log index, line, record) of ``reader``'s records (``records``: what it
    yields): ordered as tuples, merged logs interleave by time and keep each log's
    file order (no two compare equal)."""
    for record in records:
        yield reader.clock, index, reader.line, record


def _ordered(attempts: list[tuple[list[Engine], Engine]]) -> list[Finding]:
    findings = [f for rank_engines, job_engine in attempts
                for e in [*rank_engines, job_engine] for f in e.findings.values()]
    return sorted(findings, key=lambda f: (SEVERITY_ORDER[f.severity], f.first_seen, f.detector))
