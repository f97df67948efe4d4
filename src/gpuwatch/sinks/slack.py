"""Slack notifications that are never lost, never posted twice and never spam.

A finding raised, resolved or still active after ``repeat_interval_s`` becomes a
note, spooled durably at once (``slack_spool``: the agent's thread never waits on
Slack). A delivery thread groups the notes spooled close together into one
message (``slack_message``), posts it to an incoming webhook (one attempt at a time;
redirects not followed, the answer's body never read: a hostile endpoint's endless
body costs nothing) holding a lock on each note, records them as delivered when
Slack said 200, and only then deletes them. In between:

- at most ``messages_per_second`` messages leave (a token bucket);
- HTTP 429 waits as long as ``Retry-After`` says (a number of seconds or an HTTP
  date; garbage, negative or absurd values are clamped to 1..``RETRY_AFTER_CAP_S``);
- a post has ``timeout_s`` in all, from connecting to the answer's last header
  (``_Deadline``: a socket's timeout bounds one read, and an answer trickled a byte at
  a time never ended);
- 5xx, timeouts and connection resets back off exponentially, with jitter;
- a message that went out whole and got no answer in time may have been posted (a
  webhook has no idempotency key): it is sent again only after ``UNANSWERED_RETRY_S``
  (30 s, then 2 min), and after three such posts it counts as posted (``unconfirmed``);
- any other 4xx means the webhook is wrong: logged once, the notes dropped.

In a multi-rank job only rank 0 sends (``sends``); the other ranks spool what they
would have sent and relay it to rank 0 (``slack_relay``). What is still spooled
when a process dies is sent by the next agent on the same run directory, at the
end of ``gpuwatch run``, or by ``gpuwatch alerts flush``.
"""

from __future__ import annotations

import contextlib
import email.utils
import functools
import http.client
import io
import math
import random
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from gpuwatch.config import webhook_problem
from gpuwatch.faults import log
from gpuwatch.records import Finding, to_dict
from gpuwatch.redact import redact_tree
from gpuwatch.sinks.slack_message import message
from gpuwatch.sinks.slack_relay import StoreRelay
from gpuwatch.sinks.slack_spool import SPOOL, Ledger, Note, Silences, Spool, by_key, plain

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer


BACKOFF_CAP_S = 60.0
RETRY_AFTER_CAP_S = 300.0
DEFAULT_RETRY_AFTER_S = 1.0
UNANSWERED_RETRY_S = (30.0, 120.0)  # waits before posting again what went out unanswered
SENT_UNANSWERED = 0  # _post's status: the request went out whole, no answer in time
MAX_UNWRITTEN = 10_000  # notes kept in memory while the spool cannot be written
TELLS = frozenset({"raised", "reminder"})  # kinds a silence holds back



class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A webhook that answers with a redirect is a wrong one (its 3xx is the answer)."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class _AnswerReader(io.RawIOBase):
    """A socket's bytes, each read given only what is left of a deadline (``left``
    raises TimeoutError once it has passed)."""

    def __init__(self, raw: io.RawIOBase, sock: socket.socket, left: Callable[[], float]
                 ) -> None:
        super().__init__()
        self._raw, self._sock, self._left = raw, sock, left

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int | None:
        self._sock.settimeout(self._left())
        return self._raw.readinto(buffer)

    def close(self) -> None:
        self._raw.close()
        super().close()


class _Answer(http.client.HTTPResponse):
    """An answer whose head must arrive before the request's deadline."""

    def __init__(self, sock: socket.socket, *args: Any, left: Callable[[], float],
                 **kwargs: Any) -> None:
        super().__init__(sock, *args, **kwargs)
        self.fp = io.BufferedReader(_AnswerReader(self.fp.detach(), sock, left))


class Unanswered(TimeoutError):
    """The request went out whole and no answer came in time: it may have been taken."""


