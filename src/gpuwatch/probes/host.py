"""Host probe (psutil): process and system CPU, memory, and the CPU of child
processes. ``workers`` counts every live child (in a training process mostly the
DataLoader workers, but compile workers and anything else it started too)."""

from __future__ import annotations

from typing import Any

import psutil

from gpuwatch.records import Sample


class HostProbe:
    """One Sample per read. CPU ratios are over the interval since the previous read:
    ``process_cpu_cores`` in cores used, ``workers_cpu_ratio`` the mean busy share of
    one worker (1.0: every worker saturates its core)."""

    def __init__(self, rank: int, pid: int | None = None) -> None:
        self.rank = rank
        self._proc = psutil.Process(pid)
        self._children: dict[int, psutil.Process] = {}
        self._last: tuple[float, float, float] | None = None  # mono, own cpu, children cpu
        self._child_cpu: dict[int, float] = {}
        self._dead_cpu = 0.0
        psutil.cpu_percent(None)  # prime the system-wide counter

    def pids(self) -> set[int]:
        """This process and its live children (the pids whose GPU memory is the job's)."""
        return {self._proc.pid, *self._children}

    def sample(self, now: float, mono: float) -> list[Sample]:
        proc = self._proc
        with proc.oneshot():
            times = proc.cpu_times()
            rss = proc.memory_info().rss
        own = times.user + times.system
        children_cpu, workers = self._children_cpu()
        vm = psutil.virtual_memory()
        values: dict[str, float] = {
            "process_cpu_seconds_total": own,
            "process_resident_memory_bytes": float(rss),
            "system_cpu_ratio": psutil.cpu_percent(None) / 100.0,
            "system_memory_used_bytes": float(vm.total - vm.available),
            "system_memory_total_bytes": float(vm.total),
            "workers": float(workers),
            "workers_cpu_seconds_total": children_cpu,
        }
        if self._last is not None:
            dt = mono - self._last[0]
            if dt > 0:
                values["process_cpu_cores"] = max(own - self._last[1], 0.0) / dt
                if workers:
                    used = max(children_cpu - self._last[2], 0.0)
                    values["workers_cpu_ratio"] = min(used / dt / workers, 1.0)
        self._last = (mono, own, children_cpu)
        return [Sample(self.rank, now, "host", values)]

    def _children_cpu(self) -> tuple[float, int]:
        """CPU seconds of all children ever seen (the exited ones' too) and the live count."""
        try:
            live = {p.pid: p for p in self._proc.children(recursive=True)}
        except psutil.Error:
            live = {}
        for pid, p in live.items():
            self._children.setdefault(pid, p)
        for pid, child in list(self._children.items()):
            try:
                t: Any = child.cpu_times()
                self._child_cpu[pid] = t.user + t.system
            except psutil.Error:  # exited: fold its last reading into the total
                del self._children[pid]
                self._dead_cpu += self._child_cpu.pop(pid, 0.0)
        total = self._dead_cpu + sum(self._child_cpu.values())
        return total, len(self._children)
