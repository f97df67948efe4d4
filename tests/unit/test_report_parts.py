"""The parts behind report, compare and the tracker figures, on constructed records."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpuwatch.detection.compare import compare, projected_speedup
from gpuwatch.detection.run_profile import MAX_BINS, Bins, RunProfile
from gpuwatch.records import Event, Finding, Record, Sample
from gpuwatch.sinks.html_report import render
from gpuwatch.sinks.report import findings_text
from gpuwatch.sinks.svg import Axis, lines, nice_ticks
from gpuwatch.sinks.trackers import figures
from gpuwatch.telemetry import Telemetry
from gpuwatch.vocabulary import PARTS
from tests.runs import GB, START, meta, samples, steps, topology


def run_of(records: list[Record]) -> RunProfile:
    out = RunProfile()
    out.add(sorted(records, key=lambda r: getattr(r, "t", 0.0)))
    return out


def test_bins_stay_bounded_and_keep_every_value() -> None:
    bins = Bins(1, 1.0)
    n = 10_000
    for i in range(n):
        bins.add(float(i), (float(i % 7),))
    assert len(bins.sums) <= MAX_BINS
    assert sum(acc[0] for acc in bins.sums.values()) == n
    assert sum(acc[2] for acc in bins.sums.values()) == sum(i % 7 for i in range(n))
    keys = [k for k, _ in bins.means()]
    assert keys == sorted(keys) and keys[0] < n / MAX_BINS * 2 and keys[-1] > n * 0.95
    assert all(peak == [6.0] for peak in bins.maxima.values())


def test_bins_stay_bounded_when_a_later_log_starts_earlier() -> None:
    bins = Bins(1, 1.0)
    for key in [*range(1000, 2000), *range(0, 1000)]:  # rank 1's log read after rank 0's
        bins.add(float(key), (1.0,))
    assert len(bins.sums) <= MAX_BINS
    assert sum(acc[0] for acc in bins.sums.values()) == 2000


def test_phases_per_unit_add_up_to_the_step() -> None:
    run = run_of([meta(), *steps(30, wall=0.2, data_s=0.05, optimizer_s=0.03,
                                 collective_s=0.02, samples=16, tokens=16 * 512)])
    assert run.unit() == "token"
    per = run.seconds_per_unit("token")
    assert per is not None
    assert per["step"] == pytest.approx(0.2 / (16 * 512))
    assert sum(per[p] for p in PARTS) == pytest.approx(per["step"])
    assert per["collective"] == pytest.approx(0.02 / (16 * 512))
    assert per["compute"] == pytest.approx((0.2 - 0.05 - 0.03 - 0.02) / (16 * 512))


def test_a_doubled_batch_compares_per_sample_not_per_step() -> None:
    """Same time per sample, twice the batch: per step AFTER is 2x slower, per sample even."""
    before = run_of([meta(), *steps(30, wall=0.1, samples=32)])
    after = run_of([meta(), *steps(30, wall=0.2, samples=64)])
    c = compare(before, after)
    assert c.unit == "sample"
    assert c.speedup["step"] == pytest.approx(1.0)
    assert not any("per step" in n for n in c.notes)


def test_runs_without_counts_compare_per_step_and_say_so() -> None:
    before = run_of([meta(), *steps(30, wall=0.1, samples=0)])
    after = run_of([meta(), *steps(30, wall=0.05, samples=0)])
    c = compare(before, after)
    assert c.unit == "step" and c.speedup["step"] == pytest.approx(2.0)
    assert any("compared per step" in n for n in c.notes)


def test_a_run_with_no_steps_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="AFTER has no training steps"):
        compare(run_of([meta(), *steps(30, wall=0.1)]), run_of([meta()]))


def finding(projection: dict[str, Any], detector: str = "fits_on_paper") -> Finding:
    return Finding(detector=detector, verdict="move_to_h100", severity="warning",
                   summary="s", action="a", evidence={}, ranks=[0], first_seen=START,
                   last_seen=START, fingerprint=detector, projection=projection)


@pytest.mark.parametrize(("projection", "expected"), [
    ({"speedup_ratio": 2.0}, (2.0, None, None)),
    ({"speedup_ratio": 2.5, "speedup_low_ratio": 1.8, "speedup_high_ratio": 3.1},
     (2.5, 1.8, 3.1)),
    ({"step_seconds_now": 1.0, "step_seconds_projected": 0.5,
      "step_seconds_projected_fastest": 0.4, "step_seconds_projected_slowest": 0.8},
     (2.0, 1.25, 2.5)),
])
def test_projected_speedup_reads_whichever_keys_a_projection_has(
        projection: dict[str, Any], expected: tuple[float, float | None, float | None]) -> None:
    got = projected_speedup(projection)
    assert got is not None and (got.speedup, got.low, got.high) == pytest.approx(expected)


def test_projection_error_and_range_against_what_happened() -> None:
    before = run_of([meta(), topology("NVIDIA GeForce RTX 5090", 32 * GB),
                     *steps(30, wall=0.3, samples=8)])
    after = run_of([meta(), topology("NVIDIA H100 80GB HBM3", 80 * GB),
                    *steps(30, wall=0.1, samples=8)])
    promise = finding({"target": "H100 SXM", "speedup_ratio": 2.0, "speedup_low_ratio": 1.5,
                       "speedup_high_ratio": 2.5,
                       "parts_seconds_now": {"compute": 0.3},
                       "parts_seconds_projected": {"compute": 0.15}})
    c = compare(before, after, [finding({"target": "B200", "speedup_ratio": 9.0}), promise])
    assert c.projection is not None
    assert c.projection.measured == pytest.approx(3.0)
    assert c.projection.error_ratio == pytest.approx(0.5)  # 3x measured, 2x promised
    assert c.projection.within_range is False
    assert c.projection.phases["compute"] == pytest.approx((2.0, 3.0))
    assert c.cost_ratio is not None and c.before.usd_per_unit and c.after.usd_per_unit
    html = render(after, [promise], c)
    assert "1.5\u2013" "2.5\u00d7 (2.0\u00d7 at the middle)" in html and 'id="compare"' in html


def test_memory_headroom_is_the_peak_against_the_card() -> None:
    run = run_of([meta(), topology("NVIDIA GeForce RTX 5090", 32 * GB),
                  *samples("nvml", 10, {"gpu_memory_used_bytes": 24 * GB,
                                        "gpu_memory_total_bytes": 32 * GB,
                                        "gpu_utilization_ratio": 0.9}, gpu=0),
                  *steps(30, wall=0.1)])
    c = compare(run, run)
    assert c.before.memory_headroom_ratio == pytest.approx(0.25)
    html = render(run, [])
    assert 'data-plot="gpu_memory"' in html and "limit 32 GB" in html


def test_report_renders_whatever_a_projection_carries() -> None:
    run = run_of([meta(), *steps(30, wall=0.1)])
    html = render(run, [finding({"target": "H100 SXM", "speedup_low_ratio": 1.2,
                                 "speedup_ratio": 1.5, "speedup_high_ratio": 1.9,
                                 "future_key_seconds": 3.0,
                                 "assumptions": ["an assumption"]})])
    assert "1.2\u20131.9\u00d7 (1.5\u00d7 at the middle)" in html and "an assumption" in html
    assert "<td>Future key</td><td>3 s</td>" in html  # a key it does not know: in its unit
    assert "speedup_low_ratio" not in html  # (no raw keys)
    assert render(run, [finding({"target": "H100 SXM"})])  # nothing to read: still a page


def test_tracker_figures_from_a_rank_s_telemetry() -> None:
    view = Telemetry()
    view.add([meta(), *steps(20, wall=0.1, data_s=0.04, samples=8),
              *samples("nvml", 20, {"gpu_utilization_ratio": 0.5,
                                    "gpu_memory_used_bytes": 3 * GB,
                                    "gpu_memory_total_bytes": 32 * GB}, gpu=0)])
    now = START + 20
    resolved = dataclasses.replace(finding({}, "straggler"), state="resolved")
    out = figures(view, [finding({}, "data_starvation"), finding({}, "checkpoint_overhead"),
                         resolved], now)
    assert out["gpuwatch/step_seconds"] == pytest.approx(0.1)
    assert out["gpuwatch/data_share_ratio"] == pytest.approx(0.4)
    assert sum(v for k, v in out.items() if k.endswith("_share_ratio")) == pytest.approx(1.0)
    assert out["gpuwatch/samples_per_second"] == pytest.approx(80)
    assert out["gpuwatch/gpu_utilization_ratio"] == 0.5
    assert out["gpuwatch/move_to_h100/data_starvation"] == 1.0
    assert out["gpuwatch/move_to_h100/straggler"] == 0.0  # resolved: 0, so a chart drops
    assert out["gpuwatch/findings_active"] == 2.0
    assert "gpuwatch/tokens_per_second" not in out  # not counted: absent, never 0


def test_tracker_figures_leave_out_the_gpu_when_there_is_none() -> None:
    view = Telemetry()
    view.add([meta(), Event(0, START, "host_only", {}),
              Sample(0, START + 1, "host", {"system_cpu_ratio": 0.5})])
    out = figures(view, [], START + 2)
    assert not any(k.startswith("gpuwatch/gpu") for k in out) and "gpuwatch/step_seconds" not in out


def test_nice_ticks_cover_the_range_in_round_steps() -> None:
    assert nice_ticks(0, 1) == pytest.approx([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    assert nice_ticks(0, 0.37) == pytest.approx([0, 0.1, 0.2, 0.3])
    assert nice_ticks(5, 5) == [5]


@settings(max_examples=300, deadline=None)
@given(st.floats(allow_nan=False, allow_infinity=False),
       st.floats(allow_nan=False, allow_infinity=False))
def test_nice_ticks_of_any_finite_range_are_few_finite_and_within_it(a: float, b: float) -> None:
    """A run log's values may be anything finite: step walls of 5e-324 s made the
    report a traceback (the step underflowed to 0 before its logarithm)."""
    lo, hi = min(a, b), max(a, b)
    ticks = nice_ticks(lo, hi)
    assert ticks and len(ticks) <= 12 and all(math.isfinite(t) for t in ticks)
    slack = (hi - lo) * 1e-8
    assert all(lo - slack <= t <= hi + slack for t in ticks)


@settings(max_examples=200, deadline=None)
@given(st.floats(allow_nan=False, allow_infinity=False, min_value=-1e300, max_value=1e300),
       st.floats(allow_nan=False, allow_infinity=False, min_value=-1e300, max_value=1e300))
def test_a_chart_of_one_point_anywhere_is_drawn(x: float, y: float) -> None:
    """One step stamped 1e17 s: x + 1 is x past 2**53, so the axis had no width and the
    report was a ZeroDivisionError."""
    chart = lines("x", "x", {"a": ([x], [y])}, x_axis=Axis(str, "t"), fmt_y=str)
    assert chart.startswith("<") and "nan" not in chart


def test_a_rank_finding_alike_on_every_rank_is_shown_once_naming_them() -> None:
    """A data-parallel job's 8 ranks each find the same time to finish: one block names
    ranks 0-7; a job finding naming its own ranks, and a rank finding unlike the rest
    (another verdict), stay as they are."""
    def found(detector: str, ranks: list[int], verdict: Any = "move_to_h100") -> Finding:
        return Finding(detector=detector, verdict=verdict, severity="info",
                       summary=f"{detector} on {ranks}", action="do", evidence={},
                       ranks=ranks, first_seen=START, last_seen=START + 1,
                       fingerprint=f"{detector}{ranks}", job="job")
    findings = [*(found("iteration_speed", [r]) for r in (3, 0, 1, 2, 4, 5, 6, 7)),
                found("iteration_speed", [9], "info"), found("straggler", [2], "fix_here"),
                found("straggler", [5], "fix_here")]
    text = findings_text(findings)
    assert text.count("iteration_speed - info, ranks 0\u20137 (rank 0's figures)") == 1
    assert "iteration_speed on [0]" in text and "iteration_speed on [3]" not in text
    assert "iteration_speed - info, rank 9" in text
    twice = findings_text([found("hang", [1], "fix_here"), found("hang", [1], "fix_here")])
    assert twice.count("hang - info, rank 1\n") == 1  # two attempts of one rank
    job = findings_text([found("sync_bottleneck", list(range(16)), "fix_here")])
    assert "sync_bottleneck - info, ranks 0\u201315\n" in job  # a job finding's own ranks
    assert "straggler - info, rank 2" in text and "straggler - info, rank 5" in text
    html = render(run_of([meta(), *steps(5)]), findings)
    assert html.count("ranks 0\u20137 (rank 0&#x27;s figures)") == 1


def test_ranks_saying_different_things_are_not_folded_into_one() -> None:
    """A hang: three ranks wait in a collective, the fourth stopped elsewhere. Folding by
    detector alone showed rank 0's words for all four and hid the rank that stopped."""
    def hung(rank: int, summary: str) -> Finding:
        return Finding(detector="hang", verdict="fix_here", severity="critical",
                       summary=summary, action="do", evidence={}, ranks=[rank],
                       first_seen=START, last_seen=START + 1, fingerprint=f"h{rank}", job="job")
    waiting = [hung(r, f"Rank {r} has waited {180 + r} s in a collective") for r in range(3)]
    text = findings_text([*waiting, hung(3, "Rank 3 is not in a collective or a marked phase")])
    assert "ranks 0\u20132 (rank 0's figures)" in text
    assert "critical, rank 3\n  Rank 3 is not in a collective" in text


