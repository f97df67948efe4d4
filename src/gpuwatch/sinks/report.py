"""Findings for people (text) and for programs (JSON)."""

from __future__ import annotations

import json
from typing import Any

from gpuwatch.records import Finding, to_dict


def findings_json(findings: list[Finding]) -> str:
    return json.dumps([to_dict(f) for f in findings], indent=2, default=str)


def findings_text(findings: list[Finding]) -> str:
    if not findings:
        return "No findings: nothing held this run back that gpuwatch can see."
    blocks = []
    for f in findings:
        ranks = ",".join(map(str, f.ranks))
        state = "" if f.state == "active" else " (resolved)"
        lines = [f"[{f.verdict}] {f.detector} - {f.severity}, rank {ranks}{state}",
                 f"  {f.summary}",
                 f"  evidence: {_evidence(f.evidence)}"]
        if f.projection:
            lines.append(f"  projection: {_projection(f.projection)}")
        lines.append(f"  do: {f.action}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _evidence(evidence: dict[str, float]) -> str:
    return ", ".join(f"{k}={_number(v)}" for k, v in evidence.items())


def _projection(p: dict[str, Any]) -> str:
    text = (f"{p['step_seconds_now']:.4g} s/step now -> {p['step_seconds_projected']:.4g} s/step "
            f"on {p['target']} ({p['speedup_ratio']:.2f}x)")
    if "cost_per_step_now_usd" in p:
        text += (f"; ${p['cost_per_step_now_usd']:.3g} -> ${p['cost_per_step_target_usd']:.3g} "
                 "per step")
    for workaround in p.get("workarounds_dropped", []):
        text += f"; {workaround}"
    return text


def _number(v: float) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
