"""Attack: signals sent to ``gpuwatch run``, from ``kill`` and from a terminal. What must
hold: the command gets each signal exactly once (a second Ctrl-C would cut its own
graceful shutdown short), every one it would have got without the wrapper (none left
running as an orphan), and its exit status is the wrapper's."""

from __future__ import annotations

import dataclasses
import fcntl
import os
import signal
import subprocess
import sys
import termios
from pathlib import Path

import psutil
import pytest

from tests.wait import wait_for

pytestmark = pytest.mark.integration
CHILD = str(Path(__file__).resolve().parent / "scripts" / "counting_child.py")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUWATCH_")}
    env["GPUWATCH_ENABLED"] = "false"  # the wrapper alone: nothing to attach or analyse
    return env


def _wait(proc: subprocess.Popen[bytes]) -> int:
    try:
        return proc.wait(timeout=30)
    finally:
        proc.kill()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT,
                                 signal.SIGUSR1])
def test_a_signal_sent_to_gpuwatch_run_reaches_the_command_once(
        tmp_path: Path, sig: signal.Signals) -> None:
    record = tmp_path / "got"
    proc = subprocess.Popen([sys.executable, "-m", "gpuwatch", "run", "--", sys.executable,
                             CHILD, str(record)], env=_env(), stdin=subprocess.DEVNULL,
                            start_new_session=True)  # no terminal: a scheduler's kill
    wait_for(lambda: record.with_suffix(".ready").exists(), 30, "the command to start")
    proc.send_signal(sig)
    assert _wait(proc) == 0  # the command's status: it shut down gracefully
    assert record.read_text().split() == [sig.name]


@pytest.mark.parametrize("sender", ["terminal", "kill"])
def test_a_signal_at_a_terminal_reaches_the_command_once(tmp_path: Path, sender: str) -> None:
    """Ctrl-C typed at the terminal signals its whole foreground group, the command
    included: the wrapper must not send it a second one. A SIGINT sent with ``kill`` to
    the wrapper alone, in that same foreground, must still reach the command."""
    record = tmp_path / "got"
    master, slave = os.openpty()

    def own_terminal() -> None:  # a session of its own, the pty its controlling terminal
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen([sys.executable, "-m", "gpuwatch", "run", "--", sys.executable,
                             CHILD, str(record)], env=_env(), stdin=slave, stdout=slave,
                            stderr=slave, preexec_fn=own_terminal)
    os.close(slave)
    try:
        wait_for(lambda: record.with_suffix(".ready").exists(), 30, "the command to start")
        if sender == "terminal":
            os.write(master, b"\x03")  # Ctrl-C: the line discipline signals the group
        else:
            os.kill(proc.pid, signal.SIGINT)
        assert _wait(proc) == 0
        assert record.read_text().split() == ["SIGINT"]
    finally:
        os.close(master)


