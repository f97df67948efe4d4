"""What another GPU would buy: the step-time projection, as a range.

The measured mean step is split into parts that sum to it, and each part is
scaled by the ratio that applies to it (docs/projection.md):

- GPU-busy compute: its tensor-bound share by the dense tensor FLOPS ratio, the
  rest by the memory bandwidth ratio. The share comes from GPM (tensor vs DRAM
  activity) where measured; otherwise it is unknown and the projection spans
  all-memory-bound to all-tensor-bound, with the middle (half and half) named;
- optimizer: memory-bound (elementwise updates), by the bandwidth ratio;
- activation-checkpoint recompute: like compute, or dropped when the target's
  memory makes checkpointing unnecessary;
- exposed collective wait: kept where the target's link is no faster, else the ring
  all-reduce on the target's link; where point-to-point sends carry most of the bytes
  (a pipeline), the wait beyond what they take over today's path is the pipeline's
  bubble, scaled like compute;
- GPU idle time inside compute (NVML utilisation), data wait, checkpoint saves
  and unattributed time: kept as measured.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

from gpuwatch.detection.catalogue import (
    PCIE_BYTES_PER_S,
    PRECISIONS,
    Gpu,
    Precision,
    catalogue,
    identify,
)

__all__ = ["DEFAULT_TARGET", "PCIE_BYTES_PER_S", "PRECISIONS", "Gpu", "Precision", "Projection",
           "StepParts", "catalogue", "identify", "mean_step_parts", "project",
           "projection_text", "speedup_text"]

DEFAULT_TARGET = "H100 SXM"
# The middle of the range where the tensor share is not measured.
DEFAULT_TENSOR_SHARE = 0.5
# Half-width of the range around a GPM-measured tensor share: tensor and DRAM activity
# overlap in time, so their ratio is an estimate of the time share, not the share itself.
MEASURED_SHARE_MARGIN = 0.15
# A card at least this busy (NVML) drawing under this share of its board power runs
# kernels too small to fill it: launch-bound (``_light_kernels``).
LIGHT_BUSY, LIGHT_POWER_SHARE = 0.6, 0.45
# A copy between GPUs that cannot reach each other peer to peer goes through host memory:
# at worst this share of the slot's rate (it crosses PCIe twice and shares host memory).
HOST_STAGED_SHARE = 0.25
# Range ends closer than this (high / low) are shown as one number.
POINT_TOLERANCE = 1.03
PIPELINE_P2P_SHARE = 0.02  # point-to-point sends this share of a step's bytes: a pipeline
TIMES, DASH = "\u00d7", "\u2013"  # multiplication sign, en dash


class StepParts(NamedTuple):
    """A mean step split into parts (seconds) that sum to the step. ``compute`` excludes
    recompute, comm and ``idle`` (GPU idle inside compute and optimizer). A named tuple:
    a projection makes several per judgement."""

    compute: float
    recompute: float = 0.0
    comm: float = 0.0
    data: float = 0.0
    checkpoint: float = 0.0
    other: float = 0.0
    comm_bytes: float = 0.0  # bus bytes of the collectives per step (0: unknown); not a time
    optimizer: float = 0.0
    idle: float = 0.0
    p2p_bytes: float = 0.0  # the part of comm_bytes point-to-point sends carry; not a time
    bubble: float = 0.0  # a pipeline's stages waiting on each other (``_split_bubble``)

    @property
    def total(self) -> float:
        return (self.compute + self.recompute + self.comm + self.data + self.checkpoint
                + self.other + self.optimizer + self.idle + self.bubble)

    def seconds(self) -> dict[str, float]:
        """The parts by name (seconds), without the bytes."""
        return {k: v for k, v in zip(self._fields, self, strict=True) if k not in _BYTES}


_BYTES = frozenset({"comm_bytes", "p2p_bytes"})


def mean_step_parts(parts: list[StepParts]) -> StepParts:
    """The field-by-field mean of several ranks' parts."""
    n = max(len(parts), 1)
    return StepParts(*[sum(getattr(p, name) for p in parts) / n
                       for name in StepParts._fields])


