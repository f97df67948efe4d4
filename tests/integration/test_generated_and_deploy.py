"""Generated files are current (rules, promtool tests, dashboards, Kubernetes), and
the deploy configs are valid for the real tools (promtool, amtool)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from gpuwatch.config import Settings
from gpuwatch.dashboards import DASHBOARDS, metric_names
from gpuwatch.detection.alerts import RUN_VANISHED, STEPS_STOPPED, alert_name, lifecycle_alerts
from gpuwatch.detection.rules import load_rules
from gpuwatch.sinks.prometheus import catalogue
from tests.integration.conftest import ROOT, gpuwatch_cmd, run

pytestmark = pytest.mark.integration
PROMTOOL = shutil.which("promtool")
AMTOOL = shutil.which("amtool")
RULES_DIR = ROOT / "detectors" / "prometheus"
DEPLOY = ROOT / "deploy"
RUNBOOK = Settings().runbook_url


def tool(name: str | None) -> str:
    assert name, "Debian's prometheus and prometheus-alertmanager are required (.ci/run)"
    return name


def test_generated_files_are_current(tmp_path: Path) -> None:
    """A change to detectors/*.yaml or the dashboards must be exported and committed."""
    k8s_rule, k8s_dash = tmp_path / "prometheusrule.yaml", tmp_path / "configmap.yaml"
    assert run(gpuwatch_cmd("rules", "export", str(tmp_path / "rules"), "--kubernetes",
                            str(k8s_rule)), cwd=tmp_path).returncode == 0
    assert run(gpuwatch_cmd("dashboards", "export", str(tmp_path / "dash"), "--kubernetes",
                            str(k8s_dash)), cwd=tmp_path).returncode == 0
    pairs = [(tmp_path / "rules" / p.name, p) for p in RULES_DIR.glob("*.yaml")]
    pairs += [(tmp_path / "dash" / f"{d.uid}.json", ROOT / "dashboards" / f"{d.uid}.json")
              for d in DASHBOARDS]
    pairs += [(k8s_rule, DEPLOY / "kubernetes" / "base" / "prometheusrule.yaml"),
              (k8s_dash, DEPLOY / "kubernetes" / "base" / "dashboards-configmap.yaml")]
    assert len(pairs) == 7
    stale = [str(committed.relative_to(ROOT)) for fresh, committed in pairs
             if fresh.read_text() != committed.read_text()]
    assert stale == [], "run `gpuwatch rules export` / `gpuwatch dashboards export`"


def test_rules_pass_promtool_check_and_their_unit_tests() -> None:
    check = subprocess.run([tool(PROMTOOL), "check", "rules", "gpuwatch.rules.yaml"],
                           cwd=RULES_DIR, capture_output=True, text=True)
    expected = len(load_rules()) + len(lifecycle_alerts(RUNBOOK))
    assert check.returncode == 0 and f"SUCCESS: {expected} rules found" in check.stdout, \
        check.stdout
    tests = subprocess.run([tool(PROMTOOL), "test", "rules", "gpuwatch.rules.test.yaml"],
                           cwd=RULES_DIR, capture_output=True, text=True)
    assert tests.returncode == 0 and "SUCCESS" in tests.stdout, tests.stdout + tests.stderr


def test_every_detector_has_an_alert_and_positive_and_negative_tests() -> None:
    rules = load_rules()
    alerts = yaml.safe_load((RULES_DIR / "gpuwatch.rules.yaml").read_text())
    names = [r["alert"] for r in alerts["groups"][0]["rules"]]
    assert names == [*(alert_name(r) for r in rules.values()), RUN_VANISHED, STEPS_STOPPED]
    runbooks = (ROOT / "docs" / "runbooks.md").read_text()
    for r in alerts["groups"][0]["rules"]:
        assert set(r) == {"alert", "expr", "for", "labels", "annotations"}
        assert set(r["annotations"]) == {"summary", "description", "runbook_url"}
        assert r["labels"]["severity"] in ("info", "warning", "critical")
        url = r["annotations"]["runbook_url"]
        assert url.startswith(RUNBOOK + "#"), url  # absolute, from the runbook_url setting
        assert f"\n## {url.rsplit('#', 1)[1]}\n" in runbooks  # and the anchor exists
        assert "max by" not in r["expr"] and "without (instance, endpoint, rank, local_rank)" \
            in r["expr"]  # namespace, pod, training_job and run survive
    tests = yaml.safe_load((RULES_DIR / "gpuwatch.rules.test.yaml").read_text())["tests"]
    for test in tests[:len(rules)]:
        fired, silent = test["alert_rule_test"][1], test["alert_rule_test"][0]
        assert fired["exp_alerts"] and not silent["exp_alerts"]
        assert any(s["values"].startswith("0x") for s in test["input_series"])  # a cleared one
    lifecycle = {t["name"].split(":")[0] for t in tests[len(rules):]}
    assert lifecycle == {"job dies while a finding is active", "job finishes normally",
                         "steps stop while the process is up"}


def test_dashboards_only_query_exported_metrics_and_use_template_variables() -> None:
    exported = {m.name for m in catalogue()}
    for d in DASHBOARDS:
        model = json.loads((ROOT / "dashboards" / f"{d.uid}.json").read_text())
        variables = {v["name"] for v in model["templating"]["list"]}
        assert "datasource" in variables
        if d.per_job:
            assert {"job", "host", "rank"} <= variables
        for panel in model["panels"]:
            assert panel["datasource"]["uid"] == "${datasource}"  # never a hard-coded uid
            for target in panel["targets"]:
                assert metric_names(target["expr"]) <= exported, target["expr"]
                if d.per_job:
                    assert "$job" in target["expr"], target["expr"]


def test_prometheus_config_is_valid(tmp_path: Path) -> None:
    config = (DEPLOY / "prometheus" / "prometheus.yml").read_text().replace(
        "/etc/prometheus/rules", str(RULES_DIR))
    (tmp_path / "prometheus.yml").write_text(config)
    check = subprocess.run([tool(PROMTOOL), "check", "config", "prometheus.yml"],
                           cwd=tmp_path, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_alertmanager_config_routes_to_slack_from_a_secret_file(tmp_path: Path) -> None:
    secret = tmp_path / "slack_webhook_url"
    secret.write_text("https://hooks.slack.example/services/T0/B0/X\n")
    text = (DEPLOY / "alertmanager" / "alertmanager.yml").read_text()
    assert "hooks.slack" not in text  # the webhook is never in the config itself
    (tmp_path / "am.yml").write_text(
        text.replace("/etc/alertmanager/secrets/slack_webhook_url", str(secret)))
    check = subprocess.run([tool(AMTOOL), "check-config", "am.yml"], cwd=tmp_path,
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    config = yaml.safe_load(text)
    assert config["route"]["receiver"] == "slack"
    slack = next(r for r in config["receivers"] if r["name"] == "slack")
    assert slack["slack_configs"][0]["send_resolved"] is True


def test_compose_and_kubernetes_manifests() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    assert set(compose["services"]) == {"prometheus", "alertmanager", "grafana"}
    for service in compose["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                path = (DEPLOY / source).resolve()
                assert path.exists() or path.name == "slack_webhook_url", volume
    base = DEPLOY / "kubernetes" / "base"
    docs = {p.name: yaml.safe_load(p.read_text()) for p in base.glob("*.yaml")}
    assert set(docs["kustomization.yaml"]["resources"]) == set(docs) - {"kustomization.yaml"}
    pod = docs["podmonitor.yaml"]
    assert pod["kind"] == "PodMonitor"
    assert "honorLabels" not in pod["spec"]["podMetricsEndpoints"][0]  # never needed
    rule = docs["prometheusrule.yaml"]
    assert rule["kind"] == "PrometheusRule"
    assert len(rule["spec"]["groups"][0]["rules"]) == len(load_rules()) + 2
    configmap = docs["dashboards-configmap.yaml"]
    assert sorted(configmap["data"]) == sorted(f"{d.uid}.json" for d in DASHBOARDS)
    for body in configmap["data"].values():
        json.loads(body)


def test_metric_docs_command(tmp_path: Path) -> None:
    proc = run(gpuwatch_cmd("metrics"), cwd=tmp_path)
    assert proc.returncode == 0
    assert proc.stdout == (ROOT / "docs" / "metrics.md").read_text()
