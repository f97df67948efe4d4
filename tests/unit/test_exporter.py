"""The Prometheus exporter: what a scrape says, escaping, the series cap, and the
endpoint's faults (port taken, errors, scrapes during shutdown)."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import random
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gpuwatch.agent import Agent
from gpuwatch.config import Settings
from gpuwatch.faults import FaultLog
from gpuwatch.monitor import Monitor
from gpuwatch.probes.nvml import Nvml, NvmlSampler
from gpuwatch.records import Event, Finding, Sample, Step
from gpuwatch.sinks.prometheus import (
    CLIENT_DEADLINE_S,
    HEALTH,
    MAX_CLIENTS,
    STEP_BUCKETS,
    Exporter,
    ExporterState,
    catalogue,
    metrics_markdown,
    node_name,
    rank_ranges,
)
from gpuwatch.vocabulary import PARTS, split_step
from tests.fakes import FakeGpu, FakeNvml

ROOT = Path(__file__).resolve().parents[2]
LABELS = {"training_job": "gpt", "run": "gpt-42", "host": "node-a", "rank": "1", "local_rank": "1"}


def finding(detector: str, verdict: str, speedup: float | None = None) -> Finding:
    projection = None if speedup is None else {"target": "H100 SXM", "speedup_ratio": speedup,
                                               "cost_per_step_target_usd": 0.001}
    return Finding(detector=detector, verdict=verdict, severity="warning",  # type: ignore[arg-type]
                   summary="s", action="a", evidence={}, ranks=[1], first_seen=0.0,
                   last_seen=0.0, fingerprint=detector, projection=projection)


def scrape(state: ExporterState) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    exporter = Exporter(state, on_error=lambda exc: None)
    text = exporter.render().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: dict, name: str, **labels: str) -> float:  # type: ignore[type-arg]
    key = (name, tuple(sorted({**LABELS, **labels}.items())))
    return samples[key]  # type: ignore[no-any-return]


def test_steps_become_a_histogram_phase_counters_and_totals() -> None:
    state = ExporterState(LABELS)
    steps = [Step(rank=1, step=i, t=float(i), wall_s=0.2, data_s=0.05, compute_s=0.12,
                  optimizer_s=0.02, collective_s=0.03, recompute_s=0.01, other_s=0.01,
                  samples=8, tokens=1024, collective_bytes=100) for i in range(1, 11)]
    state.update(steps, [], {})
    s = scrape(state)
    assert value(s, "gpuwatch_step_duration_seconds_count") == 10
    assert value(s, "gpuwatch_step_duration_seconds_sum") == pytest.approx(2.0)
    assert value(s, "gpuwatch_step_duration_seconds_bucket", le="0.1613") == 0
    assert value(s, "gpuwatch_step_duration_seconds_bucket", le="0.2032") == 10
    phases = {p: value(s, "gpuwatch_phase_seconds_total", phase=p)
              for p in ("data", "compute", "optimizer", "checkpoint", "collective", "recompute",
                        "other")}
    assert phases["compute"] == pytest.approx(0.8)  # without the collective and recompute
    assert sum(phases.values()) == pytest.approx(2.0)  # the phases partition the step time
    assert value(s, "gpuwatch_steps_total") == 10
    assert value(s, "gpuwatch_tokens_total") == 10240
    assert value(s, "gpuwatch_collective_bytes_total") == 1000
    # progress: the steps, then an evaluation's batches between steps and a finished
    # save (what keeps GpuwatchStepsStopped quiet through a long evaluation)
    assert value(s, "gpuwatch_progress_total") == 10
    state.update([Event(1, 11.0, "progress", {"loader_batches": 4, "eval_batches": 4}),
                  Event(1, 12.0, "checkpoint_save", {"seconds": 3.0, "bytes": 10}),
                  Event(1, 12.5, "collective_timing", {})], [], {})
    after = scrape(state)
    assert value(after, "gpuwatch_progress_total") == 12
    assert value(after, "gpuwatch_steps_total") == 10


def test_gpu_samples_absent_values_and_clock_events() -> None:
    state = ExporterState(LABELS)
    state.update([Sample(1, 1.0, "nvml", {"gpu_utilization_ratio": 0.8,
                                          "gpu_clock_event_reasons": float(0x4 | 0x40)}, gpu=3)],
                 [], {"nvml": 2})
    s = scrape(state)
    assert value(s, "gpuwatch_gpu_utilization_ratio", gpu="3") == 0.8
    assert not any(name == "gpuwatch_gpu_power_watts" for name, _ in s)  # absent, not 0
    assert value(s, "gpuwatch_gpu_clock_event_active", gpu="3", reason="sw_power_cap") == 1
    assert value(s, "gpuwatch_gpu_clock_event_active", gpu="3", reason="hw_thermal_slowdown") == 1
    assert value(s, "gpuwatch_gpu_clock_event_active", gpu="3", reason="gpu_idle") == 0
    assert value(s, "gpuwatch_agent_errors_total", component="nvml") == 2


def test_active_findings_and_the_best_projection() -> None:
    state = ExporterState(LABELS)
    state.update([], [finding("fits_on_paper", "move_to_h100", 1.8),
                      finding("iteration_speed", "move_to_h100", 2.4),
                      finding("data_starvation", "fix_here")], {})
    s = scrape(state)
    assert value(s, "gpuwatch_finding", detector="data_starvation", verdict="fix_here",
                 severity="warning", subject_rank="1") == 1
    assert value(s, "gpuwatch_projected_speedup_ratio", target="H100 SXM") == 2.4
    state.update([], [], {})  # cleared: the series goes away
    assert not any(name == "gpuwatch_finding" for name, _ in scrape(state))


def test_odd_label_values_are_escaped_and_read_back_intact() -> None:
    odd = {**LABELS, "training_job": 'a "quoted"\\job\nwith newline', "host": "hôst,{x=1}"}
    state = ExporterState(odd)
    state.update([Step(rank=1, step=1, t=1.0, wall_s=0.1)], [], {})
    samples = scrape(state)
    jobs = {dict(labels)["training_job"] for _, labels in samples}
    hosts = {dict(labels)["host"] for _, labels in samples}
    assert jobs == {odd["training_job"]} and hosts == {odd["host"]}


def test_series_cap_drops_and_counts_what_does_not_fit() -> None:
    state = ExporterState(LABELS, max_series=40)
    gpu = {spec.key: 1.0 for spec in catalogue() if spec.source == "nvml"}
    state.update([Sample(1, 1.0, "nvml", dict(gpu), gpu=g) for g in range(8)], [], {})
    first = scrape(state)
    health = {m.name for m in catalogue() if m.source in HEALTH}
    capped = [name for name, _ in first if name not in health]
    assert len(capped) == 40  # 8 GPUs x 24 metrics would be 192 series
    second = scrape(state)  # the health series is exempt, and counts what the cap dropped
    assert value(second, "gpuwatch_exporter_dropped_series_total") >= 192 - 40


def test_catalogue_names_follow_the_conventions_and_docs_are_current() -> None:
    names = [m.name for m in catalogue()]
    assert len(names) == len(set(names))
    for m in catalogue():
        assert re.fullmatch(r"gpuwatch_[a-z0-9_]+", m.name)
        assert (m.type == "counter") == m.name.endswith("_total"), m.name
        assert set(m.labels) <= {"gpu", "phase", "detector", "verdict", "severity", "target",
                                 "component", "reason", "subject_rank", "link", "UUID",
                                 "modelName", "pci_bus_id", "Hostname"}, m.labels
        assert not {"job", "instance"} & set(m.labels)  # Prometheus's own
    assert (ROOT / "docs" / "metrics.md").read_text() == metrics_markdown()


def train(agent: Agent, steps: int) -> None:
    """Start ``agent``, run ``steps`` empty steps through its monitor, stop it."""
    monitor = Monitor(agent)
    agent.start()
    for _ in range(steps):
        with monitor.step():
            pass
    agent.stop()


def test_port_in_use_moves_the_agent_up_or_warns_once_and_training_goes_on(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = Settings(out_dir=tmp_path, exporter={"port": port}, sample_interval_s=0.05)
        agent = Agent(settings, nvml_library=None, memory_stats=None, environ={})
        with caplog.at_level(logging.WARNING, logger="gpuwatch"):
            train(agent, 20)
            # another job's rank holds the port: this one serves on a free one above it
            assert agent.exporter is not None and agent.exporter.port not in (None, port)
            assert agent.assembler.steps == 20
            assert not [r for r in caplog.records if "metrics endpoint" in r.getMessage()]
            alone = Exporter(ExporterState(LABELS), on_error=lambda exc: None)
            assert not alone.start("127.0.0.1", port)  # no port to move to: warned, no endpoint
    assert sum("metrics endpoint" in r.getMessage() for r in caplog.records) == 1


def test_a_port_past_the_last_is_a_warning_not_a_dead_agent(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """``exporter.port`` 65535 plus local rank 1 is no port: the agent died of an
    UnboundLocalError and its run log stayed empty. Now it warns and goes on."""
    settings = Settings(out_dir=tmp_path, exporter={"port": 65535}, sample_interval_s=0.05)
    agent = Agent(settings, nvml_library=None, memory_stats=None,
                  environ={"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"})
    with caplog.at_level(logging.WARNING, logger="gpuwatch"):
        train(agent, 5)
    assert agent.assembler.steps == 5 and not agent.faults.counts
    assert any("no port in 0-65535" in r.getMessage() for r in caplog.records)


def test_endpoint_serves_caches_and_survives_errors_and_shutdown() -> None:
    errors: list[BaseException] = []
    state = ExporterState(LABELS)
    exporter = Exporter(state, on_error=errors.append)
    assert exporter.start("127.0.0.1", 0)
    url = f"http://127.0.0.1:{exporter.port}/metrics"
    state.update([Step(rank=1, step=1, t=1.0, wall_s=0.1)], [], {})
    for _ in range(5):
        body = urllib.request.urlopen(url, timeout=5).read().decode()
    assert "gpuwatch_steps_total" in body and exporter.renders == 1  # cached between updates
    state.update([Step(rank=1, step=2, t=2.0, wall_s=0.1)], [], {})
    urllib.request.urlopen(url, timeout=5).read()
    assert exporter.renders == 2

    def broken() -> list[object]:
        raise RuntimeError("collector bug")

    state.families = broken  # type: ignore[method-assign]
    state.update([], [], {})
    assert urllib.request.urlopen(url, timeout=5).status == 200  # what there is, no crash
    assert [str(e) for e in errors] == ["collector bug"]

    failures: list[BaseException] = []

    def hammer() -> None:
        for _ in range(200):
            try:
                urllib.request.urlopen(url, timeout=2).read()
            except (urllib.error.URLError, ConnectionError, OSError):
                pass  # refused once stopped: expected
            except BaseException as exc:
                failures.append(exc)

    t = threading.Thread(target=hammer)
    t.start()
    exporter.stop()
    t.join(10)
    assert not t.is_alive() and failures == []
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url, timeout=2)


def topology(job_gpus: list[int]) -> Event:
    devices = [{"index": i, "name": "NVIDIA H100 80GB HBM3", "uuid": f"GPU-{i:08d}",
                "pci_bus_id": f"00000000:{0x18 + i:02X}:00.0", "nvlink_links_active": 18,
                "pcie_generation": 5, "pcie_width": 16} for i in range(8)]
    return Event(1, 0.0, "topology", {"devices": devices, "job_gpus": job_gpus})


def test_gpu_info_joins_dcgm_on_uuid_and_gpu_is_the_node_index() -> None:
    """Rank 1 of a pod that sees all 8 GPUs uses NVML GPU 5 (CUDA_VISIBLE_DEVICES order):
    every series says gpu="5", the allocator's included (its probe records the NVML
    index, though torch calls the card device 0)."""
    state = ExporterState(LABELS, hostname="gpu-node-7")
    state.update([topology([5]),
                  Sample(1, 1.0, "nvml", {"gpu_utilization_ratio": 0.5}, gpu=5),
                  Sample(1, 1.0, "allocator", {"allocator_reserved_bytes": 1e9}, gpu=5)], [], {})
    s = scrape(state)
    assert value(s, "gpuwatch_gpu_info", gpu="5", UUID="GPU-00000005",
                 modelName="NVIDIA H100 80GB HBM3", pci_bus_id="00000000:1D:00.0",
                 Hostname="gpu-node-7") == 1
    assert sum(name == "gpuwatch_gpu_info" for name, _ in s) == 1  # only the GPU it uses
    assert value(s, "gpuwatch_allocator_reserved_bytes", gpu="5") == 1e9
    assert value(s, "gpuwatch_gpu_link_bandwidth_bytes_per_second", gpu="5",
                 link="nvlink") == 450e9  # H100 SXM: 900 GB/s both ways
    assert {dict(labels).get("gpu") for _, labels in s} - {None} == {"5"}


def test_node_name_prefers_the_downward_api() -> None:
    assert node_name({"NODE_NAME": "gpu-node-7"}, "trainer-0-abcde") == "gpu-node-7"
    assert node_name({}, "trainer-0-abcde") == "trainer-0-abcde"


def test_throttle_seconds_come_from_nvml_violation_counters() -> None:
    nvml_lib = FakeNvml([FakeGpu(violation_ns={0: 2_500_000_000, 1: 0})])
    faults = FaultLog()
    nvml = Nvml(nvml_lib, faults)
    assert nvml.init()
    sample = NvmlSampler(nvml, [0], 1, set).sample(1.0, 0.0)
    state = ExporterState(LABELS)
    state.update(sample, [], {})
    s = scrape(state)
    assert value(s, "gpuwatch_gpu_throttle_seconds_total", gpu="0", reason="power") == 2.5
    assert value(s, "gpuwatch_gpu_throttle_seconds_total", gpu="0", reason="thermal") == 0
    reasons = {dict(k)["reason"] for n, k in s if n == "gpuwatch_gpu_throttle_seconds_total"}
    assert reasons == {"power", "thermal"}  # sync_boost is NOT_SUPPORTED: absent, not 0
    NvmlSampler(nvml, [0], 1, set).sample(2.0, 0.0)
    assert nvml_lib.calls["nvmlDeviceGetViolationStatus"] == 3 + 2  # unsupported: not asked again


def test_device_metrics_can_be_left_to_dcgm_exporter() -> None:
    state = ExporterState(LABELS, device_metrics=False)
    state.update([topology([2]), Sample(1, 1.0, "nvml", {"gpu_utilization_ratio": 0.5}, gpu=2),
                  Step(rank=1, step=1, t=1.0, wall_s=0.1)], [], {})
    names = {name for name, _ in scrape(state)}
    assert "gpuwatch_gpu_utilization_ratio" not in names
    assert {"gpuwatch_gpu_info", "gpuwatch_steps_total"} <= names  # the join still works


def test_cross_rank_findings_name_their_subject_rank() -> None:
    state = ExporterState({**LABELS, "rank": "0"})
    straggler = dataclasses.replace(finding("straggler", "fix_here"), ranks=[3])
    state.update([], [straggler], {})
    s = scrape(state)
    assert value(s, "gpuwatch_finding", rank="0", detector="straggler", verdict="fix_here",
                 severity="warning", subject_rank="3") == 1


def test_subject_ranks_stay_short() -> None:
    assert rank_ranges([3]) == "3"
    assert rank_ranges(range(64)) == "0-63"
    assert rank_ranges([9, 0, 1, 2, 3, 7, 8, 12]) == "0-3,7-9,12"


def histogram_quantile(q: float, bounds: tuple[float, ...], counts: list[int]) -> float:
    """Prometheus's histogram_quantile: linear interpolation inside the bucket."""
    rank, seen, lower = q * sum(counts), 0, 0.0
    for upper, n in zip(bounds, counts, strict=False):
        if seen + n >= rank:
            return lower + (upper - lower) * (rank - seen) / n
        seen, lower = seen + n, upper
    return bounds[-1]


