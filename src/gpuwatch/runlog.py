"""The run log: JSON Lines written by the agent thread, read back by ``gpuwatch analyze``,
and the run directory that holds one log per rank and attempt.

Each batch of records is encoded into one buffer and written to the file's descriptor
at once, so a killed process leaves whole lines behind but for at most one torn last
line, which the reader skips and counts.

The reader trusts nothing: a line that is not JSON, too long, of an unknown kind,
or whose fields have the wrong types (``null`` or a string where a number
belongs, a string rank, event data a consumer cannot use) is skipped and
counted, so whatever a file holds, replay never fails on it.

Layout of a run directory (docs/runlog.md)::

    <run>/run.jsonl                      one process (world size 1), attempt 0
    <run>/run-rank<R>.jsonl              rank R of a multi-rank job, attempt 0
    <run>/run-rank<R>.attempt<N>.jsonl   rank R, attempt N > 0 (a restart, a resumed job)
    <run>/<log>.part<K>.jsonl.gz         K-th rotated segment of <log> (<log>: one of the
                                         names above without .jsonl), oldest first; the
                                         log's own name holds its newest records

A writer with a segment size rotates the log past it: the file becomes the next
``.part<K>.jsonl`` and is compressed with gzip (``.gz`` appears whole, by rename, then
the uncompressed part goes); a fresh file takes its name. The reader reads a log's
segments, then the log itself, as one stream.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import gzip
import itertools
import os
import re
import secrets
import shutil
import threading
import time
import types
import typing
import zlib
from collections import deque
from collections.abc import Callable, Generator, Iterable, Sequence
from pathlib import Path
from typing import IO, Any

import orjson

from gpuwatch.records import (
    Event,
    Finding,
    Meta,
    Record,
    Sample,
    Step,
    from_dict,
    to_dict,
    utf8,
)
from gpuwatch.redact import redact

MAX_LINE_BYTES = 4 << 20  # a longer line is not one gpuwatch wrote: skipped unread
# The writer writes no blank line: a file with this many is no log of its own (a
# compressed segment of nothing but newlines expands a thousandfold): the rest of it
# is skipped, counted as one line.
MAX_BLANK_LINES = 100_000
# Nor is a file with this many lines in a row that hold no record (a compressed
# segment of "{}" lines inflates to fifty million of them: minutes to read).
MAX_UNREADABLE_LINES = 100_000
# A compressed segment ends past this many times its size (gzip gives run logs ~20x):
# a small file that inflates without end (a "gzip bomb") is cut, not read for hours.
MAX_EXPANSION = 200
MIN_EXPANDED_BYTES = 1 << 20  # ... and never before this much

_LOG_NAME = re.compile(r"run(?:-rank(\d+))?(?:\.attempt(\d+))?\.jsonl")
FOLLOW_TRIES = 10_000  # rotations raced, at most, in one reading
MAX_SEGMENTS = 1_000_000  # segments read, at most, in one reading (64 TB at the default)
_PART = re.compile(r"\.part(\d+)\.jsonl(?:\.gz)?")
GZIP_LEVEL = 6  # 20x on the corpus's logs, ~190 MB/s of input on one core (RESULTS.md)
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
    seen = [a for p in logs_in(run_dir) if (a := attempt_of(p.name)) is not None]
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


# In the run directory `gpuwatch run` chose, where a job that chose its own (its
# ``watch(out_dir=...)``) logged instead: that directory's path.
ELSEWHERE = "logged-elsewhere.txt"


def logged_elsewhere(directory: Path) -> Path | None:
    """Where the job logged instead of ``directory`` (its ``watch(out_dir=...)``), as its
    agent said there; None if it said nothing, or no run log is there."""
    try:
        there = Path((directory / ELSEWHERE).read_text(encoding="utf-8").strip())
    except (OSError, ValueError):
        return None
    return there if there.is_dir() and logs_in(there) else None


def write_whole(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) as the file ``path``: into a new file beside it, renamed
    over it once whole. Never through what stands there: a FIFO (an open for writing
    would wait for a reader forever) or a link to another file (written over, as root
    anywhere) is replaced, not followed; a reader never sees half a file. Raises
    OSError naming ``path`` (a directory: IsADirectoryError)."""
    if not path.name or (path.is_dir() and not path.is_symlink()):  # (".", "/", a dir)
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(temp, "x", encoding="utf-8") as f:
            f.write(text)
        os.replace(temp, path)
    except OSError as exc:  # (named for what was asked for, not the file beside it)
        exc.filename = str(path)
        raise
    finally:
        with contextlib.suppress(OSError):
            temp.unlink()


