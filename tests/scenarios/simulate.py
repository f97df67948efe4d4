"""Run logs of simulated training jobs, in today's run-log schema.

A ``Shape`` describes one job as a senior engineer would (step time and its
split, ranks, evals, saves, memory, GPU, plan, incidents); ``simulate`` turns it
into each rank's records in time order, shaped as the live agent writes them:
contiguous steps whose wall time absorbs whatever happened between them (an eval,
a blocking save, a recompile), events, and probe samples every ``sample_s``
(NVML, host, allocator, agent with its open phases). Everything is deterministic
(a seeded jitter), so a log is the same on every machine.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from pathlib import Path

from gpuwatch.probes.topology import nvlink_rate, pcie_rate
from gpuwatch.records import SCHEMA_VERSION, Event, Meta, Record, Sample, Step
from gpuwatch.runlog import RunLogWriter

START = 1_700_000_000.0
GB = 1e9

H100 = ("NVIDIA H100 80GB HBM3", 80.0, 18, 700.0)  # NVML name, GB, NVLink links, watts
RTX_5090 = ("NVIDIA GeForce RTX 5090", 32.0, 0, 575.0)
L40S = ("NVIDIA L40S", 48.0, 0, 350.0)
# How each card's GPUs reach each other in a node: (PCIe generation, NVLink version of its
# links or None, whether peer-to-peer reads work, None: unknown). GeForce cards have no
# P2P: their collectives go through host memory. Other cards: gen4, P2P unknown.
LINKS: dict[str, tuple[int, int | None, bool | None]] = {
    H100[0]: (5, 4, True), RTX_5090[0]: (5, None, False), L40S[0]: (4, None, True)}


@dataclass(frozen=True)
class Evals:
    """A periodic eval loop: every ``every_s`` of training, ``seconds`` long, GPU busy.
    ``ranks``: the ranks that run it (None: every rank); the others wait for them at
    their next collective (``if rank == 0: evaluate()`` in DDP)."""

    every_s: float
    seconds: float
    batch_s: float = 0.25  # one eval batch
    batch_size: int = 64
    ranks: tuple[int, ...] | None = None


@dataclass(frozen=True)
class Saves:
    """Periodic checkpoint saves. ``blocking_s`` stalls the loop; ``background_s`` (async
    saves) is written by a thread after the blocking staging. ``ranks``: the ranks that
    write it (None: every rank); the others wait for them at their next collective
    (``if rank == 0: torch.save(...)`` in DDP: NCCL kernels spin, pinned at low power)."""

    every_s: float
    blocking_s: float
    nbytes: int = int(10e9)
    background_s: float = 0.0
    ranks: tuple[int, ...] | None = None


@dataclass(frozen=True)
class Memory:
    """The job's memory (GB): reserved by the allocator, allocated between steps, the card's
    used memory (other processes included); allocator retries per minute; OOM times (s)."""

    reserved_gb: float
    allocated_gb: float
    card_used_gb: float | None = None
    retries_per_min: float = 0.0
    oom_at_s: tuple[float, ...] = ()
    allocator: bool = True  # False: no allocator probe (only NVML per-process memory)


@dataclass(frozen=True)
class Stop:
    """An incident: at ``at_s`` the listed ranks stop stepping. ``kind``: ``nccl`` (the
    others wait in a collective; NCCL kernels spin: GPU pinned at low power), ``loader``
    (a DataLoader deadlock: waiting in data, idle CPU and GPU)."""

    at_s: float
    ranks: tuple[int, ...]
    kind: str = "nccl"


@dataclass(frozen=True)
class Shape:
    """One job. Shares are of the typical step's wall time; times in seconds."""

    step_s: float
    duration_s: float
    world: int = 1
    gpu: tuple[str, float, int, float] = H100
    data_share: float = 0.03
    collective_share: float = 0.0
    collective_bytes: int = 0
    p2p_bytes: int = 0  # of collective_bytes, point-to-point sends' (a pipeline's)
    recompute_share: float = 0.0
    optimizer_share: float = 0.05
    slow_rank: int | None = None
    slow_factor: float = 1.0  # the slow rank's compute, x the others'
    slow_data_share: float | None = None  # instead, the slow rank's data wait (its loader)
    slow_steps: float = 1.0  # the share of steps the slow rank is slow in (seeded, job-wide)
    accumulation: int = 1  # micro-batches per optimizer step
    batch_size: int = 32
    batch_sizes: tuple[tuple[int, int], ...] = ()  # (step, new training batch size)
    evals: Evals | None = None
    saves: Saves | None = None
    memory: Memory = field(default_factory=lambda: Memory(40.0, 20.0))
    utilization: float = 0.95
    workers: int = 8
    workers_cpu: float = 0.3
    total_steps: int | None = None
    first_step: int = 1  # a resumed run's log starts at its own first step
    recompile_at_s: float | None = None
    recompile_s: float = 0.0
    epoch_every_s: float | None = None  # a DataLoader epoch restart (workers respawn)
    epoch_restart_s: float = 0.0
    restart_workers_cpu: float = 0.02  # the workers' busy share as an epoch restarts (~1:
    # filling a shuffle buffer)
    stop: Stop | None = None
    progress_records: bool = True  # False: a log from before progress events existed
    sample_s: float = 1.0
    jitter: float = 0.03
    seed: int = 0


