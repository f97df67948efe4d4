"""Host probe on this machine: a child process burning CPU shows as a busy worker."""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.process
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import psutil
import pytest

from gpuwatch.probes.host import HostProbe
from tests.wait import wait_for


def spin() -> None:
    while True:
        pass


def forked(target: Callable[[], object] = signal.pause,
           method: str = "fork") -> multiprocessing.process.BaseProcess:
    """A child multiprocessing started (as a DataLoader starts its workers), running
    ``target`` (by default idle until killed)."""
    child = multiprocessing.get_context(method).Process(target=target, daemon=True)
    child.start()
    return child


def test_children_cpu_and_process_memory() -> None:
    probe = HostProbe(rank=0)
    burner = forked(spin)
    try:
        wait_for(lambda: sum(psutil.Process(burner.pid).cpu_times()[:2]) > 0.1, 10,
                 "the burner to run")
        probe.sample(time.time(), time.monotonic())
        time.sleep(1.0)  # the interval the CPU ratio is measured over
        (s,) = probe.sample(time.time(), time.monotonic())
        assert burner.pid in probe.pids()
    finally:
        burner.kill()
        burner.join(10)
    v = s.values
    assert v["workers"] == 1
    assert v["workers_cpu_ratio"] == pytest.approx(1.0, abs=0.45)  # a shared 2-core box
    assert v["process_resident_memory_bytes"] > 10 * 2**20
    assert 0.0 <= v["system_cpu_ratio"] <= 1.0
    assert v["system_memory_total_bytes"] >= v["system_memory_used_bytes"] > 0
    # the child exited: its CPU stays in the total, it is no longer a worker
    (after,) = probe.sample(time.time(), time.monotonic())
    assert after.values["workers"] == 0
    assert after.values["workers_cpu_seconds_total"] >= v["workers_cpu_seconds_total"]


