"""hang: all progress has stopped for max(min_seconds, median_multiple x median step) while
the process lives (its agent still reports). Severity critical.

Progress is anything that shows the job working: a step, DataLoader or eval batches
between steps (a ``progress`` event: an eval loop, an epoch restart, the micro-batches
of a long step), a finished save (``PROGRESS_EVENTS``), and, for logs without those
records, what the probes see: a save still being written, the GPU busy at its working
power (an eval, a long step), the process busy on its CPU outside a wait (a
``torch.compile`` recompile), or its DataLoader workers at full CPU while it waits for
data (an epoch's start filling a shuffle buffer; for at most ``max_alone_seconds``).
Waiting is not progress: an open data or collective phase, or the GPU pinned at full
utilisation at low power with no step, the signature of a hung NCCL collective. Waiting
for another rank that works between steps (the job engine's ``HOLDING``: a rank-0-only
``torch.save`` or eval holds every other rank at its next collective) is no hang: a
save's cost is ``checkpoint_overhead``'s. A rank that has already paused at least twice
and gone on (a worker between trials) is given 1.5 times its longest pause."""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Mapping

from gpuwatch.detection.context import HOLDING, Context, Detection
from gpuwatch.detection.rank_input import RankInput
from gpuwatch.detection.rules import Rule
from gpuwatch.records import Sample
from gpuwatch.telemetry import OPEN_SAVE_KEY, Telemetry

WAITS = ("data", "collective")  # phases in which a busy CPU is waiting, not working
HOLD_FRESH_S = 30.0  # a sign of work older than this no longer says its rank works (seconds)
# DataLoader workers this busy (the mean share of each one's core) are at work of their
# own, not feeding a loop that consumes their batches (a shuffle buffer filling at an
# epoch's start); a loop that stopped consuming leaves them idle once its prefetch fills
LOADER_BUSY = 0.8
# A rank that has paused this many times (``Telemetry.pauses``: silences a step ended)
# pauses by habit (a worker between trials, an eval loop without markers): a silence up
# to PAUSE_MARGIN times its longest is its rhythm, not a hang.
RHYTHM_PAUSES, PAUSE_MARGIN = 2, 1.5


def detect(view: Telemetry, rule: Rule, ctx: Context, now: float) -> Detection | None:
    if len(view.steps) < max(rule.min_steps, 1):
        return None  # a job that never stepped is starting, not hung
    th = rule.thresholds
    if now - view.last_progress < th["min_seconds"]:
        return None  # the cheap path: a step or progress event is recent
    recent = [s.wall_s for s in itertools.islice(reversed(view.steps), 100)]
    median = statistics.median(recent)
    bound = max(th["min_seconds"], th["median_multiple"] * median)
    usual = max(view.pauses) if len(view.pauses) >= RHYTHM_PAUSES else 0.0
    bound = max(bound, PAUSE_MARGIN * usual)  # the job pauses like this and goes on
    if now - view.last_progress < bound:
        return None
    working = view.working_power_w()
    last, signature = last_busy(view, th, working)
    progress = max(view.last_progress, last)
    stalled = now - progress
    if stalled < bound:
        return None
    agent = view.latest("agent")
    open_phases = {k[len("open_"):-len("_seconds")]: v for k, v in
                   (agent.values.items() if agent else ()) if k.startswith("open_")}
    evidence = {"stalled_seconds": stalled, "bound_seconds": bound,
                **({"usual_pause_seconds": usual} if usual else {}),
                "median_step_seconds": median, "last_step_time_seconds": view.steps[-1].t,
                "last_progress_time_seconds": progress, "steps_total": float(view.steps_done)}
    if signature is not None:
        evidence["gpu_utilization_ratio"], evidence["gpu_power_watts"] = signature
        if working:
            evidence["working_power_watts"] = working
    if HOLDING in ctx.explained.get(view.rank, ()) and (
            "collective" in open_phases or signature is not None or not open_phases):
        return None  # waiting for a rank that works between steps (a save, an eval): no hang
    if "collective" in open_phases:
        evidence["in_collective_seconds"] = open_phases["collective"]
        where = (f"it has waited {open_phases['collective']:.0f} s in a collective, "
                 "so another rank stopped first")
    elif signature is not None:
        where = (f"its GPU is pinned at {signature[0]:.0%} utilisation at {signature[1]:.0f} W "
                 "with no step: the signature of a hung NCCL collective")
    elif open_phases:
        phase, seconds = max(open_phases.items(), key=lambda kv: kv[1])
        where = f"it is stuck in {phase} ({seconds:.0f} s), not in a collective"
    else:
        where = "it is not in a collective or a marked phase"
    pid = view.meta.pid if view.meta else 0
    # (stuck in a phase of its own: the rank the others wait for, not one to look for)
    stopped_here = (bool(open_phases) and "collective" not in open_phases and signature is None
                    and view.world_size > 1)
    return Detection(evidence, [view.rank],
                     text={"rank": view.rank, "host": view.host, "where": where, "pid": pid},
                     variant="stopped_here" if stopped_here else None)


