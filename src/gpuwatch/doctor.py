"""``gpuwatch doctor``: what this machine offers the agent."""

from __future__ import annotations

import importlib.metadata
import os
from collections.abc import Mapping
from typing import Any

from gpuwatch._version import __version__
from gpuwatch.faults import FaultLog
from gpuwatch.probes.nccl import timing_setting
from gpuwatch.probes.nvml import Nvml, load_pynvml
from gpuwatch.probes.topology import read_topology


def report(nvml_library: Any = None,
           environ: Mapping[str, str] | None = None) -> list[tuple[str, str]]:
    """(item, finding) rows; ``nvml_library`` defaults to pynvml, ``environ`` to the
    process environment."""
    rows = [("gpuwatch", __version__), ("torch", _torch()),
            ("NCCL timing", timing_setting(os.environ if environ is None else environ)[1])]
    nvml = Nvml(nvml_library if nvml_library is not None else load_pynvml(), FaultLog())
    if not nvml.init():
        rows.append(("NVML", "no (no NVIDIA driver or GPU): the agent runs host-only"))
        return rows
    try:
        topo = read_topology(nvml, [])
        rows.append(("NVML", f"yes, driver {topo.get('driver')}"))
        rows.append(("GPUs", str(topo["gpu_count"])))
        for dev in topo["devices"]:
            handle = nvml.call("nvmlDeviceGetHandleByIndex", dev["index"])
            support = nvml.call("nvmlGpmQueryDeviceSupport", handle)
            gpm = "yes" if getattr(support, "isSupportedDevice", 0) else "no"
            mem = dev.get("memory_total_bytes", 0) / 2**30
            rows.append((f"GPU {dev['index']}",
                         f"{dev.get('name')} {mem:.0f} GiB, GPM {gpm}, "
                         f"NVLink links {dev.get('nvlink_links_active', 0)}, "
                         f"PCIe gen {dev.get('pcie_generation', '?')} "
                         f"x{dev.get('pcie_width', '?')}"))
        nvlink_pairs = [p for p in topo["p2p"] if p["nvlink"]]
        rows.append(("P2P over NVLink", f"{len(nvlink_pairs)} of {len(topo['p2p'])} GPU pairs"))
    finally:
        nvml.shutdown(timeout=1.0)
    return rows


def _torch() -> str:
    try:
        version = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return "not installed (the agent needs the job's own torch)"
    try:
        import torch

        cuda = "CUDA available" if torch.cuda.is_available() else "no CUDA device"
    except Exception as exc:
        cuda = f"import failed: {exc}"
    return f"{version} ({cuda})"
