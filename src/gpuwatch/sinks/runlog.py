"""The run log: JSON Lines written by the agent thread, read back by ``gpuwatch analyze``,
and the run directory that holds one log per rank and attempt.

Each batch of records goes through a 1 MiB buffer and is flushed, so a killed
process leaves whole lines behind but for at most one torn last line, which
the reader skips and counts.

Layout of a run directory (docs/runlog.md)::

    <run>/run.jsonl                      one process (world size 1), attempt 0
    <run>/run-rank<R>.jsonl              rank R of a multi-rank job, attempt 0
    <run>/run-rank<R>.attempt<N>.jsonl   rank R, attempt N > 0 (a restart, a resumed job)
"""

from __future__ import annotations

import itertools
import re
import secrets
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import orjson

from gpuwatch.records import Meta, Record, from_dict, to_dict

_LOG_NAME = re.compile(r"run(?:-rank(\d+))?(?:\.attempt(\d+))?\.jsonl")
MAX_ATTEMPTS = 100_000  # a bound on the search for a free log name


def runlog_name(rank: int, world_size: int, attempt: int) -> str:
    """The file name of a rank's log in one attempt (see the layout above)."""
    base = "run" if world_size == 1 else f"run-rank{rank}"
    return f"{base}.jsonl" if attempt == 0 else f"{base}.attempt{attempt}.jsonl"


def attempt_of(name: str) -> int | None:
    """The attempt a run-log file name says, None for a name that is not a run log."""
    match = _LOG_NAME.fullmatch(name)
    if match is None:
        return None
    return int(match.group(2) or 0)


def next_attempt(run_dir: Path) -> int:
    """The attempt after every one already logged in ``run_dir`` (0 for a new run)."""
    seen = [a for p in run_dir.glob("run*.jsonl") if (a := attempt_of(p.name)) is not None]
    return max(seen) + 1 if seen else 0


def create_run_dir(parent: Path, prefix: str) -> Path:
    """A new, empty run directory ``<parent>/<prefix>-<YYYYmmdd-HHMMSS>-<6 hex>``, created
    exclusively: two runs started in the same second never share one."""
    parent.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    while True:
        path = parent / f"{prefix}-{stamp}-{secrets.token_hex(3)}"
        try:
            path.mkdir()
        except FileExistsError:
            continue  # 1 in 16 million per pair of runs in one second: draw again
        return path


def _plain(value: Any) -> Any:
    """JSON for what json does not know (paths, sets, numpy scalars): its str or list."""
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)


def encode(record: Record) -> bytes:
    """One run-log line, newline included: fields at their default are left out,
    non-finite floats become null."""
    return orjson.dumps(to_dict(record, compact=not isinstance(record, Meta)), default=_plain,
                        option=orjson.OPT_APPEND_NEWLINE)  # a meta line is written in full


class RunLogWriter:
    """Writes records to ``path`` (created with its parent directory): appends, or
    with ``exclusive`` creates a new file and raises FileExistsError if there is one."""

    def __init__(self, path: Path, exclusive: bool = False) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.records = 0
        self._file: IO[bytes] | None = open(  # noqa: SIM115
            path, "xb" if exclusive else "ab", buffering=1 << 20)
        self._lock = threading.Lock()

    def write(self, records: Iterable[Record]) -> None:
        """Append records, then flush. Lines are encoded one at a time: orjson's bytes
        keep a 4 KiB allocation each, so a batch of them held at once costs megabytes."""
        with self._lock:
            if self._file is None:
                return
            write, n = self._file.write, 0
            for record in records:
                write(encode(record))
                n += 1
            if n:
                self._file.flush()
                self.records += n

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


def claim_runlog(run_dir: Path, rank: int, world_size: int,
                 first_attempt: int) -> tuple[RunLogWriter, int]:
    """A writer on a new log for ``rank``, at the first attempt from ``first_attempt`` on
    whose file does not exist yet (created exclusively: a reused directory is never
    appended to), and that attempt."""
    for attempt in range(first_attempt, first_attempt + MAX_ATTEMPTS):
        try:
            return RunLogWriter(run_dir / runlog_name(rank, world_size, attempt),
                                exclusive=True), attempt
        except FileExistsError:
            continue
    raise FileExistsError(f"{run_dir}: no free run-log name for rank {rank} after "
                          f"{MAX_ATTEMPTS} attempts")


class RunLogReader:
    """Streams the records of one run log; bad or truncated lines are skipped and counted.

    Lines are parsed a block at a time (one JSON array per block); a block with a
    bad line is parsed again line by line, so one torn line costs only itself.
    """

    BLOCK_LINES = 4096

    def __init__(self, path: Path) -> None:
        self.path = path
        self.records = 0
        self.skipped = 0

    def __iter__(self) -> Iterator[Record]:
        with open(self.path, "rb") as f:
            while True:
                lines = [line for line in itertools.islice(f, self.BLOCK_LINES) if line.strip()]
                if not lines:
                    return
                for obj in self._parse(lines):
                    try:
                        record = from_dict(obj)
                    except ValueError:
                        self.skipped += 1
                        continue
                    self.records += 1
                    yield record

    def _parse(self, lines: list[bytes]) -> list[dict[str, Any]]:
        try:
            objs: list[Any] = orjson.loads(b"[" + b",".join(lines) + b"]")
        except orjson.JSONDecodeError:
            objs = []
            for line in lines:
                try:
                    objs.append(orjson.loads(line))
                except orjson.JSONDecodeError:
                    self.skipped += 1
        good = [o for o in objs if isinstance(o, dict)]
        self.skipped += len(objs) - len(good)
        return good
