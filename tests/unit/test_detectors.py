"""Every detector on constructed windows: it fires on its condition, with the right
verdict and evidence, and stays silent on healthy runs and on its look-alikes."""

from __future__ import annotations

from dataclasses import replace

import pytest

from gpuwatch.config import Settings
from gpuwatch.detection.engine import engine_from_settings
from gpuwatch.detection.hang import working_off_step
from gpuwatch.records import Event, Meta, Record, Sample, Step
from gpuwatch.telemetry import Telemetry
from tests.runs import GB, START, judge, meta, only, samples, steps, topology

HEALTHY_GPU = {"gpu_utilization_ratio": 0.93, "gpu_memory_used_bytes": 40 * GB,
               "gpu_memory_total_bytes": 80 * GB, "gpu_clock_event_reasons": 0.0}
HOST = {"workers": 4.0, "workers_cpu_ratio": 0.35, "process_cpu_cores": 1.2}


def healthy(rank: int = 0, world: int = 1, seconds: float = 120) -> list[Record]:
    return [meta(rank, world), topology("NVIDIA H100 80GB HBM3", 80 * GB, nvlinks=18, rank=rank),
            *steps(seconds, rank=rank, data_s=0.004, optimizer_s=0.01, collective_s=0.005,
                   collective_bytes=int(50e6)),
            *samples("nvml", seconds, HEALTHY_GPU, rank=rank, gpu=0),
            *samples("host", seconds, HOST, rank=rank),
            *samples("allocator", seconds, {"allocator_reserved_bytes": 42 * GB,
                                            "allocator_alloc_retries_total": 0.0}, rank=rank)]


def test_a_healthy_run_has_no_findings_at_all() -> None:
    assert judge(healthy()) == []
    ranks = [r for rank in range(3) for r in healthy(rank, world=3)]
    assert judge(ranks, scope="job") == []
    assert judge(ranks) == []


# -- data_starvation ---------------------------------------------------------------------

def test_data_starvation_with_busy_workers_is_fixed_here() -> None:
    records = [meta(), *steps(30, data_s=0.06),
               *samples("host", 30, {"workers": 4.0, "workers_cpu_ratio": 0.97})]
    f = only(judge(records), "data_starvation")
    assert f.verdict == "fix_here" and f.ranks == [0]
    assert abs(f.evidence["data_share_ratio"] - 0.6) < 1e-6
    assert f.evidence["workers_cpu_ratio"] > 0.9
    assert "CPU-bound" in f.summary and "A faster GPU would only wait longer" in f.action


def test_a_worker_busy_most_of_its_time_is_computing_not_waiting_on_storage() -> None:
    """One worker busy 78% of its core on a 2-core host 87% busy (the training process
    takes the rest): under the saturated share, it was called "mostly idle: storage or
    prefetch is the limit". Busy most of its time, it is computing: cheaper transforms
    or more workers."""
    records = [meta(), *steps(30, data_s=0.05),
               *samples("host", 30, {"workers": 1.0, "workers_cpu_ratio": 0.78,
                                     "system_cpu_ratio": 0.87})]
    f = only(judge(records), "data_starvation")
    assert "its 1 DataLoader worker is mostly computing (78% busy)" in f.summary
    assert "storage" not in f.summary and "transforms cheaper" in f.action


def trained_between_evaluations(cycles: int, train_s: float, wall: float, data_s: float,
                                eval_s: float) -> list[Record]:
    """A rank's meta line, then ``cycles`` bursts of ``train_s`` of steps of ``wall``
    seconds waiting ``data_s`` each, every burst followed by an evaluation: one step of
    ``eval_s``, all compute."""
    records: list[Record] = [meta()]
    start, first = START, 1
    for _ in range(cycles):
        records += steps(train_s, wall=wall, start=start, first=first, data_s=data_s)
        first += round(train_s / wall)
        start += train_s + eval_s
        records.append(Step(rank=0, step=first, t=start, wall_s=eval_s, compute_s=eval_s,
                            samples=32))
        first += 1
    return records


def test_a_loader_idle_through_evaluations_is_judged_by_its_training_steps() -> None:
    """Bursts of 10 s of training whose one worker saturates its core, each followed by
    a 20 s evaluation while the worker sits idle with its prefetch full: averaged over
    every host reading, it read 33% busy ("mostly idle: storage or prefetch is the
    limit"). The readings of the steps judged leave the evaluations out: CPU-bound."""
    records = trained_between_evaluations(5, train_s=10, wall=0.1, data_s=0.06, eval_s=20)
    records += [Sample(0, START + k, "host", {"workers": 1.0, "workers_cpu_ratio":
                                              1.0 if 0 < k % 30 <= 10 else 0.0,
                                              "system_cpu_ratio": 0.6})
                for k in range(1, 151)]
    f = only(judge(records), "data_starvation")  # (judged last at the end: an evaluation)
    assert f.evidence["workers_cpu_ratio"] > 0.9
    assert "its 1 DataLoader worker is CPU-bound" in f.summary


def test_a_loader_never_read_while_it_trained_is_not_told_idle() -> None:
    """Bursts of 0.5 s of training between 4 s evaluations, host readings once a second:
    none falls in training, and the evaluations' readings (the worker idle, its prefetch
    full) told "mostly idle: storage or prefetch is the limit" of an in-memory dataset.
    Its CPU is not known: the loader is to be checked, storage no likelier than CPU."""
    records = trained_between_evaluations(40, train_s=0.5, wall=0.01, data_s=0.006, eval_s=4.0)
    records += [Sample(0, START + k + 0.9, "host", {"workers": 1.0, "workers_cpu_ratio": 0.02,
                                                    "system_cpu_ratio": 0.5})
                for k in range(180) if (k + 0.9) % 4.5 > 1.5]
    f = only(judge(records), "data_starvation")
    assert "its 1 DataLoader worker was not read while it trained" in f.summary
    assert "storage" not in f.summary.split(";")[1] and "Check the loader" in f.action


def test_a_loader_whose_stalls_are_the_rhythm_is_judged_with_them() -> None:
    """A loader stalling on storage every eighth step (7 steps of 1 s, then one of 5 s
    waiting for data): the stalls are the job's rhythm and make its data share, and its
    workers idle through them, 60% busy between. Leaving the stalls' readings out, as
    an evaluation's are, it read "mostly computing (60% busy)": the wrong fix."""
    records: list[Record] = [meta()]
    t, n = START, 1
    for _ in range(40):
        for _ in range(7):
            t += 1.0
            records.append(Step(rank=0, step=n, t=t, wall_s=1.0, data_s=0.1, compute_s=0.9,
                                samples=32))
            n += 1
        t += 5.0
        records.append(Step(rank=0, step=n, t=t, wall_s=5.0, data_s=4.9, compute_s=0.1,
                            samples=32))
        n += 1
    records += [Sample(0, START + k, "host", {
        "workers": 2.0, "workers_cpu_ratio": 0.6 if 0 < k % 12 <= 7 else 0.02,
        "system_cpu_ratio": 0.4}) for k in range(1, int(t - START) + 1)]
    f = only(judge(records), "data_starvation")
    assert "mostly idle: storage or prefetch is the limit" in f.summary


