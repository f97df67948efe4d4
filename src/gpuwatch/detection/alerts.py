"""Prometheus alerting rules, generated from the same detector rule files.

Each detector becomes one alert on the exported ``gpuwatch_finding`` series, so a
cluster can alert from Prometheus alone (through Alertmanager). The generated
files are committed under detectors/prometheus/ and checked for staleness.
"""

from __future__ import annotations

from typing import Any

import yaml

from gpuwatch.detection.rules import Rule

RULES_FILE = "gpuwatch.rules.yaml"
TESTS_FILE = "gpuwatch.rules.test.yaml"
MIN_FOR_S = 60  # at least a minute of scrapes before an alert fires


def alert_name(rule: Rule) -> str:
    """``fits_on_paper`` -> ``GpuwatchFitsOnPaper``."""
    return "Gpuwatch" + "".join(part.capitalize() for part in rule.id.split("_"))


def _duration(seconds: float) -> str:
    seconds = int(max(seconds, MIN_FOR_S))
    return f"{seconds // 60}m" if seconds % 60 == 0 else f"{seconds}s"


def prometheus_rules(rules: dict[str, Rule], runbook_base: str = "") -> dict[str, Any]:
    alerts = []
    for rule in rules.values():
        alerts.append({
            "alert": alert_name(rule),
            # a process that posts to Slack itself (slack.delivery) is not alerted twice
            "expr": (f'max by (job, host, rank, verdict) '
                     f'(gpuwatch_finding{{detector="{rule.id}"}}) == 1 '
                     'unless on (job, host, rank) gpuwatch_slack_in_process == 1'),
            "for": _duration(rule.for_s + rule.window_s / 2),
            "labels": {"severity": rule.severity, "detector": rule.id},
            "annotations": {
                "summary": f"{rule.title} on {{{{ $labels.job }}}} rank {{{{ $labels.rank }}}}"
                           f" ({{{{ $labels.verdict }}}})",
                "description": (f"gpuwatch's {rule.id} detector reports "
                                f"{{{{ $labels.verdict }}}} for job {{{{ $labels.job }}}} on "
                                f"host {{{{ $labels.host }}}}, rank {{{{ $labels.rank }}}}. "
                                "The finding's evidence and projection are in the run's "
                                "findings.json and on the gpuwatch dashboards."),
                "runbook_url": runbook_base + rule.runbook,
            },
        })
    return {"groups": [{"name": "gpuwatch", "rules": alerts}]}


def promtool_tests(rules: dict[str, Rule], runbook_base: str = "") -> dict[str, Any]:
    """Unit tests for ``promtool test rules``: each alert fires on an active finding,
    with its annotations rendered, and stays silent on a cleared one."""
    tests = []
    labels = {"job": "train", "host": "node-a", "rank": "0"}
    for rule, alert in zip(rules.values(), prometheus_rules(rules, runbook_base)["groups"][0][
            "rules"], strict=True):
        rendered = {k: _render(v, {**labels, "verdict": rule.verdict})
                    for k, v in alert["annotations"].items()}
        base = {"detector": rule.id, "job": "train", "host": "node-a", "local_rank": "0",
                "severity": rule.severity}
        series = [
            {"series": _selector({**base, "rank": "0", "verdict": rule.verdict}),
             "values": "1x30"},
            {"series": _selector({**base, "rank": "1", "verdict": rule.verdict}),
             "values": "0x30"},
            {"series": _selector({**base, "rank": "2", "verdict": rule.verdict}),
             "values": "1x30"},  # active, but its process posts to Slack itself
            {"series": _selector({k: v for k, v in base.items()
                                  if k in ("job", "host", "local_rank")} | {"rank": "2"},
                                 "gpuwatch_slack_in_process"), "values": "1x30"},
        ]
        tests.append({
            "interval": "1m",
            "input_series": series,
            "alert_rule_test": [
                {"eval_time": "0m", "alertname": alert_name(rule), "exp_alerts": []},
                {"eval_time": "20m", "alertname": alert_name(rule), "exp_alerts": [{
                    "exp_labels": {"severity": rule.severity, "detector": rule.id, **labels,
                                   "verdict": rule.verdict},
                    "exp_annotations": rendered,
                }]},
            ],
        })
    return {"rule_files": [RULES_FILE], "evaluation_interval": "1m", "tests": tests}


def kubernetes_rule(rules: dict[str, Rule], runbook_base: str = "") -> dict[str, Any]:
    """The same rules as a prometheus-operator PrometheusRule."""
    return {"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule",
            "metadata": {"name": "gpuwatch", "labels": {"app.kubernetes.io/name": "gpuwatch"}},
            "spec": prometheus_rules(rules, runbook_base)}


def _render(template: str, labels: dict[str, str]) -> str:
    for key, value in labels.items():
        template = template.replace(f"{{{{ $labels.{key} }}}}", value)
    return template


def _selector(labels: dict[str, str], metric: str = "gpuwatch_finding") -> str:
    inner = ", ".join(f'{k}="{v}"' for k, v in labels.items())
    return f"{metric}{{{inner}}}"


def dump(data: dict[str, Any], by: str = "gpuwatch rules export") -> str:
    """YAML with a header naming the command that generates it."""
    return (f"# Generated by `{by}`: do not edit.\n"
            + yaml.safe_dump(data, sort_keys=False, width=100))
