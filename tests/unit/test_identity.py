"""Who a process is: rank, world size, local rank and device from the process group,
torchrun's or SLURM's environment, and the torch hooks; held marks; run directories
and attempts."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from gpuwatch.agent import Agent, default_out_dir, restart_count
from gpuwatch.config import ExporterSettings, Settings
from gpuwatch.detection.replay import analyze
from gpuwatch.instrument.identity import Hints, resolve
from gpuwatch.instrument.patches import watch_device
from gpuwatch.monitor import Monitor
from gpuwatch.probes.peers import agree_run_key
from gpuwatch.records import Finding, Meta, Record, Step
from gpuwatch.runlog import (
    RunLogReader,
    RunLogWriter,
    attempt_of,
    claim_runlog,
    create_run_dir,
    next_attempt,
    runlog_name,
)
from tests.runs import START, meta, samples, steps
from tests.scenarios import RTX_5090, Memory, Shape, simulate
from tests.scenarios import START as SIM_START
from tests.wait import wait_for


def who(environ: dict[str, str], group: tuple[int, int] | None = None,
        device: int | None = None) -> tuple[int, int, int, int | None, str, bool]:
    ident, settled = resolve("job", environ, group, device, host="h")
    return (ident.rank, ident.world_size, ident.local_rank, ident.device, ident.source, settled)


def test_torchrun_environment_is_settled_at_once() -> None:
    env = {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1"}
    assert who(env) == (5, 8, 1, None, "torchrun", True)


def test_a_bogus_launcher_environment_is_no_identity() -> None:
    """A sentinel world size (every per-rank table the agent keeps would be that big: 43 s
    and 10 GB at 100M) or a rank outside its world is not taken from the environment."""
    assert who({"RANK": "0", "WORLD_SIZE": "100000000"})[:2] == (0, 1)
    assert who({"RANK": "0", "WORLD_SIZE": "4294967295"})[4] == "single"
    assert who({"RANK": "9", "WORLD_SIZE": "8"})[4] == "single"
    assert who({"RANK": "0", "WORLD_SIZE": "\u00b2"})[4] == "single"  # a digit, no number
    assert who({"RANK": "0", "WORLD_SIZE": "100000"})[:2] == (0, 100000)  # a big, real job


def test_mp_spawn_ranks_come_from_the_process_group() -> None:
    # mp.spawn: no launcher environment at all; init_process_group(rank=2, world_size=3)
    assert who({}, group=(2, 3)) == (2, 3, 2, None, "process_group", True)
    assert who({}, group=(2, 3), device=0) == (2, 3, 0, 0, "process_group", True)


def test_srun_tasks_take_slurm_ranks_until_a_group_says_otherwise() -> None:
    slurm = {"SLURM_PROCID": "3", "SLURM_NTASKS": "4", "SLURM_LOCALID": "1"}
    assert who(slurm) == (3, 4, 1, None, "slurm", False)  # a group may still come
    assert who(slurm, group=(3, 4)) == (3, 4, 1, None, "process_group", True)
    # one srun task that mp.spawns 4 ranks itself: SLURM's numbers are the task's, not theirs
    task = {"SLURM_PROCID": "0", "SLURM_NTASKS": "1", "SLURM_LOCALID": "0"}
    assert who(task, group=(2, 4)) == (2, 4, 2, None, "process_group", True)


def test_a_group_overrides_an_environment_that_disagrees() -> None:
    env = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"}  # inherited from a launcher
    assert who(env, group=(1, 2), device=1) == (1, 2, 1, 1, "process_group", True)


def test_a_lone_process_is_rank_zero_of_one_but_not_settled() -> None:
    assert who({}) == (0, 1, 0, None, "single", False)
    assert who({}, device=3) == (0, 1, 3, 3, "single", False)  # set_device(3) in a lone job


def fake_torch(current: list[int]) -> tuple[Any, list[Any]]:
    """torch.cuda as the device hook sees it (no GPU here), and a list for its optimizer
    pre-hook."""
    hooks: list[Any] = []
    cuda = SimpleNamespace(set_device=lambda device: current.__setitem__(0, int(device)),
                           current_device=lambda: current[0])
    return SimpleNamespace(cuda=cuda), hooks


def optimizer_on(*devices: int | None) -> Any:
    params = [SimpleNamespace(is_cuda=d is not None, device=SimpleNamespace(index=d))
              for d in devices]
    return SimpleNamespace(param_groups=[{"params": params}])


def test_device_hook_takes_set_device_else_the_first_cuda_parameters() -> None:
    hints, woken = Hints(), []
    hints.listen(lambda: woken.append(1))
    torch, hooks = fake_torch([0])
    watch_device(torch, hooks.append, hints)
    (first_params,) = hooks
    first_params(optimizer_on(None, 2), (), {})  # a CPU parameter, then one on cuda:2
    assert hints.device == 2 and woken
    torch.cuda.set_device(5)
    assert hints.device == 5  # chosen outright: wins
    first_params(optimizer_on(1), (), {})
    assert hints.device == 5  # a tensor merely seen never overrides the choice

    hints = Hints()
    torch, hooks = fake_torch([0])
    watch_device(torch, hooks.append, hints)
    cpu_only = optimizer_on(None)
    hooks[0](cpu_only, (), {})
    assert hints.device is None and cpu_only._gpuwatch_device_seen  # looked once, no GPU


def test_marks_before_the_rank_is_known_are_held_then_logged_under_it(tmp_path: Path) -> None:
    hints = Hints()
    settings = Settings(out_dir=tmp_path, flush_interval_s=0.05, sample_interval_s=0.05,
                        exporter=ExporterSettings(enabled=False))
    agent = Agent(settings, nvml_library=None, memory_stats=None, environ={}, hints=hints)
    monitor = Monitor(agent)
    agent.start()
    with monitor.phase("data"):  # the loader's first batch, before init_process_group
        time.sleep(0.05)
    assert agent.runlog_path is None  # nothing claimed, nothing written yet
    hints.saw_group(2, 3)  # what the init_process_group hook reports
    wait_for(lambda: agent.runlog_path is not None, 10, "the run log claimed")
    for _ in range(5):
        with monitor.step(), monitor.phase("compute"):
            pass
    agent.stop()
    assert agent.runlog_path == tmp_path / "run-rank2.jsonl"
    records = list(RunLogReader(agent.runlog_path))
    first = records[0]
    assert isinstance(first, Meta)
    assert (first.rank, first.world_size, first.identity) == (2, 3, "process_group")
    got = [r for r in records if isinstance(r, Step)]
    assert len(got) == 5 and {s.rank for s in got} == {2}
    assert got[0].data_s >= 0.05  # the held data wait is in the first step, not lost


def test_a_lone_process_settles_at_its_first_step(tmp_path: Path) -> None:
    settings = Settings(out_dir=tmp_path, flush_interval_s=0.05,
                        exporter=ExporterSettings(enabled=False))
    agent = Agent(settings, nvml_library=None, memory_stats=None, environ={}, hints=Hints())
    monitor = Monitor(agent)
    agent.start()
    with monitor.step():
        pass
    wait_for(lambda: agent.runlog_path is not None, 10,
             "the run log claimed")  # well before IDENTITY_WAIT_S
    agent.stop()
    assert agent.runlog_path == tmp_path / "run.jsonl"


def test_names_and_attempts_of_run_logs(tmp_path: Path) -> None:
    assert [attempt_of(n) for n in ("run.jsonl", "run-rank3.jsonl", "run-rank3.attempt2.jsonl",
                                    "run.attempt1.jsonl", "findings.json")] == [0, 0, 2, 1, None]
    assert next_attempt(tmp_path / "missing") == 0
    first, attempt = claim_runlog(tmp_path, 1, 2, 0)
    assert (first.path.name, attempt) == ("run-rank1.jsonl", 0)
    again, attempt = claim_runlog(tmp_path, 1, 2, 0)  # the same rank started again
    assert (again.path.name, attempt) == ("run-rank1.attempt1.jsonl", 1)
    assert next_attempt(tmp_path) == 2
    restarted, attempt = claim_runlog(tmp_path, 0, 2, 3)  # e.g. torchrun's third restart
    assert (restarted.path.name, attempt) == ("run-rank0.attempt3.jsonl", 3)
    for writer in (first, again, restarted):
        writer.close()


def test_runs_started_in_the_same_second_get_their_own_directories(tmp_path: Path) -> None:
    made: list[Path] = []
    start = threading.Barrier(8)

    def make() -> None:
        start.wait()
        made.append(create_run_dir(tmp_path / "runs", "train"))

    threads = [threading.Thread(target=make) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(set(made)) == 8 and all(p.is_dir() and not any(p.iterdir()) for p in made)


def test_default_run_dir_is_shared_by_one_launch_and_new_for_a_lone_process(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = Settings(job="gpt")

    def out(env: dict[str, str], world: int = 1) -> Path:
        ident, _ = resolve("gpt", {**env, "WORLD_SIZE": str(world), "RANK": "0"}, host="h")
        return default_out_dir(settings, ident, env)

    assert out({"TORCHELASTIC_RUN_ID": "abc", "TORCHELASTIC_RESTART_COUNT": "0"}, 2) == \
        Path("runs/gpt-abc")
    assert out({"SLURM_JOB_ID": "77", "SLURM_STEP_ID": "0"}, 4) == Path("runs/gpt-slurm77.0")
    spawned = out({}, 3)  # mp.spawn: named after the parent, the same for every rank
    assert spawned.name.endswith(f"-p{os.getppid()}") and spawned == out({}, 3)
    lone = [out({}), out({})]
    assert lone[0] != lone[1] and all(p.is_dir() for p in lone)
    # a launcher's key is part of one name: never a path elsewhere, never past NAME_MAX
    for key in ("../../etc/x", "a/b", "x" * 5000, "ü" * 300):
        made = out({"TORCHELASTIC_RUN_ID": key}, 2)
        assert made.parent == Path("runs") and len(made.name.encode()) < 100, made
        assert made == out({"TORCHELASTIC_RUN_ID": key}, 2)
    assert out({"TORCHELASTIC_RUN_ID": "a/b"}, 2) != out({"TORCHELASTIC_RUN_ID": "a_b"}, 2)
    assert out({"SLURM_JOB_ID": "9" * 500}, 2).name.startswith("gpt-slurm999")


def test_a_restart_count_no_run_log_can_hold_is_none() -> None:
    """torchrun's restart count past 64 bits (or in digits of another script) lost the
    meta line, which could not encode it: the run had no identity and no replay."""
    assert restart_count({"TORCHELASTIC_RESTART_COUNT": "3"}) == 3
    for value in ("9" * 30, "\u00b2", "-1", "x"):
        assert restart_count({"TORCHELASTIC_RESTART_COUNT": value}) == 0


def test_ranks_of_one_job_take_rank_0_s_run_name_from_the_job_s_store(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Lightning's launcher is rank 0 itself: rank 1's parent is rank 0, rank 0's the
    shell. Each job's store carries rank 0's name, so rank 1 takes it, even when it asks
    first; two jobs one shell started (each its own store and port) stay apart; a rank
    whose rank 0 says nothing in time keeps its own name."""
    dist = pytest.importorskip("torch.distributed")
    monkeypatch.chdir(tmp_path)
    settings = Settings(job="pl")

    def out(rank: int, store: Any, port: str = "29500", wait_s: float = 60.0) -> Path:
        env = {"MASTER_PORT": port}
        ident, _ = resolve("pl", {**env, "WORLD_SIZE": "2", "RANK": str(rank)}, host="h")
        return default_out_dir(settings, ident, env, store, wait_s)

    job_a = dist.PrefixStore("gpuwatch/", dist.HashStore())
    own = out(0, job_a)  # rank 0 publishes its own name
    assert own.name.endswith(f"-p{os.getppid()}-m29500")
    assert job_a.get("run_key").decode() == own.name.removeprefix("pl-")
    shell = dist.HashStore()  # rank 0 started from a shell: a name rank 1 cannot make
    taken: list[str | None] = []
    rank1 = threading.Thread(target=lambda: taken.append(
        agree_run_key(shell, 1, "rank1-own", 60.0)))
    rank1.start()  # asks before rank 0 has said anything, and waits
    assert agree_run_key(shell, 0, "20261129-120000-p4242-m29500", 60.0) is not None
    rank1.join(60)
    assert taken == ["20261129-120000-p4242-m29500"]
    assert out(1, shell) == Path("runs/pl-20261129-120000-p4242-m29500")
    assert out(0, dist.HashStore(), port="29501") != own  # another job, another port
    silent = out(1, dist.HashStore(), wait_s=0.2)  # rank 0 never published: its own name
    assert silent.name.endswith("-m29500")


