"""The one module that talks to NVML: lazy locked init, every query with a default,
unsupported functions remembered, failures counted and logged once, and the
latency of every call recorded.

The NVML library is passed in (``pynvml`` from nvidia-ml-py by default), so
tests hand it a fake that fails the way real drivers do.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable
from time import perf_counter
from typing import Any

from gpuwatch.faults import FaultLog
from gpuwatch.records import Sample
from gpuwatch.vocabulary import THROTTLE_POLICIES

MHZ = 1e6

# Errors after which a function is never asked again for that device.
_UNSUPPORTED = ("NVML_ERROR_NOT_SUPPORTED", "NVML_ERROR_FUNCTION_NOT_FOUND",
                "NVML_ERROR_NO_PERMISSION", "NVML_ERROR_INVALID_ARGUMENT")

# GPM metric constant -> (sample key, scale to base units)
_GPM_METRICS = {
    "NVML_GPM_METRIC_SM_UTIL": ("gpu_sm_active_ratio", 0.01),
    "NVML_GPM_METRIC_SM_OCCUPANCY": ("gpu_sm_occupancy_ratio", 0.01),
    "NVML_GPM_METRIC_ANY_TENSOR_UTIL": ("gpu_tensor_active_ratio", 0.01),
    "NVML_GPM_METRIC_DRAM_BW_UTIL": ("gpu_dram_active_ratio", 0.01),
    "NVML_GPM_METRIC_PCIE_TX_PER_SEC": ("gpu_gpm_pcie_tx_bytes_per_second", 1 << 20),
    "NVML_GPM_METRIC_PCIE_RX_PER_SEC": ("gpu_gpm_pcie_rx_bytes_per_second", 1 << 20),
    "NVML_GPM_METRIC_NVLINK_TOTAL_TX_PER_SEC": ("gpu_nvlink_tx_bytes_per_second", 1 << 20),
    "NVML_GPM_METRIC_NVLINK_TOTAL_RX_PER_SEC": ("gpu_nvlink_rx_bytes_per_second", 1 << 20),
}


def load_pynvml() -> Any:
    """The real NVML binding, or None when nvidia-ml-py is not importable."""
    try:
        import pynvml
    except ImportError:
        return None
    return pynvml


class Nvml:
    """A guarded NVML session. ``call`` never raises; it returns ``default`` instead."""

    def __init__(self, library: Any, faults: FaultLog) -> None:
        self.lib = library
        self.faults = faults
        self.available = False
        self.latency_s: dict[str, float] = {}  # function -> slowest call since last read
        self._unsupported: set[tuple[str, int, int | None]] = set()
        self._lock = threading.Lock()
        self._tried = False
        self._calling_since: float | None = None  # perf_counter() when the call in flight began

    def init(self) -> bool:
        """Initialise NVML once; False (and logged once) when there is no usable driver."""
        with self._lock:
            if self._tried:
                return self.available
            self._tried = True
            if self.lib is None:
                self.faults.note_once("nvml", "nvidia-ml-py not importable: host-only mode")
                return False
            try:
                self.lib.nvmlInit()
            except Exception as exc:
                self.faults.note_once("nvml", f"NVML unavailable ({exc}): host-only mode")
                return False
            self.available = True
            return True

    def call(self, name: str, *args: Any, default: Any = None) -> Any:
        """Call ``lib.<name>(*args)``; on any failure count it and return ``default``."""
        key = _call_key(name, args)
        if not self.available or key in self._unsupported:
            return default
        fn = getattr(self.lib, name, None)
        if fn is None:
            self._unsupported.add(key)
            self.faults.note_once(f"nvml:{name}", f"NVML has no {name}; metric absent")
            return default
        start = self._calling_since = perf_counter()
        try:
            return fn(*args)
        except Exception as exc:
            if self._is_unsupported(exc):
                self._unsupported.add(key)
                self.faults.note_once(f"nvml:{name}", f"NVML: {name} is not supported on "
                                      "this machine; its metric is absent")
            else:
                self.faults.record("nvml", exc)
            return default
        finally:
            self._calling_since = None
            elapsed = perf_counter() - start
            if elapsed > self.latency_s.get(name, 0.0):
                self.latency_s[name] = elapsed

    def const(self, name: str) -> Any:
        return getattr(self.lib, name, None)

    def take_latencies(self) -> dict[str, float]:
        """The slowest call of each function since the last take (seconds), then reset."""
        out, self.latency_s = self.latency_s, {}
        return out

    def in_call_for(self) -> float:
        """Seconds the NVML call now in flight has taken (0.0 when none is)."""
        since = self._calling_since
        return 0.0 if since is None else perf_counter() - since

    def shutdown(self, timeout: float) -> None:
        """Shut NVML down, waiting at most ``timeout`` seconds. Never while a call is in
        flight (a hung driver would hang this too): then NVML is left to the process's end."""
        if not self.available:
            return
        self.available = False
        if self._calling_since is not None:
            self.faults.record("nvml", "an NVML call hung; nvmlShutdown skipped")
            return
        done = threading.Event()

        def run() -> None:
            try:
                self.lib.nvmlShutdown()
            except Exception as exc:
                self.faults.record("nvml", exc)
            finally:
                done.set()

        threading.Thread(target=run, name="gpuwatch-nvml-shutdown", daemon=True).start()
        if not done.wait(max(timeout, 0.0)):
            self.faults.record("nvml", "nvmlShutdown hung; left to the process's end")

    def _is_unsupported(self, exc: Exception) -> bool:
        value = getattr(exc, "value", None)
        return any(value is not None and value == self.const(c) for c in _UNSUPPORTED)


