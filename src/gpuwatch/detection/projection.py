"""What another GPU would buy: the GPU catalogue and the step-time projection.

The measured step is split into parts, each scaled by the ratio that applies
to it (see docs/projection.md):

- tensor-bound compute by dense BF16 TFLOPS, memory-bound compute by memory
  bandwidth (the split from GPM tensor vs DRAM activity when measured, else
  half and half);
- exposed collective wait by link bandwidth, with the ring all-reduce model
  t = 2(n-1)/n * bytes / bus bandwidth;
- activation-checkpoint recompute like compute, or dropped when the target's
  memory makes checkpointing unnecessary;
- data wait, checkpoint saves and unattributed time do not scale.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

# PCIe x16, one direction, bytes/s (nominal), by generation.
PCIE_BYTES_PER_S = {3: 16e9, 4: 32e9, 5: 64e9, 6: 128e9}
DEFAULT_TENSOR_SHARE = 0.5
DEFAULT_TARGET = "H100 SXM"


@dataclass(frozen=True, slots=True)
class Gpu:
    """One catalogue entry. Bandwidths in bytes/s (NVLink: one direction), FLOPS in FLOP/s."""

    name: str
    match: tuple[str, ...]
    memory_bytes: float
    memory_bandwidth: float
    bf16_flops: float
    fp8_flops: float
    nvlink_bandwidth: float
    pcie_gen: int
    price_per_hour: float

    @property
    def link_bandwidth(self) -> float:
        """The GPU-to-GPU link a collective uses: NVLink if it has it, else PCIe."""
        return self.nvlink_bandwidth or PCIE_BYTES_PER_S.get(self.pcie_gen, 32e9)


@cache
def _raw_catalogue() -> dict[str, Any]:
    text = resources.files("gpuwatch.detection").joinpath("gpus.toml").read_text()
    gpus: dict[str, Any] = tomllib.loads(text)["gpus"]
    return gpus


def catalogue(prices: dict[str, float] | None = None) -> dict[str, Gpu]:
    """Every GPU in the catalogue by name, with ``prices`` (USD per GPU-hour) applied."""
    prices = prices or {}
    out = {}
    for name, g in _raw_catalogue().items():
        out[name] = Gpu(
            name=name, match=tuple(g["match"]), memory_bytes=g["memory_gb"] * 1e9,
            memory_bandwidth=g["memory_bandwidth_tbs"] * 1e12, bf16_flops=g["bf16_tflops"] * 1e12,
            fp8_flops=g["fp8_tflops"] * 1e12, nvlink_bandwidth=g["nvlink_gbs"] * 1e9 / 2,
            pcie_gen=int(g["pcie_gen"]), price_per_hour=prices.get(name, g["price_per_hour"]))
    return out


def identify(device_name: str | None, gpus: dict[str, Gpu]) -> Gpu | None:
    """The catalogue entry whose match strings occur in an NVML device name."""
    if not device_name:
        return None
    if device_name in gpus:
        return gpus[device_name]
    return next((g for g in gpus.values() if any(m in device_name for m in g.match)), None)


@dataclass(frozen=True, slots=True)
class StepParts:
    """A mean step split into parts (seconds). ``compute`` excludes recompute and comm."""

    compute: float
    recompute: float = 0.0
    comm: float = 0.0
    data: float = 0.0
    checkpoint: float = 0.0
    other: float = 0.0
    comm_bytes: float = 0.0  # bytes all-reduced per step (0: unknown)

    @property
    def total(self) -> float:
        return self.compute + self.recompute + self.comm + self.data + self.checkpoint + self.other


@dataclass
class Projection:
    """The projected step on ``target`` and what it costs; ``as_dict`` is what findings carry."""

    target: Gpu
    current: Gpu | None
    now: StepParts
    projected: StepParts
    gpus: int
    assumptions: list[str] = field(default_factory=list)
    workarounds_dropped: list[str] = field(default_factory=list)
    total_steps: int | None = None

    @property
    def speedup(self) -> float:
        return self.now.total / self.projected.total if self.projected.total > 0 else 1.0

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "target": self.target.name,
            "current": self.current.name if self.current else None,
            "step_seconds_now": self.now.total,
            "step_seconds_projected": self.projected.total,
            "speedup_ratio": self.speedup,
            "parts_seconds_now": _parts(self.now),
            "parts_seconds_projected": _parts(self.projected),
            "cost_per_step_target_usd": self._cost(self.projected.total, self.target),
            "assumptions": list(self.assumptions),
            "workarounds_dropped": list(self.workarounds_dropped),
        }
        if self.current is not None:
            out["cost_per_step_now_usd"] = self._cost(self.now.total, self.current)
        if self.total_steps:
            out["total_steps"] = self.total_steps
            out["run_hours_projected"] = self.projected.total * self.total_steps / 3600
            out["cost_per_run_target_usd"] = out["cost_per_step_target_usd"] * self.total_steps
            if self.current is not None:
                out["cost_per_run_now_usd"] = out["cost_per_step_now_usd"] * self.total_steps
        return out

    def _cost(self, step_s: float, gpu: Gpu) -> float:
        return step_s * gpu.price_per_hour / 3600 * self.gpus


def _parts(p: StepParts) -> dict[str, float]:
    return {"compute": p.compute, "recompute": p.recompute, "comm": p.comm, "data": p.data,
            "checkpoint": p.checkpoint, "other": p.other}


def project(
    now: StepParts,
    target: Gpu,
    current: Gpu | None,
    *,
    ranks: int = 1,
    tensor_share: float | None = None,
    link_now: float | None = None,
    drop_recompute: bool = False,
    total_steps: int | None = None,
) -> Projection:
    """Project ``now`` onto ``target``.

    ``tensor_share`` is the tensor-bound part of compute (0..1, from GPM);
    ``link_now`` the link collectives use today (bytes/s, one direction), used
    when the bytes per step are unknown; ``drop_recompute`` when the target's
    memory removes the need for activation checkpointing.
    """
    notes: list[str] = []
    dropped: list[str] = []
    if current is None:
        notes.append("current GPU unknown: compute is not scaled")
        compute_factor = 1.0
    else:
        if tensor_share is None:
            tensor_share = DEFAULT_TENSOR_SHARE
            notes.append("no GPM tensor/DRAM split measured: compute taken as half "
                         "tensor-bound, half memory-bound")
        compute_factor = (tensor_share * current.bf16_flops / target.bf16_flops
                          + (1 - tensor_share) * current.memory_bandwidth / target.memory_bandwidth)
    comm = _projected_comm(now, target, ranks, link_now, notes) if now.comm > 0 else 0.0
    recompute = now.recompute * compute_factor
    if drop_recompute and now.recompute > 0:
        recompute = 0.0
        share = now.recompute / now.total if now.total else 0.0
        dropped.append(f"activation checkpointing off: -{share:.0%} step time")
    notes.append("data wait, checkpoint saves and unattributed time do not scale")
    projected = StepParts(compute=now.compute * compute_factor, recompute=recompute, comm=comm,
                          data=now.data, checkpoint=now.checkpoint, other=now.other,
                          comm_bytes=now.comm_bytes)
    return Projection(target=target, current=current, now=now, projected=projected, gpus=ranks,
                      assumptions=notes, workarounds_dropped=dropped, total_steps=total_steps)


def ring_allreduce_seconds(nbytes: float, ranks: int, bus_bandwidth: float) -> float:
    """Ring all-reduce time: 2(n-1)/n * bytes / bandwidth (bytes/s, one direction)."""
    if ranks < 2 or bus_bandwidth <= 0:
        return 0.0
    return 2 * (ranks - 1) / ranks * nbytes / bus_bandwidth


def _projected_comm(now: StepParts, target: Gpu, ranks: int, link_now: float | None,
                    notes: list[str]) -> float:
    """Exposed collective seconds on ``target``: the ring model when bytes are known,
    else today's time scaled by the link bandwidth ratio. Never more than today."""
    target_bw = target.link_bandwidth
    notes.append(f"collectives on {target.name} at {target_bw / 1e9:.0f} GB/s per direction "
                 "(ring all-reduce model)")
    if now.comm_bytes > 0 and ranks > 1:
        measured = 2 * (ranks - 1) / ranks * now.comm_bytes / now.comm
        notes.append(f"today's bus bandwidth measured at {measured / 1e9:.2f} GB/s from "
                     f"{now.comm_bytes / 1e6:.1f} MB all-reduced per step")
        return min(ring_allreduce_seconds(now.comm_bytes, ranks, target_bw), now.comm)
    if link_now is None:
        link_now = PCIE_BYTES_PER_S[4]
        notes.append("today's link unknown: taken as PCIe gen4 x16 (32 GB/s)")
    return now.comm * min(link_now / target_bw, 1.0)
