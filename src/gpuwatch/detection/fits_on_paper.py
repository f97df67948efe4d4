"""fits_on_paper: the model fits the card on paper but not in practice. The job's own
memory is at the limit and it shows (allocator retries or OOMs inside the window, a
training batch cut that persists, activation checkpointing turned on after OOMs), or it
keeps running out of memory (OOMs that recur in training: ``recurring_ooms``); when
its need fits a bigger card with room: move it (move_to_h100), else fix it here.

Activation checkpointing alone is a design choice, not a symptom: without pressure
symptoms it gets no move, at most an ``info`` that turning it off here would save
its recompute time. Symptoms while other processes hold the rest of the card (a shared
card), or retries while the cache holds far more than live tensors (fragmentation),
are fixed here. The card the job already runs on is never recommended, and a job
already on the target gets ``fix_here`` (shard it), naming a bigger card that would
hold it. A step that waits on its data loader, on blocking saves or in stalls
(``HELD_BY``) does not make memory alone a reason to move: the move must pay as any
other.

A rank that died of an OOM in its first steps, before any window could hold enough of
them to judge (as a job too big for the card does), is told so at the end of its log
(``died_early``): no need is sized from so few steps, so no card is recommended."""

from __future__ import annotations

import math

from gpuwatch.detection.context import (
    BIGGER,
    WAITING,
    Context,
    Detection,
    card_bytes,
    first_high,
    mean_parts,
    recent,
    window_start,
    with_interruptions,
)
from gpuwatch.detection.moves import unknown_card
from gpuwatch.detection.projection import Gpu, speedup_text
from gpuwatch.detection.rules import Rule
from gpuwatch.telemetry import WARMUP_STEPS, Ending, StepSummary, Telemetry

GIB = 2**30
# Bottlenecks no card fixes, judged before this rule: on a rank held back by one, memory
# at the limit is no reason of its own to move (the move must pay as any other).
HELD_BY = (("data_starvation", "the step waits on its data loader", "fix the loader first"),
           ("checkpoint_overhead", "blocking checkpoint saves take much of its time",
            "fix the saves first"),
           ("interruptions", "its steps stall far beyond their usual length",
            "fix the stalls first"))
TOKENS_HELD = 0.9  # a smaller batch with this share of the tokens per step is no cut
NO_FASTER = 1.05  # a move projected at most this much faster is for memory alone
SEARCH_S = 30.0  # an OOM this soon after the batch grew is the growing's (a search)
RECUR_S = 600.0  # OOMs in training that recur within this long: a job that keeps running out
INCIDENT_S = 30.0  # OOMs closer than this are one incident (a batch tried again)
NEAR_LIMIT = 0.75  # ... where the job's memory reaches this share of the card
CUT_AFTER_OOM_S = 60.0  # an OOM this long before a batch cut (or activation
# checkpointing turned on) is what made the job cut it (turn it on)
# The job's own memory, best source first: (source, key, what the evidence calls it).
MEMORY_SOURCES = (
    ("allocator", "allocator_reserved_bytes", "the allocator"),
    ("nvml", "gpu_process_memory_bytes", "its processes (NVML)"),
    ("nvml", "gpu_memory_used_bytes",
     "the whole card (NVML), other processes included: no allocator or per-process reading"),
)


def card_memory(view: Telemetry, ctx: Context) -> float | None:
    """Bytes on this rank's card: NVML, else topology, else the configured model."""
    for sample in view.gpu_samples():
        if sample.values.get("gpu_memory_total_bytes"):
            return sample.values["gpu_memory_total_bytes"]
    return card_bytes(view, ctx.current_gpu(view))


def own_memory(view: Telemetry, since: float) -> tuple[float, int] | None:
    """The job's peak memory in the window (bytes) and which MEMORY_SOURCES gave it."""
    return first_high(view, [(source, key) for source, key, _ in MEMORY_SOURCES], since)


