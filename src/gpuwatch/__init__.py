"""gpuwatch: live training telemetry and bottleneck detection for PyTorch.

Importing gpuwatch is cheap and never imports torch: the public names below
load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gpuwatch._version import __version__

if TYPE_CHECKING:
    from gpuwatch.config import Settings
    from gpuwatch.monitor import Monitor, watch

__all__ = ["Monitor", "Settings", "__version__", "watch"]


def __getattr__(name: str) -> Any:
    if name in ("Monitor", "watch"):
        from gpuwatch import monitor

        return getattr(monitor, name)
    if name == "Settings":
        from gpuwatch.config import Settings

        return Settings
    raise AttributeError(f"module 'gpuwatch' has no attribute {name!r}")
