"""Ordinary training life is not an alarm: hang judged on all progress, checkpoint
share over the run, fits_on_paper on the job's own memory, never the current card."""

from __future__ import annotations

import itertools
import random
import re
from dataclasses import replace
from pathlib import Path

import pytest

from gpuwatch.config import Settings
from gpuwatch.detection.engine import engine_from_settings
from gpuwatch.detection.replay import analyze
from gpuwatch.records import Event, Finding, Record, Sample, Step
from gpuwatch.runlog import RunLogWriter, encode
from gpuwatch.telemetry import Telemetry
from tests.runs import GB, START, judge, meta, only, samples, steps, topology
from tests.scenarios import (
    H100,
    L40S,
    RTX_5090,
    Evals,
    Memory,
    Saves,
    Shape,
    Stop,
    job,
    simulate,
    write,
)
from tests.scenarios import (
    START as SIM_START,
)


def findings_of(shape: Shape, **settings: object) -> list[Finding]:
    records = simulate(shape)
    assert len(records) == 1
    return judge(records[0], **settings)


# -- hang ------------------------------------------------------------------------------

def test_an_eval_longer_than_the_hang_bound_is_progress_with_or_without_progress_records() -> None:
    evals = Shape(step_s=1.0, duration_s=600, evals=Evals(every_s=120, seconds=200))
    assert findings_of(evals) == []
    assert findings_of(replace(evals, progress_records=False)) == []


def test_without_progress_records_an_idle_gpu_and_cpu_during_an_eval_would_be_a_hang() -> None:
    """The GPU-busy rule is what keeps old logs' evals from being hangs: the same stall
    with nothing busy is reported."""
    shape = Shape(step_s=1.0, duration_s=400, stop=Stop(at_s=120, ranks=(0,), kind="loader"))
    f = only(findings_of(shape), "hang")
    assert f.severity == "critical"
    assert "stuck in data" in f.summary


def test_an_epoch_start_whose_loader_workers_fill_a_buffer_is_progress_not_a_hang() -> None:
    """Every 10 minutes a new epoch: 8 DataLoader workers fill a shuffle buffer for 100 s
    at full CPU while the loop waits in data, with no progress record: a critical hang
    ("stuck in data") at each epoch start. Workers that respawned and sit idle that long
    are still one."""
    shape = Shape(step_s=0.3, duration_s=1000, epoch_every_s=600, epoch_restart_s=100,
                  restart_workers_cpu=1.0, progress_records=False)
    assert [f for f in findings_of(shape) if f.detector == "hang"] == []
    f = only(findings_of(replace(shape, restart_workers_cpu=0.02)), "hang")
    assert "stuck in data" in f.summary


def test_loader_workers_spinning_on_storage_that_went_away_are_a_hang_all_the_same() -> None:
    """The loop waits in data from 300 s on while its 4 workers spin at full CPU (a
    dataset's retry loop after its storage went away): workers at work count as progress
    for at most ``max_alone_seconds``, then the hang is reported."""
    shape = Shape(step_s=0.3, duration_s=1500, workers=4,
                  stop=Stop(at_s=300, ranks=(0,), kind="loader"))
    spinning = [replace(r, values={**r.values, "workers_cpu_ratio": 1.0})
                if isinstance(r, Sample) and r.source == "host" and r.t > SIM_START + 300 else r
                for r in simulate(shape)[0]]
    f = only(judge(spinning), "hang")
    assert "stuck in data" in f.summary
    assert f.first_seen <= SIM_START + 300 + 600 + 61 + 5


def test_ranks_waiting_for_rank_0_at_work_alone_are_not_hung(tmp_path: Path) -> None:
    """DDP with rank 0 evaluating alone between steps, in a log without progress
    records: its GPU busy at working power says it works (no hang on rank 0), and the
    others waiting in their next collective for it are no hang either (they were
    paged critical at every eval)."""
    shape = replace(job("ddp_rank0_eval").shape, progress_records=False)
    found = analyze(write(shape, tmp_path), Settings()).findings
    assert not [f for f in found if f.detector == "hang"]


def test_rank_0_at_work_alone_below_its_peak_power_holds_the_others(tmp_path: Path) -> None:
    """Rank 0 runs 120 s previews alone every 10 minutes (97% busy at 55% of its TDP,
    memory-bound decoding; its training power swings 70-100% sample to sample), no
    progress records: held against its peak power the job engine read a hung
    collective and paged the others; against the power it draws while stepping, as
    rank 0's own judgement reads it, it works."""
    shape = Shape(step_s=1.0, duration_s=1500, world=4, collective_share=0.05,
                  collective_bytes=int(2e9), memory=Memory(60, 35), progress_records=False,
                  evals=Evals(every_s=600, seconds=120, ranks=(0,)))
    ranks = simulate(shape)
    watts, swing = shape.gpu[3], itertools.count()
    ranks[0] = [replace(r, values={**r.values, **(
        {"gpu_utilization_ratio": 0.97, "gpu_power_watts": 0.55 * watts}
        if r.values["gpu_utilization_ratio"] == 0.85  # (the eval's readings: previews)
        else {"gpu_power_watts": (0.7 if next(swing) % 2 else 1.0) * watts})})
                if isinstance(r, Sample) and r.source == "nvml" else r for r in ranks[0]]
    paths = []
    for rank, records in enumerate(ranks):
        writer = RunLogWriter(tmp_path / f"run-rank{rank}.jsonl")
        writer.write(records)
        writer.close()
        paths.append(tmp_path / f"run-rank{rank}.jsonl")
    found = analyze(paths, Settings()).findings
    assert not [f for f in found if f.detector == "hang"]


def test_a_hung_rank_that_looks_busy_holds_the_others_no_longer_than_a_rank_works_alone(
        tmp_path: Path) -> None:
    """Rank 3 stuck in a CUDA kernel that never ends (its GPU at working power, its CPU
    spinning) while the others wait in the all-reduce: it looks like a rank at work
    alone, so the others' hang waits, but only ``max_alone_seconds`` (10 minutes), not
    the 30 minutes a save may take (it was paged at +32 minutes)."""
    shape = replace(job("nccl_hang").shape, duration_s=1000, stop=Stop(at_s=120, ranks=(3,)))
    watts, stopped = shape.gpu[3], SIM_START + 121
    ranks = simulate(shape)
    ranks[3] = [replace(r, values={**r.values, **(
        {"process_cpu_cores": 1.0} if r.source == "host" else
        {"gpu_utilization_ratio": 1.0, "gpu_power_watts": 0.8 * watts})})
                if isinstance(r, Sample) and r.t > stopped and r.source in ("host", "nvml")
                else r for r in ranks[3]]
    paths = []
    for rank, records in enumerate(ranks):
        path = tmp_path / f"run-rank{rank}.jsonl"
        path.write_bytes(b"".join(map(encode, records)))
        paths.append(path)
    hung = [f for f in analyze(paths, Settings()).findings if f.detector == "hang"]
    assert sorted(r for f in hung for r in f.ranks) == [0, 1, 2]
    assert all(f.first_seen < stopped + 600 + 180 for f in hung)


def test_a_hung_nccl_collective_is_named_by_its_gpu_signature() -> None:
    records = simulate(job("nccl_hang").shape)
    f = only(judge(records[0]), "hang")
    assert f.evidence["gpu_utilization_ratio"] == 1.0
    assert f.evidence["gpu_power_watts"] < 0.6 * f.evidence["working_power_watts"]
    assert "collective" in f.summary
    no_agent = [r for r in records[0] if not (isinstance(r, Sample) and r.source == "agent")]
    f = only(judge(no_agent), "hang")  # no open phases known: the GPU alone tells
    assert "signature of a hung NCCL collective" in f.summary


def test_a_long_blocking_save_is_progress_not_a_hang() -> None:
    shape = Shape(step_s=0.5, duration_s=600, saves=Saves(every_s=200, blocking_s=150),
                  progress_records=False)
    assert not [f for f in findings_of(shape) if f.detector == "hang"]


def test_ranks_waiting_for_a_save_that_died_with_its_process_are_hung(tmp_path: Path) -> None:
    """Waiting for a rank's save is no hang only while that rank's agent says it is
    still writing: rank 0 killed 20 s into its save (the host OOM killer) leaves the
    others waiting in a collective for good."""
    shape = Shape(step_s=1.0, duration_s=900, world=4, collective_share=0.05,
                  collective_bytes=int(2e9), memory=Memory(60, 35),
                  saves=Saves(every_s=300, blocking_s=150, ranks=(0,)))
    logs = simulate(shape)
    died = 20 + next(r.t - r.values["open_checkpoint_seconds"] for r in logs[0]
                     if isinstance(r, Sample) and "open_checkpoint_seconds" in r.values)
    logs[0] = [r for r in logs[0] if getattr(r, "t", 0.0) < died]
    paths = []
    for rank, records in enumerate(logs):
        path = tmp_path / f"run-rank{rank}.jsonl"
        path.write_bytes(b"".join(map(encode, records)))
        paths.append(path)
    hung = {r for f in analyze(paths, Settings(), workers=1).findings
            if f.detector == "hang" for r in f.ranks}
    assert hung == {1, 2, 3}


# -- checkpoint_overhead -----------------------------------------------------------------

def test_checkpoint_share_is_blocking_time_over_wall_time_between_saves() -> None:
    rare = Shape(step_s=1.0, duration_s=7300, saves=Saves(every_s=3600, blocking_s=40),
                 sample_s=5.0)
    assert [f for f in findings_of(rare) if f.detector == "checkpoint_overhead"] == []
    frequent = Shape(step_s=0.5, duration_s=600, saves=Saves(every_s=60, blocking_s=15,
                                                             nbytes=int(3e9)))
    f = only(findings_of(frequent), "checkpoint_overhead")
    # 15 s of each 60 s cycle (start to start), read in whole cycles (it read 20%)
    assert abs(f.evidence["checkpoint_share_ratio"] - 15 / 60) < 0.015
    assert f.evidence["seconds_per_save"] == 15 and f.evidence["bytes_per_save"] == 3e9
    assert f.verdict == "fix_here"
    # how often: from one save's start to the next's (the generator's every_s is wall time)
    assert abs(f.evidence["seconds_between_saves"] - 60) < 1.0
    assert "every 60 s" in f.summary


