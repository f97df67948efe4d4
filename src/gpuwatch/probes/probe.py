"""What every probe is to the agent: read at a sample time, return records."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from gpuwatch.records import Record


class Probe(Protocol):
    """A probe the agent reads once a sample interval. ``now`` is Unix time (it stamps the
    records), ``mono`` monotonic seconds (for rates and pacing). It may raise: the agent
    counts the failure and reads the other probes."""

    def sample(self, now: float, mono: float) -> Sequence[Record]: ...
