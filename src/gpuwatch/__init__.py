"""gpuwatch: live training telemetry and bottleneck detection for PyTorch.

Importing gpuwatch never imports torch.
"""

from gpuwatch._version import __version__
from gpuwatch.config import Settings
from gpuwatch.monitor import Monitor, watch

__all__ = ["Monitor", "Settings", "__version__", "watch"]
