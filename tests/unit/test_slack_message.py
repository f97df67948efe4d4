"""What a Slack message says (readable in two seconds, escaped, within Block Kit's
limits), and the spool's guarantees: identity, durability, quarantine, locks."""

from __future__ import annotations

import json
import math
import multiprocessing
import urllib.parse
from pathlib import Path
from typing import Any

import pytest

from gpuwatch.config import ConfigError, load_settings, webhook_problem
from gpuwatch.sinks.slack import TokenBucket, retry_after_seconds
from gpuwatch.sinks.slack_message import (
    DASH,
    TIMES,
    cut,
    dashboard_link,
    evidence_lines,
    message,
    projection_line,
)
from gpuwatch.sinks.slack_spool import Ledger, Note, Silences, Spool, silence
from tests.disk import full_disk

ROOT = Path(__file__).resolve().parents[2]

FINDING: dict[str, Any] = {
    "detector": "data_starvation", "verdict": "fix_here", "severity": "warning",
    "summary": "Rank 3 waits for data 97% of each step.", "action": "Add DataLoader workers.",
    "evidence": {"data_share_ratio": 0.9743, "data_seconds_per_step": 0.076,
                 "step_seconds": 0.078, "workers": 2.0, "workers_cpu_ratio": 0.99},
    "ranks": [3], "job": "gpt-1b", "fingerprint": "abc", "first_seen": 100.0}
PROJECTION = {"target": "H100 SXM", "step_seconds_now": 0.078, "step_seconds_projected": 0.041,
              "speedup_ratio": 1.9, "cost_per_step_target_usd": 0.0021,
              "cost_per_step_now_usd": 0.0009}


