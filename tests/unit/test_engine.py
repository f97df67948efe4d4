"""The engine: sustained conditions only, clearing, stable fingerprints, and the same
findings whether records arrive one by one (live) or all at once (replay)."""

from __future__ import annotations

import copy
import itertools

import pytest

from gpuwatch.config import ConfigError, Settings
from gpuwatch.detection import iteration_speed
from gpuwatch.detection.context import Context, Detection
from gpuwatch.detection.engine import (
    RECUR_S,
    Engine,
    Quiet,
    _stamps,
    engine_from_settings,
    fingerprint,
)
from gpuwatch.detection.rules import Rule
from gpuwatch.records import Event, Record, Step
from gpuwatch.telemetry import Telemetry
from tests.runs import START, meta, samples, steps, topology


def starving_then_fed() -> list[Record]:
    """20 s of healthy steps, 30 s starved for data, 60 s healthy again."""
    return [meta(), *steps(20), *steps(30, start=START + 20, first=201, data_s=0.07),
            *steps(60, start=START + 50, first=501),
            *samples("host", 110, {"workers": 0.0})]


def ordered(records: list[Record]) -> list[Record]:
    return sorted(records, key=lambda r: getattr(r, "t", 0.0))


def test_condition_is_raised_once_sustained_then_resolved() -> None:
    engine = engine_from_settings(Settings(), "rank")
    changes = []
    for r in ordered(starving_then_fed()):
        changes += engine.feed([r])
    changes += engine.close()
    assert [(f.detector, f.state) for f in changes] == [("data_starvation", "active"),
                                                       ("data_starvation", "resolved")]
    raised, resolved = changes
    onset = START + 20
    assert onset < raised.first_seen < onset + 10  # the window fills past the threshold
    assert raised.last_seen - raised.first_seen >= 3  # for_s: 3 s sustained before raising
    assert resolved.last_seen > START + 50
    assert raised.fingerprint == resolved.fingerprint == fingerprint("job", "data_starvation", [0])


def test_live_and_replay_feeding_give_identical_findings() -> None:
    records = ordered(starving_then_fed())
    live = engine_from_settings(Settings(), "rank")
    for r in records:
        live.feed([r])
    live.close()
    replay = engine_from_settings(Settings(), "rank")
    replay.feed(records)
    replay.close()
    assert live.findings == replay.findings and live.findings


@pytest.mark.parametrize("starved_s, reported", [(2.0, False), (6.0, True)])
def test_only_a_condition_that_lasts_for_s_is_reported(starved_s: float, reported: bool) -> None:
    """With a 1 s window the share crosses at once; for_s (3 s) decides."""
    records = [meta(), *steps(20),
               *steps(starved_s, start=START + 20, first=201, data_s=0.09),
               *steps(40, start=START + 20 + starved_s, first=1000),
               *samples("host", 80, {"workers": 0.0})]
    engine = engine_from_settings(
        Settings(detectors={"data_starvation": {"window_s": 1, "min_steps": 1}}), "rank")
    engine.feed(ordered(records))
    engine.close()
    assert bool(engine.findings) is reported


def test_bad_overrides_and_unknown_gpus_are_one_line_errors() -> None:
    with pytest.raises(ConfigError, match=r"unknown detector 'detectors.nope'"):
        engine_from_settings(Settings(detectors={"nope": {"x": 1}}), "rank")
    with pytest.raises(ConfigError, match=r"unknown key 'detectors.hang.min_secs'"):
        engine_from_settings(Settings(detectors={"hang": {"min_secs": 1}}), "rank")
    with pytest.raises(ConfigError, match=r"detectors.hang.window_s"):
        engine_from_settings(Settings(detectors={"hang": {"window_s": -1}}), "rank")
    with pytest.raises(ConfigError, match=r"unknown GPU 'H1000'"):
        engine_from_settings(Settings(target_gpu="H1000"), "rank")
    with pytest.raises(ConfigError, match=r"unknown gpu_model"):
        engine_from_settings(Settings(gpu_model="Voodoo 2"), "rank")
    # a misspelt detector silenced nothing, without a word
    with pytest.raises(ConfigError, match=r"unknown detector 'data_starvaton' in 'slack.silence'"):
        engine_from_settings(Settings(slack={"silence": ["data_starvaton"]}), "rank")