@pytest.mark.parametrize("host_busy, workers_busy", [(1.0, 0.26), (0.4, 0.26), (0.97, 0.01)])
def test_idle_looking_workers_on_a_saturated_host_wait_for_a_core(
        host_busy: float, workers_busy: float) -> None:
    """Four workers busy-looping on transforms on a 2-core host: each is busy 26% of a
    core because it waits for one, and they were called "mostly idle: storage or
    prefetch is the limit". With the host's CPUs saturated they wait for a core; with
    cores to spare, or at 1% on a host other jobs fill (blocked on I/O), the idle
    workers do point at storage."""
    records = [meta(), *steps(30, data_s=0.05),
               *samples("host", 30, {"workers": 4.0, "workers_cpu_ratio": workers_busy,
                                     "system_cpu_ratio": host_busy})]
    f = only(judge(records), "data_starvation")
    assert f.evidence["host_cpu_ratio"] == pytest.approx(host_busy)
    if host_busy > 0.9 and workers_busy > 0.2:
        assert "wait for a core" in f.summary and "storage" not in f.summary
        assert "transforms cheaper" in f.action
    else:
        assert "storage or prefetch is the limit" in f.summary


def test_a_starved_step_goes_at_its_loader_s_pace_on_any_card() -> None:
    """An RTX 5090 waiting 40% of each step on CPU-bound workers, a week to go: no card
    feeds the step faster, so the time to finish is projected at today's pace and no
    move is recommended; data_starvation says what to fix."""
    records = [meta(), topology("NVIDIA GeForce RTX 5090", 32 * GB),
               *steps(60, wall=0.5, data_s=0.2),
               *samples("host", 60, {"workers": 4.0, "workers_cpu_ratio": 0.97})]
    findings = judge(records, total_steps=2_000_000)
    assert only(findings, "data_starvation").verdict == "fix_here"
    f = only(findings, "iteration_speed")
    assert f.verdict == "info" and f.projection is not None
    assert f.projection["speedup_high_ratio"] == pytest.approx(1.0)
    assert any("data loader" in a for a in f.projection["assumptions"])


def test_data_starvation_without_workers_says_to_add_them() -> None:
    records = [meta(), *steps(30, data_s=0.05), *samples("host", 30, {"workers": 0.0})]
    f = only(judge(records), "data_starvation")
    assert "num_workers" in f.action and "no DataLoader workers" in f.summary


def test_data_starvation_counts_the_workers_the_span_had() -> None:
    """A loader without persistent workers has none for a moment at each epoch's end:
    a newest reading of 0 among 4 is no job loading in its own process."""
    records: list[Record] = [meta(), *steps(30, data_s=0.05),
                             *samples("host", 29, {"workers": 4.0, "workers_cpu_ratio": 0.97}),
                             Sample(0, START + 30, "host", {"workers": 0.0,
                                                            "workers_cpu_ratio": 0.97})]
    f = only(judge(records), "data_starvation")
    assert f.evidence["workers"] == 4 and "its 4 DataLoader workers are CPU-bound" in f.summary
    assert "num_workers" not in f.action


def test_an_eval_loader_s_workers_are_not_the_training_loader_s() -> None:
    """Training loads in its own process (num_workers=0) and waits half of each step; an
    eval every 60 s runs 5 s through a loader with 8 workers. Right after an eval the
    span's most workers were 8: "its 8 workers are mostly idle: storage" was told
    instead of "load in worker processes"."""
    records: list[Record] = [meta()]
    t, n, evals = START, 1, []
    while t < START + 133:
        wall = 5.0 if n % 600 == 0 else 0.1  # an eval inside the loop: one long step
        records.append(Step(rank=0, step=n, t=t + wall, wall_s=wall, data_s=0.05,
                            compute_s=wall - 0.05, samples=32))
        if wall > 1:
            evals.append((t, t + wall))
        t, n = t + wall, n + 1
    records += [Sample(0, START + k, "host", {"workers": 8.0 if any(
        a <= START + k <= b for a, b in evals) else 0.0}) for k in range(1, int(t - START))]
    f = only(judge(records), "data_starvation")
    assert f.evidence["workers"] == 0 and "no DataLoader workers" in f.summary


def test_data_starvation_without_host_readings_claims_nothing_about_workers() -> None:
    """No host probe is no worker count of 0: an absent metric is never zero."""
    f = only(judge([meta(), *steps(30, data_s=0.05)]), "data_starvation")
    assert "workers" not in f.evidence and "not known" in f.summary
    assert "no DataLoader workers" not in f.summary


def test_small_data_wait_is_not_starvation() -> None:
    records = [meta(), *steps(30, data_s=0.02), *samples("host", 30, {"workers": 0.0})]
    assert judge(records) == []


# -- checkpoint_overhead -----------------------------------------------------------------

def checkpointing(share: float) -> list[Record]:
    out: list[Record] = [meta()]
    every = 10  # steps
    for k, s in enumerate(steps(120)):
        if k % every == 0:
            seconds = share * 0.1 * every
            s = type(s)(**{**{f: getattr(s, f) for f in s.__slots__}, "checkpoint_s": seconds,
                           "compute_s": s.compute_s - seconds, "checkpoint_bytes": int(2e9)})
            out.append(Event(0, s.t, "checkpoint_save", {"seconds": seconds, "bytes": int(2e9)}))
        out.append(s)
    return out


def test_saves_of_no_time_are_nothing_to_report_even_at_a_zero_threshold() -> None:
    """A threshold of 0 is allowed; saves that cost no time must not divide by zero (a
    detector error) nor be reported."""
    from gpuwatch.config import Settings
    from gpuwatch.detection.engine import engine_from_settings

    engine = engine_from_settings(Settings(detectors={"checkpoint_overhead": {
        "checkpoint_share": 0.0}}), "rank")
    engine.feed(checkpointing(0.0))
    engine.close()
    assert engine.errors == 0 and not engine.findings


def test_blocking_checkpoints_are_fixed_here_with_size_and_speed() -> None:
    f = only(judge(checkpointing(0.3)), "checkpoint_overhead")
    assert f.verdict == "fix_here"
    assert abs(f.evidence["checkpoint_share_ratio"] - 0.3) < 0.02
    assert f.evidence["bytes_per_save"] == 2e9
    assert abs(f.evidence["seconds_per_save"] - 0.3) < 1e-6
    assert "of 2 GB (6.67 GB/s)" in f.summary and f.summary.endswith("every 1 s.")  # start to start


def test_occasional_cheap_checkpoints_are_fine() -> None:
    assert judge(checkpointing(0.03)) == []