@pytest.mark.parametrize("scale", [0.003, 0.04, 0.35, 2.0, 17.0])
@pytest.mark.parametrize("shape", ["lognormal", "uniform", "bimodal"])
def test_step_buckets_give_a_p90_within_30_percent(scale: float, shape: str) -> None:
    rng = random.Random(f"{scale}{shape}")
    draw = {"lognormal": lambda: scale * rng.lognormvariate(0, 0.3),
            "uniform": lambda: scale * rng.uniform(0.9, 1.1),
            "bimodal": lambda: scale * (3.0 if rng.random() < 0.15 else 1.0)}[shape]
    walls = sorted(draw() for _ in range(2000))
    state = ExporterState(LABELS)
    state.update([Step(rank=1, step=i, t=float(i), wall_s=w) for i, w in enumerate(walls)], [],
                 {})
    s = scrape(state)
    cumulative = [value(s, "gpuwatch_step_duration_seconds_bucket", le=str(b))
                  for b in STEP_BUCKETS]
    counts = [int(c - p) for c, p in zip(cumulative, [0.0, *cumulative[:-1]], strict=True)]
    true_p90 = walls[int(0.9 * len(walls))]
    assert histogram_quantile(0.9, STEP_BUCKETS, counts) == pytest.approx(true_p90, rel=0.3)