@dataclass(frozen=True, slots=True)
class Inputs:
    """What the job measured besides its step parts; None where not measured.

    ``tensor_share`` tensor-bound share of compute (GPM, 0..1); ``gpu_busy`` NVML
    utilisation (0..1); ``link_now`` today's GPU link (bytes/s, one direction);
    ``units_per_step`` tokens or samples per step, all ranks (``unit`` names them);
    ``remaining_steps`` steps left to the plan; ``device_name`` what NVML calls the card;
    ``precision`` the tensor math the job uses; ``power_watts`` its card's draw;
    ``fabric`` the link between nodes the collectives cross (bytes/s, one direction;
    None within one node): a move to other GPUs keeps it. ``host_staged``: copies
    between the job's GPUs go through host memory (no peer-to-peer access).
    ``memory_bytes``: the most memory the job's tensors took today on a rank, on a card
    of ``card_bytes`` (bytes).
    ``fix_first``: the detector whose finding or condition holds the rank back in a way no
    card fixes (``moves.FIX_FIRST``: host work, a straggler, a throttled GPU): what a
    move gains is judged once that is fixed.
    ``latency_bytes`` and ``link_explained``: below ``latency_bytes`` bus bytes per step,
    or where today's link moves the bytes in less than ``link_explained`` of the wait,
    the wait is not the link's bandwidth (latency, contention, a misconfigured NCCL):
    the part today's link does not explain is kept on any card (sync_bottleneck's
    thresholds; 0 and 0: every wait is the link's). ``transfer_s``: the part of the
    wait that is transfer (the least wait across ranks, per step), where the job's
    ranks were compared; the rest is waiting on slower ranks, never kept as latency.
    ``fabric_unseen``: the job spans nodes but nothing reports the link between them (no
    InfiniBand or RoCE port, no setting): a move keeps its collective wait as measured.
    ``loader_bound``: the step waits on its data loader (``data_starvation``), so it goes
    at the loader's pace on any card: time a faster card saves is spent waiting for data
    instead. ``peer_bound``: the rank waits at its collectives for slower ranks (a
    ``straggler`` names them) and cannot tell that wait from transfer: it goes at their
    pace, and time a faster card saves is spent waiting for them.
    """

    tensor_share: float | None = None
    gpu_busy: float | None = None
    link_now: float | None = None
    units_per_step: float = 0.0
    unit: str = "step"
    remaining_steps: int | None = None
    device_name: str | None = None
    precision: Precision = "bf16"
    power_watts: float | None = None  # the current card's mean NVML power draw
    fabric: float | None = None
    fabric_unseen: bool = False
    loader_bound: bool = False
    peer_bound: bool = False
    host_staged: bool = False
    memory_bytes: float | None = None
    card_bytes: float | None = None
    fix_first: str | None = None
    latency_bytes: float = 0.0
    link_explained: float = 0.0
    transfer_s: float | None = None


@dataclass
class Projection:
    """The step now (split) and on ``target`` at both ends and the middle of the range.

    ``slowest`` is the end with the least speedup, ``fastest`` the most. Costs are
    filled by :mod:`gpuwatch.detection.moves`; ``as_dict`` is what findings carry.
    """

    target: Gpu
    current: Gpu | None
    now: StepParts
    projected: StepParts  # the middle
    slowest: StepParts
    fastest: StepParts
    gpus: int
    inputs: Inputs = field(default_factory=Inputs)
    tensor_share: tuple[float, float, float] = (0.0, DEFAULT_TENSOR_SHARE, 1.0)  # low, mid, high
    target_gpus: int = 0
    planned_steps: int | None = None
    assumptions: list[str] = field(default_factory=list)
    workarounds_dropped: list[str] = field(default_factory=list)
    economics: dict[str, Any] = field(default_factory=dict)

    @property
    def speedup(self) -> float:
        """At the middle of the range."""
        return _ratio(self.now.total, self.projected.total)

    @property
    def speedup_low(self) -> float:
        return _ratio(self.now.total, self.slowest.total)

    @property
    def speedup_high(self) -> float:
        return _ratio(self.now.total, self.fastest.total)

    @property
    def scale_out(self) -> float:
        """Target GPUs over GPUs now (data-parallel scale-out, 1: same count)."""
        return (self.target_gpus or self.gpus) / self.gpus

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "target": self.target.name,
            "current": self.current.name if self.current else None,
            "current_device": self.inputs.device_name,
            "gpus": self.gpus,
            "target_gpus": self.target_gpus or self.gpus,
            "precision": self.inputs.precision,
            "step_seconds_now": self.now.total,
            "step_seconds_projected": self.projected.total,
            "step_seconds_projected_slowest": self.slowest.total,
            "step_seconds_projected_fastest": self.fastest.total,
            "speedup_ratio": self.speedup,
            "speedup_low_ratio": self.speedup_low,
            "speedup_high_ratio": self.speedup_high,
            "tensor_share_ratio": self.tensor_share[1],
            "tensor_share_low_ratio": self.tensor_share[0],
            "tensor_share_high_ratio": self.tensor_share[2],
            "tensor_share_measured": self.inputs.tensor_share is not None,
            "parts_seconds_now": self.now.seconds(),
            "parts_seconds_projected": self.projected.seconds(),
            "assumptions": list(self.assumptions),
            "workarounds_dropped": list(self.workarounds_dropped),
        }
        out.update(self.economics)
        return out


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else 1.0