def _plain(value: Any) -> Any:
    """JSON for what json does not know (paths, sets, numpy scalars): its str or list."""
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)


def encode(record: Record) -> bytes:
    """One run-log line, newline included: fields at their default are left out,
    non-finite floats become null, and text that is not UTF-8 (a path or an argument
    in another encoding: Python holds its bytes as surrogates) has those bytes replaced
    by "?"."""
    obj = to_dict(record, compact=not isinstance(record, Meta))  # a meta line in full
    try:
        return orjson.dumps(obj, default=_plain, option=orjson.OPT_APPEND_NEWLINE)
    except TypeError:
        return orjson.dumps(utf8(obj), default=_plain, option=orjson.OPT_APPEND_NEWLINE)


def segments(path: Path) -> list[Path]:
    """The rotated segments of the log at ``path``, oldest first: each part's
    ``.jsonl.gz``, or its ``.jsonl`` where compression never finished. Only regular
    files: a FIFO or a device (a link to /dev/zero) would be read forever. A log named
    through a link (a directory of links gathering a job's logs) has its target's
    segments: the writer rotated them beside the file, not the link."""
    with contextlib.suppress(OSError, RuntimeError):  # (a loop of links: none found)
        if path.is_symlink():
            path = path.resolve()
    stem = path.name.removesuffix(".jsonl")
    parts: dict[int, Path] = {}
    for name in _segment_names(path.parent).get(stem, ()):
        p = path.parent / name
        if p.is_file():
            k = _part_number(name)
            if k not in parts or name.endswith(".gz"):
                parts[k] = p
    return [parts[k] for k in sorted(parts)]


def logs_in(directory: Path) -> list[Path]:
    """The run logs in ``directory`` (``run*.jsonl``), by name: each log's own file, or
    its segments where that file is missing (its writer died between making the full
    file a segment and making the next: the log is its segments). Empty if there are
    none or it cannot be listed."""
    try:
        names = {p.name for p in directory.glob("run*.jsonl") if not is_segment(p.name)}
    except OSError:
        return []
    names.update(f"{stem}.jsonl" for stem in _segment_names(directory)
                 if stem.startswith("run"))
    return [directory / name for name in sorted(names)]


def log_bytes(path: Path) -> int:
    """The bytes the log at ``path`` holds on disk: its segments' and its own file's."""
    total = 0
    for p in [*segments(path), path]:
        with contextlib.suppress(OSError):
            total += p.stat().st_size
    return total


# directory -> (its mtime (ns) when listed, segment names by their log's stem)
_LISTINGS: dict[Path, tuple[int, dict[str, list[str]]]] = {}
_LISTINGS_LOCK = threading.Lock()
LISTINGS_KEPT = 16
LISTING_STABLE_S = 2.0  # a directory unchanged this long keeps its listing until it changes


def _segment_names(directory: Path) -> dict[str, list[str]]:
    """The segment names in ``directory`` by their log's stem. A directory's listing is
    kept while its mtime stays the same (segments are made by renames, which change it)
    once that mtime is old enough for coarse file-system clocks: a directory of many
    logs is listed once, not once per log."""
    try:
        mtime_ns = directory.stat().st_mtime_ns
        with _LISTINGS_LOCK:
            kept = _LISTINGS.get(directory)
        if kept is not None and kept[0] == mtime_ns:
            return kept[1]
        names = os.listdir(directory)
    except OSError:
        return {}
    by_stem: dict[str, list[str]] = {}
    for name in names:
        match = _PART.search(name)
        if match is not None and match.end() == len(name):
            by_stem.setdefault(name[:match.start()], []).append(name)
    if time.time() - mtime_ns / 1e9 > LISTING_STABLE_S:
        with _LISTINGS_LOCK:
            if len(_LISTINGS) >= LISTINGS_KEPT:
                _LISTINGS.pop(next(iter(_LISTINGS)))
            _LISTINGS[directory] = (mtime_ns, by_stem)
    return by_stem


