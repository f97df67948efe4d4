"""One phase vocabulary: the phases the loop marks and the parts a step splits into."""

from __future__ import annotations

import pytest

from gpuwatch.instrument import ring
from gpuwatch.instrument.steps import StepAssembler
from gpuwatch.records import Record, Step
from gpuwatch.vocabulary import PARTS, Phase, size, split_step


def test_every_phase_has_one_ring_code_and_one_name() -> None:
    assert {p.label: int(p) for p in Phase} == ring.PHASES
    assert len(set(ring.PHASES.values())) == len(Phase)
    assert all(0 < code < ring.STEP_BEGIN for code in ring.PHASES.values())


def test_an_assembled_step_splits_into_parts_that_sum_to_its_wall_time() -> None:
    marks: list[ring.Mark] = [
        (ring.STEP_BEGIN, 0.0, None),
        (ring.DATA, 0.0, None), (-ring.DATA, 0.1, None),
        (ring.FORWARD, 0.1, None), (ring.RECOMPUTE, 0.15, None), (-ring.RECOMPUTE, 0.2, None),
        (-ring.FORWARD, 0.3, None), (ring.BACKWARD, 0.3, None),
        (ring.PHASE_SECONDS, 0.4, (ring.COLLECTIVE, 0.05)), (-ring.BACKWARD, 0.5, None),
        (ring.OPTIMIZER, 0.5, None), (-ring.OPTIMIZER, 0.55, None),
        (ring.STEP_END, 0.6, 1)]
    out: list[Record] = []
    StepAssembler(rank=0, clock_offset=0.0).feed(marks, out, final=True)
    (step,) = [r for r in out if isinstance(r, Step)]
    parts = dict(zip(PARTS, split_step(step), strict=True))
    assert parts["compute"] == pytest.approx(0.4 - 0.05 - 0.05)  # forward + backward, pure
    assert parts["recompute"] == pytest.approx(0.05)
    assert parts["collective"] == pytest.approx(0.05)
    assert sum(parts.values()) == pytest.approx(step.wall_s)


def test_sizes_read_in_the_unit_that_suits_them() -> None:
    """A 333 kB save read "0 MB (0 MB/s)", a 30 GB one "30000 MB"."""
    assert [size(v) for v in (0, 999, 333_000, 2e9, 30e9, 1.5e13)] == [
        "0 B", "999 B", "333 kB", "2 GB", "30 GB", "15 TB"]
