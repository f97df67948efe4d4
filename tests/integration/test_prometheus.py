"""A real training run scraped by a real Prometheus (Debian's `prometheus`, started
here on a loopback port): every dashboard query parses and runs, the panels a CPU
run can fill have data, and the generated alerting rules load and fire."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from gpuwatch.dashboards import DASHBOARDS
from tests.integration.conftest import ROOT, free_port, gpuwatch_cmd, wait_until_up
from tests.wait import wait_for as wait_until

pytestmark = pytest.mark.integration
PROMETHEUS = shutil.which("prometheus")


def get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


@pytest.fixture
def training(tmp_path: Path) -> Iterator[int]:
    """A monitored CPU run (DataLoader workers, a checkpoint every step: a finding),
    longer than any test here waits for it; stopped when the test ends."""
    port = free_port()
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("GPUWATCH_")}
    env.update(GPUWATCH_EXPORTER__PORT=str(port), GPUWATCH_JOB="promtest",
               GPUWATCH_EXPORTER__FINAL_SCRAPE_S="0")
    proc = subprocess.Popen(
        gpuwatch_cmd("run", "--out", str(tmp_path / "run"), "--", sys.executable,
                     str(ROOT / "examples" / "plain_train.py"), "--seconds", "240",
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
        "  - job_name: gpuwatch\n"
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
    for var, value in (("$__rate_interval", "15s"), ("$namespace", ".*"),
                       ("$training_job", ".+"), ("$run", ".+"), ("$rank", ".+"), ("$gpu", ".*")):
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


def empty_cpu_panels(url: str) -> list[str]:
    """Every dashboard query run (each must parse and run, whatever its panel): the
    queries of panels a CPU run fills that return nothing."""
    empty = []
    for dashboard in DASHBOARDS:
        for panel in dashboard.panels:
            for expr, _ in panel.queries:
                if not query(url, expr) and panel.cpu:
                    empty.append(f"{dashboard.uid}: {panel.title}: {expr}")
    return empty


def test_every_dashboard_query_runs_and_cpu_panels_have_data(prometheus: str) -> None:
    assert wait_for(prometheus, 'gpuwatch_steps_total{training_job="promtest"}', 60), \
        "never scraped"
    # the checkpoint finding needs a minute of the run; step rates need a few scrapes
    assert wait_for(prometheus, 'gpuwatch_finding{detector="checkpoint_overhead"}', 180)
    with contextlib.suppress(AssertionError):  # (the assertion below names the empty ones)
        wait_until(lambda: not empty_cpu_panels(prometheus), 30, "data in every CPU panel",
                 poll_s=1.0)
    assert empty_cpu_panels(prometheus) == []
    jobs = get(f"{prometheus}/api/v1/label/training_job/values"
               "?match[]=gpuwatch_steps_total")["data"]
    assert jobs == ["promtest"]  # what the dashboards' training_job variable lists
    scrape_jobs = get(f"{prometheus}/api/v1/label/job/values?match[]=gpuwatch_steps_total")
    assert scrape_jobs["data"] == ["gpuwatch"]  # Prometheus's job label stays its own


def test_generated_alert_rules_load_and_fire_on_a_live_finding(prometheus: str) -> None:
    # (the run-long save share is judged from a minute of the run: min_wall_s)
    alerts = wait_for(prometheus, 'ALERTS{alertname="GpuwatchCheckpointOverhead"}', 180)
    assert alerts and alerts[0]["metric"]["alertstate"] in ("pending", "firing")
    assert alerts[0]["metric"]["verdict"] == "fix_here"
    groups = get(f"{prometheus}/api/v1/rules")["data"]["groups"]
    assert [g["name"] for g in groups] == ["gpuwatch"]
    assert {r["health"] for r in groups[0]["rules"]} == {"ok"}  # evaluated, no errors


def free_ports(n: int) -> int:
    """A base port with ``n`` free ports from it (the ranks of one pod: base + local rank)."""
    for _ in range(50):
        base = free_port()
        if base + n < 65536 and all(_free(base + i) for i in range(n)):
            return base
    raise RuntimeError("no run of free ports")


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def pod_target(port: int, port_name: str, pod: str = "gpt-0", monitored: bool = True,
               phase: str = "Running") -> dict[str, Any]:
    """A target as Prometheus's Kubernetes pod discovery makes it: one per declared port."""
    labels = {"__meta_kubernetes_namespace": "ml", "__meta_kubernetes_pod_name": pod,
              "__meta_kubernetes_pod_container_name": "trainer",
              "__meta_kubernetes_pod_container_port_name": port_name,
              "__meta_kubernetes_pod_container_port_number": str(port),
              "__meta_kubernetes_pod_phase": phase, "__meta_kubernetes_pod_node_name": "node-a"}
    if monitored:
        labels["__meta_kubernetes_pod_label_gpuwatch_io_monitored"] = "true"
    return {"targets": [f"127.0.0.1:{port}"], "labels": labels}