# -- hostile clients: each has one overall deadline and none holds up a scrape -----------

@pytest.fixture
def endpoint() -> Iterator[Exporter]:
    state = ExporterState(LABELS)
    state.update([Step(rank=1, step=1, t=1.0, wall_s=0.1)], [], {})
    exporter = Exporter(state, on_error=lambda exc: None)
    assert exporter.start("127.0.0.1", 0)
    yield exporter
    exporter.stop()


def get_metrics(exporter: Exporter) -> int:
    url = f"http://127.0.0.1:{exporter.port}/metrics"
    with urllib.request.urlopen(url, timeout=CLIENT_DEADLINE_S / 2) as response:
        assert b"gpuwatch_steps_total" in response.read()
        return int(response.status)


def raw(exporter: Exporter, data: bytes) -> bytes:
    """Send ``data``, read until the server closes (bounded by a socket timeout)."""
    with socket.create_connection(("127.0.0.1", exporter.port or 0), timeout=10) as sock:
        with contextlib.suppress(ConnectionError):  # the server may close before all is sent
            sock.sendall(data)
        out = b""
        with contextlib.suppress(ConnectionError):
            while chunk := sock.recv(65536):
                out += chunk
        return out


def test_a_slow_client_sending_a_byte_every_1_5_s_blocks_no_scrape(
        endpoint: Exporter) -> None:
    closed = threading.Event()

    def slowloris() -> None:
        with socket.create_connection(("127.0.0.1", endpoint.port or 0), timeout=10) as sock:
            with contextlib.suppress(OSError):
                for byte in b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n":
                    sock.sendall(bytes([byte]))
                    if closed.wait(1.5):
                        return
            closed.set()  # the server hung up on it

    attacker = threading.Thread(target=slowloris)
    attacker.start()
    for _ in range(5):  # each would time out if the slow client held the server
        assert get_metrics(endpoint) == 200
    attacker.join(CLIENT_DEADLINE_S + 10)
    assert not attacker.is_alive() and closed.is_set()  # cut off at its deadline
    assert endpoint.rejected >= 1