def detect(view: Telemetry, rule: Rule, ctx: Context, now: float) -> Detection | None:
    th = rule.thresholds
    summary = recent(view, rule, now)
    if summary is None:  # (too few steps: died in them, or not judged yet)
        return died_early(view, ctx) if view.died_of_oom and view.steps_seen < (
            WARMUP_STEPS + rule.min_steps) else None
    since = window_start(view, rule, now)
    # warm-up's retries and OOMs (cudnn.benchmark's tries, a batch finder) are no pressure:
    # where the window reaches back into it, counters rise from the first reading after
    trained = max(since, view.warmed_at)
    retries = view.counter_rise("allocator", "allocator_alloc_retries_total",
                                math.nextafter(trained, math.inf) if trained > since else since)
    cut, cut_at = view.batch.cut, view.batch.cut_at
    if not view.oom_times:
        cut = None  # a run that never ran out of memory cut no batch for it: a schedule
    if cut is not None and summary.tokens >= TOKENS_HELD * view.tokens_at.get(cut[0], 0) > 0:
        cut = None  # tokens per step held: longer sequences in smaller batches (a schedule)
    act_ckpt = summary.recompute_share >= th["recompute_share"]
    # OOMs that brought the batch down, or that the job answered by turning activation
    # checkpointing on, stay a symptom while the workaround stays
    ooms_from = min(since, cut_at - CUT_AFTER_OOM_S) if cut and cut_at else trained
    raised = view.ooms_since(ooms_from)
    ooms = raised - searched_ooms(view, ooms_from)
    if act_ckpt:
        ooms += answered_ooms(view, ctx, th["memory_ratio"], ooms_from)
    recurring = recurring_ooms(view, now)
    # (the allocator retries once before every OOM it raises: those retries are the OOM's)
    # (one retry now and then costs a cache flush: retries are a symptom once they recur)
    symptoms = {"allocator retries": retries - raised >= th["min_retries"],
                "OOMs": ooms > 0 or recurring > 0, "batch cut": cut is not None}
    if not act_ckpt and not any(symptoms.values()):
        return None  # (the common case: nothing to weigh memory against)
    total = card_memory(view, ctx)
    measured = own_memory(view, since)
    if not total or measured is None:
        return None
    peak, source = measured
    pressure = peak / total >= th["memory_ratio"]
    live = view.figure("allocator", "allocator_allocated_peak_bytes", since)
    split = (live is not None and live.high < th["live_ratio"] * total  # a fragmented cache
             and peak - live.high >= th["split_cache_ratio"] * total)
    # OOMs that recur in training keep a job out of memory between them too, however
    # far below the limit a reading once a second finds it (the allocator has just let
    # its cache go), if not far: not where its memory stays low (a spike: a request no
    # card may hold), nor from a fragmented cache
    if recurring and (peak < NEAR_LIMIT * total or split):
        recurring = 0
        symptoms["OOMs"] = ooms > 0
        if not act_ckpt and not any(symptoms.values()):
            return None
    ooms = max(ooms, recurring)
    if not any(symptoms.values()):
        return by_design(view, th, summary, peak, total, since)
    others = other_processes(view, since)
    if (others is not None and not pressure and others >= th["others_ratio"] * total
            and peak + others >= th["memory_ratio"] * total
            and memory_need(view, since, peak, cut, 1.0) <= total):
        return shared(view, symptoms, others, peak, total)  # (it fits the card alone)
    if split and live is not None and retries > 0 and not ooms and cut is None:
        return fragmented(view, since, retries, live.high, peak, total)
    held = view.figure("allocator", "allocator_allocated_bytes", since)
    start = view.allocated_at_start
    if (held is not None and start is not None and cut is None
            and held.low - start >= th["leak_ratio"] * total):
        return leak(view, start, held.low, peak, total, retries, ooms)
    if not (pressure or recurring or sum(symptoms.values()) + act_ckpt >= 2):
        return None
    symptoms["activation checkpointing"] = act_ckpt
    current = ctx.current_gpu(view)
    workaround_at = max((t for t in (cut_at if cut else None,
                                     view.act_ckpt_on_at if act_ckpt else None)
                         if t is not None), default=None)
    need = memory_need(view, since, peak, cut, th["act_ckpt_memory_factor"] if act_ckpt else 1.0,
                       workaround_at)
    # (it cannot run well here where memory is at the limit, or it ran out: not for
    # retries on a card with room, which a move must pay for as any other)
    hard = pressure or ooms > 0 or cut is not None
    if not hard and need <= th["target_headroom"] * total:
        # retries and checkpointing below the card's limit, and the job would fit this
        # card with room without its workarounds: no bigger card is what it needs
        return by_design(view, th, summary, peak, total, since, retries) if act_ckpt else None
    # (OOMs before the window are no symptom now, but the run had them: said as such)
    earlier = max(view.ooms_since(0.0) - searched_ooms(view, 0.0) - ooms, 0)
    trained_from = math.nextafter(view.warmed_at, math.inf)  # (warm-up's tries aside)
    ran_out = ooms or view.ooms_since(trained_from) > searched_ooms(view, trained_from)
    if ran_out and need <= total:  # (it ran out of memory on this card: more than it)
        need, needed = total, f"more than the card's {total / GIB:.1f} GiB needed"
    else:
        needed = f"{need / GIB:.1f} GiB needed"
    target = pick_target(ctx, need, th["target_headroom"], current, total)
    fits = target is not None
    shown = target or ctx.target_gpu
    parts = with_interruptions(mean_parts(summary), view, now)
    proj = ctx.project([view], parts, since, target=shown, drop_recompute=fits and act_ckpt)
    if cut is not None:
        proj.assumptions.append(f"batch back to {cut[0]}: per-sample compute unchanged")
    if act_ckpt:
        proj.assumptions.append(f"without activation checkpointing activations take "
                                f"{th['act_ckpt_memory_factor']:g}x the memory")
    if view.figure("allocator", "allocator_allocated_bytes", since) is None:
        proj.assumptions.append("no allocator readings: half the peak taken as weights and "
                                "optimizer state")
    workarounds = list(proj.workarounds_dropped)
    if cut is not None:
        workarounds.append(f"batch size {cut[1]} -> {cut[0]}")
    evidence = {
        "memory_peak_ratio": peak / total, "memory_peak_bytes": peak, "memory_total_bytes": total,
        "alloc_retries_total": retries, "ooms_total": float(ooms),
        "recompute_share_ratio": summary.recompute_share, "memory_need_bytes": need,
    }
    # (onto a card that cannot hold the job, or from one not known, a projection is no
    # figure: the speed there is not told)
    # (nor from a throttled card: its projection would overstate any card's gain)
    priced = fits and current is not None and proj.inputs.fix_first != "throttling"
    if priced:
        evidence["speedup_ratio"] = proj.speedup
    if source == len(MEMORY_SOURCES) - 1:
        evidence["whole_card_memory"] = 1.0
    if cut is not None:
        evidence["batch_size_from"], evidence["batch_size_to"] = float(cut[0]), float(cut[1])
    if earlier > 0:
        evidence["ooms_earlier_total"] = float(earlier)
    reserved = view.figure("allocator", "allocator_reserved_bytes", since)
    inactive = view.figure("allocator", "allocator_inactive_split_bytes", since)
    if inactive and reserved and reserved.last > 0:
        evidence["fragmentation_ratio"] = inactive.last / reserved.last
    pcie = view.figure("nvml", "gpu_pcie_rx_bytes_per_second", since)
    if pcie:
        evidence["pcie_rx_bytes_per_second"] = pcie.high
    on_target = current is not None and current.name == ctx.target
    held_back = _held_back(view, ctx, ooms)
    cannot_run_here = None if held_back or not hard else (
        f"memory at {peak / total:.0%} of the card with "
        + _named(symptoms))
    # (a job on the configured target stays: a bigger card than it is no move to it)
    verdict = ctx.decide(proj, otherwise="fix_here", cannot_run_here=cannot_run_here) \
        if fits else "fix_here"
    if fits and verdict == "move_to_h100":
        speed = (f"the step is projected {speedup_text(proj.as_dict())} faster" if current
                 else f"its speed there is not projected: {unknown_card(ctx.device_name(view))}")
        if current and not priced:  # (throttled: its speed is no measure)
            speed = ("its speed there is not projected from this card, which runs throttled "
                     "(heat or power): fix that too")
        elif current and proj.speedup_high < NO_FASTER:  # (moved to run, not to run faster)
            speed = ("the move is for its memory: the step is projected no faster there"
                     + (" while a slower rank holds it" if WAITING in ctx.explained.get(
                         view.rank, ()) else ""))
        outcome = f"On {shown.name} it fits ({needed}) and {speed}"
    elif fits and on_target:
        outcome = (f"It would fit {shown.name} ({needed}), but it already "
                   f"runs on {ctx.target}: shard it across more GPUs here, or run it on "
                   f"{shown.name}")
    elif fits and held_back:
        outcome = (f"It would fit {shown.name} ({needed}), but {held_back[0]}, which no card "
                   f"fixes, and {proj.economics['decision']['why']}: {held_back[1]}")
    elif fits:
        outcome = (f"It would fit {shown.name} ({needed}), but "
                   f"{proj.economics['decision']['why']}: cut its memory here")
    else:
        outcome = (f"It needs {need / GIB:.1f} GiB: no bigger single card in the catalogue "
                   "fits it with room, so cut its memory here")
    text = {"rank": view.rank, "target": shown.name, "outcome": outcome,
            "memory_source": MEMORY_SOURCES[source][2],
            "symptoms": _named(symptoms) + (
                f"; {earlier} OOM{'s' * (earlier != 1)} earlier in the run" if earlier else ""),
            "workarounds": "; ".join(workarounds)
            or f"it needs {needed.removesuffix(' needed')}, which fit there with room"}
    return Detection(evidence, [view.rank], text=text,
                     projection=proj.as_dict() if priced else None,
                     verdict=verdict, variant=None if verdict == "move_to_h100" else "too_big")