def test_saves_with_no_step_between_them_are_one_checkpoint() -> None:
    """A model file, then the optimizer's: one checkpoint of both files' time and bytes,
    as often as it comes."""
    shape = Shape(step_s=0.5, duration_s=600, saves=Saves(every_s=60, blocking_s=15,
                                                          nbytes=int(3e9)))
    records = simulate(shape)[0]
    split: list[Record] = []
    for r in records:  # each save as two files written back to back
        if isinstance(r, Event) and r.name == "checkpoint_save":
            half = {"seconds": 7.5, "bytes": r.data["bytes"] / 2}
            split += [Event(0, r.t - 7.5, r.name, half), Event(0, r.t, r.name, half)]
        else:
            split.append(r)
    f = only(judge(split), "checkpoint_overhead")
    assert f.evidence["saves_total"] == 2 * f.evidence["checkpoints_total"]
    assert f.evidence["seconds_per_save"] == 15 and f.evidence["bytes_per_save"] == 3e9
    assert abs(f.evidence["seconds_between_saves"] - 60) < 1.0


def test_background_saves_cost_no_blocking_time() -> None:
    asynchronous = Shape(step_s=0.5, duration_s=600,
                         saves=Saves(every_s=60, blocking_s=0.2, background_s=15))
    assert [f for f in findings_of(asynchronous) if f.detector == "checkpoint_overhead"] == []


def test_an_async_save_whose_staging_blocks_is_told_as_staging_with_its_bytes() -> None:
    """async_save of 30 GB every 2 minutes whose blocking call (the copy to host memory)
    takes 20 s: the finding said "20.00 s per save of 0 MB (0 MB/s)" and told the job
    to save asynchronously, which it does."""
    staged = Shape(step_s=0.4, duration_s=1200, memory=Memory(50, 30),
                   saves=Saves(every_s=120, blocking_s=20, nbytes=int(30e9), background_s=60))
    f = only(findings_of(staged), "checkpoint_overhead")
    assert "staging the state in host memory" in f.summary
    assert "30 GB written in the background" in f.summary and "0 B/s" not in f.summary
    assert "Save asynchronously" not in f.action and "pinned" in f.action
    assert f.evidence["async_bytes_per_save"] == 30e9


# -- interruptions ----------------------------------------------------------------------

def test_loader_restarts_rare_among_steps_but_a_third_of_the_run_are_fixed_here() -> None:
    """A 12 s DataLoader restart every 30 s of 0.1 s steps: 1 step in 300, the windows
    leave it out, yet it costs more than a third of the run."""
    shape = Shape(step_s=0.1, duration_s=600, epoch_every_s=30, epoch_restart_s=12)
    f = only(findings_of(shape), "interruptions")
    assert f.verdict == "fix_here" and "the DataLoader starting over" in f.summary
    assert "persistent_workers=True" in f.action and "A bigger GPU would not help" in f.action
    assert 0.3 < f.evidence["interruption_share_ratio"] < 0.45  # 12 s of each 30 s
    assert f.evidence["seconds_per_interruption"] == pytest.approx(12, rel=0.05)


def test_evaluations_that_cost_a_share_of_the_run_are_information() -> None:
    shape = Shape(step_s=1.0, duration_s=900, evals=Evals(every_s=120, seconds=40))
    f = only(findings_of(shape), "interruptions")
    assert f.verdict == "info" and "evaluations" in f.summary
    assert f.evidence["eval_seconds_share_ratio"] == pytest.approx(1.0)
    assert "would not help" not in f.action  # GPU work: a bigger card runs it too


def test_a_recompile_every_minute_is_compute_outside_the_typical_steps() -> None:
    """torch.compile meeting a new shape every minute: a 15 s step of compute among
    0.3 s ones, a fifth of the run."""
    out: list[Record] = [meta()]
    t = START
    for k in range(6):
        batch = steps(60, wall=0.3, data_s=0.003, start=t, first=k * 201 + 1)
        long = replace(batch[-1], t=batch[-1].t + 15, wall_s=15.3, compute_s=15.297)
        out += [*batch[:-1], long]
        t = long.t
    f = only(judge(out), "interruptions")
    assert f.verdict == "fix_here" and "recompiles" in f.summary
    assert f.evidence["compute_seconds_beyond_typical"] == pytest.approx(15, rel=0.01)


def test_rank_0s_own_eval_is_reported_once_by_rank_0() -> None:
    """``if rank == 0: evaluate()`` in DDP, 40 s every two minutes: rank 0's steps hold
    its eval (information); the others' hold a wait in their next all-reduce for it,
    which is that eval's cost, not a stall of theirs: one finding, not four."""
    shape = replace(job("ddp_rank0_eval").shape, duration_s=900,
                    evals=Evals(every_s=120, seconds=40, ranks=(0,)))
    ranks = simulate(shape)
    mine = only(judge(ranks[0]), "interruptions")
    assert mine.verdict == "info" and mine.severity == "info" and "evaluations" in mine.summary
    assert not [f for f in judge(ranks[2]) if f.detector == "interruptions"]


def test_steps_long_in_proportion_to_their_tokens_are_no_stalls() -> None:
    """Batches grouped by length: a step takes as long as its tokens make it (the
    longest 5x the median), which is no interruption and no finding."""
    rng = random.Random(7)
    out: list[Record] = [meta()]
    t = START
    for k in range(1, 1500):
        tokens = int(2048 * min(rng.lognormvariate(0, 1), 20)) + 64
        wall = 0.2 * tokens / 2048
        t += wall
        out.append(Step(rank=0, step=k, t=t, wall_s=wall, compute_s=wall, samples=8,
                        tokens=tokens))
    assert not [f for f in judge(out) if f.detector == "interruptions"]
    # the same walls at the same tokens per step: stalls
    fixed = [replace(r, tokens=2048) if isinstance(r, Step) else r for r in out]
    assert only(judge(fixed), "interruptions").verdict == "fix_here"


def test_batches_of_the_longest_sequences_costing_more_per_token_are_no_stalls() -> None:
    """Eight sequences a step, bucketed by length from 64 to 1024 tokens, through
    attention: the cost per token grows with the length (the 1024-token batches take
    1.5 s, 4.3x the median step's cost per token). They are as long as the other
    batches of their length, so no interruption; the same step among steps of its own
    length taking 0.35 s is one."""
    rng = random.Random(11)
    seconds = {64: 0.022, 128: 0.045, 256: 0.113, 512: 0.424, 1024: 1.528}  # measured, CPU

    def run(stall_at: int | None) -> list[Record]:
        out: list[Record] = [meta()]
        t = START
        for k in range(1, 800):
            length = rng.choices(list(seconds), weights=[30, 30, 20, 13, 7])[0]
            wall = seconds[length] * rng.uniform(0.95, 1.05)
            if k == stall_at:
                length, wall = 1024, 10.0  # a stall in a long batch (an eval, a save)
            t += wall
            out.append(Step(rank=0, step=k, t=t, wall_s=wall, compute_s=wall, samples=8,
                            tokens=8 * length))
        return out

    assert not [f for f in judge(run(None), detectors={"interruptions": {"min_run_s": 30}})
                if f.detector == "interruptions"]
    view = Telemetry()
    for r in run(600):
        view.add_one(r)
    assert sum(view.interrupted_by.count.values()) == 1  # the stall; no batch of 1024 tokens


@pytest.mark.parametrize(("saving", "waiting"), [(True, False), (False, False), (True, True)])
def test_stalls_that_each_hold_a_save_are_told_as_the_checkpoint_s(saving: bool,
                                                                   waiting: bool) -> None:
    """torch.save into a buffer (0.04 s), then a blocking upload (0.6 s) every 50 steps:
    the upload is compute to gpuwatch, and the stalls were "recompiles, host work or an
    evaluation". Each stall holds a save: the checkpoint's writing or upload is named,
    and its advice. The same stalls without saves stay compute's; a save each epoch
    before a loader starting over (the stall's time in data wait) stays the loader's."""
    out: list[Record] = [meta()]
    t = START
    for k in range(1, 4000):
        stall = k % 50 == 0
        ckpt = 0.04 if stall and saving else 0.0
        wall = 0.05 + (0.64 if stall else 0.0)
        data = 0.6 if stall and waiting else 0.0
        t += wall
        if ckpt:
            out.append(Event(0, t - wall + 0.05, "checkpoint_save",
                             {"seconds": ckpt, "bytes": int(57e6)}))
        out.append(Step(rank=0, step=k, t=t, wall_s=wall, checkpoint_s=ckpt, data_s=data,
                        compute_s=wall - ckpt - data, samples=32))
    f = only(judge(out, detectors={"interruptions": {"min_run_s": 60}}), "interruptions")
    told = saving and not waiting
    assert f.verdict == "fix_here"
    assert ("checkpoint written or uploaded" in f.summary) is told, f.summary
    assert ("async_save" in f.action) is told
    assert ("DataLoader starting over" in f.summary) is waiting


def test_saves_beside_the_stalls_are_not_their_cause() -> None:
    """Recompile stalls every 50 steps and quick saves in ordinary steps between them
    (three stalls hold one too): the run's saves outnumber its stalls, but few stalls
    hold one. They were told as the checkpoint's upload; they stay compute's."""
    out: list[Record] = [meta()]
    t = START
    for k in range(1, 4000):
        stall, saving = k % 50 == 0, k % 50 == 25 or k in (50, 100, 150)
        ckpt = 0.04 if saving else 0.0
        wall = 0.05 + (0.64 if stall else 0.0) + ckpt
        t += wall
        if saving:
            out.append(Event(0, t - 0.01, "checkpoint_save", {"seconds": ckpt, "bytes": 1000}))
        out.append(Step(rank=0, step=k, t=t, wall_s=wall, checkpoint_s=ckpt,
                        compute_s=wall - ckpt, samples=32))
    f = only(judge(out, detectors={"interruptions": {"min_run_s": 60}}), "interruptions")
    assert "recompiles" in f.summary and "checkpoint" not in f.summary, f.summary