class _Deadline(http.client.HTTPConnection):
    """A request that ends ``timeout`` seconds after it began, whatever the other end
    does: connecting (and the TLS handshake), sending and each read of the answer get
    only the time left. (A socket's timeout bounds one read: an answer trickled a byte
    at a time held the sender for ever.) Name resolution is not bounded."""

    def __init__(self, host: str, /, *, timeout: float = 10.0, **kwargs: Any) -> None:
        super().__init__(host, timeout=timeout, **kwargs)
        self._deadline = time.monotonic() + timeout
        self.response_class = functools.partial(_Answer, left=self.left)  # type: ignore[assignment]

    def left(self) -> float:
        """Seconds left; TimeoutError once none are."""
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no answer before the deadline")
        return left

    def connect(self) -> None:
        self.timeout = self.left()  # the TLS handshake has a deadline of this too
        super().connect()

    def send(self, data: Any) -> None:
        if self.sock is None:
            self.connect()
        self.sock.settimeout(self.left())  # sendall: a deadline for all of it
        super().send(data)

    def getresponse(self) -> http.client.HTTPResponse:
        try:
            return super().getresponse()
        except TimeoutError as exc:  # (called once the request went out whole)
            raise Unanswered(str(exc)) from exc


class _DeadlineHTTPS(_Deadline, http.client.HTTPSConnection):
    pass


class _HTTPHandler(urllib.request.HTTPHandler):
    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_Deadline, req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_DeadlineHTTPS, req)


_OPENER = urllib.request.build_opener(_NoRedirect, _HTTPHandler, _HTTPSHandler)


def retry_after_seconds(raw: object, now: float | None = None,
                        cap_s: float = RETRY_AFTER_CAP_S) -> float:
    """Seconds to wait from a ``Retry-After`` header (delta seconds or an HTTP date),
    clamped to 1..``cap_s``; a missing or unreadable value gives 1 s."""
    value = raw[0] if isinstance(raw, list) and raw else raw
    if value is None:
        return DEFAULT_RETRY_AFTER_S
    text = str(value).strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError, OverflowError):
            return DEFAULT_RETRY_AFTER_S
        if when is None or when.tzinfo is None:
            return DEFAULT_RETRY_AFTER_S
        seconds = when.timestamp() - (time.time() if now is None else now)
    if math.isnan(seconds):
        return DEFAULT_RETRY_AFTER_S
    return min(max(seconds, DEFAULT_RETRY_AFTER_S), cap_s)