def _held_back(view: Telemetry, ctx: Context, ooms: int) -> tuple[str, str] | None:
    """(what holds the step back, what to fix first) of the first of ``HELD_BY`` found on
    the rank; None if none is. Interruptions hold it back only as stalls: evaluations are
    GPU work (a faster card runs them faster), and stalls beside OOMs may be the job's
    own recoveries from them."""
    found = ctx.explained.get(view.rank, ())
    return next(((waits, fix) for name, waits, fix in HELD_BY if name in found and not (
        name == "interruptions" and (view.interrupted_by.mostly_evals or ooms))), None)


def recurring_ooms(view: Telemetry, now: float) -> int:
    """The OOMs in training (past warm-up, outside evaluations and batch searches) of the
    last ``RECUR_S`` where they recur: at least two incidents (``INCIDENT_S`` apart),
    the newest no longer ago than twice the gap between the newest two (the rhythm
    goes on); else 0."""
    if not view.oom_times or now - view.oom_times[-1] > RECUR_S or not view.warmed_at:
        return 0
    since = max(now - RECUR_S, math.nextafter(view.warmed_at, math.inf))
    times = [t for t in view.training_oom_times(since) if not _searched(view, t)]
    incidents: list[float] = []
    for t in times:
        if not incidents or t - incidents[-1] >= INCIDENT_S:
            incidents.append(t)
    if len(incidents) < 2 or now - times[-1] > 2 * (incidents[-1] - incidents[-2]):
        return 0
    return len(times)