def test_a_save_share_that_fell_under_its_threshold_by_the_end_is_resolved_there() -> None:
    """Heavy saves for the first 40 s, cheap ones for the 110 s after: the share was over
    10% until about 124 s and is 8% when the run ends, within the minute a finding is
    held after its condition was last seen. The run's share is what the end reports."""
    out: list[Record] = [meta()]
    for k, s in enumerate(steps(150)):
        if k % 10 == 0:
            seconds = 0.3 if s.t - START < 40 else 0.01
            s = replace(s, checkpoint_s=seconds, compute_s=s.compute_s - seconds)
            out.append(Event(0, s.t, "checkpoint_save", {"seconds": seconds, "bytes": int(2e9)}))
        out.append(s)
    f = only(judge(out), "checkpoint_overhead")
    assert f.state == "resolved"


def _saving(seconds: float, every_steps: int, cold_s: float, cold_seconds: float) -> list[Record]:
    """1 s steps; a blocking save every ``every_steps`` steps taking ``seconds`` (and
    ``cold_seconds`` in the first ``cold_s`` of the run)."""
    out: list[Record] = [meta()]
    for k, s in enumerate(steps(150, wall=1.0)):
        if k % every_steps == 0:
            took = cold_seconds if s.t - START < cold_s else seconds
            s = replace(s, checkpoint_s=took, compute_s=s.compute_s - took)
            out.append(Event(0, s.t, "checkpoint_save", {"seconds": took, "bytes": int(1e9)}))
        out.append(s)
    return out


def test_cold_first_saves_raise_no_alert_the_run_long_share_does_not_bear_out() -> None:
    """An HF Trainer saving every 4 steps: its first saves, on cold caches, took 10%
    of the first seconds, and the run-long share was judged at the second save (an
    alert after 1.4 s of training, resolved at the end, in Slack meanwhile). The share
    waits for a minute of the run; the run's own share (5%) raises nothing."""
    engine = engine_from_settings(Settings(), "rank")
    raised = [f for r in _saving(0.05, 4, 8.0, 0.5) for f in engine.feed([r])
              if f.detector == "checkpoint_overhead"]
    assert raised == []


def test_a_short_run_whose_saves_cost_a_third_of_it_is_told_at_its_end() -> None:
    """Under a minute of run, no share is judged while it runs; the end judges the run
    whole."""
    short = [r for r in _saving(0.4, 1, 0.0, 0.4) if getattr(r, "t", START) - START < 40]
    f = only(judge(short), "checkpoint_overhead")
    assert f.state == "active" and f.evidence["checkpoint_share_ratio"] > 0.3


# -- hang ----------------------------------------------------------------------------------

def stalled(open_phase: str | None, world_size: int = 1) -> list[Record]:
    agent = {"agent_cpu_seconds_total": 1.0}
    if open_phase:
        agent[f"open_{open_phase}_seconds"] = 50.0
    idle = {**HOST, "process_cpu_cores": 0.02}  # a hung process does not use its CPU
    return [meta(world_size=world_size), *steps(10), *samples("agent", 120, agent),
            *samples("host", 120, idle)]


def test_no_step_for_a_minute_while_the_process_lives_is_a_critical_hang() -> None:
    f = only(judge(stalled("collective")), "hang")
    assert f.severity == "critical" and f.verdict == "fix_here"
    assert f.evidence["stalled_seconds"] >= 60
    assert f.evidence["bound_seconds"] == 60
    assert f.first_seen - (START + 10) < 62  # reported as soon as the bound passes
    assert "collective" in f.summary and "another rank stopped first" in f.summary


def test_a_hang_the_job_got_past_is_resolved_at_the_run_s_end() -> None:
    """A rank stuck for two minutes that then stepped on to the end of the run (less
    than the hang's minute of hold after it): the run ended "critical: hang" active."""
    records = [*stalled("collective"), *steps(30, start=START + 130, first=11)]
    f = only(judge(records), "hang")
    assert f.state == "resolved" and f.evidence["stalled_seconds"] >= 60
    assert only(judge(stalled("collective")), "hang").state == "active"  # (stuck at the end)


def test_a_rank_stuck_outside_collectives_is_named_as_the_one_that_stopped() -> None:
    """Its advice (one of two ranks) told it to find the rank that is not in a
    collective: itself. A process alone keeps the plain advice."""
    f = only(judge(stalled("data", world_size=2)), "hang")
    assert "stuck in data" in f.summary and "not in a collective" in f.summary
    assert "find the one that is not" not in f.action
    assert "the one the ranks waiting in a collective wait for" in f.action
    waiting = only(judge(stalled("collective", world_size=2)), "hang")
    assert "find the one that is not" in waiting.action
    alone = only(judge(stalled("data")), "hang")
    assert "stuck in data" in alone.summary and "wait for" not in alone.action


def test_a_worker_that_pauses_by_habit_is_given_its_usual_pause() -> None:
    """An HPO worker: 30 s of steps, then 300 s idle waiting for its next trial, again and
    again. Once it has paused twice and gone on, a silence of up to 1.5 x its longest
    pause is its rhythm; a silence beyond that is still a hang."""
    records: list[Record] = [meta()]
    for trial in range(4):  # the last trial's steps end at START + 1020
        records += steps(30, start=START + 330 * trial, first=300 * trial + 1)
    idle = {**HOST, "process_cpu_cores": 0.02}
    records += samples("agent", 1420, {"agent_cpu_seconds_total": 1.0})  # 400 s idle now
    records += samples("host", 1420, idle)
    hangs = [f for f in judge(records) if f.detector == "hang"]
    assert hangs and all(f.state == "resolved" for f in hangs)  # the first pauses only
    assert all(f.first_seen < START + 2 * 330 for f in hangs)
    longer = records + samples("agent", 300, {"agent_cpu_seconds_total": 1.0},
                               start=START + 1420)  # 700 s: stopped for good this time
    late = [f for f in judge(longer) if f.detector == "hang" and f.state == "active"]
    assert late and late[0].evidence["usual_pause_seconds"] == pytest.approx(300, abs=1)
    assert late[0].evidence["bound_seconds"] == pytest.approx(450, abs=2)


def test_hang_bound_follows_slow_steps_and_overrides() -> None:
    slow = [meta(), *steps(100, wall=10.0), *samples("agent", 260, {"x": 1.0})]
    f = only(judge(slow), "hang")
    assert f.evidence["bound_seconds"] == 100  # 10 x the 10 s median step
    quick = judge(stalled(None), detectors={"hang": {"min_seconds": 5}})
    assert only(quick, "hang").evidence["bound_seconds"] == 5


def test_steady_steps_or_no_steps_at_all_are_not_a_hang() -> None:
    assert judge([meta(), *steps(200), *samples("agent", 200, {"x": 1.0})]) == []
    assert judge([meta(), *samples("agent", 200, {"x": 1.0})]) == []


# -- iteration_speed -----------------------------------------------------------------------

