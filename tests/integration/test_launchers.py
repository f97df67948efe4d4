"""Every process knows who it is, whatever started it: real launchers (mp.spawn, torchrun
with a restart, an srun-style environment, two `gpuwatch run` at once, a reused --out)
give one run log per rank and attempt, distinct metrics ports and the right findings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gpuwatch.records import Meta
from gpuwatch.runlog import attempt_of
from tests.integration.conftest import SCRIPTS, free_port, gpuwatch_cmd, read, run, steps
from tests.wait import wait_for

pytestmark = pytest.mark.integration
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]
# A stall bound well below the gap between two attempts (each attempt starts with
# STARTUP_S of loading before its first step) and well above the wait of the surviving
# rank while torchrun tears a failed attempt down.
SHORT_HANG = {"GPUWATCH_DETECTORS__HANG__MIN_SECONDS": "5"}
STARTUP_S = "10"


def metas(out: Path) -> dict[str, Meta]:
    """Each run log's meta line, by file name."""
    found = {}
    for log in sorted(out.glob("run*.jsonl")):
        first = read(log)[0]
        assert isinstance(first, Meta), log
        found[log.name] = first
    return found


def findings(out: Path) -> list[dict[str, Any]]:
    return json.loads((out / "findings.json").read_text())  # type: ignore[no-any-return]


def analyzed(paths: list[Path], tmp_path: Path) -> list[dict[str, Any]]:
    proc = run(gpuwatch_cmd("analyze", "--json", *map(str, paths)), cwd=tmp_path,
               extra_env=SHORT_HANG)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def one_timeline(out: Path, control: Path) -> None:
    """The records of every attempt of each rank in one file per rank under the first
    attempt's meta line, as one process would have logged them: the control for 'no
    hang' (the gap between the attempts must be long enough to be a stall)."""
    control.mkdir()
    for log in sorted(out.glob("run*.jsonl"),
                      key=lambda p: (p.name.split(".")[0], attempt_of(p.name))):
        base = control / (log.name.split(".")[0] + ".jsonl")
        lines = log.read_bytes().splitlines(keepends=True)
        later = base.exists()
        with open(base, "ab") as f:
            f.write(b"".join(lines[1:] if later else lines))


