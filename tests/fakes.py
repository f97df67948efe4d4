"""Fakes for what cannot exist on a CPU-only machine: an NVML library with GPUs.

``FakeNvml`` mimics the pynvml module's surface that gpuwatch uses, with the
same error type and constants, and can be told to fail per function the way
real drivers do (NOT_SUPPORTED, GPU_IS_LOST, UNKNOWN, TIMEOUT) or to hang.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from gpuwatch.instrument.identity import Identity, explicit


class NVMLError(Exception):
    def __init__(self, value: int) -> None:
        super().__init__(f"NVML error {value}")
        self.value = value


@dataclass
class FakeGpu:
    name: str = "NVIDIA H100 80GB HBM3"
    uuid: str = "GPU-00000000-0000-0000-0000-000000000000"
    total: int = 80 * 2**30
    used: int = 60 * 2**30
    reserved: int = 512 * 2**20
    util: int = 87
    mem_util: int = 45
    power_mw: int = 350_000
    energy_mj: int = 1_000_000
    temp: int = 65
    sm_mhz: int = 1980
    mem_mhz: int = 2619
    reasons: int = 0
    pcie_kbs: int = 12_000
    nvlinks: int = 18  # active links; 0: no NVLink (NOT_SUPPORTED, as on consumer cards)
    gpm: bool = True
    procs: list[tuple[int, int]] = field(default_factory=list)  # (pid, bytes)
    pci_bus_id: str = "00000000:3B:00.0"
    violation_ns: dict[int, int] = field(default_factory=dict)  # perf policy -> ns throttled


# Per-call times of a healthy datacenter driver (seconds): PCIe throughput blocks for
# its ~20 ms sampling window; NVLink state and field reads are ioctls; the rest are
# cached reads of a few tens of microseconds.
REALISTIC_LATENCY = {
    "nvmlDeviceGetPcieThroughput": 0.020,
    "nvmlDeviceGetNvLinkState": 0.000_2,
    "nvmlDeviceGetFieldValues": 0.000_3,
    "nvmlDeviceGetUtilizationRates": 0.000_05,
    "nvmlDeviceGetMemoryInfo": 0.000_05,
    "nvmlDeviceGetPowerUsage": 0.000_05,
    "nvmlDeviceGetTotalEnergyConsumption": 0.000_05,
    "nvmlDeviceGetTemperature": 0.000_03,
    "nvmlDeviceGetClockInfo": 0.000_03,
    "nvmlDeviceGetCurrentClocksEventReasons": 0.000_03,
    "nvmlDeviceGetComputeRunningProcesses": 0.000_2,
    "nvmlDeviceGetViolationStatus": 0.000_05,
    "nvmlGpmSampleGet": 0.000_5,
}


class FakeNvml:
    """A pynvml stand-in. ``fail`` maps function name -> error code raised on each call;
    ``hang`` maps function name -> seconds to block (a fault); ``latency`` maps function
    name -> seconds each call takes on a healthy driver, spent blocked outside the GIL
    as ctypes calls into libnvidia-ml are (see ``REALISTIC_LATENCY``); ``calls`` counts
    calls."""

    NVMLError = NVMLError
    NVML_SUCCESS = 0
    NVML_ERROR_INVALID_ARGUMENT = 2
    NVML_ERROR_NOT_SUPPORTED = 3
    NVML_ERROR_NO_PERMISSION = 4
    NVML_ERROR_FUNCTION_NOT_FOUND = 13
    NVML_ERROR_TIMEOUT = 10
    NVML_ERROR_GPU_IS_LOST = 15
    NVML_ERROR_UNKNOWN = 999
    NVML_ERROR_DRIVER_NOT_LOADED = 9
    NVML_TEMPERATURE_GPU = 0
    NVML_CLOCK_SM = 1
    NVML_CLOCK_MEM = 2
    NVML_PCIE_UTIL_TX_BYTES = 0
    NVML_PCIE_UTIL_RX_BYTES = 1
    NVML_NVLINK_MAX_LINKS = 18
    NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX = 138
    NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX = 139
    NVML_P2P_CAPS_INDEX_READ = 0
    NVML_P2P_CAPS_INDEX_NVLINK = 2
    NVML_P2P_STATUS_OK = 0
    NVML_P2P_STATUS_NOT_SUPPORTED = 5
    NVML_GPM_METRICS_GET_VERSION = 1
    NVML_GPM_METRIC_SM_UTIL = 2
    NVML_GPM_METRIC_SM_OCCUPANCY = 3
    NVML_GPM_METRIC_ANY_TENSOR_UTIL = 5
    NVML_GPM_METRIC_DRAM_BW_UTIL = 10
    nvmlMemory_v2 = 0x02000028
    NVML_PERF_POLICY_POWER = 0
    NVML_PERF_POLICY_THERMAL = 1
    NVML_PERF_POLICY_SYNC_BOOST = 2

    def __init__(self, gpus: list[FakeGpu] | None = None, *, init_error: int | None = None,
                 fail: dict[str, int] | None = None, hang: dict[str, float] | None = None,
                 latency: dict[str, float] | None = None,
                 driver: str = "570.86.15") -> None:
        self.gpus = gpus if gpus is not None else [FakeGpu()]
        self.init_error = init_error
        self.fail = fail or {}
        self.hang = {**(latency or {}), **(hang or {})}
        self.driver = driver
        self.calls: Counter[str] = Counter()
        self.gpm_ticks = 0

    def __getattribute__(self, name: str) -> Any:
        attr = object.__getattribute__(self, name)
        if name.startswith("nvml") and callable(attr):
            calls = object.__getattribute__(self, "calls")
            fail = object.__getattribute__(self, "fail")
            hang = object.__getattribute__(self, "hang")

            def guarded(*args: Any) -> Any:
                calls[name] += 1
                if name in hang:
                    time.sleep(hang[name])
                if name in fail:
                    raise NVMLError(fail[name])
                return attr(*args)
            return guarded
        return attr

    def _gpu(self, handle: Any) -> FakeGpu:
        gpu: FakeGpu = handle
        return gpu

    # -- library ----------------------------------------------------------------
    def nvmlInit(self) -> None:
        if self.init_error is not None:
            raise NVMLError(self.init_error)

    def nvmlShutdown(self) -> None:
        pass

    def nvmlSystemGetDriverVersion(self) -> str:
        return self.driver

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        return 12080

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, i: int) -> FakeGpu:
        if i >= len(self.gpus):
            raise NVMLError(self.NVML_ERROR_INVALID_ARGUMENT)
        return self.gpus[i]

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> FakeGpu:
        for g in self.gpus:
            if g.uuid == uuid:
                return g
        raise NVMLError(self.NVML_ERROR_INVALID_ARGUMENT)

    def nvmlDeviceGetIndex(self, h: FakeGpu) -> int:
        return self.gpus.index(h)

    # -- device -----------------------------------------------------------------
    def nvmlDeviceGetName(self, h: FakeGpu) -> str:
        return h.name

    def nvmlDeviceGetUUID(self, h: FakeGpu) -> str:
        return h.uuid

    def nvmlDeviceGetPciInfo(self, h: FakeGpu) -> Any:
        return SimpleNamespace(busId=self._gpu(h).pci_bus_id.encode())

    def nvmlDeviceGetViolationStatus(self, h: FakeGpu, policy: int) -> Any:
        """Like NVML: the cumulative nanoseconds clocks were held down by ``policy``."""
        ns = self._gpu(h).violation_ns.get(policy)
        if ns is None:
            raise NVMLError(self.NVML_ERROR_NOT_SUPPORTED)
        return SimpleNamespace(referenceTime=0, violationTime=ns)

    def nvmlDeviceGetUtilizationRates(self, h: FakeGpu) -> Any:
        return SimpleNamespace(gpu=h.util, memory=h.mem_util)

    def nvmlDeviceGetMemoryInfo(self, h: FakeGpu, version: int | None = None) -> Any:
        if version is None:
            return SimpleNamespace(total=h.total, used=h.used, free=h.total - h.used)
        return SimpleNamespace(total=h.total, used=h.used, reserved=h.reserved,
                               free=h.total - h.used - h.reserved)

    def nvmlDeviceGetPowerUsage(self, h: FakeGpu) -> int:
        return h.power_mw

    def nvmlDeviceGetTotalEnergyConsumption(self, h: FakeGpu) -> int:
        return h.energy_mj

    def nvmlDeviceGetTemperature(self, h: FakeGpu, sensor: int) -> int:
        return h.temp

    def nvmlDeviceGetClockInfo(self, h: FakeGpu, clock: int) -> int:
        return h.sm_mhz if clock == self.NVML_CLOCK_SM else h.mem_mhz

    def nvmlDeviceGetCurrentClocksEventReasons(self, h: FakeGpu) -> int:
        return h.reasons

    def nvmlDeviceGetPcieThroughput(self, h: FakeGpu, counter: int) -> int:
        return h.pcie_kbs

    def nvmlDeviceGetNvLinkState(self, h: FakeGpu, link: int) -> int:
        if not h.nvlinks:
            raise NVMLError(self.NVML_ERROR_NOT_SUPPORTED)
        if link >= self.NVML_NVLINK_MAX_LINKS:
            raise NVMLError(self.NVML_ERROR_INVALID_ARGUMENT)
        return 1 if link < h.nvlinks else 0

    def nvmlDeviceGetNvLinkVersion(self, h: FakeGpu, link: int) -> int:
        if link >= h.nvlinks:
            raise NVMLError(self.NVML_ERROR_INVALID_ARGUMENT)
        return 4  # H100's NVLink generation

    def nvmlDeviceGetFieldValues(self, h: FakeGpu, fields: list[int]) -> list[Any]:
        return [SimpleNamespace(nvmlReturn=0, value=SimpleNamespace(ullVal=1000 * (i + 1)))
                for i, _ in enumerate(fields)]

    def nvmlDeviceGetComputeRunningProcesses(self, h: FakeGpu) -> list[Any]:
        return [SimpleNamespace(pid=pid, usedGpuMemory=used) for pid, used in h.procs]

    def nvmlDeviceGetCurrPcieLinkGeneration(self, h: FakeGpu) -> int:
        return 5

    def nvmlDeviceGetMaxPcieLinkGeneration(self, h: FakeGpu) -> int:
        return 5

    def nvmlDeviceGetCurrPcieLinkWidth(self, h: FakeGpu) -> int:
        return 16

    def nvmlDeviceGetMaxPcieLinkWidth(self, h: FakeGpu) -> int:
        return 16

    def nvmlDeviceGetMigMode(self, h: FakeGpu) -> list[int]:
        return [0, 0]

    def nvmlDeviceGetP2PStatus(self, a: FakeGpu, b: FakeGpu, cap: int) -> int:
        if cap == self.NVML_P2P_CAPS_INDEX_NVLINK and not (a.nvlinks and b.nvlinks):
            return self.NVML_P2P_STATUS_NOT_SUPPORTED
        return self.NVML_P2P_STATUS_OK

    # -- GPM --------------------------------------------------------------------
    def nvmlGpmQueryDeviceSupport(self, h: FakeGpu) -> Any:
        return SimpleNamespace(isSupportedDevice=int(h.gpm))

    def nvmlGpmSampleAlloc(self) -> Any:
        return SimpleNamespace(tick=None)

    def nvmlGpmSampleGet(self, h: FakeGpu, sample: Any) -> Any:
        self.gpm_ticks += 1
        sample.tick = self.gpm_ticks
        return sample

    class c_nvmlGpmMetricsGet_t:
        def __init__(self) -> None:
            self.version = 0
            self.numMetrics = 0
            self.sample1: Any = None
            self.sample2: Any = None
            self.metrics = [SimpleNamespace(metricId=0, nvmlReturn=0, value=0.0)
                            for _ in range(32)]

    def nvmlGpmMetricsGet(self, req: Any) -> Any:
        assert req.sample1.tick < req.sample2.tick, "GPM samples must be (older, newer)"
        values = {2: 71.0, 3: 40.0, 5: 55.0, 10: 63.0}
        for m in req.metrics[: req.numMetrics]:
            m.value = values.get(m.metricId, 0.0)
        return req


def solo(job: str = "job") -> Identity:
    """A lone process's identity, given up front: tests of a single agent need not wait
    for the identity hold (a process group or a first step) to end."""
    return explicit(job, rank=0, local_rank=0, world_size=1)
