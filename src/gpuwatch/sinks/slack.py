"""Slack notifications that are never lost and never spam.

A finding raised, resolved or still active after ``repeat_interval_s`` becomes a
note, written at once to a spool directory (one file per note: the agent's
thread never waits on Slack). A delivery thread groups the notes spooled close
together into one message, sends it through an incoming webhook (slack-sdk's
``WebhookClient``, one attempt at a time), and deletes the notes only when Slack
said 200. In between:

- at most ``messages_per_second`` messages leave (a token bucket);
- HTTP 429 waits as long as ``Retry-After`` says;
- 5xx, timeouts and connection resets back off exponentially, with jitter;
- any other 4xx means the webhook is wrong: logged once, the notes dropped.

What is still spooled when the process dies is sent by the next agent that
starts on the same run directory, or by ``gpuwatch alerts flush``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpuwatch.records import Finding, to_dict

log = logging.getLogger("gpuwatch")

VERDICT_TITLES = {"move_to_h100": ":rocket: Move to H100", "fix_here": ":wrench: Fix it here",
                  "info": ":information_source: For information"}
BLOCK_FINDINGS = 10  # findings shown as blocks in one message; the text lists them all
BACKOFF_CAP_S = 60.0

# slack-sdk logs each failed request as an error; failures are counted here instead.
_QUIET = logging.getLogger("gpuwatch.slack_sdk")
_QUIET.propagate = False
_QUIET.addHandler(logging.NullHandler())


@dataclass(frozen=True)
class Note:
    """One thing to tell: ``kind`` is raised, resolved, reminder or test."""

    kind: str
    finding: dict[str, Any]
    created: float

    @property
    def key(self) -> str:
        return f"{self.finding.get('fingerprint', 'test')}-{self.kind}"


class Spool:
    """Notes on disk, one JSON file each (written atomically), until delivered."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def put(self, note: Note) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        name = f"{note.created:017.6f}-{uuid.uuid4().hex[:8]}.json"
        tmp = self.directory / f".{name}.tmp"
        tmp.write_text(json.dumps({"kind": note.kind, "finding": note.finding,
                                   "created": note.created}))
        os.replace(tmp, self.directory / name)
        return self.directory / name

    def pending(self) -> list[tuple[Path, Note]]:
        """Spooled notes, oldest first; unreadable files are set aside as ``*.bad``.
        Safe while another thread delivers (and deletes) notes."""
        out = []
        for path in sorted(self.directory.glob("*.json")) if self.directory.is_dir() else []:
            try:
                raw = json.loads(path.read_text())
                out.append((path, Note(raw["kind"], raw["finding"], float(raw["created"]))))
            except FileNotFoundError:
                continue  # delivered while we looked
            except (OSError, ValueError, KeyError, TypeError):
                with contextlib.suppress(OSError):
                    path.rename(path.with_suffix(".bad"))
        return out

    def remove(self, paths: Iterable[Path]) -> None:
        for path in paths:
            path.unlink(missing_ok=True)


def message(notes: list[Note], grafana_url: str | None = None) -> dict[str, Any]:
    """A Block Kit message with a plain-text fallback for a group of notes."""
    lines = [_line(n) for n in notes]
    first = notes[0].finding
    job = first.get("job") or "a training job"
    title = (f"gpuwatch: {len(notes)} findings on {job}" if len(notes) > 1
             else f"gpuwatch: {lines[0]}")
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": title[:150]}}]
    for note in notes[:BLOCK_FINDINGS]:
        blocks += _blocks(note)
    if len(notes) > BLOCK_FINDINGS:
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text":
                       f"+{len(notes) - BLOCK_FINDINGS} more: see the text of this message"}]})
    if grafana_url:
        blocks.append({"type": "actions", "elements": [{
            "type": "button", "text": {"type": "plain_text", "text": "Open in Grafana"},
            "url": grafana_url}]})
    return {"text": "\n".join([title, *lines[1:]] if len(notes) == 1 else [title, *lines]),
            "blocks": blocks}


def _line(note: Note) -> str:
    f = note.finding
    state = {"resolved": "RESOLVED: ", "reminder": "still active: "}.get(note.kind, "")
    ranks = ",".join(map(str, f.get("ranks", [])))
    return (f"{state}[{f.get('verdict')}] {f.get('detector')} on {f.get('job')} rank {ranks}: "
            f"{f.get('summary', '')}")


