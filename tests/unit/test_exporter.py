"""The Prometheus exporter: what a scrape says, escaping, the series cap, and the
endpoint's faults (port taken, errors, scrapes during shutdown)."""

from __future__ import annotations

import logging
import re
import socket
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gpuwatch.agent import Agent
from gpuwatch.config import Settings
from gpuwatch.monitor import Monitor
from gpuwatch.records import Finding, Sample, Step
from gpuwatch.sinks.prometheus import Exporter, ExporterState, catalogue, metrics_markdown

ROOT = Path(__file__).resolve().parents[2]
LABELS = {"job": "gpt", "run": "gpt-1", "host": "node-a", "rank": "1", "local_rank": "1"}


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
    assert value(s, "gpuwatch_step_duration_seconds_bucket", le="0.1") == 0
    assert value(s, "gpuwatch_step_duration_seconds_bucket", le="0.25") == 10
    phases = {p: value(s, "gpuwatch_phase_seconds_total", phase=p)
              for p in ("data", "compute", "optimizer", "checkpoint", "collective", "recompute",
                        "other")}
    assert phases["compute"] == pytest.approx(0.8)  # without the collective and recompute
    assert sum(phases.values()) == pytest.approx(2.0)  # the phases partition the step time
    assert value(s, "gpuwatch_steps_total") == 10
    assert value(s, "gpuwatch_tokens_total") == 10240
    assert value(s, "gpuwatch_collective_bytes_total") == 1000


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
                 severity="warning") == 1
    assert value(s, "gpuwatch_projected_speedup_ratio", target="H100 SXM") == 2.4
    state.update([], [], {})  # cleared: the series goes away
    assert not any(name == "gpuwatch_finding" for name, _ in scrape(state))


def test_odd_label_values_are_escaped_and_read_back_intact() -> None:
    odd = {**LABELS, "job": 'a "quoted"\\job\nwith newline', "host": "hôst,{x=1}"}
    state = ExporterState(odd)
    state.update([Step(rank=1, step=1, t=1.0, wall_s=0.1)], [], {})
    samples = scrape(state)
    jobs = {dict(labels)["job"] for _, labels in samples}
    hosts = {dict(labels)["host"] for _, labels in samples}
    assert jobs == {odd["job"]} and hosts == {odd["host"]}


def test_series_cap_drops_and_counts_what_does_not_fit() -> None:
    state = ExporterState(LABELS, max_series=40)
    gpu = {spec.key: 1.0 for spec in catalogue() if spec.source == "nvml"}
    state.update([Sample(1, 1.0, "nvml", dict(gpu), gpu=g) for g in range(8)], [], {})
    first = scrape(state)
    capped = [name for name, _ in first if name != "gpuwatch_exporter_dropped_series_total"]
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
                                 "component", "reason"}, m.labels
    assert (ROOT / "docs" / "metrics.md").read_text() == metrics_markdown()


def test_port_in_use_moves_the_agent_up_or_warns_once_and_training_goes_on(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = Settings(out_dir=tmp_path, exporter={"port": port}, sample_interval_s=0.05)
        agent = Agent(settings, nvml_library=None, memory_stats=None, environ={})
        monitor = Monitor(agent)
        with caplog.at_level(logging.WARNING, logger="gpuwatch"):
            agent.start()
            for _ in range(20):
                with monitor.step():
                    pass
            agent.stop()
            # another job's rank holds the port: this one serves on a free one above it
            assert agent.exporter is not None and agent.exporter.port not in (None, port)
            assert agent.assembler.steps == 20
            assert not [r for r in caplog.records if "metrics endpoint" in r.getMessage()]
            alone = Exporter(ExporterState(LABELS), on_error=lambda exc: None)
            assert not alone.start("127.0.0.1", port)  # no port to move to: warned, no endpoint
    assert sum("metrics endpoint" in r.getMessage() for r in caplog.records) == 1


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
