"""Slack notes on disk until delivered, exactly once.

Layout under a run directory's ``slack-spool/`` (the *root*):

- ``<name>/<key>.json``: one note per file (``name`` is ``rank<R>`` or ``job``),
  written atomically and durably (temp file, fsync, rename, fsync of the
  directory) before it counts as spooled;
- ``delivered/<key>``: the ledger of notes Slack accepted;
- ``locks/<key>.lock``: a sender holds an exclusive ``flock`` on a note while it
  posts it, so two flushes (or a flush during the job) never post it twice; the
  kernel drops the lock when a sender dies;
- ``unanswered/<key>``: a note whose message went out whole and got no answer in time
  (Slack may have posted it), one byte per such post; its time is the last one's;
- ``quarantine/``: spool files that could not be read, set aside and counted;
- ``silences.json``: detectors whose reminders are silenced (``alerts silence``).

A note's identity (``key``) is its finding's fingerprint and episode
(``first_seen``) and its state (raised, reminder n, resolved), so the same note
spooled by several ranks, on several nodes' run directories, is posted once.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpuwatch.config import read_small_file

KINDS = frozenset({"raised", "resolved", "reminder", "test"})
SPOOL = "slack-spool"
SERVICE_DIRS = frozenset({"delivered", "locks", "quarantine", "unanswered"})
MAX_NOTE_BYTES = 1 << 20  # a note is a few KiB; anything bigger is not one


@dataclass(frozen=True)
class Note:
    """One thing to tell: ``kind`` is raised, resolved, reminder (number ``seq``) or test;
    ``created`` is Unix seconds."""

    kind: str
    finding: dict[str, Any]
    created: float
    seq: int = 0

    @property
    def key(self) -> str:
        """The note's identity: the same news from any rank or node has the same key."""
        f = self.finding
        parts = [str(f.get("fingerprint", "")), repr(f.get("first_seen")), self.kind]
        if self.kind == "reminder":
            parts.append(str(self.seq))
        if self.kind == "test" or not f.get("fingerprint"):
            parts.append(repr(self.created))
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]

    def to_json(self) -> bytes:
        return json.dumps({"kind": self.kind, "finding": self.finding, "created": self.created,
                           "seq": self.seq}, default=str).encode()

    @classmethod
    def from_json(cls, raw: bytes | str) -> Note:
        """Raises ValueError when ``raw`` is not a well-formed note."""
        obj = json.loads(raw)
        if not isinstance(obj, dict):
            raise ValueError("not an object")
        kind, finding, created = obj.get("kind"), obj.get("finding"), obj.get("created")
        seq = obj.get("seq", 0)
        if kind not in KINDS or not isinstance(finding, dict):
            raise ValueError("bad kind or finding")
        if isinstance(created, bool) or not isinstance(created, int | float) or \
                isinstance(seq, bool) or not isinstance(seq, int):
            raise ValueError("bad created or seq")
        return cls(kind, finding, _finite(created), seq)


def _finite(number: float) -> float:
    """``number`` as a finite float; ValueError when it is none (NaN, infinite, or an
    integer too big for a float: 400 digits)."""
    try:
        value = float(number)
    except OverflowError:
        raise ValueError("number out of range") from None
    if not math.isfinite(value):
        raise ValueError("number out of range")
    return value


