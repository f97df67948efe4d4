"""Attack: NVML that raises each error real drivers raise, or hangs, in any call
including nvmlInit and nvmlShutdown; Slack that hangs at the same time. What must
hold: every step is logged, no exception reaches the loop, the agent stops within
2 s, it never waits on a thread known to be stuck, never calls into a hung library."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from gpuwatch.agent import STOP_TIMEOUT_S, Agent
from gpuwatch.config import Settings
from gpuwatch.monitor import Monitor
from gpuwatch.records import Sample, Step
from gpuwatch.runlog import RunLogReader
from gpuwatch.sinks.slack import Note, notifier_from_settings
from tests.fakes import FakeNvml, solo
from tests.wait import wait_for
from tests.webhook import webhook

ERRORS = {"GPU_IS_LOST": FakeNvml.NVML_ERROR_GPU_IS_LOST, "UNKNOWN": FakeNvml.NVML_ERROR_UNKNOWN,
          "NOT_SUPPORTED": FakeNvml.NVML_ERROR_NOT_SUPPORTED,
          "TIMEOUT": FakeNvml.NVML_ERROR_TIMEOUT}
DEVICE_CALLS = [n for n in dir(FakeNvml) if n.startswith("nvmlDevice") or n.startswith("nvmlGpm")]


def _agent(tmp_path: Path, lib: Any, **settings: Any) -> tuple[Agent, Monitor]:
    s = Settings(out_dir=tmp_path, sample_interval_s=0.05, flush_interval_s=0.05,
                 exporter={"enabled": False}, **settings)
    agent = Agent(s, nvml_library=lib, memory_stats=None, environ={}, identity=solo())
    agent.start()
    return agent, Monitor(agent)


def _steps(agent: Agent, monitor: Monitor, n: int) -> None:
    for _ in range(n):
        with monitor.step(samples=2), monitor.phase("compute"):
            pass


def _timed_stop(agent: Agent) -> float:
    start = time.monotonic()
    agent.stop()
    return time.monotonic() - start


def _sample_rounds(agent: Agent) -> int:
    if not agent.runlog_path.exists():
        return 0
    return sum(isinstance(r, Sample) and r.source == "agent"
               for r in RunLogReader(agent.runlog_path))


def _logged_steps(agent: Agent) -> list[int]:
    return [r.step for r in RunLogReader(agent.runlog_path) if isinstance(r, Step)]


@pytest.mark.parametrize("where", ["every device call", "nvmlInit", "nvmlShutdown"])
@pytest.mark.parametrize("error", list(ERRORS))
def test_each_nvml_error_anywhere_costs_no_step_and_no_exception(
        tmp_path: Path, error: str, where: str) -> None:
    code = ERRORS[error]
    if where == "every device call":  # but the handle lookups: samples exist, all empty
        lib = FakeNvml(fail={name: code for name in DEVICE_CALLS
                             if name not in ("nvmlDeviceGetCount", "nvmlDeviceGetHandleByIndex")})
    elif where == "nvmlInit":
        lib = FakeNvml(init_error=code)
    else:
        lib = FakeNvml(fail={"nvmlShutdown": code})
    agent, monitor = _agent(tmp_path, lib)
    wait_for(lambda: lib.calls["nvmlInit"], 10, "NVML init")
    wait_for(lambda: _sample_rounds(agent) >= 2, 10, "two sample rounds")
    _steps(agent, monitor, 20)
    assert _timed_stop(agent) < STOP_TIMEOUT_S
    assert _logged_steps(agent) == list(range(1, 21))
    gpu = [r for r in RunLogReader(agent.runlog_path) if isinstance(r, Sample)
           and r.source == "nvml"]
    counted = agent.faults.counts["nvml"]
    if where == "every device call":
        assert gpu and all(not s.values for s in gpu)  # absent, never 0
        # NOT_SUPPORTED means "absent on this card", not a failure; the others count
        assert (counted == 0) if error == "NOT_SUPPORTED" else (counted > 0)
    elif where == "nvmlInit":  # host-only, said once as a note
        assert not gpu and counted == 0
    else:
        assert lib.calls["nvmlShutdown"] == 1 and counted == 1


@contextmanager
def _hanging_slack(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """Slack on, its webhook hanging, with a note already spooled so it is mid-POST."""
    with webhook(then="hang:30") as hook:
        settings = {"slack": {"webhook_url": hook.url, "timeout_s": 60}}
        spool = tmp_path / "slack-spool" / "rank0"
        earlier = notifier_from_settings(Settings(**settings), spool)
        assert earlier is not None
        earlier.spool.put(Note("test", {"summary": "from an earlier start"}, time.time()))
        yield {"settings": settings, "hook": hook}


@pytest.mark.parametrize("hang", ["device call", "device call and nvmlShutdown", "nvmlShutdown",
                                  "nvmlInit"])
def test_stops_within_two_seconds_while_nvml_and_slack_hang(tmp_path: Path, hang: str) -> None:
    hangs = {"device call": {"nvmlDeviceGetUtilizationRates": 30.0},
             "device call and nvmlShutdown": {"nvmlDeviceGetUtilizationRates": 30.0,
                                              "nvmlShutdown": 30.0},
             "nvmlShutdown": {"nvmlShutdown": 30.0},
             "nvmlInit": {"nvmlInit": 30.0}}[hang]
    lib = FakeNvml(hang=hangs)
    with _hanging_slack(tmp_path) as slack:
        agent, monitor = _agent(tmp_path, lib, **slack["settings"])
        wait_for(lambda: slack["hook"].attempts, 10, "the Slack POST to start hanging")
        first = "nvmlInit" if hang == "nvmlInit" else "nvmlDeviceGetUtilizationRates"
        wait_for(lambda: lib.calls[first], 10, f"{first} to be called")
        _steps(agent, monitor, 10)
        assert _timed_stop(agent) < STOP_TIMEOUT_S
        assert _logged_steps(agent) == list(range(1, 11))  # written by stop() itself
        if "device call" in hang:  # known hung: nvmlShutdown is never called into
            assert lib.calls["nvmlShutdown"] == 0
        agent.stop()  # idempotent


def test_stop_does_not_wait_on_a_thread_known_to_be_stuck(tmp_path: Path) -> None:
    """With a call hung past STUCK_CALL_S, stop goes straight to its own final flush."""
    lib = FakeNvml(hang={"nvmlDeviceGetUtilizationRates": 30.0})
    agent, monitor = _agent(tmp_path, lib)
    nvml = wait_for(lambda: agent._nvml, 10, "NVML up")
    wait_for(lambda: nvml.in_call_for() > 0.6, 10, "the call to be known hung")
    _steps(agent, monitor, 5)
    assert _timed_stop(agent) < 0.5  # no join of the stuck thread's 1 s allowance
    assert _logged_steps(agent) == [1, 2, 3, 4, 5]
