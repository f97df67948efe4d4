"""The engine: sustained conditions only, clearing, stable fingerprints, and the same
findings whether records arrive one by one (live) or all at once (replay)."""

from __future__ import annotations

import copy

import pytest

from gpuwatch.config import ConfigError, Settings
from gpuwatch.detection.engine import Quiet, engine_from_settings, fingerprint
from gpuwatch.records import Record
from tests.runs import START, meta, samples, steps


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


def test_a_quiet_evaluation_concludes_what_judging_again_would() -> None:
    """Multi-second steps: most evaluations see no new step and reuse every judgement
    (``Quiet``), most of them without even the bookkeeping, no deadline being near
    (``Calm``). At each one, a copy of the engine made to judge everything afresh
    must raise, resolve and keep exactly the same findings: through a starvation that
    starts and stops between steps, judgements due for a refresh, and a stall long
    enough to be a hang."""
    records = ordered([
        meta(), *steps(120, wall=4.0), *steps(120, wall=4.0, start=START + 120, first=31,
                                             data_s=2.4),
        *steps(120, wall=4.0, start=START + 240, first=61),
        *samples("host", 500, {"workers": 0.0})])  # the last 140 s without a step
    engine = engine_from_settings(Settings(), "rank")
    quiet = calm = 0
    for r in records:
        engine.view(r.rank).add_one(r)
        t = getattr(r, "t", 0.0)
        if t < engine.next_eval:
            continue
        afresh = copy.deepcopy(engine)
        # every rule is asked again; what the last evaluation saw is kept (a refresh
        # due waits for a step that came after it)
        afresh._quiet = Quiet(stamps=dict(engine._quiet.stamps))
        quiet += engine._quiet.holds(engine._judged_ranks(), t)
        calm += engine._quiet.holds(engine._judged_ranks(), t) and t < engine._calm.until
        assert engine.observe(t) == afresh.observe(t)
        assert engine.findings == afresh.findings
    assert quiet > 100 and calm > 100  # (the quiet and calm paths were taken, often)
    assert {(f.detector, f.state) for f in engine.findings.values()} == {
        ("data_starvation", "resolved"), ("hang", "active")}