def write_durably(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically and durably: on return it is on disk under
    its name; on OSError (a full disk) nothing is left behind."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    """The notes of one sender (a rank, or the job's end-of-run analysis)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.quarantined = 0  # malformed files set aside

    @property
    def root(self) -> Path:
        return self.directory.parent

    def path(self, note: Note) -> Path:
        return self.directory / f"{note.key}.json"

    def put(self, note: Note) -> Path:
        """Spool ``note`` durably; raises OSError when it could not be written."""
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.path(note)
        if not path.exists():
            write_durably(path, note.to_json())
        return path

    def names(self) -> list[Path]:
        """The spooled files (``<key>.json``), unread."""
        return sorted(self.directory.glob("*.json")) if self.directory.is_dir() else []

    def pending(self) -> list[tuple[Path, Note]]:
        """Spooled notes, oldest first. A file that is not a note is moved to
        ``quarantine/`` and counted; one deleted meanwhile (delivered) is skipped."""
        out = []
        for path in self.names():
            try:  # (a FIFO or device placed here: set aside, never waited on)
                out.append((path, Note.from_json(read_small_file(path, MAX_NOTE_BYTES))))
            except FileNotFoundError:
                continue
            except (OSError, ValueError, UnicodeDecodeError, RecursionError):
                self.quarantine(path)
        return sorted(out, key=lambda pn: (pn[1].created, pn[0].name))

    def quarantine(self, path: Path) -> None:
        """Set a spooled file aside in ``quarantine/`` (counted), never to be sent."""
        self.quarantined += 1
        target = self.root / "quarantine"
        with contextlib.suppress(OSError):
            target.mkdir(parents=True, exist_ok=True)
            os.replace(path, target / f"{self.directory.name}-{path.name}")

    def remove(self, paths: Iterable[Path]) -> None:
        for path in paths:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


@dataclass
class Claim:
    """Exclusive right to post some notes (flocks held until ``release``)."""

    keys: list[str]
    _fds: list[int] = field(default_factory=list)

    def release(self) -> None:
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)  # closing drops the flock
        self._fds.clear()


class Ledger:
    """Which notes Slack has accepted, and who is posting one now, across run directories
    (``roots``: their ``slack-spool`` directories)."""

    def __init__(self, roots: Iterable[Path]) -> None:
        self.roots = sorted({Path(r) for r in roots})

    def delivered(self, key: str) -> bool:
        return any((root / "delivered" / key).exists() for root in self.roots)

    def claim(self, keys: Iterable[str]) -> Claim:
        """Lock each note in every root; a note another sender holds, or one already
        delivered, is left out of the claim."""
        claim = Claim([])
        for key in keys:
            fds = self._lock(key)
            if fds is None:
                continue
            if self.delivered(key):  # delivered while we waited: nothing to post
                for fd in fds:
                    os.close(fd)
                continue
            claim.keys.append(key)
            claim._fds.extend(fds)
        return claim

    def _lock(self, key: str) -> list[int] | None:
        fds: list[int] = []
        try:
            for root in self.roots:
                locks = root / "locks"
                locks.mkdir(parents=True, exist_ok=True)
                fd = os.open(locks / f"{key}.lock", os.O_RDWR | os.O_CREAT, 0o600)
                fds.append(fd)
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # held by another sender, or the disk refuses: not now
            for fd in fds:
                os.close(fd)
            return None
        return fds

    def mark(self, keys: Iterable[str]) -> None:
        """Record notes as delivered in every root (durably; OSError is raised), then
        drop their lock files and unanswered posts: whoever locks one later finds it
        delivered."""
        keys = list(keys)
        for root in self.roots:
            done = root / "delivered"
            done.mkdir(parents=True, exist_ok=True)
            for key in keys:
                fd = os.open(done / key, os.O_WRONLY | os.O_CREAT | os.O_NONBLOCK, 0o600)
                os.close(fd)
            _fsync_dir(done)
        for root in self.roots:
            for key in keys:
                for path in (root / "locks" / f"{key}.lock", root / "unanswered" / key):
                    with contextlib.suppress(OSError):
                        path.unlink()

    def unanswered(self, key: str) -> tuple[int, float]:
        """How many times a note's message went out whole and got no answer in time, and
        when the last did (Unix time); (0, 0.0) for none."""
        posts, last = 0, 0.0
        for root in self.roots:
            try:
                stat = (root / "unanswered" / key).stat()
            except OSError:
                continue
            posts, last = max(posts, stat.st_size), max(last, stat.st_mtime)
        return posts, last

    def record_unanswered(self, keys: Iterable[str]) -> None:
        """One more post of each note went out whole and got no answer (durably, in every
        root; OSError is raised). Call it holding the notes' claim."""
        for key in keys:
            posts = self.unanswered(key)[0] + 1
            for root in self.roots:
                (root / "unanswered").mkdir(parents=True, exist_ok=True)
                write_durably(root / "unanswered" / key, b"\n" * posts)


# -- silences ----------------------------------------------------------------------------

SILENCES = "silences.json"


def silence(run_dir: Path, detector: str, seconds: float | None, now: float | None = None
            ) -> float | None:
    """Silence ``detector``'s notes for the job in ``run_dir`` for ``seconds`` (None: for
    good); returns the Unix time it ends, or None."""
    root = run_dir / SPOOL
    root.mkdir(parents=True, exist_ok=True)
    current = read_silences(root)
    until = None if seconds is None else (time.time() if now is None else now) + seconds
    current[detector] = until
    write_durably(root / SILENCES, json.dumps(current, sort_keys=True).encode())
    return until


def read_silences(root: Path) -> dict[str, float | None]:
    """{detector: Unix end time, or None for good}; an unreadable file silences nothing,
    nor does an unreadable end (not a number, or none a float holds: NaN, 1e400, an
    integer of 400 digits)."""
    try:
        raw = json.loads(read_small_file(root / SILENCES, MAX_NOTE_BYTES))
    except (OSError, ValueError, RecursionError):
        return {}
    if not isinstance(raw, dict):
        return {}
    out: dict[str, float | None] = {}
    for detector, until in raw.items():
        if until is None:
            out[detector] = None
        elif isinstance(until, int | float) and not isinstance(until, bool):
            with contextlib.suppress(ValueError):
                out[detector] = _finite(until)
    return out


class Silences:
    """Silenced detectors of one job: a setting plus the run directory's file (re-read
    when it changes)."""

    def __init__(self, root: Path, always: Iterable[str] = ()) -> None:
        self._path = root / SILENCES
        self._always = frozenset(always)
        self._mtime: float | None = None
        self._until: dict[str, float | None] = {}

    def silenced(self, detector: str, now: float | None = None) -> bool:
        if detector in self._always:
            return True
        self._refresh()
        if detector not in self._until:
            return False
        until = self._until[detector]
        return until is None or (time.time() if now is None else now) < until

    def _refresh(self) -> None:
        try:
            mtime = self._path.stat().st_mtime
        except OSError:
            self._until, self._mtime = {}, None
            return
        if mtime != self._mtime:
            self._mtime = mtime
            self._until = read_silences(self._path.parent)


def spool_dirs(run_dir: Path) -> list[Path]:
    """Every sender's spool under a run directory (one per rank, one for the job)."""
    root = run_dir / SPOOL
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name not in SERVICE_DIRS)


def by_key(spools: Iterable[Spool]) -> Iterator[tuple[str, list[tuple[Spool, Path, Note]]]]:
    """Pending notes of several spools grouped by identity, oldest first."""
    groups: dict[str, list[tuple[Spool, Path, Note]]] = {}
    for spool in spools:
        for path, note in spool.pending():
            groups.setdefault(note.key, []).append((spool, path, note))
    yield from sorted(groups.items(), key=lambda kv: kv[1][0][2].created)


def plain(finding: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON round trip: what a note holds is what a reader will get."""
    return json.loads(json.dumps(dict(finding), default=str))  # type: ignore[no-any-return]
