"""Host probe (psutil): process and system CPU, memory, and the CPU of the DataLoader
workers. ``workers`` counts the worker processes of the loaders the job draws batches
from, where they are known (``loader_workers``: the DataLoader hook notes them); else
the live processes multiprocessing started from this one (a loader's workers are; its
own helpers, a resource tracker or a fork server, are not, nor programs the job runs: a
logger's service, a compiler's worker pool, an uploader), less other ranks of the job
this process launched (Lightning's rank 0 starts the others)."""

from __future__ import annotations

import multiprocessing.process
import os
import time
from collections.abc import Callable
from typing import Any

import psutil

from gpuwatch.records import Sample


def started_by_multiprocessing() -> set[int]:
    """The pids of the processes multiprocessing started from this one and has not yet
    found ended (read, never polled: a waitpid from here could reap a loader's worker)."""
    for _ in range(3):  # (the job starts processes while this reads them)
        try:
            children = list(multiprocessing.process._children)  # type: ignore[attr-defined]
            break
        except RuntimeError:
            continue
    else:
        return set()
    return {pid for child in children if isinstance(pid := getattr(child, "pid", None), int)}


class HostProbe:
    """One Sample per read. CPU ratios are over the interval since the previous read:
    ``process_cpu_cores`` in cores used, ``workers_cpu_ratio`` the mean busy share of
    one worker (1.0: every worker saturates its core)."""

    def __init__(self, rank: int,
                 loader_workers: Callable[[], set[int] | None] | None = None,
                 started: Callable[[], set[int]] = started_by_multiprocessing) -> None:
        self.rank = rank
        self._loader_workers = loader_workers
        self._started = started
        self._proc = psutil.Process()
        # the live children that are or may become workers, read at each read (a worker
        # set aside for a while, an eval loader's between evaluations, counts from where
        # it was; one first seen counts from then, unless it was born since the last read)
        self._children: dict[int, psutil.Process] = {}
        self._workers: set[int] = set()  # the workers at the last read
        self._ranks: set[int] = set()  # children that are other ranks, and theirs
        self._known: set[int] = set()  # children already told apart
        self._own: set[int] = set()  # the live children that are no other rank's
        self._born_as = _rank_word(_environ(self._proc) or {})  # what it was started with
        self._last: tuple[float, float, float] | None = None  # mono, own cpu, children cpu
        self._read_at = 0.0  # ``_boot_clock`` at the last read (0: none yet)
        self._child_cpu: dict[int, float] = {}  # each child's CPU seconds at the last read
        self._workers_cpu = 0.0  # CPU seconds of workers while they were workers
        self._cpu_times = _busy_and_total(psutil.cpu_times())  # (its own baseline: a
        # library's psutil.cpu_percent(None) would move a shared one)

    def pids(self) -> set[int]:
        """This process and its live children but other ranks and theirs (the pids whose
        GPU memory is the job's: its workers', and a program's it runs)."""
        return {self._proc.pid, *self._own}

    def sample(self, now: float, mono: float) -> list[Sample]:
        proc = self._proc
        with proc.oneshot():
            times = proc.cpu_times()
            rss = proc.memory_info().rss
        own = times.user + times.system
        children_cpu, workers, alive = self._children_cpu()
        vm = psutil.virtual_memory()
        values: dict[str, float] = {
            "process_cpu_seconds_total": own,
            "process_resident_memory_bytes": float(rss),
            "system_cpu_ratio": self._system_cpu(),
            "system_memory_used_bytes": float(vm.total - vm.available),
            "system_memory_total_bytes": float(vm.total),
            "workers": float(workers),
            "workers_cpu_seconds_total": children_cpu,
        }
        if self._last is not None:
            dt = mono - self._last[0]
            if dt > 0:
                values["process_cpu_cores"] = max(own - self._last[1], 0.0) / dt
                # over the time the workers read now were alive (a loader restarting
                # its workers at an epoch's end may have none live: those it let go
                # still read; those that exited took their CPU since the last read)
                if alive > 0:
                    used = max(children_cpu - self._last[2], 0.0)
                    values["workers_cpu_ratio"] = min(used / alive, 1.0)
        self._last = (mono, own, children_cpu)
        return [Sample(self.rank, now, "host", values)]

    def _system_cpu(self) -> float:
        """The busy share of the host's CPUs since the last reading (0..1)."""
        busy, total = _busy_and_total(psutil.cpu_times())
        last_busy, last_total = self._cpu_times
        self._cpu_times = (busy, total)
        return min(max((busy - last_busy) / (total - last_total), 0.0), 1.0) \
            if total > last_total else 0.0

    def _children_cpu(self) -> tuple[float, int, float]:
        """CPU seconds the workers used while they were workers (the exited ones' too),
        the live workers, and the seconds the workers read now were alive since the last
        read (those that were workers at the last read or are now: their CPU between
        the two was a worker's; one born since counts from its birth: a loader
        restarting its workers each epoch read as idle as they were young)."""
        try:
            live = {p.pid: p for p in self._proc.children(recursive=True)}
        except psutil.Error:
            live = {}
        self._tell_ranks(live)
        self._own = live.keys() - self._ranks
        known = self._loader_workers() if self._loader_workers is not None else None
        started = self._started()
        workers = self._own & (known if known is not None else started)
        for pid in self._own & (started | workers):
            self._children.setdefault(pid, live[pid])
        now = _boot_clock()
        alive = 0.0
        for pid, child in list(self._children.items()):
            seconds = _cpu(child)
            if seconds is None:  # exited: its CPU since the last read is lost
                del self._children[pid]
                self._child_cpu.pop(pid, None)
                continue
            last = self._child_cpu.get(pid)
            born = _born(child) if last is None else 0.0
            if last is None and self._read_at and born + START_TICK_S < self._read_at:
                last = seconds  # (first seen now, its CPU since the last read unknown)
            elif pid in workers or pid in self._workers:
                self._workers_cpu += max(seconds - (last or 0.0), 0.0)
                if self._read_at:
                    alive += now - max(self._read_at, born)
            self._child_cpu[pid] = seconds
        self._workers = workers & self._children.keys()
        self._read_at = now
        return self._workers_cpu, len(self._workers), alive

    def _tell_ranks(self, live: dict[int, psutil.Process]) -> None:
        """Note which new children are other ranks (their environment names a rank this
        process's does not, as it was started or as it is now: a worker inherits one of
        them) or descend from one. A child whose environment cannot be read is none."""
        mine = {self._born_as, _rank_word(os.environ)}
        for pid, p in live.items():
            if pid in self._known:
                continue
            self._known.add(pid)
            try:
                parent = p.ppid()
            except psutil.Error:
                continue
            env = _environ(p)
            if parent in self._ranks or (env is not None and _rank_word(env) not in mine):
                self._ranks.add(pid)
        self._known &= set(live)
        self._ranks &= set(live)