def shortcuts_agree(engine: Engine, records: list[Record]) -> tuple[int, int]:
    """Feed ``records``; at each evaluation, a copy of the engine that takes neither
    shortcut (``Quiet``: no rule asked; ``Calm``: no bookkeeping either) and asks every
    rule (reusing a judgement only as ``_judge`` allows) must raise, resolve and keep
    exactly the same findings. Returns how many evaluations were quiet, and calm."""
    quiet = calm = 0
    for r in records:
        engine.view(r.rank).add_one(r)
        t = getattr(r, "t", 0.0)
        if t < engine.next_eval:
            continue
        full = copy.deepcopy(engine)
        # (what the last evaluation saw is kept: a refresh due waits for a later step)
        full._quiet = Quiet(stamps=dict(engine._quiet.stamps))
        unchanged = engine._quiet.holds(_stamps(engine._judged_ranks()), t)
        quiet += unchanged
        calm += unchanged and t < engine._calm.until
        assert engine.observe(t) == full.observe(t)
        assert engine.findings == full.findings
    return quiet, calm


def test_a_quiet_evaluation_concludes_what_judging_again_would() -> None:
    """Multi-second steps: most evaluations see no new step and reuse every judgement,
    most of them without even the bookkeeping, no deadline being near; through a
    starvation that starts and stops between steps, judgements due for a refresh, and
    a stall long enough to be a hang, they conclude what a full evaluation would."""
    records = ordered([
        meta(), *steps(120, wall=4.0), *steps(120, wall=4.0, start=START + 120, first=31,
                                             data_s=2.4),
        *steps(120, wall=4.0, start=START + 240, first=61),
        *samples("host", 500, {"workers": 0.0})])  # the last 140 s without a step
    engine = engine_from_settings(Settings(), "rank")
    quiet, calm = shortcuts_agree(engine, records)
    assert quiet > 100 and calm > 100  # (the quiet and calm paths were taken, often)
    assert {(f.detector, f.state) for f in engine.findings.values()} == {
        ("data_starvation", "resolved"), ("hang", "active")}


def last_step_waited(view: Telemetry, rule: Rule, ctx: Context, now: float) -> Detection | None:
    """A detector as jumpy as a condition can be: its rank's newest step waited on data."""
    return Detection({}, [view.rank]) if view.steps and view.steps[-1].data_s > 0 else None


def test_a_condition_back_before_its_finding_resolves_is_not_seen_until_it_holds() -> None:
    """An active finding whose condition stops, then comes back for less than ``for_s``
    before the finding's hold runs out: it is not seen again until the condition has
    held again, so it resolves when a full evaluation would resolve it, shortcuts or
    not."""
    engine = engine_from_settings(Settings(), "rank")
    engine.rules = {"data_starvation": engine.rules["data_starvation"]}
    engine.rank_detectors = {"data_starvation": last_step_waited}
    waiting = {*range(25, 35), *range(37, 39)}  # steps that waited: on 40 s, back for 8
    records = ordered([meta(), *samples("host", 320, {"workers": 0.0}), *(
        Step(rank=0, step=k, t=START + 4.0 * k, wall_s=4.0, compute_s=3.0,
             data_s=1.0 if k in waiting else 0.0) for k in range(1, 80))])
    _, calm = shortcuts_agree(engine, records)
    (finding,) = engine.findings.values()
    assert finding.state == "resolved" and calm > 100


