"""The collective hooks on real torch code paths (gloo, 2 ranks under torchrun): FSDP2's
all-gathers and reduce-scatters and its waits, an async all-to-all, batch_isend_irecv,
blocking send and recv, gather, scatter and object collectives, and functional
collectives eager and inside a fullgraph compile (where the hooks step aside instead of
breaking the graph)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from gpuwatch.config import Settings
from gpuwatch.detection.replay import analyze
from tests.integration.conftest import ROOT, free_port, gpuwatch_cmd, read, run, steps

pytestmark = pytest.mark.integration
SCRIPT = ROOT / "tests" / "integration" / "scripts" / "collective_hooks.py"
LINEAR_BYTES = (64 * 64 + 64) * 4


def test_collective_hooks_on_real_torch_paths() -> None:
    proc = run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc-per-node", "2", str(SCRIPT)], cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert sorted(r["rank"] for r in results) == [0, 1]
    for r in results:
        # 2 layers: all-gathered in forward and again in backward, reduce-scattered once;
        # bus bytes (n-1)/n of each unsharded buffer at n=2
        assert r["fsdp2"]["bytes"] == 3 * 2 * LINEAR_BYTES // 2
        assert r["fsdp2"]["waits"] == 6  # wait_for_unshard x4, finalize_backward x2
        assert r["fsdp2"]["durations"] == 6  # each blocking collective's own duration
        assert r["all_to_all"] == {"bytes": 2 * 256 * 4 // 2, "closed": 1}
        # point-to-point bytes apart from the collectives' (a pipeline's, for its bubble)
        assert r["p2p"] == {"p2p_bytes": 4000, "closed": 2}  # one send counted; both waits
        # counted once, by the sender (its duration with its bytes); the receiver's wait timed
        sent = {"p2p_bytes": 2000, "durations": 1} if r["rank"] == 0 else {}
        assert r["send_recv"] == {**sent, "closed": 1}
        # gather and scatter: timed, their bytes once (rooted); object collectives timed
        # as the whole call (a straggler's wait in them was compute)
        assert r["rooted"] == {"bytes": 2 * 100 * 4, "durations": 2, "closed": 2}
        assert r["objects"] == {"closed": 2}
        assert r["compiled_ok"] and r["funcol"] == {"bytes": 32, "waits": 1, "ok": True}
        assert set(r["coverage"]) == {"ddp", "work_wait", "funcol", "fsdp2"}
        assert not [v for v in r["coverage"].values() if v.startswith("not timed")]


@pytest.mark.parametrize("mode", ["python", "builtin", "twice"])
def test_a_ddp_hook_the_job_registers_after_a_first_forward_takes_gpuwatch_s_place(
        tmp_path: Path, mode: str) -> None:
    """DDP takes one comm hook, once; gpuwatch registers its own at the first forward.
    A job that registers its hook after a dry-run forward crashed under ``gpuwatch run``
    ("can only be called once"): its hook now takes gpuwatch's place and runs every
    backward; a second registration still fails as it does without gpuwatch. Models let
    go are collected as they are without it."""
    script = ROOT / "tests" / "integration" / "scripts" / "ddp_hook_after_forward.py"
    plain = run([sys.executable, str(script), mode, str(free_port())], cwd=ROOT, timeout=120)
    hooked = run(gpuwatch_cmd("run", "--out", f"{tmp_path}/run", "--", sys.executable,
                              str(script), mode, str(free_port())), cwd=ROOT, timeout=120)
    assert plain.returncode == 0 and hooked.returncode == 0, hooked.stderr[-3000:]
    expected = json.loads(plain.stdout.splitlines()[-1])
    got = json.loads(next(line for line in hooked.stdout.splitlines() if line.startswith("{")))
    assert got == expected
    assert got["calls"] == (0 if mode == "builtin" else 10)
    assert got["alive"] == 0  # (gpuwatch's hook holds no model alive: its parameters)
    assert (got["error"] is not None) == (mode == "twice")


def test_an_agent_the_job_started_times_ddp_s_wait_and_names_the_slow_rank(
        tmp_path: Path) -> None:
    """``watch()`` (and the framework callbacks) started the agent without `gpuwatch
    run`'s hooks: DDP's all-reduce was never timed, so a rank waiting for a slower one
    logged no collective wait and no straggler was found. The collectives' hooks come
    with any agent."""
    out = tmp_path / "run"
    proc = run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc-per-node", "2",
                str(ROOT / "tests" / "integration" / "scripts" / "watch_ddp_straggler.py"),
                str(out)], cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    waited = sum(s.collective_s for s in steps(read(out / "run-rank0.jsonl")))
    assert waited > 320 * 0.015  # most of rank 1's extra 25 ms a step
    findings = analyze([out], Settings()).findings
    assert [f.ranks for f in findings if f.detector == "straggler"] == [[1]]
