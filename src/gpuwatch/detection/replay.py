"""Offline analysis: replay run logs through the same detectors the live agent runs.

Each log goes through its own rank-scope engine, fed in file order exactly as
the live agent fed it, so the live findings come back unchanged; all logs merged
by time go through one job-scope engine for the cross-rank detectors. Records
stream: memory stays flat whatever the logs' size.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from gpuwatch.config import Settings, replay_settings
from gpuwatch.detection.engine import Engine, engine_from_settings
from gpuwatch.records import Finding, Meta, Record
from gpuwatch.sinks.runlog import RunLogReader

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
    logs = run_logs(paths)
    readers = [RunLogReader(p) for p in logs]
    streams: list[Iterator[tuple[float, int, Record]]] = []
    rank_engines: list[Engine] = []
    for i, reader in enumerate(readers):
        records = iter(reader)
        first = next(records, None)
        recorded = first.detection if isinstance(first, Meta) else {}
        rank_engines.append(engine_from_settings(replay_settings(recorded, settings), "rank"))
        if first is not None:
            records = itertools.chain((first,), records)
        streams.append(_tagged(i, records))
    job_settings = rank_engines[0].settings if rank_engines else settings
    job_engine = engine_from_settings(job_settings, "job")
    result = Analysis(logs=logs)
    for _, index, record in heapq.merge(*streams, key=lambda x: (x[0], x[1])):
        rank_engines[index].feed((record,))
        job_engine.feed((record,))
        result.records += 1
    for engine in [*rank_engines, job_engine]:
        engine.close()
    result.findings = _ordered(rank_engines, job_engine)
    result.skipped_lines = sum(r.skipped for r in readers)
    return result


def _tagged(index: int, records: Iterator[Record]) -> Iterator[tuple[float, int, Record]]:
    """(merge key, log index, record): a log's records keep their file order."""
    clock = 0.0
    for record in records:
        clock = max(clock, getattr(record, "t", clock))
        yield clock, index, record


def _ordered(rank_engines: list[Engine], job_engine: Engine) -> list[Finding]:
    findings = [f for e in [*rank_engines, job_engine] for f in e.findings.values()]
    return sorted(findings, key=lambda f: (SEVERITY_ORDER[f.severity], f.first_seen, f.detector))