def test_a_time_to_finish_is_judged_once_a_minute_and_afresh_when_the_log_ends() -> None:
    """iteration_speed's projection of hours to go stands for its rule's ``refresh_s``
    (a minute) while it finds something, not at every eighth of its window (a few
    steps); the log's end judges it afresh, so its steps to go are those left then."""
    calls: list[tuple[float, bool]] = []  # (when, whether it found something)

    def counted(view: Telemetry, rule: Rule, ctx: Context, now: float) -> Detection | None:
        found = iteration_speed.detect(view, rule, ctx, now)
        calls.append((now, found is not None))
        return found

    engine = engine_from_settings(Settings(total_steps=100_000), "rank")
    engine.rank_detectors = {"iteration_speed": counted}
    records = [meta(), topology("NVIDIA H100 80GB HBM3", 80e9), *steps(1200, wall=4.0)]
    engine.feed(ordered(records))
    engine.close()
    finding = next(iter(engine.findings.values()))
    assert finding.detector == "iteration_speed"
    last = max(r.step for r in records if isinstance(r, Step))
    assert finding.evidence["remaining_steps"] == 100_000 - last
    # (the first two: found, then its own finding explains the rank; the last: the end)
    found = [t for t, hit in calls if hit][1:-1]
    assert len(found) >= 15  # (judged from its first 100 s on)
    assert all(b - a >= 60 for a, b in itertools.pairwise(found))


def test_a_rules_refresh_can_be_overridden_and_is_checked() -> None:
    engine = engine_from_settings(
        Settings(detectors={"iteration_speed": {"refresh_s": 5}}), "rank")
    assert engine.rules["iteration_speed"].refresh_s == 5
    with pytest.raises(ConfigError, match=r"detectors.iteration_speed.refresh_s"):
        engine_from_settings(Settings(detectors={"iteration_speed": {"refresh_s": -1}}), "rank")


def test_a_condition_that_ended_resolves_though_steps_come_unevenly() -> None:
    """A starved loader fixed at 300 s, the steps from then on 1 s, 1 s and 3.5 s (a
    metric logged every third): a window sized by the median step holds fewer than its
    minimum of them, and is filled back to that minimum rather than left unjudged, so
    the finding resolves (one standing while its window lacked steps stood for good)."""
    records = [meta(), *steps(300, wall=1.0, data_s=0.45)]
    t, n = START + 300, 301
    while t < START + 1200:
        for wall in (1.0, 1.0, 3.5):
            t += wall
            records.append(Step(rank=0, step=n, t=t, wall_s=wall, data_s=0.03 * wall,
                                compute_s=0.97 * wall, samples=32))
            n += 1
    records += samples("host", 1200, {"workers": 8.0, "workers_cpu_ratio": 0.97})
    engine = engine_from_settings(Settings(), "rank")
    changes = engine.feed(ordered(records)) + engine.close()
    assert [(f.detector, f.state) for f in changes] == [("data_starvation", "active"),
                                                       ("data_starvation", "resolved")]
    assert changes[1].last_seen < START + 400


@pytest.mark.parametrize("for_s", [3.0, 20.0])
def test_a_condition_seen_just_before_an_eval_is_not_raised_through_it(for_s: float) -> None:
    """8 starved steps (a blip), then a 120 s eval between steps: the window reaching
    back over the eval keeps judging the blip, which must not count as the condition
    holding for its ``for_s`` meanwhile (scaled: 3.75 s or 25 s); it is raised only
    where the blip itself lasted about that long, before its rank counts as between
    steps (``stall_s``: 10 s)."""
    records = [meta(), *steps(200, wall=1.0, data_s=0.03),
               *steps(8, wall=1.0, start=START + 200, first=201, data_s=0.9)]
    records += [Event(0, START + 208 + i, "progress", {"loader_batches": 4, "eval_batches": 4})
                for i in range(1, 120)]
    records += steps(200, wall=1.0, start=START + 328, first=300, data_s=0.03)
    records += samples("host", 540, {"workers": 8.0, "workers_cpu_ratio": 0.2})
    engine = engine_from_settings(
        Settings(detectors={"data_starvation": {"for_s": for_s}}), "rank")
    raised = [f for f in engine.feed(ordered(records)) + engine.close()
              if f.state == "active"]
    if for_s > 8:
        assert raised == []
    else:
        assert len(raised) == 1 and raised[0].last_seen <= START + 208 + 10