def _searched(view: Telemetry, t: float) -> bool:
    """Whether an OOM at ``t`` came within ``SEARCH_S`` of the training batch growing."""
    return any(g <= t <= g + SEARCH_S for g in view.batch.grew)


def searched_ooms(view: Telemetry, since: float) -> int:
    """OOMs since ``since`` that came within ``SEARCH_S`` of the training batch growing:
    a search for the largest batch that fits (Lightning's batch-size finder grows it
    until one runs out, then keeps the last that fit) runs out by design."""
    if not view.batch.grew:
        return 0
    return sum(1 for t in view.oom_times if t >= since and _searched(view, t))


def answered_ooms(view: Telemetry, ctx: Context, memory_ratio: float, counted_from: float
                  ) -> int:
    """OOMs the job answered by turning activation checkpointing on: those in the minute
    before it came on (``Telemetry.act_ckpt_on_at``; before ``counted_from``, where the
    window's own count starts), warm-up's too, where the job also ran out after warm-up
    or its memory reached ``memory_ratio`` of the card since (a warm-up OOM, then a
    planned switch at low memory, is no answer to it)."""
    on_at = view.act_ckpt_on_at
    if on_at is None:
        return 0
    start = on_at - CUT_AFTER_OOM_S
    before = [t for t in view.oom_times if start <= t <= on_at and t < counted_from]
    if not before or any(t >= view.warmed_at for t in before):
        return len(before)
    total = card_memory(view, ctx)
    measured = own_memory(view, start)
    return len(before) if total and measured and measured[0] >= memory_ratio * total else 0


