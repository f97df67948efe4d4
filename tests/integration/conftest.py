from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from gpuwatch.records import Record, Step
from gpuwatch.runlog import RunLogReader
from tests.wait import wait_for

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = Path(__file__).resolve().parent / "scripts"


def gpuwatch_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "gpuwatch", *args]


def run(cmd: list[str], cwd: Path, timeout: float = 120,
        extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command with no GPUWATCH_* settings but ``extra_env``, in a process group of
    its own that is killed when it ends or times out: nothing it started (launcher
    workers stuck waiting for a dead peer) outlives the test."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUWATCH_")}
    env.update(extra_env or {})
    with subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, start_new_session=True) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until_up(url: str, seconds: float = 30) -> None:
    """Poll ``url`` until it answers (a server we just started)."""

    def answers() -> bool:
        try:
            urllib.request.urlopen(url, timeout=1)
        except OSError:
            return False
        return True

    wait_for(answers, seconds, f"{url} to come up", poll_s=0.2)


def read(path: Path) -> list[Record]:
    return list(RunLogReader(path))


def steps(records: list[Record]) -> list[Step]:
    return [r for r in records if isinstance(r, Step)]


@pytest.fixture
def example() -> Path:
    return ROOT / "examples"
