"""NVML probe against a fake library: values and units, and every way NVML fails."""

from __future__ import annotations

import logging

import pytest

from gpuwatch.faults import FaultLog
from gpuwatch.probes.nvml import LINK_STATE_INTERVAL_S, Nvml, NvmlSampler, visible_gpu_indices
from gpuwatch.probes.topology import read_topology
from tests.fakes import FakeGpu, FakeNvml

GiB = 2**30


def session(lib: FakeNvml) -> Nvml:
    nvml = Nvml(lib, FaultLog())
    assert nvml.init()
    return nvml


def sampler(lib: FakeNvml, gpus: list[int] | None = None,
            pids: set[int] | None = None) -> NvmlSampler:
    nvml = session(lib)
    return NvmlSampler(nvml, gpus if gpus is not None else list(range(len(lib.gpus))), rank=0,
                       job_pids=lambda: pids or set(), pcie_interval_s=5.0)


def test_sample_values_are_in_base_units() -> None:
    lib = FakeNvml([FakeGpu(procs=[(100, 3 * GiB), (200, 5 * GiB)])])
    (s,) = sampler(lib, pids={100}).sample(now=1.0, mono=0.0)
    v = s.values
    assert s.source == "nvml" and s.gpu == 0
    assert v["gpu_utilization_ratio"] == pytest.approx(0.87)
    assert v["gpu_memory_used_bytes"] == 60 * GiB
    assert v["gpu_memory_total_bytes"] == 80 * GiB
    assert v["gpu_memory_reserved_bytes"] == 512 * 2**20
    assert v["gpu_power_watts"] == pytest.approx(350.0)
    assert v["gpu_energy_joules_total"] == pytest.approx(1000.0)
    assert v["gpu_sm_clock_hertz"] == pytest.approx(1.98e9)
    assert v["gpu_pcie_tx_bytes_per_second"] == pytest.approx(12e6)
    assert v["gpu_nvlink_links_active"] == 18
    assert v["gpu_nvlink_tx_bytes_total"] == 1000 * 1024
    assert v["gpu_process_memory_bytes"] == 3 * GiB  # only this job's pid
    assert v["gpu_clock_event_reasons"] == 0


def test_gpm_needs_two_samples_then_reports_ratios() -> None:
    s = sampler(FakeNvml())
    first = s.sample(1.0, 0.0)[0].values
    assert "gpu_tensor_active_ratio" not in first
    second = s.sample(2.0, 1.0)[0].values
    assert second["gpu_sm_active_ratio"] == pytest.approx(0.71)
    assert second["gpu_tensor_active_ratio"] == pytest.approx(0.55)
    assert second["gpu_dram_active_ratio"] == pytest.approx(0.63)
    third = s.sample(3.0, 2.0)[0].values  # the fake asserts (older, newer) order each time
    assert third["gpu_sm_occupancy_ratio"] == pytest.approx(0.40)


def test_pcie_is_read_at_most_every_interval() -> None:
    lib = FakeNvml()
    s = sampler(lib)
    for mono in (0.0, 1.0, 2.0, 4.9, 5.0, 6.0):
        s.sample(mono, mono)
    assert lib.calls["nvmlDeviceGetPcieThroughput"] == 2 * 2  # tx and rx, at 0 s and 5 s


def test_nvlink_link_states_are_read_every_interval_and_carried_between() -> None:
    """Up to 18 calls a GPU: read every LINK_STATE_INTERVAL_S; every sample carries the
    count read last, and a link that goes down shows at the next read."""
    gpu = FakeGpu()
    lib = FakeNvml([gpu])
    s = sampler(lib)
    seen = []
    for mono in range(int(2 * LINK_STATE_INTERVAL_S) + 1):
        if mono == 10:
            gpu.nvlinks = 12  # six links go down
        seen.append(s.sample(float(mono), float(mono))[0].values["gpu_nvlink_links_active"])
    reads = lib.calls["nvmlDeviceGetNvLinkState"] // FakeNvml.NVML_NVLINK_MAX_LINKS
    assert reads == 3  # at 0 s, 30 s and 60 s
    first = int(LINK_STATE_INTERVAL_S)
    assert seen[:first] == [18.0] * first and seen[first:] == [12.0] * (len(seen) - first)
    assert lib.calls["nvmlDeviceGetFieldValues"] == len(seen)  # traffic: every sample


def test_nvlink_link_states_are_read_again_at_once_when_a_read_fails() -> None:
    """No state readable (a transient error), or the traffic read failing (a GPU gone):
    the states are read again at the next sample, not after the interval."""
    lib = FakeNvml([FakeGpu()])
    s = sampler(lib)
    lib.fail["nvmlDeviceGetNvLinkState"] = FakeNvml.NVML_ERROR_UNKNOWN
    assert "gpu_nvlink_links_active" not in s.sample(0.0, 0.0)[0].values
    del lib.fail["nvmlDeviceGetNvLinkState"]
    assert s.sample(1.0, 1.0)[0].values["gpu_nvlink_links_active"] == 18.0
    lib.fail["nvmlDeviceGetFieldValues"] = FakeNvml.NVML_ERROR_GPU_IS_LOST
    s.sample(2.0, 2.0)
    before = lib.calls["nvmlDeviceGetNvLinkState"]
    s.sample(3.0, 3.0)
    assert lib.calls["nvmlDeviceGetNvLinkState"] == before + FakeNvml.NVML_NVLINK_MAX_LINKS