def last_busy(view: Telemetry, th: dict[str, float],
              working: float | None) -> tuple[float, tuple[float, float] | None]:
    """When the probes last saw the job working after its last progress record (Unix s,
    0 if never), and the newest NCCL-hang signature (utilisation, watts) if seen."""
    since = view.last_progress
    latest, signature = 0.0, None
    for s in view.samples_since("nvml", since):
        util, power = s.values.get("gpu_utilization_ratio"), s.values.get("gpu_power_watts")
        if util is None:
            continue
        low_power = (power is not None and working is not None
                     and power < th["working_power_ratio"] * working)
        if util >= th["pinned_utilization"] and low_power:
            signature = (util, power or 0.0)
        elif util >= th["busy_utilization"] and not low_power and (
                power is not None or util < th["pinned_utilization"]):
            latest, signature = max(latest, s.t), None  # busy at working power
    for s in view.samples_since("agent", since):
        if 0 < s.values.get(OPEN_SAVE_KEY, 0.0) < th["max_save_seconds"]:
            latest = max(latest, s.t)  # a save still being written
    if signature is None:
        latest = max(latest, _cpu_busy(view, since, th))
    return latest, signature


def working_off_step(view: RankInput, now: float, th: Mapping[str, float]) -> bool:
    """Whether the probes see this quiet rank working alone in its readings of the last
    ``HOLD_FRESH_S`` before ``now`` (Unix s): its GPU busy (``busy_utilization``) at
    working power (``working_power_ratio`` of what it drew while stepping, the
    reference ``last_busy`` uses), or, where its GPU does not show a hung collective's
    signature (pinned at low power), its process busy on ``busy_cpu_cores`` with no
    wait in data or a collective open, or, waiting for data, its DataLoader workers at
    work (``_loading``); for at most ``max_alone_seconds`` since its newest step or
    progress (1.5 times its longest pause where it pauses by habit): a rank busy longer
    is taken as hung, however it spins, so the others are paged. What
    ``last_busy`` counts as progress for the rank itself, from figures any rank input
    answers (a replay's digested ranks too): the job engine's view of a rank at work
    between steps (previews on its GPU, an export on its CPU) while the others wait."""
    last = max(view.last_step_t, view.last_progress)  # (as the rank's own ``last_busy``)
    pauses = view.pauses if isinstance(view, Telemetry) else ()
    usual = PAUSE_MARGIN * max(pauses) if len(pauses) >= RHYTHM_PAUSES else 0.0
    if now - last >= max(th["max_alone_seconds"], usual):
        return False
    since = max(last, now - HOLD_FRESH_S)
    util = view.figure("nvml", "gpu_utilization_ratio", since)
    power = view.figure("nvml", "gpu_power_watts", since)
    drawn = view.working_power_w()
    if util is not None and power is not None and drawn is not None:
        working = power.mean >= th["working_power_ratio"] * drawn
        if util.mean >= th["busy_utilization"] and working:
            return True
        if util.mean >= th["pinned_utilization"] and not working:
            return False  # a hung collective's signature: its CPU spins in the wait
    waits = {p: view.figure("agent", f"open_{p}_seconds", since) for p in WAITS}
    workers = view.figure("host", "workers", since)
    loading = view.figure("host", "workers_cpu_ratio", since)
    data, collective = waits["data"], waits["collective"]
    if (workers is not None and loading is not None and data is not None and data.high > 0
            and not (collective is not None and collective.high > 0)
            and _loading(workers.mean, loading.mean, th["busy_cpu_cores"])):
        return True  # its DataLoader workers at work as it waits for data (a buffer)
    cpu = view.figure("host", "process_cpu_cores", since)
    return (cpu is not None and cpu.mean >= th["busy_cpu_cores"]
            and not any(w is not None and w.high > 0 for w in waits.values()))


def _loading(workers: float, busy: float, cores: float) -> bool:
    """Whether ``workers`` DataLoader workers, each ``busy`` (share of a core), are at
    work: ``LOADER_BUSY`` each and ``cores`` in all."""
    return busy >= LOADER_BUSY and workers * busy >= cores


def _cpu_busy(view: Telemetry, since: float, th: Mapping[str, float]) -> float:
    """The newest host sample with the process busy on ``busy_cpu_cores`` outside a
    wait, or, while it waits for data, its DataLoader workers at work (``_loading``: an
    epoch's start filling a shuffle buffer), for at most ``max_alone_seconds`` since
    ``since`` (workers spinning on storage that went away load nothing) (0 if none)."""
    cores = th["busy_cpu_cores"]
    agent: dict[float, Sample] = {s.t: s for s in view.samples_since("agent", since)}
    latest = 0.0
    for s in view.samples_since("host", since):
        beside = agent.get(s.t) or view.latest("agent")
        opened = {p: beside.values.get(f"open_{p}_seconds", 0.0) > 0 if beside else False
                  for p in WAITS}
        loading = (opened["data"] and not opened["collective"]
                   and s.t - since <= th["max_alone_seconds"]
                   and _loading(s.values.get("workers", 0.0),
                                s.values.get("workers_cpu_ratio", 0.0), cores))
        if loading or (s.values.get("process_cpu_cores", 0.0) >= cores
                       and not any(opened.values())):
            latest = max(latest, s.t)
    return latest