def test_days_to_go_on_a_consumer_card_is_a_reason_to_move() -> None:
    records = [meta(), topology("NVIDIA GeForce RTX 5090", 32 * GB), *steps(60, wall=0.5),
               *samples("nvml", 60, {"gpu_utilization_ratio": 0.97}, gpu=0)]
    f = only(judge(records, total_steps=1_000_000), "iteration_speed")
    assert f.verdict == "move_to_h100"
    assert f.evidence["remaining_hours_now"] > 130
    assert f.evidence["remaining_hours_scaled"] < f.evidence["remaining_hours_target"]
    assert f.projection is not None and f.projection["current"] == "RTX 5090"
    assert f.projection["cost_per_run_target_usd"] > 0


def test_days_to_go_on_eight_gpus_whose_collectives_were_not_seen_is_no_move() -> None:
    """FSDP on 8 cards, none of its collectives seen: what reads as compute may be
    communication, which faster math does not shorten, so no move on time or cost. The
    job is as large as the scale-out: no "scaled out" clause."""
    records = [meta(0, 8), topology("NVIDIA GeForce RTX 5090", 32 * GB, rank=0, gpus=8),
               *steps(60, wall=0.5, rank=0),
               *samples("nvml", 60, {"gpu_utilization_ratio": 0.97}, rank=0, gpu=0)]
    f = only(judge(records, total_steps=1_000_000), "iteration_speed")
    assert f.verdict == "info" and f.projection is not None
    assert "no collective seen on 8 GPUs" in f.projection["decision"]["why"]
    assert "no collective seen on 8 GPUs" in f.action
    assert f.summary.endswith("on 8 H100 SXM.")
    assert "remaining_hours_scaled" not in f.evidence and "scale_out_gpus" not in f.evidence
    seen = [s if not isinstance(s, Step) else replace(s, collective_s=0.02,
                                                      collective_bytes=int(1e8))
            for s in records]
    assert only(judge(seen, total_steps=1_000_000), "iteration_speed").verdict == "move_to_h100"


def test_time_to_finish_counts_the_evals_the_window_leaves_out() -> None:
    """Every 20th step runs a 10 s eval: the window's typical step is 0.5 s, but the run
    goes at 0.975 s a step, and no move is projected to shorten the eval's share."""
    records: list[Record] = [meta(), topology("NVIDIA GeForce RTX 5090", 32 * GB)]
    t = START
    for k in range(1, 241):
        wall = 10.0 if k % 20 == 0 else 0.5
        t += wall
        records.append(Step(rank=0, step=k, t=t, wall_s=wall, compute_s=wall, samples=32))
    f = only(judge(records, total_steps=1_000_000), "iteration_speed")
    assert f.evidence["step_seconds"] == pytest.approx(0.975, rel=0.03)
    p = f.projection
    assert p is not None
    assert p["parts_seconds_projected"]["other"] == p["parts_seconds_now"]["other"] > 0.4


def test_time_to_finish_on_an_unknown_gpu_is_only_information() -> None:
    f = only(judge([meta(), *steps(60, wall=0.5)], total_steps=1_000_000), "iteration_speed")
    assert f.verdict == "info" and f.projection is None  # (no other card's time projected)
    assert "its speed and price are unknown" in f.summary


def test_a_run_that_finished_its_steps_ends_with_none_to_go() -> None:
    """Its time to finish was told while steps remained; at the end none remain, however
    recently "N steps to go" was last judged."""
    finished = judge([meta(), *steps(60, wall=0.5)], total_steps=120,
                     detectors={"iteration_speed": {"min_remaining_hours": 0}})
    assert only(finished, "iteration_speed").state == "resolved"


def test_a_short_run_or_unknown_total_is_not_reported() -> None:
    records = [meta(), topology("NVIDIA GeForce RTX 5090", 32 * GB), *steps(60, wall=0.5)]
    assert judge(records, total_steps=5000) == []
    assert judge(records) == []


# -- underutilised -------------------------------------------------------------------------

def test_low_utilisation_without_explanation_is_info() -> None:
    idle = {**HEALTHY_GPU, "gpu_utilization_ratio": 0.3}
    f = only(judge([meta(), *steps(60), *samples("nvml", 60, idle, gpu=0)]), "underutilised")
    assert f.verdict == "info" and abs(f.evidence["gpu_utilization_ratio"] - 0.3) < 1e-9


def test_loading_before_the_first_steps_is_no_low_utilisation() -> None:
    """45 s of loading weights (an idle GPU), then a busy one: warm-up, not a finding."""
    loading = samples("nvml", 45, {**HEALTHY_GPU, "gpu_utilization_ratio": 0.0}, gpu=0)
    busy = samples("nvml", 60, HEALTHY_GPU, gpu=0, start=START + 45)
    records = [meta(), *loading, *steps(60, wall=0.5, start=START + 45), *busy]
    assert judge(records) == []


def test_low_utilisation_explained_by_starvation_is_not_repeated() -> None:
    idle = {**HEALTHY_GPU, "gpu_utilization_ratio": 0.3}
    records = [meta(), *steps(60, data_s=0.06), *samples("nvml", 60, idle, gpu=0),
               *samples("host", 60, {"workers": 2.0, "workers_cpu_ratio": 1.0})]
    assert {f.detector for f in judge(records)} == {"data_starvation"}


# -- fits_on_paper -------------------------------------------------------------------------

def consumer_card_at_its_limit(**extra: float) -> list[Record]:
    reserved = {"allocator_reserved_bytes": 31.5 * GB, "allocator_reserved_peak_bytes": 31.8 * GB,
                "allocator_allocated_bytes": 16 * GB, "allocator_inactive_split_bytes": 2 * GB,
                "allocator_alloc_retries_total": 0.0}
    return [meta(), topology("NVIDIA GeForce RTX 5090", 32 * GB),
            Event(0, START + 45, "oom", {"type": "OutOfMemoryError"}),  # inside the window
            Event(0, START + 6, "batch_size_changed", {"from": 16, "to": 12}),
            *steps(60, wall=0.5, recompute_s=0.1, act_ckpt_calls=24, **extra),
            *samples("allocator", 60, reserved, ramp={"allocator_alloc_retries_total": 1.0}),
            *samples("nvml", 60, {"gpu_memory_used_bytes": 31.9 * GB,
                                  "gpu_memory_total_bytes": 32 * GB}, gpu=0)]


def test_memory_bound_consumer_card_should_move_to_h100_with_evidence() -> None:
    f = only(judge(consumer_card_at_its_limit()), "fits_on_paper")
    assert f.verdict == "move_to_h100"
    ev = f.evidence
    assert ev["memory_peak_ratio"] > 0.95
    assert ev["alloc_retries_total"] > 0 and ev["ooms_total"] == 1
    assert (ev["batch_size_from"], ev["batch_size_to"]) == (16, 12)
    # the job's own memory (the allocator's), not the card's: 16 GB stay allocated;
    # 15.8 GB of activations (peak reserved) x 16/12 batch x 2 without checkpointing
    assert abs(ev["memory_need_bytes"] - (16 + 15.8 * 16 / 12 * 2) * GB) < 1e6
    assert abs(ev["recompute_share_ratio"] - 0.2) < 1e-9
    assert abs(ev["fragmentation_ratio"] - 2 / 31.5) < 1e-9
    p = f.projection
    assert p is not None and p["target"] == "H100 SXM" and p["current"] == "RTX 5090"
    assert p["parts_seconds_projected"]["recompute"] == 0
    assert p["workarounds_dropped"] == ["activation checkpointing off: -20% step time"]
    assert p["speedup_ratio"] > 1.5
    assert "H100 SXM" in f.summary and "batch size 12 -> 16" in f.action


