"""The run log: JSON Lines written by the agent thread, read back by ``gpuwatch analyze``.

Each batch of records goes through a 1 MiB buffer and is flushed, so a killed
process leaves whole lines behind but for at most one torn last line, which
the reader skips and counts.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import orjson

from gpuwatch.records import Record, from_dict, to_dict


def _plain(value: Any) -> Any:
    """JSON for what json does not know (paths, sets, numpy scalars): its str or list."""
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)


def encode(record: Record) -> bytes:
    """One run-log line, newline included: fields at their default are left out,
    non-finite floats become null."""
    return orjson.dumps(to_dict(record, compact=True), default=_plain,
                        option=orjson.OPT_APPEND_NEWLINE)


class RunLogWriter:
    """Appends records to ``path`` (created with its parent directory)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.records = 0
        self._file: IO[bytes] | None = open(path, "ab", buffering=1 << 20)  # noqa: SIM115
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
