"""One Slack sender per job: every other rank hands its notes to rank 0 through the
job's c10d store, never through a collective.

Rank R writes note ``i`` under ``slack/R/i`` and then the count ``slack/R/n``;
rank 0 reads each rank's count and the notes it has not seen (``check`` first,
so it never waits on a key that is not there) and spools them as its own, to be
merged into its messages. Every store call runs on this module's thread: a store
that hangs stalls that thread only. Notes a rank could not hand over stay in its
spool, for the end of ``gpuwatch run`` or ``gpuwatch alerts flush``.
"""

from __future__ import annotations

import collections
import contextlib
import threading
from collections.abc import Callable
from typing import Any

from gpuwatch.sinks.slack_spool import Note

PREFIX = "slack/"
MAX_OUTBOX = 10_000  # notes waiting for the store; older ones stay spooled only


class StoreRelay:
    """Hands notes from rank ``rank`` to rank 0 (``deliver`` there) through the c10d
    store that ``store`` returns (None until the job has one)."""

    def __init__(self, rank: int, world_size: int, store: Callable[[], Any],
                 deliver: Callable[[Note], object] | None = None, interval_s: float = 1.0,
                 on_error: Callable[[str], None] | None = None) -> None:
        self.rank = rank
        self.world_size = world_size
        self.interval_s = interval_s
        self.sent = 0
        self.received = 0
        self._store = store
        self.deliver = deliver
        self._on_error = on_error or (lambda what: None)
        self._outbox: collections.deque[Note] = collections.deque(maxlen=MAX_OUTBOX)
        self._seen = dict.fromkeys(range(1, world_size), 0)  # rank -> notes read (rank 0)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gpuwatch-slack-relay",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop; not joined: a store call may be stuck, and that is its own business."""
        self._stop.set()
        self._wake.set()

    def publish(self, note: Note) -> None:
        """Queue a note for rank 0 (called on the agent's thread: never blocks)."""
        with self._lock:
            self._outbox.append(note)
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.exchange()
            except Exception as exc:  # a store gone with its job: counted, never raised
                self._on_error(f"slack relay: {type(exc).__name__}: {exc}")
            self._wake.wait(self.interval_s)
            self._wake.clear()

    def exchange(self) -> None:
        """One round: write queued notes (other ranks), read new ones (rank 0)."""
        store = self._store()
        if store is None:
            return
        if self.rank != 0:
            self._send(store)
        else:
            self._collect(store)

    def _send(self, store: Any) -> None:
        while True:
            with self._lock:
                if not self._outbox:
                    return
                note = self._outbox[0]
            store.set(f"{PREFIX}{self.rank}/{self.sent}", note.to_json())
            store.set(f"{PREFIX}{self.rank}/n", str(self.sent + 1))
            self.sent += 1
            with self._lock:
                self._outbox.popleft()

    def _collect(self, store: Any) -> None:
        if self.deliver is None:
            return
        for rank, seen in self._seen.items():
            count_key = f"{PREFIX}{rank}/n"
            if not store.check([count_key]):  # never wait on a rank that has not written
                continue
            count = int(store.get(count_key))
            for i in range(seen, count):
                key = f"{PREFIX}{rank}/{i}"
                try:
                    note = Note.from_json(store.get(key))
                except ValueError:
                    self._on_error(f"slack relay: unreadable note from rank {rank}")
                else:
                    self.deliver(note)
                    self.received += 1
                self._seen[rank] = i + 1
                with contextlib.suppress(Exception):  # keep the store small
                    store.delete_key(key)
