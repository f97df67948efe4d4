"""Moves that pay: what a step and a unit of work cost here and on the target, and the
gate that decides whether a projection is worth a move.

A move is recommended only when (1) the job cannot run well here at all (memory),
(2) the target is cheaper per unit of work even at the low end of the speedup range,
or (3) the time to result shrinks by at least ``min_time_gain`` at the low end, card
for card (a scale-out is open on either card, so it does not count). A job on several
GPUs whose collectives were not seen at all gets no move by (2) or (3): what looks like
compute may be communication, which faster math does not shorten; nor does a gain that
comes mostly from faster math where GPU utilisation was not measured (the projection
counts all compute as GPU-busy, an upper bound even at its low end). Nor is a move
recommended by (2) or (3) to a card that cannot hold the job's memory as it runs
today, nor while the rank is held back in a way no card fixes (``FIX_FIRST``: a
throttled GPU, host work, slower ranks): fix that first. Never to the card the job
already runs on; to another form of its model (an H100 PCIe job to an H100 SXM) by (2)
only when ``SAME_MODEL_SAVING`` cheaper: a few percent is within what a projection
knows. Otherwise the detector's own verdict (``fix_here`` or ``info``) stands.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gpuwatch.config import Settings
from gpuwatch.detection.catalogue import Gpu
from gpuwatch.detection.projection import Projection
from gpuwatch.records import Verdict

HOURS_PER_YEAR = 8760.0
# Findings (or conditions) that hold a rank back in a way no card fixes, by detector, in
# the order they are named: what a move gains is judged once they are fixed.
FIX_FIRST = {
    "throttling": "the GPU runs throttled (heat or power), which a move away from this "
                  "machine would not explain: fix its cooling or power first, then judge a move",
    "underutilised": "the GPU idles on host work (underutilised), which no card shortens: "
                     "fix that here first",
    "straggler": "a slower rank holds the job back (straggler), which no card fixes: fix it "
                 "here first, then judge a move",
}
HOLD_SHARE = 0.9  # a job's memory today must fit this share of a card it moves to
SAME_MODEL_SAVING = 0.1  # what a move to another form of the card's model must save
GIB = 2**30
MOVE: Verdict = "move_to_h100"


@dataclass(frozen=True, slots=True)
class OwnedCard:
    """A card you own: its price (USD) spread over ``amortisation_years`` of use, and its
    power draw (W; None: NVML's measured draw, else the catalogue's board power)."""

    purchase_usd: float
    amortisation_years: float
    power_watts: float | None = None


@dataclass(frozen=True, slots=True)
class Costs:
    """How GPU time is priced and when a move pays."""

    owned: Mapping[str, OwnedCard] = field(default_factory=dict)
    electricity_usd_per_kwh: float = 0.15
    min_time_gain: float = 1.5

    @classmethod
    def from_settings(cls, settings: Settings) -> Costs:
        return cls(owned={name: OwnedCard(o.purchase_usd, o.amortisation_years, o.power_watts)
                          for name, o in settings.owned.items()},
                   electricity_usd_per_kwh=settings.electricity_usd_per_kwh,
                   min_time_gain=settings.move_min_time_gain)

    def hourly(self, gpu: Gpu, measured_watts: float | None = None) -> tuple[float, str]:
        """USD per GPU-hour of ``gpu`` and where the figure comes from."""
        card = self.owned.get(gpu.name)
        if card is None:
            return gpu.price_per_hour, gpu.price_source
        watts, seen = ((card.power_watts, "set") if card.power_watts else
                       (measured_watts, "measured") if measured_watts else
                       (gpu.power_watts, "board power"))
        usd = (watts / 1000 * self.electricity_usd_per_kwh
               + card.purchase_usd / (card.amortisation_years * HOURS_PER_YEAR))
        return usd, (f"owned: {watts:.0f} W ({seen}) at ${self.electricity_usd_per_kwh:g}/kWh "
                     f"+ ${card.purchase_usd:,.0f} over {card.amortisation_years:g} years")


def price(p: Projection, costs: Costs, cards: Sequence[Gpu] = ()) -> None:
    """Fill ``p.economics``: cost per step and per unit of work (per 1M tokens or samples
    when counted, else per step) now and on the target at each end of the range, and the
    time to finish when the remaining steps are known. ``cards``: each rank's card where
    the job's ranks run on different ones (priced now at their mean, not as
    ``p.current`` on every rank)."""
    e: dict[str, Any] = {}
    per_unit = _per_unit(p)
    e["unit"] = p.inputs.unit
    e["units_per_step"] = p.inputs.units_per_step
    target_hourly, target_source = costs.hourly(p.target)
    e["price_target_usd_per_hour"], e["price_target_source"] = target_hourly, target_source

    def step_cost(seconds: float, hourly: float) -> float:
        return seconds * hourly / 3600 * p.gpus

    e["cost_per_step_target_usd"] = step_cost(p.projected.total, target_hourly)
    for end, parts in (("", p.projected), ("_worst", p.slowest), ("_best", p.fastest)):
        e[f"cost_per_unit_target{end}_usd"] = step_cost(parts.total, target_hourly) * per_unit
    if p.current is not None:
        hourly, source = costs.hourly(p.current, p.inputs.power_watts)
        if len({card.name for card in cards}) > 1:
            hourly = math.fsum(costs.hourly(card, p.inputs.power_watts)[0]
                               for card in cards) / len(cards)
            source = "the mean of the job's cards: " + ", ".join(
                f"{n} {name}" for name, n in Counter(c.name for c in cards).most_common())
        e["price_now_usd_per_hour"], e["price_now_source"] = hourly, source
        e["cost_per_step_now_usd"] = step_cost(p.now.total, hourly)
        e["cost_per_unit_now_usd"] = e["cost_per_step_now_usd"] * per_unit
    remaining = p.inputs.remaining_steps
    if remaining is not None and remaining > 0:
        e["remaining_steps"] = remaining
        e["hours_to_finish_now"] = remaining * p.now.total / 3600
        for end, parts in (("", p.projected), ("_slowest", p.slowest), ("_fastest", p.fastest)):
            e[f"hours_to_finish_target{end}"] = remaining * parts.total / p.scale_out / 3600
        if p.scale_out != 1:
            p.assumptions.append(f"{p.target_gpus} GPUs on {p.target.name} for {p.gpus} now: "
                                 "data parallel, linear scaling")
    if p.planned_steps:
        e["total_steps"] = p.planned_steps
        e["run_hours_projected"] = p.projected.total * p.planned_steps / p.scale_out / 3600
        e["cost_per_run_target_usd"] = e["cost_per_step_target_usd"] * p.planned_steps
        if "cost_per_step_now_usd" in e:
            e["cost_per_run_now_usd"] = e["cost_per_step_now_usd"] * p.planned_steps
    p.economics.update(e)


def _per_unit(p: Projection) -> float:
    """Units of work in one step's cost: 1e6 / units per step, or 1 per step."""
    if p.inputs.unit != "step" and p.inputs.units_per_step > 0:
        return 1e6 / p.inputs.units_per_step
    return 1.0