def restarted_to_fit(before: Ending, after: Ending) -> tuple[dict[str, float], str] | None:
    """What a restart did to fit a rank that an OOM killed (``before``: how its log
    ended; ``after``: how the next attempt's did): trained fewer samples a step (tokens
    not held: no longer sequences in smaller batches) or turned activation checkpointing
    on; as evidence and words. None for a restart that changed neither (a transient OOM
    the same job got past), on another number of ranks, or after a rank that did not die
    of one."""
    if not before.died_of_oom or after.world_size != before.world_size:
        return None  # (an elastic restart on other ranks: per-rank figures are no cut)
    if 0 < after.samples < before.samples and not (
            after.tokens >= TOKENS_HELD * before.tokens > 0):
        return ({"batch_size_from": float(before.samples), "batch_size_to": float(after.samples)},
                f"its restart trains {after.samples} samples a step, down from "
                f"{before.samples}, to fit")
    if after.act_ckpt and not before.act_ckpt:
        return {"restart_activation_checkpointing": 1.0}, (
            "its restart turned activation checkpointing on to fit")
    return None


def died_early(view: Telemetry, ctx: Context) -> Detection:
    """The rank died of an OOM (known at its log's end) with too few steps to judge: the
    memory it reached (its peak over the log) and the card's, where read."""
    total = card_memory(view, ctx)
    measured = own_memory(view, 0.0)
    evidence = {"ooms_total": float(view.ooms_since(0.0)),
                "steps_completed": float(view.steps_seen)}
    if total and measured is not None:
        peak, source = measured
        evidence |= {"memory_peak_ratio": peak / total, "memory_peak_bytes": peak,
                     "memory_total_bytes": total}
        memory = (f"its memory at {peak / GIB:.1f} of {total / GIB:.1f} GiB "
                  f"({peak / total:.0%}) by {MEMORY_SOURCES[source][2]}")
        card = f"a card with more than its {total / GIB:.1f} GiB"
    else:
        memory, card = "its memory not read", "a card with more memory"
    when = f"after step {view.steps_done}" if view.steps_seen else "before its first step"
    text = {"rank": view.rank, "when": when, "memory": memory, "card": card}
    return Detection(evidence, [view.rank], text=text, verdict="fix_here",
                     severity="critical", variant="died_early")


def by_design(view: Telemetry, th: dict[str, float], summary: StepSummary, peak: float,
              total: float, since: float, retries: float = 0.0) -> Detection | None:
    """Activation checkpointing with no pressure symptom (``retries`` that recur, but
    with memory well below the card's limit, are none): an ``info`` when turning it off
    would still fit this card with room, else nothing (it is what lets the job fit)."""
    need = memory_need(view, since, peak, None, th["act_ckpt_memory_factor"])
    if need > total * th["target_headroom"]:
        return None
    evidence = {"recompute_share_ratio": summary.recompute_share, "memory_peak_bytes": peak,
                "memory_total_bytes": total, "memory_need_bytes": need}
    room = ("no allocator retries, OOMs or batch cut" if retries < th["min_retries"] else
            f"{retries:.0f} allocator retries, with memory at {peak / total:.0%} of the card")
    text = {"rank": view.rank, "memory_need_gib": need / GIB, "total_gib": total / GIB,
            "room": room}
    return Detection(evidence, [view.rank], text=text, verdict="info", severity="info",
                     variant="by_design")


def _named(symptoms: dict[str, bool]) -> str:
    """The symptoms present, in words: "allocator retries, OOMs"."""
    return ", ".join(k for k, v in symptoms.items() if v)


def other_processes(view: Telemetry, since: float) -> float | None:
    """Bytes other processes hold on this rank's card at its fullest: NVML's used memory
    beyond the job's own processes'; None where NVML gave either not, or none of the
    job's own (in a container NVML names host PIDs the job cannot match to its own)."""
    used = view.figure("nvml", "gpu_memory_used_bytes", since)
    own = view.figure("nvml", "gpu_process_memory_bytes", since)
    if used is None or own is None or own.high <= 0:
        return None
    return max(used.high - own.high, 0.0)


def shared(view: Telemetry, symptoms: dict[str, bool], others: float, peak: float,
           total: float) -> Detection:
    """Retries, OOMs or a cut batch while the job's own memory is below the limit and
    other processes hold the rest of the card: the card is shared, and the job would fit
    it alone; no bigger one is needed."""
    evidence = {"memory_others_bytes": others, "memory_others_ratio": others / total,
                "memory_peak_ratio": peak / total, "memory_peak_bytes": peak,
                "memory_total_bytes": total}
    text = {"rank": view.rank, "others_gib": others / GIB, "peak_gib": peak / GIB,
            "total_gib": total / GIB, "symptoms": _named(symptoms)}
    return Detection(evidence, [view.rank], text=text, verdict="fix_here", variant="shared")