def checkpointing_after(oom_at: float | None, plain_s: float,
                        plain_reserved_gib: float = 31.4) -> list[Record]:
    """Shaped like the suite's run on an H200 capped as an RTX 5090 (no NVML: the card
    is ``gpu_model``'s): a 0.9B GPT at batch 16 runs out of memory at once, runs ``plain_s``
    at batch 8 at the card's limit, then turns activation checkpointing on for batch 16
    (no batch size is seen: its tokens come from no DataLoader); the allocator then
    reserves 23 of 32 GiB and nothing retries."""
    gib = 2**30
    at_limit = {"allocator_reserved_bytes": plain_reserved_gib * gib,
                "allocator_allocated_bytes": min(16, plain_reserved_gib) * gib,
                "allocator_allocated_peak_bytes": 31.4 * gib,
                "allocator_reserved_peak_bytes": 31.4 * gib,
                "allocator_alloc_retries_total": 1.0, "allocator_ooms_total": 1.0}
    after = {**at_limit, "allocator_reserved_bytes": 23.2 * gib,
             "allocator_allocated_bytes": 12.4 * gib}
    records: list[Record] = [meta(), *steps(plain_s, wall=0.1),
                             *samples("allocator", plain_s, at_limit),
                             *steps(120, wall=0.24, start=START + plain_s,
                                    first=1 + round(plain_s * 10), recompute_s=0.044,
                                    act_ckpt_calls=16),
                             *samples("allocator", 120, after, start=START + plain_s)]
    if oom_at is not None:
        records.append(Event(0, START + oom_at, "oom", {"count": 1, "source": "allocator"}))
    return records


def test_activation_checkpointing_turned_on_after_an_oom_is_the_workaround_move() -> None:
    """The job answered an OOM by turning activation checkpointing on: it fits on paper
    and not in practice, for as long as the workaround stays (it was judged by design, or
    not at all, once the OOM left the window). Checkpointing on from the first step with
    a warm-up OOM (a batch finder's, cudnn.benchmark's tries) stays a design choice."""
    f = only(judge(checkpointing_after(oom_at=0.2, plain_s=11), gpu_model="RTX 5090"),
             "fits_on_paper")
    assert f.verdict == "move_to_h100" and f.evidence["ooms_total"] == 1
    assert f.projection is not None and f.projection["current"] == "RTX 5090"
    # the allocator's lifetime peak (31.4 GiB, from before checkpointing) is no figure to
    # double for checkpointing: 50 GiB was told; it ran out at the card's 32 GiB
    assert f.evidence["memory_need_bytes"] == 32 * 2**30 and "more than" in f.summary
    assert f.projection["parts_seconds_projected"]["recompute"] == 0
    from_start = judge(checkpointing_after(oom_at=0.2, plain_s=0), gpu_model="RTX 5090")
    assert [x.verdict for x in from_start if x.detector == "fits_on_paper"] in ([], ["info"])
    no_oom = judge(checkpointing_after(oom_at=None, plain_s=11), gpu_model="RTX 5090")
    assert [x.verdict for x in no_oom if x.detector == "fits_on_paper"] in ([], ["info"])


def test_checkpointing_is_an_answer_to_an_oom_only_when_memory_said_so() -> None:
    """A warm-up OOM (cudnn.benchmark's tries), then 20 s at 9 of 32 GiB, then
    checkpointing on by plan: no answer to memory, no move. One step without
    checkpointing among them (a short eval batch) does not end the workaround, and
    checkpointing that comes and goes with the batch's length is no switch at all."""
    planned = judge(checkpointing_after(oom_at=0.2, plain_s=20, plain_reserved_gib=9),
                    gpu_model="RTX 5090")
    assert "move_to_h100" not in [x.verdict for x in planned if x.detector == "fits_on_paper"]
    answered = checkpointing_after(oom_at=0.2, plain_s=11)
    one_plain = [replace(r, recompute_s=0.0, act_ckpt_calls=0)
                 if isinstance(r, Step) and r.step == 400 else r for r in answered]
    f = only(judge(one_plain, gpu_model="RTX 5090"), "fits_on_paper")
    assert f.verdict == "move_to_h100" and f.state == "active"
    toggling = [replace(r, recompute_s=0.0, act_ckpt_calls=0)
                if isinstance(r, Step) and r.step % 2 and r.t > START + 11 else r
                for r in checkpointing_after(oom_at=0.2, plain_s=0)]
    moves = [x for x in judge(toggling, gpu_model="RTX 5090") if x.verdict == "move_to_h100"]
    assert moves == []


