"""Allocator probe over a scripted memory_stats()."""

from __future__ import annotations

from gpuwatch.probes.allocator import AllocatorProbe
from gpuwatch.records import Event, Sample


def stats(retries: int, ooms: int) -> dict[str, int]:
    return {"allocated_bytes.all.current": 10, "allocated_bytes.all.peak": 20,
            "reserved_bytes.all.current": 30, "reserved_bytes.all.peak": 40,
            "inactive_split_bytes.all.current": 5, "num_alloc_retries": retries,
            "num_ooms": ooms, "unrelated.key": 1}


def test_samples_and_an_oom_event_when_num_ooms_rises() -> None:
    script = iter([{}, stats(0, 0), stats(2, 0), stats(3, 2), stats(3, 2)])
    probe = AllocatorProbe(lambda: next(script), rank=1, gpu=0, told={})
    assert probe.sample(0.0, 0.0) == []  # CUDA not initialised yet
    first = probe.sample(1.0, 1.0)
    assert len(first) == 1 and isinstance(first[0], Sample)
    assert first[0].values == {
        "allocator_allocated_bytes": 10.0, "allocator_allocated_peak_bytes": 20.0,
        "allocator_reserved_bytes": 30.0, "allocator_reserved_peak_bytes": 40.0,
        "allocator_inactive_split_bytes": 5.0, "allocator_alloc_retries_total": 0.0,
        "allocator_ooms_total": 0.0}
    assert len(probe.sample(2.0, 2.0)) == 1
    third = probe.sample(3.0, 3.0)
    (oom,) = [r for r in third if isinstance(r, Event)]
    assert oom.name == "oom" and oom.data["count"] == 2 and oom.rank == 1
    assert not [r for r in probe.sample(4.0, 4.0) if isinstance(r, Event)]


def test_ooms_before_the_first_read_are_the_job_s() -> None:
    """Seen on an H200 capped as an RTX 5090: the job's batch 16 ran out of memory before
    the agent's first read (CUDA was initialised less than a second before), and the
    job halved it. The counter starts with the process: those OOMs are told too."""
    told: dict[int | None, float] = {}
    script = iter([stats(1, 1), stats(1, 1)])
    probe = AllocatorProbe(lambda: next(script), rank=0, gpu=0, told=told)
    (oom,) = [r for r in probe.sample(1.0, 1.0) if isinstance(r, Event)]
    assert oom.name == "oom" and oom.data["count"] == 1
    assert not [r for r in probe.sample(2.0, 2.0) if isinstance(r, Event)]
    # a later agent in the same process (a second fit, the next trial) tells only its own
    later = iter([stats(1, 1), stats(1, 3)])
    again = AllocatorProbe(lambda: next(later), rank=0, gpu=0, told=told)
    assert not [r for r in again.sample(3.0, 3.0) if isinstance(r, Event)]
    (new,) = [r for r in again.sample(4.0, 4.0) if isinstance(r, Event)]
    assert new.data["count"] == 2