def starved_in_bursts(bursts: int, fed_s: float, tail_s: float,
                      fed: list[float] | None = None) -> list[Record]:
    """0.5 s steps: 20 s healthy, then ``bursts`` times 20 s starved for data and
    ``fed_s`` healthy (or each of ``fed``'s seconds in turn), then ``tail_s`` healthy."""
    records: list[Record] = [meta(), *steps(20, wall=0.5)]
    t, n = START + 20, 41
    spans = [part for gap in (fed or [fed_s] * bursts) for part in ((20, 0.4), (gap, 0.02))]
    for span, data_s in [*spans, (tail_s, 0.02)]:
        records += steps(span, wall=0.5, start=t, first=n, data_s=data_s)
        t, n = t + span, n + round(span / 0.5)
    return ordered([*records, *samples("host", t - START, {"workers": 0.0})])


def test_a_condition_that_comes_and_goes_is_one_finding_not_an_alert_at_every_return() -> None:
    """A loader starved 20 s in every 80 (storage that stalls now and then): after its
    first return the finding is held through absences like the one before it, so it
    is raised twice, not at every burst, and resolves once the bursts stop."""
    engine = engine_from_settings(Settings(), "rank")
    changes = engine.feed(starved_in_bursts(8, 60, 400)) + engine.close()
    assert [f.state for f in changes] == ["active", "resolved", "active", "resolved"]
    last_burst_end = START + 20 + 8 * 80 - 60
    assert last_burst_end + 60 < changes[-1].last_seen < last_burst_end + 2 * 80


def test_a_condition_back_after_a_long_quiet_is_new_and_held_as_usual() -> None:
    """A return more than twice ``RECUR_S`` after the condition was last seen is a new
    episode: it resolves on the rule's own hold (seconds), as the first did."""
    engine = engine_from_settings(Settings(), "rank")
    quiet = 2 * RECUR_S + 60
    changes = engine.feed(starved_in_bursts(2, quiet, 100)) + engine.close()
    assert [f.state for f in changes] == ["active", "resolved"] * 2
    second_end = START + 20 + 2 * (20 + quiet) - quiet
    assert changes[-1].last_seen < second_end + 30


def test_a_condition_that_came_and_went_then_stopped_long_before_the_end_is_resolved() -> None:
    """Bursts of starvation 200 s apart, then fed to the log's end 5 minutes after the
    last (a fix deployed): held through absences like those (6 minutes) as it recurred, the
    finding was still active in the report at the end; the end judges it on the rule's
    own hold."""
    engine = engine_from_settings(Settings(), "rank")
    changes = engine.feed(starved_in_bursts(3, 200, 0))
    assert [f.state for f in changes][-1] == "active"  # (held: the last burst is near)
    records = steps(100, wall=0.5, start=START + 20 + 3 * 220, first=41 + 3 * 440,
                    data_s=0.02)
    engine.feed(records)
    assert [f.state for f in engine.close()] == ["resolved"]


def test_a_return_just_past_the_longest_hold_keeps_it() -> None:
    """A condition back after a minute, then gone 11 minutes, then back every 2.5
    minutes: the return after 11 minutes (past the longest hold, 10) dropped the hold,
    so the finding was raised and cleared again at each return after it. It is held
    from then on."""
    engine = engine_from_settings(Settings(), "rank")
    changes = engine.feed(starved_in_bursts(0, 0, 0, fed=[60, RECUR_S + 60, 150, 150, 150]))
    assert [f.state for f in changes] == ["active", "resolved"] * 2 + ["active"]
