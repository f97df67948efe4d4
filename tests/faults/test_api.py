"""Attack: the hot-path API misused by the training code, and marks pushed faster than
the agent drains them. What must hold: nothing raises into the loop, the good steps
are still logged, a bad value is ignored and counted; lost marks leave missing step
numbers, never renumbered ones."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gpuwatch.agent import Agent
from gpuwatch.config import Settings
from gpuwatch.monitor import Monitor
from gpuwatch.records import Step
from gpuwatch.runlog import RunLogReader
from tests.fakes import solo


def _monitor(tmp_path: Path, **settings: Any) -> Monitor:
    s = Settings(out_dir=tmp_path, nvml=False, exporter={"enabled": False}, **settings)
    return Monitor(Agent(s, nvml_library=None, memory_stats=None, environ={},
                         identity=solo()))


def _logged(monitor: Monitor) -> list[Step]:
    return [r for r in RunLogReader(monitor.agent.runlog_path) if isinstance(r, Step)]


def _phase(name: Any) -> Callable[[Monitor], None]:
    def step(m: Monitor) -> None:
        with m.step(samples=2), m.phase(name):
            pass
    return step


def _samples(value: Any, tokens: Any = None) -> Callable[[Monitor], None]:
    def step(m: Monitor) -> None:
        with m.step(samples=value, tokens=tokens):
            m.count(samples=2)
    return step


def _count(value: Any) -> Callable[[Monitor], None]:
    def step(m: Monitor) -> None:
        with m.step(samples=2):
            m.count(samples=value, tokens=value)
    return step


def _checkpoint(path: Any) -> Callable[[Monitor], None]:
    def step(m: Monitor) -> None:
        with m.step(samples=2), m.checkpoint(path):
            pass
    return step


class RemotePath(os.PathLike[str]):
    """A path object with no local form (an object store's): its ``__fspath__`` raises."""

    def __fspath__(self) -> str:
        raise NotImplementedError("s3://bucket/ckpt.pt has no local path")


class NoRepr:
    """A proxy whose target is gone: even its repr raises."""

    def __repr__(self) -> str:
        raise RuntimeError("repr failed")


class HashRaises(str):
    """A name whose hash raises something other than TypeError."""

    def __hash__(self) -> int:
        raise ValueError("no hash")


class OddInt(int):
    """An int of its own whose comparisons raise."""

    def __le__(self, other: object) -> bool:
        raise RuntimeError("cannot compare")

    __ge__ = __lt__ = __gt__ = __le__


MISUSE: list[tuple[str, Callable[[Monitor], None]]] = [  # each: one step with the misuse in it
    ("phase-list", _phase([])),
    ("phase-dict", _phase({})),
    ("phase-none", _phase(None)),
    ("phase-unknown", _phase("warmup")),
    ("phase-repr-raises", _phase(NoRepr())),
    ("phase-hash-raises", _phase(HashRaises("data"))),
    ("samples-string", _samples("32")),
    ("samples-negative", _samples(-4)),
    ("samples-nan", _samples(float("nan"))),
    ("samples-bool", _samples(True)),
    ("tokens-list", _samples(None, tokens=[1, 2])),
    ("tokens-2**64", _samples(None, tokens=2**64)),  # no 64-bit integer holds it
    ("count-10**400", _count(10**400)),  # no float either
    ("count-object", _count(object())),
    ("count-int-whose-comparisons-raise", _count(OddInt(8))),
    ("checkpoint-int-path", _checkpoint(123)),
    ("checkpoint-missing-path", _checkpoint("/nonexistent/ckpt.pt")),
    ("checkpoint-nul-in-path", _checkpoint("ckpt\x00.pt")),
    ("checkpoint-remote-path", _checkpoint(RemotePath())),
]


@pytest.mark.parametrize("misuse", [pytest.param(f, id=i) for i, f in MISUSE])
def test_hot_path_misuse_never_raises_and_every_step_is_still_logged(
        tmp_path: Path, misuse: Callable[[Monitor], None]) -> None:
    m = _monitor(tmp_path)
    m.agent.start()
    for _ in range(3):
        with m.step(samples=2), m.phase("compute"):
            pass
    for _ in range(3):
        misuse(m)
    with m.step(samples=2):
        pass
    m.stop()
    steps = _logged(m)
    assert [s.step for s in steps] == list(range(1, 8))
    assert all(s.samples == 2 for s in steps)  # the bad counts ignored, the good ones kept


def test_a_monitor_used_after_stop_does_nothing_and_never_raises(tmp_path: Path) -> None:
    m = _monitor(tmp_path)
    m.agent.start()
    with m.step():
        pass
    m.stop()
    for _ in range(10):
        with m.step(samples=1), m.phase("data"), m.checkpoint():
            pass
    m.stop()
    assert [s.step for s in _logged(m)] == [1]


def test_marks_dropped_at_a_very_high_step_rate_leave_gaps_never_renumbering(
        tmp_path: Path) -> None:
    """A ring far too small for the rate, drained only at the end: the steps that survive
    keep their own numbers; those the ring lost are missing, and counted."""
    m = _monitor(tmp_path, ring_capacity=1024)  # the agent is never started: nothing drains
    for n in range(5000):
        with m.step(samples=1), m.phase("compute"):
            pass
        if n == 2000:
            m.agent.start()  # from here on the thread drains, but the loop laps it
    m.stop()
    steps = [s.step for s in _logged(m)]
    assert steps == sorted(set(steps)) and steps[-1] == 5000
    assert m.agent.ring.dropped > 0 and len(steps) < 5000
    assert steps[0] > 1  # the first steps were lost in the lap, not renumbered into 1..


THREADS_WATCH = """
import sys, threading
import gpuwatch
monitors, start = [], threading.Barrier(4)
def attach():
    start.wait()
    monitors.append(gpuwatch.watch(job="r", out_dir=sys.argv[1], nvml=False,
                                   exporter={"enabled": False}))
threads = [threading.Thread(target=attach) for _ in range(4)]
[t.start() for t in threads]
[t.join() for t in threads]
for m in monitors:
    with m.step(samples=1):
        pass
monitors[0].stop()
print(len({id(m.agent) for m in monitors}))
"""


def test_threads_that_attach_at_once_share_one_agent(tmp_path: Path) -> None:
    """Four threads calling ``watch`` at once started four agents, four run logs that
    a replay reads as four restarts of the process."""
    proc = subprocess.run([sys.executable, "-c", THREADS_WATCH, str(tmp_path)],
                          capture_output=True, text=True, timeout=120, check=True)
    assert proc.stdout.split() == ["1"]
    assert [p.name for p in tmp_path.glob("run*.jsonl")] == ["run.jsonl"]