def test_a_batch_size_finder_running_out_by_design_is_no_memory_constraint() -> None:
    """Lightning's batch-size finder on an RTX 4090 grows the batch 2, 4, 8, 16 (3 steps
    each), runs out at 32, keeps 16 and trains at 96% of the card with no retry: its
    OOM was the search's. It was told "move" for a minute, then cleared. An OOM a
    minute after the batch last grew is the job's again."""
    def finder(oom_at: float) -> list[Record]:
        records: list[Record] = [meta(), topology("NVIDIA GeForce RTX 4090", 24 * GB)]
        t, n, size = START, 1, 2
        for size in (2, 4, 8, 16):
            records += steps(0.3, start=t, first=n, samples=size)
            if size > 2:
                records.append(Event(0, t + 0.2, "batch_size_changed",
                                     {"from": size // 2, "to": size}))
            t, n = t + 0.3, n + 3
        records += [Event(0, START + oom_at, "oom", {"type": "OutOfMemoryError"}),
                    *steps(120, start=t + 0.5, first=n, samples=16),
                    *samples("allocator", 121, {"allocator_reserved_bytes": 23 * GB,
                                                "allocator_allocated_bytes": 12 * GB,
                                                "allocator_alloc_retries_total": 0.0})]
        return records

    assert [f for f in judge(finder(oom_at=1.3)) if f.detector == "fits_on_paper"] == []
    late = [f for f in judge(finder(oom_at=80)) if f.detector == "fits_on_paper"]
    assert [f.verdict for f in late] == ["move_to_h100"]


def test_a_smaller_batch_of_longer_sequences_is_no_batch_cut() -> None:
    """Sequence-length warm-up: 16 x 1024 tokens, then 12 x 1366 (the same tokens per
    step): the batch shrank by schedule, not for memory, so no need is scaled by it."""
    records = [r for r in consumer_card_at_its_limit() if not isinstance(r, Step)]
    records += [*steps(6, wall=0.5, recompute_s=0.1, samples=16, tokens=16 * 1024),
                *steps(54, wall=0.5, start=START + 6, first=13, recompute_s=0.1,
                       samples=12, tokens=12 * 1366)]
    f = only(judge(records), "fits_on_paper")
    assert "batch cut" not in f.summary and "batch_size_from" not in f.evidence
    cut = only(judge(consumer_card_at_its_limit()), "fits_on_paper")
    assert f.evidence["memory_need_bytes"] < cut.evidence["memory_need_bytes"]
    # the same cut at 1024 tokens a sequence (tokens per step fall with the batch), with
    # the event where the agent puts it, after the first step at the new size: a cut
    same_length = [r for r in consumer_card_at_its_limit() if not isinstance(r, Step)
                   and not (isinstance(r, Event) and r.name == "batch_size_changed")]
    same_length += [*steps(6.5, wall=0.5, recompute_s=0.1, samples=16, tokens=16 * 1024),
                    *steps(53.5, wall=0.5, start=START + 6.5, first=14, recompute_s=0.1,
                           samples=12, tokens=12 * 1024),
                    Event(0, START + 7.01, "batch_size_changed", {"from": 16, "to": 12})]
    assert "batch cut" in only(judge(same_length), "fits_on_paper").summary


def fragmenting(live_peak_gib: float) -> list[Record]:
    """A 48 GB L40S whose allocator reserves 44 GB and retries, never OOMs."""
    return [meta(), topology("NVIDIA L40S", 48 * GB), *steps(60, wall=0.5),
            *samples("allocator", 60, {
                "allocator_reserved_bytes": 44 * GB, "allocator_reserved_peak_bytes": 44 * GB,
                "allocator_allocated_bytes": 12 * GB,
                "allocator_allocated_peak_bytes": live_peak_gib * GB,
                "allocator_inactive_split_bytes": 12 * GB,
                "allocator_alloc_retries_total": 0.0},
                ramp={"allocator_alloc_retries_total": 0.1})]


def test_retries_while_live_tensors_fit_with_room_are_fragmentation_fixed_here() -> None:
    f = only(judge(fragmenting(27)), "fits_on_paper")
    assert f.verdict == "fix_here" and "fragmented" in f.summary
    assert "expandable_segments:True" in f.action and f.projection is None
    assert f.evidence["memory_live_peak_ratio"] == pytest.approx(27 / 48)
    near_full = only(judge(fragmenting(43)), "fits_on_paper")  # live tensors at the limit
    assert "fragmented" not in near_full.summary
    # with activation checkpointing on too: the retries are still the split cache, which
    # no bigger card needs to fix (the cache beyond live tensors is no need of the job)
    checkpointed = [replace(r, recompute_s=0.1) if isinstance(r, Step) else r
                    for r in fragmenting(27)]
    ckpt = only(judge(checkpointed), "fits_on_paper")
    assert ckpt.verdict == "fix_here" and "fragmented" in ckpt.summary


@pytest.mark.parametrize("peak_gib", [13.8, 22.1])
def test_symptoms_on_a_card_other_processes_fill_are_a_shared_card_fixed_here(
        peak_gib: float) -> None:
    """An RTX 4090 beside a notebook holding 9.5 GB: the job reserves 13.8 GB (57%),
    retries and OOMs. It fits the card alone: free it, no move. Without the NVML reading
    of the job's own processes nothing says the card is shared. So too where the job's
    own reserved peak reached 92% of the card (it fits alone, if not with 10% to spare):
    it was told to move."""
    def job(process_gib: float | None) -> list[Record]:
        nvml = {"gpu_memory_used_bytes": 23.3 * GB, "gpu_memory_total_bytes": 24 * GB}
        if process_gib is not None:
            nvml["gpu_process_memory_bytes"] = process_gib * GB
        return [meta(), topology("NVIDIA GeForce RTX 4090", 24 * GB), *steps(60, wall=0.5),
                *samples("nvml", 60, nvml),
                *samples("allocator", 60, {
                    "allocator_reserved_bytes": 13.8 * GB,
                    "allocator_reserved_peak_bytes": peak_gib * GB,
                    "allocator_allocated_bytes": 6 * GB,
                    "allocator_allocated_peak_bytes": 13 * GB,
                    "allocator_alloc_retries_total": 0.0, "allocator_ooms_total": 0.0},
                    ramp={"allocator_alloc_retries_total": 0.1, "allocator_ooms_total": 0.05})]
    f = only(judge(job(13.8)), "fits_on_paper")
    assert f.verdict == "fix_here" and "card is shared" in f.summary
    assert f.evidence["memory_others_bytes"] == pytest.approx(9.5 * GB)
    assert "nvidia-smi" in f.action and f.projection is None
    unknown = [x for x in judge(job(None)) if x.detector == "fits_on_paper"]
    assert all("shared" not in x.summary for x in unknown)
    # in a container NVML names host PIDs: none matched the job's own, which is no
    # reading of them (the job's own memory would count as another process's)
    unmatched = [x for x in judge(job(0.0)) if x.detector == "fits_on_paper"]
    assert all("shared" not in x.summary for x in unmatched)


def test_a_full_cache_without_symptoms_is_not_memory_pressure() -> None:
    """PyTorch's caching allocator keeps memory reserved: that alone proves nothing."""
    cached = [meta(), topology("NVIDIA GeForce RTX 5090", 32 * GB), *steps(60, wall=0.5),
              *samples("allocator", 60, {"allocator_reserved_bytes": 31 * GB,
                                         "allocator_alloc_retries_total": 3.0})]
    assert judge(cached) == []


def test_a_need_too_big_for_any_single_card_is_fixed_here() -> None:
    huge = [r for r in consumer_card_at_its_limit()
            if not (isinstance(r, Event) and r.name == "batch_size_changed")]
    huge.append(Event(0, START + 6, "batch_size_changed", {"from": 512, "to": 12}))
    f = only(judge(huge), "fits_on_paper")
    assert f.verdict == "fix_here"
    assert f.evidence["memory_need_bytes"] > 180e9


def test_an_explicit_target_and_prices_are_used() -> None:
    f = only(judge(consumer_card_at_its_limit(), target_gpu="H200", prices={"H200": 9.0}),
             "fits_on_paper")
    p = f.projection
    assert p is not None and p["target"] == "H200"
    assert abs(p["cost_per_step_target_usd"] - p["step_seconds_projected"] * 9.0 / 3600) < 1e-12


# -- cross-rank: straggler and sync_bottleneck -------------------------------------------

def ranks(world: int, slow: int | None = None, share: float = 0.6, nbytes: float = 64e6,
          nvlinks: int = 0, name: str = "NVIDIA GeForce RTX 5090") -> list[Record]:
    out: list[Record] = []
    for r in range(world):
        out += [meta(r, world, host="node-0"),  # one node of ``world`` GPUs
                topology(name, 32 * GB, nvlinks=nvlinks, rank=r, gpus=world)]
        if r == slow:
            out += steps(60, rank=r, compute_s=0.09, collective_s=0.01,
                         collective_bytes=int(nbytes))
            out.append(Sample(r, START + 30, "nvml", {"gpu_clock_event_reasons": 0x1 | 0x40},
                              gpu=0))
        elif slow is not None:
            out += steps(60, rank=r, compute_s=0.09, collective_s=0.06,
                         collective_bytes=int(nbytes))
        else:
            out += steps(60, rank=r, compute_s=0.095, collective_s=share * 0.1,
                         collective_bytes=int(nbytes))
    return out


def test_two_ranks_starved_by_their_loaders_are_named_in_the_plural() -> None:
    """Ranks 1 and 3 of four wait for their data half of each step: "Ranks 1, 3 ...
    take up to ... waiting for their data" (it said "its")."""
    records: list[Record] = []
    for r in range(4):
        records += [meta(r, 4, host="node-0"),
                    topology("NVIDIA GeForce RTX 5090", 32 * GB, rank=r, gpus=4)]
        slow = r in (1, 3)
        records += steps(60, rank=r, data_s=0.05 if slow else 0.001,
                         compute_s=0.045, collective_s=0.001 if slow else 0.05)
    f = only(judge(records, scope="job"), "straggler")
    assert f.ranks == [1, 3] and "waiting for their data" in f.summary


def test_a_slow_rank_is_a_straggler_to_fix_not_a_reason_to_buy() -> None:
    findings = judge(ranks(3, slow=2), scope="job")
    f = only(findings, "straggler")
    assert f.verdict == "fix_here" and f.ranks == [2]
    assert f.evidence["work_ratio"] > 2.0 and "mostly computing" in f.summary
    assert f.evidence["others_collective_share_ratio"] > 0.5
    assert "Rank 2 (host node-0" in f.summary
    assert "(its GPU reports hw thermal slowdown)" in f.summary
    assert not [x for x in findings if x.verdict == "move_to_h100"]


def test_a_straggler_s_summary_names_the_part_of_its_step_that_is_slow() -> None:
    """Rank 0 logging metrics on the host every step (time outside every marked phase)
    holds the others at the all-reduce as a slow GPU would: named as host work."""
    out: list[Record] = []
    for r in range(3):
        out += [meta(r, 3, host=f"node-{r}"), topology("NVIDIA H100 80GB HBM3", 80 * GB, rank=r)]
        if r == 0:
            out += steps(60, rank=r, compute_s=0.05, collective_s=0.005, other_s=0.045,
                         collective_bytes=int(64e6))
        else:
            out += steps(60, rank=r, compute_s=0.095, collective_s=0.05,
                         collective_bytes=int(64e6))
    f = only(judge(out, scope="job"), "straggler")
    assert f.ranks == [0] and "mostly outside the training phases (host work" in f.summary


def test_symmetric_collective_wait_without_nvlink_should_move_to_h100() -> None:
    findings = judge(ranks(2), scope="job")
    f = only(findings, "sync_bottleneck")
    assert f.verdict == "move_to_h100" and f.ranks == [0, 1]
    assert abs(f.evidence["collective_share_ratio"] - 0.6) < 1e-9
    p = f.projection
    assert p is not None
    # ring all-reduce of 64 MB over 2 ranks on 450 GB/s NVLink: 2(n-1)/n * bytes / bw
    assert abs(p["parts_seconds_projected"]["comm"] - 64e6 / 450e9) < 1e-9
    assert p["speedup_ratio"] > 1.5
    assert not [x for x in findings if x.detector == "straggler"]


def test_collective_wait_over_nvlink_or_in_small_messages_is_fixed_here() -> None:
    nvlink = only(judge(ranks(2, nvlinks=18, name="NVIDIA H100 80GB HBM3"), scope="job"),
                  "sync_bottleneck")
    assert nvlink.verdict == "fix_here" and "NVLink already" in nvlink.summary
    tiny = only(judge(ranks(2, nbytes=100e3), scope="job"), "sync_bottleneck")
    assert tiny.verdict == "fix_here" and "latency-bound" in tiny.summary


def test_a_wait_across_nodes_over_a_network_nothing_reports_is_fixed_here() -> None:
    """Two nodes, no InfiniBand or RoCE port and no setting: the collectives cross a
    network gpuwatch cannot see (NCCL over TCP sockets, likely), which other GPUs on the
    same network keep: no move, and the projection keeps the wait as measured."""
    records: list[Record] = []
    for r in range(2):
        records += [meta(r, 2, host=f"node-{r}"), topology("NVIDIA GeForce RTX 5090", 32 * GB,
                                                          rank=r),
                    *steps(60, rank=r, compute_s=0.095, collective_s=0.06,
                           collective_bytes=int(64e6))]
    f = only(judge(records, scope="job"), "sync_bottleneck")
    assert f.verdict == "fix_here" and "network gpuwatch cannot see" in f.summary
    p = f.projection
    assert p is not None
    assert p["parts_seconds_projected"]["comm"] == p["parts_seconds_now"]["comm"] > 0


def test_a_job_no_card_can_hold_shows_no_projection_onto_a_smaller_one() -> None:
    """8 B200s at their limit with retries: no card in the catalogue holds the need, so
    "cut its memory here", without a projection onto the 80 GB target (0.4x, 72 h)."""
    records = [meta(), topology("NVIDIA B200", 180 * GB), *steps(60, wall=0.5),
               *samples("allocator", 60, {
                   "allocator_reserved_bytes": 177 * GB,
                   "allocator_reserved_peak_bytes": 177 * GB,
                   "allocator_allocated_bytes": 90 * GB,
                   "allocator_allocated_peak_bytes": 176 * GB,
                   "allocator_alloc_retries_total": 0.0},
                   ramp={"allocator_alloc_retries_total": 0.1})]
    f = only(judge(records), "fits_on_paper")
    assert f.verdict == "fix_here" and "no bigger single card" in f.summary
    assert f.projection is None and "speedup_ratio" not in f.evidence


def test_a_collective_wait_with_no_topology_recommends_no_move() -> None:
    """No NVML in the container: neither the card nor the links are known, so the wait
    is reported without a verdict on hardware."""
    records = [r for r in ranks(2) if not (isinstance(r, Event) and r.name == "topology")]
    f = only(judge(records, scope="job"), "sync_bottleneck")
    assert f.verdict == "info" and "cannot see" in f.summary
    declared = only(judge(records, scope="job", gpu_model="RTX 5090"), "sync_bottleneck")
    assert "PCIe (RTX 5090, as configured)" in declared.summary  # its link is known
    assert declared.evidence["link_bytes_per_second"] == pytest.approx(64e9)  # gen 5 x16
    # on two nodes whose network the user set at 1 GB/s: that slower link is the one
    apart = [replace(r, host=f"node-{r.rank}") if isinstance(r, Meta) else r for r in records]
    across = only(judge(apart, scope="job", gpu_model="RTX 5090",
                        detectors={"sync_bottleneck": {"inter_node_bytes_per_second": 1e9}}),
                  "sync_bottleneck")
    assert across.evidence["link_bytes_per_second"] == 1e9 and across.verdict == "fix_here"
    assert "inter-node link" in across.summary
    assert "nodes on the same fabric" in across.summary and across.projection is not None
    # already on H100s: no move to price ("on H100 SXM nodes ... 1.0x", "$65 -> $65")
    on_h100 = [replace(r, host=f"node-{r.rank}") if isinstance(r, Meta) else r
               for r in ranks(2, nvlinks=18, name="NVIDIA H100 80GB HBM3")]
    there = only(judge(on_h100, scope="job",
                       detectors={"sync_bottleneck": {"inter_node_bytes_per_second": 1e9}}),
                 "sync_bottleneck")
    assert there.verdict == "fix_here" and "inter-node link" in there.summary
    assert there.projection is None and "same fabric" not in there.summary


def test_a_malformed_collective_timing_word_does_not_silence_the_detector() -> None:
    records = [*ranks(2), Event(0, START + 1, "collective_timing",
                                {"nccl": False, "all_reduce": "not timed: async"})]
    f = only(judge(records, scope="job"), "sync_bottleneck")
    assert "not timed: all_reduce (async)" in f.summary


def test_little_collective_wait_is_no_bottleneck() -> None:
    assert judge(ranks(2, share=0.05), scope="job") == []


@pytest.mark.parametrize(("cores", "waiting_s", "working"), [
    (1.0, 0.0, True),    # an export on the CPU, no wait open: working
    (1.0, 40.0, False),  # a busy-polling barrier: waiting, not working
    (0.1, 0.0, False)])  # idle
def test_a_rank_busy_on_its_cpu_between_steps_works_unless_it_waits(
        cores: float, waiting_s: float, working: bool) -> None:
    """What tells the job engine a rank works alone between steps (so the others, in
    their next collective, are waiting for it, not hung), read from figures a replay's
    digested ranks answer too: its process busy on the CPU outside a wait."""
    view = Telemetry(0)
    view.add([meta(), *steps(60, wall=1.0),
              *samples("host", 60, {"process_cpu_cores": cores}, start=START + 60),
              *samples("agent", 60, {"agent_cpu_seconds_total": 1.0,
                                     "open_collective_seconds": waiting_s},
                       start=START + 60)])
    th = engine_from_settings(Settings(), "rank").rules["hang"].thresholds
    assert working_off_step(view, START + 90, th) is working


def test_a_geforce_card_named_where_nvml_is_not_read_copies_through_host_memory() -> None:
    """No NVML in the container, ``gpu_model`` naming an RTX 5090: four ranks on a host
    wait 60 ms of each step in collectives of 400 MB. GeForce cards have no P2P between
    them, so the bytes go through host memory (a quarter of the slot, shared by the
    four): 100 ms a step, the wait itself. It was judged at the slot's full rate (6 ms:
    "not the link's bandwidth, look for a misconfigured NCCL")."""
    records = [r for r in ranks(4, nbytes=400e6)
               if not (isinstance(r, Event) and r.name == "topology")]
    f = only(judge(records, scope="job", gpu_model="RTX 5090"), "sync_bottleneck")
    assert "through host memory" in f.summary and "not the link" not in f.summary
    assert f.evidence["staged_bytes_per_second"] == pytest.approx(64e9 / 4 / 4)
    assert f.evidence["link_seconds_per_step"] == pytest.approx(0.1)
    h100 = only(judge(records, scope="job", gpu_model="H100 PCIe"), "sync_bottleneck")
    assert "through host memory" not in h100.summary  # (P2P over PCIe: at the slot's rate)


@pytest.mark.parametrize("reserved_gib, recompute", [(52.0, 0.2), (78.0, 0.0)])
def test_an_allocator_retry_now_and_then_is_no_memory_constraint(
        reserved_gib: float, recompute: float) -> None:
    """One allocator retry every 10 minutes (a cache flush, then the allocation): with
    checkpointing on at 65% of an A100 it was "memory is the constraint: cannot run
    well here" and a move; on a full card it was raised and cleared at every retry.
    Retries are a symptom once they recur (``min_retries`` in the window)."""
    records: list[Record] = [meta(), topology("NVIDIA A100-SXM4-80GB", 80 * GB),
                             *steps(1800, wall=1.0, recompute_s=recompute)]
    records += [Sample(0, START + i, "allocator", {
        "allocator_reserved_bytes": reserved_gib * GB,
        "allocator_reserved_peak_bytes": reserved_gib * GB,
        "allocator_allocated_bytes": 30 * GB,
        "allocator_alloc_retries_total": float(i // 600)}) for i in range(1, 1800)]
    found = [f for f in judge(records) if f.detector == "fits_on_paper"]
    assert all(f.verdict == "info" for f in found), found


def test_retries_on_a_card_with_room_are_no_reason_the_job_cannot_run_here() -> None:
    """Retries every 5 s with checkpointing on while the allocator holds 61% of the card
    (no OOM, no cut): "cannot run well here", a move whatever it costs. The card has
    room, so a move must pay as any other."""
    records: list[Record] = [meta(), topology("NVIDIA A100-SXM4-80GB", 80 * GB),
                             *steps(300, wall=1.0, recompute_s=0.2)]
    records += [Sample(0, START + i, "allocator", {
        "allocator_reserved_bytes": 49 * GB, "allocator_reserved_peak_bytes": 49 * GB,
        "allocator_allocated_bytes": 30 * GB, "allocator_allocated_peak_bytes": 46 * GB,
        "allocator_alloc_retries_total": float(i // 5)}) for i in range(1, 300)]
    dear = {"H100 SXM": 1000.0, "H200": 1000.0}
    found = [f for f in judge(records, prices=dear, move_min_time_gain=50)
             if f.detector == "fits_on_paper"]
    assert found and all(f.verdict != "move_to_h100" for f in found), found


def test_a_straggler_s_waiting_is_no_sync_bottleneck_of_its_own() -> None:
    """Rank 5 of 8 H100s computes 18% longer: the others wait 0.13 s a step on it beyond
    a 0.16 s transfer. Transfer and waiting together reach the 25% share, and the
    transfer is the larger: sync_bottleneck said "NVLink could move these bytes in 2 ms:
    not the link's bandwidth, look for a misconfigured NCCL", coming and going beside
    the straggler. The transfer alone is 16% of the step: the straggler's finding."""
    records: list[Record] = []
    for r in range(8):
        slow = r == 5
        records += [meta(r, 8, host="node-0"),
                    topology("NVIDIA H100 80GB HBM3", 80 * GB, nvlinks=18, rank=r, gpus=8),
                    *steps(120, wall=1.03, rank=r, compute_s=0.87 if slow else 0.74,
                           collective_s=0.16 if slow else 0.29, collective_bytes=int(1e9))]
    found = judge(records, scope="job")
    assert "sync_bottleneck" not in {f.detector for f in found}, found
