"""sync_bottleneck: every rank spends a large share of each step waiting in collectives,
symmetrically (no straggler). Without NVLink: move to H100 (NVLink/NVSwitch), with a
ring all-reduce projection; with NVLink already: fix here (overlap, bucketing)."""

from __future__ import annotations

from gpuwatch.detection.context import Context, Detection, has_nvlink, mean_parts, recent
from gpuwatch.detection.projection import StepParts, project
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
    mean = StepParts(**{f: sum(getattr(p, f) for p in parts) / len(parts)
                        for f in ("compute", "recompute", "comm", "data", "checkpoint", "other",
                                  "comm_bytes")})
    nvlink = any(has_nvlink(v) for v in views)
    proj = project(mean, ctx.target_gpu, ctx.current_gpu(views[0]), ranks=len(ranks))
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
        advice = (f"Move to {ctx.target} nodes with NVLink/NVSwitch; meanwhile accumulate "
                  "gradients over more micro-batches to all-reduce less often.")
    outcome = ("" if nvlink or small else
               f"; on {ctx.target} with NVLink the step is projected {proj.speedup:.2f}x faster")
    text = {"ranks_n": len(ranks), "link": link, "outcome": outcome, "advice": advice}
    if nvlink or small:
        return Detection(evidence, ranks, text=text, verdict="fix_here")
    return Detection(evidence, ranks, text=text, projection=proj.as_dict(),
                     verdict="move_to_h100")