def project(
    now: StepParts,
    target: Gpu,
    current: Gpu | None,
    *,
    ranks: int = 1,
    tensor_share: float | None = None,
    gpu_busy: float | None = None,
    link_now: float | None = None,
    drop_recompute: bool = False,
    planned_steps: int | None = None,
    target_gpus: int | None = None,
    inputs: Inputs | None = None,
) -> Projection:
    """Project ``now`` onto ``target``; every part of the step is accounted for.

    ``tensor_share``, ``gpu_busy`` and ``link_now`` override the same fields of
    ``inputs``; ``drop_recompute`` when the target's memory removes the need for
    activation checkpointing; ``target_gpus`` for a scale-out (default ``ranks``).
    """
    inputs = inputs or Inputs()
    if tensor_share is not None or gpu_busy is not None or link_now is not None:
        inputs = replace(inputs, tensor_share=_given(tensor_share, inputs.tensor_share),
                         gpu_busy=_given(gpu_busy, inputs.gpu_busy),
                         link_now=_given(link_now, inputs.link_now))
    notes: list[str] = []
    dropped: list[str] = []
    if current is None:
        notes.append(f"current GPU {inputs.device_name!r} is not in the catalogue: compute is "
                     "not scaled" if inputs.device_name else
                     "current GPU unknown: compute is not scaled")
    split = _split_bubble(_split_idle(now, inputs.gpu_busy, notes), current, inputs, notes)
    shares = _tensor_shares(inputs.tensor_share, current, notes)
    flops_now, flops_target = _flops(current, target, inputs.precision, notes)
    bw_ratio = current.memory_bandwidth / target.memory_bandwidth if current else 1.0
    if current is not None and split.optimizer > 0:
        notes.append(f"optimizer memory-bound: {bw_ratio:.2f}x its time (bandwidth "
                     f"{current.memory_bandwidth / 1e12:.2f} -> "
                     f"{target.memory_bandwidth / 1e12:.2f} TB/s)")
    comm = (_projected_comm(split, target, current, ranks, inputs, notes)
            if split.comm > 0 else 0.0)
    drop = drop_recompute and split.recompute > 0
    if drop:
        dropped.append(f"activation checkpointing off: -{split.recompute / now.total:.0%} "
                       "step time")
    notes.append("idle GPU time, data wait, checkpoint saves and unattributed time kept as "
                 "measured")

    def scaled(factor: float) -> StepParts:
        return split._replace(compute=split.compute * factor,
                              recompute=0.0 if drop else split.recompute * factor,
                              optimizer=split.optimizer * bw_ratio, comm=comm,
                              bubble=split.bubble * factor)

    def at(share: float) -> StepParts:
        return scaled((share * flops_now / flops_target + (1 - share) * bw_ratio)
                      if current else 1.0)

    ends = [at(shares[0]), at(shares[2])]
    if _light_kernels(inputs, current, notes):
        ends.append(scaled(1.0))
    middle = at(shares[1])
    if inputs.loader_bound:
        notes.append("the step waits on its data loader: at the loader's pace on any card, "
                     "the time a faster card saves spent waiting for data")
        ends, middle = [_at_pace(p, split) for p in ends], _at_pace(middle, split)
    if inputs.peer_bound:
        notes.append("the rank waits at its collectives for slower ranks (straggler): at "
                     "their pace on any card, the time a faster card saves spent waiting "
                     "for them")
        ends = [_at_pace(p, split, "comm") for p in ends]
        middle = _at_pace(middle, split, "comm")
    ends.sort(key=lambda p: p.total)
    return Projection(target=target, current=current, now=split, projected=middle,
                      slowest=ends[-1], fastest=ends[0], gpus=ranks, inputs=inputs,
                      tensor_share=shares, target_gpus=target_gpus or ranks,
                      planned_steps=planned_steps, assumptions=notes, workarounds_dropped=dropped)


