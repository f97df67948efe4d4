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
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from gpuwatch.config import Settings, replay_settings
from gpuwatch.detection.engine import Engine, engine_from_settings
from gpuwatch.records import Finding, Meta, Record
from gpuwatch.runlog import RunLogReader

SEVERITY_ORDER = {"critical": 0, "warning": 1, "info": 2}


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
            found = sorted(p.glob("run*.jsonl"))
            if not found:
                raise FileNotFoundError(f"no run*.jsonl run log in {p}")
            out += found
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"no such run log or directory: {p}")
    return out


def analyze(paths: list[Path], settings: Settings) -> Analysis:
    """Findings of the runs in ``paths``, judged with the detection settings each run
    recorded (except those the caller's ``settings`` set explicitly)."""
    with _without_cyclic_gc():
        return _analyze(run_logs(paths), settings)


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


def _analyze(logs: list[Path], settings: Settings) -> Analysis:
    readers = [RunLogReader(p) for p in logs]
    heads = [_recorded_settings(reader, settings) for reader in readers]
    attempts: dict[int, list[tuple[Settings, Iterator[Record]]]] = {}
    for recorded, attempt, records in heads:
        attempts.setdefault(attempt, []).append((recorded, records))
    engines = [_replay_attempt(attempts[a]) for a in sorted(attempts)]
    return Analysis(findings=_ordered(engines),
                    records=sum(r.records for r in readers),
                    skipped_lines=sum(r.skipped for r in readers), logs=logs)


def _replay_attempt(heads: list[tuple[Settings, Iterator[Record]]]
                    ) -> tuple[list[Engine], Engine]:
    """One attempt's logs through their rank engines and a job engine of their own."""
    rank_engines = [engine_from_settings(s, "rank") for s, _ in heads]
    job_engine = engine_from_settings(heads[0][0], "job")
    for engine in rank_engines:  # every rank's telemetry, ingested once, by its own log's engine
        engine.views = job_engine.views
        engine.peers = [job_engine]  # a straggler or sync finding explains every rank
    if len(heads) == 1:  # one log: nothing to compare across ranks
        rank_engines[0].feed(heads[0][1])
    else:
        streams = [_tagged(i, records) for i, (_, records) in enumerate(heads)]
        for clock, index, record in heapq.merge(*streams, key=lambda x: x[:2]):
            rank_engines[index].feed((record,))
            if clock >= job_engine.next_eval:
                job_engine.observe(clock)
    for engine in [*rank_engines, job_engine]:
        engine.close()
    return rank_engines, job_engine


def _recorded_settings(reader: RunLogReader,
                       settings: Settings) -> tuple[Settings, int, Iterator[Record]]:
    """The settings and attempt a log's run recorded in its meta line, and all of its
    records."""
    records = iter(reader)
    first = next(records, None)
    if first is None:
        return settings, 0, records
    meta = first if isinstance(first, Meta) else None
    recorded = meta.detection if meta else {}
    return (replay_settings(recorded, settings), meta.attempt if meta else 0,
            itertools.chain((first,), records))


def _tagged(index: int, records: Iterator[Record]) -> Iterator[tuple[float, int, Record]]:
    """(merge key, log index, record): a log's records keep their file order."""
    clock = 0.0
    for record in records:
        clock = max(clock, getattr(record, "t", clock))
        yield clock, index, record


def _ordered(attempts: list[tuple[list[Engine], Engine]]) -> list[Finding]:
    findings = [f for rank_engines, job_engine in attempts
                for e in [*rank_engines, job_engine] for f in e.findings.values()]
    return sorted(findings, key=lambda f: (SEVERITY_ORDER[f.severity], f.first_seen, f.detector))
