"""Slack delivery against a real HTTP endpoint on 127.0.0.1 that answers from a script:
nothing lost, nothing posted twice (not by 8 ranks, not by concurrent flushes, not
after a leader dies), rate-limited, a hostile webhook (5xx, absurd Retry-After,
hanging, refusing) never kills delivery nor slows training, a full disk never
counts a note as spooled, malformed spool files are set aside."""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from gpuwatch.records import Finding
from gpuwatch.sinks.slack import SlackNotifier
from gpuwatch.sinks.slack_message import DASH
from gpuwatch.sinks.slack_spool import Note, Spool
from tests.integration.conftest import ROOT, SCRIPTS, gpuwatch_cmd, run
from tests.unit.test_slack_message import full_disk
from tests.wait import wait_for
from tests.webhook import ScriptedWebhook, webhook

pytestmark = pytest.mark.integration


def finding(i: int, verdict: str = "move_to_h100", state: str = "active",
            job: str = "gpt", detector: str = "fits_on_paper") -> Finding:
    return Finding(detector=detector, verdict=verdict, severity="warning",  # type: ignore[arg-type]
                   summary=f"finding #{i}", action="move it", evidence={"memory_peak_ratio": 0.97},
                   ranks=[i % 8], first_seen=float(i), last_seen=0.0, fingerprint=f"fp{i}",
                   job=job, projection={"target": "H100 SXM", "speedup_ratio": 1.9,
                                        "cost_per_step_target_usd": 0.002},
                   state=state)  # type: ignore[arg-type]


def notifier(url: str, tmp_path: Path, **kw: Any) -> SlackNotifier:
    defaults: dict[str, Any] = {"group_window_s": 0.2, "timeout_s": 2.0}
    return SlackNotifier(url, tmp_path / "slack-spool" / "rank0", **{**defaults, **kw})


def delivered_numbers(texts: list[str]) -> list[int]:
    return [int(n) for text in texts for n in re.findall(r"finding #(\d+)", text)]


def gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(times)]


def test_burst_of_1000_is_folded_rate_limited_and_fully_delivered(tmp_path: Path) -> None:
    with webhook(["500", "500", "reset"]) as hook:  # down for a while, then recovers
        n = notifier(hook.url, tmp_path, max_group=50)
        n.start()
        burst = [finding(i % 250, detector=f"d{i % 250}") for i in range(1000)]
        n.notify(burst)  # 250 distinct, each 4 times
        assert n.flush(timeout=90)
        n.stop()
        attempts = [t for t, _ in hook.attempts]
    numbers = delivered_numbers(hook.texts())
    assert sorted(numbers) == list(range(250))  # every distinct finding, exactly once: 0 lost
    assert all(g >= 0.95 for g in gaps(attempts))  # at most one message a second leaves
    assert len(hook.delivered) == 5  # grouped: 250 findings in messages of up to 50
    assert n.delivered == 250 and n.pending() == 0


@pytest.mark.parametrize("retry_after", ["inf", "-inf", "nan", "-5", "1e999", "soon", ""])
def test_absurd_retry_after_never_kills_delivery(tmp_path: Path, retry_after: str) -> None:
    errors: list[str] = []
    with webhook([f"429:{retry_after}"]) as hook:
        n = notifier(hook.url, tmp_path, max_retry_after_s=2.0, on_error=errors.append)
        n.notify([finding(1)])
        assert n.flush(timeout=20)
        assert n._thread is not None and n._thread.is_alive()
        n.stop()
    (t0, first), (t1, second) = hook.attempts
    assert (first, second) == (f"429:{retry_after}", "ok")
    assert 0.9 <= t1 - t0 <= 2.5  # clamped to 1..2 s here (300 s by default)
    assert delivered_numbers(hook.texts()) == [1] and errors == []


def test_429_retry_after_delays_the_next_attempt(tmp_path: Path) -> None:
    with webhook(["429:2"]) as hook:
        n = notifier(hook.url, tmp_path)
        n.notify([finding(1)])
        assert n.flush(timeout=20)
        n.stop()
    (t0, first), (t1, second) = hook.attempts
    assert (first, second) == ("429:2", "ok")
    assert t1 - t0 >= 2.0
    assert delivered_numbers(hook.texts()) == [1]


def test_5xx_backs_off_exponentially_with_jitter(tmp_path: Path) -> None:
    with webhook(["500", "503", "502"]) as hook:
        n = notifier(hook.url, tmp_path)
        n.notify([finding(1)])
        assert n.flush(timeout=30)
        n.stop()
    g = gaps([t for t, _ in hook.attempts])
    assert len(g) == 3
    assert g[0] >= 0.8 and g[1] >= 1.6 and g[2] >= 3.2  # 1, 2, 4 s, each x 0.8..1.2
    assert g[2] > g[0]


def test_a_refusing_webhook_keeps_notes_spooled_and_backs_off(tmp_path: Path) -> None:
    errors: list[str] = []
    n = notifier("http://127.0.0.1:9/services/T0/B0/X", tmp_path, on_error=errors.append)
    n.notify([finding(1)])
    assert not n.flush(timeout=2.5)  # refused: 1 s then 2 s of backoff
    n.stop()
    assert n.pending() == 1 and n.delivered == 0
    assert 1 <= len(errors) <= 3 and all("ConnectionRefused" in e or "URLError" in e
                                         for e in errors)