def test_a_client_that_never_sends_is_cut_off_at_its_deadline(endpoint: Exporter) -> None:
    with socket.create_connection(("127.0.0.1", endpoint.port or 0), timeout=30) as idle:
        assert get_metrics(endpoint) == 200
        reply = idle.recv(4096)  # returns when the server gives up on it
    assert reply.startswith(b"HTTP/1.1 408")


@pytest.mark.parametrize("request_bytes", [
    b"\x00\xff\xfe garbage\r\n\r\n",
    b"GET\r\n\r\n",
    b"GET /metrics\r\n\r\n",  # HTTP/0.9 style: no version
    b"GET /metrics SPDY/3\r\n\r\n",
])
def test_malformed_requests_get_400_and_the_next_scrape_works(
        endpoint: Exporter, request_bytes: bytes) -> None:
    assert raw(endpoint, request_bytes).startswith(b"HTTP/1.1 400")
    assert get_metrics(endpoint) == 200


def test_huge_requests_are_refused_without_reading_them_all(endpoint: Exporter) -> None:
    huge = b"GET /metrics HTTP/1.1\r\n" + b"X-Junk: " + b"a" * (8 << 20)
    assert raw(endpoint, huge).startswith(b"HTTP/1.1 431")
    assert get_metrics(endpoint) == 200


