"""The agent end to end in-process, with a fake NVML passed in."""

from __future__ import annotations

import builtins
import copy
import pickle
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from gpuwatch import agent as agent_module
from gpuwatch.agent import Agent
from gpuwatch.config import ExporterSettings, Settings
from gpuwatch.instrument import ring
from gpuwatch.instrument.device import MAX_PENDING
from gpuwatch.monitor import Monitor, watch
from gpuwatch.records import Event, Meta, Record, Sample, Step
from gpuwatch.runlog import RunLogReader
from tests.fakes import FakeGpu, FakeNvml
from tests.wait import wait_for


def run_agent(tmp_path: Path, steps: int = 20, lib: Any = None,
              **settings: Any) -> tuple[Agent, list[Record]]:
    s = Settings(out_dir=tmp_path, sample_interval_s=0.05, flush_interval_s=0.05, **settings)
    agent = Agent(s, nvml_library=lib, memory_stats=None, environ={})
    monitor = Monitor(agent)
    agent.start()
    for _ in range(steps):
        with monitor.step(samples=4), monitor.phase("compute"):
            time.sleep(0.005)  # the step's work
    wait_for(lambda: sample_rounds(agent) >= 2, 10, "two sample rounds")
    agent.stop()
    return agent, list(RunLogReader(logged(agent)))


def logged(agent: Agent) -> Path:
    """The run log an agent claimed (once its identity settled)."""
    assert agent.runlog_path is not None
    return agent.runlog_path


def sample_rounds(agent: Agent) -> int:
    """Sampling rounds in the run log so far (each writes one agent sample)."""
    if agent.runlog_path is None or not agent.runlog_path.exists():
        return 0
    return sum(isinstance(r, Sample) and r.source == "agent"
               for r in RunLogReader(agent.runlog_path))


def of(records: list[Record], kind: type) -> list[Any]:
    return [r for r in records if isinstance(r, kind)]


def test_run_log_has_meta_topology_samples_and_every_step(tmp_path: Path) -> None:
    agent, records = run_agent(tmp_path, lib=FakeNvml([FakeGpu(), FakeGpu()]))
    assert isinstance(records[0], Meta) and records[0].world_size == 1
    assert [s.step for s in of(records, Step)] == list(range(1, 21))
    assert all(s.samples == 4 and s.compute_s > 0 for s in of(records, Step))
    (topo,) = [e for e in of(records, Event) if e.name == "topology"]
    assert topo.data["gpu_count"] == 2
    gpu_samples = [s for s in of(records, Sample) if s.source == "nvml"]
    assert {s.gpu for s in gpu_samples} == {0, 1}
    assert {s.source for s in of(records, Sample)} >= {"host", "agent", "nvml"}
    assert agent.faults.counts == {}


def test_without_nvml_the_agent_runs_host_only_and_says_so(tmp_path: Path) -> None:
    _, records = run_agent(tmp_path, lib=None)
    assert [e.name for e in of(records, Event)] == ["host_only"]
    assert not [s for s in of(records, Sample) if s.source == "nvml"]
    assert len(of(records, Step)) == 20


def test_nvml_failing_at_init_or_on_every_call_never_costs_a_step(tmp_path: Path) -> None:
    _, records = run_agent(tmp_path / "a",
                           lib=FakeNvml(init_error=FakeNvml.NVML_ERROR_DRIVER_NOT_LOADED))
    assert len(of(records, Step)) == 20
    assert [e.name for e in of(records, Event)] == ["host_only"]
    lost = {name: FakeNvml.NVML_ERROR_GPU_IS_LOST for name in dir(FakeNvml)
            if name.startswith("nvmlDevice")}
    agent, records = run_agent(tmp_path / "b", lib=FakeNvml(fail=lost))
    assert len(of(records, Step)) == 20
    assert agent.faults.counts["nvml"] > 0


def test_stop_returns_within_two_seconds_while_nvml_hangs(tmp_path: Path) -> None:
    lib = FakeNvml(hang={"nvmlDeviceGetUtilizationRates": 30.0})
    s = Settings(out_dir=tmp_path, sample_interval_s=0.05, flush_interval_s=0.05)
    agent = Agent(s, nvml_library=lib, memory_stats=None, environ={})
    monitor = Monitor(agent)
    agent.start()
    with monitor.step():  # a lone process knows it is one once a step ends: sampling starts
        pass
    wait_for(lambda: lib.calls["nvmlDeviceGetUtilizationRates"], 5, "the hanging call")
    for _ in range(9):
        with monitor.step():
            pass
    start = time.monotonic()
    agent.stop()
    assert time.monotonic() - start < 2.0
    records = list(RunLogReader(logged(agent)))
    assert len(of(records, Step)) == 10  # written by stop() itself
    assert agent.faults.counts["agent"] == 1
    agent.stop()  # idempotent


def test_allocator_probe_runs_on_the_agent_thread(tmp_path: Path) -> None:
    calls = []

    def memory_stats() -> dict[str, int]:
        calls.append(1)
        return {"num_alloc_retries": 2, "num_ooms": 0, "reserved_bytes.all.current": 7}

    s = Settings(out_dir=tmp_path, sample_interval_s=0.05)
    agent = Agent(s, nvml_library=None, memory_stats=memory_stats,
                  environ={"RANK": "0", "WORLD_SIZE": "1"})  # settled: sampling from the start
    agent.start()
    wait_for(lambda: len(calls) >= 2, 10, "two allocator reads")
    agent.stop()
    records = list(RunLogReader(logged(agent)))
    alloc = [r for r in of(records, Sample) if r.source == "allocator"]
    assert alloc and alloc[-1].values["allocator_alloc_retries_total"] == 2
    assert not [e for e in of(records, Event) if e.name == "host_only"]