def test_bad_webhook_4xx_is_dropped_and_logged_once(tmp_path: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    with webhook(then="404") as hook, caplog.at_level(logging.WARNING, logger="gpuwatch"):
        n = notifier(hook.url, tmp_path)
        n.notify([finding(1)])
        assert n.flush(timeout=10)
        n.notify([finding(2)])
        assert n.flush(timeout=10)
        n.stop()
    assert len(hook.attempts) == 2  # one try each: not retried forever
    assert n.dropped == 2 and n.delivered == 0
    assert sum("HTTP 404" in r.getMessage() for r in caplog.records) == 1
    assert hook.url not in caplog.text  # the webhook is a secret


@pytest.mark.parametrize("answer", ["flood:400", "garbled"])
def test_an_answer_s_body_is_never_read(tmp_path: Path, answer: str) -> None:
    """A 200 whose body never ends (400 MiB streamed) grew the training process by all
    of it; one in a charset no one knows read as a failure and was posted again and
    again. The status says all there is: delivered once, nothing read."""
    with webhook(then=answer) as hook:
        n = notifier(hook.url, tmp_path, timeout_s=5.0)
        n.notify([finding(1)])
        assert n.flush(timeout=30)
        n.stop()
    assert n.delivered == 1 and len(hook.attempts) == 1
    assert hook.streamed < 64 << 20  # (the client hung up: it read none of the rest)


def test_duplicates_fold_reminders_repeat_and_resolved_follow(tmp_path: Path) -> None:
    with webhook() as hook:
        n = notifier(hook.url, tmp_path, repeat_interval_s=100.0)
        n.start()
        n.notify([finding(1), finding(1), finding(2, verdict="info")])  # info: not for Slack
        n.remind([finding(1)], now=time.time() + 50)  # too early to repeat
        assert n.flush(timeout=10)
        n.remind([finding(1)], now=time.time() + 150)
        assert n.flush(timeout=10)
        n.remind([finding(1)], now=time.time() + 300)  # a second reminder is news too
        assert n.flush(timeout=10)
        n.notify([finding(1, state="resolved")])
        assert n.flush(timeout=10)
        n.stop()
    texts = hook.texts()
    assert len(texts) == 4
    assert "still active" in texts[1] and "still active" in texts[2] and "RESOLVED" in texts[3]
    assert delivered_numbers(texts) == [1, 1, 1, 1]


def test_hostile_job_names_reach_slack_escaped(tmp_path: Path) -> None:
    with webhook() as hook:
        n = notifier(hook.url, tmp_path, grafana_url="https://grafana.example")
        n.notify([finding(1, job="<!channel> & <@U42> <https://evil|x>")])
        assert n.flush(timeout=10)
        n.stop()
    raw = json.dumps(hook.delivered[0])
    assert "<!channel>" not in raw and "<@U42>" not in raw and "<https://evil" not in raw
    assert "&lt;!channel&gt; &amp; &lt;@U42&gt;" in hook.delivered[0]["blocks"][0]["text"]["text"]


def test_the_dashboard_link_selects_the_job_and_run_the_finding_is_of(tmp_path: Path) -> None:
    with webhook() as hook:
        n = notifier(hook.url, tmp_path, grafana_url="https://grafana.example",
                     run="gpt-7f3a")
        n.notify([finding(1, job="gpt")])
        assert n.flush(timeout=10)
        n.stop()
    raw = json.dumps(hook.delivered[0])
    assert "/d/gpuwatch-job?var-training_job=gpt&amp;var-run=gpt-7f3a&amp;var-rank=" in raw


def test_job_findings_gpuwatch_run_tells_link_to_their_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The cross-rank findings `gpuwatch run` judges after the job carry the run the
    logs name, as the agents' notes do: their dashboard link selects it."""
    from gpuwatch import cli

    (tmp_path / "run.jsonl").write_text(json.dumps(
        {"kind": "meta", "schema": 1, "gpuwatch": "t", "job": "gpt", "host": "h", "rank": 0,
         "local_rank": 0, "world_size": 1, "pid": 1, "started": 1.0, "argv": [],
         "run": "gpt-7f3a"}) + "\n")
    with webhook() as hook:
        monkeypatch.setenv("GPUWATCH_SLACK__WEBHOOK_URL", hook.url)
        monkeypatch.setenv("GPUWATCH_SLACK__GRAFANA_URL", "https://grafana.example")
        cli._notify_job_findings(tmp_path, [finding(3, detector="straggler")])
    raw = json.dumps(hook.delivered)
    assert "var-training_job=gpt&amp;var-run=gpt-7f3a&amp;var-rank=3" in raw


def test_a_password_in_the_grafana_url_never_reaches_slack(tmp_path: Path) -> None:
    with webhook() as hook:
        n = notifier(hook.url, tmp_path,
                     grafana_url="https://admin:Gr4fanaPassw0rd@grafana.example")
        n.notify([replace(finding(1), summary="see https://ghp_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789@gh.io")])
        assert n.flush(timeout=10)
        n.stop()
    raw = json.dumps(hook.delivered[0])
    assert "Gr4fanaPassw0rd" not in raw and "ghp_AbCdEf" not in raw
    assert "grafana.example/d/" in raw  # the link is there, its password masked


def test_credentials_in_the_grafana_url_setting_never_reach_slack(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """slack.grafana_url is shown, never used whole: a token as its user (which no shape
    of a password finds) or in its query stays out of the message."""
    from gpuwatch import cli

    (tmp_path / "run.jsonl").write_text(json.dumps(
        {"kind": "meta", "schema": 1, "gpuwatch": "t", "job": "gpt", "host": "h", "rank": 0,
         "local_rank": 0, "world_size": 1, "pid": 1, "started": 1.0, "argv": []}) + "\n")
    with webhook() as hook:
        monkeypatch.setenv("GPUWATCH_SLACK__WEBHOOK_URL", hook.url)
        monkeypatch.setenv("GPUWATCH_SLACK__GRAFANA_URL",
                           "https://gtok3n@grafana.example/?auth_token=glsa_abcdef0123456789")
        cli._notify_job_findings(tmp_path, [finding(3, detector="straggler")])
    raw = json.dumps(hook.delivered)
    assert "gtok3n" not in raw and "abcdef0123456789" not in raw
    assert "grafana.example/" in raw


def test_a_note_the_full_disk_refused_is_not_counted_and_is_sent_once_there_is_room(
        tmp_path: Path) -> None:
    errors: list[str] = []
    with webhook() as hook, full_disk(tmp_path / "disk") as filler:
        n = SlackNotifier(hook.url, filler.parent / "rank0", group_window_s=0, timeout_s=2,
                          on_error=errors.append)
        n.start()
        n.notify([finding(1)])
        assert n.pending() == 0 and any("ENOSPC" in e or "No space" in e for e in errors)
        assert not hook.attempts  # nothing claimed it was spooled, nothing sent
        filler.unlink()
        n.remind([])  # the agent's next tick retries the refused note
        assert n.flush(timeout=10)
        n.stop()
    assert delivered_numbers(hook.texts()) == [1]


def test_a_note_posted_whose_delivery_the_disk_cannot_record_is_posted_once(
        tmp_path: Path) -> None:
    """Slack took the note, but the ledger could not record it (a full disk; here its
    ``delivered`` directory cannot be made): the note stayed queued and was posted again
    every second."""
    (tmp_path / "slack-spool").mkdir()
    (tmp_path / "slack-spool" / "delivered").write_text("")  # (no directory can go there)
    with webhook() as hook:
        n = notifier(hook.url, tmp_path)
        n.start()
        n.notify([finding(1)])
        assert n.flush(timeout=10)  # (it stayed queued, posted again every second)
        assert n.pending() == 0 and len(hook.attempts) == 1
        n.stop()
    assert delivered_numbers(hook.texts()) == [1]
    assert n.last_failure is not None and "not recorded as delivered" in n.last_failure


def test_malformed_spool_files_neither_stop_flush_nor_kill_a_restarted_agent(
        tmp_path: Path) -> None:
    import gpuwatch

    spool = Spool(tmp_path / "slack-spool" / "rank0")
    spool.put(Note("raised", {"detector": "hang", "summary": "finding #7", "job": "gpt",
                              "fingerprint": "x", "verdict": "fix_here"}, 1.0))
    for name, data in {"a.json": b"{", "b.json": b"\x00\xff", "c.json": b'"str"'}.items():
        (spool.directory / name).write_bytes(data)
    with webhook() as hook:
        monitor = gpuwatch.watch(out_dir=tmp_path, exporter={"enabled": False},
                                 slack={"webhook_url": hook.url, "group_window_s": 0})
        with monitor.step():  # a lone process knows it is one once a step ends
            pass
        wait_for(lambda: hook.delivered, 10, "the restarted agent to deliver")
        assert monitor.agent.slack is not None and monitor.agent.slack.quarantined == 3
        monitor.stop()
        assert not monitor.agent.faults.counts.get("agent")
    assert delivered_numbers(hook.texts()) == [7]
    (spool.directory / "d.json").write_text("[1, 2")
    with webhook() as hook:
        flushed = run(gpuwatch_cmd("alerts", "flush", str(tmp_path)), cwd=tmp_path,
                      extra_env={"GPUWATCH_SLACK__WEBHOOK_URL": hook.url})
    assert flushed.returncode == 0, flushed.stderr
    assert "1 malformed" in flushed.stdout and not hook.attempts
    assert len(list((tmp_path / "slack-spool" / "quarantine").iterdir())) == 4


def test_a_note_no_message_can_be_made_of_is_quarantined_and_the_others_go(
        tmp_path: Path) -> None:
    """A spooled note whose finding is well-formed JSON but of the wrong shape (ranks a
    number, evidence a list: written by hand, or by another version) cannot become a
    message: it is set aside, and the notes spooled with it are delivered."""
    spool = Spool(tmp_path / "slack-spool" / "rank0")
    good = {"detector": "hang", "summary": "finding #7", "job": "gpt", "fingerprint": "x",
            "verdict": "fix_here", "ranks": [0]}
    spool.put(Note("raised", good, 1.0))
    spool.put(Note("raised", {**good, "fingerprint": "y", "summary": "finding #8",
                              "ranks": 3, "evidence": [1]}, 2.0))
    with webhook() as hook:
        flushed = run(gpuwatch_cmd("alerts", "flush", str(tmp_path)), cwd=tmp_path,
                      extra_env={"GPUWATCH_SLACK__WEBHOOK_URL": hook.url})
    assert flushed.returncode == 0, flushed.stdout + flushed.stderr
    assert delivered_numbers(hook.texts()) == [7]
    assert "1 malformed" in flushed.stdout
    assert len(list((tmp_path / "slack-spool" / "quarantine").iterdir())) == 1


def test_a_note_created_at_a_400_digit_time_is_quarantined_and_flush_delivers_the_rest(
        tmp_path: Path) -> None:
    """A note whose ``created`` is an integer no float holds (math.isfinite raised
    OverflowError, which nothing caught): `alerts flush` died with a traceback and the
    good note beside it was never sent."""
    spool = Spool(tmp_path / "slack-spool" / "rank0")
    good = Note("raised", {"detector": "hang", "summary": "finding #7", "job": "gpt",
                           "fingerprint": "x", "verdict": "fix_here", "ranks": [0]}, 1.0)
    spool.put(good)
    (spool.directory / f"{'b' * 32}.json").write_text(
        good.to_json().decode().replace('"created": 1.0', '"created": 1' + "0" * 400))
    with webhook() as hook:
        flushed = run(gpuwatch_cmd("alerts", "flush", str(tmp_path)), cwd=tmp_path,
                      extra_env={"GPUWATCH_SLACK__WEBHOOK_URL": hook.url})
    assert flushed.returncode == 0, flushed.stdout + flushed.stderr
    assert "Traceback" not in flushed.stderr
    assert delivered_numbers(hook.texts()) == [7] and "1 malformed" in flushed.stdout
    assert [p.name for p in (tmp_path / "slack-spool" / "quarantine").iterdir()] == \
        [f"rank0-{'b' * 32}.json"]


def test_a_fifo_or_a_device_in_the_spool_is_set_aside_never_waited_on(tmp_path: Path) -> None:
    """A note that is a FIFO (its read waited for a writer forever: `alerts flush` hung,
    and `gpuwatch run` with it, its agent stuck at start) or a link to /dev/zero (read
    until memory ran out), and a FIFO as the silences file (`alerts silence` hung): the
    notes are quarantined, the silences file counts as none and is replaced."""
    spool = Spool(tmp_path / "slack-spool" / "rank0")
    spool.put(Note("raised", {"detector": "hang", "summary": "finding #7", "job": "gpt",
                              "fingerprint": "x", "verdict": "fix_here", "ranks": [0]}, 1.0))
    os.mkfifo(spool.directory / f"{'a' * 32}.json")
    (spool.directory / f"{'b' * 32}.json").symlink_to("/dev/zero")
    os.mkfifo(tmp_path / "slack-spool" / "silences.json")
    with webhook() as hook:
        flushed = run(gpuwatch_cmd("alerts", "flush", str(tmp_path)), cwd=tmp_path,
                      timeout=60, extra_env={"GPUWATCH_SLACK__WEBHOOK_URL": hook.url})
    assert flushed.returncode == 0, flushed.stdout + flushed.stderr
    assert delivered_numbers(hook.texts()) == [7] and "2 malformed" in flushed.stdout
    silenced = run(gpuwatch_cmd("alerts", "silence", str(tmp_path), "hang", "--for", "1h"),
                   cwd=tmp_path, timeout=60)
    assert silenced.returncode == 0, silenced.stderr
    assert (tmp_path / "slack-spool" / "silences.json").is_file()


def test_a_hanging_webhook_never_slows_the_training_step(tmp_path: Path) -> None:
    import gpuwatch

    with webhook(then="hang:30") as hook:
        monitor = gpuwatch.watch(out_dir=tmp_path / "run", exporter={"enabled": False},
                                 slack={"webhook_url": hook.url, "timeout_s": 1,
                                        "group_window_s": 0})
        with monitor.step():  # a lone process knows it is one once a step ends
            pass
        wait_for(lambda: monitor.agent.slack is not None, 5, "the agent to set up Slack")
        slack = monitor.agent.slack
        assert slack is not None
        slack.notify([finding(1)])
        wait_for(lambda: hook.attempts, 10, "the first attempt")
        start = time.monotonic()
        for _ in range(200):
            with monitor.step():
                time.sleep(0.005)
        loop = time.monotonic() - start
        stop_start = time.monotonic()
        monitor.stop()
        stopped_in = time.monotonic() - stop_start
    assert loop < 200 * 0.005 * 1.5  # 1 s of steps took about 1 s while Slack hung
    assert stopped_in < 2.0
    assert slack.pending() == 1  # undelivered: still spooled


KILLED = """
import sys, time
import gpuwatch
from tests.integration.test_slack import finding
monitor = gpuwatch.watch(out_dir=sys.argv[1], exporter={"enabled": False},
                         slack={"webhook_url": sys.argv[2], "group_window_s": 0})
from tests.wait import wait_for
with monitor.step():  # a lone process knows it is one once a step ends
    pass
wait_for(lambda: monitor.agent.slack is not None, 30, "the agent to set up Slack")
monitor.agent.slack.notify([finding(i, detector=f"d{i}") for i in range(3)])
print("spooled", flush=True)
time.sleep(60)
"""


def test_an_answer_trickled_a_byte_at_a_time_fails_at_the_request_s_deadline(
        tmp_path: Path) -> None:
    """urlopen's timeout bounds each read of a socket, not the request: an endpoint that
    answered a byte every 0.2 s held the sender (and the note's lock) for ever. The
    whole request has ``timeout_s``; then the post has failed, the note is still spooled
    and its lock is free."""
    with webhook(["trickle:0.2"]) as hook:
        n = notifier(hook.url, tmp_path, timeout_s=1.0)
        n.notify([finding(1)])
        n.start()
        wait_for(lambda: hook.attempts, 10, "the first attempt")
        wait_for(lambda: n.last_failure, 5, "the post to fail at its deadline")
        failed_after = time.monotonic() - hook.attempts[0][0]
        key = Note("raised", n._told(finding(1)), 0.0).key
        claim = n.ledger.claim([key])  # the note's lock was released
        assert claim.keys == [key]
        claim.release()
        n.stop()
    assert failed_after < 2.0
    assert n.pending() == 1 and n.delivered == 0


def test_a_message_sent_whole_and_never_answered_is_posted_again_late_and_at_most_3_times(
        tmp_path: Path) -> None:
    """An endpoint that takes each message and answers after the timeout (Slack may have
    posted it: a webhook has no idempotency key) got the same message three times in 6 s,
    at the failure cadence. It is sent again after 30 s, then 2 min, by whichever sender
    (a later flush too), and after three such posts counts as posted."""
    def aged(seconds: float) -> None:  # the last unanswered post was this long ago
        then = time.time() - seconds
        os.utime(tmp_path / "slack-spool" / "unanswered" / key, (then, then))

    key = Note("raised", {"fingerprint": "fp1", "first_seen": 1.0}, 0.0).key
    with webhook(then="hang:3") as hook:
        n = notifier(hook.url, tmp_path, timeout_s=0.5)
        n.notify([finding(1)])
        assert not n.flush(timeout=4)
        n.stop()
        assert len(hook.attempts) == 1  # not again within 4 s (a failure: after 1 s)
        assert n.last_failure is not None and "may have posted" in n.last_failure
        later = notifier(hook.url, tmp_path, timeout_s=0.5)  # another sender, at once
        assert not later.flush(timeout=1) and len(hook.attempts) == 1
        later.stop()
        aged(31)
        again = notifier(hook.url, tmp_path, timeout_s=0.5)
        again.start()
        wait_for(lambda: len(hook.attempts) == 2, 10, "the second post, 30 s after the first")
        wait_for(lambda: again.last_failure, 5, "the second post to go unanswered")
        aged(60)  # not yet: 2 min after the second
        assert not again.flush(timeout=1) and len(hook.attempts) == 2
        aged(121)
        assert again.flush(timeout=10)  # the third post, unanswered: counted as posted
        again.stop()
    assert len(hook.attempts) == 3 and again.unconfirmed == 1 and again.delivered == 0
    assert (tmp_path / "slack-spool" / "delivered" / key).exists()
    assert not (tmp_path / "slack-spool" / "unanswered" / key).exists()


def test_an_unanswered_post_the_disk_cannot_record_is_not_posted_again_at_once(
        tmp_path: Path) -> None:
    """The disk refuses the record of a post that went out whole and got no answer (full;
    here the record's directory is a file): the sender retried it every second, each
    one perhaps posted. It holds the note as long as if the record had been written."""
    (tmp_path / "slack-spool").mkdir()
    (tmp_path / "slack-spool" / "unanswered").write_bytes(b"")  # (every record refused)
    with webhook(then="hang:3") as hook:
        n = notifier(hook.url, tmp_path, timeout_s=0.5)
        n.notify([finding(1)])
        assert not n.flush(timeout=4)
        n.stop()
    assert len(hook.attempts) == 1
    assert n.last_failure is not None and "may have posted" in n.last_failure


def test_spooled_notes_survive_kill_and_are_delivered_once(tmp_path: Path) -> None:
    dead = "http://127.0.0.1:9/services/T0/B0/X"  # nothing listens: connection refused
    proc = subprocess.Popen([sys.executable, "-c", KILLED, str(tmp_path), dead],
                            stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "spooled"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(list((tmp_path / "slack-spool" / "rank0").glob("*.json"))) == 3
    with webhook() as hook:
        env = {"GPUWATCH_SLACK__WEBHOOK_URL": hook.url}
        flushed = run(gpuwatch_cmd("alerts", "flush", str(tmp_path)), cwd=tmp_path,
                      extra_env=env)
        assert flushed.returncode == 0, flushed.stderr
        again = run(gpuwatch_cmd("alerts", "flush", str(tmp_path)), cwd=tmp_path, extra_env=env)
        assert again.returncode == 0
    assert sorted(delivered_numbers(hook.texts())) == [0, 1, 2]  # once, not twice
    assert hook.url not in flushed.stdout + flushed.stderr


def test_concurrent_flushes_and_a_flush_during_the_job_post_each_note_once(
        tmp_path: Path) -> None:
    spool = Spool(tmp_path / "slack-spool" / "rank0")
    for i in range(40):
        spool.put(Note("raised", {"detector": f"d{i}", "summary": f"finding #{i}", "job": "gpt",
                                  "fingerprint": f"fp{i}", "verdict": "fix_here"}, float(i)))
    with webhook(then="hang:0.3") as hook:  # a slow Slack widens every race
        env = {k: v for k, v in os.environ.items() if not k.startswith("GPUWATCH_")}
        env.update(GPUWATCH_SLACK__WEBHOOK_URL=hook.url, GPUWATCH_SLACK__MAX_GROUP="5",
                   GPUWATCH_SLACK__MESSAGES_PER_SECOND="10")
        live = notifier(hook.url, tmp_path, max_group=5, messages_per_second=10)  # the job
        flushes = [subprocess.Popen(gpuwatch_cmd("alerts", "flush", str(tmp_path)), cwd=tmp_path,
                                    env=env, stdout=subprocess.PIPE, text=True)
                   for _ in range(3)]
        live.start()
        for proc in flushes:
            proc.wait(timeout=120)
        assert live.flush(timeout=30)
        live.stop()
    counts = Counter(delivered_numbers(hook.texts()))
    assert sorted(counts) == list(range(40)) and set(counts.values()) == {1}


# -- one sender per job: 8 ranks sharing a c10d TCPStore ----------------------------------

class Job:
    """8 rank processes (scripts/slack_rank.py) around a TCPStore served here."""

    def __init__(self, run_dirs: list[Path], url: str, world: int = 8,
                 group_window_s: float = 5.0) -> None:
        from torch.distributed import TCPStore

        self.store = TCPStore("127.0.0.1", 0, world, is_master=True,
                              timeout=timedelta(seconds=60), wait_for_workers=False)
        env = {k: v for k, v in os.environ.items() if not k.startswith("GPUWATCH_")}
        env.update(GPUWATCH_SLACK__WEBHOOK_URL=url,
                   GPUWATCH_SLACK__GROUP_WINDOW_S=str(group_window_s))
        self.ranks = [subprocess.Popen(
            [sys.executable, str(SCRIPTS / "slack_rank.py"),
             str(run_dirs[r * len(run_dirs) // world]), str(self.store.port), str(r),
             str(world)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
            env=env) for r in range(world)]
        for proc in self.ranks:
            assert self._line(proc) == "ready"

    @staticmethod
    def _line(proc: subprocess.Popen[str]) -> str:
        assert proc.stdout is not None
        return proc.stdout.readline().strip()

    def tell(self, command: str, ranks: range | list[int] | None = None) -> None:
        targets = [self.ranks[r] for r in (ranks if ranks is not None else range(8))]
        for proc in targets:
            assert proc.stdin is not None
            proc.stdin.write(command + "\n")
            proc.stdin.flush()
        for proc in targets:
            assert self._line(proc) == ("bye" if command == "exit" else "ok")

    def close(self) -> None:
        for proc in self.ranks:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(30)


@contextlib.contextmanager
def job(run_dirs: list[Path], url: str) -> Iterator[Job]:
    j = Job(run_dirs, url)
    try:
        yield j
    finally:
        j.close()


def ranks_told(hook: ScriptedWebhook) -> Counter[tuple[str, int]]:
    """(detector, rank) -> how many times Slack was told it was raised."""
    told: Counter[tuple[str, int]] = Counter()
    for text in hook.texts():
        for detector, ranks in re.findall(rf"\] (\w+) on gpt rank ([\d,{DASH}]+):", text):
            for part in ranks.split(","):
                lo, _, hi = part.partition(DASH)
                for r in range(int(lo), int(hi or lo) + 1):
                    told[(detector, r)] += 1
    return told


def test_eight_ranks_one_sender_one_message_per_finding(tmp_path: Path) -> None:
    with webhook() as hook, job([tmp_path], hook.url) as j:
        j.tell("raise data_starvation")
        wait_for(lambda: len(ranks_told(hook)) == 8, 30, "all 8 ranks' findings")
        j.tell("raise checkpoint_overhead", [0, 5])
        wait_for(lambda: len(ranks_told(hook)) == 10, 30, "the second finding")
        spools = list((tmp_path / "slack-spool").glob("rank*/*.json"))
        wait_for(lambda: not list((tmp_path / "slack-spool").glob("rank*/*.json")), 15,
                 f"the ranks to drop what rank 0 delivered ({len(spools)} left)")
        j.tell("exit")
    assert len(hook.attempts) == 2  # one message per finding, not one per rank
    assert set(ranks_told(hook).values()) == {1}
    assert f"ranks 0{DASH}7" in hook.delivered[0]["blocks"][1]["text"]["text"]


def test_leader_killed_mid_run_flush_over_both_nodes_delivers_each_note_once(
        tmp_path: Path) -> None:
    node_a, node_b = tmp_path / "node-a", tmp_path / "node-b"  # ranks 0-3 and 4-7
    with webhook() as hook:
        with job([node_a, node_b], hook.url) as j:
            j.tell("raise data_starvation")
            wait_for(lambda: len(ranks_told(hook)) == 8, 30, "rank 0 to send the first")
            j.tell("raise checkpoint_overhead")
            os.kill(j.ranks[0].pid, signal.SIGKILL)  # inside its 5 s group window: unsent
            j.ranks[0].wait(10)
            j.tell("exit", range(1, 8))
        assert len(hook.attempts) == 1
        env = {"GPUWATCH_SLACK__WEBHOOK_URL": hook.url}
        flushes = [subprocess.Popen(gpuwatch_cmd("alerts", "flush", str(node_a), str(node_b)),
                                    cwd=tmp_path, stdout=subprocess.PIPE, text=True,
                                    env={**{k: v for k, v in os.environ.items()
                                            if not k.startswith("GPUWATCH_")}, **env})
                   for _ in range(2)]  # two at once, over both nodes' directories
        assert all(proc.wait(120) in (0, 1) for proc in flushes)
        again = run(gpuwatch_cmd("alerts", "flush", str(node_a), str(node_b)), cwd=tmp_path,
                    extra_env=env)
        assert again.returncode == 0, again.stdout + again.stderr
    told = ranks_told(hook)
    assert {k for k in told if k[0] == "checkpoint_overhead"} == \
        {("checkpoint_overhead", r) for r in range(8)}
    assert set(told.values()) == {1}  # data_starvation not again, checkpoints once each


def test_alerts_silence_stops_reminders_for_one_finding(tmp_path: Path) -> None:
    with webhook() as hook:
        n = notifier(hook.url, tmp_path, repeat_interval_s=100.0)
        n.notify([finding(1), finding(2, detector="hang")])
        assert n.flush(timeout=10)
        silenced = run(gpuwatch_cmd("alerts", "silence", str(tmp_path), "fits_on_paper",
                                    "--for", "2h"), cwd=tmp_path)
        assert silenced.returncode == 0, silenced.stderr
        n.remind([finding(1), finding(2, detector="hang")], now=time.time() + 150)
        assert n.flush(timeout=10)
        n.stop()
        bad = run(gpuwatch_cmd("alerts", "silence", str(tmp_path), "no_such"), cwd=tmp_path)
        bad_for = run(gpuwatch_cmd("alerts", "silence", str(tmp_path), "hang", "--for", "x"),
                      cwd=tmp_path)
    assert bad.returncode == 2 and "unknown detector 'no_such'" in bad.stderr
    assert bad_for.returncode == 2 and "not a duration" in bad_for.stderr
    texts = hook.texts()
    assert len(texts) == 2 and "still active" in texts[1]
    assert delivered_numbers(texts) == [1, 2, 2]  # the silenced one was not repeated
    assert n.silenced == 1


def test_a_silence_ending_at_a_400_digit_time_silences_nothing_and_never_raises(
        tmp_path: Path) -> None:
    """silences.json holding an end no float holds: float() raised OverflowError, so
    `alerts silence` died with a traceback and, in a job, the first silence check raised
    inside notify() and the rest of its findings were never spooled."""
    root = tmp_path / "slack-spool"
    root.mkdir()
    (root / "silences.json").write_text('{"hang": 1' + "0" * 400 + ', "fits_on_paper": 1e400}')
    with webhook() as hook:
        n = notifier(hook.url, tmp_path)
        n.notify([finding(1, detector="hang"), finding(2), finding(3, detector="straggler")])
        assert n.flush(timeout=10)
        n.stop()
    assert sorted(delivered_numbers(hook.texts())) == [1, 2, 3] and n.silenced == 0
    silenced = run(gpuwatch_cmd("alerts", "silence", str(tmp_path), "straggler"), cwd=tmp_path)
    assert silenced.returncode == 0, silenced.stderr
    assert silenced.stderr == "" and silenced.stdout.count("\n") == 1
    assert json.loads((root / "silences.json").read_text()) == {"straggler": None}


def test_alerts_test_command_and_missing_or_broken_webhook(tmp_path: Path) -> None:
    with webhook() as hook:
        proc = run(gpuwatch_cmd("alerts", "test"), cwd=tmp_path,
                   extra_env={"GPUWATCH_SLACK__WEBHOOK_URL": hook.url})
    assert proc.returncode == 0, proc.stderr
    assert "test message from" in hook.texts()[0]
    missing = run(gpuwatch_cmd("alerts", "test"), cwd=tmp_path)
    assert missing.returncode == 2 and "no Slack webhook" in missing.stderr
    for refusal in ("404", "302"):  # a revoked webhook, a proxy's login page: not delivered
        with webhook(then=refusal) as hook:
            refused = run(gpuwatch_cmd("alerts", "test"), cwd=tmp_path,
                          extra_env={"GPUWATCH_SLACK__WEBHOOK_URL": hook.url})
        assert refused.returncode == 1 and "delivered" not in refused.stdout
        assert f"not delivered: the webhook answered HTTP {refusal}" in refused.stderr
    broken = run(gpuwatch_cmd("run", "--", sys.executable, "-c", "print('trained')"),
                 cwd=tmp_path, extra_env={"GPUWATCH_SLACK__WEBHOOK_URL": "hooks.slack.com/x/s3"})
    assert broken.returncode == 2 and "trained" not in broken.stdout
    assert broken.stderr.count("\n") == 1 and "https://" in broken.stderr
    assert "s3" not in broken.stderr


def test_webhook_url_is_never_written_to_the_run_log(tmp_path: Path) -> None:
    import gpuwatch

    with webhook() as hook:
        monitor = gpuwatch.watch(out_dir=tmp_path, exporter={"enabled": False},
                                 slack={"webhook_url": hook.url})
        with monitor.step():
            pass
        assert hook.url not in repr(monitor.agent.settings)
        assert agent_samples(tmp_path)[-1]["slack_in_process"] == 1.0  # alerts stay silent
        monitor.stop()
    log = (tmp_path / "run.jsonl").read_text()
    assert hook.url not in log and "/services/T0/B0/secret" not in log
    meta = json.loads(log.splitlines()[0])
    assert set(meta["detection"]) == {"detect_interval_s", "detectors", "target_gpu",
                                      "gpu_model", "total_steps", "prices", "owned",
                                      "electricity_usd_per_kwh", "precision",
                                      "move_min_time_gain"}


def agent_samples(run_dir: Path) -> list[dict[str, float]]:
    """The agent's own samples in a live run log, once there is one."""
    def read() -> list[dict[str, float]]:
        path = run_dir / "run.jsonl"
        lines = path.read_text().splitlines() if path.exists() else []
        return [r["values"] for r in map(json.loads, lines) if r.get("source") == "agent"]

    wait_for(read, 10, "an agent sample in the run log")
    return read()


def test_alertmanager_as_the_path_of_record_leaves_slack_to_it(tmp_path: Path) -> None:
    import gpuwatch

    with webhook() as hook:
        monitor = gpuwatch.watch(out_dir=tmp_path, exporter={"enabled": False},
                                 slack={"webhook_url": hook.url, "delivery": "alertmanager"})
        with monitor.step():
            pass
        assert agent_samples(tmp_path)[-1]["slack_in_process"] == 0.0
        monitor.stop()
    assert monitor.agent.slack is None and not hook.attempts


def test_a_real_gloo_job_sends_once_from_rank_0_through_the_agents(tmp_path: Path) -> None:
    from tests.integration.conftest import free_port

    world, port = 4, free_port()
    with webhook() as hook:
        procs = []
        for rank in range(world):
            env = {k: v for k, v in os.environ.items() if not k.startswith("GPUWATCH_")}
            env.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                       MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
            procs.append(subprocess.Popen(
                [sys.executable, str(SCRIPTS / "slack_gloo.py"), str(tmp_path), hook.url],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env))
        try:
            for proc in procs:
                assert proc.stdout is not None and proc.stdout.readline().strip() == "told"
            wait_for(lambda: any(f"rank 0{DASH}3" in t for t in hook.texts()), 60,
                     "rank 0 to send every rank's finding")
        finally:
            for proc in procs:
                assert proc.stdin is not None
                proc.stdin.close()
            for proc in procs:
                proc.wait(60)
    assert len(hook.attempts) == 1  # one message for the job, not one per rank
    assert "gloo-job" in hook.texts()[0]


def test_relay_hands_notes_to_rank_0_and_survives_a_store_that_fails() -> None:
    from torch.distributed import TCPStore

    from gpuwatch.sinks.slack_relay import StoreRelay

    store = TCPStore("127.0.0.1", 0, 2, is_master=True, timeout=timedelta(seconds=10),
                     wait_for_workers=False)
    got: list[Note] = []
    leader = StoreRelay(0, 2, lambda: store, deliver=got.append)
    sender = StoreRelay(1, 2, lambda: store)
    notes = [Note("raised", {"fingerprint": f"fp{i}", "detector": "hang"}, float(i))
             for i in range(3)]
    for note in notes:
        sender.publish(note)
    leader.exchange()  # nothing written yet: rank 0 never waits on a missing key
    assert got == []
    sender.exchange()
    leader.exchange()
    leader.exchange()  # read once, not again
    assert [n.key for n in got] == [n.key for n in notes]
    assert not store.check(["slack/1/0"])  # read notes leave the store

    errors: list[str] = []

    def broken() -> Any:
        raise ConnectionResetError("store gone with its job")

    relay = StoreRelay(1, 2, broken, on_error=errors.append, interval_s=0.05)
    relay.start()
    relay.publish(notes[0])
    wait_for(lambda: len(errors) >= 2, 10, "the relay to keep trying")
    relay.stop()
    assert all("ConnectionResetError" in e for e in errors)


NON_LEADER = """
import time
import gpuwatch
from tests.integration.test_slack import finding
monitor = gpuwatch.watch(exporter={"enabled": False})
from tests.wait import wait_for
with monitor.step():  # a lone process knows it is one once a step ends
    pass
wait_for(lambda: monitor.agent.slack is not None, 30, "the agent to set up Slack")
monitor.agent.slack.notify([finding(5, detector="hang")])
monitor.stop()
"""


def test_gpuwatch_run_delivers_what_rank_0_never_sent(tmp_path: Path) -> None:
    with webhook() as hook:  # rank 1 of 2, no store and no rank 0: it only spools
        proc = run(gpuwatch_cmd("run", "--out", str(tmp_path / "run"), "--", sys.executable,
                                "-c", NON_LEADER), cwd=ROOT, timeout=120,
                   extra_env={"GPUWATCH_SLACK__WEBHOOK_URL": hook.url, "RANK": "1",
                              "WORLD_SIZE": "2", "PYTHONPATH": os.environ.get("PYTHONPATH", "")})
    assert proc.returncode == 0, proc.stderr
    assert delivered_numbers(hook.texts()) == [5]  # by the end of the run, once
    assert not list((tmp_path / "run" / "slack-spool").glob("*/*.json"))