def _part_number(name: str) -> int:
    match = _PART.search(name)
    return int(match.group(1)) if match else 0


def _rank_in_name(name: str) -> int | None:
    """The rank a run log's name gives (``run-rank3.jsonl``: 3; ``run.jsonl``: 0, a
    single process's); None for another name."""
    match = _LOG_NAME.fullmatch(name)
    if match is None:
        return None
    return int(match.group(1)) if match.group(1) is not None else 0


def is_segment(name: str) -> bool:
    """Whether a file name is a rotated segment (read through its log, not alone)."""
    return ".part" in name and _PART.search(name) is not None


class RunLogWriter:
    """Writes records to ``path`` (created with its parent directory; taken as absolute
    now, so a job that changes its directory later changes nothing): appends, or with
    ``exclusive`` creates a new file and raises FileExistsError if there is one.

    ``segment_bytes`` (0: never): past this size the file is rotated into a compressed
    segment (see the layout above); records are never split across segments. A
    rotation that cannot make the new file (no inode, no room) leaves the log as it was
    and is tried again after another eighth of a segment.

    Writes go straight to the file's descriptor, checked to be still this file's before
    each: a job that closes every descriptor and opens one of its own, which gets the
    same number, gets none of the log's lines (the log stops, counted by the caller)."""

    def __init__(self, path: Path, exclusive: bool = False, segment_bytes: int = 0) -> None:
        path = path.absolute()
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.records = 0
        self.segment_bytes = segment_bytes
        parts = segments(path)  # (appending to a rotated log: numbering goes on)
        self._parts = _part_number(parts[-1].name) if parts else 0
        self._fd: int | None = self._open(
            os.O_CREAT | (os.O_EXCL if exclusive else 0))
        self._lock = threading.Lock()
        self._rotate_at = segment_bytes

    def _open(self, flags: int) -> int:
        """Open the log's file for appending; remember which file it is."""
        fd = os.open(self.path, flags | os.O_WRONLY | os.O_APPEND | getattr(os, "O_CLOEXEC", 0),
                     0o644)
        try:
            info = os.fstat(fd)
        except OSError:
            os.close(fd)
            raise
        self._file_id, self._size = (info.st_dev, info.st_ino), info.st_size
        return fd

    def _still_mine(self, fd: int) -> bool:
        try:
            info = os.fstat(fd)
        except OSError:
            return False
        return (info.st_dev, info.st_ino) == self._file_id

    def write(self, records: Iterable[Record]) -> None:
        """Append records. Lines are encoded one at a time into one buffer (orjson's bytes
        keep a 4 KiB allocation each: a batch of them held at once costs megabytes). A
        record that cannot be encoded (a number JSON cannot hold) is left out, the rest
        written; then the first such error is raised, for the caller to count. Raises
        OSError when the file is no longer this log's (its descriptor closed under it)."""
        with self._lock:
            fd = self._fd
            if fd is None:
                return
            buffer, n = bytearray(), 0
            failed: Exception | None = None
            for record in records:
                try:
                    buffer += encode(record)
                except (TypeError, ValueError, OverflowError) as exc:
                    failed = failed or exc
                    continue
                n += 1
            if n:
                if not self._still_mine(fd):
                    self._fd = None  # (never closed here: the number may be the job's now)
                    raise OSError(f"run log {self.path.name}: its file was closed under it")
                fd, recreated = self._recreated(fd)
                view = memoryview(buffer)
                while view:
                    view = view[os.write(fd, view):]
                self._size += len(buffer)
                self.records += n
                if self.segment_bytes and self._size >= self._rotate_at:
                    self._rotate(fd)
                if recreated is not None:
                    raise OSError(recreated)
            if failed is not None:
                raise failed

    def _recreated(self, fd: int) -> tuple[int, str | None]:
        """Where the log's file was removed while the job runs: in its directory, still
        there, a new file under its name with the lines the old one holds copied in
        (Linux reads them through /proc); and what happened, for the caller to count.
        Where the directory went too (deleted, a temporary one left), the log ends: the
        descriptor is closed and OSError says so (no directory is made again). Else
        ``fd``, and None. (Where no new file can be made, the log goes on in the removed
        one, as it would without this.)"""
        try:
            if os.fstat(fd).st_nlink:
                return fd, None
        except OSError:
            return fd, None
        if not self.path.parent.is_dir():
            self._fd = None
            with contextlib.suppress(OSError):
                os.close(fd)
            raise OSError(f"run log {self.path}: its run directory was removed while the "
                          "job ran; the log ends here")
        try:
            new = self._open(os.O_CREAT | os.O_EXCL)
        except OSError:
            return fd, None
        copied = 0
        with contextlib.suppress(OSError), open(f"/proc/self/fd/{fd}", "rb") as old:
            while chunk := old.read(1 << 20):
                view = memoryview(chunk)
                while view:
                    view = view[os.write(new, view):]
                copied += len(chunk)
        os.close(fd)
        self._fd, self._size = new, self._size + copied
        return new, (f"run log {self.path}: removed while the job ran; it goes on in a new "
                     f"file there, which holds the {copied} bytes of the old one")

    def _rotate(self, fd: int) -> None:
        """The full file becomes the next compressed segment; a new one takes its name.
        (On the agent's thread, never the training loop's: ~0.4 s per 64 MiB.) Where the
        new file cannot be made, the segment takes the log's name back."""
        part = self.path.with_name(f"{self.path.name.removesuffix('.jsonl')}"
                                   f".part{self._parts + 1:05d}.jsonl")
        try:
            os.replace(self.path, part)
        except OSError:
            self._rotate_at = self._size + self.segment_bytes // 8
            return
        try:
            self._fd = self._open(os.O_CREAT | os.O_EXCL)  # (failing, it changes nothing)
        except OSError:
            with contextlib.suppress(OSError):
                os.replace(part, self.path)  # (the log as it was: try again later)
            self._rotate_at = self._size + self.segment_bytes // 8
            return
        os.close(fd)
        self._parts += 1
        self._rotate_at = self.segment_bytes
        compress(part)

    def close(self) -> None:
        """Close (every write is already in the file). Its descriptor is left alone when
        it is no longer this log's."""
        with self._lock:
            fd, self._fd = self._fd, None
            if fd is not None and self._still_mine(fd):
                os.close(fd)