def _given(value: float | None, default: float | None) -> float | None:
    return default if value is None else value


def _split_idle(now: StepParts, gpu_busy: float | None, notes: list[str]) -> StepParts:
    """Carve the GPU's idle time out of compute and optimizer. NVML's utilisation says how
    long no kernel ran; data wait, saves and unattributed time are taken as idle first,
    the rest of the idle time lies in compute and optimizer (host-bound: launches, Python)."""
    if gpu_busy is None:
        notes.append("GPU utilisation not measured: compute taken as all GPU-busy "
                     "(the speedup is an upper bound)")
        return now
    idle = max((1 - min(max(gpu_busy, 0.0), 1.0)) * now.total
               - now.data - now.checkpoint - now.other, 0.0)
    scalable = now.compute + now.optimizer
    idle = min(idle, scalable)
    if idle <= 0:
        return now
    keep = 1 - idle / scalable
    notes.append(f"GPU {gpu_busy:.0%} busy (NVML): {idle / now.total:.0%} of the step is "
                 "idle time inside compute, kept as is")
    return now._replace(compute=now.compute * keep, optimizer=now.optimizer * keep,
                        idle=now.idle + idle)


def _split_bubble(now: StepParts, current: Gpu | None, inputs: Inputs,
                  notes: list[str]) -> StepParts:
    """Carve a pipeline's bubble out of the collective wait. Where point-to-point sends
    show a pipeline schedule (``pipelined``), the wait beyond what the step's bytes (its
    sends and its collectives) take over today's path (``p2p_rate``) is the stages
    waiting on each other's compute: it shrinks with compute on a faster card, not with
    the link."""
    if now.comm <= 0 or not pipelined(now.comm_bytes, now.p2p_bytes):
        return now
    rate = p2p_rate(inputs, current)
    if rate is None:
        return now
    transfer = min(now.comm, now.comm_bytes / rate)
    bubble = now.comm - transfer
    if bubble <= 0:
        return now
    path = " through host memory" if inputs.host_staged else ""
    notes.append(f"a pipeline (point-to-point sends: {now.p2p_bytes / 1e6:.0f} of the "
                 f"{now.comm_bytes / 1e6:.0f} MB a step): {transfer:.3g} s of the wait at "
                 f"{rate / 1e9:.1f} GB/s{path}, the other {bubble:.3g} s the pipeline's "
                 "bubble, scaled with compute")
    return now._replace(comm=transfer, bubble=bubble)


def pipelined(nbytes: float, p2p: float) -> bool:
    """Whether a step's ``nbytes`` bus bytes include a pipeline's point-to-point sends
    (its activations), at least ``PIPELINE_P2P_SHARE`` of them: in a pipeline with data
    parallelism (3-D parallel) the gradients' all-reduce often carries far more."""
    return 0 < PIPELINE_P2P_SHARE * nbytes <= p2p


def p2p_rate(inputs: Inputs, current: Gpu | None) -> float | None:
    """The slowest rate copies between the job's GPUs reach today (bytes/s, one
    direction): today's link (the topology's, else the card's), at ``HOST_STAGED_SHARE``
    of it through host memory, no faster than the link between nodes; None where
    unknown (or the job crosses a network nothing reports)."""
    link = inputs.link_now if inputs.link_now is not None else (
        current.link_bandwidth if current else None)
    if link is None or inputs.fabric_unseen:
        return None
    if inputs.host_staged:
        link *= HOST_STAGED_SHARE
    return min(link, inputs.fabric) if inputs.fabric is not None else link