def write_log(path: Path, records: list[Record]) -> None:
    writer = RunLogWriter(path)
    writer.write(records)
    writer.close()


def test_the_gap_between_attempts_is_a_restart_not_a_hang(tmp_path: Path) -> None:
    gap = 300.0  # well past the hang bound of max(60 s, 10 x median step)
    restarted = START + 30 + gap

    def attempt(rank: int, first: bool) -> list[Record]:
        """30 s of steps; the restart's agent samples an idle host while the job starts up
        (a busy CPU would count as progress)."""
        if first:
            return [*steps(30, rank=rank)]
        return [*samples("host", 5, {"process_cpu_cores": 0.02}, rank=rank,
                         start=restarted - 5),
                *steps(30, rank=rank, start=restarted, first=301)]

    for rank in (0, 1):
        write_log(tmp_path / f"run-rank{rank}.jsonl", [meta(rank, 2), *attempt(rank, True)])
        second = replace(meta(rank, 2), attempt=1, started=restarted - 5)
        write_log(tmp_path / f"run-rank{rank}.attempt1.jsonl", [second, *attempt(rank, False)])
    result = analyze([tmp_path], Settings())
    assert result.records == 2 * (2 + 300 + 5 + 300)  # every record of both attempts replayed
    assert not [f for f in result.findings if f.detector == "hang"]
    # the same records as one attempt: a stall of `gap` seconds on both ranks
    control = tmp_path / "control"
    for rank in (0, 1):
        write_log(control / f"run-rank{rank}.jsonl",
                  [meta(rank, 2), *attempt(rank, True), *attempt(rank, False)])
    hangs = [f for f in analyze([control], Settings()).findings if f.detector == "hang"]
    assert sorted(r for f in hangs for r in f.ranks) == [0, 1]
    # an older log: the restart appended to the same file, after a meta line of its own
    legacy = tmp_path / "legacy"
    for rank in (0, 1):
        write_log(legacy / f"run-rank{rank}.jsonl",
                  [meta(rank, 2), *attempt(rank, True),
                   replace(meta(rank, 2), started=restarted - 5), *attempt(rank, False)])
    assert not [f for f in analyze([legacy], Settings()).findings if f.detector == "hang"]