def compress(part: Path) -> Path:
    """``<part>.gz`` written whole (a temporary name, then a rename), then ``part``
    removed; the compressed file's path."""
    target = part.with_name(part.name + ".gz")
    partial = part.with_name(part.name + ".gz.tmp")
    with open(part, "rb") as src, gzip.open(partial, "wb", compresslevel=GZIP_LEVEL) as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    os.replace(partial, target)
    part.unlink()
    return target


def claim_runlog(run_dir: Path, rank: int, world_size: int, first_attempt: int,
                 segment_bytes: int = 0) -> tuple[RunLogWriter, int]:
    """A writer on a new log for ``rank``, at the first attempt from ``first_attempt`` on
    whose file does not exist yet (created exclusively: a reused directory is never
    appended to), and that attempt."""
    for attempt in range(first_attempt, first_attempt + MAX_ATTEMPTS):
        try:
            return RunLogWriter(run_dir / runlog_name(rank, world_size, attempt),
                                exclusive=True, segment_bytes=segment_bytes), attempt
        except FileExistsError:
            if not run_dir.is_dir():  # (the name is taken by a file: no attempt is free)
                raise NotADirectoryError(errno.ENOTDIR, "not a directory",
                                         str(run_dir)) from None
            continue
    raise FileExistsError(f"{run_dir}: no free run-log name for rank {rank} after "
                          f"{MAX_ATTEMPTS} attempts")


