"""The run log: JSON Lines written by the agent thread, read back by ``gpuwatch analyze``.

Each batch of records goes through a 1 MiB buffer and is flushed, so a killed
process leaves whole lines behind but for at most one torn last line, which
the reader skips and counts.

The reader trusts nothing: a line that is not JSON, too long, of an unknown kind,
or whose fields have the wrong types (``null`` or a string where a number
belongs, a string rank, event data a consumer cannot use) is skipped and
counted, so whatever a file holds, replay never fails on it.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import types
import typing
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import orjson

from gpuwatch.records import Event, Finding, Meta, Record, Sample, Step, from_dict, to_dict

MAX_LINE_BYTES = 4 << 20  # a longer line is not one gpuwatch wrote: skipped unread


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
    """Streams the records of one run log; bad, mistyped, huge or truncated lines are
    skipped and counted. Raises OSError only when the file cannot be opened or read.

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
                lines = self._block(f)
                if lines is None:
                    return
                for obj in self._parse(lines):
                    record = _record(obj)
                    if record is None:
                        self.skipped += 1
                        continue
                    self.records += 1
                    yield record

    def _block(self, f: IO[bytes]) -> list[bytes] | None:
        """Up to BLOCK_LINES non-blank lines (None at the end); an over-long line is
        skipped, counted and read past in bounded pieces."""
        lines: list[bytes] = []
        for _ in range(self.BLOCK_LINES):
            line = f.readline(MAX_LINE_BYTES + 1)
            if not line:
                return lines or None
            if len(line) > MAX_LINE_BYTES:
                self.skipped += 1
                while line and not line.endswith(b"\n"):
                    line = f.readline(MAX_LINE_BYTES)
                continue
            if line.strip():
                lines.append(line)
        return lines

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


# -- what a valid record is: its fields' types, from the record classes themselves ------

Check = Callable[[Any], bool]


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _integer(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check(hint: Any) -> Check:
    """A predicate for values of the annotated type (the few shapes records use)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is float:
        return _number
    if hint is int:
        return _integer
    if hint is str:
        return lambda v: isinstance(v, str)
    if hint is typing.Any:
        return lambda v: True
    if origin is typing.Literal:
        return lambda v: isinstance(v, str) and v in args
    if origin in (typing.Union, types.UnionType):
        checks = [_check(a) for a in args]
        return lambda v: any(c(v) for c in checks)
    if hint is type(None):
        return lambda v: v is None
    if origin is list:
        item = _check(args[0])
        return lambda v: isinstance(v, list) and all(item(x) for x in v)
    if origin is dict:
        value = _check(args[1])
        return lambda v: isinstance(v, dict) and all(
            isinstance(k, str) and value(x) for k, x in v.items())
    raise TypeError(f"no run-log check for {hint!r}")


_CHECKS: dict[str, dict[str, Check]] = {
    cls.__name__.lower(): {f.name: _check(typing.get_type_hints(cls)[f.name])
                           for f in dataclasses.fields(cls)}
    for cls in (Meta, Step, Sample, Event, Finding)
}

# Event data that consumers read: the keys each event must have as numbers, and may have.
_EVENT_NUMBERS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "oom": ((), ("count",)),
    "batch_size_changed": (("from", "to"), ()),
    "total_steps": (("steps",), ()),
    "checkpoint_save": ((), ("seconds", "bytes")),
}


def _record(obj: dict[str, Any]) -> Record | None:
    """The record a decoded line holds, or None when it is not a valid one."""
    checks = _CHECKS.get(obj.get("kind"))  # type: ignore[arg-type]
    if checks is None:
        return None
    if obj["kind"] == "sample" and isinstance(obj.get("values"), dict):
        # a non-finite reading was written as null: that metric is absent, the rest stand
        obj["values"] = {k: v for k, v in obj["values"].items() if v is not None}
    for name, value in obj.items():
        check = checks.get(name)
        if check is not None and not check(value):
            return None
    if obj["kind"] == "event" and not _event_data_ok(obj.get("name"), obj.get("data", {})):
        return None
    try:
        return from_dict(obj)
    except ValueError:
        return None


def _event_data_ok(name: Any, data: dict[str, Any]) -> bool:
    required, optional = _EVENT_NUMBERS.get(name, ((), ()))
    if not all(_number(data.get(k)) for k in required):
        return False
    if not all(_number(data[k]) for k in optional if k in data):
        return False
    if name == "topology":
        devices, gpus = data.get("devices", []), data.get("job_gpus", [])
        return (isinstance(devices, list) and all(isinstance(d, dict) for d in devices)
                and (gpus is None or isinstance(gpus, list)))
    return True