def test_gpuwatch_run_told_to_stop_ends_with_the_command_without_judging_the_logs(
        tmp_path: Path) -> None:
    """A wrapper told to stop (SIGTERM: a pod's eviction) ends as soon as the command
    does: replaying every log of the run directory first would delay its death by
    their size. It says where the logs are instead."""
    record = tmp_path / "got"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUWATCH_")}
    proc = subprocess.Popen([sys.executable, "-m", "gpuwatch", "run", "--out",
                             str(tmp_path / "run"), "--", sys.executable, CHILD, str(record)],
                            env=env, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    wait_for(lambda: record.with_suffix(".ready").exists(), 30, "the command to start")
    proc.send_signal(signal.SIGTERM)
    assert _wait(proc) == 0
    assert proc.stderr is not None
    said = proc.stderr.read().decode()
    assert "stopped by SIGTERM" in said and "gpuwatch analyze" in said
    assert "findings:" not in said and "no training process" not in said


def test_a_signal_during_the_replay_after_the_command_keeps_the_commands_status(
        tmp_path: Path) -> None:
    """The command exited 0; gpuwatch run then replays the run's logs (seconds, in a
    reused --out holding two hours of an earlier attempt). A SIGTERM then ends the
    replay, not the status: 0 stays 0 (it was 143), and the logs are left to analyze."""
    import psutil

    from tests.scenarios import job, write

    out = tmp_path / "out"
    write(dataclasses.replace(job("vision_small_steps").shape, duration_s=7200), out,
          job="train")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUWATCH_")}
    ran = tmp_path / "ran"
    proc = subprocess.Popen([sys.executable, "-m", "gpuwatch", "run", "--out", str(out), "--",
                             sys.executable, "-c", f"open({str(ran)!r}, 'w')"], env=env,
                            stdin=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    wrapper = psutil.Process(proc.pid)
    wait_for(lambda: ran.exists() and not wrapper.children(), 60,
             "the command to end and the replay to start")
    busy = sum(wrapper.cpu_times()[:2])
    wait_for(lambda: sum(wrapper.cpu_times()[:2]) > busy + 1.0, 60,
             "a second of the replay (past its imports)")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert b"stopped by SIGTERM" in err and b"could not analyse" not in err
    assert not (out / "findings.json").exists()


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSEGV, signal.SIGTERM])
def test_a_command_killed_by_a_signal_ends_gpuwatch_run_by_that_signal(
        tmp_path: Path, sig: signal.Signals) -> None:
    """A parent that asks how the command ended (a scheduler's "killed by signal",
    Python's negative returncode) is told as it would be without gpuwatch: it read an
    ordinary exit status, 137 for SIGKILL."""
    kill_self = f"import os; os.kill(os.getpid(), {int(sig)})"
    proc = subprocess.Popen([sys.executable, "-m", "gpuwatch", "run", "--out",
                             str(tmp_path / "run"), "--", sys.executable, "-c", kill_self],
                            env=_env(), stdin=subprocess.DEVNULL, start_new_session=True)
    assert _wait(proc) == -sig
    assert not list(tmp_path.glob("core*"))  # (no core of the wrapper's own)


def test_a_command_dies_with_gpuwatch_run_killed_by_sigkill(tmp_path: Path) -> None:
    """A scheduler's SIGKILL to the wrapper (``timeout -k``, a supervisor killing one
    PID) passes on nothing: the command ran on orphaned, holding its GPU; bare, the same
    kill would have ended it. The kernel now ends it with its parent."""
    pid_file = tmp_path / "pid"
    write_pid = ("import os, signal, sys; open(sys.argv[1], 'w').write(str(os.getpid())); "
                 "signal.alarm(120); signal.pause()")  # (until killed, at most 120 s)
    proc = subprocess.Popen([sys.executable, "-m", "gpuwatch", "run", "--", sys.executable,
                             "-c", write_pid, str(pid_file)], env=_env(),
                            stdin=subprocess.DEVNULL, start_new_session=True)
    wait_for(lambda: pid_file.exists() and pid_file.read_text(), 30, "the command to start")
    child = psutil.Process(int(pid_file.read_text()))
    proc.kill()
    assert _wait(proc) == -signal.SIGKILL
    wait_for(lambda: not child.is_running() or child.status() == psutil.STATUS_ZOMBIE, 10,
             "the command to end with gpuwatch run")


@pytest.mark.parametrize(("enabled", "own"), [("true", False), ("true", True),
                                              ("false", False)])
def test_gpuwatch_run_whose_output_pipe_closed_ends_with_the_commands_status(
        tmp_path: Path, enabled: str, own: bool) -> None:
    """``gpuwatch run ... 2>&1 | head`` (or a tee killed by Ctrl-C): its own closing lines
    found the pipe closed, and the BrokenPipeError ended it with 1, the command's 7 lost,
    and the run's report unwritten (also where the job chose its own run directory)."""
    read, write = os.pipe()
    os.close(read)  # the reader has gone
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "gpuwatch", "run", "--out", str(tmp_path / "run"), "--",
             sys.executable, "-c", STEPS_THEN_EXIT_7, str(tmp_path / "own") if own else ""],
            env={**_env(), "GPUWATCH_ENABLED": enabled, "GPUWATCH_NVML": "false"},
            stdin=subprocess.DEVNULL, stdout=write, stderr=write, timeout=120, check=False)
    finally:
        os.close(write)
    assert proc.returncode == 7
    if enabled == "true":
        run = tmp_path / ("own" if own else "run")
        assert (run / "findings.json").exists() and (run / "report.html").exists()


STEPS_THEN_EXIT_7 = """
import sys
import gpuwatch
monitor = gpuwatch.watch(**({"out_dir": sys.argv[1]} if sys.argv[1] else {}))
for _ in range(3):
    with monitor.step(samples=1):
        pass
raise SystemExit(7)
"""
