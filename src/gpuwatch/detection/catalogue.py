"""The GPU catalogue (``gpus.toml``): spec-sheet figures per card and exact name matching.

Every entry cites its source and date. Names match NVML's device name as a whole
(``re.fullmatch``), so "GH200" never matches H200 and a MIG slice ("... MIG
1g.10gb") matches no entry: an unknown card is said to be unknown, never guessed.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any, Literal

Precision = Literal["tf32", "bf16", "fp8"]
PRECISIONS: tuple[Precision, ...] = ("tf32", "bf16", "fp8")

# PCIe x16, one direction, bytes/s (nominal), by generation.
PCIE_BYTES_PER_S = {3: 16e9, 4: 32e9, 5: 64e9, 6: 128e9}


@dataclass(frozen=True, slots=True)
class Gpu:
    """One catalogue entry. FLOPS are dense tensor FLOP/s; bandwidths bytes/s (NVLink:
    one direction); power watts; price USD per GPU-hour with where it came from."""

    name: str
    match: tuple[str, ...]
    memory_bytes: float
    memory_bandwidth: float
    tf32_flops: float
    bf16_flops: float  # BF16/FP16 with FP32 accumulate
    fp16acc_flops: float  # FP16 with FP16 accumulate (GeForce: twice bf16_flops)
    fp8_flops: float  # FP32 accumulate; 0: no FP8
    fp8acc16_flops: float
    fp4_flops: float
    nvlink_bandwidth: float
    pcie_gen: int
    power_watts: float
    price_per_hour: float
    price_source: str
    source: str
    source_date: str
    nvlink_built_in: bool = False  # the board carries its NVLink (SXM): never without it
    peer_to_peer: bool = True  # copies between two such cards over PCIe (GeForce: none)

    @property
    def link_bandwidth(self) -> float:
        """The GPU-to-GPU link a collective uses: NVLink if it has it, else PCIe."""
        return self.nvlink_bandwidth or PCIE_BYTES_PER_S.get(self.pcie_gen, 32e9)

    def tensor_flops(self, precision: Precision) -> float:
        """Dense tensor FLOP/s at ``precision`` with FP32 accumulate (0: not supported)."""
        return {"tf32": self.tf32_flops, "bf16": self.bf16_flops, "fp8": self.fp8_flops}[precision]

    def matches(self, device_name: str) -> bool:
        return any(re.fullmatch(p, device_name) for p in self.match)


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
        t = 1e12
        price_source = ("setting `prices`" if name in prices
                        else f"default as of {g['price_date']}")
        out[name] = Gpu(
            name=name, match=tuple(g["match"]), memory_bytes=g["memory_gb"] * 2**30,
            memory_bandwidth=g["memory_bandwidth_tbs"] * 1e12,
            tf32_flops=g["tf32_tflops"] * t, bf16_flops=g["bf16_tflops"] * t,
            fp16acc_flops=g.get("fp16acc_tflops", g["bf16_tflops"]) * t,
            fp8_flops=g["fp8_tflops"] * t,
            fp8acc16_flops=g.get("fp8acc16_tflops", g["fp8_tflops"]) * t,
            fp4_flops=g["fp4_tflops"] * t, nvlink_bandwidth=g["nvlink_gbs"] * 1e9 / 2,
            pcie_gen=int(g["pcie_gen"]), power_watts=float(g["power_w"]),
            price_per_hour=prices.get(name, g["price_per_hour"]), price_source=price_source,
            source=g["source"], source_date=g["source_date"],
            nvlink_built_in=bool(g.get("nvlink_built_in", False)),
            peer_to_peer=bool(g.get("peer_to_peer", True)))
    return out


def identify(device_name: str | None, gpus: dict[str, Gpu]) -> Gpu | None:
    """The catalogue entry for a catalogue name or a whole NVML device name; None if unknown."""
    if not device_name:
        return None
    if device_name in gpus:
        return gpus[device_name]
    return next((g for g in gpus.values() if g.matches(device_name)), None)
