"""Findings for people (text) and for programs (JSON)."""

from __future__ import annotations

import json

from gpuwatch.detection.projection import projection_text
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
            lines.append(f"  projection: {projection_text(f.projection)}")
        lines.append(f"  do: {f.action}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _evidence(evidence: dict[str, float]) -> str:
    return ", ".join(f"{k}={_number(v)}" for k, v in evidence.items())


def _number(v: float) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
