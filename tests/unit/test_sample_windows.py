"""Sample windows answer from running aggregates exactly what a walk over the window's
samples would: property tests against a naive recomputation over the kept samples."""

from __future__ import annotations

import math
import statistics

from hypothesis import given, settings
from hypothesis import strategies as st

from gpuwatch.records import Sample, Step
from gpuwatch.series import Series
from gpuwatch.telemetry import MAX_SAMPLES, Telemetry

KEYS = ("a", "b")
value = st.floats(min_value=-1e12, max_value=1e12, allow_nan=False, allow_infinity=False)
# (time gap, gpu, {key: value}) per sample; a key may be missing from a sample
sample = st.tuples(st.sampled_from([0.0, 0.5, 1.0, 3.0]), st.sampled_from([None, 0, 1]),
                   st.dictionaries(st.sampled_from(KEYS), value, max_size=2))


def _naive(view: Telemetry, source: str, key: str, since: float) -> list[Sample]:
    """The samples a walk over the bounded windows finds (time order, GPUs merged)."""
    kept = [s for (src, _), w in view.samples.items() if src == source for s in w
            if s.t >= since and key in s.values]
    return sorted(kept, key=lambda s: s.t)


def _close(a: float, b: float, scale: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9 * max(scale, 1.0))


@settings(max_examples=150, deadline=None)
@given(st.lists(sample, max_size=60), st.lists(sample, max_size=60),
       st.floats(min_value=0, max_value=200))
def test_figure_matches_a_walk_over_the_window(before, after, back):
    """Asked before and after more samples arrive (tracked from the first question on),
    the figure equals the naive one: count, sum, extrema, newest value, GPUs."""
    view, now = Telemetry(), 0.0
    for batch in (before, after):
        now = _feed(view, now, batch)
        for key in KEYS:
            since = now - back
            naive = _naive(view, "nvml", key, since)
            got = view.figure("nvml", key, since)
            if not naive:
                assert got is None
                continue
            values = [s.values[key] for s in naive]
            scale = 1e12 * (len(before) + len(after))  # prefix sums' rounding
            assert got is not None and got.count == len(values)
            assert _close(got.total, math.fsum(values), scale)
            assert got.low == min(values) and got.high == max(values)
            assert got.last == values[-1]
            assert got.gpus == tuple(sorted({s.gpu for s in naive if s.gpu is not None}))


def _feed(view: Telemetry, start: float,
          samples: list[tuple[float, int | None, dict[str, float]]]) -> float:
    """Samples at the given gaps after ``start``; the newest time."""
    t = start
    for gap, gpu, values in samples:
        t += gap
        view.add_one(Sample(0, t, "nvml", values, gpu=gpu))
    return t


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(min_value=0, max_value=1e6), min_size=1, max_size=40),
       st.integers(min_value=0, max_value=40), st.floats(min_value=0, max_value=50))
def test_counter_rise_is_newest_minus_the_last_reading_before_the_window(rises, at, back):
    view = Telemetry()
    total, t = 0.0, 0.0
    for rise in rises:
        t += 1.0
        total += rise
        view.add_one(Sample(0, t, "nccl", {"bytes_total": total}))
    since = t - back
    readings = [(s.t, s.values["bytes_total"]) for s in view.samples[("nccl", None)]]
    before = [v for u, v in readings if u < since]
    base = before[-1] if before else readings[0][1]
    expected = max(readings[-1][1] - base, 0.0)
    assert math.isclose(view.counter_rise("nccl", "bytes_total", since), expected,
                        rel_tol=1e-12, abs_tol=1e-6)


def test_windows_drop_exactly_what_the_bounded_sample_window_dropped():
    """A key missing from some samples still ages out with its probe's window, and a
    series tracked late is backfilled from what the window kept."""
    view = Telemetry()
    view.add_one(Sample(0, 0.0, "nvml", {"a": 1.0}))
    assert view.figure("nvml", "a", 0.0) is not None  # tracked from here on
    for i in range(1, MAX_SAMPLES + 10):
        values = {"a": float(i)} if i % 2 else {}
        view.add_one(Sample(0, float(i), "nvml", values))
    got = view.figure("nvml", "a", float("-inf"))
    naive = [s.values["a"] for s in _naive(view, "nvml", "a", float("-inf"))]
    assert got is not None and got.count == len(naive) and got.low == min(naive)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.floats(min_value=0.1, max_value=5), st.booleans()), max_size=40),
       st.floats(min_value=0, max_value=100))
def test_uninterrupted_leaves_out_what_interrupted_says(steps, back):
    """Readings during interruptions (long steps) are left out exactly as ``interrupted``
    tells them apart."""
    view = Telemetry()
    t, n = 0.0, 0
    for wall, long in [(1.0, False)] * 12 + steps:
        wall = wall * 10 if long else wall
        start = t
        while t + 0.5 < start + wall:  # samples through the step
            t += 0.5
            view.add_one(Sample(0, t, "nvml", {"gpu_utilization_ratio": 0.1 + n % 7}, gpu=0))
            n += 1
        t = start + wall
        view.add_one(Step(rank=0, step=n, t=t, wall_s=wall, compute_s=wall))
    since = t - back
    kept = [s for s in _naive(view, "nvml", "gpu_utilization_ratio", since)
            if not view.interrupted(s.t)]
    count, total, gpus = view.uninterrupted("nvml", "gpu_utilization_ratio", since)
    assert count == len(kept)
    if kept:
        assert math.isclose(total / count,
                            statistics.fmean(s.values["gpu_utilization_ratio"] for s in kept))
        assert gpus == (0,)


@settings(max_examples=200, deadline=None)
@given(st.lists(value, min_size=1, max_size=300), st.data())
def test_series_extrema_and_sums_over_any_suffix(values, data):
    """The raw series: trimmed by sequence number and compacted, any suffix's sums and
    extrema are those of the kept readings."""
    series = Series()
    for i, v in enumerate(values):
        series.append(i, float(i), v)
        oldest = data.draw(st.integers(min_value=0, max_value=i), label="oldest")
        series.trim(oldest)
    kept = list(range(len(values)))
    kept = [i for i in kept if i >= len(values) - len(series)]
    since = data.draw(st.floats(min_value=0, max_value=len(values)), label="since")
    suffix = [values[i] for i in kept if i >= since]
    n, total = series.count_sum(since)
    assert n == len(suffix)
    if suffix:
        assert _close(total, math.fsum(suffix), 1e12 * len(values))  # prefix sums' rounding
        assert series.extrema(since) == (min(suffix), max(suffix))
    else:
        assert series.extrema(since) is None
