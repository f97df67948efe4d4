"""The run log: JSON Lines written by the agent thread, read back by ``gpuwatch analyze``.

Each batch of records is written with one ``write`` and flushed, so a killed
process leaves whole lines behind but for at most one torn last line, which
the reader skips and counts.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from gpuwatch.records import Record, from_dict, to_dict


def _plain(value: Any) -> Any:
    """JSON for what json does not know (paths, sets, numpy scalars): its str or list."""
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)


_encode = json.JSONEncoder(separators=(",", ":"), default=_plain).encode


def encode(record: Record) -> str:
    """One run-log line (without the newline): fields at their default are left out,
    non-finite floats become null."""
    obj = to_dict(record, compact=True)
    for key, value in obj.items():
        if isinstance(value, float) and not math.isfinite(value):
            obj[key] = None
    return _encode(obj)


class RunLogWriter:
    """Appends records to ``path`` (created with its parent directory)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.records = 0
        self._file: IO[str] | None = open(path, "a", encoding="utf-8")  # noqa: SIM115
        self._lock = threading.Lock()

    def write(self, records: Iterable[Record]) -> None:
        lines = [encode(r) for r in records]
        if not lines:
            return
        with self._lock:
            if self._file is None:
                return
            self._file.write("\n".join(lines) + "\n")
            self._file.flush()
            self.records += len(lines)

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


class RunLogReader:
    """Streams the records of one run log; bad or truncated lines are skipped and counted."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.skipped = 0

    def __iter__(self) -> Iterator[Record]:
        with open(self.path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                    if not isinstance(obj, dict):
                        raise ValueError("not an object")
                    yield from_dict(obj)
                except ValueError:  # json.JSONDecodeError is a ValueError
                    self.skipped += 1