def test_mp_spawn_ranks_each_get_their_log_and_port_and_the_slow_one_is_named(
        tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = run(gpuwatch_cmd("run", "--out", str(out), "--", sys.executable,
                            str(SCRIPTS / "spawned.py"), "--world", "3", "--seconds", "20",
                            "--slow", "0.1"),
               cwd=tmp_path, timeout=300, extra_env={"GPUWATCH_PEERS_INTERVAL_S": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = metas(out)
    assert sorted(got) == ["run-rank0.jsonl", "run-rank1.jsonl", "run-rank2.jsonl"]
    for rank in range(3):
        m = got[f"run-rank{rank}.jsonl"]
        assert (m.rank, m.world_size, m.identity, m.run, m.attempt) == (
            rank, 3, "process_group", "run", 0)
        logged = steps(read(out / f"run-rank{rank}.jsonl"))
        assert len(logged) > 20 and {s.rank for s in logged} == {rank}
    assert len({m.local_rank for m in got.values()}) == 3
    ports = [m.metrics_port for m in got.values()]
    assert None not in ports and len(set(ports)) == 3
    # The finding itself is the straggler rule's (another module's) judgement; identity
    # is what makes it possible: three ranks' logs, not one rank 0 of world size 1.
    named = [f["ranks"] for f in findings(out) if f["detector"] == "straggler"]
    assert named == [[2]], findings(out)


def test_a_top_level_watch_starts_no_agent_in_spawned_loader_workers(tmp_path: Path) -> None:
    """The README's top-level ``watch()``, DataLoader workers started with "spawn" for two
    epochs: each worker runs the module's top level again. They each made a run
    directory of their own (four, empty) and took a metrics port; only the training
    process logs now."""
    proc = run([sys.executable, str(SCRIPTS / "top_level_watch.py"), "loader"], cwd=tmp_path,
               timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    logs = sorted((tmp_path / "runs").glob("*/run*.jsonl"))
    assert [len(steps(read(log))) for log in logs] == [32], logs


def test_a_top_level_watch_starts_each_mp_spawn_rank_s_agent_at_its_first_step(
        tmp_path: Path) -> None:
    """The same module's ranks started by torch.multiprocessing.spawn: a rank's
    ``watch()`` ran while the module was run again in it, and starts the rank's agent
    at its first step, into the job's directory under its own rank."""
    proc = run([sys.executable, str(SCRIPTS / "top_level_watch.py"), "ranks"], cwd=tmp_path,
               timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = sorted((tmp_path / "runs").glob("*/run-rank*.jsonl"))
    assert [log.name for log in ranks] == ["run-rank0.jsonl", "run-rank1.jsonl"]
    assert ranks[0].parent == ranks[1].parent
    assert [len(steps(read(log))) for log in ranks] == [32, 32]


def test_ranks_forked_as_multiprocessing_processes_keep_their_last_steps(
        tmp_path: Path) -> None:
    """A forked multiprocessing.Process rank ends in os._exit after its run(): atexit never
    runs, and its last steps (those not yet flushed) were lost (38 of 42). Its
    multiprocessing finalizer stops the agent: every step is in the log."""
    out, counts = tmp_path / "run", tmp_path / "counts"
    counts.mkdir()
    proc = run(gpuwatch_cmd("run", "--out", str(out), "--", sys.executable,
                            str(SCRIPTS / "spawned.py"), "--world", "2", "--seconds", "4",
                            "--slow", "0", "--fork", "--count", str(counts)),
               cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rank in range(2):
        done = int((counts / f"rank{rank}").read_text())
        assert len(steps(read(out / f"run-rank{rank}.jsonl"))) == done > 10


def test_processes_forked_after_the_parent_trained_log_their_own_steps(
        tmp_path: Path) -> None:
    """A parent that trained, then forks processes that train (a sweep after a first
    trial): the children inherited the parent's agent, which does not run in them, and
    their steps went into a ring nobody read. Each child starts its own."""
    out = tmp_path / "run"
    proc = run(gpuwatch_cmd("run", "--out", str(out), "--", sys.executable,
                            str(SCRIPTS / "fork_after_training.py")), cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    logged = sorted(len(steps(read(log))) for log in out.glob("run*.jsonl"))
    assert logged == [20, 30, 30]


def test_torchrun_restart_is_a_second_attempt_not_a_hang(tmp_path: Path) -> None:
    # torch's own elastic restart over gloo fails now and then on a loaded box, with or
    # without gpuwatch (a worker aborts while the new mesh connects): up to three tries of
    # the launch, and the test is about what gpuwatch made of the one that restarted
    for attempt in range(3):
        out = tmp_path / f"try{attempt}" / "run"
        marker = tmp_path / f"try{attempt}" / "failed-once"
        proc = run(gpuwatch_cmd("run", "--out", str(out), "--", *TORCHRUN, "--standalone",
                                "--nproc-per-node", "2", "--max-restarts", "1",
                                "--monitor-interval", "0.5", str(SCRIPTS / "restartable.py"),
                                "--fail-once", str(marker), "--startup-seconds", STARTUP_S),
                   cwd=tmp_path, timeout=300, extra_env=SHORT_HANG)
        if proc.returncode == 0:
            break
    else:
        pytest.skip("torchrun's restart itself failed three times: " + proc.stderr[-500:])
    assert marker.exists() and "rank 1 fails at step 20" in proc.stdout + proc.stderr
    got = metas(out)
    assert sorted(got) == ["run-rank0.attempt1.jsonl", "run-rank0.jsonl",
                           "run-rank1.attempt1.jsonl", "run-rank1.jsonl"]
    assert {(m.rank, m.attempt) for m in got.values()} == {(0, 0), (1, 0), (0, 1), (1, 1)}
    # one run id for every rank and attempt: torchrun's rendezvous id, shared across nodes
    assert len({m.run for m in got.values()}) == 1
    assert next(iter(got.values())).run.startswith("restartable-")
    second = steps(read(out / "run-rank1.attempt1.jsonl"))
    assert [s.step for s in second] == list(range(1, 41))  # the restart counts afresh
    assert not [f for f in findings(out) if f["detector"] == "hang"]
    assert not [f for f in analyzed([out], tmp_path) if f["detector"] == "hang"]
    # control: the same records as one timeline per rank do show the restart as a stall
    one_timeline(out, tmp_path / "control")
    assert [f for f in analyzed([tmp_path / "control"], tmp_path) if f["detector"] == "hang"]


def test_reused_out_dir_is_a_second_attempt_not_a_hang(tmp_path: Path) -> None:
    out = tmp_path / "run"
    for _ in range(2):
        proc = run(gpuwatch_cmd("run", "--out", str(out), "--", sys.executable,
                                str(SCRIPTS / "restartable.py"), "--steps", "30",
                                "--startup-seconds", STARTUP_S),
                   cwd=tmp_path, extra_env=SHORT_HANG)
        assert proc.returncode == 0, proc.stderr[-3000:]
    got = metas(out)
    assert sorted(got) == ["run.attempt1.jsonl", "run.jsonl"]
    assert [got["run.jsonl"].attempt, got["run.attempt1.jsonl"].attempt] == [0, 1]
    for name in got:  # nothing appended: each attempt's log has its own 30 steps
        assert [s.step for s in steps(read(out / name))] == list(range(1, 31))
    assert not [f for f in findings(out) if f["detector"] == "hang"]
    one_timeline(out, tmp_path / "control")
    assert [f for f in analyzed([tmp_path / "control"], tmp_path) if f["detector"] == "hang"]


def test_srun_tasks_take_their_ranks_from_slurm(tmp_path: Path, example: Path) -> None:
    out = tmp_path / "run"
    proc = run(gpuwatch_cmd("run", "--out", str(out), "--", sys.executable,
                            str(SCRIPTS / "fake_srun.py"), "2", sys.executable,
                            str(example / "plain_train.py"), "--steps", "20"),
               cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = metas(out)
    assert sorted(got) == ["run-rank0.jsonl", "run-rank1.jsonl"]
    assert sorted((m.rank, m.world_size, m.local_rank, m.identity) for m in got.values()) == [
        (0, 2, 0, "slurm"), (1, 2, 1, "slurm")]
    ports = {m.metrics_port for m in got.values()}
    assert None not in ports and len(ports) == 2
    for rank in (0, 1):
        logged = steps(read(out / f"run-rank{rank}.jsonl"))
        assert len(logged) == 20 and {s.rank for s in logged} == {rank}


def scrape_labels(port: int) -> dict[str, str]:
    """The base labels of the steps counter that the endpoint on ``port`` serves."""
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            if sample.name == "gpuwatch_steps_total":
                return dict(sample.labels)
    raise AssertionError(f"no gpuwatch_steps_total on port {port}")


def test_two_runs_started_together_get_their_own_directories_and_ports(tmp_path: Path) -> None:
    stop = tmp_path / "stop"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUWATCH_")}
    cmd = gpuwatch_cmd("run", "--", sys.executable, str(SCRIPTS / "until_file.py"), str(stop))
    procs = [subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        runs = tmp_path / "runs"

        def both_logging() -> bool:
            logs = list(runs.glob("*/run.jsonl")) if runs.exists() else []
            return len(logs) == 2 and all(log.stat().st_size for log in logs)

        wait_for(both_logging, 120, "two run logs")
        dirs = sorted(p for p in runs.iterdir() if p.is_dir())
        assert len(dirs) == 2 and all(d.name.startswith("until_file-") for d in dirs)
        found = {d.name: read(d / "run.jsonl")[0] for d in dirs}
        ports = {m.metrics_port for m in found.values() if isinstance(m, Meta)}
        assert None not in ports and len(ports) == 2
        for name, m in found.items():
            assert isinstance(m, Meta) and m.run == name and m.metrics_port is not None
            wait_for(lambda p=m.metrics_port: _has_steps(p), 60, f"steps on :{m.metrics_port}")
            labels = scrape_labels(m.metrics_port)
            assert (labels["run"], labels["rank"]) == (name, "0")
    finally:
        stop.touch()
        for proc in procs:
            _, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err[-2000:]
    for d in dirs:
        assert (d / "findings.json").exists()
        assert len([r for r in read(d / "run.jsonl") if isinstance(r, Meta)]) == 1


def _has_steps(port: int) -> bool:
    try:
        return scrape_labels(port) is not None
    except AssertionError:
        return False


def test_lightning_ddp_spawn_ranks_learn_their_place_from_the_process_group(
        tmp_path: Path) -> None:
    pytest.importorskip("lightning")
    out = tmp_path / "run"
    proc = run(gpuwatch_cmd("run", "--out", str(out), "--", sys.executable,
                            str(SCRIPTS / "lightning_spawn.py"), "--steps", "30"),
               cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = metas(out)
    assert sorted(got) == ["run-rank0.jsonl", "run-rank1.jsonl"]
    assert sorted((m.rank, m.world_size, m.local_rank, m.identity) for m in got.values()) == [
        (0, 2, 0, "process_group"), (1, 2, 1, "process_group")]
    ports = {m.metrics_port for m in got.values()}
    assert None not in ports and len(ports) == 2
    for rank in (0, 1):
        logged = steps(read(out / f"run-rank{rank}.jsonl"))
        assert len(logged) == 30 and {s.rank for s in logged} == {rank}


HOOKED_INIT = """
import sys
from gpuwatch.instrument.attach import install
from gpuwatch.instrument.identity import HINTS
install(start=lambda: (lambda code, value=None: None))
import torch.distributed as dist
from torch.distributed import distributed_c10d
assert dist.init_process_group is distributed_c10d.init_process_group
assert hasattr(dist.init_process_group, "__wrapped__")  # the hook, on both names
assert HINTS.group is None
dist.init_process_group("gloo", init_method="tcp://127.0.0.1:" + sys.argv[1], rank=0,
                        world_size=1)
print(HINTS.group)
"""


def test_init_process_group_hook_reports_the_group(tmp_path: Path) -> None:
    proc = run([sys.executable, "-c", HOOKED_INIT, str(free_port())], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "(0, 1)"


def _bootstrapped(tmp_path: Path, python: str, code: str) -> subprocess.CompletedProcess[str]:
    """``code`` run by ``python`` with gpuwatch's bootstrap on PYTHONPATH (as a `gpuwatch
    run` job's every subprocess has it) and a gpuwatch there that cannot be imported (a
    Python without gpuwatch's dependencies)."""
    from gpuwatch.cli import BOOTSTRAP_DIR

    fake = tmp_path / "elsewhere" / "gpuwatch"
    fake.mkdir(parents=True, exist_ok=True)
    (fake / "__init__.py").write_text("raise ImportError(\"No module named 'orjson'\")\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUWATCH_")}
    env["PYTHONPATH"] = os.pathsep.join([str(BOOTSTRAP_DIR), str(fake.parent)])
    return subprocess.run([python, "-c", code], env=env, capture_output=True, text=True,
                          timeout=120)


def test_a_python_that_cannot_import_gpuwatch_is_told_so_only_if_it_trains(
        tmp_path: Path) -> None:
    """A job's tools (a system Python, a CLI in its own venv) get the bootstrap too: each
    one's stderr had "zero-code attach failed", which breaks tools whose output is read.
    Such a process now says nothing unless it imports torch, and then once."""
    tool = _bootstrapped(tmp_path, sys.executable, "print('hi')")
    assert (tool.returncode, tool.stdout, tool.stderr) == (0, "hi\n", "")
    trains = _bootstrapped(tmp_path, sys.executable, "import torch, torch.nn; print('hi')")
    assert trains.returncode == 0 and trains.stdout == "hi\n", trains.stderr
    assert trains.stderr.count("torch runs unmonitored") == 1 and "orjson" in trains.stderr


def test_an_older_python_loads_the_bootstrap_and_the_sitecustomize_it_shadows(
        tmp_path: Path) -> None:
    """Python 3.8 could not define the bootstrap (an annotation it cannot subscript): it
    printed "Error in sitecustomize" into every such process and skipped the site's own
    sitecustomize (certificates, proxies) that the bootstrap runs after it."""
    older = sorted(Path(sys.base_prefix).parent.glob("3.[6-9].*/bin/python3"))
    if not older:
        pytest.skip("no older Python beside this one")
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("import builtins\nbuiltins.SITE_RAN = True\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GPUWATCH_", "PYTHON"))}
    from gpuwatch.cli import BOOTSTRAP_DIR

    env["PYTHONPATH"] = os.pathsep.join([str(BOOTSTRAP_DIR), str(site)])
    done = subprocess.run([str(older[0]), "-c", "print(SITE_RAN)"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stdout, done.stderr) == (0, "True\n", ""), done.stderr
