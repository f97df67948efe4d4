"""NCCL's own collective timing (flight recorder), the doctor's line about it, and the
link capabilities topology reports."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from gpuwatch.doctor import report
from gpuwatch.probes.nccl import FlightRecorderProbe, entry_bus_bytes, timing_setting
from gpuwatch.probes.topology import infiniband_ports, nvlink_rate, pcie_rate
from tests.integration.conftest import free_port

DUMP = textwrap.dedent("""
    import os, sys, torch, torch.distributed as dist
    import torch._C._distributed_c10d as c10d
    dist.init_process_group("gloo", rank=0, world_size=1)
    x = torch.ones(400_000)
    for _ in range(3):
        dist.all_reduce(x)
    out = dist.all_gather_into_tensor(torch.empty(400_000), x)
    dist.all_reduce(torch.ones(1))  # (a step's flag: latency, not bandwidth)
    sys.stdout.buffer.write(c10d._dump_fr_trace(includeCollectives=True,
                                                includeStackTraces=False, onlyActive=False))
    dist.destroy_process_group()
""")


@pytest.fixture(scope="module")
def real_dump() -> dict[str, Any]:
    """A real flight-recorder dump from a gloo job (same format as NCCL's, but gloo
    records no durations)."""
    env = {**os.environ, "TORCH_FR_BUFFER_SIZE": "64", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(free_port())}
    proc = subprocess.run([sys.executable, "-c", DUMP], env=env, capture_output=True,
                          timeout=120, check=True)
    data: dict[str, Any] = pickle.loads(proc.stdout)
    return data


def as_nccl(dump: dict[str, Any], world: int, durations_ms: list[float | None]) -> bytes:
    """The dump as NCCL with timing on writes it: completed entries carry duration_ms
    (None: still running), in a group of ``world`` ranks."""
    entries = []
    for entry, ms in zip(dump["entries"], durations_ms, strict=True):
        e = dict(entry)
        if ms is not None:
            e |= {"state": "completed", "duration_ms": ms}
        else:
            e |= {"state": "started"}
        entries.append(e)
    name = dump["entries"][0]["process_group"][0]
    config = {name: {"name": name, "desc": "default_pg", "ranks": str(list(range(world)))}}
    return pickle.dumps({**dump, "entries": entries, "pg_config": config})


def test_completed_collectives_are_counted_once_with_bus_bytes(real_dump: dict[str, Any]
                                                               ) -> None:
    """Each completed collective counted once; the seconds and bus bytes of the achieved
    bandwidth are those of 1 MiB or more (a 4-byte flag's duration is its latency and
    its wait for the other ranks: with it, 8 MiB all-reduces read 0.145 GB/s for 1.05)."""
    names = [e["profiling_name"] for e in real_dump["entries"]]
    assert len(names) == 5 and "all_reduce" in names[0] and "all_reduce" in names[4], names
    dumps = [as_nccl(real_dump, 4, [2.0, 2.0, None, None, None]),
             as_nccl(real_dump, 4, [2.0, 2.0, 2.0, 1.0, 5.0])]
    probe = FlightRecorderProbe(0, lambda: dumps.pop(0))
    (first,) = probe.sample(100.0, 0.0)
    assert first.values["nccl_collectives_timed_total"] == 2
    all_reduce = 2 * 1_600_000 * 3 / 4  # all-reduce 2(n-1)/n of the buffer
    assert first.values["nccl_bus_bytes_total"] == 2 * all_reduce
    assert probe.sample(100.5, 0.5) == []  # at most once a second: not even read
    (second,) = probe.sample(101.0, 1.0)
    assert second.values["nccl_collectives_timed_total"] == 5
    assert second.values["nccl_collective_seconds_total"] == pytest.approx(0.007)
    # the all-gather: (n-1)/n of its output
    assert second.values["nccl_bus_bytes_total"] == 3 * all_reduce + 1_600_000 * 3 / 4


def test_gloo_entries_without_durations_count_nothing(real_dump: dict[str, Any]) -> None:
    probe = FlightRecorderProbe(0, lambda: pickle.dumps(real_dump))
    assert probe.sample(1.0, 0.0) == []


def test_unknown_collectives_and_groups_have_no_bus_bytes() -> None:
    entry = {"profiling_name": "nccl:mystery", "input_sizes": [[10]], "input_dtypes": ["Float"],
             "process_group": ("3", "")}
    assert entry_bus_bytes(entry, {"0": 2, "1": 4}) == 0
    assert entry_bus_bytes({**entry, "profiling_name": "nccl:broadcast"}, {"0": 2, "1": 4}) == 0
    assert entry_bus_bytes({**entry, "profiling_name": "nccl:broadcast"}, {"3": 2}) == 40


def test_doctor_says_whether_nccl_timing_is_on() -> None:
    off = dict(report(nvml_library=None, environ={}))["NCCL timing"]
    assert off.startswith("off") and "TORCH_NCCL_ENABLE_TIMING=1" in off
    on = dict(report(nvml_library=None, environ={"TORCH_NCCL_ENABLE_TIMING": "1",
                                                 "TORCH_FR_BUFFER_SIZE": "2000"}))
    assert on["NCCL timing"].startswith("on")
    assert timing_setting({"TORCH_NCCL_ENABLE_TIMING": "1",
                           "TORCH_NCCL_TRACE_BUFFER_SIZE": "x"})[0] is False


def test_link_rates_per_direction() -> None:
    assert pcie_rate(4, 16) == pytest.approx(31.5e9, rel=1e-3)
    assert pcie_rate(None, 16) is None and pcie_rate(4, 0) is None
    assert nvlink_rate([4] * 18) == 450e9
    assert nvlink_rate([]) is None


def test_infiniband_ports_from_sysfs(tmp_path: Path) -> None:
    for dev, port, state, rate, layer in (
            ("mlx5_0", "1", "4: ACTIVE", "400 Gb/sec (4X NDR)", "InfiniBand"),
            ("mlx5_1", "1", "1: DOWN", "400 Gb/sec (4X NDR)", "InfiniBand"),
            ("mlx5_2", "1", "4: ACTIVE", "100 Gb/sec (4X EDR)", "Ethernet")):
        p = tmp_path / dev / "ports" / port
        p.mkdir(parents=True)
        (p / "state").write_text(state + "\n")
        (p / "rate").write_text(rate + "\n")
        (p / "link_layer").write_text(layer + "\n")
    ports = infiniband_ports(tmp_path)
    assert [(p["device"], p["bytes_per_second"], p["link_layer"]) for p in ports] == [
        ("mlx5_0", 50e9, "InfiniBand"), ("mlx5_2", 12.5e9, "Ethernet")]
    assert infiniband_ports(tmp_path / "absent") == []
