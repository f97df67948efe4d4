"""Zero-code attach: real scripts, unchanged, under `gpuwatch run`."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from gpuwatch.records import Event, Meta, Sample, Step
from tests.integration.conftest import SCRIPTS, gpuwatch_cmd, read, run, steps

pytestmark = pytest.mark.integration


def test_plain_script_gets_steps_whose_measured_phases_fit_inside_them(
        tmp_path: Path, example: Path) -> None:
    out = tmp_path / "out"
    started = time.monotonic()
    proc = run(gpuwatch_cmd("run", "--out", str(out), "--", sys.executable,
                            str(example / "plain_train.py"), "--steps", "60", "--exit-code", "3"),
               cwd=tmp_path)
    elapsed = time.monotonic() - started
    assert proc.returncode == 3, proc.stderr  # the command's exit status is ours
    records = read(out / "run.jsonl")
    meta = records[0]
    assert isinstance(meta, Meta) and meta.job == "plain_train"
    got = steps(records)
    assert len(got) == 60
    # compute is what the measured phases leave of each step, so their sum is the wall
    # time by construction; what can be wrong is a measured phase outgrowing its step
    for s in got:
        assert s.data_s + s.optimizer_s + s.checkpoint_s <= s.wall_s * (1 + 1e-9)
        assert s.samples == 64
        assert s.data_s > 0 and s.optimizer_s > 0 and s.compute_s > 0
    assert 0 < sum(s.wall_s for s in got) < elapsed  # seconds, measured from outside
    saves = [e for e in records if isinstance(e, Event) and e.name == "checkpoint_save"]
    assert len(saves) == 3  # every 20 steps
    assert all(e.data["bytes"] > 1_000_000 and e.data["seconds"] > 0 for e in saves)
    # a save after an optimizer step belongs to the next step; the one after the
    # last step has no step to go to, but its event is there
    in_steps = [s.checkpoint_s for s in got if s.checkpoint_s > 0]
    assert in_steps == pytest.approx([e.data["seconds"] for e in saves[:2]])


def test_dataloader_workers_stay_untouched(tmp_path: Path, example: Path) -> None:
    out = tmp_path / "out"
    proc = run(gpuwatch_cmd("run", "--out", str(out), "--", sys.executable,
                            str(example / "plain_train.py"), "--steps", "300", "--workers", "2"),
               cwd=tmp_path)  # long enough for host samples once the first step settles who it is
    assert proc.returncode == 0, proc.stderr
    assert sorted(out.glob("run*.jsonl")) == [out / "run.jsonl"]  # no log from a worker
    records = read(out / "run.jsonl")
    assert len(steps(records)) == 300
    metas = [r for r in records if isinstance(r, Meta)]
    assert len(metas) == 1
    host = [r for r in records if isinstance(r, Sample) and r.source == "host"]
    assert max(s.values["workers"] for s in host) >= 2


def test_torchrun_two_ranks_one_log_each(tmp_path: Path, example: Path) -> None:
    out = tmp_path / "out"
    proc = run(gpuwatch_cmd("run", "--out", str(out), "--", sys.executable, "-m",
                            "torch.distributed.run", "--nproc-per-node", "2",
                            str(example / "plain_train.py"), "--steps", "30"),
               cwd=tmp_path, timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.glob("run*.jsonl")) == ["run-rank0.jsonl", "run-rank1.jsonl"]
    for rank in (0, 1):
        records = read(out / f"run-rank{rank}.jsonl")
        meta = records[0]
        assert isinstance(meta, Meta) and meta.rank == rank and meta.world_size == 2
        got = steps(records)
        assert len(got) == 30 and {s.rank for s in got} == {rank}


def test_activation_checkpointing_is_counted_and_its_recompute_timed(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = run(gpuwatch_cmd("run", "--out", str(out), "--", sys.executable,
                            str(SCRIPTS / "act_ckpt_train.py")), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    got = steps(read(out / "run.jsonl"))
    assert len(got) == 20
    assert all(s.act_ckpt_calls == 4 for s in got)
    assert all(0 < s.recompute_s < s.compute_s for s in got)


def test_the_job_and_run_directory_configured_are_the_run_s(
        tmp_path: Path, example: Path) -> None:
    """``job`` and ``out_dir`` from gpuwatch.toml (or the environment) name the run as
    they do for ``watch()``; the flags come first, the script's name is the default."""
    (tmp_path / "gpuwatch.toml").write_text('job = "tomljob"\nout_dir = "toml_out"\n')
    script = [sys.executable, str(example / "plain_train.py"), "--steps", "3"]
    proc = run(gpuwatch_cmd("run", "--", *script), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    meta = read(tmp_path / "toml_out" / "run.jsonl")[0]
    assert isinstance(meta, Meta) and meta.job == "tomljob"
    env = {"GPUWATCH_OUT_DIR": str(tmp_path / "env_out"), "GPUWATCH_JOB": "envjob"}
    by_env = run(gpuwatch_cmd("run", "--", *script), cwd=tmp_path, extra_env=env)
    assert by_env.returncode == 0, by_env.stderr
    meta = read(tmp_path / "env_out" / "run.jsonl")[0]
    assert isinstance(meta, Meta) and meta.job == "envjob"
    flags = run(gpuwatch_cmd("run", "--job", "flagjob", "--out", "flag_out", "--", *script),
                cwd=tmp_path, extra_env=env)
    assert flags.returncode == 0, flags.stderr
    meta = read(tmp_path / "flag_out" / "run.jsonl")[0]
    assert isinstance(meta, Meta) and meta.job == "flagjob"


def test_a_wall_clock_stepped_forward_moves_no_record_and_raises_no_hang(
        tmp_path: Path) -> None:
    """Two hours forward a third of the way in: samples stamped by the wall clock read
    then (and steps by the clock at start) made a healthy loop a 7,200 s hang. Every
    record keeps one clock: the monotonic one from the wall clock's start."""
    out = tmp_path / "out"
    proc = run(gpuwatch_cmd("run", "--out", str(out), "--", sys.executable,
                            str(SCRIPTS / "wall_clock_step.py")), cwd=tmp_path,
               extra_env={"GPUWATCH_SAMPLE_INTERVAL_S": "0.05"})  # (samples after the step)
    assert proc.returncode == 0 and "done" in proc.stdout, proc.stderr
    records = read(out / "run.jsonl")
    times = [r.t for r in records if isinstance(r, (Step, Sample, Event))]
    assert len(steps(records)) == 300 and max(times) - min(times) < 600
    findings = json.loads((out / "findings.json").read_text())
    assert [f["detector"] for f in findings if f["detector"] == "hang"] == []


@pytest.mark.parametrize("workers", [0, 2])
def test_the_workers_counted_are_the_loaders_not_the_jobs_other_children(
        tmp_path: Path, workers: int) -> None:
    """An idle helper process (and multiprocessing's resource tracker) beside the loop:
    with no DataLoader workers the advice was about "its 2 idle workers" (storage or
    prefetch) instead of loading in worker processes."""
    out = tmp_path / "out"
    proc = run(gpuwatch_cmd("run", "--out", str(out), "--", sys.executable,
                            str(SCRIPTS / "loader_beside_a_helper.py"), str(workers)),
               cwd=tmp_path, extra_env={"GPUWATCH_SAMPLE_INTERVAL_S": "0.25"})
    assert proc.returncode == 0 and "done" in proc.stdout, proc.stderr
    counted = {s.values["workers"] for s in read(out / "run.jsonl")
               if isinstance(s, Sample) and s.source == "host"}
    assert counted and counted <= {0.0, float(workers)} and float(workers) in counted


@pytest.mark.parametrize("workers", [0, 2])
def test_without_the_loader_hook_the_workers_are_the_ones_multiprocessing_started(
        tmp_path: Path, workers: int) -> None:
    """Under ``watch()`` (or a framework's callback) no loader is known: a program the
    job runs beside the loop (a logger's service) counted as a DataLoader worker, and a
    loop loading in its own process was told its 1 worker was mostly idle. The workers
    are the children multiprocessing started, the loader's."""
    out = tmp_path / "out"
    proc = run([sys.executable, str(SCRIPTS / "loader_beside_a_helper.py"), str(workers),
                "--watch", str(out)], cwd=tmp_path)
    assert proc.returncode == 0 and "done" in proc.stdout, proc.stderr
    (log,) = out.glob("run*.jsonl")
    counted = {s.values["workers"] for s in read(log)
               if isinstance(s, Sample) and s.source == "host"}
    assert counted and counted <= {0.0, float(workers)} and float(workers) in counted


def test_a_job_that_chooses_its_own_run_directory_is_judged_there(tmp_path: Path) -> None:
    """``watch(out_dir=...)`` in the job outranks `gpuwatch run --out`: the run was
    logged there, and `gpuwatch run` said "no training process reported" and judged
    nothing. The job's agent says where it logged; the run is judged there."""
    launched, chosen = tmp_path / "launched", tmp_path / "chosen"
    proc = run(gpuwatch_cmd("run", "--out", str(launched), "--", sys.executable,
                            str(SCRIPTS / "explicit_loop.py"), str(chosen), "exit"),
               cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"the job chose its own run directory: {chosen}" in proc.stderr
    assert "no training process reported" not in proc.stderr
    assert (chosen / "findings.json").exists() and (chosen / "report.html").exists()
    # `gpuwatch analyze` of the directory it was launched with reads the job's logs
    analyzed = run(gpuwatch_cmd("analyze", str(launched)), cwd=tmp_path)
    assert analyzed.returncode == 0 and "no run*.jsonl" not in analyzed.stderr, \
        analyzed.stderr
    # the next attempt in the same directory trains nothing: the last one's word is gone
    again = run(gpuwatch_cmd("run", "--out", str(launched), "--", sys.executable,
                             str(SCRIPTS / "no_training.py")), cwd=tmp_path)
    assert again.returncode == 0 and "no training process reported" in again.stderr, \
        again.stderr


def test_a_process_that_replaces_itself_keeps_every_step_it_logged(tmp_path: Path) -> None:
    """os.execv runs no atexit: the first image's steps not yet written were lost (21 of
    300 kept). Its agents write theirs before the image is replaced."""
    out = tmp_path / "out"
    proc = run(gpuwatch_cmd("run", "--out", str(out), "--", sys.executable,
                            str(SCRIPTS / "exec_itself.py")), cwd=tmp_path)
    assert proc.returncode == 0 and "done" in proc.stdout, proc.stderr
    first, again = (steps(read(out / name)) for name in ("run.jsonl", "run.attempt1.jsonl"))
    assert len(first) == 300 and len(again) == 10


def test_a_process_that_never_trains_is_left_alone(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = run(gpuwatch_cmd("run", "--out", str(out), "--", sys.executable,
                            str(SCRIPTS / "no_training.py")), cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.strip() == "3.0", proc.stderr
    assert not out.exists()


def test_run_errors_are_one_line(tmp_path: Path) -> None:
    missing = run(gpuwatch_cmd("run", "--", "no-such-program-xyz"), cwd=tmp_path)
    assert missing.returncode == 127
    assert missing.stderr.strip() == "gpuwatch: command not found: no-such-program-xyz"
    empty = run(gpuwatch_cmd("run"), cwd=tmp_path)
    assert empty.returncode == 2 and len(empty.stderr.strip().splitlines()) == 1
    (tmp_path / "taken").write_text("a file")
    onto_file = run(gpuwatch_cmd("run", "--out", "taken", "--", sys.executable, "-c",
                                 "print('trained')"), cwd=tmp_path)
    assert onto_file.returncode == 2 and "trained" not in onto_file.stdout  # never unmonitored
    assert onto_file.stderr.strip() == "gpuwatch: --out taken is not a directory"
    (tmp_path / "gpuwatch.toml").write_text("sample_interval_s = 0\n")
    bad = run(gpuwatch_cmd("run", "--", sys.executable, "-c", "pass"), cwd=tmp_path)
    assert bad.returncode == 2
    assert bad.stderr.strip().startswith("gpuwatch config: sample_interval_s:")
    assert "Traceback" not in bad.stderr
