"""Topology, read once at start: GPU models and memory, NVLink links, P2P paths,
PCIe link, MIG mode, driver, InfiniBand ports, and what each link can carry. It
becomes one ``topology`` event.

Link rates are per direction, bytes per second: what a bus bandwidth (nccl-tests
convention) is compared with.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from gpuwatch.probes.nvml import Nvml

# Per lane, per direction, after line encoding (bytes/s), by PCIe generation.
PCIE_LANE = {1: 0.25e9, 2: 0.5e9, 3: 0.985e9, 4: 1.969e9, 5: 3.938e9, 6: 7.563e9}
# Per NVLink link, per direction (bytes/s), by NVML's NVLink version: P100 (1), V100
# (2), A100 (3), H100 (4), B200 (5).
NVLINK_LINK = {1: 20e9, 2: 25e9, 3: 25e9, 4: 25e9, 5: 50e9}
SYS_INFINIBAND = Path("/sys/class/infiniband")


def pcie_rate(generation: Any, width: Any) -> float | None:
    """What the GPU's PCIe link carries per direction (bytes/s); None if unknown."""
    lane = PCIE_LANE.get(generation) if isinstance(generation, int) else None
    return lane * width if lane and isinstance(width, int) and width > 0 else None


def nvlink_rate(versions: list[Any]) -> float | None:
    """What a GPU's active NVLink links carry together per direction (bytes/s)."""
    total = sum(NVLINK_LINK.get(v, 0.0) for v in versions if isinstance(v, int))
    return total or None


def infiniband_ports(root: Path = SYS_INFINIBAND) -> list[dict[str, Any]]:
    """Active InfiniBand (or RoCE) ports from sysfs: device, port, link layer, rate
    (bytes/s per direction). Empty where there are none or sysfs is not readable."""
    ports = []
    try:
        paths = sorted(root.glob("*/ports/*"))
    except OSError:
        return []
    for port in paths:
        try:
            state = (port / "state").read_text().strip()
            rate = (port / "rate").read_text().strip()
            layer = (port / "link_layer").read_text().strip() if (port / "link_layer").exists() \
                else "InfiniBand"
        except OSError:
            continue
        gbit = re.match(r"([0-9.]+)\s*Gb/sec", rate)
        if "ACTIVE" not in state or gbit is None:
            continue
        ports.append({"device": port.parent.parent.name, "port": int(port.name)
                      if port.name.isdigit() else port.name, "link_layer": layer,
                      "bytes_per_second": float(gbit.group(1)) * 1e9 / 8})
    return ports


def read_topology(nvml: Nvml, gpus: list[int],
                  infiniband: Path = SYS_INFINIBAND) -> dict[str, Any]:
    """What the job runs on. Values NVML cannot give are left out (or None in the P2P map)."""
    count = nvml.call("nvmlDeviceGetCount", default=0)
    handles = {i: nvml.call("nvmlDeviceGetHandleByIndex", i) for i in range(count)}
    devices = []
    for index, h in handles.items():
        if h is None:
            continue
        mem = nvml.call("nvmlDeviceGetMemoryInfo", h)
        max_links = nvml.const("NVML_NVLINK_MAX_LINKS") or 0
        states = [nvml.call("nvmlDeviceGetNvLinkState", h, link) for link in range(max_links)]
        mig = nvml.call("nvmlDeviceGetMigMode", h)
        versions = [nvml.call("nvmlDeviceGetNvLinkVersion", h, link)
                    for link, state in enumerate(states) if state]
        gen = nvml.call("nvmlDeviceGetCurrPcieLinkGeneration", h)
        width = nvml.call("nvmlDeviceGetCurrPcieLinkWidth", h)
        devices.append(_drop_none({
            "index": index,
            "name": _text(nvml.call("nvmlDeviceGetName", h)),
            "uuid": _text(nvml.call("nvmlDeviceGetUUID", h)),
            "pci_bus_id": _text(getattr(nvml.call("nvmlDeviceGetPciInfo", h), "busId", None)),
            "memory_total_bytes": getattr(mem, "total", None),
            "nvlink_links_active": sum(1 for s in states if s),
            "nvlink_bytes_per_second": nvlink_rate(versions),
            "pcie_generation": gen,
            "pcie_generation_max": nvml.call("nvmlDeviceGetMaxPcieLinkGeneration", h),
            "pcie_width": width,
            "pcie_bytes_per_second": pcie_rate(gen, width),
            "pcie_width_max": nvml.call("nvmlDeviceGetMaxPcieLinkWidth", h),
            "mig_enabled": bool(mig[0]) if isinstance(mig, (list, tuple)) and mig else None,
        }))
    return {
        "driver": _text(nvml.call("nvmlSystemGetDriverVersion")),
        "cuda_driver": nvml.call("nvmlSystemGetCudaDriverVersion"),
        "gpu_count": count,
        "job_gpus": gpus,
        "devices": devices,
        "p2p": _p2p(nvml, handles),
        "infiniband": infiniband_ports(infiniband),
    }


def _p2p(nvml: Nvml, handles: dict[int, Any]) -> list[dict[str, Any]]:
    """Per ordered GPU pair: is P2P possible over NVLink, and can it read at all."""
    ok = nvml.const("NVML_P2P_STATUS_OK")
    out = []
    for a, ha in handles.items():
        for b, hb in handles.items():
            if a >= b or ha is None or hb is None:
                continue
            nvlink = nvml.call("nvmlDeviceGetP2PStatus", ha, hb,
                               nvml.const("NVML_P2P_CAPS_INDEX_NVLINK"))
            read = nvml.call("nvmlDeviceGetP2PStatus", ha, hb,
                             nvml.const("NVML_P2P_CAPS_INDEX_READ"))
            out.append({"gpus": [a, b],
                        "nvlink": None if nvlink is None else nvlink == ok,
                        "read": None if read is None else read == ok})
    return out


def _text(value: Any) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}
