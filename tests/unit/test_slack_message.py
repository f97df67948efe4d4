"""What a Slack message says: Block Kit with a plain-text fallback, evidence with units,
the projection, what to do, the Grafana link, and the resolved variant."""

from __future__ import annotations

from gpuwatch.sinks.slack import Note, Spool, TokenBucket, message

FINDING = {"detector": "fits_on_paper", "verdict": "move_to_h100", "severity": "warning",
           "summary": "Memory is the constraint on rank 3.", "action": "Move this job to H100.",
           "evidence": {"memory_peak_ratio": 0.973, "alloc_retries_total": 12.0},
           "ranks": [3], "job": "gpt-1b", "fingerprint": "abc",
           "projection": {"target": "H100 SXM", "speedup_ratio": 2.31,
                          "cost_per_step_target_usd": 0.0021, "cost_per_step_now_usd": 0.0009}}


def test_a_raised_finding_message_has_everything_to_act_on() -> None:
    body = message([Note("raised", FINDING, 0.0)], grafana_url="http://grafana/d/gpuwatch-migrate")
    assert body["text"].startswith("gpuwatch: [move_to_h100] fits_on_paper on gpt-1b rank 3")
    blocks = body["blocks"]
    assert blocks[0]["type"] == "header"
    section = blocks[1]["text"]["text"]
    assert "Move to H100" in section and "Memory is the constraint" in section
    assert "*What to do:* Move this job to H100." in section
    fields = [f["text"] for f in blocks[2]["fields"]]
    assert "*memory_peak_ratio*\n0.973" in fields and "*alloc_retries_total*\n12" in fields
    context = blocks[3]["elements"][0]["text"]
    assert "job `gpt-1b`" in context and "ranks 3" in context
    assert "on H100 SXM: 2.31x faster, $0.0021/step (now $0.0009/step)" in context
    assert blocks[-1]["elements"][0]["url"] == "http://grafana/d/gpuwatch-migrate"


def test_resolved_and_grouped_messages() -> None:
    resolved = message([Note("resolved", FINDING, 0.0)])
    assert resolved["text"].startswith("gpuwatch: RESOLVED: [move_to_h100] fits_on_paper")
    assert "Resolved: fits_on_paper" in resolved["blocks"][1]["text"]["text"]
    assert "What to do" not in resolved["blocks"][1]["text"]["text"]
    many = message([Note("raised", {**FINDING, "summary": f"s{i}"}, 0.0) for i in range(14)])
    assert many["text"].splitlines()[0] == "gpuwatch: 14 findings on gpt-1b"
    assert len(many["text"].splitlines()) == 15  # every finding in the fallback text
    assert "+4 more" in many["blocks"][-1]["elements"][0]["text"]
    assert len(many["blocks"]) <= 50  # Slack's limit


def test_spool_round_trip_and_bad_files_set_aside(tmp_path) -> None:  # type: ignore[no-untyped-def]
    spool = Spool(tmp_path)
    a = spool.put(Note("raised", FINDING, 1.0))
    spool.put(Note("resolved", FINDING, 2.0))
    (tmp_path / "0-corrupt.json").write_text("{not json")
    pending = spool.pending()
    assert [n.kind for _, n in pending] == ["raised", "resolved"]
    assert (tmp_path / "0-corrupt.bad").exists()
    spool.remove([a])
    assert [n.kind for _, n in spool.pending()] == ["resolved"]


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
