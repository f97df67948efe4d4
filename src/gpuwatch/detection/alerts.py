"""Prometheus alerting rules, generated from the same detector rule files.

Each detector becomes one alert on the exported ``gpuwatch_finding`` series, so a
cluster can alert from Prometheus alone (through Alertmanager); a finding active
when its process vanished without the end-of-run marker keeps firing. Two lifecycle
alerts say when a run vanished so and when its steps stopped while the process is
still up. Every alert aggregates ``without`` the
per-process labels, so ``namespace``, ``pod``, ``training_job`` and ``run`` survive
and ranks of one pod fold into one alert; ``subject_rank`` names the rank a
finding is about. The generated files are committed under detectors/prometheus/
and checked for staleness.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from gpuwatch.detection.rules import Rule
from gpuwatch.redact import mask_url

RULES_FILE = "gpuwatch.rules.yaml"
TESTS_FILE = "gpuwatch.rules.test.yaml"
MIN_FOR_S = 60  # at least a minute of scrapes before an alert fires
# Labels that differ between the processes of one pod: Prometheus's target
# (instance; endpoint, the port name, on Kubernetes) and gpuwatch's rank labels.
PER_PROCESS = "instance, endpoint, rank, local_rank"
VANISHED_WINDOW = "3h"  # how long after a run vanished its alert keeps firing
# No step for STALLED_WINDOW and then STALLED_FOR more while the process is scraped:
# stalled (15 minutes in all).
STALLED_WINDOW, STALLED_FOR = "10m", "5m"
RUN_VANISHED = "GpuwatchRunVanished"
STEPS_STOPPED = "GpuwatchStepsStopped"
# (Kubernetes's namespace and pod only where there are: not on a host or in compose)
WHERE = ("{{ $labels.training_job }} (run {{ $labels.run }}"
         "{{ with $labels.namespace }}, namespace {{ . }}{{ end }}"
         "{{ with $labels.pod }}, pod {{ . }}{{ end }}, host {{ $labels.host }})")


def alert_name(rule: Rule) -> str:
    """``fits_on_paper`` -> ``GpuwatchFitsOnPaper``."""
    return "Gpuwatch" + "".join(part.capitalize() for part in rule.id.split("_"))


def runbook(runbook_url: str, anchor: str) -> str:
    """The absolute runbook link: ``runbook_url`` (docs/runbooks.md as served) + anchor,
    never its credentials (``mask_url``): alerts reach every channel Alertmanager has."""
    return mask_url(f"{runbook_url.split('#', 1)[0]}#{anchor}")


def _duration(seconds: float) -> str:
    seconds = int(max(seconds, MIN_FOR_S))
    return f"{seconds // 60}m" if seconds % 60 == 0 else f"{seconds}s"


def finding_expr(detector: str) -> str:
    """Active now, or active when its process vanished without the end-of-run marker
    (seen within two minutes of the process's last scrape): a job that dies does not
    resolve its findings."""
    finding = f'gpuwatch_finding{{detector="{detector}"}}'
    last_seen = f"max_over_time(timestamp({finding} == 1)[{VANISHED_WINDOW}:1m])"
    process_last_seen = ("max_over_time(timestamp(gpuwatch_run_start_time_seconds)"
                         f"[{VANISHED_WINDOW}:1m])")
    died_with = (f"({last_seen} - on (instance, run) group_left {process_last_seen} > -120)"
                 " unless on (instance, run) gpuwatch_run_start_time_seconds"
                 " unless on (instance, run) "
                 f"last_over_time(gpuwatch_run_end_time_seconds[{VANISHED_WINDOW}])")
    # a process that posts to Slack itself (slack.delivery) is not alerted twice
    in_process = ("unless on (instance, run) "
                  f"last_over_time(gpuwatch_slack_in_process[{VANISHED_WINDOW}]) == 1")
    return (f"max without ({PER_PROCESS}) "
            f"(({finding} == 1 or ({died_with}) * 0 + 1) {in_process})")


def finding_alert(rule: Rule, runbook_url: str) -> dict[str, Any]:
    return {
        "alert": alert_name(rule),
        "expr": finding_expr(rule.id),
        "for": _duration(rule.for_s + rule.window_s / 2),
        "labels": {"severity": rule.severity, "detector": rule.id},
        "annotations": {
            "summary": f"{rule.title} on {{{{ $labels.training_job }}}} rank "
                       f"{{{{ $labels.subject_rank }}}} ({{{{ $labels.verdict }}}})",
            "description": (f"gpuwatch's {rule.id} detector reports {{{{ $labels.verdict }}}} "
                            f"for rank {{{{ $labels.subject_rank }}}} of {WHERE}. The "
                            "finding's evidence and projection are in the run's "
                            "findings.json and on the gpuwatch dashboards."),
            "runbook_url": runbook(runbook_url, rule.runbook.rsplit("#", 1)[-1]),
        },
    }


def lifecycle_alerts(runbook_url: str) -> list[dict[str, Any]]:
    """A run that vanished without its end-of-run marker (killed, OOM-killed, node
    lost), and steps that stopped while the process is still being scraped."""
    # gone, unless another process of the same run and pod still answers
    vanished = (f"group without ({PER_PROCESS}) ("
                f"last_over_time(gpuwatch_run_start_time_seconds[{VANISHED_WINDOW}])"
                f" unless ignoring ({PER_PROCESS}) gpuwatch_run_start_time_seconds"
                f" unless last_over_time(gpuwatch_run_end_time_seconds[{VANISHED_WINDOW}]))")
    # (progress, not steps: a long evaluation between steps shows its batches)
    stalled = (f"max without ({PER_PROCESS}) (label_replace("
               f"increase(gpuwatch_progress_total[{STALLED_WINDOW}]) == 0"
               " and gpuwatch_steps_total > 0 unless gpuwatch_run_end_time_seconds,"
               ' "subject_rank", "$1", "rank", "(.*)"))')
    return [
        {"alert": RUN_VANISHED, "expr": vanished, "for": "2m",
         "labels": {"severity": "critical", "detector": "lifecycle", "verdict": "fix_here"},
         "annotations": {
             "summary": "Run {{ $labels.run }} of {{ $labels.training_job }} vanished "
                        "without finishing",
             "description": (f"The gpuwatch endpoints of {WHERE} stopped reporting and "
                             "never exported the end-of-run marker: the processes were "
                             "killed (OOM, preemption, eviction, node loss) or hang "
                             "unscraped. Findings active when it died keep firing; they "
                             "are in the run's findings.json."),
             "runbook_url": runbook(runbook_url, "run_vanished")}},
        {"alert": STEPS_STOPPED, "expr": stalled, "for": STALLED_FOR,
         "labels": {"severity": "critical", "detector": "lifecycle", "verdict": "fix_here"},
         "annotations": {
             "summary": "Steps stopped on {{ $labels.training_job }} rank "
                        "{{ $labels.subject_rank }} while the process is up",
             "description": (f"Rank {{{{ $labels.subject_rank }}}} of {WHERE} completed "
                             "no training step, and showed no evaluation or loader "
                             "progress, in 15 minutes though its process answers "
                             "scrapes: a hang (collective, data loader, I/O)."),
             "runbook_url": runbook(runbook_url, "steps_stopped")}},
    ]


def prometheus_rules(rules: dict[str, Rule], runbook_url: str) -> dict[str, Any]:
    alerts = [finding_alert(rule, runbook_url) for rule in rules.values()]
    return {"groups": [{"name": "gpuwatch", "rules": [*alerts, *lifecycle_alerts(runbook_url)]}]}


# -- promtool unit tests ----------------------------------------------------------

PROCESS = {"training_job": "gpt", "run": "gpt-7f3a", "host": "node-a", "namespace": "ml",
           "job": "ml/gpuwatch", "pod": "gpt-0"}


def _rank(rank: int) -> dict[str, str]:
    """One rank's target labels: a port per local rank in pod gpt-0."""
    return {**PROCESS, "rank": str(rank), "local_rank": str(rank),
            "instance": f"10.0.0.5:{9410 + rank}", "endpoint": f"gpuwatch-{rank}"}


def _finding_test(rule: Rule, alert: dict[str, Any]) -> dict[str, Any]:
    """Fires once for the pod from two ranks' findings, naming the subject rank (for a
    cross-rank finding reported by rank 0, another rank); silent on a cleared one."""
    subject = "3" if rule.scope == "job" else "1"
    reporters = (0,) if rule.scope == "job" else (1,)
    labels = {"detector": rule.id, "verdict": rule.verdict, "severity": rule.severity,
              "subject_rank": subject}
    series = [{"series": _selector("gpuwatch_finding", {**_rank(r), **labels}), "values": "1x30"}
              for r in reporters]
    series.append({"series": _selector("gpuwatch_finding", {**_rank(2), **labels,
                                                            "subject_rank": "2"}),
                   "values": "0x30"})  # a finding that cleared: value 0, never fires
    series += [{"series": _selector("gpuwatch_finding", {**_rank(4), **labels,
                                                         "subject_rank": "4"}),
                "values": "1x30"},  # active, but its process posts to Slack itself
               {"series": _selector("gpuwatch_slack_in_process", _rank(4)), "values": "1x30"}]
    exp_labels = {**PROCESS, **labels}
    rendered = {k: _render(v, exp_labels) for k, v in alert["annotations"].items()}
    return {"name": f"{alert['alert']}: fires per pod for subject rank {subject}",
            "interval": "1m", "input_series": series,
            "alert_rule_test": [
                {"eval_time": "0m", "alertname": alert["alert"], "exp_alerts": []},
                {"eval_time": "20m", "alertname": alert["alert"],
                 "exp_alerts": [{"exp_labels": exp_labels, "exp_annotations": rendered}]},
            ]}


def _lifecycle_tests(rules: dict[str, Rule], runbook_url: str) -> list[dict[str, Any]]:
    vanished, stalled = lifecycle_alerts(runbook_url)
    rule = next(r for r in rules.values() if r.scope == "rank")
    finding = {"detector": rule.id, "verdict": rule.verdict, "severity": rule.severity,
               "subject_rank": "0"}
    held = {k: _render(v, {**PROCESS, **finding})
            for k, v in finding_alert(rule, runbook_url)["annotations"].items()}
    steps = "0+10x10 stale"  # stepping for 10 minutes, then gone
    start = "1700000000x10 stale"

    def run_series(rank: int, end: str | None, finding_values: str | None = None,
                   step_values: str = steps, start_values: str = start,
                   progress_values: str | None = None) -> list[dict[str, str]]:
        out = [{"series": _selector("gpuwatch_steps_total", _rank(rank)), "values": step_values},
               {"series": _selector("gpuwatch_progress_total", _rank(rank)),  # (steps too)
                "values": progress_values or step_values},
               {"series": _selector("gpuwatch_run_start_time_seconds", _rank(rank)),
                "values": start_values}]
        if end is not None:
            out.append({"series": _selector("gpuwatch_run_end_time_seconds", _rank(rank)),
                        "values": end})
        if finding_values is not None:
            out.append({"series": _selector("gpuwatch_finding", {**_rank(rank), **finding}),
                        "values": finding_values})
        return out

    exp_vanished = {**PROCESS, "severity": "critical", "detector": "lifecycle",
                    "verdict": "fix_here"}
    exp_stalled = {**exp_vanished, "subject_rank": "1"}
    return [
        {"name": "job dies while a finding is active: it and the vanished alert keep firing",
         "interval": "1m",
         "input_series": [*run_series(0, None, "1x10 stale"), *run_series(1, None),
                          {"series": _selector("gpuwatch_finding", {  # cleared before: stays so
                              **_rank(1), **finding, "subject_rank": "1"}),
                           "values": "1x3 stale"}],
         "alert_rule_test": [
             {"eval_time": "9m", "alertname": alert_name(rule),
              "exp_alerts": [{"exp_labels": {**PROCESS, **finding}, "exp_annotations": held}]},
             {"eval_time": "9m", "alertname": RUN_VANISHED, "exp_alerts": []},
             *({"eval_time": t, "alertname": alert_name(rule),  # held, not resolved
                "exp_alerts": [{"exp_labels": {**PROCESS, **finding},
                                "exp_annotations": held}]} for t in ("15m", "2h")),
             *({"eval_time": t, "alertname": RUN_VANISHED, "exp_alerts": [{
                 "exp_labels": exp_vanished,
                 "exp_annotations": {k: _render(v, exp_vanished)
                                     for k, v in vanished["annotations"].items()}}]}
               for t in ("15m", "2h")),  # and still firing later: it did not go quiet
             {"eval_time": "15m", "alertname": STEPS_STOPPED, "exp_alerts": []},
         ]},
        {"name": "job finishes normally: no alert",
         "interval": "1m",
         "input_series": [*run_series(0, "_x9 1700000600 stale", "1x10 stale"),
                          *run_series(1, "_x9 1700000600 stale")],
         "alert_rule_test": [
             *({"eval_time": t, "alertname": name, "exp_alerts": []}
               for t in ("9m", "15m", "1h") for name in (RUN_VANISHED, STEPS_STOPPED)),
             *({"eval_time": t, "alertname": alert_name(rule), "exp_alerts": []}
               for t in ("15m", "1h"))]},  # its finding ends with it
        {"name": "steps stop while the process is up: the stalled alert names the rank",
         "interval": "1m",
         "input_series": [*run_series(0, None, step_values="0+10x60",
                                      start_values="1700000000x60"),
                          *run_series(1, None, step_values="0+10x10 100x50",
                                      start_values="1700000000x60")],
         "alert_rule_test": [
             {"eval_time": "20m", "alertname": STEPS_STOPPED, "exp_alerts": []},
             {"eval_time": "26m", "alertname": STEPS_STOPPED, "exp_alerts": [{  # 15 min on
                 "exp_labels": exp_stalled,
                 "exp_annotations": {k: _render(v, exp_stalled)
                                     for k, v in stalled["annotations"].items()}}]},
             {"eval_time": "35m", "alertname": RUN_VANISHED, "exp_alerts": []},
         ]},
        {"name": "a long evaluation between steps: its batches are progress, no alert",
         "interval": "1m",
         "input_series": run_series(1, None, step_values="0+10x10 100x50",
                                    start_values="1700000000x60",
                                    progress_values="0+10x60"),
         "alert_rule_test": [{"eval_time": t, "alertname": STEPS_STOPPED, "exp_alerts": []}
                             for t in ("26m", "45m")]},
        {"name": "one process of a pod stops answering while another goes on: the run "
                 "has not vanished",
         "interval": "1m",
         "input_series": [*run_series(0, None, step_values="0+10x60",
                                      start_values="1700000000x60"),
                          *run_series(1, None)],
         "alert_rule_test": [{"eval_time": t, "alertname": RUN_VANISHED, "exp_alerts": []}
                             for t in ("15m", "40m")]},
    ]


def promtool_tests(rules: dict[str, Rule], runbook_url: str) -> dict[str, Any]:
    """Unit tests for ``promtool test rules``: each finding alert fires on an active
    finding, per pod and with its subject rank, and stays silent on a cleared one;
    the lifecycle alerts on a job that dies, one that finishes and one that stalls."""
    alerts = prometheus_rules(rules, runbook_url)["groups"][0]["rules"]
    tests = [_finding_test(rule, alert) for rule, alert in zip(rules.values(), alerts,
                                                                strict=False)]
    return {"rule_files": [RULES_FILE], "evaluation_interval": "1m",
            "tests": [*tests, _host_test(next(iter(rules.values())), alerts[0]),
                      *_lifecycle_tests(rules, runbook_url)]}


def _host_test(rule: Rule, alert: dict[str, Any]) -> dict[str, Any]:
    """On a host or in compose (no Kubernetes namespace or pod), the annotations name
    neither."""
    where = {"training_job": "gpt", "run": "gpt-7f3a", "host": "node-a", "job": "gpuwatch",
             "rank": "0", "local_rank": "0", "instance": "node-a:9410"}
    labels = {"detector": rule.id, "verdict": rule.verdict, "severity": rule.severity,
              "subject_rank": "0"}
    exp_labels = {k: v for k, v in {**where, **labels}.items()
                  if k not in ("rank", "local_rank", "instance")}
    rendered = {k: _render(v, exp_labels) for k, v in alert["annotations"].items()}
    return {"name": f"{alert['alert']}: on a host, no namespace or pod named",
            "interval": "1m",
            "input_series": [{"series": _selector("gpuwatch_finding", {**where, **labels}),
                              "values": "1x30"}],
            "alert_rule_test": [{"eval_time": "20m", "alertname": alert["alert"],
                                 "exp_alerts": [{"exp_labels": exp_labels,
                                                 "exp_annotations": rendered}]}]}


def kubernetes_rule(rules: dict[str, Rule], runbook_url: str) -> dict[str, Any]:
    """The same rules as a prometheus-operator PrometheusRule."""
    return {"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule",
            "metadata": {"name": "gpuwatch", "labels": {"app.kubernetes.io/name": "gpuwatch"}},
            "spec": prometheus_rules(rules, runbook_url)}


_WITH = re.compile(r"\{\{ with \$labels\.(\w+) \}\}(.*?)\{\{ end \}\}")


def _render(template: str, labels: dict[str, str]) -> str:
    """An annotation as Prometheus renders it for ``labels`` (the templates' own forms:
    ``{{ $labels.x }}``, ``{{ with $labels.x }}...{{ . }}...{{ end }}``)."""
    template = _WITH.sub(lambda m: m[2].replace("{{ . }}", labels[m[1]])
                         if labels.get(m[1]) else "", template)
    for key, value in labels.items():
        template = template.replace(f"{{{{ $labels.{key} }}}}", value)
    return template


def _selector(name: str, labels: dict[str, str]) -> str:
    inner = ", ".join(f'{k}="{v}"' for k, v in labels.items())
    return f"{name}{{{inner}}}"


def dump(data: dict[str, Any], by: str = "gpuwatch rules export") -> str:
    """YAML with a header naming the command that generates it."""
    return (f"# Generated by `{by}`: do not edit.\n"
            + yaml.safe_dump(data, sort_keys=False, width=100))
