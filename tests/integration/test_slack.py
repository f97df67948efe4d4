"""Slack delivery against a real HTTP endpoint on 127.0.0.1 that answers from a script:
nothing lost, nothing repeated, rate-limited, Retry-After honoured, a hanging or
dead webhook never slows training, and spooled notes survive a killed process."""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gpuwatch.records import Finding
from gpuwatch.sinks.slack import SlackNotifier
from tests.integration.conftest import gpuwatch_cmd, run
from tests.webhook import webhook

pytestmark = pytest.mark.integration


def finding(i: int, verdict: str = "move_to_h100", state: str = "active") -> Finding:
    return Finding(detector="fits_on_paper", verdict=verdict, severity="warning",  # type: ignore[arg-type]
                   summary=f"finding #{i}", action="move it", evidence={"memory_peak_ratio": 0.97},
                   ranks=[i % 8], first_seen=0.0, last_seen=0.0, fingerprint=f"fp{i}",
                   job="gpt", projection={"target": "H100 SXM", "speedup_ratio": 1.9,
                                          "cost_per_step_target_usd": 0.002},
                   state=state)  # type: ignore[arg-type]


def notifier(url: str, tmp_path: Path, **kw: object) -> SlackNotifier:
    defaults: dict[str, object] = {"group_window_s": 0.2, "timeout_s": 2.0}
    return SlackNotifier(url, tmp_path / "spool", **{**defaults, **kw})  # type: ignore[arg-type]


def delivered_numbers(texts: list[str]) -> list[int]:
    return [int(n) for text in texts for n in re.findall(r"finding #(\d+)", text)]


def gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(times)]


def test_burst_of_1000_is_folded_rate_limited_and_fully_delivered(tmp_path: Path) -> None:
    with webhook(["500", "500", "reset"]) as hook:  # down for a while, then recovers
        n = notifier(hook.url, tmp_path, max_group=50)
        n.start()
        burst = [finding(i % 250) for i in range(1000)]  # 250 distinct, each 4 times
        n.notify(burst)
        assert n.flush(timeout=90)
        n.stop()
        attempts = [t for t, _ in hook.attempts]
    numbers = delivered_numbers(hook.texts())
    assert sorted(numbers) == list(range(250))  # every distinct finding, exactly once: 0 lost
    assert all(g >= 0.95 for g in gaps(attempts))  # at most one message a second leaves
    assert len(hook.delivered) == 5  # grouped: 250 findings in messages of up to 50
    assert n.delivered == 250 and n.spool.pending() == []


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
    with webhook(["500", "500", "500"]) as hook:
        n = notifier(hook.url, tmp_path)
        n.notify([finding(1)])
        assert n.flush(timeout=30)
        n.stop()
    g = gaps([t for t, _ in hook.attempts])
    assert len(g) == 3
    assert g[0] >= 0.8 and g[1] >= 1.6 and g[2] >= 3.2  # 1, 2, 4 s, each x 0.8..1.2
    assert g[2] > g[0]


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


def test_duplicates_fold_reminders_repeat_and_resolved_follow(tmp_path: Path) -> None:
    with webhook() as hook:
        n = notifier(hook.url, tmp_path, repeat_interval_s=100.0)
        n.start()
        n.notify([finding(1), finding(1), finding(2, verdict="info")])  # info: not for Slack
        n.remind([finding(1)], now=time.time() + 50)  # too early to repeat
        assert n.flush(timeout=10)
        n.remind([finding(1)], now=time.time() + 150)
        assert n.flush(timeout=10)
        n.notify([finding(1, state="resolved")])
        assert n.flush(timeout=10)
        n.stop()
    texts = hook.texts()
    assert len(texts) == 3
    assert "still active" in texts[1] and "RESOLVED" in texts[2]
    assert delivered_numbers(texts) == [1, 1, 1]


def test_a_hanging_webhook_never_slows_the_training_step(tmp_path: Path) -> None:
    import gpuwatch

    with webhook(then="hang:30") as hook:
        monitor = gpuwatch.watch(out_dir=tmp_path / "run", exporter={"enabled": False},
                                 slack={"webhook_url": hook.url, "timeout_s": 1,
                                        "group_window_s": 0})
        with monitor.step():  # a lone process knows it is one once a step ends
            pass
        slack = monitor.agent.slack
        deadline = time.monotonic() + 5
        while slack is None and time.monotonic() < deadline:  # set up on the agent thread
            time.sleep(0.05)
            slack = monitor.agent.slack
        assert slack is not None
        slack.notify([finding(1)])
        while not hook.attempts:
            time.sleep(0.05)
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
    assert len(slack.spool.pending()) == 1  # undelivered: still spooled


KILLED = """
import sys, time
import gpuwatch
from tests.integration.test_slack import finding
monitor = gpuwatch.watch(out_dir=sys.argv[1], exporter={"enabled": False},
                         slack={"webhook_url": sys.argv[2], "group_window_s": 0})
while monitor.agent.slack is None:
    time.sleep(0.05)
monitor.agent.slack.notify([finding(i) for i in range(3)])
print("spooled", flush=True)
time.sleep(60)
"""


def test_spooled_notes_survive_kill_and_are_delivered_once_on_restart(tmp_path: Path) -> None:
    dead = "http://127.0.0.1:9/services/T0/B0/X"  # nothing listens: connection refused
    proc = subprocess.Popen([sys.executable, "-c", KILLED, str(tmp_path), dead],
                            stdout=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[2])
    assert proc.stdout is not None and proc.stdout.readline().strip() == "spooled"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    spooled = list((tmp_path / "slack-spool" / "rank0").glob("*.json"))
    assert len(spooled) == 3
    with webhook() as hook:  # the next start on the same run directory delivers
        env = {"GPUWATCH_SLACK__WEBHOOK_URL": hook.url, "GPUWATCH_SLACK__GROUP_WINDOW_S": "0"}
        flushed = run(gpuwatch_cmd("alerts", "flush", str(tmp_path)), cwd=tmp_path,
                      extra_env=env)
        assert flushed.returncode == 0, flushed.stderr
        again = run(gpuwatch_cmd("alerts", "flush", str(tmp_path)), cwd=tmp_path, extra_env=env)
        assert again.returncode == 0
    assert sorted(delivered_numbers(hook.texts())) == [0, 1, 2]  # once, not twice
    assert hook.url not in flushed.stdout + flushed.stderr


def test_alerts_test_command_and_missing_webhook(tmp_path: Path) -> None:
    with webhook() as hook:
        proc = run(gpuwatch_cmd("alerts", "test"), cwd=tmp_path,
                   extra_env={"GPUWATCH_SLACK__WEBHOOK_URL": hook.url})
    assert proc.returncode == 0, proc.stderr
    assert "test message from" in hook.texts()[0]
    missing = run(gpuwatch_cmd("alerts", "test"), cwd=tmp_path)
    assert missing.returncode == 2 and "no Slack webhook" in missing.stderr


def test_webhook_url_is_never_written_to_the_run_log(tmp_path: Path) -> None:
    import gpuwatch

    with webhook() as hook:
        monitor = gpuwatch.watch(out_dir=tmp_path, exporter={"enabled": False},
                                 slack={"webhook_url": hook.url})
        with monitor.step():
            pass
        assert hook.url not in repr(monitor.agent.settings)
        monitor.stop()
    log = (tmp_path / "run.jsonl").read_text()
    assert hook.url not in log and "/services/T0/B0/secret" not in log
    meta = json.loads(log.splitlines()[0])
    assert set(meta["detection"]) == {"detect_interval_s", "detectors", "target_gpu",
                                      "gpu_model", "total_steps", "prices"}