def visible_gpu_indices(nvml: Nvml, environ: dict[str, str] | os._Environ[str]) -> list[int]:
    """NVML indices of the GPUs this process may use: CUDA_VISIBLE_DEVICES, then LOCAL_RANK.

    Integer entries are taken as NVML indices (true under CUDA_DEVICE_ORDER=PCI_BUS_ID,
    the usual cluster setting); UUID entries are resolved through NVML.
    """
    count = nvml.call("nvmlDeviceGetCount", default=0)
    visible = list(range(count))
    spec = environ.get("CUDA_VISIBLE_DEVICES")
    if spec is not None:
        visible = []
        for item in (s.strip() for s in spec.split(",") if s.strip()):
            if item.isdigit():
                if int(item) < count:
                    visible.append(int(item))
                continue
            handle = nvml.call("nvmlDeviceGetHandleByUUID", item)
            index = nvml.call("nvmlDeviceGetIndex", handle) if handle is not None else None
            if index is not None:
                visible.append(index)
    local_rank = environ.get("LOCAL_RANK")
    if local_rank is not None and local_rank.isdigit() and int(local_rank) < len(visible):
        return [visible[int(local_rank)]]
    return visible


# How often NVLink link states are read again (seconds): a link goes down only on a
# fault, and each of a GPU's up to 18 links is a call into the driver (over half of a
# sample's calls on an NVLink node); the count read last is carried in between. A read
# that finds no state, or a failed read of the link traffic (a GPU gone), has them read
# again at the next sample (a card without NVLink costs no call: NVML's "not supported"
# is remembered).
LINK_STATE_INTERVAL_S = 30.0


