"""Findings for people (text) and for programs (JSON)."""

from __future__ import annotations

from collections.abc import Sequence

from gpuwatch.detection.engine import RANK_DETECTORS
from gpuwatch.detection.projection import projection_text
from gpuwatch.records import Finding, to_dict
from gpuwatch.sinks import fmt


def findings_json(findings: list[Finding]) -> str:
    return fmt.json_text([to_dict(f) for f in findings])


def fold_ranks(findings: Sequence[Finding]) -> list[tuple[Finding, list[int]]]:
    """Each finding with the ranks it stands for: a rank detector's findings that say the
    same (detector, verdict, severity, state, and the summary's words: ``fmt.wording``)
    on several ranks of a job become one, the lowest rank's figures standing for the rest
    (a data-parallel job's ranks see alike)."""
    out: list[tuple[Finding, list[int]]] = []
    alike: dict[tuple[str, ...], list[int]] = {}
    for f in sorted(findings, key=lambda f: f.ranks):
        if f.detector not in RANK_DETECTORS or len(f.ranks) != 1:
            out.append((f, list(f.ranks)))
            continue
        key = (f.job, f.detector, f.verdict, str(f.severity), f.state, fmt.wording(f.summary))
        if key in alike:
            alike[key].extend(f.ranks)
        else:
            alike[key] = list(f.ranks)
            out.append((f, alike[key]))
    order = {id(f): i for i, f in enumerate(findings)}
    return sorted(out, key=lambda pair: order[id(pair[0])])


def rank_text(f: Finding, ranks: list[int]) -> str:
    """How a finding names its ranks: "rank 3", "ranks 0-15" (a job finding's), or a
    folded finding's "ranks 0-31 (rank 0's figures)"."""
    if len(set(ranks)) <= 1:
        return f"rank {fmt.spans(f.ranks)}"
    if ranks == f.ranks:  # a job finding's own ranks
        return f"ranks {fmt.spans(ranks)}"
    return f"ranks {fmt.spans(ranks)} (rank {f.ranks[0]}'s figures)"


def findings_text(findings: list[Finding]) -> str:
    if not findings:
        return "No findings: nothing held this run back that gpuwatch can see."
    blocks = []
    for f, ranks in fold_ranks(findings):
        state = "" if f.state == "active" else " (resolved)"
        lines = [f"[{f.verdict}] {f.detector} - {f.severity}, {rank_text(f, ranks)}{state}",
                 f"  {f.summary}",
                 f"  evidence: {evidence_text(f.evidence)}"]
        if f.projection:
            lines.append(f"  projection: {projection_text(f.projection)}")
        lines.append(f"  do: {f.action}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def evidence_text(evidence: dict[str, float]) -> str:
    """A finding's evidence as "key=value" pairs: figures to 4 significant digits, times
    of day (keys ending ``_time_seconds``) as UTC."""
    return ", ".join(f"{k}={fmt.utc(v) if k.endswith('_time_seconds') else _number(v)}"
                     for k, v in evidence.items())


def _number(v: float) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