@pytest.mark.parametrize("started", [-1e308, 1e300, float("nan")])
def test_a_start_time_no_calendar_holds_leaves_the_date_out(started: float) -> None:
    """A damaged meta line's ``started``: the report renders, without a start date."""
    html = render(run_of([dataclasses.replace(meta(), started=started), *steps(5)]), [])
    assert "<header>" in html and "started ;" in html


def test_the_checkpoint_section_gives_the_saving_rank_s_share_beside_the_mean() -> None:
    """Rank 0 alone saves (20% of its steps): the all-rank mean (5% on 4 ranks) is not
    the figure checkpoint_overhead judges, so the saving rank's share is shown too."""
    records: list[Record] = []
    for r in range(4):
        records += [meta(r, 4), *steps(10, rank=r, checkpoint_s=0.02 if r == 0 else 0.0)]
    records.append(Event(0, START + 5, "checkpoint_save", {"seconds": 2.0, "bytes": 1e9}))
    html = render(run_of(records), [])
    assert "share of step time, all ranks</td><td>5.0%" in html
    assert "share of rank 0&#x27;s step time</td><td>20%" in html


def test_json_outputs_hold_no_number_json_cannot_read() -> None:
    """A hostile log's 1e308-second steps made a comparison's speed 0 and its time inf:
    ``compare`` raised ZeroDivisionError and ``--json`` printed ``Infinity``, which no
    JSON parser reads. Such a number is null; a speed of 0 tells nothing."""
    from gpuwatch.sinks import comparison, fmt

    def strict(text: str) -> object:
        def refuse(name: str) -> None:
            raise ValueError(name)
        return json.loads(text, parse_constant=refuse)

    assert strict(fmt.json_text({"step": float("inf"), "parts": [float("nan"), 1.5]})) == {
        "step": None, "parts": [None, 1.5]}
    assert comparison._speed(0.0) == "" and comparison._speed(float("inf")) == ""
    assert comparison._speed(2.0) == "2.00x faster"