def _blocks(note: Note) -> list[dict[str, Any]]:
    f = note.finding
    if note.kind == "test":
        return [{"type": "section", "text": {"type": "mrkdwn", "text": f["summary"]}}]
    verdict = VERDICT_TITLES.get(f.get("verdict", ""), f.get("verdict", ""))
    head = {"resolved": f":white_check_mark: Resolved: {f.get('detector')}",
            "reminder": f"{verdict} (still active): {f.get('detector')}"}.get(
                note.kind, f"{verdict}: {f.get('detector')}")
    ranks = ",".join(map(str, f.get("ranks", [])))
    body = f"*{head}*\n{f.get('summary', '')}"
    if note.kind != "resolved":
        body += f"\n*What to do:* {f.get('action', '')}"
    fields = [{"type": "mrkdwn", "text": f"*{k}*\n{_number(v)}"}
              for k, v in list(f.get("evidence", {}).items())[:8]]
    blocks: list[dict[str, Any]] = [{"type": "section", "text": {"type": "mrkdwn", "text": body}}]
    if fields and note.kind != "resolved":
        blocks.append({"type": "section", "fields": fields})
    projection = f.get("projection") or {}
    context = f"job `{f.get('job')}` · ranks {ranks} · severity {f.get('severity')}"
    if projection and note.kind != "resolved":
        context += (f" · on {projection.get('target')}: {projection.get('speedup_ratio', 1):.2f}x"
                    f" faster, ${projection.get('cost_per_step_target_usd', 0):.4g}/step")
        if "cost_per_step_now_usd" in projection:
            context += f" (now ${projection['cost_per_step_now_usd']:.4g}/step)"
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": context}]})
    return blocks