@dataclass
class _Busy:
    """What a rank was doing over [t0, t1): for the probes to see."""

    t0: float
    t1: float
    kind: str  # train, eval, save, compile, restart, stopped, waiting


def simulate(shape: Shape, job: str = "job") -> list[list[Record]]:
    """Each rank's records (meta first, then time order)."""
    return [_rank(shape, rank, job) for rank in range(shape.world)]


def write(shape: Shape, directory: Path, job: str = "job") -> list[Path]:
    """Write each rank's run log into ``directory`` as the agent names them (one rank's
    records in memory at a time)."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for rank in range(shape.world):
        records = _rank(shape, rank, job)
        name = "run.jsonl" if shape.world == 1 else f"run-rank{rank}.jsonl"
        path = directory / name
        writer = RunLogWriter(path)
        writer.write(records)
        writer.close()
        paths.append(path)
    return paths


def _rank(shape: Shape, rank: int, job: str) -> list[Record]:
    rng = random.Random(shape.seed * 1000 + rank)
    watts = shape.gpu[3]
    meta = Meta(schema=SCHEMA_VERSION, gpuwatch="corpus", job=job, host=f"node-{rank // 8}",
                rank=rank, local_rank=rank % 8, world_size=shape.world, pid=1000 + rank,
                started=START, argv=["train.py"])
    out: list[Record] = [_topology(shape, rank)]
    if shape.total_steps:
        out.append(Event(rank, START, "total_steps", {"steps": shape.total_steps}))
    busy: list[_Busy] = []
    _steps(shape, rank, rng, out, busy)
    _samples(shape, rank, out, busy, watts)
    for t in shape.memory.oom_at_s:
        out.append(Event(rank, START + t, "oom", {"type": "OutOfMemoryError"}))
    out.sort(key=lambda r: r.t)  # type: ignore[union-attr]
    return [meta, *out]


def _topology(shape: Shape, rank: int) -> Event:
    """The topology event the agent writes: every GPU of the rank's node (one per rank,
    eight to a node), its links and the P2P map between them."""
    name, memory_gb, nvlinks, _ = shape.gpu
    generation, version, p2p = LINKS.get(name, (4, None, None))
    node = rank // 8
    gpus = range(min(8, shape.world - 8 * node))
    devices = [{"index": i, "name": name, "memory_total_bytes": memory_gb * GB,
                "nvlink_links_active": nvlinks, "pcie_generation": generation,
                "pcie_generation_max": generation, "pcie_width": 16, "pcie_width_max": 16,
                "pcie_bytes_per_second": pcie_rate(generation, 16),
                **({"nvlink_bytes_per_second": nvlink_rate([version] * nvlinks)}
                   if version and nvlinks else {})} for i in gpus]
    pairs = [{"gpus": [a, b], "nvlink": bool(nvlinks), "read": p2p}
             for a in gpus for b in gpus if a < b]
    return Event(rank, START, "topology", {"devices": devices, "job_gpus": [rank % 8],
                                           "gpu_count": len(gpus), "p2p": pairs})


def _steps(shape: Shape, rank: int, rng: random.Random, out: list[Record],
           busy: list[_Busy]) -> None:
    t = START
    end = START + shape.duration_s
    step = shape.first_step
    n = 0
    next_eval = shape.evals.every_s if shape.evals else None
    next_save = shape.saves.every_s if shape.saves else None
    next_epoch = shape.epoch_every_s
    batch = shape.batch_size
    sizes = dict(shape.batch_sizes)
    stopped = shape.stop is not None and rank in shape.stop.ranks
    recompile_at = shape.recompile_at_s
    while t < end:
        since = t - START
        if shape.stop is not None and since >= shape.stop.at_s:
            kind = "stopped" if stopped else "waiting"
            busy.append(_Busy(t, end, kind))
            return
        extra = {"data_s": 0.0, "compute_s": 0.0, "checkpoint_s": 0.0}
        step_start = t
        if n == 0:  # warm-up: allocation and compilation make the first step long
            extra["compute_s"] += 5 * shape.step_s
        waited = 0.0  # for a rank that runs an eval or writes a save, in the next collective
        if next_eval is not None and shape.evals and since >= next_eval and _others(
                shape.evals.ranks, rank):
            t, waited = _wait_for_peers(busy, t, shape.evals.seconds, waited)
            next_eval += shape.evals.every_s
        elif next_eval is not None and shape.evals and since >= next_eval:
            ev = shape.evals
            busy.append(_Busy(t, t + ev.seconds, "eval"))
            if shape.progress_records:
                _progress(rank, t, ev.seconds, ev.batch_s, out, evals=True)
            elif ev.batch_size != batch:  # older logs took the eval loader's batches as
                out.append(Event(rank, t + 2 * ev.batch_s, "batch_size_changed",  # a change
                                 {"from": batch, "to": ev.batch_size}))
                out.append(Event(rank, t + ev.seconds, "batch_size_changed",
                                 {"from": ev.batch_size, "to": batch}))
            extra["data_s"] += 0.1 * ev.seconds  # eval batches are fetched through the loader
            extra["compute_s"] += 0.9 * ev.seconds
            t += ev.seconds
            next_eval += ev.every_s
        if next_epoch is not None and since >= next_epoch:
            busy.append(_Busy(t, t + shape.epoch_restart_s, "restart"))
            extra["data_s"] += shape.epoch_restart_s
            t += shape.epoch_restart_s
            next_epoch += shape.epoch_every_s or 0.0
        if recompile_at is not None and since >= recompile_at:
            busy.append(_Busy(t, t + shape.recompile_s, "compile"))  # a new shape: recompile
            extra["compute_s"] += shape.recompile_s
            t += shape.recompile_s
            recompile_at = None
        slowed = _slowed(shape, n)
        wall = _typical(shape, rank, rng) * (1.0 if slowed else _unslowed_ratio(shape))
        parts = _split(shape if slowed else replace(shape, slow_rank=None), rank, wall)
        micro = wall / shape.accumulation
        busy.append(_Busy(t, t + wall, "train"))
        if shape.progress_records and micro >= 1.0 and shape.accumulation > 1:
            _progress(rank, t, wall, micro, out, evals=False)
        t += wall
        saved = 0
        if next_save is not None and shape.saves and since >= next_save and _others(
                shape.saves.ranks, rank):
            t, waited = _wait_for_peers(busy, t, shape.saves.blocking_s, waited)
            next_save += shape.saves.every_s
        elif next_save is not None and shape.saves and since >= next_save:
            sv = shape.saves
            busy.append(_Busy(t, t + sv.blocking_s, "save"))
            t += sv.blocking_s
            extra["checkpoint_s"] += sv.blocking_s
            out.append(Event(rank, t, "checkpoint_save",
                             {"seconds": sv.blocking_s, "bytes": 0 if sv.background_s else
                              sv.nbytes}))
            if sv.background_s:
                out.append(Event(rank, t + sv.background_s, "checkpoint_save",
                                 {"seconds": sv.background_s, "bytes": sv.nbytes,
                                  "blocking": False}))
            else:
                saved = sv.nbytes
            next_save += sv.every_s
        previous, batch = batch, sizes.get(n + 1, batch)
        out.append(Step(
            rank=rank, step=step, t=t, wall_s=t - step_start,
            data_s=parts["data"] + extra["data_s"],
            compute_s=parts["compute"] + extra["compute_s"] + waited,
            optimizer_s=parts["optimizer"], checkpoint_s=extra["checkpoint_s"],
            collective_s=parts["collective"] + waited, recompute_s=parts["recompute"],
            samples=batch * shape.accumulation, checkpoint_bytes=saved,
            collective_bytes=shape.collective_bytes if shape.world > 1 else 0,
            p2p_bytes=shape.p2p_bytes if shape.world > 1 else 0,
            act_ckpt_calls=24 if shape.recompute_share else 0))
        if batch != previous:
            out.append(Event(rank, t, "batch_size_changed", {"from": previous, "to": batch}))
        step += 1
        n += 1


def _others(ranks: tuple[int, ...] | None, rank: int) -> bool:
    """Whether ``ranks`` run something (an eval, a save) that ``rank`` does not."""
    return ranks is not None and rank not in ranks


def _wait_for_peers(busy: list[_Busy], t: float, seconds: float,
                    waited: float) -> tuple[float, float]:
    """``seconds`` waiting at the next collective for ranks that run something this one
    does not: (the time after, the step's wait so far)."""
    busy.append(_Busy(t, t + seconds, "peer_wait"))
    return t + seconds, waited + seconds


def _typical(shape: Shape, rank: int, rng: random.Random) -> float:
    """A typical step's wall time on this rank, jittered."""
    return shape.step_s * (1 + rng.uniform(-shape.jitter, shape.jitter))


def _slowed(shape: Shape, n: int) -> bool:
    """Whether the slow rank is slow in the job's ``n``-th step (the same on every rank)."""
    return shape.slow_rank is not None and (
        shape.slow_steps >= 1.0 or random.Random(shape.seed * 7919 + n).random()
        < shape.slow_steps)


def _unslowed_ratio(shape: Shape) -> float:
    """A step's wall time where no rank is slow, x ``step_s`` (which holds the slow rank's
    extra): the others' wait for it left out."""
    if shape.slow_rank is None:
        return 1.0
    if shape.slow_data_share is not None:
        return 1.0 - (shape.slow_data_share - shape.data_share)
    work = 1.0 - shape.data_share - shape.optimizer_share - shape.collective_share
    return 1.0 - work * (1.0 - 1.0 / shape.slow_factor)


def _split(shape: Shape, rank: int, wall: float) -> dict[str, float]:
    """The step's parts. A slow rank computes ``slow_factor`` times longer (or waits
    ``slow_data_share`` of the step for its data) and waits only for the transfer
    (``collective_share``); its peers wait for it as well, so every rank's step takes
    as long."""
    data_share = shape.data_share
    if shape.slow_data_share is not None and rank == shape.slow_rank:
        data_share = shape.slow_data_share
    data = data_share * wall
    opt = shape.optimizer_share * wall
    wait = shape.collective_share * wall
    recompute = shape.recompute_share * wall
    compute = wall - data - opt  # collective wait and recompute are parts of compute
    if shape.slow_rank is not None and rank != shape.slow_rank:
        if shape.slow_data_share is not None:  # + what the slow rank's loader costs it
            wait += (shape.slow_data_share - shape.data_share) * wall
        else:
            wait = compute - (compute - wait) / shape.slow_factor  # transfer + the slow rank
    return {"data": data, "optimizer": opt, "compute": compute, "collective": wait,
            "recompute": recompute}


def _progress(rank: int, t0: float, seconds: float, batch_s: float, out: list[Record],
              evals: bool) -> None:
    """The assembler's progress events: at most one a second while batches arrive."""
    last = t0
    t = t0 + batch_s
    count = 0
    while t < t0 + seconds:
        count += 1
        if t - last >= 1.0:
            out.append(Event(rank, t, "progress", {"loader_batches": count,
                                                   "eval_batches": count if evals else 0}))
            last, count = t, 0
        t += batch_s


def _samples(shape: Shape, rank: int, out: list[Record], busy: list[_Busy],
             watts: float) -> None:
    """Probe samples every ``sample_s``: what the GPU, host and allocator show while the
    rank does what ``busy`` says."""
    memory_gb = shape.gpu[1]
    mem = shape.memory
    gpu = rank % 8
    i = 0
    t = START + shape.sample_s
    end = max([START + shape.duration_s, *(b.t1 for b in busy)])  # the probes outlive steps
    cpu_total = 0.0
    retries = 0.0
    while t <= end:
        while i < len(busy) - 1 and busy[i].t1 <= t:
            i += 1
        kind = busy[i].kind if busy and busy[i].t0 <= t else "train"
        util, power, cpu = _gpu_state(shape, rank, kind, watts)
        cpu_total += cpu * shape.sample_s
        retries += mem.retries_per_min * shape.sample_s / 60
        card_used = (mem.card_used_gb or mem.reserved_gb + 0.6) * GB
        out.append(Sample(rank, t, "nvml", {
            "gpu_utilization_ratio": util, "gpu_power_watts": power,
            "gpu_memory_used_bytes": card_used, "gpu_memory_total_bytes": memory_gb * GB,
            "gpu_process_memory_bytes": (mem.reserved_gb + 0.5) * GB,
            "gpu_clock_event_reasons": 0.0}, gpu=gpu))
        out.append(Sample(rank, t, "host", {
            "process_cpu_seconds_total": cpu_total, "process_cpu_cores": cpu,
            "workers": float(shape.workers),
            "workers_cpu_ratio": shape.workers_cpu if kind in ("train", "eval") else
            shape.restart_workers_cpu if kind == "restart" else 0.02}))
        if mem.allocator:
            out.append(Sample(rank, t, "allocator", {
                "allocator_reserved_bytes": mem.reserved_gb * GB,
                "allocator_reserved_peak_bytes": mem.reserved_gb * GB,
                "allocator_allocated_bytes": mem.allocated_gb * GB,
                "allocator_alloc_retries_total": float(int(retries))}))
        agent = {"agent_cpu_seconds_total": 0.004 * (t - START)}
        open_s = t - busy[i].t0 if busy else 0.0
        if kind == "save":
            agent["open_checkpoint_seconds"] = open_s
        elif kind == "restart" or (kind == "stopped" and shape.stop and
                                   shape.stop.kind == "loader"):
            agent["open_data_seconds"] = open_s
        elif kind in ("waiting", "peer_wait"):
            agent["open_collective_seconds"] = open_s
        out.append(Sample(rank, t, "agent", agent))
        t += shape.sample_s


def _gpu_state(shape: Shape, rank: int, kind: str, watts: float) -> tuple[float, float, float]:
    """(utilisation, watts, process CPU cores) of a rank doing ``kind``."""
    working = 0.85 * watts
    if kind == "train":  # idle while waiting for data or for a slow peer
        parts = _split(shape, rank, shape.step_s)
        waited, data = parts["collective"] / shape.step_s, parts["data"] / shape.step_s
        util = shape.utilization * (1 - data - waited + shape.collective_share)
        return util, working * (0.3 + 0.7 * util), 1.1
    if kind == "eval":
        return 0.85, 0.8 * working, 1.0
    if kind == "save":
        return 0.0, 0.15 * watts, 0.6  # serialising on the CPU, GPU idle
    if kind == "compile":
        return 0.0, 0.12 * watts, 1.0  # Inductor compiles on the CPU
    if kind == "restart":
        return 0.0, 0.12 * watts, 0.05  # waiting for new workers
    if kind in ("waiting", "peer_wait"):
        if kind == "peer_wait" or (shape.stop and shape.stop.kind == "nccl"):
            return 1.0, 0.2 * watts, 1.0  # NCCL kernels spin: pinned, low power
        return 0.0, 0.1 * watts, 0.02
    return 0.0, 0.1 * watts, 0.01  # stopped: hung in Python or the loader