def test_waiting_for_rank_0_s_word_never_holds_the_job_s_store() -> None:
    """The job's store connection is shared with the training thread, one call at a time:
    the agent asks without blocking, so a store call of the job's is answered while the
    agent is still waiting for rank 0."""
    dist = pytest.importorskip("torch.distributed")
    from datetime import timedelta

    server = dist.TCPStore("127.0.0.1", 0, 2, True, timeout=timedelta(seconds=30),
                           wait_for_workers=False)
    client = dist.TCPStore("127.0.0.1", server.port, 2, False, timeout=timedelta(seconds=30))
    stop = threading.Event()
    waiting = threading.Thread(target=agree_run_key,
                               args=(dist.PrefixStore("gpuwatch/", client), 1, "mine", 60.0,
                                     stop.wait))
    waiting.start()
    try:
        client.set("job's own key", "value")
        assert client.get("job's own key") == b"value"
        assert waiting.is_alive()  # answered while the agent still waits
    finally:
        stop.set()
        waiting.join(10)
    assert not waiting.is_alive()  # told to stop, it stops waiting


def test_the_newest_attempt_states_the_run(tmp_path: Path) -> None:
    """A run restarted after a fix: the first attempt's data starvation ended with it
    (resolved), once the restart trained long enough to tell; a condition both attempts
    show is the newest attempt's finding, once, with its figures."""
    restarted = START + 400

    def attempt(start: float, data_s: float, first: int) -> list[Record]:
        return [*steps(300, wall=1.0, data_s=data_s, start=start, first=first),
                *samples("host", 300, {"workers": 2.0, "workers_cpu_ratio": 0.98},
                         start=start)]

    def starved(run: Path, data_s: float) -> list[Finding]:
        write_log(run / "run.jsonl", [meta(), *attempt(START, 0.5, 1)])
        write_log(run / "run.attempt1.jsonl", [replace(meta(), attempt=1, started=restarted),
                                               *attempt(restarted, data_s, 301)])
        return [f for f in analyze([run], Settings()).findings
                if f.detector == "data_starvation"]

    assert [f.state for f in starved(tmp_path / "fixed", 0.0)] == ["resolved"]
    # a restart that died at start-up (a meta line, no steps) judged nothing: still active
    died = tmp_path / "died"
    write_log(died / "run.jsonl", [meta(), *attempt(START, 0.5, 1)])
    write_log(died / "run.attempt1.jsonl", [replace(meta(), attempt=1, started=restarted)])
    assert [f.state for f in analyze([died], Settings()).findings
            if f.detector == "data_starvation"] == ["active"]
    again = starved(tmp_path / "still", 0.6)
    assert [f.state for f in again] == ["active"] and again[0].first_seen > restarted
    assert again[0].evidence["data_share_ratio"] == pytest.approx(0.6, abs=0.02)


