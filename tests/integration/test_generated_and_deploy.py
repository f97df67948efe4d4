"""Generated files are current (rules, promtool tests, dashboards, Kubernetes), and
the deploy configs are valid for the real tools (promtool, amtool)."""

from __future__ import annotations

import json
import re
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
RUNBOOK = Settings().runbook_url.get_secret_value()


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
    assert stale == [], ("run `gpuwatch rules export detectors/prometheus` / "
                         "`gpuwatch dashboards export dashboards`")


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
    host = tests[len(rules)]  # one finding alert where no Kubernetes names a namespace
    assert host["name"].endswith("on a host, no namespace or pod named")
    (fired,) = host["alert_rule_test"][0]["exp_alerts"]
    assert "namespace" not in fired["exp_annotations"]["description"]
    assert "(run gpt-7f3a, host node-a)" in fired["exp_annotations"]["description"]
    lifecycle = {t["name"].split(":")[0] for t in tests[len(rules) + 1:]}
    assert lifecycle == {"job dies while a finding is active", "job finishes normally",
                         "steps stop while the process is up",
                         "a long evaluation between steps",
                         "one process of a pod stops answering while another goes on"}


def test_dashboards_only_query_exported_metrics_and_use_template_variables() -> None:
    exported = {m.name for m in catalogue()}
    for d in DASHBOARDS:
        model = json.loads((ROOT / "dashboards" / f"{d.uid}.json").read_text())
        variables = {v["name"]: v for v in model["templating"]["list"]}
        assert {"datasource", "namespace"} <= set(variables)
        if d.per_job:
            assert {"training_job", "run", "rank", "gpu"} <= set(variables)
            assert variables["rank"]["sort"] == 3 and variables["gpu"]["sort"] == 3  # numeric
        assert all(v.get("allValue") == ".*" for v in variables.values() if v["type"] == "query")
        for panel in model["panels"]:
            if panel["type"] == "row":
                continue
            assert panel["datasource"]["uid"] == "${datasource}"  # never a hard-coded uid
            for target in panel["targets"]:
                assert metric_names(target["expr"]) <= exported, target["expr"]
                assert "$namespace" in target["expr"] or d.per_job, target["expr"]
                if d.per_job:
                    assert "$training_job" in target["expr"], target["expr"]
                assert not re.search(r"\bjob\b|\binstance\b", target["expr"].replace(
                    "instance, endpoint", "")), target["expr"]  # only Prometheus's, never ours


def test_dashboards_are_built_to_be_kept() -> None:
    """Rows, thresholds, instant queries for tables and stats, legends with mean, last
    and max, numeric rank sort in tables, links between the dashboards, finding
    annotations."""
    for d in DASHBOARDS:
        model = json.loads((ROOT / "dashboards" / f"{d.uid}.json").read_text())
        panels = model["panels"]
        rows = [p for p in panels if p["type"] == "row"]
        assert panels[0]["type"] == "row" and len(rows) >= 2
        assert model["links"][0]["type"] == "dashboards" and model["links"][0]["includeVars"]
        assert model["links"][0]["tags"] == ["gpuwatch"]  # job <-> migration <-> fleet
        annotation = model["annotations"]["list"][0]
        assert "gpuwatch_finding" in annotation["expr"]
        for p in panels:
            if p["type"] == "row":
                continue
            steps = p["fieldConfig"]["defaults"]["thresholds"]["steps"]
            assert steps[0]["value"] is None
            assert all(t["instant"] == (p["type"] in ("table", "stat")) for t in p["targets"])
            if p["type"] == "timeseries":
                assert p["options"]["legend"]["calcs"] == ["mean", "lastNotNull", "max"]
            if p["type"] == "table":
                assert all(t["format"] == "table" for t in p["targets"])
                ids = [t["id"] for t in p["transformations"]]
                assert ids.index("convertFieldType") < ids.index("sortBy")  # sorts as numbers
    with_thresholds = [p for d in DASHBOARDS for p in d.panels if p.thresholds]
    assert len(with_thresholds) >= 10
    fleet = json.loads((ROOT / "dashboards" / "gpuwatch-fleet.json").read_text())
    table = next(p for p in fleet["panels"] if p["title"] == "Findings by job")
    assert "/d/gpuwatch-job?var-training_job=" in table["fieldConfig"]["defaults"]["links"][0][
        "url"]