def test_consumer_card_without_nvlink_or_gpm_has_those_metrics_absent_not_zero() -> None:
    lib = FakeNvml([FakeGpu(name="NVIDIA GeForce RTX 5090", nvlinks=0, gpm=False)])
    s = sampler(lib)
    s.sample(1.0, 0.0)
    v = s.sample(2.0, 1.0)[0].values
    assert not any(k.startswith("gpu_nvlink") for k in v)
    assert "gpu_tensor_active_ratio" not in v
    # NOT_SUPPORTED is remembered: each link was asked once, not once per sample
    assert lib.calls["nvmlDeviceGetNvLinkState"] == FakeNvml.NVML_NVLINK_MAX_LINKS


def test_not_supported_function_is_absent_and_never_asked_again() -> None:
    lib = FakeNvml(fail={"nvmlDeviceGetPowerUsage": FakeNvml.NVML_ERROR_NOT_SUPPORTED})
    s = sampler(lib)
    for i in range(5):
        v = s.sample(float(i), float(i))[0].values
        assert "gpu_power_watts" not in v
        assert "gpu_utilization_ratio" in v
    assert lib.calls["nvmlDeviceGetPowerUsage"] == 1
    assert s.nvml.faults.counts["nvml"] == 0  # unsupported is not a failure


def test_what_the_machine_does_not_support_is_said_once(caplog: pytest.LogCaptureFixture) -> None:
    """A query the driver does not support (per-process memory in some VMs, power on
    some boards) and a GPU without GPM are each said once, and sampling goes on."""
    lib = FakeNvml([FakeGpu(gpm=False)],
                   fail={"nvmlDeviceGetComputeRunningProcesses": FakeNvml.NVML_ERROR_NOT_SUPPORTED})
    with caplog.at_level(logging.INFO, logger="gpuwatch"):
        s = sampler(lib, pids={1})
        for i in range(5):
            assert "gpu_utilization_ratio" in s.sample(float(i), float(i))[0].values
    said = [r.getMessage() for r in caplog.records]
    assert sum("nvmlDeviceGetComputeRunningProcesses is not supported" in m for m in said) == 1
    assert sum("no GPM" in m for m in said) == 1


@pytest.mark.parametrize("code", [FakeNvml.NVML_ERROR_GPU_IS_LOST, FakeNvml.NVML_ERROR_UNKNOWN])
def test_failing_calls_are_counted_and_logged_once(
        code: int, caplog: pytest.LogCaptureFixture) -> None:
    lib = FakeNvml(fail={"nvmlDeviceGetUtilizationRates": code,
                         "nvmlDeviceGetTemperature": code})
    s = sampler(lib)
    with caplog.at_level(logging.WARNING, logger="gpuwatch"):
        for i in range(4):
            v = s.sample(float(i), float(i))[0].values
            assert "gpu_utilization_ratio" not in v and "gpu_temperature_celsius" not in v
            assert "gpu_memory_used_bytes" in v
    assert s.nvml.faults.counts["nvml"] == 8  # both functions, every sample: still retried
    assert len([r for r in caplog.records if "nvml" in r.getMessage()]) == 1


def test_init_failure_and_missing_library_mean_host_only() -> None:
    faults = FaultLog()
    assert not Nvml(FakeNvml(init_error=FakeNvml.NVML_ERROR_DRIVER_NOT_LOADED), faults).init()
    assert not Nvml(None, faults).init()
    dead = Nvml(None, faults)
    assert dead.call("nvmlDeviceGetCount", default=7) == 7


def test_latencies_are_recorded_per_function_and_reset_on_take() -> None:
    nvml = session(FakeNvml())
    nvml.call("nvmlDeviceGetCount")
    latencies = nvml.take_latencies()
    assert set(latencies) == {"nvmlDeviceGetCount"} and latencies["nvmlDeviceGetCount"] >= 0
    assert nvml.take_latencies() == {}


def test_visible_gpus_follow_cuda_visible_devices_and_local_rank() -> None:
    gpus = [FakeGpu(uuid=f"GPU-{i}") for i in range(4)]
    nvml = session(FakeNvml(gpus))
    assert visible_gpu_indices(nvml, {}) == [0, 1, 2, 3]
    assert visible_gpu_indices(nvml, {"CUDA_VISIBLE_DEVICES": "2,3"}) == [2, 3]
    assert visible_gpu_indices(nvml, {"CUDA_VISIBLE_DEVICES": "2,3", "LOCAL_RANK": "1"}) == [3]
    assert visible_gpu_indices(nvml, {"CUDA_VISIBLE_DEVICES": "GPU-1,GPU-0"}) == [1, 0]
    assert visible_gpu_indices(nvml, {"CUDA_VISIBLE_DEVICES": ""}) == []
    assert visible_gpu_indices(nvml, {"LOCAL_RANK": "2"}) == [2]


def test_topology_names_links_p2p_and_driver() -> None:
    lib = FakeNvml([FakeGpu(name="RTX 5090", nvlinks=0), FakeGpu(name="RTX 5090", nvlinks=0)])
    topo = read_topology(session(lib), [0])
    assert topo["driver"] == "570.86.15" and topo["gpu_count"] == 2
    assert [d["name"] for d in topo["devices"]] == ["RTX 5090", "RTX 5090"]
    assert topo["devices"][0]["nvlink_links_active"] == 0
    assert topo["devices"][0]["pcie_generation"] == 5
    assert topo["p2p"] == [{"gpus": [0, 1], "nvlink": False, "read": True}]
    h100 = read_topology(session(FakeNvml([FakeGpu(), FakeGpu()])), [0, 1])
    assert h100["p2p"][0]["nvlink"] is True