def texts(body: dict[str, Any]) -> list[str]:
    """Every string Slack would render from a message."""
    out = [body["text"]]

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "text" and isinstance(value, str):
                    out.append(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(body["blocks"])
    return out


def test_evidence_reads_as_labelled_values_with_units() -> None:
    lines = dict(evidence_lines(FINDING["evidence"]))
    assert lines["Data wait"] == "97% of step, 76 ms of 78 ms"
    assert lines["Loader workers"] == "2, 99% busy"
    unknown = dict(evidence_lines({"queue_depth_bytes": 3.2e9, "mystery_total": 12.0,
                                   "odd": float("nan")}))
    assert unknown == {"Queue depth": "3.2 GB", "Mystery": "12", "Odd": "nan"}


def test_a_raised_message_has_header_summary_evidence_projection_action_and_link() -> None:
    f = {**FINDING, "projection": PROJECTION}
    body = message([("raised", f)], grafana_url="https://grafana.example/")
    header, section, fields, context = body["blocks"]
    assert header["text"]["text"] == ":wrench: Fix it here: data_starvation on gpt-1b"
    text = section["text"]["text"]
    assert "Rank 3 waits for data 97% of each step." in text
    assert (f"*Projection:* Step 78 ms now → 41 ms on H100 SXM (1.9{TIMES} faster); "
            "cost per step $0.0009 → $0.0021") in text
    assert "*What to do:* Add DataLoader workers." in text
    assert "*Data wait*\n97% of step, 76 ms of 78 ms" in [x["text"] for x in fields["fields"]]
    assert ("https://grafana.example/d/gpuwatch-job?var-training_job=gpt-1b&amp;var-rank=3|dashboard"
            in context["elements"][0]["text"])
    assert body["text"].startswith("gpuwatch: [fix_here] data_starvation on gpt-1b rank 3:")


def test_projection_shows_the_range_and_cost_per_million_tokens() -> None:
    ranged = {**PROJECTION, "speedup_low_ratio": 1.6, "speedup_high_ratio": 2.2,
              "unit": "1M tokens", "cost_per_unit_now_usd": 0.22,
              "cost_per_unit_target_worst_usd": 0.51}
    assert projection_line(ranged) == (
        f"Step 78 ms now → 41 ms on H100 SXM (1.6{DASH}2.2{TIMES} (1.9{TIMES} at the middle) "
        "faster); cost per 1M tokens $0.22 → $0.51 at the low end")
    bare = {"target": "H100 SXM", "speedup_ratio": 1.3}  # a projection from an older log
    assert projection_line(bare) == f"On H100 SXM (1.3{TIMES} faster)"
    assert projection_line({"target": "H100", "assumptions": ["x"]}) is None


def test_hostile_job_names_are_escaped_everywhere() -> None:
    hostile = {**FINDING, "job": "<!channel> & <@U123>", "summary": "x <!here> y",
               "action": "<https://evil|click>", "detector": "<b>", "ranks": [0, "<!x>"],
               "evidence": {"<!everyone>": 1.0}, "projection": {"target": "<!channel>",
                                                               "speedup_ratio": 2.0}}
    for kind in ("raised", "reminder", "resolved"):
        body = message([(kind, hostile)], grafana_url="https://g")
        for text in texts(body):
            stripped = text.replace("<https://g/d/gpuwatch-job?", "")  # our own link
            assert "<!" not in stripped and "<@" not in stripped and "<https://evil" not in text
        assert "&lt;!channel&gt; &amp; &lt;@U123&gt;" in body["blocks"][0]["text"]["text"]


def test_block_kit_limits_hold_and_text_is_cut_at_a_word() -> None:
    long = {**FINDING, "job": "j" * 400, "summary": "word " * 2000, "action": "act " * 2000,
            "evidence": {f"metric_{i}_seconds": float(i) for i in range(40)}}
    body = message([("raised", {**long, "detector": f"d{i}", "ranks": [i]}) for i in range(60)])
    blocks = body["blocks"]
    assert len(blocks) <= 50
    assert len(blocks[0]["text"]["text"]) <= 150
    for block in blocks:
        if block["type"] == "section":
            if "text" in block:
                assert len(block["text"]["text"]) <= 3000
            assert len(block.get("fields", [])) <= 10
    # the 50 past the blocks' ten: listed a line each as far as a section holds, the
    # rest counted
    rest = blocks[-1]["text"]["text"]
    assert rest.startswith("*50 more:*\n• ") and "d10 on" in rest
    assert "more (the run's findings.json has them all)" in rest
    few = message([("raised", {**FINDING, "detector": f"d{i}", "ranks": [i],
                               "fingerprint": f"f{i}", "summary": f"s{i}"})
                   for i in range(14)])
    listed = few["blocks"][-1]["text"]["text"]
    assert [f"d{i}" for i in range(10, 14) if f"d{i} on" in listed] == ["d10", "d11", "d12",
                                                                        "d13"]
    assert "findings.json" not in listed  # all four shown: nothing left to count
    assert cut("alpha beta gamma", 12) == "alpha beta…"
    assert cut("a &amp; b", 5) == "a…"  # never half an escape


def test_the_same_detector_on_eight_ranks_is_one_note_naming_all_ranks() -> None:
    body = message([("raised", {**FINDING, "ranks": [r], "fingerprint": f"fp{r}"})
                    for r in range(8)])
    assert len([b for b in body["blocks"] if b["type"] == "section" and "text" in b]) == 1
    assert f"ranks 0{DASH}7" in body["blocks"][1]["text"]["text"]
    unlike = message([("raised", {**FINDING, "ranks": [r], "fingerprint": f"fp{r}",
                                  "summary": f"Rank {r} waited {r + 180} s in a collective"})
                      for r in range(3)]
                     + [("raised", {**FINDING, "ranks": [3], "fingerprint": "fp3",
                                    "summary": "Rank 3 is not in a collective"})])
    sections = [b["text"]["text"] for b in unlike["blocks"]
                if b["type"] == "section" and "text" in b]
    assert len(sections) == 2 and "Rank 3 is not in a collective" in sections[1]
    assert dashboard_link("http://g", {"job": "a b", "ranks": [1, 2]}) == \
        "http://g/d/gpuwatch-job?var-training_job=a+b&var-rank=1&var-rank=2"


def test_the_dashboard_link_fills_variables_the_job_dashboard_has() -> None:
    """Grafana ignores a ``var-`` it does not know, opening every job blended: each
    variable the link sets must be one of the shipped job dashboard's."""
    link = dashboard_link("http://g", {"job": "gpt", "run": "gpt-1f2e", "ranks": [0, 3]})
    path, _, query = link.partition("?")
    board = json.loads((ROOT / "dashboards" / "gpuwatch-job.json").read_text())
    assert path.endswith(f"/d/{board['uid']}")
    names = {v["name"] for v in board["templating"]["list"]}
    sets = urllib.parse.parse_qs(query)
    assert {k.removeprefix("var-") for k in sets} <= names
    assert sets == {"var-training_job": ["gpt"], "var-run": ["gpt-1f2e"],
                    "var-rank": ["0", "3"]}


def test_note_identity_is_fingerprint_episode_and_state() -> None:
    raised = Note("raised", FINDING, 1.0)
    assert raised.key == Note("raised", FINDING, 999.0).key  # another rank, later: same news
    assert raised.key != Note("resolved", FINDING, 1.0).key
    assert raised.key != Note("raised", {**FINDING, "first_seen": 500.0}, 1.0).key  # new episode
    assert Note("reminder", FINDING, 1.0, 1).key != Note("reminder", FINDING, 1.0, 2).key


def test_malformed_spool_files_are_quarantined_and_counted(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "slack-spool" / "rank0")
    good = spool.put(Note("raised", FINDING, 1.0))
    bad = {"0.json": b"{not json", "1.json": b"\xff\xfe", "2.json": b"[]",
           "3.json": json.dumps({"kind": "raised", "finding": "x", "created": 1}).encode(),
           "4.json": json.dumps({"kind": "boom", "finding": {}, "created": 1}).encode(),
           "5.json": b'{"kind": "raised", "finding": {}, "created": NaN}',
           "6.json": b"[" * 100_000, "7.json": b" " * (2 << 20),
           "8.json": b'{"kind": "raised", "finding": {}, "created": 1' + b"0" * 400 + b"}"}
    for name, data in bad.items():
        (spool.directory / name).write_bytes(data)
    assert [p for p, _ in spool.pending()] == [good]
    assert spool.quarantined == len(bad)
    assert sorted(p.name for p in (tmp_path / "slack-spool" / "quarantine").iterdir()) == \
        sorted(f"rank0-{n}" for n in bad)


def test_a_write_to_a_full_disk_fails_and_leaves_nothing_behind(tmp_path: Path) -> None:
    with full_disk(tmp_path / "disk") as filler:
        spool = Spool(filler.parent / "rank0")
        with pytest.raises(OSError):
            spool.put(Note("raised", FINDING, 1.0))
        assert list(spool.directory.iterdir()) == []
        assert spool.pending() == []
        filler.unlink()
        spool.put(Note("raised", FINDING, 1.0))  # room again: written, and whole
        assert [n.finding for _, n in spool.pending()] == [FINDING]


def _try_claim(root: str, key: str, queue: Any) -> None:
    queue.put(Ledger([Path(root)]).claim([key]).keys)


def test_a_claimed_note_cannot_be_claimed_by_another_process(tmp_path: Path) -> None:
    ledger = Ledger([tmp_path])
    claim = ledger.claim(["k1", "k2"])
    assert claim.keys == ["k1", "k2"]
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_try_claim, args=(str(tmp_path), "k1", queue))
    proc.start()
    assert queue.get(timeout=60) == []  # held here: the other sender leaves it
    proc.join(60)
    ledger.mark(["k1"])
    assert not (tmp_path / "locks" / "k1.lock").exists()  # delivered: no lock file kept
    claim.release()
    assert ledger.claim(["k1"]).keys == []  # delivered: nobody posts it again
    assert ledger.claim(["k2"]).keys == ["k2"]  # released by the first claim


