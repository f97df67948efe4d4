"""Names every layer shares: the GPU's clock-event reasons and throttle policies as
NVML reports them (read by the NVML probe, the detectors and the exporter alike), the
phases of a step: the ones the training loop marks (``Phase``) and the parts a
finished step splits into (``PARTS``, ``split_step``), and the collectives' bus bytes
(``bus_bytes``: the timed hooks and the NCCL flight recorder count them alike).
"""

from __future__ import annotations

from collections.abc import Callable
from enum import IntEnum
from typing import Protocol

# NVML clock-event (throttle) reason bits -> bounded label values.
CLOCK_EVENT_REASONS = {
    0x1: "gpu_idle", 0x2: "applications_clocks_setting", 0x4: "sw_power_cap",
    0x8: "hw_slowdown", 0x10: "sync_boost", 0x20: "sw_thermal_slowdown",
    0x40: "hw_thermal_slowdown", 0x80: "hw_power_brake_slowdown",
    0x100: "display_clock_setting",
}
# The reasons a busy card is slowed by a fault of its machine (heat, its board, its power
# supply): not the power cap, how a busy card works.
SLOWDOWNS = ("sw_thermal_slowdown", "hw_thermal_slowdown", "hw_slowdown",
             "hw_power_brake_slowdown")
SLOWDOWN_BITS = sum(bit for bit, name in CLOCK_EVENT_REASONS.items() if name in SLOWDOWNS)
LOWEST_SLOWDOWN = SLOWDOWN_BITS & -SLOWDOWN_BITS  # a bitmask below it has none of them

# NVML performance policies whose violation counters (cumulative ns of reduced
# clocks) are exported as throttle seconds, by reason.
THROTTLE_POLICIES = {
    "NVML_PERF_POLICY_POWER": "power", "NVML_PERF_POLICY_THERMAL": "thermal",
    "NVML_PERF_POLICY_SYNC_BOOST": "sync_boost", "NVML_PERF_POLICY_BOARD_LIMIT": "board_limit",
    "NVML_PERF_POLICY_LOW_UTILIZATION": "low_utilization",
    "NVML_PERF_POLICY_RELIABILITY": "reliability",
    "NVML_PERF_POLICY_TOTAL_APP_CLOCKS": "app_clocks",
    "NVML_PERF_POLICY_TOTAL_BASE_CLOCKS": "base_clocks",
}


class Phase(IntEnum):
    """A part of a step the training loop marks: the ring carries ``+phase`` when it opens
    and ``-phase`` when it closes (``instrument.ring``)."""

    DATA = 1
    COMPUTE = 2
    FORWARD = 3
    BACKWARD = 4
    OPTIMIZER = 5
    CHECKPOINT = 6
    COLLECTIVE = 7
    RECOMPUTE = 8

    @property
    def label(self) -> str:
        """The phase's name in the API and in records (``monitor.phase("data")``)."""
        return self.name.lower()


# Marked phases that make up a step's compute (``Step.compute_s``).
COMPUTE_PHASES = (Phase.COMPUTE, Phase.FORWARD, Phase.BACKWARD)

# The parts a step splits into, in the order reports stack them; they sum to its wall
# time (seconds). ``compute`` is pure compute: without the recompute and the exposed
# collective wait nested in ``Step.compute_s``.
PARTS = ("data", "compute", "recompute", "collective", "optimizer", "checkpoint", "other")


class StepTimes(Protocol):
    """A step's times (seconds) as ``records.Step`` and its means carry them."""

    @property
    def data_s(self) -> float: ...
    @property
    def compute_s(self) -> float: ...
    @property
    def recompute_s(self) -> float: ...
    @property
    def collective_s(self) -> float: ...
    @property
    def optimizer_s(self) -> float: ...
    @property
    def checkpoint_s(self) -> float: ...
    @property
    def other_s(self) -> float: ...


def pure_compute_s(s: StepTimes) -> float:
    """Compute without the recompute and the exposed collective wait nested in it (seconds)."""
    return max(s.compute_s - s.collective_s - s.recompute_s, 0.0)


def split_step(s: StepTimes) -> tuple[float, ...]:
    """A step's (or a mean step's) seconds in ``PARTS`` order."""
    return (s.data_s, pure_compute_s(s), s.recompute_s, s.collective_s, s.optimizer_s,
            s.checkpoint_s, s.other_s)


def unwaited_compute_s(compute_s: float, collective_s: float) -> float:
    """Compute without its exposed collective wait, recompute included: the work a rank
    does itself, compared across ranks (seconds)."""
    return max(compute_s - collective_s, 0.0)


# nccl-tests' bus-bandwidth factors: bus bytes = factor(n) * bytes of the buffer named in
# ``BUFFER`` (https://github.com/NVIDIA/nccl-tests/blob/master/doc/PERFORMANCE.md).
BUS_FACTOR: dict[str, Callable[[int], float]] = {
    "all_reduce": lambda n: 2 * (n - 1) / n,
    "all_gather": lambda n: (n - 1) / n,
    "reduce_scatter": lambda n: (n - 1) / n,
    "all_to_all": lambda n: (n - 1) / n,
    "broadcast": lambda n: 1.0,
    "reduce": lambda n: 1.0,
    "send_recv": lambda n: 1.0,
}


# A collective of fewer bus bytes is latency and waiting for the other ranks, not bandwidth:
# its duration is no measure of the link (a step's 4-byte flag read as 2.5 kB/s achieved)
MIN_BANDWIDTH_BYTES = 1 << 20


def bus_bytes(kind: str, total_bytes: int, world_size: int) -> int:
    """Bus bytes of one collective: ``total_bytes`` is the whole buffer (an all-gather's
    output, a reduce-scatter's input, an all-to-all's input); 0 for one rank."""
    factor = BUS_FACTOR.get(kind)
    if factor is None or world_size < 1 or (world_size == 1 and kind != "send_recv"):
        return 0
    return int(total_bytes * factor(world_size))


def duration(v: float | None) -> str:
    """``v`` seconds as µs, ms, s, min, h or days, whichever reads best."""
    if v is None or v != v:
        return "—"
    a = abs(v)
    if a == 0:
        return "0 s"
    if a < 1e-3:
        return f"{v * 1e6:.3g} µs"
    if a < 1:
        return f"{v * 1e3:.3g} ms"
    if a < 120:
        return f"{v:.3g} s"
    if a < 7200:
        return f"{v / 60:.3g} min"
    if a < 172800:
        return f"{v / 3600:.3g} h"
    return f"{v / 86400:.3g} days"


def size(v: float) -> str:
    """``v`` bytes as B, kB, MB, GB or TB (decimal), whichever reads best."""
    a = abs(v)
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if a >= scale:
            return f"{v / scale:.3g} {unit}"
    return f"{v:.0f} B"
