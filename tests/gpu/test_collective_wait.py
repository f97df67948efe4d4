"""On a real GPU with NCCL (world size 1): the collective wait is seen on the device
timeline, where a host clock sees none (NCCL completes works and futures at enqueue).

Skipped where torch sees no CUDA device or no NCCL; run on a GPU machine.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
              pytest.mark.skipif(not torch.distributed.is_nccl_available(), reason="needs NCCL")]
SCRIPT = Path(__file__).parent / "scripts" / "collective_wait.py"


@pytest.mark.parametrize("mode", ["async", "ddp"])
def test_device_timeline_wait_is_seen_and_host_timed_one_is_not(tmp_path: Path,
                                                                mode: str) -> None:
    proc = subprocess.run([sys.executable, str(SCRIPT), mode, str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["steps"] >= 25
    delayed = got["busy_s"] * 30  # every step's collective waits out the matmul
    # the device saw most of it (the first steps' timings may land after the last step)
    assert got["collective_s"] > 0.5 * delayed, got
    # the host, waiting on the work or in backward, saw a small part of it at most
    assert got["host_wait_s"] < 0.5 * got["collective_s"], got