def test_silences_from_the_run_directory_and_the_setting(tmp_path: Path) -> None:
    silence(tmp_path, "hang", 60.0, now=1000.0)
    silence(tmp_path, "straggler", None)
    s = Silences(tmp_path / "slack-spool", always=["fits_on_paper"])
    assert s.silenced("hang", now=1059.0) and not s.silenced("hang", now=1061.0)
    assert s.silenced("straggler") and s.silenced("fits_on_paper")
    assert not s.silenced("data_starvation")
    (tmp_path / "slack-spool" / "silences.json").write_text("garbage")
    assert not Silences(tmp_path / "slack-spool").silenced("straggler")
    (tmp_path / "slack-spool" / "silences.json").write_text('{"a":' * 100_000)  # (too deep)
    assert not Silences(tmp_path / "slack-spool").silenced("straggler")
    silence(tmp_path, "hang", None)  # a damaged file is replaced, never a traceback
    assert Silences(tmp_path / "slack-spool").silenced("hang")


@pytest.mark.parametrize("until", ["1" + "0" * 400, "1e400", "-1e400", "NaN", "true", '"x"'])
def test_a_silence_whose_end_no_float_holds_silences_nothing_and_never_raises(
        tmp_path: Path, until: str) -> None:
    (tmp_path / "slack-spool").mkdir()
    (tmp_path / "slack-spool" / "silences.json").write_text(
        f'{{"hang": {until}, "straggler": null}}')
    s = Silences(tmp_path / "slack-spool")
    assert not s.silenced("hang") and s.silenced("straggler")
    silence(tmp_path, "data_starvation", 60.0, now=1000.0)  # the unreadable end is dropped
    assert json.loads((tmp_path / "slack-spool" / "silences.json").read_text()) == \
        {"data_starvation": 1060.0, "straggler": None}


