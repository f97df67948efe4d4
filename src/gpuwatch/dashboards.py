"""Grafana dashboards, built from panel specs: a job overview, "should this job move
to H100?", and a fleet view. ``gpuwatch dashboards export`` writes them (the
committed copies in dashboards/ are checked against this), ``push`` uploads them.

Each panel says whether a CPU-only run fills it (``cpu``): the integration test
runs every query against a real Prometheus and demands data from those.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

S = 'job=~"$job", host=~"$host", rank=~"$rank"'
RATE = "$__rate_interval"


def _share(phase: str, by: str = "rank") -> str:
    return (f'sum by ({by}) (rate(gpuwatch_phase_seconds_total{{{S}, phase="{phase}"}}[{RATE}]))'
            f" / sum by ({by}) (rate(gpuwatch_step_duration_seconds_sum{{{S}}}[{RATE}]))")


MEAN_STEP = (f"sum by (rank) (rate(gpuwatch_step_duration_seconds_sum{{{S}}}[{RATE}]))"
             f" / sum by (rank) (rate(gpuwatch_step_duration_seconds_count{{{S}}}[{RATE}]))")


@dataclass(frozen=True)
class Panel:
    """One panel: queries (PromQL) with legends, unit, and whether a CPU run fills it."""

    title: str
    queries: tuple[tuple[str, str], ...]
    unit: str = "short"
    kind: str = "timeseries"
    cpu: bool = True
    description: str = ""


@dataclass(frozen=True)
class Dashboard:
    uid: str
    title: str
    panels: tuple[Panel, ...]
    per_job: bool = True
    tags: tuple[str, ...] = field(default=("gpuwatch",))


OVERVIEW = Dashboard("gpuwatch-job", "gpuwatch / Job overview", (
    Panel("Step time (mean)", ((MEAN_STEP, "rank {{rank}}"),), unit="s"),
    Panel("Step time p90", ((
        "histogram_quantile(0.9, sum by (le, rank) "
        f"(rate(gpuwatch_step_duration_seconds_bucket{{{S}}}[{RATE}])))", "rank {{rank}}"),),
        unit="s"),
    Panel("Throughput", (
        (f"sum by (job) (rate(gpuwatch_samples_total{{{S}}}[{RATE}]))", "samples/s"),
        (f"sum by (job) (rate(gpuwatch_tokens_total{{{S}}}[{RATE}]))", "tokens/s")), unit="short"),
    Panel("Where step time goes", ((
        f"sum by (phase) (rate(gpuwatch_phase_seconds_total{{{S}}}[{RATE}])) / ignoring(phase) "
        f"group_left sum(rate(gpuwatch_step_duration_seconds_sum{{{S}}}[{RATE}]))", "{{phase}}"),),
        unit="percentunit", description="Goodput breakdown: each phase's share of step time."),
    Panel("Findings", ((f"max by (detector, verdict, severity, rank) (gpuwatch_finding{{{S}}})",
                        "{{detector}} ({{verdict}}) rank {{rank}}"),), kind="table"),
    Panel("GPU utilisation", ((f"gpuwatch_gpu_utilization_ratio{{{S}}}",
                               "rank {{rank}} gpu {{gpu}}"),), unit="percentunit", cpu=False),
    Panel("GPU memory used", ((
        f"gpuwatch_gpu_memory_used_bytes{{{S}}} / gpuwatch_gpu_memory_total_bytes{{{S}}}",
        "rank {{rank}} gpu {{gpu}}"),), unit="percentunit", cpu=False),
    Panel("GPU power", ((f"gpuwatch_gpu_power_watts{{{S}}}", "rank {{rank}} gpu {{gpu}}"),),
          unit="watt", cpu=False),
    Panel("GPU clock events", ((f"gpuwatch_gpu_clock_event_active{{{S}}} == 1",
                                "rank {{rank}} gpu {{gpu}} {{reason}}"),), cpu=False),
    Panel("Training process CPU", ((
        f"rate(gpuwatch_process_cpu_seconds_total{{{S}}}[{RATE}])", "rank {{rank}}"),),
        unit="short", description="Cores used by the training process."),
    Panel("DataLoader workers busy", ((f"gpuwatch_workers_cpu_ratio{{{S}}}", "rank {{rank}}"),),
          unit="percentunit"),
    Panel("Checkpoint writes", ((
        f"rate(gpuwatch_checkpoint_bytes_total{{{S}}}[{RATE}])", "rank {{rank}}"),),
        unit="Bps"),
    Panel("Agent", ((f"rate(gpuwatch_agent_cpu_seconds_total{{{S}}}[{RATE}])",
                     "agent CPU rank {{rank}}"),
                    (f"gpuwatch_agent_marks_dropped_total{{{S}}}", "marks dropped rank {{rank}}")),
          description="gpuwatch's own cost and health."),
))

MIGRATION = Dashboard("gpuwatch-migrate", "gpuwatch / Should this job move to H100?", (
    Panel("Move verdicts", ((
        f'max by (detector, rank) (gpuwatch_finding{{{S}, verdict="move_to_h100"}})',
        "{{detector}} rank {{rank}}"),), kind="table", cpu=False),
    Panel("Fix-here verdicts (a bigger GPU would not help)", ((
        f'max by (detector, rank) (gpuwatch_finding{{{S}, verdict="fix_here"}})',
        "{{detector}} rank {{rank}}"),), kind="table"),
    Panel("Projected speedup", ((f"max by (target) (gpuwatch_projected_speedup_ratio{{{S}}})",
                                 "{{target}}"),), kind="stat", unit="x", cpu=False),
    Panel("Projected cost per step", ((
        f"max by (target) (gpuwatch_projected_cost_per_step_usd{{{S}}})", "{{target}}"),),
        kind="stat", unit="currencyUSD", cpu=False),
    Panel("Memory headroom", ((
        f"1 - max by (rank, gpu) (gpuwatch_allocator_reserved_bytes{{{S}}}) / "
        f"max by (rank, gpu) (gpuwatch_gpu_memory_total_bytes{{{S}}})",
        "rank {{rank}} gpu {{gpu}}"),), unit="percentunit", cpu=False),
    Panel("Allocator retries and OOMs", (
        (f"sum by (rank) (increase(gpuwatch_allocator_alloc_retries_total{{{S}}}[{RATE}]))",
         "retries rank {{rank}}"),
        (f"sum by (rank) (increase(gpuwatch_allocator_ooms_total{{{S}}}[{RATE}]))",
         "OOMs rank {{rank}}")), cpu=False),
    Panel("Activation-checkpoint recompute share", ((_share("recompute"), "rank {{rank}}"),),
          unit="percentunit"),
    Panel("Collective wait share", ((_share("collective"), "rank {{rank}}"),),
          unit="percentunit"),
    Panel("Data wait share", ((_share("data"), "rank {{rank}}"),), unit="percentunit"),
    Panel("Compute skew across ranks", ((
        f'max(sum by (rank) (rate(gpuwatch_phase_seconds_total{{{S}, phase="compute"}}[{RATE}])))'
        f' / min(sum by (rank) (rate(gpuwatch_phase_seconds_total{{{S}, phase="compute"}}'
        f"[{RATE}])))", "slowest / fastest"),), unit="x",
        description="Above 1.2 one rank holds the others: a straggler, not a hardware limit."),
    Panel("PCIe throughput", ((f"gpuwatch_gpu_pcie_rx_bytes_per_second{{{S}}}", "rx rank {{rank}}"),
                              (f"gpuwatch_gpu_pcie_tx_bytes_per_second{{{S}}}",
                               "tx rank {{rank}}")), unit="Bps", cpu=False),
    Panel("Tensor cores and DRAM (GPM)", (
        (f"gpuwatch_gpu_tensor_active_ratio{{{S}}}", "tensor rank {{rank}}"),
        (f"gpuwatch_gpu_dram_active_ratio{{{S}}}", "DRAM rank {{rank}}")),
        unit="percentunit", cpu=False),
))

FLEET = Dashboard("gpuwatch-fleet", "gpuwatch / Fleet", (
    Panel("Jobs reporting", (("count(count by (job) (gpuwatch_steps_total))", "jobs"),),
          kind="stat"),
    Panel("Active findings by verdict", (("count by (verdict) (gpuwatch_finding == 1)",
                                          "{{verdict}}"),), kind="stat"),
    Panel("Jobs that should move to H100", ((
        'count(count by (job) (gpuwatch_finding{verdict="move_to_h100"} == 1))', "jobs"),),
        kind="stat", cpu=False),
    Panel("Findings by job", (("max by (job, detector, verdict) (gpuwatch_finding)",
                               "{{job}} {{detector}}"),), kind="table"),
    Panel("Throughput by job", (("sum by (job) (rate(gpuwatch_samples_total[$__rate_interval]))",
                                 "{{job}}"),)),
    Panel("Mean step time by job", ((
        "sum by (job) (rate(gpuwatch_step_duration_seconds_sum[$__rate_interval])) / sum by (job) "
        "(rate(gpuwatch_step_duration_seconds_count[$__rate_interval]))", "{{job}}"),), unit="s"),
    Panel("GPU utilisation by job", (("avg by (job) (gpuwatch_gpu_utilization_ratio)", "{{job}}"),),
          unit="percentunit", cpu=False),
), per_job=False)

DASHBOARDS = (OVERVIEW, MIGRATION, FLEET)


def metric_names(expr: str) -> set[str]:
    """The gpuwatch metric names a PromQL expression reads (histogram suffixes stripped)."""
    names = set(re.findall(r"\b(gpuwatch_[a-z0-9_]+)", expr))
    return {re.sub(r"_(bucket|sum|count)$", "", n) for n in names}


def model(d: Dashboard) -> dict[str, Any]:
    """The Grafana dashboard JSON model."""
    panels = []
    for i, p in enumerate(d.panels):
        width = 12 if p.kind != "stat" else 6
        panels.append({
            "id": i + 1, "type": p.kind, "title": p.title, "description": p.description,
            "datasource": {"type": "prometheus", "uid": "${datasource}"},
            "gridPos": {"h": 8, "w": width, "x": (i % 2) * 12, "y": (i // 2) * 8},
            "fieldConfig": {"defaults": {"unit": p.unit}, "overrides": []},
            "targets": [{"refId": chr(ord("A") + k), "expr": expr, "legendFormat": legend,
                         "datasource": {"type": "prometheus", "uid": "${datasource}"}}
                        for k, (expr, legend) in enumerate(p.queries)],
        })
    return {
        "uid": d.uid, "title": d.title, "tags": list(d.tags), "schemaVersion": 39,
        "editable": True, "refresh": "10s", "time": {"from": "now-1h", "to": "now"},
        "templating": {"list": _variables(d.per_job)}, "panels": panels,
    }


def _variables(per_job: bool) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [{"name": "datasource", "type": "datasource",
                                  "query": "prometheus", "label": "Data source"}]
    if not per_job:
        return out
    scope = ""
    for name in ("job", "host", "rank"):
        out.append({
            "name": name, "type": "query", "label": name, "multi": True, "includeAll": True,
            "refresh": 2, "datasource": {"type": "prometheus", "uid": "${datasource}"},
            "query": {"query": f"label_values(gpuwatch_steps_total{{{scope}}}, {name})",
                      "refId": name},
            "definition": f"label_values(gpuwatch_steps_total{{{scope}}}, {name})",
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
        path.write_text(json.dumps(model(d), indent=2) + "\n")
        written.append(path)
    return written