class RunLogReader:
    """Streams the records of one run log, its rotated segments first; bad, mistyped,
    huge or truncated lines (and a damaged compressed segment's unreadable end) are
    skipped and counted, and so are lines naming a rank other than the log's own (its
    meta line's). Raises OSError only when a file cannot be opened or read.

    Lines are read a block at a time and parsed one by one, so a torn line costs only
    itself and no line's value is taken for another's.

    ``sample_sources``: read only the samples of these sources; the others are passed
    over unparsed where the writer's own layout shows their source and time (counted in
    ``passed_over``, not in ``records``). While a record is yielded, ``line`` is its
    line's number in the log (non-blank lines, segments first) and ``clock`` the newest
    time of any line so far, passed-over ones included: the same with or without a
    filter, so readers of one log with different filters agree on where they are.
    ``lines_read`` counts the non-blank lines read so far, whatever became of them
    (after the last, it places the log's end the same way with or without a filter).
    """

    BLOCK_LINES = 256  # (a merge holds a parsed block per log: kept small)

    def __init__(self, path: Path, sample_sources: frozenset[str] | None = None) -> None:
        self.path = path
        self.records = 0
        self.skipped = 0
        self.passed_over = 0
        self.bytes_read = 0  # of the file, as far as the reader got
        self.line = -1
        self.lines_read = 0
        self.clock = 0.0
        self._sources = sample_sources
        self._cut = False
        self._blank = 0
        self._room: int | None = None  # bytes a compressed segment may still inflate to

    def __iter__(self) -> Generator[Record, None, None]:
        for _, _, _, record in self.placed(0):
            yield record

    def placed(self, tag: int) -> Generator[tuple[float, int, int, Record], None, None]:
        """Each record with its place: (``clock``, ``tag``, ``line``, record). Ordered as
        tuples, several logs' records interleave by time and keep each log's file order
        (no two compare equal while their logs' tags differ)."""
        done = 0
        number = -1  # of the newest line read
        clock = self.clock
        # the log's rank (its meta line's; until one comes, its name's): a line naming
        # another rank is not its own
        owner = _rank_in_name(self.path.name)
        for path, opened in self._files():
            self._cut = False  # a compressed segment ended short
            self._blank = 0  # blank lines in this file
            # lines in a row that held no record, and the newest one's number (a row by
            # number: the same whether samples between them were passed over or read)
            unreadable, last_bad = 0, -2
            with opened as raw:
                compressed = path.name.endswith(".gz")
                f = typing.cast(IO[bytes], gzip.GzipFile(fileobj=raw) if compressed else raw)
                self._room = (max(os.fstat(raw.fileno()).st_size * MAX_EXPANSION,
                                  MIN_EXPANDED_BYTES) if compressed else None)
                while True:
                    lines = self._block(f)
                    self.bytes_read = done + raw.tell()
                    if lines is None:
                        break
                    numbers: Sequence[int] = range(number + 1, number + 1 + len(lines))
                    number += len(lines)
                    self.lines_read = number + 1
                    if self._sources is None:
                        floors: Iterable[float] = itertools.repeat(0.0, len(lines))
                        last = 0.0
                    else:
                        numbers, lines, floors, last = self._pass_over(numbers, lines,
                                                                       self._sources)
                    rank: int | None  # (a record's: a finding names none)
                    # (each line parsed on its own: parsed as one array, a line holding
                    # two values and two lines holding one between them gave values to the
                    # wrong lines)
                    for line, obj, floor in zip(numbers, _parsed(lines), floors, strict=True):
                        if floor > clock:
                            clock = self.clock = floor
                        record = _record(obj) if type(obj) is dict else None
                        if record is None:
                            self.skipped += 1
                            unreadable = unreadable + 1 if line == last_bad + 1 else 1
                            last_bad = line
                            if unreadable > MAX_UNREADABLE_LINES:
                                self._cut = True  # (no log of its own: the rest is left)
                                break
                            continue
                        if type(record) is Sample:  # (most lines)
                            t, rank = record.t, record.rank
                        else:
                            t, rank = getattr(record, "t", clock), getattr(record, "rank", owner)
                            if type(record) is Meta:
                                owner = rank
                        if t > clock:
                            clock = self.clock = t
                        if rank != owner and owner is not None:  # (its time counts, as a
                            self.skipped += 1  # line passed over does)
                            continue
                        self.records += 1
                        self.line = line
                        yield clock, tag, line, record
                    if last > clock:
                        clock = self.clock = last
            done = self.bytes_read

    def _files(self) -> Generator[tuple[Path, IO[bytes]], None, None]:
        """The log's segments in order, then its current file, each opened; a log that
        rotates meanwhile (a new segment made of the current file, a segment
        compressed) is followed, so no part of it is left out or read twice: the current
        file is read only once no segment newer than the last one read has appeared
        since it was opened."""
        read = -1  # the newest segment number read
        listed: deque[Path] = deque()  # segments newer than ``read``, as last listed
        races = 0
        for _ in range(MAX_SEGMENTS + FOLLOW_TRIES):
            if not listed:  # (listed once, not once per segment: thousands are many stats)
                listed.extend(p for p in segments(self.path) if _part_number(p.name) > read)
            segment = bool(listed)
            try:
                if segment:
                    part = listed.popleft()
                    opened = open(part, "rb")  # noqa: SIM115 (closed by the reader)
                    read = _part_number(part.name)
                    yield part, opened
                    continue
                opened = open(self.path, "rb")  # noqa: SIM115 (closed by the reader)
            except FileNotFoundError:  # compressed or rotated between the listing and open
                listed.clear()
                races += 1
                newer = any(_part_number(p.name) > read for p in segments(self.path))
                if races < FOLLOW_TRIES and (segment or newer):
                    continue
                if read >= 0 and not segment and not newer:
                    return  # (its writer died mid-rotation: the log is its segments)
                raise
            if any(_part_number(p.name) > read for p in segments(self.path)):
                opened.close()  # rotated just now: its content is a segment to read first
                races += 1
                if races < FOLLOW_TRIES:
                    continue
                return
            yield self.path, opened
            return

    def _pass_over(self, numbers: Sequence[int], lines: list[bytes], sources: frozenset[str]
                   ) -> tuple[list[int], list[bytes], list[float], float]:
        """The lines to parse, with their numbers: all but the whole sample lines of other
        sources; and the newest time of the lines passed over before each one and
        before the block's end (they move the clock where they stand)."""
        kept_numbers, kept, floors = [], [], []
        newest = 0.0
        for number, line in zip(numbers, lines, strict=True):
            head = _SAMPLE_LINE.match(line)
            if head is not None and head[2].decode() not in sources:
                t = float(head[1])
                if t > newest:
                    newest = t
                self.passed_over += 1
                continue
            kept_numbers.append(number)
            kept.append(line)
            floors.append(newest)
        return kept_numbers, kept, floors, newest

    def _block(self, f: IO[bytes]) -> list[bytes] | None:
        """Up to BLOCK_LINES non-blank lines (None at the end); an over-long line is
        skipped, counted and read past in bounded pieces; past ``MAX_BLANK_LINES`` blank
        ones the file ends there."""
        if self._cut:
            return None
        lines: list[bytes] = []
        for _ in range(self.BLOCK_LINES):
            try:
                line = f.readline(MAX_LINE_BYTES + 1)
            except (EOFError, gzip.BadGzipFile, zlib.error):
                self.skipped += 1  # a cut or damaged segment: the rest of it is lost
                self._cut = True
                return lines or None
            if not line:
                return lines or None
            if self._room is not None:
                self._room -= len(line)
                if self._room < 0:  # inflated far past any log's ratio: the rest is lost
                    self.skipped += 1
                    self._cut = True
                    return lines or None
            if len(line) > MAX_LINE_BYTES:
                self.skipped += 1
                line = b""
                while True:
                    piece = f.readline(1 << 16)
                    if self._room is not None:
                        self._room -= len(piece)
                    if not piece or piece.endswith(b"\n") or (self._room or 0) < 0:
                        break
                continue
            if line.strip():
                lines.append(line)
            else:
                self._blank += 1
                if self._blank > MAX_BLANK_LINES:
                    self.skipped += 1
                    self._cut = True
                    return lines or None
        return lines