def _environ(p: psutil.Process) -> dict[str, str] | None:
    try:
        env: dict[str, str] = p.environ()
    except (psutil.Error, OSError):
        return None
    return env


def _rank_word(env: Any) -> tuple[str | None, str | None]:
    """What an environment says the process's rank is: (RANK, LOCAL_RANK)."""
    return env.get("RANK"), env.get("LOCAL_RANK")


# how finely a process's start time is told (the kernel counts it in clock ticks): one
# started within a tick of a read may have started after it
START_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 0.0


def _boot_clock() -> float:
    """Seconds on the clock processes' start times are told in (since boot, where the
    platform says so: a start time in Unix seconds is off by up to a second)."""
    if hasattr(time, "CLOCK_BOOTTIME"):
        return time.clock_gettime(time.CLOCK_BOOTTIME)
    return time.time()


def _born(p: psutil.Process) -> float:
    """When ``p`` started, on ``_boot_clock``; 0 if that cannot be read."""
    try:
        started = float(p.create_time())
        return started - psutil.boot_time() if hasattr(time, "CLOCK_BOOTTIME") else started
    except psutil.Error:
        return 0.0


def _cpu(p: psutil.Process) -> float | None:
    """CPU seconds ``p`` has used (user and system); None once it has exited."""
    try:
        t: Any = p.cpu_times()
    except psutil.Error:
        return None
    return float(t.user + t.system)


def _busy_and_total(times: Any) -> tuple[float, float]:
    """CPU seconds busy and in all, from ``psutil.cpu_times()`` (idle and I/O wait are
    not busy; guest time is counted in user time already)."""
    fields = times._asdict()
    total = sum(fields.values()) - fields.get("guest", 0.0) - fields.get("guest_nice", 0.0)
    return total - fields.get("idle", 0.0) - fields.get("iowait", 0.0), total