def fragmented(view: Telemetry, since: float, retries: float, live: float, peak: float,
               total: float) -> Detection:
    """Allocator retries while live tensors peak well below the card: the cache is
    fragmented (blocks reserved but split, free yet too small), which the allocator can
    be told to avoid; the job fits this card."""
    evidence = {"alloc_retries_total": retries, "memory_live_peak_ratio": live / total,
                "memory_peak_ratio": peak / total, "memory_live_peak_bytes": live,
                "memory_total_bytes": total}
    inactive = view.figure("allocator", "allocator_inactive_split_bytes", since)
    if inactive is not None:
        evidence["inactive_split_bytes"] = inactive.high
    text = {"rank": view.rank, "live_gib": live / GIB, "peak_gib": peak / GIB,
            "total_gib": total / GIB}
    return Detection(evidence, [view.rank], text=text, verdict="fix_here",
                     variant="fragmented")


def leak(view: Telemetry, start: float, held: float, peak: float, total: float,
         retries: float, ooms: int) -> Detection:
    """What the allocator holds between steps (weights, gradients, optimizer state) grew
    by a large share of the card at the same batch: tensors kept across steps, which
    fill any card in time; no bigger one is the fix."""
    evidence = {"memory_held_start_bytes": start, "memory_held_bytes": held,
                "memory_held_growth_ratio": (held - start) / total,
                "memory_peak_ratio": peak / total, "memory_total_bytes": total,
                "alloc_retries_total": retries, "ooms_total": float(ooms)}
    text = {"rank": view.rank, "start_gib": start / GIB, "held_gib": held / GIB,
            "total_gib": total / GIB}
    return Detection(evidence, [view.rank], text=text, verdict="fix_here", variant="leak")


def memory_need(view: Telemetry, since: float, peak: float, cut: tuple[int, int] | None,
                act_factor: float, workaround_at: float | None = None) -> float:
    """Bytes the job would need without its workarounds: what stays allocated between
    steps (weights, gradients, optimizer state: the least allocated seen) plus the
    activations (the live peak above that), scaled back to the original batch and to no
    activation checkpointing, plus the allocator's cache beyond the live peak as it is.
    Without a live peak reading, the reserved peak is taken as all activations.

    The allocator's peaks are the process's, never reset: where they have not risen
    since the workaround began (``workaround_at``: the batch cut, checkpointing turned
    on), they were reached without it (or by the attempt that ran out), which is no
    figure to scale again: the window's own readings are scaled, and that old peak is
    the least the job needs."""
    peaks = view.figure("allocator", "allocator_reserved_peak_bytes", since)
    live = view.figure("allocator", "allocator_allocated_peak_bytes", since)
    allocated = view.figure("allocator", "allocator_allocated_bytes", since)
    floor = 0.0
    if workaround_at is not None and live is not None and allocated is not None:
        since_then = view.figure("allocator", "allocator_allocated_peak_bytes", workaround_at)
        if since_then is not None and since_then.low >= since_then.high:  # (not risen)
            floor = max(live.high, peaks.high if peaks else 0.0)
            live, peaks = allocated, None  # (the window's highest reading, not a peak)
    peak = max(peaks.high, peak) if peaks else peak
    static = allocated.low if allocated else peak / 2
    top = min(live.high, peak) if live is not None else peak
    batch_factor = cut[0] / cut[1] if cut is not None else 1.0
    need = static + max(top - static, 0.0) * batch_factor * act_factor + (peak - top)
    return max(need, floor)


def pick_target(ctx: Context, need: float, headroom: float, current: Gpu | None,
                card_bytes: float) -> Gpu | None:
    """The configured target if the need fits it, else the first bigger card that fits;
    never the card the job runs on, nor one with no more memory than it has."""
    names = (ctx.target, *(n for n in BIGGER if n != ctx.target))
    for name in names:
        gpu = ctx.gpus.get(name)
        if gpu is None or (current is not None and gpu.name == current.name):
            continue
        if gpu.memory_bytes > card_bytes and need <= gpu.memory_bytes * headroom:
            return gpu
    return None