@pytest.mark.parametrize(("raw", "seconds"), [
    ("2", 2.0), (["3"], 3.0), ("inf", 300.0), ("-inf", 1.0), ("nan", 1.0), ("-5", 1.0),
    ("1e308", 300.0), ("garbage", 1.0), (None, 1.0), ("", 1.0),
    ("Wed, 21 Oct 2015 07:28:00 GMT", 1.0)])
def test_retry_after_is_clamped_whatever_the_header_says(raw: object, seconds: float) -> None:
    value = retry_after_seconds(raw)
    assert math.isfinite(value) and value == seconds


def test_webhooks_that_cannot_work_are_one_line_errors_without_the_url(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for url in ("hooks.slack.com/services/T/B/secret", "ftp://h/services/secret",
                "https://hooks.slack.com", "https://hooks.slack.com/services/T/B/se cret",
                "https://[::1/services/secret", "http://hooks.slack.com/services/T/B/secret",
                "http://relay.example:8080/services/T/B/secret",
                "http://127.0.0.1.evil.example/services/T/B/secret",
                "http://127.attacker.example/services/T/B/secret"):
        assert webhook_problem(url) is not None
        with pytest.raises(ConfigError) as err:
            load_settings(slack={"webhook_url": url})
        assert "secret" not in str(err.value) and "\n" not in str(err.value)
        assert "***" not in str(err.value)  # (no example the redactor takes for a secret)
    # plain http only to this machine (a local relay; the tests' own endpoint)
    assert [webhook_problem(u) for u in ("http://127.0.0.1:8080/services/x",
                                         "http://localhost/hook", "http://[::1]:9/h")] \
        == [None, None, None]
    assert webhook_problem("https://hooks.slack.com/services/T/B/x") is None
    with pytest.raises(ConfigError, match="webhook_url_file: cannot read it"):
        load_settings(slack={"webhook_url_file": str(tmp_path / "missing")})
    assert load_settings().slack.in_process() is False  # no webhook: Alertmanager's job
    assert load_settings(slack={"webhook_url": "https://h/s/x"}).slack.in_process()
    assert not load_settings(slack={"webhook_url": "https://h/s/x",
                                    "delivery": "alertmanager"}).slack.in_process()


def test_token_bucket_allows_one_message_per_interval() -> None:
    now = [100.0]
    bucket = TokenBucket(rate=1.0, clock=lambda: now[0])
    assert bucket.wait() == 0
    bucket.take()
    assert bucket.wait() == 1.0
    now[0] += 0.4
    assert abs(bucket.wait() - 0.6) < 1e-9
    now[0] += 5
    bucket.take()
    assert bucket.wait() == 1.0  # no burst saved up while idle


def test_evidence_no_line_names_is_shown_in_its_own_unit() -> None:
    """A time of day is a date, not "1.97e+04 days"; a speedup a factor, not "237%"."""
    shown = dict(evidence_lines({"last_progress_time_seconds": 1_700_000_000.0,
                                 "speedup_ratio": 2.37, "gpu_power_watts": 140.2,
                                 "stalled_seconds": 180.0}))
    assert shown["Last progress"] == "2023-11-14 22:13 UTC"
    assert shown["Speedup"] == "2.4\u00d7" and shown["Gpu power"] == "140 W"
    assert shown["Stalled"] == "3 min"
    per_step = dict(evidence_lines({"transfer_seconds_per_step": 1.174,
                                    "p2p_bytes_per_step": 4e8, "slow_ranks": 2.0}))
    assert per_step["Transfer per step"] == "1.17 s"
    assert per_step["P2p per step"] == "400 MB" and per_step["Slow ranks"] == "2"


def test_a_link_through_host_memory_shows_the_rate_its_seconds_are_at() -> None:
    """"Link 63 GB/s ... Link per step 1.52 s" read as a contradiction (3 GB at 63 GB/s
    is 48 ms): the seconds are at the host-staged rate, which the line now gives."""
    lines = dict(evidence_lines({"link_bytes_per_second": 63e9,
                                 "staged_bytes_per_second": 1.97e9,
                                 "link_seconds_per_step": 1.52}))
    assert lines == {"Link": "63 GB/s; through host memory 1.97 GB/s a GPU, 1.52 s a step"}
