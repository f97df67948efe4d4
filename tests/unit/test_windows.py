"""Windows sized in steps and seconds: every step-window detector works from 20 ms to
60 s per step, and reports within the bound docs/runbooks.md states."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gpuwatch.config import Settings
from gpuwatch.detection.context import STEP_SLACK, recent, window_s
from gpuwatch.detection.engine import REFRESH_DIVISIONS, engine_from_settings
from gpuwatch.detection.rules import Rule, load_rules
from gpuwatch.records import Finding, Record, Step
from gpuwatch.telemetry import Telemetry
from tests.runs import START, meta

RULES = load_rules()
STEP_TIMES = st.floats(min_value=0.02, max_value=60.0)


def first_finding_bound(rule: Rule, step_s: float, interval_s: float = 1.0) -> float:
    """docs/runbooks.md: a condition on every step from its onset is reported within
    W + F + W/4 + detect_interval_s + 3 x step, W = max(window_s, 1.25 x min_steps x
    step), F = for_s x W / window_s, W/4 the refresh, which waits for a step (seconds)."""
    w = max(rule.window_s, STEP_SLACK * rule.min_steps * step_s)
    return w + rule.for_s * w / rule.window_s + w / REFRESH_DIVISIONS + interval_s + 3 * step_s


def run(step_s: float, healthy_s: float, starving_s: float) -> list[Record]:
    """Steps of ``step_s``: 3% data wait, then 60% from the onset."""
    out: list[Record] = [meta()]
    t, n = START, 0
    while t < START + healthy_s + starving_s:
        n += 1
        data = 0.03 if t < START + healthy_s else 0.6
        t += step_s
        out.append(Step(rank=0, step=n, t=t, wall_s=step_s, data_s=data * step_s,
                        compute_s=(1 - data) * step_s))
    return out


def raised(records: list[Record], detector: str) -> float | None:
    """The record time at which a live engine first reports ``detector``."""
    engine = engine_from_settings(Settings(), "rank")
    for r in records:
        for f in engine.feed([r]):
            if isinstance(f, Finding) and f.detector == detector and f.state == "active":
                return getattr(r, "t", 0.0)
    return None


@settings(max_examples=30, deadline=None)
@given(STEP_TIMES)
def test_a_window_holds_its_minimum_of_steps_at_any_step_time(step_s: float) -> None:
    view = Telemetry()
    for r in run(step_s, healthy_s=max(40 * step_s, 120.0), starving_s=0):
        view.add_one(r)
    for rule in RULES.values():
        if rule.min_steps and rule.id not in ("hang", "checkpoint_overhead"):
            w = window_s(view, rule)
            assert w >= rule.window_s and w >= rule.min_steps * step_s
            summary = recent(view, rule, view.clock)
            assert summary is not None and summary.steps >= rule.min_steps


@settings(max_examples=25, deadline=None)
@given(STEP_TIMES)
def test_starvation_is_reported_within_the_stated_bound_at_any_step_time(step_s: float) -> None:
    rule = RULES["data_starvation"]
    bound = first_finding_bound(rule, step_s)
    healthy_s = max(40 * step_s, 60.0)
    records = run(step_s, healthy_s=healthy_s, starving_s=bound + 5 * step_s)
    at = raised(records, "data_starvation")
    onset = START + healthy_s
    assert at is not None, bound
    assert onset <= at <= onset + bound


@settings(max_examples=15, deadline=None)
@given(STEP_TIMES)
def test_a_healthy_loop_is_never_flagged_at_any_step_time(step_s: float) -> None:
    records = run(step_s, healthy_s=max(60 * step_s, 120.0), starving_s=0)
    engine = engine_from_settings(Settings(), "rank")
    engine.feed(records)
    engine.close()
    assert engine.findings == {}


@settings(max_examples=10, deadline=None)
@given(STEP_TIMES)
def test_a_stall_is_reported_within_the_hang_bound_at_any_step_time(step_s: float) -> None:
    """docs/runbooks.md: hang reports within max(60 s, 10 x median step) of the last
    progress, plus one detection interval and one probe sample."""
    from tests.scenarios import Shape, Stop, simulate

    rule = RULES["hang"]
    bound = max(rule.thresholds["min_seconds"], rule.thresholds["median_multiple"] * step_s)
    stop_at = max(30 * step_s, 60.0)
    shape = Shape(step_s=step_s, duration_s=stop_at + bound + 2 * step_s + 30, jitter=0.0,
                  sample_s=2.0,
                  stop=Stop(at_s=stop_at, ranks=(0,), kind="loader"))
    records = simulate(shape)[0]
    last_step = max(r.t for r in records if isinstance(r, Step))
    at = raised(records, "hang")
    assert at is not None
    assert last_step + bound <= at <= last_step + bound + 1.0 + shape.sample_s


def two_ranks(step_s: float, healthy_s: float, slow_s: float) -> list[Record]:
    """Two ranks in lockstep; from the onset rank 1 computes 1.6x longer and rank 0 waits
    for it in its collective (the step grows accordingly)."""
    out: list[Record] = [meta(0, 2), meta(1, 2)]
    t, n = START, 0
    while t < START + healthy_s + slow_s:
        n += 1
        slow = t >= START + healthy_s
        pure = 0.8 * step_s
        wall = step_s + (0.6 * pure if slow else 0.0)
        t += wall
        for rank in (0, 1):
            mine = pure * (1.6 if slow and rank == 1 else 1.0)
            wait = wall - 0.1 * step_s - mine
            out.append(Step(rank=rank, step=n, t=t, wall_s=wall, data_s=0.05 * step_s,
                            optimizer_s=0.05 * step_s, compute_s=mine + wait,
                            collective_s=wait, collective_bytes=int(1e8)))
    return out


@settings(max_examples=10, deadline=None)
@given(STEP_TIMES)
def test_a_straggler_is_reported_within_the_stated_bound_at_any_step_time(step_s: float) -> None:
    """The job-scope detectors inherit the same windows (bound on the slowed step)."""
    rule = RULES["straggler"]
    slowed = step_s * 1.48
    bound = first_finding_bound(rule, slowed)
    healthy_s = max(40 * step_s, 60.0)
    records = two_ranks(step_s, healthy_s, bound + 5 * slowed)
    engine = engine_from_settings(Settings(), "job")
    at = None
    for r in records:
        engine.view(r.rank).add_one(r)
        found = engine.observe(r.t) if isinstance(r, Step) and at is None else []
        if any(f.detector == "straggler" for f in found):
            at = r.t
    onset = START + healthy_s
    assert at is not None, bound
    assert onset <= at <= onset + bound


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(min_value=0.05, max_value=5.0), min_size=12, max_size=40),
       st.floats(min_value=0.0, max_value=60.0))
def test_a_window_asked_again_after_each_step_sums_the_steps_it_holds_then(
        walls: list[float], back: float) -> None:
    """One view asked the same window at every step (the summary of a window is made
    once until the next step) answers as a view fed the same steps and asked once."""
    asked = Telemetry()
    asked.add_one(meta())
    steps: list[Record] = [meta()]
    t = START
    for n, wall in enumerate(walls, 1):
        t += wall
        step = Step(rank=0, step=n, t=t, wall_s=wall, data_s=0.2 * wall, compute_s=0.8 * wall)
        asked.add_one(step)
        steps.append(step)
        since = START + back
        once = Telemetry()
        once.add(steps)
        assert asked.summarise(since) == asked.summarise(since) == once.summarise(since)
