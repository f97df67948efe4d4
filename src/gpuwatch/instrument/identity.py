"""Who this process is in its job: rank, world size, local rank and CUDA device.

Sources, most trusted first:

- the default process group, once the job has initialised ``torch.distributed``
  (seen by the ``init_process_group`` hook, or read directly): right for every
  launcher, ``mp.spawn`` and Lightning's or Accelerate's spawn strategies included;
- torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``);
- SLURM's (``SLURM_PROCID``, ``SLURM_NTASKS``, ``SLURM_LOCALID``);
- otherwise a single process: rank 0 of 1.

The device is the one ``torch.cuda.set_device`` chose, else that of the first CUDA
parameters an optimizer steps, else the current CUDA device once CUDA is up. The
local rank, when no launcher says it, is that device's index, else the rank (one
host). Nothing here imports torch: it reads ``sys.modules``.
"""

from __future__ import annotations

import contextlib
import socket
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Identity:
    """Where this process sits in the job. ``device`` is the torch CUDA device index the
    process was seen to use (None until then: the agent then assumes the local rank's
    GPU in a multi-rank job); ``source`` names where the rank came from:
    ``process_group``, ``torchrun``, ``slurm``, ``explicit`` or ``single``."""

    job: str
    host: str
    rank: int
    local_rank: int
    world_size: int
    device: int | None = None
    source: str = "single"


class Hints:
    """What the hooks saw in the training threads, for the agent to read.

    Writes are single attribute stores and list operations, atomic under the GIL (no
    lock: a forked DataLoader worker must never inherit a held one); ``listen``
    registers a callable (the agent's wake-up) that each new fact calls.
    """

    def __init__(self) -> None:
        self.group: tuple[int, int] | None = None  # (rank, world size)
        self.device: int | None = None
        self._listeners: list[Callable[[], None]] = []

    def listen(self, callback: Callable[[], None]) -> None:
        self._listeners.append(callback)

    def unlisten(self, callback: Callable[[], None]) -> None:
        with contextlib.suppress(ValueError):
            self._listeners.remove(callback)

    def saw_group(self, rank: int, world_size: int) -> None:
        self.group = (rank, world_size)
        self._notify()

    def saw_device(self, index: int | None, chosen: bool) -> None:
        """A CUDA device in use: ``chosen`` (set_device) wins over one merely seen."""
        if index is None or (not chosen and self.device is not None):
            return
        self.device = index
        self._notify()

    def _notify(self) -> None:
        for callback in list(self._listeners):
            callback()


HINTS = Hints()


def process_group() -> tuple[int, int] | None:
    """(rank, world size) of the default process group, when the job has one."""
    dist = sys.modules.get("torch.distributed")
    try:
        if dist is None or not dist.is_available() or not dist.is_initialized():
            return None
        return int(dist.get_rank()), int(dist.get_world_size())
    except Exception:
        return None


def current_device() -> int | None:
    """The current CUDA device index, once this process has initialised CUDA."""
    torch = sys.modules.get("torch")
    try:
        if torch is None or not torch.cuda.is_initialized():
            return None
        return int(torch.cuda.current_device())
    except Exception:
        return None


MAX_RANKS = 1 << 17  # more ranks than any job has run on: a bogus environment


def _num(environ: Mapping[str, str], name: str) -> int | None:
    """A rank or world size from the environment; None unless a number below
    ``MAX_RANKS`` (a sentinel such as 4294967295 would make every per-rank table huge)."""
    value = environ.get(name, "").strip()
    return int(value) if value.isdecimal() and len(value) < 8 and int(value) < MAX_RANKS \
        else None


def resolve(job: str, environ: Mapping[str, str], group: tuple[int, int] | None = None,
            device: int | None = None, host: str | None = None) -> tuple[Identity, bool]:
    """This process's identity from what is known now, and whether it is settled
    (a process group or torchrun's environment: nothing later can change it)."""
    host = host or socket.gethostname()
    env_rank, env_world = _num(environ, "RANK"), _num(environ, "WORLD_SIZE")
    slurm_rank, slurm_world = _num(environ, "SLURM_PROCID"), _num(environ, "SLURM_NTASKS")
    if group is not None:
        (rank, world), source = group, "process_group"
    elif env_rank is not None and env_world is not None and env_rank < env_world:
        rank, world, source = env_rank, env_world, "torchrun"
    elif slurm_rank is not None and slurm_world is not None and slurm_rank < slurm_world:
        rank, world, source = slurm_rank, slurm_world, "slurm"
    else:
        rank, world, source = 0, 1, "single"
    local = _num(environ, "LOCAL_RANK")
    slurm_local = _num(environ, "SLURM_LOCALID")
    if local is not None and env_rank in (None, rank):
        pass  # the launcher's word (torchrun, Accelerate)
    elif slurm_local is not None and (slurm_rank, slurm_world) == (rank, world):
        local = slurm_local  # srun started this very process
    elif device is not None:
        local = device
    else:
        local = rank if world > 1 else 0
    identity = Identity(job=job, host=host, rank=rank, local_rank=local, world_size=world,
                        device=device, source=source)
    return identity, source in ("process_group", "torchrun")


def explicit(job: str, rank: int, local_rank: int, world_size: int,
             device: int | None = None) -> Identity:
    """The identity a framework adapter knows (it asked the trainer)."""
    return Identity(job=job, host=socket.gethostname(), rank=rank, local_rank=local_rank,
                    world_size=world_size, device=device, source="explicit")