def _gain_is_compute(p: Projection) -> bool:
    """Whether the low end's gain comes mostly from faster math (compute, recompute,
    optimizer, and a pipeline's bubble, which shrinks with them) rather than from
    collectives on a faster link."""
    now, low = p.now, p.slowest
    math_saved = (now.compute + now.recompute + now.optimizer + now.bubble
                  - low.compute - low.recompute - low.optimizer - low.bubble)
    return math_saved > now.comm - low.comm


def unknown_card(device_name: str | None) -> str:
    """Why a card's speed and price are unknown, and what to set, as a clause."""
    card, mig, profile = (device_name or "").partition(" MIG ")
    if mig:  # (NVML's name of a MIG instance: "<card> MIG 3g.40gb")
        return (f"it runs on a MIG slice ({profile}) of {card}, whose speed and price "
                "gpuwatch does not know: a bigger slice or the whole card is the first "
                "step up (set gpu_model and prices to judge it)")
    what = (f"{device_name} is not in gpuwatch's catalogue" if device_name else
            "the card was not seen (no NVML reading, no gpu_model set)")
    return (f"{what}: its speed and price are unknown (set gpu_model to the nearest "
            "catalogued card and prices to what you pay)")


def holds(target: Gpu, held: float | None, card: float | None) -> bool:
    """Whether ``target`` holds a job that takes ``held`` bytes today on a card of
    ``card`` bytes: within ``HOLD_SHARE`` of its memory, or as much memory as that card
    (unknown: held)."""
    return (held is None or held <= target.memory_bytes * HOLD_SHARE
            or (card is not None and target.memory_bytes >= card))


