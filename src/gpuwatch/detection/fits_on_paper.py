"""fits_on_paper: the model fits the card on paper but not in practice. Memory is at
the limit and the job shows it (allocator retries, OOMs, a cut batch, activation
checkpointing); when its need fits the target with room: move it (move_to_h100)."""

from __future__ import annotations

from gpuwatch.detection.context import (
    Context,
    Detection,
    job_devices,
    mean_parts,
    recent,
)
from gpuwatch.detection.projection import Gpu, speedup_text
from gpuwatch.detection.rules import Rule
from gpuwatch.telemetry import Telemetry

GIB = 2**30
BIGGER = ("H100 SXM", "H200", "B200")  # tried in order when the target is too small


def card_memory(view: Telemetry, ctx: Context) -> float | None:
    """Bytes on this rank's card: NVML, else topology, else the configured model."""
    for sample in view.gpu_samples():
        if sample.values.get("gpu_memory_total_bytes"):
            return sample.values["gpu_memory_total_bytes"]
    for device in job_devices(view):
        if device.get("memory_total_bytes"):
            return float(device["memory_total_bytes"])
    gpu = ctx.current_gpu(view)
    return gpu.memory_bytes if gpu else None


def detect(view: Telemetry, rule: Rule, ctx: Context, now: float) -> Detection | None:
    th = rule.thresholds
    since = now - rule.window_s
    summary = recent(view, rule, now)
    total = card_memory(view, ctx)
    if summary is None or not total:
        return None
    reserved = view.values_since("allocator", "allocator_reserved_bytes", since)
    used = view.values_since("nvml", "gpu_memory_used_bytes", since)
    peak = max(reserved + used, default=0.0)
    peak_ratio = peak / total
    retries = view.counter_rise("allocator", "allocator_alloc_retries_total", since)
    cut = next(((a, b) for a, b in view.batch_changes if b < a), None)
    recompute_share = summary.recompute_share
    act_ckpt = recompute_share >= th["recompute_share"]
    symptoms = {"allocator retries": retries > 0, "OOMs": view.ooms > 0,
                "batch cut": cut is not None, "activation checkpointing": act_ckpt}
    pressure = peak_ratio >= th["memory_ratio"]
    if not ((pressure and any(symptoms.values())) or sum(symptoms.values()) >= 2):
        return None

    need = memory_need(view, since, peak, cut, th["act_ckpt_memory_factor"] if act_ckpt else 1.0)
    target = pick_target(ctx, need, th["target_headroom"])
    fits = need <= target.memory_bytes * th["target_headroom"]
    parts = mean_parts(summary)
    proj = ctx.project([view], parts, since, target=target, drop_recompute=fits and act_ckpt)
    if cut is not None:
        proj.assumptions.append(f"batch back to {cut[0]}: per-sample compute unchanged")
    if act_ckpt:
        proj.assumptions.append(f"without activation checkpointing activations take "
                                f"{th['act_ckpt_memory_factor']:g}x the memory")
    if not view.values_since("allocator", "allocator_allocated_bytes", since):
        proj.assumptions.append("no allocator readings: half the peak taken as weights and "
                                "optimizer state")
    workarounds = list(proj.workarounds_dropped)
    if cut is not None:
        workarounds.append(f"batch size {cut[1]} -> {cut[0]}")
    evidence = {
        "memory_peak_ratio": peak_ratio, "memory_peak_bytes": peak, "memory_total_bytes": total,
        "alloc_retries_total": retries, "ooms_total": float(view.ooms),
        "recompute_share_ratio": recompute_share, "memory_need_bytes": need,
        "speedup_ratio": proj.speedup,
    }
    if cut is not None:
        evidence["batch_size_from"], evidence["batch_size_to"] = float(cut[0]), float(cut[1])
    inactive = view.values_since("allocator", "allocator_inactive_split_bytes", since)
    if inactive and reserved and reserved[-1] > 0:
        evidence["fragmentation_ratio"] = inactive[-1] / reserved[-1]
    pcie = view.values_since("nvml", "gpu_pcie_rx_bytes_per_second", since)
    if pcie:
        evidence["pcie_rx_bytes_per_second"] = max(pcie)
    text = {"rank": view.rank, "target": target.name, "memory_need_gib": need / GIB,
            "speedup": speedup_text(proj.as_dict()),
            "symptoms": ", ".join(k for k, v in symptoms.items() if v) or "no workaround yet",
            "workarounds": "; ".join(workarounds) or "run without the memory workarounds"}
    verdict = ctx.decide(proj, otherwise="fix_here", cannot_run_here=(
        f"memory at {peak_ratio:.0%} of the card with {text['symptoms']}")) if fits else "fix_here"
    return Detection(evidence, [view.rank], text=text, projection=proj.as_dict(),
                     verdict=verdict)


def memory_need(view: Telemetry, since: float, peak: float, cut: tuple[int, int] | None,
                act_factor: float) -> float:
    """Bytes the job would need without its workarounds: what stays allocated between
    steps (weights, gradients, optimizer state: the least allocated seen) plus the
    activations, scaled back to the original batch and to no activation checkpointing."""
    peak = max([*view.values_since("allocator", "allocator_reserved_peak_bytes", since), peak])
    allocated = view.values_since("allocator", "allocator_allocated_bytes", since)
    static = min(allocated) if allocated else peak / 2
    batch_factor = cut[0] / cut[1] if cut is not None else 1.0
    return static + max(peak - static, 0.0) * batch_factor * act_factor


def pick_target(ctx: Context, need: float, headroom: float) -> Gpu:
    """The configured target if the need fits it, else the first bigger card that fits."""
    target = ctx.target_gpu
    if need <= target.memory_bytes * headroom:
        return target
    for name in BIGGER:
        gpu = ctx.gpus.get(name)
        if gpu is not None and need <= gpu.memory_bytes * headroom:
            return gpu
    return target