def _at_pace(projected: StepParts, now: StepParts, wait: str = "data") -> StepParts:
    """``projected`` no faster than ``now``: what it saves becomes ``wait`` (the part
    named: data wait, or collective wait)."""
    saved = now.total - projected.total
    return (projected._replace(**{wait: getattr(projected, wait) + saved}) if saved > 0
            else projected)


def _light_kernels(inputs: Inputs, current: Gpu | None, notes: list[str]) -> bool:
    """Whether the card is busy (NVML) yet draws little of its board power: kernels too
    small to fill it, bound by their launches and the Python thread more than by its
    math or memory, which a faster card barely shortens (the range's low end then keeps
    compute as measured)."""
    if current is None or inputs.power_watts is None or inputs.gpu_busy is None:
        return False
    share = inputs.power_watts / current.power_watts
    if inputs.gpu_busy < LIGHT_BUSY or share >= LIGHT_POWER_SHARE:
        return False
    notes.append(f"the card draws {share:.0%} of its board power while {inputs.gpu_busy:.0%} "
                 "busy: small kernels, bound by their launches more than by its math; the "
                 "low end keeps compute as measured")
    return True


def _tensor_shares(measured: float | None, current: Gpu | None,
                   notes: list[str]) -> tuple[float, float, float]:
    """(low, middle, high) tensor-bound share of compute."""
    if measured is None:
        if current is not None:
            notes.append("tensor share not measured (no GPM): range from all memory-bound "
                         "to all tensor-bound, middle at half and half")
        return 0.0, DEFAULT_TENSOR_SHARE, 1.0
    s = min(max(measured, 0.0), 1.0)
    notes.append(f"tensor share {s:.0%} of compute from GPM (range +/-"
                 f"{MEASURED_SHARE_MARGIN:.0%})")
    return max(s - MEASURED_SHARE_MARGIN, 0.0), s, min(s + MEASURED_SHARE_MARGIN, 1.0)


def _flops(current: Gpu | None, target: Gpu, precision: Precision,
           notes: list[str]) -> tuple[float, float]:
    """Dense tensor FLOP/s now and on the target at the job's precision; BF16 where a card
    lacks it (it cannot run FP8 math)."""
    if current is None:
        return 1.0, 1.0
    now, there = current.tensor_flops(precision), target.tensor_flops(precision)
    if not now:
        notes.append(f"{current.name} has no {precision.upper()} tensor cores: BF16 compared")
        return current.bf16_flops, target.bf16_flops
    if not there:
        notes.append(f"{target.name} has no {precision.upper()} tensor cores: it would run "
                     "BF16")
        return now, target.bf16_flops
    notes.append(f"dense {precision.upper()} tensor math: {now / 1e12:.1f} -> "
                 f"{there / 1e12:.1f} TFLOPS")
    return now, there


def _projected_comm(now: StepParts, target: Gpu, current: Gpu | None, ranks: int,
                    inputs: Inputs, notes: list[str]) -> float:
    """Exposed collective seconds on ``target``. Kept where the link does not get faster
    (today's link from the topology, else the current card's; across nodes, neither is
    faster than the ``fabric`` between them, which a move keeps, and an unseen fabric
    keeps the wait); else the ring model when the bytes are known (with the wait today's
    link does not explain kept: ``_unexplained``), or today's time
    scaled by the link bandwidth ratio. Never more than today."""
    link_now, fabric = inputs.link_now, inputs.fabric
    if fabric is None and inputs.fabric_unseen:
        notes.append("collectives cross a link between nodes that nothing reports (no "
                     "InfiniBand or RoCE port): kept as measured, which a move keeps")
        return now.comm
    target_bw = target.link_bandwidth
    today = link_now if link_now is not None else current.link_bandwidth if current else None
    if fabric is not None:
        target_bw = min(target_bw, fabric)
        today = min(today, fabric) if today is not None else fabric
        notes.append(f"collectives cross the link between nodes ({fabric / 1e9:.0f} GB/s per "
                     "direction), which a move keeps")
    if today is not None and target_bw <= today:
        notes.append(f"collectives kept: {target.name}'s link ({target_bw / 1e9:.0f} GB/s per "
                     f"direction) is no faster than today's ({today / 1e9:.0f} GB/s)")
        return now.comm
    notes.append(f"collectives on {target.name} at {target_bw / 1e9:.0f} GB/s per direction "
                 "(bus bytes over the link, nccl-tests convention)")
    if now.comm_bytes > 0 and ranks > 1:
        measured = now.comm_bytes / now.comm
        notes.append(f"today's bus bandwidth measured at {measured / 1e9:.2f} GB/s from "
                     f"{now.comm_bytes / 1e6:.1f} MB of bus bytes per step")
        seen = min(link_now, fabric) if link_now is not None and fabric is not None \
            else link_now
        return min(now.comm_bytes / target_bw + _unexplained(now, seen, inputs, notes),
                   now.comm)
    if today is None:
        today = PCIE_BYTES_PER_S[4]
        notes.append("today's link unknown: taken as PCIe gen4 x16 (32 GB/s)")
    elif link_now is not None:
        notes.append(f"today's link {link_now / 1e9:.0f} GB/s per direction (topology)")
    return now.comm * min(today / target_bw, 1.0)