def parent_of_one(preamble: str, idle: str,
                  env: dict[str, str] | None = None) -> tuple[subprocess.Popen[str], int]:
    """A child process (running ``preamble`` first) that starts a grandchild running
    ``idle``, and the grandchild's pid, once the child told it."""
    parent = subprocess.Popen([sys.executable, "-c", (
        f"import subprocess, sys; {preamble}; "
        f"w = subprocess.Popen([sys.executable, '-c', {idle!r}], stdin=subprocess.PIPE); "
        "print(w.pid, flush=True); sys.stdin.read()")], env=env, stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    return parent, int(parent.stdout.readline())


def test_other_ranks_this_process_launched_are_no_workers() -> None:
    """Lightning's rank 0 starts ranks 1.. itself: a child whose environment names
    another rank, and the workers it starts in turn, are not this rank's DataLoader
    workers (nor its GPU memory); a child that inherited this process's environment is."""

    probe = HostProbe(rank=0)
    env = {**os.environ, "RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2"}
    idle = "import sys; sys.stdin.read()"  # idle until its stdin closes (or it is killed)
    rank1, its_worker = parent_of_one("pass", idle, env)
    worker = forked()
    try:
        wait_for(lambda: its_worker in {p.pid for p in psutil.Process().children(True)}, 10,
                 "rank 1's worker to start")
        (s,) = probe.sample(time.time(), time.monotonic())
        assert s.values["workers"] == 1
        assert probe.pids() == {os.getpid(), worker.pid}
    finally:
        with contextlib.suppress(psutil.Error):
            psutil.Process(its_worker).kill()
        rank1.kill()
        rank1.wait()
        worker.kill()
        worker.join(10)


def test_workers_are_the_loaders_where_the_loaders_are_known() -> None:
    """A job's other children (a metrics uploader, a logger's service, a compiler's
    worker pool, multiprocessing's resource tracker) are no DataLoader workers: with
    the loaders' worker pids known, only those count; without, the children
    multiprocessing started, forked or spawned, but its own helpers (under watch() or
    a callback an uploader made a loader without workers "its 1 DataLoader workers
    are mostly idle")."""
    idle = "import sys; sys.stdin.read()"
    known: set[int] | None = None
    probe = HostProbe(rank=0, loader_workers=lambda: known)
    (before,) = probe.sample(time.time(), time.monotonic())  # (other tests' children)
    worker, spawned = forked(), forked(method="spawn")
    uploader = subprocess.Popen([sys.executable, "-c", idle], stdin=subprocess.PIPE)
    tracker = subprocess.Popen([sys.executable, "-c",
                                f"import multiprocessing.resource_tracker; {idle}"],
                               stdin=subprocess.PIPE)
    try:
        wait_for(lambda: {worker.pid, spawned.pid, uploader.pid, tracker.pid}
                 <= {p.pid for p in psutil.Process().children(True)}, 10, "the children")
        (guessed,) = probe.sample(time.time(), time.monotonic())
        assert guessed.values["workers"] == before.values["workers"] + 2  # forked, spawned
        known = {worker.pid}
        (told,) = probe.sample(time.time(), time.monotonic())
        assert told.values["workers"] == 1
        known = set()  # a loader without workers (num_workers=0)
        (none,) = probe.sample(time.time(), time.monotonic())
        assert none.values["workers"] == 0
    finally:
        for process in (worker, spawned):
            process.kill()
            process.join(10)
        for child in (uploader, tracker):
            child.kill()
            child.wait()


def test_a_loader_restarting_its_workers_keeps_their_interval_s_cpu() -> None:
    """At an epoch's end a loader without persistent workers drops its iterator (its
    workers no longer the job's) before the next one's are noted: a read then sees no
    workers. Their busy share over the interval is still theirs (it was missing, and
    Prometheus showed the workers panel empty), with their CPU up to this read."""
    known: set[int] | None = None
    probe = HostProbe(rank=0, loader_workers=lambda: known)
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        known = {burner.pid}
        wait_for(lambda: burner.pid in {p.pid for p in psutil.Process().children(True)}, 10,
                 "the worker")
        (first,) = probe.sample(time.time(), time.monotonic())
        assert first.values["workers"] == 1
        start = first.values["workers_cpu_seconds_total"]
        wait_for(lambda: sum(psutil.Process(burner.pid).cpu_times()[:2]) > start + 0.3, 10,
                 "the worker to burn CPU")
        known = set()  # the old iterator gone, the next one's workers not noted yet
        (between,) = probe.sample(time.time(), time.monotonic())
    finally:
        burner.kill()
        burner.wait()
    assert between.values["workers"] == 0
    assert between.values["workers_cpu_seconds_total"] >= start + 0.3  # up to this read
    assert between.values["workers_cpu_ratio"] > 0.0


def test_a_worker_set_aside_counts_again_from_where_it_was() -> None:
    """An eval loader's persistent workers stop counting between evaluations and count
    again at the next: the CPU they used while set aside is no worker's, and what they
    used before is not counted twice (it came back whole, a jump in the workers' CPU)."""
    known: set[int] | None = None
    probe = HostProbe(rank=0, loader_workers=lambda: known)
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    cpu = psutil.Process(burner.pid).cpu_times

    def burned(more: float) -> None:
        start = sum(cpu()[:2])
        wait_for(lambda: sum(cpu()[:2]) > start + more, 10, "the worker to burn CPU")

    try:
        known = {burner.pid}
        wait_for(lambda: burner.pid in {p.pid for p in psutil.Process().children(True)}, 10,
                 "the worker")
        burned(0.2)
        (counted,) = probe.sample(time.time(), time.monotonic())
        known = set()  # set aside: the evaluation ended
        burned(0.3)
        (aside,) = probe.sample(time.time(), time.monotonic())
        burned(0.3)
        before = sum(cpu()[:2])
        (still,) = probe.sample(time.time(), time.monotonic())
        known = {burner.pid}  # the next evaluation
        burned(0.3)
        (back,) = probe.sample(time.time(), time.monotonic())
        after = sum(cpu()[:2])
    finally:
        burner.kill()
        burner.wait()
    total = "workers_cpu_seconds_total"
    assert aside.values["workers"] == still.values["workers"] == 0 and back.values["workers"] == 1
    assert aside.values[total] >= counted.values[total] + 0.3  # a worker until that read
    assert still.values[total] == aside.values[total] and "workers_cpu_ratio" not in still.values
    assert 0.3 <= back.values[total] - still.values[total] <= after - before


def test_a_worker_born_since_the_last_read_is_as_busy_as_it_was_alive() -> None:
    """A loader restarting its workers every epoch: a worker started shortly before a
    read, busy ever since, is busy, not busy the small share of the interval it lived
    (young workers read as idle, and a CPU-bound loader was sent to storage)."""
    probe = HostProbe(rank=0)
    probe.sample(time.time(), time.monotonic() - 1.0)  # (a read a second before this one)
    burner = forked(spin)
    try:
        wait_for(lambda: sum(psutil.Process(burner.pid).cpu_times()[:2]) > 0.2, 10,
                 "the worker to burn CPU")
        (s,) = probe.sample(time.time(), time.monotonic())
    finally:
        burner.kill()
        burner.join(10)
    assert s.values["workers"] == 1
    assert s.values["workers_cpu_ratio"] > 0.4  # (it read 0.2 s of CPU over the 1.2 s since)


def test_a_worker_that_exited_between_reads_is_no_idle_worker() -> None:
    """A worker busy until it exited before the next read (a loader joins its workers
    at an epoch's end) took its CPU since the last read with it: that interval has no
    busy share to tell (it read 0%, and a CPU-bound loader was sent to storage)."""
    known: set[int] | None = None
    probe = HostProbe(rank=0, loader_workers=lambda: known)
    burner = subprocess.Popen([sys.executable, "-c",
                               "import time\nt = time.time()\nwhile time.time() - t < 1.0: pass"])
    known = {burner.pid}
    wait_for(lambda: burner.pid in {p.pid for p in psutil.Process().children(True)}, 10,
             "the worker")
    (first,) = probe.sample(time.time(), time.monotonic())
    assert first.values["workers"] == 1
    burner.wait()  # joined: it exited busy
    known = set()
    (gap,) = probe.sample(time.time(), time.monotonic())
    assert gap.values["workers"] == 0 and "workers_cpu_ratio" not in gap.values


def test_workers_the_fork_server_forks_are_workers_not_helpers() -> None:
    """Under forkserver (Python 3.14's default on Linux) a DataLoader's workers are the
    fork server's children: the server is multiprocessing's helper, no worker; the
    processes it forks for this one are (they were counted as none)."""
    import multiprocessing.forkserver

    probe = HostProbe(rank=0)
    (before,) = probe.sample(time.time(), time.monotonic())
    worker = forked(method="forkserver")
    server = multiprocessing.forkserver._forkserver._forkserver_pid  # type: ignore[attr-defined]
    assert worker.pid is not None
    try:
        wait_for(lambda: {worker.pid, server} <= {p.pid for p in psutil.Process().children(True)},
                 10, "the worker")
        (after,) = probe.sample(time.time(), time.monotonic())
        assert after.values["workers"] == before.values["workers"] + 1
        assert worker.pid in probe.pids()
    finally:
        worker.kill()
        worker.join(10)


def test_what_a_program_the_job_runs_starts_is_no_worker_of_its() -> None:
    """A program the job runs (a compiler's worker pool, a logger's service) starting a
    multiprocessing pool of its own: neither it nor its pool are this process's loader
    workers (its spawn pool and resource tracker read as 4 workers of a loop with
    none), whatever their command lines say. Its processes are still the job's (their
    GPU memory is)."""
    probe = HostProbe(rank=0)
    (before,) = probe.sample(time.time(), time.monotonic())
    program = subprocess.Popen([sys.executable, "-c", (
        "import multiprocessing as mp, sys\n"
        "if __name__ == '__main__':\n"
        "    pool = mp.get_context('spawn').Pool(2)\n"
        "    print(*[p.pid for p in pool._pool], flush=True)\n"
        "    sys.stdin.read()\n")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert program.stdout is not None
        pool = {int(pid) for pid in program.stdout.readline().split()}
        (after,) = probe.sample(time.time(), time.monotonic())
        assert after.values["workers"] == before.values["workers"]
        assert {program.pid, *pool} <= probe.pids()
    finally:
        program.communicate(timeout=60)  # (its stdin closed: it ends, its pool with it)
