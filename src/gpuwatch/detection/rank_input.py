"""What a job-scope detector reads of one rank (``RankInput``): the same questions of a
rank whose records this process holds (``telemetry.Telemetry``: the live rank 0, every
rank of a replay) and of a rank known only from what it publishes
(``peer_view.PeerRank``: the other ranks, live at rank 0)."""

from __future__ import annotations

from typing import Any, Protocol

from gpuwatch.probes.peers import StepWait
from gpuwatch.series import Figure
from gpuwatch.telemetry import StepSummary


class RankInput(Protocol):
    """One rank for the job-scope detectors and the engine that runs them."""

    @property
    def rank(self) -> int: ...

    @property
    def host(self) -> str:
        """The host it runs on ("?" if unknown)."""

    @property
    def world_size(self) -> int:
        """The job's ranks as this rank knows them (1 if unknown)."""

    @property
    def topology(self) -> dict[str, Any] | None:
        """Its GPUs and links (a ``topology`` event's data), if known."""

    @property
    def steps_done(self) -> int:
        """The number of its newest step."""

    @property
    def planned_steps(self) -> int | None: ...

    @property
    def changed(self) -> int:
        """A stamp that changes whenever what it says about its steps changes."""

    @property
    def event_stamp(self) -> int:
        """A stamp that changes whenever it reports something other than steps (an OOM, a
        save, a batch cut): what a judgement must see at once."""

    @property
    def last_progress(self) -> float:
        """Its newest step or progress (Unix s)."""

    @property
    def last_step_t(self) -> float:
        """When its newest step ended (Unix s; 0 before any)."""

    def summarise(self, since: float) -> StepSummary | None:
        """The mean step over steps that ended at or after ``since``."""

    def working_power_w(self) -> float | None:
        """Its GPU's median power draw while it was stepping (watts), if known."""

    def since_holding(self, steps: int) -> float | None:
        """The latest time from which ``steps`` typical steps ended (Unix s), if it has
        that many."""

    def median_step_s(self) -> float | None: ...

    @property
    def cycle_steps(self) -> int:
        """Steps per cycle of its rhythm: 1, or N where a gradient sync comes every N
        steps (each a micro-batch of gradient accumulation)."""

    def step_waits(self, since: float) -> dict[int, StepWait]:
        """Per-step waits by step number (warm-up left out)."""

    def figure(self, source: str, key: str, since: float) -> Figure | None: ...

    def counter_rise(self, source: str, key: str, since: float) -> float: ...

    def clock_event_reasons(self) -> list[int]:
        """The clock-event reason bits its GPUs report now, one per GPU."""

    def timed_collectives(self, since: float) -> tuple[float, float]:
        """Bus bytes and device seconds of the collectives timed in its steps since."""

    def collective_timing(self) -> dict[str, Any]:
        """What it could and could not time of its collectives (newest word; {} if none)."""

    def open_save(self) -> tuple[float, float] | None:
        """(when, seconds open): a save its newest agent reading says is being written,
        when that reading was taken (Unix s, its clock) and how long the save had been
        open then; None if that reading shows none."""