def _unexplained(now: StepParts, today: float | None, inputs: Inputs,
                 notes: list[str]) -> float:
    """The collective seconds per step ``today``'s link (the topology's) does not explain,
    where the wait is not its bandwidth (``Inputs.latency_bytes``,
    ``Inputs.link_explained``): latency, contention or a misconfigured NCCL, which no
    faster link removes; else 0. As sync_bottleneck reads it: a path through host memory,
    or a link the topology does not give, explains the wait."""
    if today is None or inputs.host_staged:
        return 0.0
    link_s = now.comm_bytes / today
    wait = min(inputs.transfer_s, now.comm) if inputs.transfer_s is not None else now.comm
    if now.comm_bytes >= inputs.latency_bytes and link_s >= inputs.link_explained * wait:
        return 0.0
    kept = max(wait - link_s, 0.0)
    notes.append(f"today's link moves the {now.comm_bytes / 1e6:.3g} MB in {link_s:.3g} s of "
                 f"the {wait:.3g} s transfer: the other {kept:.3g} s (latency, contention) "
                 "kept on any card")
    return kept


# -- text: one formatter for every sink --------------------------------------------------

def speedup_text(p: Mapping[str, Any]) -> str:
    """The projected speedup of a finding's projection dict, e.g. "1.9-4.7x (2.7x at the
    middle)" with an en dash and multiplication signs; one number where the ends agree."""
    mid = float(p.get("speedup_ratio", 1.0))
    low = float(p.get("speedup_low_ratio", mid))
    high = float(p.get("speedup_high_ratio", mid))
    if high <= low * POINT_TOLERANCE or _x(low) == _x(high):  # (no "1.2-1.2x")
        return f"{_x(mid)}{TIMES}"
    return f"{_x(low)}{DASH}{_x(high)}{TIMES} ({_x(mid)}{TIMES} at the middle)"


def _x(v: float) -> str:
    return f"{v:.1f}" if v < 10 else f"{v:.0f}"


def projection_text(p: Mapping[str, Any]) -> str:
    """One line for people: step now and on the target, the speedup range, cost per unit of
    work now and on the target (at the low end), and the move decision with its reason."""
    text = (f"{p['step_seconds_now']:.3g} s/step now -> {p['step_seconds_projected']:.3g} s/step "
            f"on {p['target']}: {speedup_text(p)}")
    unit = p.get("unit")
    if unit and p.get("cost_per_unit_now_usd") is not None:
        text += (f"; ${p['cost_per_unit_now_usd']:.3g} -> "
                 f"${p['cost_per_unit_target_worst_usd']:.3g} per {unit} at the low end")
    elif unit and p.get("cost_per_unit_target_worst_usd") is not None:
        text += f"; ${p['cost_per_unit_target_worst_usd']:.3g} per {unit} on {p['target']}"
    if p.get("hours_to_finish_now") is not None:
        there = (f"on {p['target_gpus']} GPUs" if p.get("target_gpus", 0) != p.get("gpus", 0)
                 else "there")
        text += (f"; finishes in {p['hours_to_finish_now']:.3g} h here, "
                 f"{p['hours_to_finish_target_slowest']:.3g} h {there} at the low end")
    decision = p.get("decision")
    if isinstance(decision, Mapping) and decision.get("why"):
        text += f"; {decision.get('verdict')}: {decision['why']}"
    return text