def test_many_idle_clients_at_once_never_shut_a_scrape_out(endpoint: Exporter) -> None:
    """Four times as many connections as places, held open without a request (renewed
    before their deadline, slow-loris style, they shut every scrape out): the one idle
    longest gives its place up to the scrape, which sends its request at once."""
    idle = [socket.create_connection(("127.0.0.1", endpoint.port or 0), timeout=10)
            for _ in range(MAX_CLIENTS * 4)]
    try:
        for sock in idle:
            sock.sendall(b"G")
        for _ in range(3):
            assert get_metrics(endpoint) == 200
    finally:
        for sock in idle:
            sock.close()
    deadline = time.monotonic() + CLIENT_DEADLINE_S + 10
    while True:  # the slots come back as the server notices the closed clients
        try:
            assert get_metrics(endpoint) == 200
            break
        except urllib.error.HTTPError:
            assert time.monotonic() < deadline, "slots never freed"
            time.sleep(0.05)
    # parallel scrapes all succeed
    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(lambda _: get_metrics(endpoint), range(MAX_CLIENTS))) \
            == [200] * MAX_CLIENTS


def test_finish_waits_for_one_scrape_to_take_the_end_marker(endpoint: Exporter) -> None:
    get_metrics(endpoint)  # something scrapes this endpoint
    seen: list[bool] = []
    finisher = threading.Thread(target=lambda: seen.append(endpoint.finish(30)))
    finisher.start()
    url = f"http://127.0.0.1:{endpoint.port}/metrics"
    deadline = time.monotonic() + 10
    while True:
        body = urllib.request.urlopen(url, timeout=5).read().decode()
        if "gpuwatch_run_end_time_seconds" in body or time.monotonic() > deadline:
            break
    finisher.join(10)
    assert "gpuwatch_run_end_time_seconds" in body and seen == [True]