def test_dcgm_join_of_the_tensor_panel_with_promtool(tmp_path: Path) -> None:
    """The tensor-activity panel's query joins dcgm-exporter's series (its label names)
    with gpuwatch_gpu_info on UUID and gets training_job and rank."""
    panel = next(p for p in DASHBOARDS[0].panels if "dcgm" in p.title)
    expr = panel.queries[0][0]
    for var, value in (("$namespace", ".*"), ("$training_job", ".+"), ("$run", ".+"),
                       ("$rank", ".+"), ("$gpu", ".*")):
        expr = expr.replace(var, value)
    info = ('gpuwatch_gpu_info{{training_job="gpt", run="gpt-1", host="node-a", rank="{r}", '
            'local_rank="{r}", gpu="{g}", UUID="GPU-{g}", modelName="NVIDIA H100 80GB HBM3", '
            'pci_bus_id="00000000:{g}B:00.0", Hostname="node-a", job="ml/gpuwatch", '
            'instance="10.0.0.5:941{r}"}}')
    dcgm = ('DCGM_FI_PROF_PIPE_TENSOR_ACTIVE{{gpu="{g}", UUID="GPU-{g}", device="nvidia{g}", '
            'modelName="NVIDIA H100 80GB HBM3", Hostname="node-a", pci_bus_id="00000000:{g}B:00.0",'
            ' job="dcgm-exporter", instance="10.0.0.9:9400"}}')
    series = [{"series": info.format(r=r, g=g), "values": "1x10"} for r, g in ((0, 3), (1, 5))]
    series += [{"series": dcgm.format(g=g), "values": f"{v}x10"} for g, v in
               ((3, 0.6), (5, 0.4), (7, 0.9))]  # GPU 7 is another job's
    test = {"rule_files": [], "evaluation_interval": "1m", "tests": [{
        "interval": "1m", "input_series": series,
        "promql_expr_test": [{"expr": expr, "eval_time": "5m", "exp_samples": [
            {"labels": '{training_job="gpt", run="gpt-1", rank="0", gpu="3"}', "value": 0.6},
            {"labels": '{training_job="gpt", run="gpt-1", rank="1", gpu="5"}', "value": 0.4}]}]}]}
    (tmp_path / "join.test.yaml").write_text(yaml.safe_dump(test))
    out = subprocess.run([tool(PROMTOOL), "test", "rules", "join.test.yaml"], cwd=tmp_path,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_throttled_share_stays_a_share_on_a_job_of_two_nodes(tmp_path: Path) -> None:
    """GPU 0 of each of two nodes throttled all the time: each rank's GPU at 100%, not
    the two GPUs 0 added into 200%."""
    panel = next(p for p in DASHBOARDS[0].panels if p.title == "Throttled share of time")
    expr = panel.queries[0][0]
    for var, value in (("$namespace", ".*"), ("$training_job", ".+"), ("$run", ".+"),
                       ("$rank", ".+"), ("$gpu", ".*"), ("$__rate_interval", "5m")):
        expr = expr.replace(var, value)
    counter = ('gpuwatch_gpu_throttle_seconds_total{{training_job="{j}", run="{j}-1", '
               'namespace="ml", host="node-{h}", rank="{r}", gpu="0", reason="power"}}')
    # (a second job's rank 0, throttled half the time: with "All" selected, kept apart)
    series = [{"series": counter.format(j=j, h=h, r=r), "values": values}
              for j, h, r, values in (("gpt", "a", 0, "0+60x10"), ("gpt", "b", 8, "0+60x10"),
                                      ("bert", "c", 0, "0+30x10"))]
    test = {"rule_files": [], "evaluation_interval": "1m", "tests": [{
        "interval": "1m", "input_series": series,
        "promql_expr_test": [{"expr": expr, "eval_time": "8m", "exp_samples": [
            {"labels": f'{{training_job="{j}", run="{j}-1", rank="{r}", gpu="0", '
                       'reason="power"}', "value": v}
            for j, r, v in (("gpt", 0, 1.0), ("gpt", 8, 1.0), ("bert", 0, 0.5))]}]}]}
    (tmp_path / "throttle.test.yaml").write_text(yaml.safe_dump(test))
    out = subprocess.run([tool(PROMTOOL), "test", "rules", "throttle.test.yaml"], cwd=tmp_path,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


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
