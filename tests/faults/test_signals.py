"""Attack: SIGTERM, SIGINT and SIGKILL at random points, including inside a long C
call. What must hold: the process ends as promptly as it would without gpuwatch and
of the same signal; a user's own handler runs as before; the run log stays
readable, its steps numbered 1..N without a gap, at most one torn last line."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from gpuwatch.records import Meta, Step
from gpuwatch.runlog import RunLogReader
from tests.wait import wait_for

pytestmark = pytest.mark.integration
SCRIPT = str(Path(__file__).resolve().parent / "scripts" / "signal_target.py")


def _start(out: Path, *args: str, **settings: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUWATCH_")}
    env.update({f"GPUWATCH_{k.upper()}": v for k, v in settings.items()})
    proc = subprocess.Popen([sys.executable, SCRIPT, str(out), *args], stdout=subprocess.PIPE,
                            env=env, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()  # the child's own deadline: a test timeout
    assert line == "ready", line
    return proc


def _scraped(out: Path, *args: str) -> subprocess.Popen[str]:
    """``_start`` with its endpoint up (a last scrape awaited for up to 60 s at a normal
    end), once it has been scraped."""
    proc = _start(out, *args, exporter__port="0", exporter__final_scrape_s="60")
    port = wait_for(lambda: next((r.metrics_port for r in RunLogReader(out / "run.jsonl")
                                  if isinstance(r, Meta)), None)
                    if (out / "run.jsonl").exists() else None, 10, "the metrics port")
    urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
    return proc


def _steps(out: Path) -> tuple[list[int], int]:
    path = out / "run.jsonl"
    if not path.exists():
        return [], 0
    reader = RunLogReader(path)
    return [r.step for r in reader if isinstance(r, Step)], reader.skipped


def _wait_death(proc: subprocess.Popen[str], sig: int) -> float:
    start = time.monotonic()
    proc.send_signal(sig)
    try:
        proc.wait(timeout=30)
    finally:
        proc.kill()
    return time.monotonic() - start


def test_sigterm_inside_a_long_c_call_ends_the_process_at_once(tmp_path: Path) -> None:
    proc = _start(tmp_path, "c-call")
    cpu = psutil.Process(proc.pid)
    at_ready = sum(cpu.cpu_times()[:2])
    # inside torch's matrix_power: the process burns CPU with no Python step running
    wait_for(lambda: sum(cpu.cpu_times()[:2]) - at_ready > 0.5, 60, "the long C call")
    wait_for(lambda: len(_steps(tmp_path)[0]) >= 50, 10, "the first 50 steps to be logged")
    took = _wait_death(proc, signal.SIGTERM)
    assert proc.returncode == -signal.SIGTERM
    assert took < 1.0, took  # not when the C call returns (many seconds later)
    steps, skipped = _steps(tmp_path)
    assert steps == list(range(1, 51)) and skipped <= 1


@pytest.mark.parametrize("when", ["before", "after"])
def test_a_users_own_sigterm_handler_still_runs(tmp_path: Path, when: str) -> None:
    proc = _start(tmp_path, "loop", when)
    _wait_death(proc, signal.SIGTERM)
    assert proc.returncode == 0  # the handler's sys.exit(0)
    assert (tmp_path / "handled").read_text() == "yes"
    steps, skipped = _steps(tmp_path)  # a normal exit: stopped at exit, complete
    assert steps == list(range(1, len(steps) + 1)) and len(steps) >= 50 and skipped == 0


def test_sigint_raises_keyboard_interrupt_and_the_log_is_complete(tmp_path: Path) -> None:
    proc = _start(tmp_path, "loop")
    took = _wait_death(proc, signal.SIGINT)
    assert proc.returncode in (1, -signal.SIGINT)  # KeyboardInterrupt, as without gpuwatch
    assert took < 2.5
    steps, skipped = _steps(tmp_path)
    assert steps == list(range(1, len(steps) + 1)) and len(steps) >= 50 and skipped == 0


def test_a_scraped_process_dying_of_ctrl_c_does_not_wait_for_a_last_scrape(
        tmp_path: Path) -> None:
    """The wait for one more scrape (``exporter.final_scrape_s``) is for a run that ends
    on its own: one dying of an uncaught KeyboardInterrupt ends as promptly as without
    gpuwatch, scraped or not."""
    proc = _scraped(tmp_path, "loop")
    took = _wait_death(proc, signal.SIGINT)
    assert proc.returncode in (1, -signal.SIGINT)
    assert took < 20  # it would wait up to 60 s for the next scrape


@pytest.mark.parametrize("how", ["catch", "catch-exit"])
def test_a_scraped_process_that_catches_ctrl_c_and_exits_failed_does_not_wait(
        tmp_path: Path, how: str) -> None:
    """Lightning's way with Ctrl-C: catch the KeyboardInterrupt, clean up, ``sys.exit(1)``
    (or the builtin ``exit(1)``). Nothing of it is left for the atexit handlers but the
    status, so a scraped process waited the whole ``final_scrape_s`` after Ctrl-C."""
    proc = _scraped(tmp_path, "loop", how)
    took = _wait_death(proc, signal.SIGINT)
    assert proc.returncode == 1 and (tmp_path / "handled").read_text() == "yes"
    assert took < 20  # it would wait up to 60 s for the next scrape


def test_a_scraped_process_that_catches_ctrl_c_and_ends_normally_does_not_wait(
        tmp_path: Path) -> None:
    """The common script's way: ``except KeyboardInterrupt:`` save, and end with status 0.
    Ctrl-C means stop, yet after one scrape the process waited the whole
    ``final_scrape_s`` (Ctrl-C's own handler was the one stopping handler not chained)."""
    proc = _scraped(tmp_path, "loop", "catch-return")
    took = _wait_death(proc, signal.SIGINT)
    assert proc.returncode == 0 and (tmp_path / "handled").read_text() == "yes"
    assert took < 20  # it would wait up to 60 s for the next scrape


@pytest.mark.parametrize("when", ["before", "after"])
def test_a_scraped_process_ended_by_its_own_sigterm_handler_does_not_wait_either(
        tmp_path: Path, when: str) -> None:
    """The usual graceful stop, a SIGTERM handler that calls ``sys.exit``: the exit leaves
    no trace of its cause for the atexit handlers, so a scraped process waited the whole
    ``final_scrape_s`` (20 s by default) after SIGTERM. The job's handler, installed before
    the agent started or after it (``gpuwatch.watch()`` first, as the README shows), is
    chained (it still runs) and the death is known."""
    proc = _scraped(tmp_path, "loop", when)
    took = _wait_death(proc, signal.SIGTERM)
    assert proc.returncode == 0 and (tmp_path / "handled").read_text() == "yes"
    assert took < 20  # it would wait up to 60 s for the next scrape


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_sigkill_at_a_random_point_leaves_a_readable_gapless_log(tmp_path: Path,
                                                                 seed: int) -> None:
    proc = _start(tmp_path, "loop")
    logged = len(_steps(tmp_path)[0])
    wait_for(lambda: len(_steps(tmp_path)[0]) > logged + random.Random(seed).randint(1, 400),
             20, "more steps to be logged")
    _wait_death(proc, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    steps, skipped = _steps(tmp_path)
    assert steps == list(range(1, len(steps) + 1)) and skipped <= 1


CRASHING_CHILD = """
import multiprocessing, sys, time, urllib.request
from pathlib import Path
import gpuwatch
from gpuwatch.records import Meta
from gpuwatch.runlog import RunLogReader

def rank(out):
    monitor = gpuwatch.watch(out_dir=out, flush_interval_s=0.1,
                             exporter={"port": 0, "final_scrape_s": 60})
    with monitor.step(samples=1):
        pass
    log = Path(out) / "run.jsonl"
    deadline = time.monotonic() + 30
    port = None
    while port is None and time.monotonic() < deadline:
        try:
            port = next((r.metrics_port for r in RunLogReader(log) if isinstance(r, Meta)), None)
        except OSError:
            pass
    urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
    raise RuntimeError("CUDA error: an illegal memory access was encountered")

child = multiprocessing.get_context("fork").Process(target=rank, args=(sys.argv[1],))
started = time.monotonic()
child.start()
child.join(60)
print(child.exitcode, round(time.monotonic() - started, 1))
"""


def test_a_multiprocessing_rank_that_crashes_waits_for_no_last_scrape(tmp_path: Path) -> None:
    """A forked rank raising out of its run(): its agent is stopped by the process's
    multiprocessing finalizer while the exception is under way, as a failure, so a
    scraped endpoint does not hold the crashed rank for ``final_scrape_s``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUWATCH_")}
    done = subprocess.run([sys.executable, "-c", CRASHING_CHILD, str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=120)
    code, took = done.stdout.split()
    assert code == "1", done.stderr[-2000:]
    assert float(took) < 20  # it would wait up to 60 s for the next scrape


HANDLER_OBJECT = """
import signal, sys, time
class Graceful:  # a handler object reading its settings through __getattr__
    def __init__(self): self.cfg = {"grace_s": 5}
    def __getattr__(self, k): return self.__dict__["cfg"][k]  # KeyError, not AttributeError
    def __call__(self, signum, frame): sys.exit(0)
signal.signal(signal.SIGTERM, Graceful())
import gpuwatch
m = gpuwatch.watch(out_dir=sys.argv[1], exporter={"enabled": False})
for _ in range(3):
    with m.step():
        pass
print("trained")
"""


def test_a_handler_object_of_the_jobs_that_raises_on_reads_raises_nothing_into_it(
        tmp_path: Path) -> None:
    """Chaining the job's handlers reads an attribute of it: an object whose __getattr__
    raises KeyError made watch() raise into the job. Its handler is left as it is."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUWATCH_")}
    done = subprocess.run([sys.executable, "-c", HANDLER_OBJECT, str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.split() == ["trained"], done.stderr[-2000:]


def test_chained_handlers_read_back_as_the_job_s_own(tmp_path: Path) -> None:
    """gpuwatch chains the handlers a job installs; code that checks which handler is in
    sees its own: asyncio.run restores Ctrl-C's default only if its handler still is
    (chained, it was not: a later asyncio.run left Ctrl-C raising in the loop)."""
    job = f"""
import asyncio, signal, gpuwatch
m = gpuwatch.watch(out_dir={str(tmp_path / "out")!r}, exporter={{"enabled": False}})
asyncio.run(asyncio.sleep(0))
assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
def mine(signum, frame):
    pass
before = signal.signal(signal.SIGTERM, mine)
assert signal.getsignal(signal.SIGTERM) is mine
assert signal.signal(signal.SIGTERM, before) is mine
m.stop()
print("ok")
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUWATCH_")}
    proc = subprocess.run([sys.executable, "-c", job], capture_output=True, text=True,
                          timeout=60, env=env)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]