def test_a_time_axis_in_minutes_ticks_on_round_minutes() -> None:
    """A 4-minute run read in minutes: ticks were round seconds divided by 60
    (0.8333, 1.667, 2.5); they fall on round minutes."""
    chart = lines("x", "x", {"a": ([0.0, 250.0], [0.0, 1.0])},
                  x_axis=Axis(lambda v: f"{v / 60:.4g}", "minutes since start", 60.0),
                  fmt_y=str)
    ticks = re.findall(r'text-anchor="middle">([^<]*)</text>', chart)[:-1]
    assert ticks and all(float(t) == round(float(t)) for t in ticks), ticks
    assert "4" in ticks and "minutes since start" in chart


@pytest.mark.parametrize("exception_first", [True, False])
def test_an_oom_told_by_its_exception_and_by_the_allocator_is_one(
        exception_first: bool) -> None:
    """An OOM that leaves a step is told by the exception and by the allocator's
    counter, in either order: one OOM, for the detectors and the report; a caught one
    (the counter alone) and one on a rank without allocator readings are one each."""
    first, second = (START + 1, START + 1.5) if exception_first else (START + 1.5, START + 1)
    typed = Event(0, first, "oom", {"type": "OutOfMemoryError"})
    counted = Event(0, second, "oom", {"count": 1, "source": "allocator"})
    pair = [typed, counted] if exception_first else [counted, typed]
    caught = Event(0, START + 9, "oom", {"count": 1, "source": "allocator"})
    no_allocator = Event(1, START + 5, "oom", {"type": "OutOfMemoryError"})
    view = Telemetry()
    view.add([*pair, caught])
    assert view.ooms_since(0.0) == 2
    assert run_of([meta(), meta(1, 2), *pair, caught, no_allocator]).ooms == 3