class NvmlSampler:
    """Reads one Sample per GPU per call: utilisation, memory, power, energy, clocks,
    clock-event reasons, PCIe (every ``pcie_interval_s``), NVLink (link states every
    ``LINK_STATE_INTERVAL_S``, traffic every sample), this job's process memory and,
    on GPUs that have it, GPM (SM, tensor, DRAM, PCIe and NVLink rates).
    """

    def __init__(
        self,
        nvml: Nvml,
        gpus: Iterable[int],
        rank: int,
        job_pids: Callable[[], set[int]],
        pcie_interval_s: float = 5.0,
    ) -> None:
        self.nvml = nvml
        self.rank = rank
        self.gpus = list(gpus)
        self._job_pids = job_pids
        self._pcie_interval_s = pcie_interval_s
        self._next_pcie = 0.0
        # GPU -> (active links read last, None: none; when to read them again, monotonic s)
        self._links: dict[int, tuple[int | None, float]] = {}
        self._handles = {i: nvml.call("nvmlDeviceGetHandleByIndex", i) for i in self.gpus}
        self._gpm = {i: _Gpm(nvml, h) for i, h in self._handles.items() if h is not None}

    def sample(self, now: float, mono: float) -> list[Sample]:
        """Samples at Unix time ``now``; ``mono`` (monotonic seconds) paces PCIe reads."""
        read_pcie = mono >= self._next_pcie
        if read_pcie:
            self._next_pcie = mono + self._pcie_interval_s
        pids = self._job_pids()
        out = []
        for index, handle in self._handles.items():
            if handle is None:
                continue
            values = self._read(handle, read_pcie, pids)
            self._nvlink(index, handle, mono, values)
            gpm = self._gpm.get(index)
            if gpm is not None:
                values.update(gpm.read())
            out.append(Sample(self.rank, now, "nvml", values, gpu=index))
        return out

    def _read(self, h: Any, read_pcie: bool, pids: set[int]) -> dict[str, float]:
        nv, v = self.nvml, {}
        util = nv.call("nvmlDeviceGetUtilizationRates", h)
        if util is not None:
            v["gpu_utilization_ratio"] = util.gpu / 100.0
            v["gpu_memory_utilization_ratio"] = util.memory / 100.0
        mem = self._memory(h)
        if mem is not None:
            v["gpu_memory_used_bytes"] = float(mem.used)
            v["gpu_memory_total_bytes"] = float(mem.total)
            if hasattr(mem, "reserved"):
                v["gpu_memory_reserved_bytes"] = float(mem.reserved)
        _put(v, "gpu_power_watts", nv.call("nvmlDeviceGetPowerUsage", h), 1e-3)
        _put(v, "gpu_energy_joules_total", nv.call("nvmlDeviceGetTotalEnergyConsumption", h), 1e-3)
        _put(v, "gpu_temperature_celsius",
             nv.call("nvmlDeviceGetTemperature", h, nv.const("NVML_TEMPERATURE_GPU")), 1.0)
        _put(v, "gpu_sm_clock_hertz",
             nv.call("nvmlDeviceGetClockInfo", h, nv.const("NVML_CLOCK_SM")), MHZ)
        _put(v, "gpu_memory_clock_hertz",
             nv.call("nvmlDeviceGetClockInfo", h, nv.const("NVML_CLOCK_MEM")), MHZ)
        reasons = nv.call("nvmlDeviceGetCurrentClocksEventReasons", h)
        if reasons is None:
            reasons = nv.call("nvmlDeviceGetCurrentClocksThrottleReasons", h)
        _put(v, "gpu_clock_event_reasons", reasons, 1.0)
        for const, reason in THROTTLE_POLICIES.items():
            policy = nv.const(const)
            if policy is not None:
                viol = nv.call("nvmlDeviceGetViolationStatus", h, policy)
                _put(v, f"gpu_throttle_{reason}_seconds_total",
                     getattr(viol, "violationTime", None), 1e-9)
        if read_pcie:
            for key, const in (("gpu_pcie_tx_bytes_per_second", "NVML_PCIE_UTIL_TX_BYTES"),
                               ("gpu_pcie_rx_bytes_per_second", "NVML_PCIE_UTIL_RX_BYTES")):
                _put(v, key, nv.call("nvmlDeviceGetPcieThroughput", h, nv.const(const)), 1e3)
        procs = nv.call("nvmlDeviceGetComputeRunningProcesses", h)
        if procs is not None:
            v["gpu_process_memory_bytes"] = float(sum(
                p.usedGpuMemory or 0 for p in procs if p.pid in pids))
        return v

    def _memory(self, h: Any) -> Any:
        version = self.nvml.const("nvmlMemory_v2")
        if version is not None:
            mem = self.nvml.call("nvmlDeviceGetMemoryInfo", h, version)
            if mem is not None:
                return mem
        return self.nvml.call("nvmlDeviceGetMemoryInfo", h)

    def _active_links(self, h: Any) -> int | None:
        """The GPU's active NVLink links; None without NVLink (every state unreadable)."""
        nv = self.nvml
        max_links = nv.const("NVML_NVLINK_MAX_LINKS") or 0
        states = [nv.call("nvmlDeviceGetNvLinkState", h, link) for link in range(max_links)]
        if not any(s is not None for s in states):
            return None
        return sum(1 for s in states if s)

    def _nvlink(self, index: int, h: Any, mono: float, v: dict[str, float]) -> None:
        """GPU ``index``'s active links (read every ``LINK_STATE_INTERVAL_S``) and its
        NVLink traffic counters, into ``v``."""
        links, due = self._links.get(index, (None, mono))
        if mono >= due:
            links = self._active_links(h)
            due = mono + LINK_STATE_INTERVAL_S if links is not None else mono
        self._links[index] = (links, due)
        if links is None:
            return  # no NVLink on this GPU (or none read): the metrics are absent, not 0
        nv = self.nvml
        v["gpu_nvlink_links_active"] = float(links)
        fields = [nv.const("NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX"),
                  nv.const("NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX")]
        if None in fields:
            return
        values = nv.call("nvmlDeviceGetFieldValues", h, fields)
        if values is None:  # the GPU may be gone: its links are read again next time
            self._links[index] = (links, mono)
        for key, fv in zip(("gpu_nvlink_tx_bytes_total", "gpu_nvlink_rx_bytes_total"),
                           values or (), strict=False):
            if getattr(fv, "nvmlReturn", 1) == 0:
                v[key] = float(fv.value.ullVal) * 1024.0  # NVML counts KiB


