"""The latest figures as one flat dict of numbers, for the experiment trackers people
already watch (Lightning loggers, Hugging Face ``report_to``, a plain loop's own logger).

Keys are ``gpuwatch/<name>`` in base units: the mean step and each phase's share of
it over the last ``WINDOW_S`` seconds, samples and tokens per second, the newest GPU
reading, and one ``gpuwatch/<verdict>/<detector>`` per finding (1 while it holds,
0 once resolved). Step figures cover at most the newest ``MAX_STEPS`` steps. A
figure that was not measured is absent, never 0.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable

from gpuwatch.records import Finding
from gpuwatch.telemetry import WARMUP_STEPS, Telemetry
from gpuwatch.vocabulary import PARTS, split_step

WINDOW_S = 60.0
MAX_STEPS = 1024  # the newest steps of the window at most: a bounded cost per refresh
GPU_KEYS = ("gpu_utilization_ratio", "gpu_memory_used_bytes", "gpu_memory_total_bytes",
            "gpu_power_watts", "gpu_sm_active_ratio", "gpu_tensor_active_ratio")
PREFIX = "gpuwatch/"


def figures(view: Telemetry, findings: Iterable[Finding], now: float,
            window_s: float = WINDOW_S) -> dict[str, float]:
    """The figures of one rank's telemetry at ``now`` (record time, Unix seconds)."""
    out: dict[str, float] = {}
    recent = list(itertools.islice(itertools.takewhile(lambda s: s.t >= now - window_s,
                                                       reversed(view.steps)), MAX_STEPS))
    recent = [s for s in recent if s.step > WARMUP_STEPS] or recent
    wall = sum(s.wall_s for s in recent)
    if recent and wall > 0:
        out[PREFIX + "step_seconds"] = wall / len(recent)
        totals = [sum(parts) for parts in zip(*(split_step(s) for s in recent), strict=True)]
        for phase, seconds in zip(PARTS, totals, strict=True):
            out[f"{PREFIX}{phase}_share_ratio"] = seconds / wall
        samples, tokens = sum(s.samples for s in recent), sum(s.tokens for s in recent)
        if samples:
            out[PREFIX + "samples_per_second"] = samples / wall
        if tokens:
            out[PREFIX + "tokens_per_second"] = tokens / wall
    out[PREFIX + "steps_total"] = float(view.steps_done)
    gpus = view.gpu_samples()
    for sample in gpus:
        infix = "" if len(gpus) == 1 else f"gpu{sample.gpu}_"
        for key in GPU_KEYS:
            if key in sample.values:
                out[f"{PREFIX}{infix}{key}"] = sample.values[key]
    allocator = view.latest("allocator")
    if allocator is not None and "allocator_reserved_peak_bytes" in allocator.values:
        out[PREFIX + "allocator_reserved_peak_bytes"] = \
            allocator.values["allocator_reserved_peak_bytes"]
    active = 0
    for f in findings:
        held = f.state == "active"
        active += held
        key = f"{PREFIX}{f.verdict}/{f.detector}"  # one key for the detector on any rank
        out[key] = max(out.get(key, 0.0), 1.0 if held else 0.0)
    out[PREFIX + "findings_active"] = float(active)
    return out
