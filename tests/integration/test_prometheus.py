"""A real training run scraped by a real Prometheus (Debian's `prometheus`, started
here on a loopback port): every dashboard query parses and runs, the panels a CPU
run can fill have data, and the generated alerting rules load and fire."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gpuwatch.dashboards import DASHBOARDS
from tests.integration.conftest import ROOT, free_port, gpuwatch_cmd, wait_until_up

pytestmark = pytest.mark.integration
PROMETHEUS = shutil.which("prometheus")


def get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


@pytest.fixture
def training(tmp_path: Path) -> Iterator[int]:
    """A monitored CPU run (DataLoader workers, a checkpoint every step: a finding)."""
    port = free_port()
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("GPUWATCH_")}
    env.update(GPUWATCH_EXPORTER__PORT=str(port), GPUWATCH_JOB="promtest")
    proc = subprocess.Popen(
        gpuwatch_cmd("run", "--out", str(tmp_path / "run"), "--", sys.executable,
                     str(ROOT / "examples" / "plain_train.py"), "--seconds", "75",
                     "--workers", "2", "--ckpt-every", "1"),
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture
def prometheus(tmp_path: Path, training: int) -> Iterator[str]:
    assert PROMETHEUS, "Debian's prometheus package is required (.ci/run installs it)"
    port = free_port()
    rules = ROOT / "detectors" / "prometheus" / "gpuwatch.rules.yaml"
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"rule_files: ['{rules}']\n"
        "scrape_configs:\n"
        "  - job_name: gpuwatch\n    honor_labels: true\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{training}']}}]\n")
    proc = subprocess.Popen(
        [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(f"{url}/-/ready")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def query(url: str, expr: str) -> list[dict[str, Any]]:
    for var, value in (("$__rate_interval", "15s"), ("$job", ".+"), ("$host", ".+"),
                       ("$rank", ".+")):
        expr = expr.replace(var, value)
    body = get(f"{url}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
    assert body["status"] == "success", (expr, body)
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def wait_for(url: str, expr: str, seconds: float) -> list[dict[str, Any]]:
    deadline = time.monotonic() + seconds
    while True:
        result = query(url, expr)
        if result or time.monotonic() > deadline:
            return result
        time.sleep(1)


def test_every_dashboard_query_runs_and_cpu_panels_have_data(prometheus: str) -> None:
    assert wait_for(prometheus, 'gpuwatch_steps_total{job="promtest"}', 60), "never scraped"
    # the checkpoint finding needs its window; step rates need a few scrapes
    assert wait_for(prometheus, 'gpuwatch_finding{detector="checkpoint_overhead"}', 60)
    time.sleep(5)
    empty = []
    for dashboard in DASHBOARDS:
        for panel in dashboard.panels:
            for expr, _ in panel.queries:
                result = query(prometheus, expr)  # parses and runs, whatever the panel
                if panel.cpu and not result:
                    empty.append(f"{dashboard.uid}: {panel.title}: {expr}")
    assert empty == []
    jobs = get(f"{prometheus}/api/v1/label/job/values?match[]=gpuwatch_steps_total")["data"]
    assert jobs == ["promtest"]  # what the dashboards' job variable lists


def test_generated_alert_rules_load_and_fire_on_a_live_finding(prometheus: str) -> None:
    alerts = wait_for(prometheus, 'ALERTS{alertname="GpuwatchCheckpointOverhead"}', 90)
    assert alerts and alerts[0]["metric"]["alertstate"] in ("pending", "firing")
    assert alerts[0]["metric"]["verdict"] == "fix_here"
    groups = get(f"{prometheus}/api/v1/rules")["data"]["groups"]
    assert [g["name"] for g in groups] == ["gpuwatch"]
    assert [r["health"] for r in groups[0]["rules"]] == ["ok"] * 8  # evaluated, no errors