# A whole sample line as the writer lays it out, readings all numbers (or null) that
# JSON holds as finite doubles: what the full reader would take as a sample, so a line
# passed over unparsed moves the clock exactly where a parsed one would.
# (Possessive quantifiers: nothing here is worth backtracking into, and it reads fast.)
_NUM = rb"-?\d{1,200}+(?:\.\d++)?+(?:[eE][-+]?\d{1,2})?+"
_READING = rb'"[a-z0-9_]++":(?:' + _NUM + rb"|null)"
_SAMPLE_LINE = re.compile(
    rb'\{"rank":-?\d{1,18}+,"t":(' + _NUM + rb'),"source":"([a-z_]++)","values":\{(?:'
    + _READING + rb"(?:," + _READING + rb')*+)?+\},"kind":"sample"'
    rb'(?:,"gpu":(?:\d{1,9}+|null))?+\}\s*\Z')


def _parsed(lines: list[bytes]) -> list[Any]:
    """Each line's JSON value, parsed on its own; None for a line that is no JSON (the
    block is parsed again line by line where one is not)."""
    try:
        return list(map(orjson.loads, lines))
    except orjson.JSONDecodeError:
        return list(map(_loads, lines))


def _loads(line: bytes) -> Any:
    """A line's JSON value; None where the line is no JSON."""
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError:
        return None


