"""Topology, read once at start: GPU models and memory, NVLink links, P2P paths,
PCIe link, MIG mode and driver. It becomes one ``topology`` event."""

from __future__ import annotations

from typing import Any

from gpuwatch.probes.nvml import Nvml


def read_topology(nvml: Nvml, gpus: list[int]) -> dict[str, Any]:
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
        devices.append(_drop_none({
            "index": index,
            "name": _text(nvml.call("nvmlDeviceGetName", h)),
            "uuid": _text(nvml.call("nvmlDeviceGetUUID", h)),
            "pci_bus_id": _text(getattr(nvml.call("nvmlDeviceGetPciInfo", h), "busId", None)),
            "memory_total_bytes": getattr(mem, "total", None),
            "nvlink_links_active": sum(1 for s in states if s),
            "pcie_generation": nvml.call("nvmlDeviceGetCurrPcieLinkGeneration", h),
            "pcie_generation_max": nvml.call("nvmlDeviceGetMaxPcieLinkGeneration", h),
            "pcie_width": nvml.call("nvmlDeviceGetCurrPcieLinkWidth", h),
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