@pytest.mark.parametrize("probed", [False, True])
def test_finish_does_not_wait_when_nothing_ever_scraped(probed: bool) -> None:
    """Nothing read /metrics: no scraper will take the end marker. A GET of / (a
    person's curl, a liveness probe) is no scraper; it made every end wait."""
    exporter = Exporter(ExporterState(LABELS), on_error=lambda exc: None)
    assert exporter.start("127.0.0.1", 0)
    if probed:
        urllib.request.urlopen(f"http://127.0.0.1:{exporter.port}/", timeout=5).read()
    done = threading.Event()
    threading.Thread(target=lambda: (exporter.finish(60), done.set())).start()
    assert done.wait(10)  # would take 60 s if it waited for a scraper that never comes


def test_agent_labels_a_torchrun_rank_for_prometheus_and_dcgm(tmp_path: Path) -> None:
    """A real agent as local rank 1 of a pod that may use GPUs 4 and 5: its series say
    training_job, run (torchrun's id) and host (the node), gpu="5" for NVML and allocator
    series alike; gpuwatch_gpu_info carries GPU 5's UUID. On a normal stop, one more
    scrape takes the end-of-run marker before the endpoint closes."""
    gpus = [FakeGpu(uuid=f"GPU-{i}", pci_bus_id=f"00000000:{i}B:00.0") for i in range(8)]
    settings = Settings(job="gpt", out_dir=tmp_path, exporter={"port": 0},
                        sample_interval_s=0.05, peers_interval_s=0)
    agent = Agent(settings, nvml_library=FakeNvml(gpus),
                  memory_stats=lambda: {"reserved_bytes.all.current": 2**30},
                  environ={"RANK": "9", "LOCAL_RANK": "1", "WORLD_SIZE": "16",
                           "CUDA_VISIBLE_DEVICES": "4,5", "TORCHELASTIC_RUN_ID": "7f3a",
                           "NODE_NAME": "gpu-node-7"})
    agent.start()
    try:
        assert agent.exporter is not None or wait(lambda: agent.exporter is not None)
        exporter = agent.exporter
        assert exporter is not None
        url = f"http://127.0.0.1:{exporter.port}/metrics"

        def parsed() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
            text = urllib.request.urlopen(url, timeout=5).read().decode()
            return {(s.name, tuple(sorted(s.labels.items()))): s.value
                    for f in text_string_to_metric_families(text) for s in f.samples}

        assert wait(lambda: any(n == "gpuwatch_allocator_reserved_bytes" for n, _ in parsed()))
        samples = parsed()
    finally:
        stopper = threading.Thread(target=agent.stop)
        stopper.start()
    ended = False
    deadline = time.monotonic() + 20
    while not ended and time.monotonic() < deadline:  # the endpoint stays up for this scrape
        with contextlib.suppress(OSError):
            ended = "gpuwatch_run_end_time_seconds" in urllib.request.urlopen(
                url, timeout=5).read().decode()
    stopper.join(30)
    assert ended and not stopper.is_alive()
    base = {"training_job": "gpt", "run": "gpt-7f3a", "host": "gpu-node-7", "rank": "9",
            "local_rank": "1"}
    info = [dict(k) for n, k in samples if n == "gpuwatch_gpu_info"]
    assert info == [{**base, "gpu": "5", "UUID": "GPU-5", "modelName": gpus[5].name,
                     "pci_bus_id": "00000000:5B:00.0", "Hostname": "gpu-node-7"}]
    assert {dict(k)["gpu"] for n, k in samples if n == "gpuwatch_allocator_reserved_bytes"} \
        == {"5"}
    assert {dict(k)["gpu"] for n, k in samples if n == "gpuwatch_gpu_utilization_ratio"} \
        == {"5"}
    assert all({k: v for k, v in dict(labels).items() if k in base} == base
               for _, labels in samples)


def wait(predicate: Callable[[], bool], seconds: float = 20) -> bool:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_phase_counters_split_steps_as_the_report_does() -> None:
    # the second step's device-timed wait is longer than its host-measured compute:
    # pure compute is 0 for it, never negative, in the exporter as in the report
    steps = [Step(rank=1, step=1, t=1.0, wall_s=0.2, data_s=0.05, compute_s=0.12,
                  collective_s=0.03, recompute_s=0.01, other_s=0.03),
             Step(rank=1, step=2, t=2.0, wall_s=0.2, compute_s=0.1, collective_s=0.15,
                  other_s=0.1)]
    state = ExporterState(LABELS)
    state.update(steps, [], {})
    s = scrape(state)
    report = dict(zip(PARTS, map(sum, zip(*map(split_step, steps), strict=True)), strict=True))
    for part in PARTS:
        assert value(s, "gpuwatch_phase_seconds_total", phase=part) == pytest.approx(report[part])
    assert report["compute"] == pytest.approx(0.08)