def family(card: Gpu) -> str:
    """A card's model line: the first word of its name where it names a model (``H100``
    of ``H100 PCIe``, ``H100 NVL`` and ``H100 SXM``), else its whole name (``RTX 4090``)."""
    first = card.name.split()[0]
    return first if any(ch.isdigit() for ch in first) else card.name


def _at_least(card: Gpu, target: Gpu) -> bool:
    """Whether ``card`` has at least ``target``'s memory and dense BF16 math."""
    return card.memory_bytes >= target.memory_bytes and card.bf16_flops >= target.bf16_flops


def decide(p: Projection, costs: Costs, *, otherwise: Verdict,
           cannot_run_here: str | None = None, configured: Gpu | None = None) -> Verdict:
    """The gate: ``move_to_h100`` when the move pays (see the module), else ``otherwise``.
    Prices ``p`` if not done yet and records the decision and its reason in it.
    ``configured``: the configured target (a job on it, or on a card with as much
    memory and math, stays, whatever bigger card the projection is for)."""
    if "cost_per_step_target_usd" not in p.economics:
        price(p, costs)
    e = p.economics
    low = gain = p.speedup_low  # the card's own gain: a scale-out is open on either card
    now_cost, worst = e.get("cost_per_unit_now_usd"), e["cost_per_unit_target_worst_usd"]
    # another form of the same model (H100 PCIe to SXM) must be clearly cheaper: a few
    # percent is within what a projection knows
    same_model = p.current is not None and family(p.current) == family(p.target)
    margin = SAME_MODEL_SAVING if same_model else 0.0
    cheaper = now_cost is not None and worst < now_cost * (1 - margin)
    rule: str | None = None
    if p.current is not None and (p.current.name == p.target.name
                                  or (configured is not None and _at_least(p.current, configured))):
        why = f"already on {p.current.name}"
    elif cannot_run_here:
        rule, why = "memory", f"cannot run well here: {cannot_run_here}"
    elif not holds(p.target, p.inputs.memory_bytes, p.inputs.card_bytes):
        held = p.inputs.memory_bytes or 0.0
        why = (f"the job holds {held / GIB:.0f} GiB today, more than {p.target.name} holds "
               f"({p.target.memory_bytes / GIB:.0f} GiB): shard it first")
    elif p.inputs.fix_first in FIX_FIRST:
        why = FIX_FIRST[p.inputs.fix_first]
    elif p.inputs.gpu_busy is None and p.current is not None and _gain_is_compute(p):
        why = ("GPU utilisation not measured: all compute was counted as GPU-busy, so even "
               "the low end is an upper bound (give the agent NVML)")
    elif p.gpus > 1 and p.now.comm + p.now.bubble <= 0 and p.now.comm_bytes <= 0:
        why = (f"no collective seen on {p.gpus} GPUs: their communication cannot be told "
               "from compute, so the projection is an upper bound (let gpuwatch see the "
               "collectives: torch.distributed calls, a DDP comm hook)")
    elif cheaper:
        rule, why = "cheaper", (f"cheaper per {e['unit']} even at the low end "
                                f"(${now_cost:.3g} -> ${worst:.3g})")
    elif gain >= costs.min_time_gain:
        rule, why = "time", (f"time to result {gain:.1f}x shorter at the low end "
                             f"(at least {costs.min_time_gain:g}x wanted)")
    elif p.current is None:
        why = f"{unknown_card(p.inputs.device_name)}, so the move is not judged"
    else:
        cost = (f", {worst / now_cost:.2f}x the cost per {e['unit']}" if now_cost else
                ", cost now unknown")
        lower = (f"{SAME_MODEL_SAVING:.0%} lower cost, being another form of its model,"
                 if same_model else "a lower cost")
        why = (f"the move does not pay: {low:.2f}x at the low end{cost} "
               f"(a move needs {lower} or {costs.min_time_gain:g}x the speed)")
    verdict: Verdict = MOVE if rule else otherwise
    e["decision"] = {"verdict": verdict, "rule": rule, "why": why,
                     "time_gain_low_ratio": gain, "min_time_gain_ratio": costs.min_time_gain,
                     "cheaper_at_low_end": cheaper if now_cost is not None else None}
    return verdict