# -- what a valid record is: its fields' types, from the record classes themselves ------
# JSON numbers decode as int or float (never NaN or inf: orjson rejects them), so a
# field's plain types are checked with ``type(value) in (...)`` (bool is not an int
# here); lists, dicts and literals with a predicate.

Check = Callable[[Any], bool]
_NUMBERS = frozenset({int, float})
_GPU_TYPES = frozenset({int, type(None)})
_PLAIN: dict[Any, tuple[type, ...]] = {float: (float, int), int: (int,), str: (str,),
                                       type(None): (type(None),)}


def _number(v: Any) -> bool:
    return type(v) in (float, int)


def _plain_types(hint: Any) -> tuple[type, ...] | None:
    """The JSON types of a plain (optional) scalar annotation, else None."""
    if hint in _PLAIN:
        return _PLAIN[hint]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        parts = [_plain_types(a) for a in typing.get_args(hint)]
        if all(p is not None for p in parts):
            return tuple(t for p in parts if p is not None for t in p)
    return None


def _check(hint: Any) -> Check:
    """A predicate for values of the annotated type (the few shapes records use)."""
    plain = _plain_types(hint)
    if plain is not None:
        return lambda v: type(v) in plain
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is typing.Any:
        return lambda v: True
    if origin is typing.Literal:
        return lambda v: v in args and type(v) is str
    if origin in (typing.Union, types.UnionType):
        checks = [_check(a) for a in args]
        return lambda v: any(c(v) for c in checks)
    if origin is list:
        item = _check(args[0])
        return lambda v: type(v) is list and all(item(x) for x in v)
    if origin is dict:
        if args[1] is float:  # readings and evidence: all numbers, checked in C
            return lambda v: type(v) is dict and _NUMBERS.issuperset(map(type, v.values()))
        value = _check(args[1])
        return lambda v: type(v) is dict and all(
            type(k) is str and value(x) for k, x in v.items())
    raise TypeError(f"no run-log check for {hint!r}")


def _spec(cls: type[Any]) -> tuple[frozenset[tuple[str, type]], frozenset[str], dict[str, Check]]:
    """(field, JSON type) pairs a valid line may hold, the field names, and the deeper
    checks of fields that are lists, dicts or literals."""
    hints = typing.get_type_hints(cls)
    pairs: set[tuple[str, type]] = set()
    deep: dict[str, Check] = {}
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        plain = _plain_types(hint)
        if plain is None:
            deep[f.name] = _check(hint)
            plain = _container_types(hint)
        pairs.update((f.name, t) for t in plain)
    deep.pop("kind")  # it selected the spec: known to be right
    return frozenset(pairs), frozenset(n for n, _ in pairs), deep


