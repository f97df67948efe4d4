"""Grafana dashboards, built from panel specs: a job overview, "should this job move
to H100?", and a fleet view. ``gpuwatch dashboards export`` writes them (the
committed copies in dashboards/ are checked against this), ``push`` uploads them.

Each panel says whether a CPU-only run fills it (``cpu``): the integration test
runs every query against a real Prometheus and demands data from those. Panels
sit in rows; tables and stats are instant queries; series legends show mean, last
and max; the dashboards link to each other keeping the selected job and time, and
mark findings as annotations.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpuwatch.runlog import write_whole

# Every per-job query is scoped by the dashboard's variables; "All" is `.*`, which
# also matches a label a series does not have (no `namespace` off Kubernetes).
S = ('namespace=~"$namespace", training_job=~"$training_job", run=~"$run", '
     'rank=~"$rank"')
G = f'{S}, gpu=~"$gpu"'
RATE = "$__rate_interval"
# Series are kept apart per job, run and rank (with "All" selected, runs of different
# jobs must never blend into one "rank 0"); legends name the run.
BY = "training_job, run, rank"
RANK = "{{run}} rank {{rank}}"
PER_PROCESS = "instance, endpoint, rank, local_rank"  # as in the alerts


def _share(phase: str, by: str = BY) -> str:
    return (f'sum by ({by}) (rate(gpuwatch_phase_seconds_total{{{S}, phase="{phase}"}}[{RATE}]))'
            f" / sum by ({by}) (rate(gpuwatch_step_duration_seconds_sum{{{S}}}[{RATE}]))")


MEAN_STEP = (f"sum by ({BY}) (rate(gpuwatch_step_duration_seconds_sum{{{S}}}[{RATE}]))"
             f" / sum by ({BY}) (rate(gpuwatch_step_duration_seconds_count{{{S}}}[{RATE}]))")
FINDINGS = f"max without ({PER_PROCESS}) (gpuwatch_finding{{{S}}}) == 1"
GREEN, YELLOW, RED = "green", "#EAB839", "red"


@dataclass(frozen=True)
class Panel:
    """One panel: queries (PromQL) with legends, unit, thresholds ((value, colour) steps
    over a green base, or a first (None, colour) base of their own: red where higher
    is better) and whether a CPU run fills it."""

    title: str
    queries: tuple[tuple[str, str], ...]
    unit: str = "short"
    kind: str = "timeseries"
    cpu: bool = True
    description: str = ""
    thresholds: tuple[tuple[float | None, str], ...] = ()
    links: tuple[tuple[str, str], ...] = ()  # (title, url) data links, tables only


@dataclass(frozen=True)
class Row:
    title: str
    panels: tuple[Panel, ...]


@dataclass(frozen=True)
class Dashboard:
    uid: str
    title: str
    rows: tuple[Row, ...]
    per_job: bool = True
    tags: tuple[str, ...] = field(default=("gpuwatch",))

    @property
    def panels(self) -> tuple[Panel, ...]:
        return tuple(p for row in self.rows for p in row.panels)


JOB_LINK = ("Job overview: ${__data.fields.training_job}",
            "/d/gpuwatch-job?var-training_job=${__data.fields.training_job}&${__url_time_range}")

OVERVIEW = Dashboard("gpuwatch-job", "gpuwatch / Job overview", (
    Row("Progress", (
        Panel("Step time (mean)", ((MEAN_STEP, RANK),), unit="s"),
        Panel("Step time p90", ((
            f"histogram_quantile(0.9, sum by (le, {BY}) "
            f"(rate(gpuwatch_step_duration_seconds_bucket{{{S}}}[{RATE}])))", RANK),),
            unit="s"),
        Panel("Throughput", (
            (f"sum by (training_job, run) (rate(gpuwatch_samples_total{{{S}}}[{RATE}]))",
             "{{run}} samples/s"),
            (f"sum by (training_job, run) (rate(gpuwatch_tokens_total{{{S}}}[{RATE}]))",
             "{{run}} tokens/s")), unit="short"),
        Panel("Where step time goes", ((
            f"sum by (training_job, run, phase) (rate(gpuwatch_phase_seconds_total{{{S}}}"
            f"[{RATE}])) / ignoring(phase) group_left sum by (training_job, run) "
            f"(rate(gpuwatch_step_duration_seconds_sum{{{S}}}[{RATE}]))",
            "{{run}} {{phase}}"),), unit="percentunit",
            description="Goodput breakdown: each phase's share of step time."),
        Panel("Findings", ((FINDINGS, ""),), kind="table",
              description="Active findings; subject_rank is the rank a finding is about."),
    )),
    Row("GPU", (
        Panel("GPU utilisation", ((f"gpuwatch_gpu_utilization_ratio{{{G}}}",
                                   f"{RANK} gpu {{{{gpu}}}}"),), unit="percentunit", cpu=False,
              thresholds=((None, RED), (0.5, YELLOW), (0.8, GREEN))),
        Panel("GPU memory used", ((
            f"gpuwatch_gpu_memory_used_bytes{{{G}}} / gpuwatch_gpu_memory_total_bytes{{{G}}}",
            f"{RANK} gpu {{{{gpu}}}}"),), unit="percentunit", cpu=False,
            thresholds=((0.9, YELLOW), (0.97, RED))),
        Panel("GPU power", ((f"gpuwatch_gpu_power_watts{{{G}}}", f"{RANK} gpu {{{{gpu}}}}"),),
              unit="watt", cpu=False),
        Panel("Throttled share of time", ((
            f"max by ({BY}, gpu, reason) (rate(gpuwatch_gpu_throttle_seconds_total{{{G}}}"
            f"[{RATE}]))", f"{RANK} gpu {{{{gpu}}}} {{{{reason}}}}"),), unit="percentunit",
            cpu=False,
            thresholds=((0.05, YELLOW), (0.2, RED)),
            description="From NVML's violation counters: seconds of reduced clocks per second."),
        Panel("Tensor activity (dcgm-exporter)", ((
            f"avg by ({BY}, gpu) (DCGM_FI_PROF_PIPE_TENSOR_ACTIVE"
            f" * on (UUID) group_left ({BY}) gpuwatch_gpu_info{{{G}}})",
            f"{RANK} gpu {{{{gpu}}}}"),), unit="percentunit", cpu=False,
            description="dcgm-exporter's tensor pipe activity of this job's GPUs, joined on "
                        "the GPU UUID (empty without dcgm-exporter)."),
        Panel("Bus bandwidth against the link", (
            (f"gpuwatch_collective_bus_bandwidth_bytes_per_second{{{S}}}",
             f"achieved {RANK}"),
            (f"max by (link) (gpuwatch_gpu_link_bandwidth_bytes_per_second{{{G}}})",
             "{{link}} link")), unit="Bps", cpu=False,
            description="Collective bus bandwidth achieved (NCCL busbw) against the nominal "
                        "one-direction bandwidth of the link."),
    )),
    Row("Host and agent", (
        Panel("Training process CPU", ((
            f"rate(gpuwatch_process_cpu_seconds_total{{{S}}}[{RATE}])", RANK),),
            unit="short", description="Cores used by the training process."),
        Panel("DataLoader workers busy", ((f"gpuwatch_workers_cpu_ratio{{{S}}}", RANK),),
              unit="percentunit",
              thresholds=((0.9, RED),)),
        Panel("Checkpoint writes", ((
            f"rate(gpuwatch_checkpoint_bytes_total{{{S}}}[{RATE}])", RANK),),
            unit="Bps"),
        Panel("Agent", ((f"rate(gpuwatch_agent_cpu_seconds_total{{{S}}}[{RATE}])",
                         f"agent CPU {RANK}"),
                        (f"increase(gpuwatch_agent_marks_dropped_total{{{S}}}[{RATE}])",
                         f"marks dropped {RANK}")),
              description="gpuwatch's own cost and health."),
    )),
))

MIGRATION = Dashboard("gpuwatch-migrate", "gpuwatch / Should this job move to H100?", (
    Row("Verdicts", (
        Panel("Move verdicts", ((
            f'max without ({PER_PROCESS}) (gpuwatch_finding{{{S}, verdict="move_to_h100"}})'
            " == 1", ""),), kind="table", cpu=False),
        Panel("Fix-here verdicts (a bigger GPU would not help)", ((
            f'max without ({PER_PROCESS}) (gpuwatch_finding{{{S}, verdict="fix_here"}}) == 1',
            ""),), kind="table"),
        Panel("Projected speedup (low end, middle, high end)", (
            (f"min by (run, target) (gpuwatch_projected_speedup_low_ratio{{{S}}})",
             "{{run}} {{target}} low"),
            (f"max by (run, target) (gpuwatch_projected_speedup_ratio{{{S}}})",
             "{{run}} {{target}}"),
            (f"max by (run, target) (gpuwatch_projected_speedup_high_ratio{{{S}}})",
             "{{run}} {{target}} high")),
            kind="stat", unit="x", cpu=False,
            thresholds=((None, "blue"), (1.3, YELLOW), (1.8, GREEN))),
        Panel("Projected cost per step", ((
            f"max by (run, target) (gpuwatch_projected_cost_per_step_usd{{{S}}})",
            "{{run}} {{target}}"),),
            kind="stat", unit="currencyUSD", cpu=False),
    )),
    Row("Evidence", (
        Panel("Memory headroom", ((
            f"1 - max by ({BY}, gpu) (gpuwatch_allocator_reserved_bytes{{{G}}}) / "
            f"max by ({BY}, gpu) (gpuwatch_gpu_memory_total_bytes{{{G}}})",
            f"{RANK} gpu {{{{gpu}}}}"),), unit="percentunit", cpu=False,
            thresholds=((None, RED), (0.05, YELLOW), (0.2, GREEN))),
        Panel("Allocator retries and OOMs", (
            (f"sum by ({BY}) (increase(gpuwatch_allocator_alloc_retries_total{{{S}}}[{RATE}]))",
             f"retries {RANK}"),
            (f"sum by ({BY}) (increase(gpuwatch_allocator_ooms_total{{{S}}}[{RATE}]))",
             f"OOMs {RANK}")), cpu=False, thresholds=((1, RED),)),
        Panel("Activation-checkpoint recompute share", ((_share("recompute"), RANK),),
              unit="percentunit", thresholds=((0.15, YELLOW), (0.3, RED))),
        Panel("Collective wait share", ((_share("collective"), RANK),),
              unit="percentunit", thresholds=((0.15, YELLOW), (0.3, RED))),
        Panel("Data wait share", ((_share("data"), RANK),), unit="percentunit",
              thresholds=((0.1, YELLOW), (0.25, RED))),
        Panel("Compute skew across ranks", ((
            f'max by (training_job, run) (sum by ({BY}) (rate(gpuwatch_phase_seconds_total'
            f'{{{S}, phase="compute"}}[{RATE}]))) / min by (training_job, run) (sum by ({BY}) '
            f'(rate(gpuwatch_phase_seconds_total{{{S}, phase="compute"}}[{RATE}])))',
            "{{run}} slowest / fastest"),), unit="x",
            thresholds=((1.2, RED),),
            description="Above 1.2 one rank holds the others: a straggler, not a hardware "
                        "limit."),
        Panel("PCIe throughput", (
            (f"gpuwatch_gpu_pcie_rx_bytes_per_second{{{G}}}", f"rx {RANK}"),
            (f"gpuwatch_gpu_pcie_tx_bytes_per_second{{{G}}}", f"tx {RANK}")),
            unit="Bps", cpu=False),
        Panel("Tensor cores and DRAM (GPM)", (
            (f"gpuwatch_gpu_tensor_active_ratio{{{G}}}", f"tensor {RANK}"),
            (f"gpuwatch_gpu_dram_active_ratio{{{G}}}", f"DRAM {RANK}")),
            unit="percentunit", cpu=False),
    )),
))

FLEET = Dashboard("gpuwatch-fleet", "gpuwatch / Fleet", (
    Row("Now", (
        Panel("Jobs reporting", ((
            'count(count by (namespace, training_job) (gpuwatch_steps_total{namespace=~'
            '"$namespace"}))', "jobs"),), kind="stat"),
        Panel("Active findings by verdict", ((
            "count by (verdict) (count by (namespace, training_job, run, detector, verdict) "
            '(gpuwatch_finding{namespace=~"$namespace"} == 1))',
            "{{verdict}}"),), kind="stat", thresholds=((1, YELLOW),),
            description="Findings per verdict, each once however many ranks report it."),
        Panel("Jobs that should move to H100", ((
            'count(count by (namespace, training_job) (gpuwatch_finding{namespace=~"$namespace",'
            ' verdict="move_to_h100"} == 1))', "jobs"),), kind="stat", cpu=False,
            thresholds=((1, YELLOW),)),
        Panel("Findings by job", ((
            f'max without ({PER_PROCESS}) (gpuwatch_finding{{namespace=~"$namespace"}}) == 1',
            ""),), kind="table", links=(JOB_LINK,)),
    )),
    Row("Trends", (
        Panel("Throughput by job", ((
            'sum by (training_job) (rate(gpuwatch_samples_total{namespace=~"$namespace"}'
            f"[{RATE}]))", "{{training_job}}"),)),
        Panel("Mean step time by job", ((
            'sum by (training_job) (rate(gpuwatch_step_duration_seconds_sum{namespace=~'
            f'"$namespace"}}[{RATE}])) / sum by (training_job) (rate('
            f'gpuwatch_step_duration_seconds_count{{namespace=~"$namespace"}}[{RATE}]))',
            "{{training_job}}"),), unit="s"),
        Panel("GPU utilisation by job", ((
            'avg by (training_job) (gpuwatch_gpu_utilization_ratio{namespace=~"$namespace"})',
            "{{training_job}}"),), unit="percentunit", cpu=False,
            thresholds=((None, RED), (0.5, YELLOW), (0.8, GREEN))),
    )),
), per_job=False)

DASHBOARDS = (OVERVIEW, MIGRATION, FLEET)
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


def metric_names(expr: str) -> set[str]:
    """The gpuwatch metric names a PromQL expression reads (histogram suffixes stripped)."""
    names = set(re.findall(r"\b(gpuwatch_[a-z0-9_]+)", expr))
    return {re.sub(r"_(bucket|sum|count)$", "", n) for n in names}


def _thresholds(p: Panel) -> dict[str, Any]:
    steps = p.thresholds if p.thresholds and p.thresholds[0][0] is None \
        else ((None, GREEN), *p.thresholds)
    return {"mode": "absolute", "steps": [{"color": c, "value": v} for v, c in steps]}


def _panel(p: Panel, panel_id: int, x: int, y: int) -> dict[str, Any]:
    instant = p.kind in ("table", "stat")
    width = 6 if p.kind == "stat" else 12
    defaults: dict[str, Any] = {"unit": p.unit, "thresholds": _thresholds(p)}
    if p.kind == "timeseries" and p.thresholds:
        defaults["custom"] = {"thresholdsStyle": {"mode": "line+area"}}
    if p.links:
        defaults["links"] = [{"title": t, "url": u} for t, u in p.links]
    out: dict[str, Any] = {
        "id": panel_id, "type": p.kind, "title": p.title, "description": p.description,
        "datasource": DATASOURCE, "gridPos": {"h": 8, "w": width, "x": x, "y": y},
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "targets": [{"refId": chr(ord("A") + k), "expr": expr, "legendFormat": legend,
                     "datasource": DATASOURCE, "instant": instant, "range": not instant,
                     **({"format": "table"} if p.kind == "table" else {})}
                    for k, (expr, legend) in enumerate(p.queries)],
    }
    if p.kind == "timeseries":
        out["options"] = {"legend": {"displayMode": "table", "placement": "bottom",
                                     "showLegend": True, "calcs": ["mean", "lastNotNull", "max"],
                                     "sortBy": "Max", "sortDesc": True},
                          "tooltip": {"mode": "multi", "sort": "desc"}}
    elif p.kind == "stat":
        out["options"] = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "",
                                            "values": False},
                          "colorMode": "background", "graphMode": "none"}
    elif p.kind == "table":
        numeric = [{"targetField": f, "destinationType": "number"}
                   for f in ("rank", "subject_rank", "Value")]
        out["transformations"] = [
            {"id": "organize", "options": {"excludeByName": {"Time": True}}},
            {"id": "convertFieldType", "options": {"conversions": numeric, "fields": {}}},
            {"id": "sortBy", "options": {"sort": [{"field": "subject_rank"}]}},
        ]
        out["options"] = {"showHeader": True, "cellHeight": "sm"}
    return out


def model(d: Dashboard) -> dict[str, Any]:
    """The Grafana dashboard JSON model."""
    panels: list[dict[str, Any]] = []
    y = 0
    for row in d.rows:
        panels.append({"id": len(panels) + 1, "type": "row", "title": row.title,
                       "collapsed": False, "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
                       "panels": []})
        y += 1
        x = 0
        for p in row.panels:
            width = 6 if p.kind == "stat" else 12
            if x + width > 24:
                x, y = 0, y + 8
            panels.append(_panel(p, len(panels) + 1, x, y))
            x += width
        y += 8
    return {
        "uid": d.uid, "title": d.title, "tags": list(d.tags), "schemaVersion": 39,
        "editable": True, "refresh": "30s", "time": {"from": "now-3h", "to": "now"},
        "graphTooltip": 1,
        "links": [{"type": "dashboards", "tags": ["gpuwatch"], "asDropdown": False,
                   "includeVars": True, "keepTime": True, "title": "gpuwatch"}],
        "annotations": {"list": [_finding_annotation(d.per_job)]},
        "templating": {"list": _variables(d.per_job)}, "panels": panels,
    }


def _finding_annotation(per_job: bool) -> dict[str, Any]:
    scope = S if per_job else 'namespace=~"$namespace"'
    return {"name": "Findings", "enable": True, "iconColor": "orange",
            "datasource": DATASOURCE,
            "expr": f"max without ({PER_PROCESS}) (gpuwatch_finding{{{scope}}}) == 1",
            "step": "1m", "titleFormat": "{{detector}} ({{verdict}})",
            "textFormat": "{{training_job}} rank {{subject_rank}}",
            "tagKeys": "training_job,detector,verdict", "useValueForTime": False}


def _variables(per_job: bool) -> list[dict[str, Any]]:
    """datasource, then namespace (both kinds), then training_job, run, rank, gpu: each
    listing the values within the ones before it; ranks and GPUs sort as numbers."""
    out: list[dict[str, Any]] = [{"name": "datasource", "type": "datasource",
                                  "query": "prometheus", "label": "Data source"}]
    names = ("namespace", "training_job", "run", "rank", "gpu") if per_job else ("namespace",)
    scope = ""
    for name in names:
        source = "gpuwatch_gpu_info" if name == "gpu" else "gpuwatch_steps_total"
        query = f"label_values({source}{{{scope}}}, {name})"
        out.append({
            "name": name, "type": "query", "label": name, "multi": True, "includeAll": True,
            "allValue": ".*", "current": {"text": "All", "value": "$__all"},
            "refresh": 2, "datasource": DATASOURCE, "sort": 3 if name in ("rank", "gpu") else 1,
            "query": {"query": query, "refId": name}, "definition": query,
        })
        scope = ", ".join(filter(None, [scope, f'{name}=~"${name}"']))
    return out


def kubernetes_configmap() -> dict[str, Any]:
    """The dashboards as a ConfigMap for Grafana's dashboard sidecar."""
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "gpuwatch-dashboards", "labels": {"grafana_dashboard": "1"}},
            "data": {f"{d.uid}.json": json.dumps(model(d), indent=2) for d in DASHBOARDS}}


def export(directory: Path) -> list[Path]:
    """Write every dashboard as ``<uid>.json``; returns the files."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for d in DASHBOARDS:
        path = directory / f"{d.uid}.json"
        write_whole(path, json.dumps(model(d), indent=2) + "\n")
        written.append(path)
    return written