def test_allocator_samples_name_the_nvml_index_of_the_ranks_gpu(tmp_path: Path) -> None:
    """Local rank 1 under CUDA_VISIBLE_DEVICES=6,2 uses NVML GPU 2: torch calls it
    device 1, but its allocator samples say gpu=2, as its NVML samples do."""
    s = Settings(out_dir=tmp_path, sample_interval_s=0.05,
                 exporter=ExporterSettings(enabled=False))
    agent = Agent(s, nvml_library=FakeNvml([FakeGpu() for _ in range(8)]),
                  memory_stats=lambda: {"reserved_bytes.all.current": 7},
                  environ={"RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2",
                           "CUDA_VISIBLE_DEVICES": "6,2"})
    agent.start()
    wait_for(lambda: sample_rounds(agent) >= 1, 10, "a sample round")
    agent.stop()
    samples = of(list(RunLogReader(logged(agent))), Sample)
    assert {r.gpu for r in samples if r.source == "allocator"} == {2}
    assert {r.gpu for r in samples if r.source == "nvml"} == {2}


def test_rank_and_run_log_name_follow_torchrun_environment(tmp_path: Path) -> None:
    s = Settings(out_dir=tmp_path, exporter=ExporterSettings(enabled=False))
    agent = Agent(s, nvml_library=None, memory_stats=None,
                  environ={"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4",
                           "TORCHELASTIC_RESTART_COUNT": "2"})
    assert (agent.identity.rank, agent.identity.local_rank, agent.identity.world_size) == (3, 1, 4)
    agent.start()
    agent.stop()
    assert agent.runlog_path == tmp_path / "run-rank3.attempt2.jsonl"  # torchrun's 2nd restart
    meta = next(iter(RunLogReader(tmp_path / "run-rank3.attempt2.jsonl")))
    assert isinstance(meta, Meta)
    assert (meta.run, meta.attempt, meta.identity) == (tmp_path.name, 2, "torchrun")


def test_unknown_phase_and_bad_config_never_raise(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    monitor = watch(sample_interval_s=-1)
    assert not monitor.agent.started
    with monitor.step(), monitor.phase("no-such-phase"):
        pass
    assert monitor.agent.faults.counts["api"] == 1
    assert any("sample_interval_s" in r.getMessage() for r in caplog.records)
    monitor.stop()
    assert not (tmp_path / "runs").exists()


class NeverDone:
    """A CUDA event whose work the device never finishes."""

    def query(self) -> bool:
        return False


def test_device_timings_dropped_and_bad_marks_are_counted_in_the_agent_sample(
        tmp_path: Path) -> None:
    s = Settings(out_dir=tmp_path, sample_interval_s=0.05, flush_interval_s=0.05)
    agent = Agent(s, nvml_library=None, memory_stats=None, environ={})
    monitor = Monitor(agent)
    agent.start()
    with monitor.step():
        pass
    never = NeverDone()
    for _ in range(MAX_PENDING + 5):  # the device never finishes: the oldest 5 are dropped
        agent.ring.push(ring.DEVICE_TIMING, (ring.COLLECTIVE, never, never, 0))
    agent.ring.push(ring.TOKENS, "many")  # not a count
    agent.ring.push(ring.SAMPLES, -3)  # not a count either
    with monitor.step():
        pass

    def counted() -> dict[str, float]:
        if agent.runlog_path is None or not agent.runlog_path.exists():
            return {}
        samples = [r for r in RunLogReader(agent.runlog_path)
                   if isinstance(r, Sample) and r.source == "agent"]
        return samples[-1].values if samples else {}

    wait_for(lambda: counted().get("agent_device_timings_dropped_total") == 5, 10,
             "the dropped device timings in an agent sample")
    agent.stop()
    assert counted()["agent_bad_marks_total"] == 2


def test_a_caught_failing_exit_does_not_make_an_agent_stop_as_failed() -> None:
    """The ``sys.exit`` wrapper notes a failing status for the interpreter's end alone:
    one caught (argparse's at start, a test's) must not keep a later, normal stop from
    waiting for its last scrape, as it did every agent stopped after it."""
    agent_module._note_failing_exits()
    with pytest.raises(SystemExit):
        sys.exit(2)
    assert agent_module._failing_exit_at is not None
    assert not agent_module.dying_of_an_exception()


def test_a_stopping_signal_the_job_lived_through_is_no_death_a_minute_later(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A Ctrl-C the job caught and went on from (a notebook's interrupt, a watchdog's
    ``interrupt_main``) marked the process dying for good: every later normal end
    skipped its last scrape. A stopping signal counts for ``FAILING_EXIT_S``."""
    monkeypatch.setattr(agent_module, "_stop_signalled_at", None)  # (restored after)
    handled: list[int] = []
    agent_module._chained(lambda signum, frame: handled.append(signum))(signal.SIGINT, None)
    assert handled == [signal.SIGINT] and agent_module.dying_of_an_exception()
    monkeypatch.setattr(agent_module, "_stop_signalled_at",
                        time.monotonic() - agent_module.FAILING_EXIT_S - 1)
    assert not agent_module.dying_of_an_exception()


def test_the_noted_builtin_exit_copies_pickles_and_reads_as_sites() -> None:
    """A job that copies or pickles ``exit`` (a config object holding it) got a
    RecursionError: the wrapper's attribute forwarding asked itself for its original."""
    site_exit = builtins.exit
    agent_module._note_failing_exits()
    noted = builtins.exit
    assert repr(noted) == repr(site_exit) and noted.name == "exit"  # type: ignore[attr-defined]
    for made in (copy.copy(noted), copy.deepcopy(noted), pickle.loads(pickle.dumps(noted))):
        assert repr(made) == repr(site_exit)
