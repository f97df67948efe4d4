"""data_starvation: the loop waits for input while its loader cannot keep up (fix here).

Judged over the rule's window, and over ``LONG_WINDOWS`` of them: a loader that stalls
every few steps (network storage) shows its mean only over several stalls, while one
window holds one stall or two (where the typical step hardly waits, only the longer
span judges: two stalls in one window are no starved loader)."""

from __future__ import annotations

import itertools

from gpuwatch.detection.context import (
    LONG_WINDOWS,
    Context,
    Detection,
    recent,
    window_s,
    window_start,
)
from gpuwatch.detection.rules import Rule
from gpuwatch.records import Sample
from gpuwatch.series import mean_of
from gpuwatch.telemetry import Telemetry

CHECK_ADVICE = ("Check the loader: enough workers (num_workers), CPU cores for them, fast "
                "enough storage, prefetch_factor, pin_memory.")
CPU_BOUND_ADVICE = ("Add DataLoader workers or CPU cores, or make the transforms cheaper "
                    "(move augmentation to the GPU, pre-tokenise, cache decoded data).")


def detect(view: Telemetry, rule: Rule, ctx: Context, now: float) -> Detection | None:
    th = rule.thresholds
    share = th["data_share"]
    since = window_start(view, rule, now)
    summary = recent(view, rule, now)
    if summary is None or summary.data_share < share or _in_stalls(view, since, share):
        since = now - LONG_WINDOWS * window_s(view, rule)
        summary = view.summarise(since)
        if (summary is None or summary.steps < rule.min_steps or summary.data_share < share
                or view.warmed_at > since):  # (the span not trained through yet: a few
            return None  # stalls at the start are no mean)
    evidence = {
        "data_share_ratio": summary.data_share,
        "data_seconds_per_step": summary.data_share * summary.mean_step_s,
        "step_seconds": summary.mean_step_s,
    }
    counted, busy, system = loader_readings(view, since)
    workers = counted or 0
    if counted is not None:
        evidence["workers"] = float(workers)
    if workers and busy is not None:
        evidence["workers_cpu_ratio"] = busy
    if workers and system is not None:
        evidence["host_cpu_ratio"] = system
    if counted is None:  # no host probe: nothing says how batches are loaded
        text = "its DataLoader workers are not known (no host readings)"
        advice = CHECK_ADVICE
    elif workers and busy is None:  # (every reading fell in an interruption)
        text = (f"{_its(workers, 'was', 'were')} not read while it trained (every host "
                "reading fell in an evaluation, a save or another pause)")
        advice = CHECK_ADVICE
    elif not workers:
        text = "batches are loaded in the training process itself (no DataLoader workers)"
        advice = ("Load in worker processes: DataLoader(num_workers=N, pin_memory=True, "
                  "persistent_workers=True).")
    elif (busy_share := evidence.get("workers_cpu_ratio", 0.0)) >= th["workers_saturated"]:
        text = f"{_its(workers)} CPU-bound ({busy_share:.0%} busy)"
        advice = CPU_BOUND_ADVICE
    elif (evidence.get("host_cpu_ratio", 0.0) >= th["host_saturated"]
          and busy_share >= th["workers_contended"]):
        text = (f"{_its(workers, 'waits', 'wait')} for a core: the host's CPUs are "
                f"{evidence['host_cpu_ratio']:.0%} busy")
        advice = ("The host's CPUs are the limit: make the transforms cheaper (move "
                  "augmentation to the GPU, pre-tokenise, cache decoded data), run no more "
                  "workers than the cores free for them, or give the job more cores.")
    elif busy_share >= th["workers_busy"]:  # most of their time on a core: not storage
        text = f"{_its(workers)} mostly computing ({busy_share:.0%} busy)"
        advice = CPU_BOUND_ADVICE
    else:
        text = f"{_its(workers)} mostly idle: storage or prefetch is the limit"
        advice = ("Add DataLoader workers (idle ones wait on reads: more of them read "
                  "side by side; a larger prefetch_factor alone reads no faster), read from "
                  "faster storage or in larger chunks, or use a streaming dataset format.")
    return Detection(evidence, [view.rank],
                     text={"rank": view.rank, "workers_text": text, "advice": advice})


def _its(workers: int, one: str = "is", many: str = "are") -> str:
    """"its N DataLoader workers are" (one: "worker is"), or another verb's forms."""
    return (f"its 1 DataLoader worker {one}" if workers == 1
            else f"its {workers} DataLoader workers {many}")


def loader_readings(view: Telemetry, since: float
                    ) -> tuple[int | None, float | None, float | None]:
    """The loader workers the span's steps ran with (the median count), their mean busy
    share and the host's (None without such readings), from the host readings of those
    steps: past warm-up, no later than the newest step, and outside interruptions where
    those are rare, as ``summarise`` leaves them out (an eval, a save, one still under
    way: the workers sit idle then, their prefetch full, and a CPU-bound loader read as
    waiting on storage; a loader restarting its workers at an epoch's end has none for
    a moment, an eval loader's workers join them while it runs); a loader's stalls that
    are the job's rhythm count, as they do in the data share. A span inside an
    interruption takes as many of the newest readings of steps before it; the count
    alone from its own if there are none (the shares are then None: not read while the
    loop trained). None for the count without a reading."""
    dt = view.sample_interval_s("host") or 0.0
    rare = not view.rhythmic(since)  # (a loader stalling every few steps: its stalls count)

    def left_out(t: float) -> bool:  # (a reading tells of the interval before it)
        return (t - dt < view.warmed_at or t > view.last_step_t
                or (rare and (view.interrupted(t) or view.interrupted(t - dt))))

    def of_steps(readings: list[Sample]) -> list[dict[str, float]]:
        return [s.values for s in readings if not left_out(s.t)]

    span = view.samples_since("host", since)
    values = of_steps(span)
    if span and not values:
        values = of_steps(view.samples_since("host", 0.0))[-len(span):]
    counts = sorted(v["workers"] for v in values or [s.values for s in span] if "workers" in v)
    return (int(counts[len(counts) // 2]) if counts else None,
            mean_of(v.get("workers_cpu_ratio") for v in values),
            mean_of(v.get("system_cpu_ratio") for v in values))


def _in_stalls(view: Telemetry, since: float, share: float) -> bool:
    """Whether the wait for data since ``since`` is carried by a few steps' stalls: the
    median step waits less than half ``share`` of itself (a loader stalling now and
    then on storage: two stalls in one window read as a starved loader, so it is
    judged over the longer span, where its mean shows)."""
    shares = sorted(s.data_s / s.wall_s for s in itertools.takewhile(
        lambda s: s.t >= since, reversed(view.steps)) if s.wall_s > 0)
    return bool(shares) and shares[len(shares) // 2] < share / 2