def _oom_then_restart(run: Path, world: int, restart: dict[str, Any],
                      last_batch: int | None = None) -> list[Finding]:
    """Attempt 0 on an RTX 5090 at 32 samples a step, memory at 97%, killed by an OOM
    after 15 minutes; attempt 1 (``restart``: its changes) trains 40 minutes after it,
    its last step of ``last_batch`` samples if given (an epoch's partial last batch)."""
    first = Shape(step_s=1.0, duration_s=900, world=world, gpu=RTX_5090, batch_size=32,
                  memory=Memory(reserved_gb=31.0, allocated_gb=26.0, oom_at_s=(901.5,)))
    second = replace(first, duration_s=2400, seed=1,
                     memory=Memory(reserved_gb=30.0, allocated_gb=22.0), **restart)
    for attempt, shape, shift in ((0, first, 0.0), (1, second, 1000.0)):
        for rank, records in enumerate(simulate(shape, job="ft")):
            moved = [replace(r, attempt=attempt, started=r.started + shift)
                     if isinstance(r, Meta) else replace(r, t=r.t + shift) for r in records]
            last = max(k for k, r in enumerate(moved) if isinstance(r, Step))
            if attempt and last_batch is not None:
                moved[last] = replace(moved[last], samples=last_batch)  # type: ignore[arg-type]
            write_log(run / runlog_name(rank, shape.world, attempt), moved)
    return [f for f in analyze([run], Settings(), workers=2).findings
            if f.detector == "fits_on_paper"]


