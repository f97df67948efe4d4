"""sync_bottleneck: every rank spends a large share of each step waiting in collectives,
symmetrically (no straggler). Without NVLink: move to H100 (NVLink/NVSwitch), with a
ring all-reduce projection; with NVLink already: fix here (overlap, bucketing)."""

from __future__ import annotations

from gpuwatch.detection.context import Context, Detection, has_nvlink, mean_parts, recent
from gpuwatch.detection.projection import mean_step_parts, speedup_text
from gpuwatch.detection.rules import Rule
from gpuwatch.telemetry import Telemetry


def detect(views: list[Telemetry], rule: Rule, ctx: Context, now: float) -> Detection | None:
    since = now - rule.window_s
    th = rule.thresholds
    summaries = {v.rank: s for v in views if (s := recent(v, rule, now)) is not None}
    if len(summaries) < 2 or len(summaries) < len(views):
        return None
    shares = [s.collective_share for s in summaries.values()]
    if min(shares) < th["collective_share"]:
        return None
    if max(shares) - min(shares) > th["max_share_spread"]:
        return None  # asymmetric: one rank holds the others (the straggler's case)
    ranks = sorted(summaries)
    parts = [mean_parts(s) for s in summaries.values()]
    mean = mean_step_parts(parts)
    nvlink = any(has_nvlink(v) for v in views)
    proj = ctx.project(views, mean, since)
    share = sum(shares) / len(shares)
    evidence = {"collective_share_ratio": share, "collective_seconds_per_step": mean.comm,
                "collective_bytes_per_step": mean.comm_bytes,
                "collective_share_spread_ratio": max(shares) - min(shares),
                "speedup_ratio": proj.speedup}
    pcie = [x for v in views for x in v.values_since("nvml", "gpu_pcie_tx_bytes_per_second", since)]
    if pcie:
        evidence["pcie_tx_bytes_per_second"] = max(pcie)
    small = 0 < mean.comm_bytes < th["min_bytes_per_step"]
    if nvlink:
        link = "over NVLink already"
        advice = ("The link is not the problem: overlap communication with compute (DDP bucket "
                  "size, FSDP prefetch), accumulate gradients over more micro-batches, or "
                  "compress gradients.")
    elif small:
        link = f"{mean.comm_bytes / 1e6:.2f} MB per step: latency-bound, not bandwidth-bound"
        advice = ("Many small collectives: fuse them (flatten gradients into one buffer, larger "
                  "DDP buckets) and overlap them with backward. A faster link would barely help.")
    else:
        link = "no NVLink: over PCIe or the host"
        pays = ctx.decide(proj, otherwise="fix_here") == "move_to_h100"
        advice = (f"Move to {ctx.target} nodes with NVLink/NVSwitch; meanwhile accumulate "
                  "gradients over more micro-batches to all-reduce less often." if pays else
                  f"A move does not pay ({proj.economics['decision']['why']}): accumulate "
                  "gradients over more micro-batches and overlap the all-reduce with backward.")
    outcome = ("" if nvlink or small else
               f"; on {ctx.target} with NVLink the step is projected "
               f"{speedup_text(proj.as_dict())} faster")
    text = {"ranks_n": len(ranks), "link": link, "outcome": outcome, "advice": advice}
    if nvlink or small:
        return Detection(evidence, ranks, text=text, verdict="fix_here")
    return Detection(evidence, ranks, text=text, projection=proj.as_dict(),
                     verdict="move_to_h100" if pays else "fix_here")