class TokenBucket:
    """``rate`` tokens a second, a burst of one; ``wait`` says how long until the next."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self._clock = clock
        self._next = clock()

    def wait(self) -> float:
        return max(self._next - self._clock(), 0.0)

    def take(self) -> None:
        self._next = max(self._next, self._clock()) + 1.0 / self.rate


class SlackNotifier:
    """Spools notes for a webhook and, when ``sends``, delivers them from its own thread.

    ``spool_dir`` is where this sender's notes go; ``also`` are other senders' spools
    it delivers too (a flush over several run directories). ``relay`` is called with
    every note spooled here (a non-leader rank hands them to rank 0). A 429 waits at
    most ``max_retry_after_s``.
    """

    def __init__(self, webhook_url: str | None, spool_dir: Path, *,
                 also: Sequence[Path] = (), sends: bool = True,
                 messages_per_second: float = 1.0, group_window_s: float = 2.0,
                 max_group: int = 50, timeout_s: float = 10.0,
                 repeat_interval_s: float = 4 * 3600.0,
                 verdicts: Iterable[str] = ("move_to_h100", "fix_here"),
                 silenced: Iterable[str] = (), grafana_url: str | None = None,
                 relay: Callable[[Note], None] | None = None,
                 on_error: Callable[[str], None] | None = None,
                 max_retry_after_s: float = RETRY_AFTER_CAP_S, run: str | None = None) -> None:
        self.spool = Spool(spool_dir)
        self.spools = [self.spool, *(Spool(p) for p in also if p != spool_dir)]
        self.ledger = Ledger(s.root for s in self.spools)
        self._silences = {root: Silences(root, silenced) for root in self.ledger.roots}
        self.sends = sends and webhook_url is not None
        self.delivered = 0
        self.dropped = 0
        self.silenced = 0
        self.unconfirmed = 0  # posted UNANSWERED_RETRY_S + 1 times, never answered
        self.last_failure: str | None = None  # what the last failed post met (for people)
        self._url = webhook_url
        self._bucket = TokenBucket(messages_per_second)
        self.group_window_s = group_window_s
        self._max_group = max_group
        self._timeout_s = timeout_s
        self._max_retry_after_s = max_retry_after_s
        self._repeat_s = repeat_interval_s
        self._verdicts = set(verdicts)
        self._grafana_url = grafana_url
        self._run_label = run
        self._relay = relay
        self._on_error = on_error or (lambda what: None)
        self._last_told: dict[str, tuple[float, int]] = {}  # fp -> (Unix time, reminders)
        self._spooled_keys = {n.key for s in self.spools for _, n in s.pending()}
        self._unwritten: dict[str, Note] = {}  # notes the disk refused, retried
        # key -> (posts, last one's Unix time) of unanswered posts the disk did not record
        self._unanswered_here: dict[str, tuple[int, float]] = {}
        self._arrived: dict[str, float] = {}  # key -> monotonic time spooled here
        self._put_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._warned_bad_webhook = False
        self._warned_unanswered = False
        self._backoff_s = 0.0  # the last exponential backoff (s); 0 after a success
        self._not_before = 0.0  # monotonic time before which no attempt is made

    @property
    def quarantined(self) -> int:
        return sum(s.quarantined for s in self.spools)

    # -- called from the agent's thread: spool only, never wait on Slack ----------------

    def notify(self, findings: Iterable[Finding]) -> None:
        """Raised and resolved findings (the engine's changes) become notes."""
        now = time.time()
        for f in findings:
            if f.verdict not in self._verdicts:
                continue
            if f.state == "active":
                if f.fingerprint in self._last_told:
                    continue  # already told this episode
                if self.accept(Note("raised", self._told(f), now)):
                    self._last_told[f.fingerprint] = (now, 0)
            elif self._last_told.pop(f.fingerprint, None) is not None:
                self.accept(Note("resolved", self._told(f), now))  # only what was told

    def _told(self, f: Finding) -> dict[str, Any]:
        """A finding as a note tells it: its fields, and the run it belongs to (the
        ``run`` label its dashboard link selects)."""
        told: dict[str, Any] = plain(to_dict(f))
        if self._run_label:
            told["run"] = self._run_label
        return told

    def remind(self, active: Iterable[Finding], now: float | None = None) -> None:
        """Re-notify a finding still active ``repeat_interval_s`` after it was last told
        (``now``: the Unix time to judge by; the clock's by default). Also retries notes
        the disk refused earlier."""
        now = time.time() if now is None else now
        for f in active:
            told = self._last_told.get(f.fingerprint)
            if told is not None and now - told[0] >= self._repeat_s:
                n = told[1] + 1
                self.accept(Note("reminder", self._told(f), time.time(), n))
                self._last_told[f.fingerprint] = (now, n)
        self._retry_unwritten()
        if not self.sends:
            self.prune()

    def accept(self, note: Note) -> bool:
        """Spool ``note`` (from this rank, or relayed from another) unless the same news
        is spooled or delivered already; False when its detector is silenced. A note
        the disk refuses is kept in memory and retried; it counts as spooled only once
        written."""
        if note.kind in TELLS and self._is_silenced(note, self.ledger.roots):
            self.silenced += 1
            return False
        with self._put_lock:
            key = note.key
            if key in self._spooled_keys or self.ledger.delivered(key):
                return True
            try:
                self.spool.put(note)
            except OSError as exc:
                if len(self._unwritten) < MAX_UNWRITTEN:
                    self._unwritten[key] = note
                self._on_error(f"slack spool: {type(exc).__name__}: {exc.strerror}")
                if self._relay is not None:
                    self._relay(note)  # rank 0 may still tell it (it drops a repeat)
                return True
            self._unwritten.pop(key, None)
            self._spooled_keys.add(key)
            self._arrived[key] = time.monotonic()
        if self._relay is not None:
            self._relay(note)
        self._wake.set()
        return True

    def _retry_unwritten(self) -> None:
        for note in list(self._unwritten.values()):
            self.accept(note)

    def _is_silenced(self, note: Note, roots: Iterable[Path]) -> bool:
        detector = str(note.finding.get("detector", ""))
        return any(self._silences[r].silenced(detector) for r in roots if r in self._silences)

    # -- delivery ------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None and self.sends:
            self._thread = threading.Thread(target=self._run, name="gpuwatch-slack", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop delivering; what is undelivered stays spooled for the next start or flush."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def pending(self) -> int:
        """Notes spooled and not yet delivered (each identity once)."""
        return sum(1 for _ in by_key(self.spools))

    def prune(self) -> None:
        """Drop spooled notes another sender has delivered (a rank that does not send);
        by file name (a note's key), without reading the notes."""
        for spool in self.spools:
            for path in spool.names():
                if self.ledger.delivered(path.stem):
                    spool.remove([path])
                    self._spooled_keys.discard(path.stem)

    def flush(self, timeout: float) -> bool:
        """Deliver everything spooled, waiting at most ``timeout``; True when nothing is left
        (a notifier that does not send returns at once)."""
        if not self.sends:
            return not self.pending()
        deadline = time.monotonic() + timeout
        self.start()
        self._wake.set()
        while time.monotonic() < deadline:
            if not self.pending():
                return True
            self._stop.wait(0.05)
        return not self.pending()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                delay = self._deliver_some()
            except Exception as exc:  # never let the thread die
                self._on_error(f"slack delivery: {type(exc).__name__}: {exc}")
                delay = 1.0
            self._wake.wait(delay)
            self._wake.clear()

    def _due(self) -> tuple[list[tuple[str, list[tuple[Spool, Path, Note]]]], float]:
        """Notes to post now (delivered, silenced and held ones set aside) and, when
        none, how long to wait."""
        batch, now, hold = [], time.time(), 3600.0
        for key, copies in by_key(self.spools):
            note = copies[0][2]
            if self.ledger.delivered(key):  # another sender posted it
                self._forget(key, copies)
                continue
            roots = {spool.root for spool, _, _ in copies}
            if note.kind in TELLS and self._is_silenced(note, roots):
                self.silenced += 1
                self._forget(key, copies)
                continue
            if (unanswered := self._unanswered_wait(key, now)) > 0:
                hold = min(hold, unanswered)
                continue
            batch.append((key, copies))
            if len(batch) >= self._max_group:
                return batch, 0.0
        if not batch:
            return [], hold
        youngest = max(self._arrived.get(k, 0.0) for k, _ in batch)
        gather = youngest + self.group_window_s - time.monotonic()
        return (batch, 0.0) if gather <= 0 else ([], gather)  # let the group gather

    def _unanswered_posts(self, key: str) -> tuple[int, float]:
        """(posts, Unix time of the last) of a note's message that went out whole and got
        no answer: on disk (any sender's) or, where the disk refused them, this one's."""
        posts, last = self.ledger.unanswered(key)
        here_posts, here_last = self._unanswered_here.get(key, (0, 0.0))
        return max(posts, here_posts), max(last, here_last)

    def _unanswered_wait(self, key: str, now: float) -> float:
        """Seconds before a note whose message went out unanswered may be posted again
        (0: now; a last post dated in the future does not hold it)."""
        posts, last = self._unanswered_posts(key)
        if not posts:
            return 0.0
        wait = UNANSWERED_RETRY_S[min(posts, len(UNANSWERED_RETRY_S)) - 1]
        return last + wait - now if 0 <= now - last < wait else 0.0

    def _deliver_some(self) -> float:
        """Send one group if it is due; return how long to wait before trying again."""
        batch, wait = self._due()
        if not batch:
            return wait
        wait = max(self._bucket.wait(), self._not_before - time.monotonic())
        if wait > 0:
            return wait
        claim = self.ledger.claim(k for k, _ in batch)
        try:
            claimed = [(k, copies) for k, copies in batch if k in set(claim.keys)]
            if not claimed:
                return 0.5  # another sender holds them: look again soon
            claimed, body = self._rendered(claimed)
            if not claimed:
                return 0.0
            self._bucket.take()
            status, retry_after = self._post(body)
            if status == 200:
                try:
                    self.ledger.mark(claim.keys)
                except OSError as exc:  # posted, but the disk refuses the record (full):
                    # never posted again from here; another sender may, finding none
                    self.last_failure = ("posted, but not recorded as delivered: "
                                         f"{exc.strerror or exc}")
                    log.warning("gpuwatch: Slack note %s", self.last_failure)
                self.delivered += len(claimed)
                for key, copies in claimed:
                    self._forget(key, copies)
                self._backoff_s = 0.0
                return 0.0
            if status == SENT_UNANSWERED:
                return self._unanswered(claimed)
        finally:
            claim.release()
        return self._after_failure(status, retry_after, claimed)

    def _unanswered(self, claimed: list[tuple[str, list[tuple[Spool, Path, Note]]]]) -> float:
        """The message went out whole and no answer came: Slack may have posted it. Not
        a failure to retry at once: recorded (held by the caller's claim), each note is
        posted again after ``UNANSWERED_RETRY_S``, and after as many such posts as
        retries plus one counts as posted."""
        posts = {k: self._unanswered_posts(k)[0] + 1 for k, _ in claimed}
        try:
            self.ledger.record_unanswered(posts)
        except OSError:  # (the disk refuses the record, full: held here, no more often)
            self._unanswered_here.update({k: (n, time.time()) for k, n in posts.items()})
        done = [(k, c) for k, c in claimed
                if self._unanswered_posts(k)[0] > len(UNANSWERED_RETRY_S)]
        self.last_failure = (f"no answer within {self._timeout_s:g} s after the message was "
                             "sent: Slack may have posted it")
        if done:
            with contextlib.suppress(OSError):  # (counted as posted here, whatever the disk)
                self.ledger.mark(k for k, _ in done)
            self.unconfirmed += len(done)
            for key, copies in done:
                self._forget(key, copies)
            if not self._warned_unanswered:
                self._warned_unanswered = True
                log.warning("gpuwatch: a Slack message went out whole %d times and no "
                            "answer came within %g s: counted as posted (raise "
                            "slack.timeout_s?)", len(UNANSWERED_RETRY_S) + 1, self._timeout_s)
        return 0.0

    def _after_failure(self, status: int | None, retry_after: float,
                       claimed: list[tuple[str, list[tuple[Spool, Path, Note]]]]) -> float:
        self.last_failure = (f"the webhook answered HTTP {status}" if status is not None
                             else "no answer from the webhook (timeout or connection refused)")
        if status == 429:
            delay = retry_after
        elif status is None or status >= 500:
            self._backoff_s = min(max(self._backoff_s * 2, 1.0), BACKOFF_CAP_S)
            delay = self._backoff_s * random.uniform(0.8, 1.2)  # jitter: no thundering herd
        else:
            if not self._warned_bad_webhook:
                self._warned_bad_webhook = True
                log.warning("gpuwatch: Slack webhook answered HTTP %d: notes dropped (check the "
                            "webhook URL)", status)
            self.dropped += len(claimed)
            for key, copies in claimed:
                self._forget(key, copies)
            return 0.0
        self._not_before = time.monotonic() + delay
        return delay

    def _post(self, body: dict[str, Any]) -> tuple[int | None, float]:
        """(HTTP status, ``SENT_UNANSWERED`` when the request went out whole and no
        answer came in time, or None for another network failure; seconds Retry-After
        asks for). The answer's body is not read: its status and headers say all there
        is."""
        request = urllib.request.Request(
            str(self._url), data=orjson.dumps(body), method="POST",
            headers={"Content-Type": "application/json; charset=utf-8"})
        try:
            with _OPENER.open(request, timeout=self._timeout_s) as response:
                status, headers = int(response.status), response.headers
        except urllib.error.HTTPError as exc:  # 3xx (not followed), 4xx, 5xx
            status, headers = exc.code, exc.headers
            exc.close()
        except Unanswered:
            self._on_error("slack: Unanswered")
            return SENT_UNANSWERED, 0.0
        except Exception as exc:  # timeouts, resets, refused connections, TLS
            self._on_error(f"slack: {type(exc).__name__}")
            return None, 0.0
        raw = headers.get("Retry-After") if headers is not None else None
        return status, retry_after_seconds(raw, cap_s=self._max_retry_after_s)

    def _rendered(self, claimed: list[tuple[str, list[tuple[Spool, Path, Note]]]]
                  ) -> tuple[list[tuple[str, list[tuple[Spool, Path, Note]]]], dict[str, Any]]:
        """The claimed notes a message can be made of, and that message: a note that
        cannot be rendered (a spool file damaged or written by hand, its finding's fields
        of the wrong type) is moved to quarantine, so it never holds back the others."""
        def render(group: list[tuple[str, list[tuple[Spool, Path, Note]]]]) -> dict[str, Any]:
            body: dict[str, Any] = redact_tree(message(
                [(c[0][2].kind, c[0][2].finding) for _, c in group], self._grafana_url))
            return body

        try:
            return claimed, render(claimed)
        except Exception:
            pass
        good = []
        for key, copies in claimed:
            try:
                render([(key, copies)])
                good.append((key, copies))
            except Exception:
                for spool, path, _ in copies:
                    spool.quarantine(path)
                self._spooled_keys.discard(key)
                self._arrived.pop(key, None)
        return good, render(good) if good else {}

    def _forget(self, key: str, copies: list[tuple[Spool, Path, Note]]) -> None:
        for spool, path, _ in copies:
            spool.remove([path])
        self._spooled_keys.discard(key)
        self._arrived.pop(key, None)


def notifier_from_settings(settings: Any, spool_dir: Path, *, sends: bool = True,
                           also: Sequence[Path] = (), always: bool = False,
                           relay: Callable[[Note], None] | None = None,
                           on_error: Callable[[str], None] | None = None,
                           run: str | None = None) -> SlackNotifier | None:
    """A notifier for ``settings.slack`` (a ``SlackSettings``), or None when Slack is not
    the path of record (no webhook, or ``slack.delivery`` is ``alertmanager``). Raises
    OSError when the webhook file cannot be read, ValueError when the URL cannot work
    (``load_settings`` has said so already, at start). ``always``: whatever the path
    of record (the ``alerts`` commands)."""
    cfg = settings.slack
    if not (always or cfg.in_process()):
        return None
    url = cfg.url()
    if not url:
        return None
    if problem := webhook_problem(url):
        raise ValueError(problem)
    return SlackNotifier(url, spool_dir, also=also, sends=sends,
                         messages_per_second=cfg.messages_per_second,
                         group_window_s=cfg.group_window_s, max_group=cfg.max_group,
                         timeout_s=cfg.timeout_s, repeat_interval_s=cfg.repeat_interval_s,
                         verdicts=cfg.verdicts, silenced=cfg.silence,
                         # (the link as shown: the URL's credentials never reach Slack)
                         grafana_url=None if cfg.grafana_url is None else str(cfg.grafana_url),
                         relay=relay, on_error=on_error,
                         run=run)


def job_notifier(settings: Any, run_dir: Path, rank: int, world_size: int,
                 store: Callable[[], Any], on_error: Callable[[str], None] | None = None,
                 run: str | None = None) -> tuple[SlackNotifier | None, StoreRelay | None]:
    """The notifier of one rank of a job, and its relay to rank 0 in a multi-rank job:
    rank 0 sends (its own notes and those relayed); the others spool and relay.
    Raises as ``notifier_from_settings`` does."""
    spool = run_dir / SPOOL / f"rank{rank}"
    if world_size < 2:
        return notifier_from_settings(settings, spool, on_error=on_error, run=run), None
    relay = StoreRelay(rank, world_size, store, on_error=on_error)
    notifier = notifier_from_settings(settings, spool, sends=rank == 0,
                                      relay=relay.publish if rank else None,
                                      on_error=on_error, run=run)
    if notifier is None:
        return None, None
    if rank == 0:
        relay.deliver = notifier.accept
    return notifier, relay