def test_every_local_rank_is_scraped_through_the_kubernetes_scrape_config(
        tmp_path: Path) -> None:
    """Three ranks of one pod, each a real monitored process on 9410-style port base +
    local rank, scraped by a real Prometheus through deploy/prometheus/kubernetes.yml
    (pod discovery replaced by a file of the targets it would produce)."""
    assert PROMETHEUS, "Debian's prometheus package is required (.ci/run installs it)"
    ranks = 3
    base = free_ports(ranks + 1)
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUWATCH_")}
    env.update(GPUWATCH_EXPORTER__PORT=str(base), GPUWATCH_JOB="k8sjob",
               GPUWATCH_PEERS_INTERVAL_S="0", WORLD_SIZE=str(ranks),
               TORCHELASTIC_RUN_ID="7f3a", NODE_NAME="node-a")
    procs = [subprocess.Popen(
        gpuwatch_cmd("run", "--", sys.executable, str(ROOT / "examples" / "plain_train.py"),
                     "--seconds", "60", "--ckpt-every", "0"),
        cwd=tmp_path, env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for r in range(ranks)]
    targets = [pod_target(base + r, f"gpuwatch-{r}") for r in range(ranks)]
    targets += [pod_target(base + ranks, "c10d"),  # another port of the pod: not scraped
                pod_target(base, "gpuwatch-0", pod="other", monitored=False),
                pod_target(base, "gpuwatch-0", pod="done", phase="Succeeded")]
    (tmp_path / "targets.json").write_text(json.dumps(targets))
    config = yaml.safe_load((ROOT / "deploy" / "prometheus" / "kubernetes.yml").read_text())
    job = config["scrape_configs"][0]
    job.pop("kubernetes_sd_configs")
    job["file_sd_configs"] = [{"files": [str(tmp_path / "targets.json")]}]
    job["scrape_interval"], job["scrape_timeout"] = "1s", "1s"
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    prom = subprocess.Popen(
        [PROMETHEUS, f"--config.file={tmp_path / 'prometheus.yml'}",
         f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(f"{url}/-/ready")
        scraped = wait_for(url, 'count(gpuwatch_steps_total{training_job="k8sjob"}) == 3', 90)
        assert scraped, query(url, "up")
        up = query(url, 'up{job="gpuwatch"}')
        assert sorted(s["metric"]["endpoint"] for s in up) == ["gpuwatch-0", "gpuwatch-1",
                                                               "gpuwatch-2"]
        assert {s["metric"]["pod"] for s in up} == {"gpt-0"}
        series = query(url, "gpuwatch_steps_total")
        assert sorted(s["metric"]["rank"] for s in series) == ["0", "1", "2"]
        for s in series:
            labels = s["metric"]
            assert labels["namespace"] == "ml" and labels["training_job"] == "k8sjob"
            assert labels["run"] == "k8sjob-7f3a" and labels["host"] == "node-a"
            assert labels["job"] == "gpuwatch"  # Prometheus's own, never overwritten
            assert labels["endpoint"] == f"gpuwatch-{labels['local_rank']}"
        assert query(url, 'count({exported_job!=""}) or count({exported_instance!=""})') == []
        joined = query(url, "up * on (instance) group_left (rank) gpuwatch_steps_total")
        assert len(joined) == 3  # `up` joins with the metrics on the target
    finally:
        prom.terminate()
        for p in procs:
            p.terminate()
        for p in [prom, *procs]:
            p.wait(timeout=30)