class _Gpm:
    """GPM metrics (Hopper and newer): the rate between two consecutive samples."""

    def __init__(self, nvml: Nvml, handle: Any) -> None:
        self.nvml = nvml
        self.handle = handle
        support = nvml.call("nvmlGpmQueryDeviceSupport", handle)
        self.supported = bool(getattr(support, "isSupportedDevice", 0))
        if not self.supported:  # (pre-Hopper cards, some VMs: projections take the range)
            nvml.faults.note_once("nvml:gpm", "NVML: no GPM on this GPU; SM, tensor and "
                                  "DRAM activity are not read")
        self._metrics = [(nvml.const(c), key, scale) for c, (key, scale) in _GPM_METRICS.items()
                         if nvml.const(c) is not None]
        self._prev: Any = None
        self._cur: Any = None
        if self.supported:
            self._prev = nvml.call("nvmlGpmSampleAlloc")
            self._cur = nvml.call("nvmlGpmSampleAlloc")
            self.supported = self._prev is not None and self._cur is not None
        self._primed = False

    def read(self) -> dict[str, float]:
        if not self.supported:
            return {}
        if self.nvml.call("nvmlGpmSampleGet", self.handle, self._cur, default=False) is False:
            return {}
        primed, self._primed = self._primed, True
        self._prev, self._cur = self._cur, self._prev
        if not primed:
            return {}
        req = self.nvml.lib.c_nvmlGpmMetricsGet_t()
        req.version = self.nvml.const("NVML_GPM_METRICS_GET_VERSION")
        req.numMetrics = len(self._metrics)
        req.sample1, req.sample2 = self._cur, self._prev  # older, newer
        for slot, (metric_id, _, _) in enumerate(self._metrics):
            req.metrics[slot].metricId = metric_id
        if self.nvml.call("nvmlGpmMetricsGet", req) is None:
            return {}
        out = {}
        for slot, (_, key, scale) in enumerate(self._metrics):
            m = req.metrics[slot]
            if m.nvmlReturn == 0:
                out[key] = float(m.value) * scale
        return out


def _call_key(name: str, args: tuple[Any, ...]) -> tuple[str, int, int | None]:
    """What an "unsupported" answer applies to: the function, the device, an int argument."""
    second = args[1] if len(args) > 1 and isinstance(args[1], int) else None
    return name, id(args[0]) if args else 0, second


def _put(values: dict[str, float], key: str, raw: Any, scale: float) -> None:
    if raw is not None:
        values[key] = float(raw) * scale
