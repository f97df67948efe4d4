"""The cluster route: a firing gpuwatch alert, sent to a real Alertmanager (Debian's
prometheus-alertmanager, on loopback) with the shipped deploy config, reaches a
Slack webhook (a local receiver) with the alert's summary and runbook."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from gpuwatch.config import Settings
from gpuwatch.detection.alerts import promtool_tests
from gpuwatch.detection.rules import load_rules
from tests.integration.conftest import ROOT, free_port, wait_until_up
from tests.wait import wait_for
from tests.webhook import webhook

pytestmark = pytest.mark.integration
ALERTMANAGER = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
AMTOOL = shutil.which("amtool")
RUNBOOK = Settings().runbook_url.get_secret_value()


def as_prometheus_sends(alertname: str) -> dict[str, Any]:
    """The alert exactly as Prometheus sends it for the generated rule (from its promtool
    test): labels and rendered annotations."""
    test = next(t for t in promtool_tests(load_rules(), RUNBOOK)["tests"]
                if t["alert_rule_test"][-1]["alertname"] == alertname)
    expected = test["alert_rule_test"][-1]["exp_alerts"][0]
    return {"labels": {"alertname": alertname, **expected["exp_labels"]},
            "annotations": expected["exp_annotations"],
            "startsAt": datetime.now(UTC).isoformat()}


def test_an_info_verdict_goes_to_the_null_receiver_and_jobs_group_by_namespace() -> None:
    """Routed by verdict as the in-process notifier is: a move at info severity (the
    time to finish on a faster card) reaches Slack."""
    config = str(ROOT / "deploy" / "alertmanager" / "alertmanager.yml")
    for labels, receiver in ((["severity=info", "verdict=info"], "null"),
                             (["severity=warning", "verdict=info"], "null"),
                             (["severity=info", "verdict=move_to_h100"], "slack"),
                             (["severity=warning", "verdict=fix_here"], "slack"),
                             (["severity=critical", "alertname=GpuwatchRunVanished"], "slack")):
        routed = subprocess.run([AMTOOL or "amtool", "config", "routes", "test",
                                 f"--config.file={config}", *labels],
                                capture_output=True, text=True)
        assert routed.stdout.strip() == receiver, (labels, routed.stdout, routed.stderr)
    route = yaml.safe_load(Path(config).read_text())["route"]
    assert route["group_by"] == ["namespace", "training_job"]


def test_firing_gpuwatch_alert_is_routed_to_slack(tmp_path: Path) -> None:
    assert ALERTMANAGER, "Debian's prometheus-alertmanager is required (.ci/run installs it)"
    rule = load_rules()["fits_on_paper"]
    with webhook() as hook:
        secret = tmp_path / "slack_webhook_url"
        secret.write_text(hook.url + "\n")
        config = yaml.safe_load((ROOT / "deploy" / "alertmanager" / "alertmanager.yml").read_text())
        slack = next(r for r in config["receivers"] if r["name"] == "slack")
        slack["slack_configs"][0]["api_url_file"] = str(secret)
        config["route"]["group_wait"] = "1s"
        (tmp_path / "am.yml").write_text(yaml.safe_dump(config))
        port = free_port()
        proc = subprocess.Popen(
            [ALERTMANAGER, f"--config.file={tmp_path / 'am.yml'}",
             f"--storage.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
             "--cluster.listen-address="],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            api = f"http://127.0.0.1:{port}/api/v2"
            wait_until_up(f"{api}/status")
            hostile = as_prometheus_sends("GpuwatchFitsOnPaper")
            hostile["labels"] = {**hostile["labels"], "training_job": "<!channel> & team"}
            del hostile["labels"]["namespace"]  # (compose: no Kubernetes namespace)
            hostile["annotations"] = {**hostile["annotations"],
                                      "summary": "on <!channel> & team rank 0"}
            alert = [as_prometheus_sends("GpuwatchFitsOnPaper"),
                     as_prometheus_sends("GpuwatchUnderutilised"),  # info: not to Slack
                     hostile]
            request = urllib.request.Request(f"{api}/alerts", data=json.dumps(alert).encode(),
                                             headers={"Content-Type": "application/json"},
                                             method="POST")
            assert urllib.request.urlopen(request, timeout=5).status == 200
            wait_for(lambda: len(hook.delivered) >= 2, 30,
                     "Alertmanager calling the Slack webhook for both jobs", poll_s=0.2)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    assert hook.delivered, "Alertmanager never called the Slack webhook"
    payload = json.dumps(hook.delivered)
    assert "GpuwatchFitsOnPaper" in payload and "move_to_h100" in payload
    assert rule.title in payload and f"{RUNBOOK}#fits_on_paper" in payload
    assert "GpuwatchUnderutilised" not in payload
    assert "gpt: 1 gpuwatch alert(s) (ml)" in payload  # the job's group, named
    # a job named to ping the channel pings nobody; no empty "()" without a namespace;
    # the summary, description and runbook on lines of their own
    assert "<!channel>" not in payload
    (other,) = [a for m in hook.delivered for a in m["attachments"]
                if "&lt;!channel&gt;" in a["title"]]
    assert other["title"] == "&lt;!channel&gt; &amp; team: 1 gpuwatch alert(s)"
    assert "on &lt;!channel&gt; &amp; team rank 0\n" in other["text"]
    assert "\nRunbook: " in other["text"]
