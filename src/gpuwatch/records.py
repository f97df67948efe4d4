"""Record types shared by probes, detectors and sinks, and the run-log schema.

Steps and samples are the bulk of a log: they are plain slotted dataclasses
(frozen ones cost three times as much to build when a log is replayed) and are
never changed after creation.

A run log is JSON Lines: a first ``meta`` line, then one object per record,
each with a ``kind`` field (``step``, ``sample``, ``event``, ``finding``). Times are Unix
seconds (float); durations are seconds; sizes are bytes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

SCHEMA_VERSION = 1


@dataclass(frozen=True, slots=True)
class Meta:
    """The first line of a run log: who wrote it, where, and which run and attempt it is
    (one log file per rank and attempt)."""

    schema: int
    gpuwatch: str
    job: str
    host: str
    rank: int
    local_rank: int
    world_size: int
    pid: int
    started: float
    argv: list[str] = field(default_factory=list)
    torch: str | None = None
    detection: dict[str, Any] = field(default_factory=dict)  # the detection settings in force
    run: str = ""  # the run id: the run directory's name
    attempt: int = 0  # which start of the process within the run (0, then restarts)
    device: int | None = None  # torch CUDA device index, None without a GPU in use
    identity: str = ""  # where the rank came from: process_group, torchrun, slurm, ...
    metrics_port: int | None = None  # the port /metrics is served on, None without one
    kind: Literal["meta"] = "meta"


@dataclass(slots=True)
class Step:
    """One training step (optimizer step), its wall time split into phases.

    ``compute_s`` is measured when the loop marks compute (or forward and
    backward); otherwise it is the time not spent in data wait, optimizer or
    checkpoint. ``collective_s`` and ``recompute_s`` are parts of compute
    (exposed collective wait, activation-checkpoint recompute), not extra time.
    ``other_s`` is the wall time no phase accounts for. ``collective_bytes`` are bus
    bytes (nccl-tests convention), ``p2p_bytes`` the part of them point-to-point sends
    carry (a pipeline's activations, counted by the sender); ``collective_timed_s`` is the
    full duration of the collectives of 1 MiB or more whose duration was seen and
    ``collective_timed_bytes`` their bus bytes (their ratio is the achieved bus bandwidth).
    """

    rank: int
    step: int
    t: float
    wall_s: float
    data_s: float = 0.0
    compute_s: float = 0.0
    optimizer_s: float = 0.0
    checkpoint_s: float = 0.0
    collective_s: float = 0.0
    recompute_s: float = 0.0
    other_s: float = 0.0
    samples: int = 0
    tokens: int = 0
    checkpoint_bytes: int = 0
    collective_bytes: int = 0
    collective_timed_s: float = 0.0
    collective_timed_bytes: int = 0
    act_ckpt_calls: int = 0
    p2p_bytes: int = 0
    kind: Literal["step"] = "step"


@dataclass(slots=True)
class Sample:
    """A probe reading at time ``t``: metric name -> value in base units.

    A metric the hardware does not offer is absent from ``values``, never 0.
    ``gpu`` is the NVML index for GPU-scoped sources, else None.
    """

    rank: int
    t: float
    source: str
    values: dict[str, float]
    gpu: int | None = None
    kind: Literal["sample"] = "sample"


@dataclass(frozen=True, slots=True)
class Event:
    """Something that happened once: an OOM, a checkpoint save, a batch-size cut."""

    rank: int
    t: float
    name: str
    data: dict[str, Any] = field(default_factory=dict)
    kind: Literal["event"] = "event"


class OomTally:
    """A rank's OOMs from its ``oom`` events. One that leaves a step is told twice: by
    the exception (``type``) and by the allocator's counter rise (``count``), in either
    order; caught ones only by the counter, and without allocator readings only the
    exceptions tell. The rank's OOMs are the larger of the two totals."""

    __slots__ = ("counted", "told", "typed")

    def __init__(self) -> None:
        self.typed = self.counted = self.told = 0

    def add(self, e: Event) -> int:
        """The OOMs ``e`` tells that no earlier event of the rank told."""
        if "type" in e.data:
            self.typed += 1
        else:
            self.counted += max(int(e.data.get("count", 1)), 0)
        new = max(self.typed, self.counted) - self.told
        self.told += new
        return new


Verdict = Literal["move_to_h100", "fix_here", "info"]
Severity = Literal["info", "warning", "critical"]


@dataclass(frozen=True, slots=True)
class Finding:
    """A detector's judgement, with the numbers behind it.

    ``evidence`` maps names that end in their unit (``_ratio``, ``_seconds``,
    ``_bytes``, ``_total``) to measured values. ``projection`` (where it applies)
    says what the target GPU would buy. ``state`` is ``active`` while the
    condition holds and ``resolved`` once it has cleared. Sinks deduplicate by
    ``fingerprint`` (job, detector and ranks: stable while the condition lasts).
    """

    detector: str
    verdict: Verdict
    severity: Severity
    summary: str
    action: str
    evidence: dict[str, float]
    ranks: list[int]
    first_seen: float
    last_seen: float
    fingerprint: str
    job: str = ""
    projection: dict[str, Any] | None = None
    state: Literal["active", "resolved"] = "active"
    kind: Literal["finding"] = "finding"


Record = Meta | Step | Sample | Event | Finding

_TYPES: dict[str, type[Any]] = {"meta": Meta, "step": Step, "sample": Sample, "event": Event,
                                "finding": Finding}
_FIELDS: dict[str, frozenset[str]] = {
    kind: frozenset(f.name for f in dataclasses.fields(cls)) for kind, cls in _TYPES.items()
}
_NAMES: dict[type[Any], tuple[str, ...]] = {
    cls: tuple(f.name for f in dataclasses.fields(cls)) for cls in _TYPES.values()
}
# Per type: the fields that always appear, and (field, default) for those a compact
# dict leaves out while at their default.
_REQUIRED: dict[type[Any], tuple[str, ...]] = {
    cls: tuple(f.name for f in dataclasses.fields(cls)
               if f.default is dataclasses.MISSING or f.name == "kind")
    for cls in _TYPES.values()
}
_OMITTABLE: dict[type[Any], tuple[tuple[str, Any], ...]] = {
    cls: tuple((f.name, f.default) for f in dataclasses.fields(cls)
               if f.default is not dataclasses.MISSING and f.name != "kind")
    for cls in _TYPES.values()
}


def to_dict(record: Record, compact: bool = False) -> dict[str, Any]:
    """The JSON-ready dict of a record (a shallow copy of its fields).

    ``compact`` leaves out scalar fields at their default (a step without a
    checkpoint has no checkpoint_s); ``from_dict`` restores them.
    """
    cls = type(record)
    if not compact:
        return {name: getattr(record, name) for name in _NAMES[cls]}
    obj = {name: getattr(record, name) for name in _REQUIRED[cls]}
    for name, default in _OMITTABLE[cls]:
        value = getattr(record, name)
        if value != default:
            obj[name] = value
    return obj


def from_dict(obj: dict[str, Any]) -> Record:
    """Build a record from a decoded run-log line; unknown fields are ignored.

    Raises ValueError when the kind is unknown or required fields are missing.
    """
    kind = obj.get("kind")
    cls = _TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ValueError(f"unknown record kind {kind!r}")
    try:
        return cls(**obj)  # type: ignore[no-any-return]
    except TypeError:  # a field from a newer schema, or one missing
        pass
    known = _FIELDS[kind]  # type: ignore[index]
    try:
        record: Record = cls(**{k: v for k, v in obj.items() if k in known})
    except TypeError as exc:
        raise ValueError(f"bad {kind} record: {exc}") from None
    return record


def utf8(value: Any) -> Any:
    """``value`` with every string's surrogates (undecodable bytes) replaced by "?"."""
    if isinstance(value, str):
        return value if value.isascii() else value.encode("utf-8", "replace").decode()
    if isinstance(value, dict):
        return {utf8(k): utf8(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [utf8(v) for v in value]
    return value