@pytest.mark.parametrize("world", [1, 2])
def test_a_restart_that_fits_the_job_after_an_oom_keeps_its_memory_finding(
        tmp_path: Path, world: int) -> None:
    """The usual answer to an OOM that killed a job: restart it with a smaller batch, or
    with activation checkpointing on. The memory finding of the attempt that died was
    resolved by that restart, and the run read as one nothing held back; the batch cut
    is the symptom itself (the job fits on paper, not at the batch it wanted)."""
    cut = _oom_then_restart(tmp_path / "cut", world, {"batch_size": 16, "step_s": 0.55})
    assert sorted(r for f in cut for r in f.ranks) == list(range(world))  # (each died of it)
    for f in cut:
        assert (f.state, f.verdict) == ("active", "move_to_h100")
        assert (f.evidence["batch_size_from"], f.evidence["batch_size_to"]) == (32, 16)
        assert "down from 32" in f.summary
    ckpt = _oom_then_restart(tmp_path / "ckpt", world, {"recompute_share": 0.25, "step_s": 1.3})
    assert len(ckpt) == world and all(
        f.state == "active" and f.evidence["restart_activation_checkpointing"] == 1 for f in ckpt)
    # the same job restarted unchanged got past a passing OOM: ended by the restart, its
    # epoch's partial last batch (7 samples) no cut; nor is a restart on twice the ranks
    # with half the samples each (elastic: the job's batch held)
    same = _oom_then_restart(tmp_path / "same", world, {}, last_batch=7)
    assert len(same) == world and all(
        f.state == "resolved" and "batch_size_from" not in f.evidence for f in same)
    wider = _oom_then_restart(tmp_path / "wider", world, {"world": 2 * world, "batch_size": 16})
    assert wider and all(f.state == "resolved" for f in wider if f.first_seen < SIM_START + 950)


def test_a_job_wide_condition_after_an_elastic_restart_on_fewer_ranks_is_one_finding(
        tmp_path: Path) -> None:
    """8 RTX 5090s bound by their all-reduce through host memory, restarted (elastic) on
    6: the move was reported twice, for ranks 0-7 (resolved) and 0-5 (active), the same
    condition of the same job; it is the newest attempt's, once."""
    def attempt(world: int, number: int, offset: float) -> None:
        shape = Shape(step_s=3.0, duration_s=600, world=world, gpu=RTX_5090,
                      collective_share=0.4, collective_bytes=int(3e9), memory=Memory(26, 14))
        for rank, records in enumerate(simulate(shape)):
            moved = [replace(r, attempt=number, started=r.started + offset)
                     if isinstance(r, Meta) else replace(r, t=r.t + offset)
                     if hasattr(r, "t") else r for r in records]
            suffix = f".attempt{number}" if number else ""
            write_log(tmp_path / f"run-rank{rank}{suffix}.jsonl", moved)

    attempt(8, 0, 0.0)
    attempt(6, 1, 700.0)
    sync = [f for f in analyze([tmp_path], Settings()).findings
            if f.detector == "sync_bottleneck"]
    assert [(f.ranks, f.state) for f in sync] == [(list(range(6)), "active")]
