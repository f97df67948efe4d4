"""checkpoint_overhead: blocking checkpoint saves eat the run's wall time (fix here).

The share is run-long: blocking save seconds over the wall time since training (or
the first save) began, so one 40 s save an hour is about 1% and a save every few
steps is what it costs. A checkpoint is a run of saves with no step between them
(a model file, then the optimizer's): its time and bytes are the figures per save,
and the time between checkpoints' starts is how often it comes. Saves written in the
background (``blocking: false``: a writer thread, the background part of
``async_save``) cost the loop nothing; the blocking part of an async save (its copy
of the state to host memory: no bytes written) is told as staging, with the bytes the
background wrote."""

from __future__ import annotations

from gpuwatch.detection.context import Context, Detection
from gpuwatch.detection.rules import Rule
from gpuwatch.telemetry import Telemetry
from gpuwatch.vocabulary import duration, size


def detect(view: Telemetry, rule: Rule, ctx: Context, now: float) -> Detection | None:
    saves = view.saves
    th = rule.thresholds
    if saves.saves < th["min_saves"] or saves.first_start is None:
        return None  # one save says nothing about how often the run pays for it
    wall = view.saves_wall_s(now)
    if wall < th["min_wall_s"] and not view.ended:
        return None  # (a share over the first seconds is the first, cold saves')
    share = view.save_share(now)
    if share <= 0 or share < th["checkpoint_share"]:
        return None
    per = max(saves.checkpoints, 1)
    evidence = {
        "checkpoint_share_ratio": share,
        "saves_total": float(saves.saves),
        "checkpoints_total": float(saves.checkpoints),
        "async_saves_total": float(saves.async_saves),
        "seconds_per_save": saves.blocking_s / per,
        "bytes_per_save": saves.blocking_bytes / per,
        "save_bytes_per_second": saves.blocking_bytes / saves.blocking_s
        if saves.blocking_s > 0 else 0.0,
        "seconds_between_saves": saves.interval_s() or wall / per,
        "wall_seconds": wall,
    }
    text = {"rank": view.rank, "per_save": size(evidence["bytes_per_save"]),
            "save_rate": f"{size(evidence['save_bytes_per_second'])}/s",
            "every": duration(evidence["seconds_between_saves"])}
    staged = not saves.blocking_bytes and saves.async_saves > 0
    if staged:  # the blocking part of an async save wrote nothing: it staged the state
        evidence["async_bytes_per_save"] = saves.async_bytes / saves.async_saves
        text["per_save"] = size(evidence["async_bytes_per_save"])
    return Detection(evidence, [view.rank], text=text, variant="staging" if staged else None)