def _number(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


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
    """Spools notes for a webhook and delivers them from its own thread."""

    def __init__(self, webhook_url: str, spool_dir: Path, *, messages_per_second: float = 1.0,
                 group_window_s: float = 2.0, max_group: int = 50, timeout_s: float = 10.0,
                 repeat_interval_s: float = 4 * 3600.0, verdicts: Iterable[str] = (
                     "move_to_h100", "fix_here"), grafana_url: str | None = None,
                 on_error: Callable[[str], None] | None = None) -> None:
        self.spool = Spool(spool_dir)
        self.delivered = 0
        self.dropped = 0
        self._url = webhook_url
        self._bucket = TokenBucket(messages_per_second)
        self._group_window_s = group_window_s
        self._max_group = max_group
        self._timeout_s = timeout_s
        self._repeat_s = repeat_interval_s
        self._verdicts = set(verdicts)
        self._grafana_url = grafana_url
        self._on_error = on_error or (lambda what: None)
        self._last_told: dict[str, float] = {}
        self._spooled_keys = {n.key for _, n in self.spool.pending()}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._warned_bad_webhook = False
        self._backoff_s = 0.0  # the last exponential backoff (s); 0 after a success
        self._not_before = 0.0  # monotonic time before which no attempt is made

    # -- called from the agent's thread: spool only, never wait on Slack ----------------

    def notify(self, findings: Iterable[Finding]) -> None:
        """Raised and resolved findings (the engine's changes) become notes."""
        now = time.time()
        for f in findings:
            if f.verdict not in self._verdicts:
                continue
            kind = "raised" if f.state == "active" else "resolved"
            if kind == "resolved" and f.fingerprint not in self._last_told:
                continue  # never told it was raised: no need to say it cleared
            self._put(Note(kind, _plain(f), now))
            if kind == "raised":
                self._last_told[f.fingerprint] = now
            else:
                self._last_told.pop(f.fingerprint, None)

    def remind(self, active: Iterable[Finding], now: float | None = None) -> None:
        """Re-notify a finding still active ``repeat_interval_s`` after it was last told
        (``now``: the Unix time to judge by; the clock's by default)."""
        now = time.time() if now is None else now
        for f in active:
            told = self._last_told.get(f.fingerprint)
            if told is not None and now - told >= self._repeat_s:
                self._put(Note("reminder", _plain(f), time.time()))
                self._last_told[f.fingerprint] = now

    def _put(self, note: Note) -> None:
        if note.key in self._spooled_keys:
            return  # the same news is already waiting to go: fold it
        self._spooled_keys.add(note.key)
        self.spool.put(note)
        self._wake.set()

    # -- delivery ------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="gpuwatch-slack", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop delivering; what is undelivered stays spooled for the next start or flush."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def flush(self, timeout: float) -> bool:
        """Deliver everything spooled, waiting at most ``timeout``; True when nothing is left."""
        deadline = time.monotonic() + timeout
        self.start()
        self._wake.set()
        while time.monotonic() < deadline:
            if not self.spool.pending():
                return True
            time.sleep(0.05)
        return not self.spool.pending()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                delay = self._deliver_some()
            except Exception as exc:  # never let the thread die silently
                self._on_error(f"slack delivery: {type(exc).__name__}: {exc}")
                delay = 1.0
            self._wake.wait(delay)
            self._wake.clear()

    def _deliver_some(self) -> float:
        """Send one group if it is due; return how long to wait before trying again."""
        pending = self.spool.pending()
        if not pending:
            return 3600.0
        youngest_allowed = time.time() - self._group_window_s
        batch = pending[: self._max_group]
        if batch[-1][1].created > youngest_allowed and len(batch) < self._max_group:
            return max(batch[-1][1].created - youngest_allowed, 0.01)  # let the group gather
        wait = max(self._bucket.wait(), self._not_before - time.monotonic())
        if wait > 0:
            return wait
        self._bucket.take()
        status, retry_after = self._post(message([n for _, n in batch], self._grafana_url))
        if status == 200:
            self._delivered(batch)
            self._backoff_s = 0.0
            return 0.0
        if status == 429:
            delay = retry_after if retry_after is not None else 1.0
        elif status is None or status >= 500:
            self._backoff_s = min(max(self._backoff_s * 2, 1.0), BACKOFF_CAP_S)
            delay = self._backoff_s * random.uniform(0.8, 1.2)  # jitter: no thundering herd
        else:
            if not self._warned_bad_webhook:
                self._warned_bad_webhook = True
                log.warning("gpuwatch: Slack webhook answered HTTP %d: notes dropped (check the "
                            "webhook URL)", status)
            self.dropped += len(batch)
            self._forget(batch)
            return 0.0
        self._not_before = time.monotonic() + delay
        return delay

    def _post(self, body: dict[str, Any]) -> tuple[int | None, float | None]:
        """(HTTP status or None for a network failure, Retry-After seconds if given)."""
        from slack_sdk.webhook import WebhookClient

        try:
            client = WebhookClient(self._url, timeout=int(max(self._timeout_s, 1)),
                                   retry_handlers=[],  # one attempt: retries are ours
                                   logger=_QUIET)
            response = client.send_dict(body)
        except Exception as exc:  # timeouts, resets, refused connections
            self._on_error(f"slack: {type(exc).__name__}")
            return None, None
        headers = {k.lower(): v for k, v in (response.headers or {}).items()}
        raw = headers.get("retry-after")
        value: Any = raw[0] if isinstance(raw, list) and raw else raw
        try:
            retry_after = float(str(value)) if value is not None else None
        except ValueError:
            retry_after = None
        return response.status_code, retry_after

    def _delivered(self, batch: list[tuple[Path, Note]]) -> None:
        self.delivered += len(batch)
        self._forget(batch)

    def _forget(self, batch: list[tuple[Path, Note]]) -> None:
        self.spool.remove(p for p, _ in batch)
        for _, note in batch:
            self._spooled_keys.discard(note.key)


def _plain(f: Finding) -> dict[str, Any]:
    return json.loads(json.dumps(to_dict(f), default=str))  # type: ignore[no-any-return]


def notifier_from_settings(settings: Any, spool_dir: Path,
                           on_error: Callable[[str], None] | None = None) -> SlackNotifier | None:
    """A notifier for ``settings.slack`` (a ``SlackSettings``), or None when no webhook
    is configured. Raises OSError when the webhook file cannot be read."""
    cfg = settings.slack
    url = cfg.url()
    if not url:
        return None
    return SlackNotifier(url, spool_dir, messages_per_second=cfg.messages_per_second,
                         group_window_s=cfg.group_window_s, max_group=cfg.max_group,
                         timeout_s=cfg.timeout_s, repeat_interval_s=cfg.repeat_interval_s,
                         verdicts=cfg.verdicts, grafana_url=cfg.grafana_url, on_error=on_error)


def spool_dirs(run_dir: Path) -> list[Path]:
    """Every spool under a run directory (one per rank, one for the job)."""
    root = run_dir / "slack-spool"
    return sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