def _container_types(hint: Any) -> tuple[type, ...]:
    """The JSON types a list, dict, literal or optional one of them decodes as."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return tuple(t for a in typing.get_args(hint) for t in _container_types(a))
    if hint is type(None):
        return (type(None),)
    return {list: (list,), dict: (dict,), typing.Literal: (str,)}.get(origin, (object,))


_SPECS = {cls.__name__.lower(): _spec(cls) for cls in (Meta, Step, Sample, Event, Finding)}

# Event data that consumers read: the keys each event must have as numbers, and may have.
_EVENT_NUMBERS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "oom": ((), ("count",)),
    "batch_size_changed": (("from", "to"), ()),
    "total_steps": (("steps",), ()),
    "checkpoint_save": ((), ("seconds", "bytes")),
}




def _record(obj: dict[str, Any]) -> Record | None:
    """The record a decoded line holds, or None when it is not a valid one."""
    kind = obj.get("kind")
    if kind == "sample":  # most of a log: checked field by field, readings in C
        t: Any = obj.get("t")
        values, rank, source, gpu = (obj.get("values"), obj.get("rank"), obj.get("source"),
                                     obj.get("gpu"))
        if (type(values) is dict and type(rank) is int and type(t) in _NUMBERS
                and type(source) is str and type(gpu) in _GPU_TYPES
                and len(obj) == 5 + ("gpu" in obj)  # (a newer schema's fields: below)
                and _NUMBERS.issuperset(map(type, values.values()))):
            return Sample(rank, t, source, values, gpu)
    elif kind == "step":  # where every field but its kind is a number
        del obj["kind"]
        if _NUMBERS.issuperset(map(type, obj.values())):
            try:
                step = Step(**obj)
            except TypeError:  # a newer schema's fields: the general path below
                pass
            else:
                return step if _possible(step) else None
        obj["kind"] = kind
    spec = _SPECS.get(kind) if type(kind) is str else None
    if spec is None:
        return None
    pairs, names, deep = spec
    values = obj.get("values")
    if kind == "sample" and type(values) is dict and None in values.values():
        # a non-finite reading was written as null: that metric is absent, the rest stand
        obj["values"] = {k: v for k, v in values.items() if v is not None}
    if any(k in names and (k, type(v)) not in pairs for k, v in obj.items()):
        return None  # a known field of the wrong type (unknown ones, a newer schema's, pass)
    for name, check in deep.items():
        if name in obj and not check(obj[name]):
            return None
    if kind == "event" and not _event_data_ok(obj.get("name"), obj.get("data", {})):
        return None
    try:
        record = from_dict(obj)
    except ValueError:
        return None
    if type(record) is Meta:  # (its names are shown in reports: a hostile log's too)
        return dataclasses.replace(record, job=redact(record.job), host=redact(record.host))
    return None if type(record) is Step and not _possible(record) else record


# The bounds of a step's durations a clock can measure (seconds): its wall time from a
# nanosecond to about three years (a longer one, or a part longer, swamps every
# window's sums), and no part below a microsecond under zero (the writer's rounding).
MIN_STEP_S, MAX_STEP_S = 1e-9, 1e8
_ROUNDING_S = 1e-6


def _possible(s: Step) -> bool:
    """Whether a step's durations are ones a clock measured (``MIN_STEP_S`` to
    ``MAX_STEP_S``, none negative). Its parts are not held to sum to its wall time:
    a log whose first step counts compile time its wall does not is still read."""
    durations = (s.data_s, s.compute_s, s.optimizer_s, s.checkpoint_s, s.other_s,
                 s.collective_s, s.recompute_s, s.collective_timed_s)
    return (MIN_STEP_S <= s.wall_s <= MAX_STEP_S and min(durations) >= -_ROUNDING_S
            and max(durations) <= MAX_STEP_S)


def _event_data_ok(name: Any, data: dict[str, Any]) -> bool:
    required, optional = _EVENT_NUMBERS.get(name, ((), ()))
    if not all(_number(data.get(k)) for k in required):
        return False
    if not all(_number(data[k]) for k in optional if k in data):
        return False
    if name == "topology":
        devices, gpus = data.get("devices", []), data.get("job_gpus", [])
        return (type(devices) is list and all(_device_ok(d) for d in devices)
                and (gpus is None or (type(gpus) is list and all(type(g) is int for g in gpus)))
                and all(_listed_dicts(data.get(k)) for k in ("p2p", "infiniband")))
    return True


def _text(v: Any) -> bool:
    return type(v) is str


# A topology device's known fields and their types (a newer schema's others pass).
_DEVICE_FIELDS: dict[str, Callable[[Any], bool]] = {
    "name": _text, "uuid": _text, "index": lambda v: type(v) is int,
    **{k: _number for k in ("memory_total_bytes", "nvlink_links_active",
                            "nvlink_bytes_per_second", "pcie_generation", "pcie_generation_max",
                            "pcie_width", "pcie_width_max", "pcie_bytes_per_second")}}


def _device_ok(device: Any) -> bool:
    return type(device) is dict and all(
        check(device[k]) for k, check in _DEVICE_FIELDS.items() if device.get(k) is not None)


def _listed_dicts(value: Any) -> bool:
    """Absent, or a list of objects (the P2P map, the InfiniBand ports)."""
    return value is None or (type(value) is list and all(type(x) is dict for x in value))
