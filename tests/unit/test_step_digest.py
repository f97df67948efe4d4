"""Step digests: a window over them answers as the same window over the samples they
digest, and the job-scope detectors ask them nothing they do not digest."""

from __future__ import annotations

import heapq
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpuwatch.config import Settings
from gpuwatch.detection.engine import JOB_DETECTORS, engine_from_settings
from gpuwatch.detection.step_digest import (
    DIGEST_SPAN_S,
    DigestRank,
    StepDigest,
    StepDigester,
)
from gpuwatch.records import Record, Sample, Step
from gpuwatch.series import Figure
from gpuwatch.telemetry import Telemetry
from tests.runs import START, meta
from tests.scenarios import JOBS, simulate

KEYS = [("nvml", "gpu_utilization_ratio"), ("nvml", "gpu_power_watts"),
        ("nccl", "nccl_bus_bytes_total")]


def rank_records(gaps: list[float], per_step: list[int], values: list[float]) -> list[Record]:
    """One rank: steps ``gaps`` apart (seconds), each after ``per_step`` NVML and NCCL
    samples spread over it (two GPUs; a counter that only rises); the job ends after
    the samples of one more gap and no step (a run's last readings)."""
    out: list[Record] = [meta()]
    t, counter, k = START, 0.0, 0
    for n, (gap, count) in enumerate(zip([*gaps, gaps[0]], per_step, strict=False), 1):
        if n > len(gaps):
            gap = min(gap, DIGEST_SPAN_S)  # (under a span: only the end closes them)
        for i in range(count):
            at = t + gap * (i + 1) / (count + 1)
            v = values[k % len(values)]
            k += 1
            counter += abs(v)
            out.append(Sample(0, at, "nvml", {"gpu_utilization_ratio": v % 1,
                                              "gpu_power_watts": 300 + v}, gpu=k % 2))
            out.append(Sample(0, at, "nccl", {"nccl_bus_bytes_total": counter}))
            out.append(Sample(0, at, "host", {"workers_cpu_ratio": 0.5}))
        t += gap
        if n <= len(gaps):
            out.append(Step(rank=0, step=n, t=t, wall_s=gap, compute_s=gap))
    return out


def same(a: Figure | None, b: Figure | None) -> bool:
    if a is None or b is None:
        return a is b
    return (a.count, a.low, a.high, a.last, a.gpus) == (b.count, b.low, b.high, b.last, b.gpus) \
        and abs(a.total - b.total) <= 1e-9 * max(1.0, abs(a.total))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0.05, 30.0), min_size=2, max_size=30),
       st.lists(st.integers(0, 8), min_size=2, max_size=30),
       st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=20))
def test_from_a_digest_s_close_a_window_of_digests_is_that_of_their_samples(
        gaps: list[float], per_step: list[int], values: list[float]) -> None:
    """From each digest's close, the digests' figures and counter rises equal the
    samples' over the same span: their count, sum, least, greatest, newest and GPUs;
    the log's end closes the readings after its last step."""
    records = rank_records(gaps, per_step, values)
    raw, digested, digester = Telemetry(), DigestRank(), StepDigester()
    closes = []
    for r in records:
        raw.add_one(r)
        item = digester.add(r)
        if isinstance(item, StepDigest):
            digested.add_digest(item)
            closes.append(item.t)
        elif item is not None:
            digested.add_one(item)
    last = digester.flush()
    if last is not None:
        digested.add_digest(last)
        closes.append(last.t)
    assert digester.flush() is None  # (nothing is left open)
    for close in [START, *closes]:
        since = close + 1e-6  # (readings before it closed with it)
        for source, key in KEYS:
            assert same(digested.figure(source, key, since), raw.figure(source, key, since))
            if since <= raw.clock:
                assert digested.counter_rise(source, key, since) == raw.counter_rise(
                    source, key, since)
    assert digested.summarise(START) == raw.summarise(START)
    assert digested.samples == {}  # it holds digests, not samples


def test_a_long_wait_without_steps_is_digested_in_spans() -> None:
    """An eval or a hang: readings keep coming while no step does; a digest closes once
    its readings span DIGEST_SPAN_S, so they count near when they were taken."""
    records: list[Record] = [meta(), Step(rank=0, step=1, t=START, wall_s=1.0, compute_s=1.0)]
    records += [Sample(0, START + s, "nvml", {"gpu_utilization_ratio": 1.0}, gpu=0)
                for s in range(1, 101)]
    digester = StepDigester()
    closed = [item for r in records if isinstance(item := digester.add(r), StepDigest)]
    spans = [d for d in closed if d.step is None]
    counted = sum(d.readings[("nvml", 0, "gpu_utilization_ratio")].n for d in spans)
    assert 100 - (DIGEST_SPAN_S + 1) <= counted < 100  # (the newest are still open)
    end = digester.flush()  # the log ends: they close too
    assert end is not None and end.step is None and end.t == START + 100
    assert counted + end.readings[("nvml", 0, "gpu_utilization_ratio")].n == 100
    assert max(b.t - a.t for a, b in itertools.pairwise(spans)) <= DIGEST_SPAN_S + 1


def test_job_detectors_ask_digested_ranks_only_what_they_digest() -> None:
    """Every multi-rank job of the corpus through a job engine of digested ranks, which
    refuse any question of samples or of a key not digested: no detector fails, and
    the job-scope verdicts the corpus expects are found."""
    for j in JOBS:
        if j.shape.world < 2:
            continue
        engine = engine_from_settings(Settings(**j.settings), "job")
        engine.make_view = DigestRank
        ranks = simulate(j.shape, job=j.name)
        digesters = [StepDigester() for _ in ranks]
        merged = heapq.merge(*[[(getattr(r, "t", 0.0), i, n, r) for n, r in enumerate(rs)]
                               for i, rs in enumerate(ranks)])
        for _, i, _, r in merged:
            if (item := digesters[i].add(r)) is not None:
                engine.take(item)
        engine.close()
        assert engine.errors == 0, j.name
        expected = {(v.detector, v.verdict) for v in j.expected
                    if v.detector in JOB_DETECTORS}
        assert {(f.detector, f.verdict) for f in engine.findings.values()} == expected, j.name


def test_a_digested_rank_refuses_what_it_does_not_digest() -> None:
    rank = DigestRank()
    with pytest.raises(LookupError):
        rank.figure("host", "process_cpu_seconds_total", START)
    with pytest.raises(LookupError):
        rank.gpu_samples()
    assert rank.figure("nvml", "gpu_utilization_ratio", START) is None  # digested: none yet