def test_gpu_work_between_steps_is_the_jobs_own_and_scaled_like_compute() -> None:
    """An RL job: a 60 s rollout on the GPU, then 32 one-second optimizer steps. The
    rollout is no stall, and time to finish projects it like compute."""
    out: list[Record] = [meta(), topology("NVIDIA A100-SXM4-80GB", 80 * GB)]
    t, k = START, 0
    for _ in range(12):
        for j in range(32):
            k += 1
            wall = 61.0 if j == 0 else 1.0
            out.append(Step(rank=0, step=k, t=t + wall, wall_s=wall, compute_s=wall,
                            optimizer_s=0.1, samples=8, tokens=8192))
            t += wall
    out += samples("nvml", t - START, {"gpu_utilization_ratio": 0.9, "gpu_power_watts": 350},
                   gpu=0)
    found = judge(out, total_steps=100_000)
    assert not [f for f in found if f.detector == "interruptions"]
    f = only(found, "iteration_speed")
    assert f.projection is not None
    assert f.projection["parts_seconds_now"]["compute"] > 2.0  # the rollouts spread as compute
    assert f.projection["parts_seconds_now"]["other"] < 0.1


def test_a_burst_of_start_up_recompiles_is_no_rhythm() -> None:
    """Four 30 s recompiles in the first minutes of a long run (new shapes met once)."""
    out: list[Record] = [meta()]
    t = START
    for k in range(1, 3000):
        wall = 30.3 if k in (20, 120, 220, 320) else 0.3
        t += wall
        out.append(Step(rank=0, step=k, t=t, wall_s=wall, compute_s=wall, samples=8))
    assert not [f for f in judge(out) if f.detector == "interruptions"]


def test_rare_interruptions_are_no_finding() -> None:
    """A 60 s eval every half hour: 3% of the run."""
    shape = Shape(step_s=1.0, duration_s=7200, evals=Evals(every_s=1800, seconds=60),
                  sample_s=5.0)
    assert not [f for f in findings_of(shape) if f.detector == "interruptions"]


def test_a_loader_that_stalls_every_few_steps_starves_the_job() -> None:
    """Every 7th 1 s step waits 3.5 s for data from network storage (workers idle): a
    third of the run, judged over windows long enough to hold several stalls."""
    out: list[Record] = [meta()]
    t = START
    for k in range(1, 600):
        data = 3.5 if k % 7 == 0 else 0.02
        t += 1.0 + data
        out.append(Step(rank=0, step=k, t=t, wall_s=1.0 + data, data_s=data, compute_s=1.0,
                        samples=32))
    out += samples("host", t - START, {"workers": 8.0, "workers_cpu_ratio": 0.1})
    f = only(judge(out), "data_starvation")
    assert f.state == "active" and "storage or prefetch" in f.summary


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_loader_stalling_now_and_then_is_no_starved_loader(seed: int) -> None:
    """0.3 s steps, a 1 s stall for storage in one step of 30, at random: about a tenth of
    the run (a 10 s window that held three stalls, 32% of its time, raised a warning and
    cleared it). Where the typical step hardly waits the longer span judges, and its
    mean is under the threshold; stalls every 7th step, a third of the run, are still
    one (above)."""
    rng = random.Random(seed)
    out: list[Record] = [meta()]
    t = START
    for k in range(1, 6000):
        data = 1.0 if rng.random() < 1 / 30 else 0.01
        t += 0.3 + data
        out.append(Step(rank=0, step=k, t=t, wall_s=0.3 + data, data_s=data, compute_s=0.3,
                        samples=32))
    out += samples("host", t - START, {"workers": 8.0, "workers_cpu_ratio": 0.1})
    raised = [f for f in judge(out) if f.detector == "data_starvation"]
    assert raised == []


# -- fits_on_paper -----------------------------------------------------------------------

