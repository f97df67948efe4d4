"""The live one-line status: step time, data-wait share, CPU and GPU use."""

from __future__ import annotations

import sys
from typing import TextIO

from gpuwatch.telemetry import Telemetry


def status_line(telemetry: Telemetry, now: float, span_s: float = 10.0) -> str:
    """One line about the last ``span_s`` seconds; fields without data say n/a."""
    parts = [f"step {telemetry.steps_done}"]
    summary = telemetry.summarise(now - span_s)
    if summary is None:
        parts.append("waiting for steps")
    else:
        parts.append(f"{summary.mean_step_s * 1e3:.1f} ms/step")
        parts.append(f"data wait {summary.data_share:.0%}")
        if summary.checkpoint_share >= 0.005:
            parts.append(f"ckpt {summary.checkpoint_share:.0%}")
    host = telemetry.latest("host")
    cores = host.values.get("process_cpu_cores") if host else None
    parts.append(f"cpu {cores:.1f} cores" if cores is not None else "cpu n/a")
    gpus = telemetry.gpu_samples()
    utils = [g.values["gpu_utilization_ratio"] for g in gpus if "gpu_utilization_ratio" in g.values]
    if utils:
        parts.append("gpu " + " ".join(f"{u:.0%}" for u in utils))
        mem = [g.values["gpu_memory_used_bytes"] / g.values["gpu_memory_total_bytes"]
               for g in gpus if g.values.get("gpu_memory_total_bytes")]
        if mem:
            parts.append("mem " + " ".join(f"{m:.0%}" for m in mem))
    else:
        parts.append("gpu n/a")
    return "gpuwatch | " + " | ".join(parts)


class ConsoleStatus:
    """Prints the status line: redrawn in place on a terminal, one line per call otherwise."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self._tty = self.stream.isatty()

    def show(self, line: str) -> None:
        self.stream.write(f"\r\x1b[2K{line}" if self._tty else line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self._tty:
            self.stream.write("\n")
            self.stream.flush()
