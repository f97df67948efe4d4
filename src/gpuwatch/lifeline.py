"""A child process that dies with its parent (Linux): ``gpuwatch run``'s command, and
``gpuwatch analyze``'s workers, are not left running when the process that started them
is killed (SIGKILL passes nothing on; a pool's workers wait for work for ever)."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Callable

PR_SET_PDEATHSIG = 1  # prctl(2)


def die_with_parent(parent: int) -> Callable[[], None] | None:
    """What a child of ``parent`` runs first (between fork and exec, or as a pool's
    initializer): ask the kernel to SIGKILL it when its parent dies, and die now if
    ``parent`` is already gone. Only system calls. None where there is no prctl."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    def in_child() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGKILL)

    return in_child