def test_a_leak_is_fixed_here_not_moved_to_a_bigger_card() -> None:
    """Memory held between steps climbs from 14 to 46 GB at the same batch on an L40S,
    retries near the top, then an OOM: a leak fills any card; no move."""
    out: list[Record] = [meta(), topology("NVIDIA L40S", 48 * GB),
                         *steps(2400, wall=0.5, samples=16, tokens=16 * 2048)]
    out += [Sample(0, START + i, "allocator", {
        "allocator_allocated_bytes": (14 + 32 * i / 2400) * GB,
        "allocator_reserved_bytes": min(47.5, 18 + 32 * i / 2400) * GB,
        "allocator_alloc_retries_total": float(max(i - 2100, 0) // 30)}) for i in range(1, 2400)]
    out.append(Event(0, START + 2390, "oom", {"type": "OutOfMemoryError"}))
    f = [x for x in judge(out) if x.detector == "fits_on_paper"][-1]
    assert f.verdict == "fix_here" and "a leak" in f.summary
    assert f.evidence["memory_held_growth_ratio"] > 0.5


def test_whole_card_memory_is_a_last_resort_and_says_so() -> None:
    shape = replace(job("rtx5090_memory_bound_finetune").shape,
                    memory=Memory(reserved_gb=31.4, allocated_gb=17, retries_per_min=12,
                                  oom_at_s=(3.0,), allocator=False))
    records = [r for r in simulate(shape)[0] if not (
        isinstance(r, Sample) and r.source == "nvml")]
    card_only = [Sample(0, s.t, "nvml", {"gpu_memory_used_bytes": 31.5 * GB,
                                         "gpu_memory_total_bytes": 32 * GB}, gpu=0)
                 for s in records if isinstance(s, Sample) and s.source == "host"]
    f = only(judge([*records, *card_only]), "fits_on_paper")
    assert f.evidence["whole_card_memory"] == 1.0
    assert "the whole card" in f.summary
    with_process = only(findings_of(shape), "fits_on_paper")  # NVML per-process memory
    assert "whole_card_memory" not in with_process.evidence
    assert "its processes" in with_process.summary


def test_memory_is_no_reason_to_move_a_step_that_waits_on_its_loader() -> None:
    """A consumer card at its memory limit whose step waits 45% on CPU-bound loader
    workers: the loader is the fix; a move must pay on what it would gain, not on memory
    alone."""
    shape = Shape(step_s=1.0, duration_s=300, gpu=RTX_5090, data_share=0.45, workers=4,
                  workers_cpu=0.97, recompute_share=0.15,
                  memory=Memory(reserved_gb=31.5, allocated_gb=18, retries_per_min=8))
    found = findings_of(shape)
    assert only(found, "data_starvation").verdict == "fix_here"
    f = only(found, "fits_on_paper")
    assert f.projection is not None and f.projection["decision"]["rule"] != "memory"
    assert f.verdict == "fix_here" and "fix the loader first" in f.summary
    fed = only(findings_of(replace(shape, data_share=0.03, workers_cpu=0.3)), "fits_on_paper")
    assert fed.verdict == "move_to_h100"  # the same memory with a fed step: move


def test_memory_is_no_reason_to_move_a_step_held_back_by_its_blocking_saves() -> None:
    """A consumer card at its memory limit whose blocking saves take half of the run: the
    saves are the fix (a bigger card would not help them), so memory alone moves nothing;
    the report said "move" beside "a bigger GPU would not help"."""
    shape = Shape(step_s=0.5, duration_s=400, gpu=RTX_5090,
                  saves=Saves(every_s=30, blocking_s=15, nbytes=int(5e9)),
                  memory=Memory(reserved_gb=31.4, allocated_gb=18, retries_per_min=10))
    found = findings_of(shape)
    assert only(found, "checkpoint_overhead").verdict == "fix_here"
    f = only(found, "fits_on_paper")
    assert f.verdict == "fix_here" and "fix the saves first" in f.summary
    saved = only(findings_of(replace(shape, saves=None)), "fits_on_paper")
    assert saved.verdict == "move_to_h100"  # the same memory without the saves: move


def test_memory_is_no_reason_to_move_a_step_held_back_by_its_loader_starting_over() -> None:
    """A consumer card at its memory limit whose DataLoader starts over each minute for
    30 s (half the run, rare per step: no starved window, an interruptions finding): the
    restarts are the fix, so memory alone moves nothing; the report said "move, 1.3x at
    2.7x the cost" beside "a bigger GPU would not help"."""
    shape = Shape(step_s=1.0, duration_s=600, gpu=RTX_5090, epoch_every_s=60,
                  epoch_restart_s=30, memory=Memory(reserved_gb=31.7, allocated_gb=20,
                                                    retries_per_min=10))
    found = findings_of(shape)
    assert only(found, "interruptions").verdict == "fix_here"
    f = only(found, "fits_on_paper")
    assert f.verdict == "fix_here" and "fix the stalls first" in f.summary
    fed = only(findings_of(replace(shape, epoch_every_s=None, epoch_restart_s=0.0)),
               "fits_on_paper")
    assert fed.verdict == "move_to_h100"  # the same memory without the restarts: move


def test_a_job_that_ran_out_of_memory_before_the_window_needs_more_than_its_card() -> None:
    """An OOM early in the run, retries at the limit since: the need is said as more than
    the card it ran out on, not an estimate below it (which read "1 OOMs earlier")."""
    shape = Shape(step_s=1.0, duration_s=600, gpu=RTX_5090,
                  memory=Memory(reserved_gb=31.7, allocated_gb=12, retries_per_min=10,
                                oom_at_s=(40,)))
    f = only(findings_of(shape), "fits_on_paper")
    assert f.evidence["ooms_total"] == 0 and f.evidence["ooms_earlier_total"] == 1
    assert "more than the card's" in f.summary and "1 OOM earlier" in f.summary
    assert f.evidence["memory_need_bytes"] >= f.evidence["memory_total_bytes"]


def test_ooms_that_recur_in_training_below_the_limit_are_a_job_that_does_not_fit() -> None:
    """An L40S job catching an OOM every 90 s: its readings once a second sit at 85% of
    the card (the allocator has just let its cache go at each). It keeps running out of
    memory here, and was told nothing at all; now a move that stays active to the end,
    however long the windows between its OOMs."""
    shape = Shape(step_s=1.0, duration_s=600, gpu=L40S, memory=Memory(
        reserved_gb=40.8, allocated_gb=28, oom_at_s=(60, 150, 240, 330, 420, 510)))
    f = only(findings_of(shape), "fits_on_paper")
    assert f.verdict == "move_to_h100" and f.state == "active"
    assert f.evidence["ooms_total"] >= 2 and "more than the card's" in f.summary
    once = replace(shape, memory=replace(shape.memory, oom_at_s=(60,)))
    assert not [x for x in findings_of(once) if x.detector == "fits_on_paper"]  # (no rhythm)


L40S_85 = Shape(step_s=1.0, duration_s=600, gpu=L40S,
                memory=Memory(reserved_gb=40.8, allocated_gb=28))


@pytest.mark.parametrize("case", [
    # one batch tried again once: two OOMs 0.6 s apart, one incident
    replace(L40S_85, memory=replace(L40S_85.memory, oom_at_s=(200.0, 200.6))),
    # two early OOMs, then ten clean minutes: the rhythm stopped
    replace(L40S_85, duration_s=640, memory=replace(L40S_85.memory, oom_at_s=(40.0, 100.0))),
    # an OOM 10 s into each eval (an eval batch too big), in a log without progress
    # records (the eval told by its GPU work outside the training steps)
    replace(L40S_85, evals=Evals(every_s=120, seconds=20), progress_records=False,
            memory=replace(L40S_85.memory, oom_at_s=(130.0, 250.0, 370.0, 490.0))),
    # the same with progress records, training at 60% of the card
    replace(L40S_85, evals=Evals(every_s=120, seconds=20),
            memory=Memory(reserved_gb=29, allocated_gb=20, oom_at_s=(130.0, 250.0, 370.0))),
], ids=["one-batch-twice", "rhythm-stopped", "evals-unmarked", "evals"])
def test_ooms_that_are_no_rhythm_of_training_are_no_reason_to_move(case: Shape) -> None:
    """OOMs that do not recur in training (one batch tried twice, two that stopped, an
    eval's) below the limit: no move held at the end (each gave a "cannot run well here"
    for up to ten minutes, or to the end)."""
    assert not [f for f in findings_of(case)
                if f.detector == "fits_on_paper" and f.state == "active"]


def test_stalls_beside_recurring_ooms_hold_no_memory_move_back() -> None:
    """A stall after each OOM (the job's own recovery, the GPU idle) is an interruptions
    finding; it must not hold back the move for the OOMs that cause it ("fix the stalls
    first")."""
    ooms = tuple(t + 0.5 for t in range(30, 600, 30))
    shape = Shape(step_s=1.0, duration_s=600, gpu=RTX_5090, epoch_every_s=30,
                  epoch_restart_s=9, memory=Memory(reserved_gb=27.2, allocated_gb=20,
                                                   oom_at_s=ooms))
    found = findings_of(shape)
    assert only(found, "interruptions").verdict == "fix_here"
    f = only(found, "fits_on_paper")
    assert f.verdict == "move_to_h100" and "fix the stalls first" not in f.summary


@pytest.mark.parametrize("gpu", [RTX_5090, L40S])
def test_checkpointing_and_retries_well_below_the_limit_are_no_reason_to_move(
        gpu: tuple[str, float, int, float]) -> None:
    """Activation checkpointing and allocator retries at 60% of the card: two symptoms,
    but the job would fit this card without checkpointing. It was told to move (cheaper
    per sample, faster to finish); it is told it may turn checkpointing off here."""
    shape = Shape(step_s=1.0, duration_s=300, gpu=gpu, recompute_share=0.25,
                  memory=Memory(reserved_gb=0.6 * gpu[1], allocated_gb=0.35 * gpu[1],
                                retries_per_min=10))
    f = only(findings_of(shape), "fits_on_paper")
    assert (f.verdict, f.evidence["memory_need_bytes"] < f.evidence["memory_total_bytes"]) == (
        "info", True)
    assert "allocator retries, with memory at 60% of the card" in f.summary


def test_a_move_for_a_job_that_ran_out_says_the_same_need_in_its_summary_and_action() -> None:
    """A job that ran out of memory needs "more than the card's" memory: the summary said
    so, and the action named the card's size as what it needs."""
    shape = Shape(step_s=1.0, duration_s=300, gpu=RTX_5090, memory=Memory(
        reserved_gb=31.4, allocated_gb=18, retries_per_min=10, oom_at_s=(290.0,)))
    f = only(findings_of(shape), "fits_on_paper")
    assert f.verdict == "move_to_h100" and "more than the card's" in f.summary
    assert "it needs more than the card's" in f.action, f.action


def test_a_memory_finding_says_the_run_s_earlier_ooms() -> None:
    """A card at its limit with retries, and two OOMs the job lived through before the
    last window, and more than ten minutes before the run's end (no longer recurring): the
    finding said "with allocator retries" and ooms_total 0, as if the run had never run
    out. Its earlier OOMs are said and counted apart from the window's."""
    shape = Shape(step_s=1.5, duration_s=900, gpu=L40S, memory=Memory(
        reserved_gb=47.2, allocated_gb=30, retries_per_min=10, oom_at_s=(120.0, 200.0)))
    f = only(findings_of(shape), "fits_on_paper")
    assert f.evidence["ooms_total"] == 0 and f.evidence["ooms_earlier_total"] == 2
    assert "2 OOMs earlier in the run" in f.summary
    quiet = only(findings_of(replace(shape, memory=replace(shape.memory, oom_at_s=()))),
                 "fits_on_paper")
    assert "ooms_earlier_total" not in quiet.evidence and "earlier" not in quiet.summary


def test_a_memory_move_from_a_throttled_card_projects_no_speed() -> None:
    """A card at its limit with OOMs that also runs thermally throttled 70% of the time:
    the move for memory stands, but it promised "1.7-3.5x faster" beside the throttling
    finding that says no projection from this card is judged. It now projects none."""
    shape = Shape(step_s=1.0, duration_s=300, gpu=RTX_5090, memory=Memory(
        reserved_gb=31.4, allocated_gb=20, retries_per_min=10, oom_at_s=(290.0,)))
    (records,) = simulate(shape)
    throttled: list[Record] = []
    for k, r in enumerate(records):
        if isinstance(r, Sample) and r.source == "nvml":
            slowed = k % 10 < 7
            r = replace(r, values={**r.values, "gpu_clock_event_reasons": 0x20 if slowed else 0,
                                   "gpu_sm_clock_hertz": 1.6e9 if slowed else 2.4e9})
        throttled.append(r)
    found = judge(throttled)
    assert only(found, "throttling").verdict == "fix_here"
    f = only(found, "fits_on_paper")
    assert f.verdict == "move_to_h100" and f.projection is None
    assert "speedup_ratio" not in f.evidence and "runs throttled" in f.summary
    assert only(findings_of(shape), "fits_on_paper").projection is not None  # cool: priced


def test_the_card_the_job_runs_on_is_never_recommended() -> None:
    """An H100 job with real memory pressure: the card named is a bigger one, never H100,
    and the verdict is no ``move_to_h100`` (it is on one)."""
    shape = Shape(step_s=1.0, duration_s=300, gpu=H100, batch_size=16,
                  batch_sizes=((3, 8),), memory=Memory(reserved_gb=78, allocated_gb=40,
                                                       retries_per_min=20))
    f = only(findings_of(shape), "fits_on_paper")
    assert f.verdict == "fix_here"
    assert f.projection is not None and f.projection["target"] != "H100 SXM"
    assert f.projection["current"] == "H100 SXM"
    # the decision the projection records agrees with the finding's verdict
    assert f.projection["decision"]["verdict"] == "fix_here"
    assert f.projection["decision"]["why"] == "already on H100 SXM"


def test_a_batch_finder_at_start_is_one_cut_reported_once() -> None:
    fs = [f for f in findings_of(job("rtx5090_memory_bound_finetune").shape)
          if f.detector == "fits_on_paper"]
    assert len(fs) == 1 and fs[0].state == "active"
    assert (fs[0].evidence["batch_size_from"], fs[0].evidence["batch_size_to"]) == (16, 12)


def test_a_batch_that_shrinks_in_a_run_that_never_ran_out_of_memory_is_no_cut() -> None:
    """A sequence-length curriculum (16 x 1024 tokens, then 8 x 2048) logged without
    tokens (no integration counts them), the caching allocator holding 93% of an RTX
    5090 as it does: no OOM, no retry, so the smaller batch is a schedule. It was a
    "batch cut" and a move, its need scaled back to the old batch."""
    shape = Shape(step_s=1.0, duration_s=300, gpu=RTX_5090, batch_size=16,
                  batch_sizes=((150, 8),), memory=Memory(reserved_gb=29.8, allocated_gb=17))
    assert not [f for f in findings_of(shape) if f.detector == "fits_on_paper"]
    cut = replace(shape, memory=replace(shape.memory, oom_at_s=(140.0,)))
    f = only(findings_of(cut), "fits_on_paper")
    assert (f.evidence["batch_size_from"], f.evidence["batch_size_to"]) == (16, 8)


def test_an_oom_outside_the_window_is_not_a_symptom_now() -> None:
    records: list[Record] = [
        meta(), topology("NVIDIA GeForce RTX 5090", 32 * GB),
        Event(0, START + 10, "oom", {"type": "OutOfMemoryError"}),
        *steps(300, wall=0.5),
        *samples("allocator", 300, {"allocator_reserved_bytes": 31 * GB,
                                    "allocator_allocated_bytes": 16 * GB,
                                    "allocator_alloc_retries_total": 0.0})]
    fs = judge(records)
    assert [f.state for f in fs if f.detector == "fits_on_paper"] in ([], ["resolved"])


@pytest.mark.parametrize("at_s", [1.5, 60.0])
def test_retries_and_an_oom_in_warm_up_are_no_pressure(at_s: float) -> None:
    """A card at 94% whose allocator retried and hit one caught OOM while the job warmed
    up (cudnn.benchmark trying workspace-hungry algorithms, a batch finder): no symptom,
    nothing raised; the same a minute into training is one."""
    held = {"allocator_reserved_bytes": 30 * GB, "allocator_allocated_bytes": 16 * GB}
    records: list[Record] = [
        meta(), topology("NVIDIA GeForce RTX 5090", 32 * GB),
        Event(0, START + at_s, "oom", {"type": "OutOfMemoryError"}),
        *steps(300, wall=0.5),
        *samples("allocator", at_s, {**held, "allocator_alloc_retries_total": 0.0}),
        *samples("allocator", 300 - at_s, {**held, "allocator_alloc_retries_total": 3.0},
                 start=START + at_s)]
    fits = [f for f in judge(records) if f.detector == "fits_on_paper"]
    assert (fits == []) == (at_s < 2.5)  # (warm-up: the first five steps of 0.5 s)


@pytest.mark.parametrize("died", [True, False])
def test_a_job_that_dies_of_an_oom_at_the_limit_is_told_why(died: bool) -> None:
    """A card at 97% for five minutes, then retries and an OOM that leaves the step and
    ends the process: the log ends before any condition could hold for ``for_s``, yet
    the job died of it. An OOM the loop caught, with steps after it, waits as usual."""
    end = START + 300
    held = {"allocator_reserved_bytes": 31 * GB, "allocator_allocated_bytes": 16 * GB}
    records: list[Record] = [
        meta(), topology("NVIDIA GeForce RTX 5090", 32 * GB),
        *steps(299, wall=1.0),  # the last ends at end - 1
        *samples("allocator", 298, {**held, "allocator_alloc_retries_total": 0.0}),
        Sample(0, end - 1.5, "allocator", {**held, "allocator_alloc_retries_total": 2.0}),
        Event(0, end - 0.6 if died else end - 1.4, "oom", {"type": "OutOfMemoryError"}),
        Sample(0, end - 0.5, "allocator", {**held, "allocator_alloc_retries_total": 2.0})]
    fits = [f for f in judge(records) if f.detector == "fits_on_paper"]
    if died:
        assert [(f.state, f.verdict) for f in fits] == [("active", "move_to_h100")]
        assert fits[0].evidence["ooms_total"] == 1
    else:
        assert fits == []


@pytest.mark.parametrize("oom_at_s", [4.6, 34.0])
def test_a_job_that_dies_of_an_oom_in_its_first_steps_is_told_it_does_not_fit(
        oom_at_s: float) -> None:
    """Four steps at 97% of a 32 GB card, then an OOM that ends the process, at once or
    30 s into a long fifth step: too few steps for any window, yet the job cannot run
    here as configured. Said at the log's end, with the memory it reached; no card is
    named, as nothing sized its need."""
    held = {"allocator_reserved_bytes": 31 * GB, "allocator_allocated_bytes": 16 * GB,
            "allocator_alloc_retries_total": 0.0}
    records: list[Record] = [
        meta(), topology("NVIDIA GeForce RTX 5090", 32 * GB), *steps(4, wall=1.0),
        *samples("allocator", oom_at_s - 0.1, held),
        Event(0, START + oom_at_s, "oom", {"type": "OutOfMemoryError"})]
    f = only(judge(records), "fits_on_paper")
    assert (f.state, f.verdict, f.severity) == ("active", "fix_here", "critical")
    assert "died of an out-of-memory error after step 4" in f.summary
    assert "28.9 of 29.8 GiB (97%)" in f.summary and f.projection is None
    assert f.evidence["ooms_total"] == 1 and f.evidence["steps_completed"] == 4


def test_an_oom_after_a_long_healthy_run_is_no_early_death() -> None:
    """3,000 steps at a third of the card, then an OOM in a last evaluation 90 s after
    the last step: the window holds no step, yet the job fit for 3,000 of them."""
    held = {"allocator_reserved_bytes": 11 * GB, "allocator_allocated_bytes": 8 * GB,
            "allocator_alloc_retries_total": 0.0}
    records: list[Record] = [
        meta(), topology("NVIDIA GeForce RTX 5090", 32 * GB), *steps(300, wall=0.1),
        *samples("allocator", 390, held),
        Event(0, START + 390, "oom", {"type": "OutOfMemoryError"})]
    assert [f for f in judge(records) if f.detector == "fits_on_paper"] == []


def test_an_early_oom_the_job_lives_through_is_no_death() -> None:
    """The same OOM caught by the job, which takes 30 s to rebuild its batch (longer than
    any ``for_s``) and steps on: not a death, before or after."""
    held = {"allocator_reserved_bytes": 31 * GB, "allocator_allocated_bytes": 16 * GB,
            "allocator_alloc_retries_total": 0.0}
    records: list[Record] = [
        meta(), topology("NVIDIA GeForce RTX 5090", 32 * GB), *steps(4, wall=1.0),
        *samples("allocator", 40, held),
        Event(0, START + 4.6, "oom", {"type": "OutOfMemoryError"}),
        *steps(6, wall=1.0, start=START + 34, first=5)]
    assert [f for f in judge(records) if f.detector == "fits_on_paper"] == []


def test_one_oom_far_below_the_limit_is_no_reason_to_move() -> None:
    """An A100 80GB holding 30 GB asked once for more than any card holds: the allocator
    retried once, as it does before every OOM it raises, then raised. That retry is the
    OOM's, not a second symptom: with memory far from the limit, nothing to move for."""
    held = {"allocator_reserved_bytes": 30 * GB, "allocator_allocated_bytes": 24 * GB}
    records: list[Record] = [
        meta(), topology("NVIDIA A100-SXM4-80GB", 81920 * 2**20),
        *steps(300, wall=1.0),
        *samples("allocator", 150, {**held, "allocator_alloc_retries_total": 0.0}),
        Event(0, START + 150.5, "oom", {"type": "OutOfMemoryError"}),
        *samples("allocator", 150, {**held, "allocator_alloc_retries_total": 1.0},
                 start=START + 150)]
    assert [f for f in judge(records) if f.detector == "fits_on_paper"] == []


def test_an_oom_that_cut_the_batch_holds_while_the_batch_stays_cut() -> None:
    """OOM at batch 16, then 8 for the rest of the run (an auto batch-size finder): the
    job does not fit as meant for as long as the batch stays cut, not only while the OOM
    is in the window."""
    records: list[Record] = [
        meta(), topology("NVIDIA L40S", 48 * GB),
        Event(0, START + 2, "oom", {"type": "OutOfMemoryError"}),
        Event(0, START + 2.5, "batch_size_changed", {"from": 16, "to": 8}),
        *steps(2.5, wall=1.25, samples=16, tokens=16 * 2048),
        *steps(300, wall=0.7, samples=8, tokens=8 * 2048, start=START + 2.5, first=3),
        *samples("allocator", 300, {"allocator_reserved_bytes": 37 * GB,
                                    "allocator_allocated_bytes": 20 * GB,
                                    "allocator_allocated_peak_bytes": 36 * GB,
                                    "allocator_alloc_retries_total": 0.0})]
    f = only(judge(records), "fits_on_paper")
    assert f.state == "active" and f.evidence["batch_size_from"] == 16
    assert f.evidence["ooms_total"] == 1


# -- findings that hold through evals and saves -------------------------------------------

def changes_of(shape: Shape) -> list[Finding]:
    """Every change a live rank engine reports over the single rank of ``shape``."""
    engine = engine_from_settings(Settings(), "rank")
    changes = engine.feed(simulate(shape)[0])
    return changes + engine.close()


def test_a_bottleneck_holds_through_a_final_eval_no_step_can_refute() -> None:
    """A loader-starved run (45% of each step) ending in a 2-minute eval, as most scripts
    do: the eval's window held no step, the finding resolved, and the report dimmed the
    run's bottleneck as "resolved"."""
    shape = Shape(step_s=1.0, duration_s=720, gpu=RTX_5090, data_share=0.45,
                  workers_cpu=0.97, evals=Evals(every_s=600, seconds=120))
    starved = [f for f in changes_of(shape) if f.detector == "data_starvation"]
    assert [f.state for f in starved] == ["active"]


def test_a_link_bound_job_with_periodic_evals_is_one_finding_from_its_start(
        tmp_path: Path) -> None:
    """8 RTX 5090s, 40% of each 3 s step in a 3 GB all-reduce through host memory, and a
    60 s eval every 5 minutes on every rank: the move was raised and cleared at every
    eval (a Slack post and a "cleared" one each time), its first_seen the last
    episode's; the evals' own finding came and went between them."""
    shape = Shape(step_s=3.0, duration_s=1500, world=8, gpu=RTX_5090, collective_share=0.4,
                  collective_bytes=int(3e9), memory=Memory(26, 14),
                  evals=Evals(every_s=300, seconds=60))
    found = analyze(write(shape, tmp_path), Settings()).findings
    sync = only(found, "sync_bottleneck")
    assert sync.verdict == "move_to_h100" and sync.state == "active"
    assert sync.first_seen < SIM_START + 120
    evals = [f for f in found if f.detector == "interruptions"]
    assert len(evals) == 8 and {f.state for f in evals} == {"active"}


@pytest.mark.parametrize("starved", [False, True])
def test_a_link_bound_job_whose_ranks_wait_on_their_loaders_is_not_moved(
        tmp_path: Path, starved: bool) -> None:
    """4 RTX 5090s without P2P, 30% of each 2 s step in a 1.2 GB all-reduce through host
    memory; starved, every rank also waits 40% of each step on CPU-bound loader
    workers. The job-scope judgement knew nothing of the ranks' starvation: it moved the
    job (2x) while every rank's own time to finish said 1.0x."""
    shape = Shape(step_s=2.0, duration_s=300, world=4, gpu=RTX_5090, collective_share=0.3,
                  data_share=0.4 if starved else 0.0, workers=3, workers_cpu=0.97,
                  collective_bytes=int(1.2e9), memory=Memory(18, 10), total_steps=400_000)
    sync = only(analyze(write(shape, tmp_path), Settings()).findings, "sync_bottleneck")
    assert sync.projection is not None
    assumptions = " ".join(sync.projection["assumptions"])
    if not starved:
        assert sync.verdict == "move_to_h100" and "data loader" not in assumptions
        return
    assert sync.verdict == "fix_here" and "waits on its data loader" in assumptions
    assert sync.evidence["speedup_ratio"] < 1.1


def test_a_save_right_after_the_first_step_is_not_counted_twice() -> None:
    """A seed checkpoint after step 1, then one every 21.5 minutes (90 s each: 7% of
    the run): n saves over the n-1 cycles since the first read 10-13%, past the 10%
    threshold after every save. Over whole cycles (from the third checkpoint: the
    saves after the first, from its end to the newest's) it is 7%."""
    records: list[Record] = [meta()]
    t, n, saved = START, 0, []
    while t < START + 9000:
        n += 1
        t += 1.0
        records.append(Step(rank=0, step=n, t=t, wall_s=1.0, compute_s=0.95, data_s=0.05,
                            samples=8))
        if n == 1 or (t - START) % 1290 < 1.0:
            t += 90.0
            saved.append(t)
            records.append(Event(0, t, "checkpoint_save", {"seconds": 90.0, "bytes": 3e10}))
    view = Telemetry(0)
    shares = []
    for r in records:
        view.add_one(r)
        if isinstance(r, Step) and r.step % 500 == 0 and view.saves.checkpoints >= 3:
            shares.append(view.save_share(r.t))
    assert shares and all(abs(x - 90 / 1290) < 0.01 for x in shares)
    assert not [f for f in judge(records) if f.detector == "checkpoint_overhead"]


def test_blocking_saves_at_a_steady_share_are_one_finding() -> None:
    """40 s saves every 5 minutes (start to start: 13% of the run): read up to each
    moment, the share rose past 10% at each save and fell below it before the next,
    and the finding came and went. Read over whole cycles it holds, at the share the
    saves cost."""
    shape = Shape(step_s=1.0, duration_s=1500, saves=Saves(every_s=300, blocking_s=40))
    saves = [f for f in changes_of(shape) if f.detector == "checkpoint_overhead"]
    assert [f.state for f in saves] == ["active"]
    assert saves[0].evidence["checkpoint_share_ratio"] == pytest.approx(40 / 300, abs=0.01)


# -- iteration_speed and underutilised ---------------------------------------------------

def test_one_recompile_is_not_spread_over_the_steps_to_come() -> None:
    """0.4 s steps with 20 h to go on a 5090 and one 150 s recompile 30 s in (a new
    shape), a 10-minute log: one event, not a quarter of every step to come; 20 h is
    under ``min_remaining_hours``, so nothing. Two stalls of the same kind recur:
    they are spread (time to finish grows by their share)."""
    once = Shape(step_s=0.4, duration_s=600, gpu=RTX_5090, total_steps=180_000,
                 recompile_at_s=30, recompile_s=150, memory=Memory(20, 10))
    assert [f for f in findings_of(once) if f.detector == "iteration_speed"] == []
    twice = replace(once, total_steps=360_000, recompile_at_s=None,
                    epoch_every_s=200, epoch_restart_s=75)
    f = only(findings_of(twice), "iteration_speed")
    assert f.evidence["step_seconds"] > 0.4 * 1.2  # (two restarts: 150 s of 600)


def test_time_to_finish_moves_to_the_card_that_holds_the_job_memory_says_it_needs() -> None:
    """An A100 80GB at 79 GB with allocator retries and 27 h to go: fits_on_paper sends
    it to an H200 (an 80 GB H100 holds no more than the card it is short of); the time
    to finish must be told for that card too, not for an H100 the same report says
    cannot hold it."""
    a100 = ("NVIDIA A100-SXM4-80GB", 80.0, 12, 400.0)
    shape = Shape(step_s=1.0, duration_s=600, gpu=a100, total_steps=100_000,
                  memory=Memory(79, 60, retries_per_min=8), utilization=0.9)
    found = {f.detector: f for f in findings_of(shape)}
    fits, speed = found["fits_on_paper"], found["iteration_speed"]
    assert fits.projection is not None and speed.projection is not None
    assert fits.projection["target"] == speed.projection["target"] == "H200"
    assert "fit there with room" in fits.action and "workarounds" not in fits.action
    # one move per report: memory's (the time to finish is told, but moves nothing)
    assert (fits.verdict, speed.verdict) == ("move_to_h100", "info")
    assert "Memory decides" in speed.action


def test_time_to_finish_on_launch_bound_kernels_is_told_as_a_range() -> None:
    """An L4 busy 90% of the time at a third of its power: small kernels bound by their
    launches, which a faster card barely shortens. The time there is no single
    figure from the middle of the projection (18 h for 83 h here) but its range."""
    shape = Shape(step_s=0.15, duration_s=200, gpu=("NVIDIA L4", 24.0, 0, 72.0),
                  utilization=0.9, total_steps=2_000_000, memory=Memory(10, 6))
    records = [replace(r, values={**r.values, "gpu_power_watts": 25.0})
               if isinstance(r, Sample) and r.source == "nvml" else r
               for r in simulate(shape)[0]]
    f = only(judge(records), "iteration_speed")
    there = re.search(r"here, ([\d.]+)\u2013([\d.]+) h on one", f.summary)
    assert there is not None, f.summary  # "18.2 to 79.8 h on one H100 SXM", dashed
    assert float(there[2]) > 2 * float(there[1])


def test_evaluations_spread_over_the_run_are_gpu_work_a_faster_card_shortens() -> None:
    """15 s of evaluation every minute: a window of training steps leaves them out, the
    time to finish pays for them, and as forward passes on the GPU they are projected
    as compute (they were kept as measured, 'on any card')."""
    shape = Shape(step_s=1.0, duration_s=900, gpu=RTX_5090, total_steps=400_000,
                  evals=Evals(every_s=60, seconds=15), memory=Memory(20, 10))
    f = only(findings_of(shape), "iteration_speed")
    assert f.projection is not None
    now = f.projection["parts_seconds_now"]
    assert now["other"] == 0 and now["compute"] > 1.1  # (1 s steps, +20% of evaluation)


def test_time_to_finish_pays_for_the_run_s_blocking_saves() -> None:
    """Saves are interruptions a window of typical steps leaves out, yet a week-long run
    pays for each: the time left here and on the target both carry the run-long share
    (a fifth of the time here), and the move is judged on what is left to gain."""
    shape = Shape(step_s=0.8, duration_s=1500, gpu=RTX_5090, total_steps=1_000_000,
                  memory=Memory(24, 12), saves=Saves(every_s=300, blocking_s=75))
    f = only(findings_of(shape), "iteration_speed")
    c = only(findings_of(shape), "checkpoint_overhead")
    share = c.evidence["checkpoint_share_ratio"]
    step = f.evidence["step_seconds"]
    assert abs(step - 0.8 / (1 - share)) < 0.05 * step  # saves spread over the steps
    assert f.projection is not None
    parts = f.projection["parts_seconds_now"]
    assert parts["checkpoint"] == f.projection["parts_seconds_projected"]["checkpoint"] > 0
    without = only(findings_of(replace(shape, saves=None)), "iteration_speed")
    assert without.projection is not None
    assert f.projection["speedup_low_ratio"] < without.projection["speedup_low_ratio"]
    assert f.evidence["remaining_hours_now"] > 1.15 * without.evidence["remaining_hours_now"]


def test_a_move_says_its_card_for_card_time_before_the_scale_out() -> None:
    """The gate counts the card's own gain (a scale-out is open on either card): so does
    the advice, the scaled-out time after it."""
    f = only(findings_of(job("rtx5090_week_long_plan").shape), "iteration_speed")
    assert f.verdict == "move_to_h100"
    assert "on one GPU as now" in f.action and "scaled out" in f.action


def test_a_long_run_is_projected_onto_a_card_that_holds_its_memory() -> None:
    """88 GB on a 96 GB card would not load on an 80 GB H100: the projection and the
    advice are for the first bigger card that holds it."""
    pro6000 = ("NVIDIA RTX PRO 6000 Blackwell Server Edition", 96.0, 0, 600.0)
    shape = Shape(step_s=1.5, duration_s=300, gpu=pro6000, total_steps=500_000,
                  memory=Memory(reserved_gb=88, allocated_gb=62))
    f = only(findings_of(shape), "iteration_speed")
    assert f.projection is not None and f.projection["target"] == "H200"
    assert "H200" in f.action and "H100" not in f.action
    small = only(findings_of(replace(shape, memory=Memory(reserved_gb=60, allocated_gb=40))),
                 "iteration_speed")
    assert small.projection is not None and small.projection["target"] == "H100 SXM"


def test_a_card_not_known_projects_no_time_on_another() -> None:
    """No NVML and no gpu_model: the time here is all that is known; the summary said the
    same hours "on one H100 SXM" (compute not scaled). A card outside the catalogue with
    its memory at the limit still moves for memory, its speed there not claimed."""
    f = only(judge([meta(), Event(0, START, "total_steps", {"steps": 2_000_000}),
                    *steps(300, wall=0.4)]), "iteration_speed")
    assert f.verdict == "info" and "H100" not in f.summary and "not seen" in f.summary
    assert f.projection is None
    t4 = [meta(), topology("Tesla T4", 16 * GB),
          *steps(300, wall=1.2),
          *samples("allocator", 300, {"allocator_reserved_bytes": 15.6 * GB,
                                      "allocator_allocated_bytes": 8 * GB},
                   ramp={"allocator_alloc_retries_total": 0.1})]
    fits = only(judge(t4), "fits_on_paper")
    assert "Tesla T4 is not in gpuwatch's catalogue" in fits.summary
    assert "projected 1.0" not in fits.summary
    assert fits.projection is None and "speedup_ratio" not in fits.evidence


def test_a_long_run_already_on_the_target_is_information_not_a_move() -> None:
    f = only(findings_of(Shape(step_s=1.0, duration_s=200, total_steps=1_000_000)),
             "iteration_speed")
    assert f.verdict == "info" and "already runs on H100 SXM" in f.action
    # (its time said once: "277.6 h here, 277.6 h on 8 H200" said it twice)
    assert "on one H100 SXM, the card it runs on, " in f.summary and " here" not in f.summary


def test_the_card_nvml_names_beats_a_gpu_model_left_in_the_config() -> None:
    """``gpu_model`` is for when NVML cannot say: one left from a workstation (RTX 5090)
    made a job NVML reads as an H100 move to an H100. Where NVML names no card, it
    still names the card."""
    shape = Shape(step_s=1.0, duration_s=200, total_steps=1_000_000)
    f = only(findings_of(shape, gpu_model="RTX 5090"), "iteration_speed")
    assert f.verdict == "info" and "already runs on H100 SXM" in f.action
    assert f.projection is not None and f.projection["current"] == "H100 SXM"
    unseen = [r for r in itertools.chain.from_iterable(simulate(shape))
              if not (isinstance(r, Event) and r.name == "topology")
              and not isinstance(r, Sample)]
    f = only(judge(unseen, gpu_model="RTX 5090"), "iteration_speed")
    assert f.projection is not None and f.projection["current"] == "RTX 5090"


def test_a_job_level_finding_explains_low_utilisation_on_every_rank(tmp_path: Path) -> None:
    shape = job("slow_rank_of_four").shape
    found = analyze(write(shape, tmp_path), Settings()).findings
    assert {f.detector for f in found} == {"straggler"}
    # the job engine's findings reach the rank engines: with the rank-local explanation
    # (waiting in collectives) switched off, the straggler finding alone keeps them quiet
    quiet = {"underutilised": {"collective_share": 1.0}}
    found = analyze(write(shape, tmp_path / "b"), Settings(detectors=quiet)).findings
    assert {f.detector for f in found} == {"straggler"}
    one = write(shape, tmp_path / "one")[:1]  # rank 0 alone: nothing explains it
    assert {f.detector for f in analyze(one, Settings(detectors=quiet)).findings} == {
        "underutilised"}


def test_a_rank_waiting_for_its_peers_is_explained_without_the_job_view(tmp_path: Path) -> None:
    """Rank 0's log alone (as a live rank other than 0 judges): its collective wait
    explains its idle GPU."""
    one = write(job("slow_rank_of_four").shape, tmp_path)[:1]
    assert analyze(one, Settings()).findings == []


def test_ranks_waiting_for_a_straggler_are_projected_at_its_pace(tmp_path: Path) -> None:
    """Four GeForce cards without P2P, rank 3 starved by its loader: the others' long
    collective wait is waiting for it, not transfer through host memory. Projected alone,
    a waiting rank would move that wait away on H100; with the straggler named it goes at
    the straggler's pace: no rank's time to finish says move."""
    shape = Shape(step_s=1.0, duration_s=1500, world=4, gpu=RTX_5090, slow_rank=3,
                  slow_data_share=0.5, collective_share=0.02, collective_bytes=int(0.5e9),
                  total_steps=1_000_000)
    found = analyze(write(shape, tmp_path), Settings()).findings
    assert only(found, "straggler").ranks == [3]
    speeds = [f for f in found if f.detector == "iteration_speed"]
    assert speeds and all(f.verdict != "move_to_h100" for f in speeds)
    waiting = [f for f in speeds if 0 in f.ranks]
    assert waiting and waiting[0].projection is not None
    assert waiting[0].projection["speedup_ratio"] < 1.1
    one = analyze(write(shape, tmp_path / "one")[:1], Settings()).findings
    assert only(one, "iteration_speed").verdict == "move_to_h100"  # alone, it cannot know


def test_a_straggler_s_own_slowness_is_no_reason_to_move(tmp_path: Path) -> None:
    """Rank 2 of four L40S computes 1.7x as long as the others (throttled, say): its own
    projection would count the fault as compute a faster card shortens. While a straggler
    holds the job, its time to finish (rank 0's) says no move: fix it first."""
    shape = Shape(step_s=1.0, duration_s=1500, world=4, gpu=L40S, slow_rank=2,
                  slow_factor=1.7, collective_share=0.03, total_steps=1_000_000)
    found = analyze(write(shape, tmp_path), Settings()).findings
    assert only(found, "straggler").ranks == [2]
    speeds = [f for f in found if f.detector == "iteration_speed"]
    assert [f.ranks for f in speeds] == [[0]]
    assert all(f.verdict != "move_to_h100" for f in speeds)
    assert all("straggler" in (f.projection or {})["decision"]["why"]
               for f in speeds)


def test_a_transfer_bound_job_keeps_its_sync_finding_beside_a_worse_straggler(
        tmp_path: Path) -> None:
    """Eight GeForce cards moving 3 GB a step through host memory, rank 5 starved by its
    loader: the transfer alone is 30% of the step, over the threshold. The sync finding
    went away exactly when the straggler got worse than the transfer; it stays, with
    the transfer's share (the straggler's finding has the waiting for it)."""
    shape = Shape(step_s=3.0, duration_s=300, world=8, gpu=RTX_5090, collective_share=0.30,
                  collective_bytes=int(3e9), slow_rank=5, slow_data_share=0.40,
                  memory=Memory(26, 14))
    found = analyze(write(shape, tmp_path), Settings()).findings
    assert only(found, "straggler").ranks == [5]
    sync = only(found, "sync_bottleneck")
    assert sync.evidence["collective_share_ratio"] == pytest.approx(0.30, abs=0.03)
    assert sync.evidence["collective_share_ratio"] == pytest.approx(
        sync.evidence["transfer_seconds_per_step"] / 3.0, rel=0.05)
    assert sync.evidence["skew_seconds_per_step"] > sync.evidence["transfer_seconds_per_step"]


def test_a_move_for_memory_that_would_run_no_faster_says_so(tmp_path: Path) -> None:
    """Four cards at their memory limit, rank 2 a straggler: the waiting ranks' move
    read "the step is projected 1.0x faster" beside the straggler's 2.1x. A move that
    gains no speed is told as one for memory, held back by the slower rank."""
    shape = Shape(step_s=1.5, duration_s=300, world=4, gpu=L40S, collective_share=0.05,
                  collective_bytes=int(1e9), slow_rank=2, slow_factor=1.5,
                  memory=Memory(reserved_gb=47.3, allocated_gb=30, retries_per_min=10))
    found = analyze(write(shape, tmp_path), Settings()).findings
    assert only(found, "straggler").ranks == [2]
    waiting = [f for f in found if f.detector == "fits_on_paper" and f.ranks != [2]]
    assert waiting and all(f.verdict == "move_to_h100" for f in waiting)
    for f in waiting:
        assert "1.0\u00d7" not in f.summary and "no faster there while a slower rank holds it" in (
            f.summary), f.summary


@pytest.mark.parametrize(("gigabytes", "bulk"), [(6.0, True), (0.05, False)])
def test_a_slow_wait_for_gigabytes_is_not_blamed_on_small_collectives(
        tmp_path: Path, gigabytes: float, bulk: bool) -> None:
    """PCIe cards moving 6 GB a step at a quarter of the link's rating: the advice led with
    "latency (many small collectives)", which gigabytes a step are not; it names the path
    (a shared switch, crossing CPU sockets). 50 MB a step keeps latency first."""
    shape = Shape(step_s=2.0, duration_s=300, world=4, gpu=("NVIDIA A100-PCIE-40GB", 40.0, 0,
                                                            250.0),
                  collective_share=0.35, collective_bytes=int(gigabytes * 1e9),
                  memory=Memory(30, 18))
    f = only(analyze(write(shape, tmp_path), Settings()).findings, "sync_bottleneck")
    assert "not the link's bandwidth" in f.summary
    assert ("crossing CPU sockets" in f.action) is bulk
    assert ("many small collectives" in f.action) is not bulk


def test_a_pipeline_bubble_s_evidence_gives_the_seconds_its_words_do(tmp_path: Path) -> None:
    """A bubble on cards without P2P said its sends take "at most 0.025 s" while its
    evidence gave the path of a ring sharing host memory (0.1 s, and 1.5 s beside a
    0.19 s claim at 3 GB a step): the evidence is the figure the verdict was judged by."""
    sync = only(analyze(write(job("pipeline_bubble_no_p2p").shape, tmp_path), Settings())
                .findings, "sync_bottleneck")
    assert "bubble" in sync.summary and "staged_bytes_per_second" not in sync.evidence
    said = float(re.search(r"at most ([\d.]+) s", sync.summary)[1])  # type: ignore[index]
    assert sync.evidence["link_seconds_per_step"] == pytest.approx(said, rel=0.05)


def test_nvlink_down_on_sxm_cards_is_a_fault_to_fix_not_a_move(tmp_path: Path) -> None:
    """Eight SXM cards whose NVLink links all read down (the fabric manager not running):
    the collectives crawl over PCIe. On H100s and on A100s alike the fix is the links,
    named as such; no projection moves the job for them. The same cards with NVLink up
    are no such finding."""
    down = {"H100": ("NVIDIA H100 80GB HBM3", 80.0, 0, 700.0),
            "A100": ("NVIDIA A100-SXM4-80GB", 80.0, 0, 400.0)}
    for name, gpu in down.items():
        shape = Shape(step_s=2.0, duration_s=600, world=8, gpu=gpu, collective_share=0.4,
                      collective_bytes=int(26e9), total_steps=500_000)
        found = analyze(write(shape, tmp_path / name), Settings()).findings
        sync = only(found, "sync_bottleneck")
        assert sync.verdict == "fix_here" and "NVLink reads down" in sync.summary, name
        assert "nvidia-fabricmanager" in sync.action
        assert all(f.verdict != "move_to_h100" for f in found), name
    up = replace(shape, gpu=H100)
    found = analyze(write(up, tmp_path / "up"), Settings()).findings
    assert all("reads down" not in f.summary for f in found)
    # one GPU's links down (its P2P map without NVLink to the others): the same fault
    one = tmp_path / "one"
    one.mkdir()
    for rank, records in enumerate(simulate(up)):
        log = RunLogWriter(one / f"run-rank{rank}.jsonl")
        log.write([_one_link_down(r, 3) for r in records])
        log.close()
    found = analyze(sorted(one.glob("run-rank*.jsonl")), Settings()).findings
    sync = only(found, "sync_bottleneck")
    assert sync.verdict == "fix_here" and "NVLink reads down" in sync.summary
    assert all(f.verdict != "move_to_h100" for f in found)


def _one_link_down(record: Record, gpu: int) -> Record:
    """``record`` with GPU ``gpu``'s NVLink down in a topology event."""
    if not (isinstance(record, Event) and record.name == "topology"):
        return record
    data = dict(record.data)
    data["devices"] = [{**d, "nvlink_links_active": 0} if d["index"] == gpu else d
                       for d in data["devices"]]
    data["p2p"] = [{**p, "nvlink": False} if gpu in p["gpus"] else p for p in data["p2p"]]
    return replace(record, data=data)


THERMAL = 0x20 | 0x40  # NVML's software and hardware thermal slowdown bits
POWER_CAP = 0x4


@pytest.mark.parametrize(("reasons", "raised"), [(THERMAL, True), (POWER_CAP, False),
                                                 (0, False)])
def test_a_gpu_held_below_its_clocks_by_heat_is_fixed_here_and_moves_nothing(
        reasons: int, raised: bool) -> None:
    """An L40S too hot to hold its clocks (1.1 of 2.5 GHz) for the whole run, its time
    to finish planned: the fault is the machine's, and a projection from the throttled
    card would overstate any move. At the power cap it runs as designed: no finding."""
    nvml = {"gpu_utilization_ratio": 0.97, "gpu_clock_event_reasons": float(reasons),
            "gpu_sm_clock_hertz": 1.1e9 if reasons == THERMAL else 2.5e9,
            "gpu_temperature_celsius": 91.0 if reasons == THERMAL else 70.0}
    records: list[Record] = [
        meta(), topology("NVIDIA L40S", 48 * GB),
        Event(0, START, "total_steps", {"steps": 2_000_000}),
        *steps(300, wall=1.0, tokens=32 * 2048),
        *samples("nvml", 300, nvml, gpu=0)]
    found = judge(records)
    throttled = [f for f in found if f.detector == "throttling"]
    if not raised:
        assert throttled == []
        return
    f = only(found, "throttling")
    assert f.verdict == "fix_here" and "thermal slowdown" in f.summary
    assert f.evidence["throttled_share_ratio"] == 1.0
    assert f.evidence["sm_clock_throttled_hertz"] == 1.1e9
    speed = only(found, "iteration_speed")
    assert speed.verdict != "move_to_h100" and speed.projection is not None
    assert "throttled" in speed.projection["decision"]["why"]


@pytest.mark.parametrize("every", [1.0, 10.0])
def test_a_throttled_gpu_sampled_seldom_is_still_seen(every: float) -> None:
    """NVML read every 10 s (``sample_interval_s``): the minute's window held 6 busy
    readings, short of the 10 judged, so the hot card went unseen and its time to
    finish moved the job."""
    nvml = {"gpu_utilization_ratio": 0.97, "gpu_clock_event_reasons": float(THERMAL),
            "gpu_sm_clock_hertz": 1.1e9, "gpu_temperature_celsius": 91.0}
    records: list[Record] = [
        meta(), topology("NVIDIA L40S", 48 * GB),
        Event(0, START, "total_steps", {"steps": 2_000_000}),
        *steps(300, wall=1.0, tokens=32 * 2048),
        *samples("nvml", 300, nvml, gpu=0, every=every)]
    found = judge(records)
    assert only(found, "throttling").evidence["throttled_share_ratio"] == 1.0
    assert only(found, "iteration_speed").verdict != "move_to_h100"


def test_throttling_that_comes_and_goes_or_hits_one_gpu_of_several_is_held() -> None:
    """Heat that slows the card 20 s of every 40 (half the busy time), and one GPU of two
    a process drives that is slowed all along: judged over the window per GPU, the
    finding holds to the end and the time to finish moves nothing meanwhile. A clock
    that loses under a tenth to the bit is no throttling."""
    def nvml(t: float, gpu: int, slowed: bool, clock: float = 1.5e9) -> Sample:
        return Sample(0, START + t, "nvml", {
            "gpu_utilization_ratio": 0.97, "gpu_clock_event_reasons": float(THERMAL * slowed),
            "gpu_sm_clock_hertz": clock if slowed else 2.5e9}, gpu=gpu)

    base: list[Record] = [meta(), topology("NVIDIA L40S", 48 * GB, gpus=2),
                          Event(0, START, "total_steps", {"steps": 2_000_000}),
                          *steps(600, wall=1.0, tokens=32 * 2048)]
    cases = {"intermittent": [nvml(t, 0, (t // 20) % 2 == 0) for t in range(1, 601)],
             "one of two": [nvml(t, g, g == 1) for t in range(1, 601) for g in (0, 1)],
             "in name only": [nvml(t, 0, (t // 20) % 2 == 0, clock=2.4e9)
                              for t in range(1, 601)]}
    for name, readings in cases.items():
        found = judge([*base, *readings])
        throttled = [f for f in found if f.detector == "throttling"]
        if name == "in name only":
            assert throttled == [], name
            continue
        assert [f.state for f in throttled] == ["active"], name
        assert only(found, "iteration_speed").verdict != "move_to_h100", name


def test_progress_records_alone_keep_a_long_eval_from_being_a_hang() -> None:
    """A CPU-side eval (generation on the host, say): GPU idle, yet its batches are logged
    as progress, so no hang; without them the same quiet stretch would be one."""
    shape = Shape(step_s=1.0, duration_s=500, evals=Evals(every_s=100, seconds=240))
    records = simulate(shape)[0]
    idle = [_idle(r) for r in records]
    assert [f for f in judge(idle) if f.detector == "hang"] == []
    silent = [r for r in idle if not (isinstance(r, Event) and r.name == "progress")]
    assert only(judge(silent), "hang").severity == "critical"


def _idle(r: Record) -> Record:
    """The record with the GPU idle and the CPU quiet during evals (the process's and its
    loader workers')."""
    if isinstance(r, Sample) and r.source == "nvml" and r.values["gpu_utilization_ratio"] == 0.85:
        return Sample(r.rank, r.t, r.source, {**r.values, "gpu_utilization_ratio": 0.0,
                                              "gpu_power_watts": 60.0}, gpu=r.gpu)
    if isinstance(r, Sample) and r.source == "host" and r.values["process_cpu_cores"] == 1.0:
        return Sample(r.rank, r.t, r.source, {**r.values, "process_cpu_cores": 0.05,
                                              "workers_cpu_ratio": 0.02})
    return r


def test_training_batch_cuts_follow_the_size_that_trained() -> None:
    from gpuwatch.telemetry import TrainingBatch

    finder = TrainingBatch()
    for step, (a, b) in enumerate([(4, 8), (8, 16), (16, 12)], start=1):
        finder.change(a, b, float(step), steps=step)
    assert finder.cut == (16, 12)
    eval_flips = TrainingBatch()
    for k in range(4):  # train 16 for 40 steps, eval 64 between two steps, back to 16
        eval_flips.change(16, 64, 0.0, steps=40 * (k + 1))
        eval_flips.change(64, 16, 0.0, steps=40 * (k + 1))
    assert eval_flips.cut is None
    restored = TrainingBatch()
    restored.change(32, 24, 1.0, steps=100)
    assert restored.cut == (32, 24)
    restored.change(24, 32, 2.0, steps=200)  # back up: the cut is over
    assert restored.cut is None


def test_a_job_of_several_ranks_has_one_time_to_finish(tmp_path: Path) -> None:
    """Four ranks with days to go: every rank's engine told its own time to finish, four
    findings with numbers a little apart (the report showed them all). The ranks step
    together, so rank 0's is the job's."""
    shape = Shape(step_s=2.0, duration_s=300, world=4, gpu=RTX_5090, collective_share=0.05,
                  memory=Memory(18, 10), total_steps=400_000)
    logs = write(shape, tmp_path)
    for workers in (1, 2):
        found = [f for f in analyze(logs, Settings(), workers=workers).findings
                 if f.detector == "iteration_speed"]
        assert [f.ranks for f in found] == [[0]]
        # without rank 0's log (lost, or one node's analysed alone): the lowest rank's
        found = [f for f in analyze(logs[2:], Settings(), workers=workers).findings
                 if f.detector == "iteration_speed"]
        assert [f.ranks for f in found] == [[2]]
