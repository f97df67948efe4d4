"""PyTorch Lightning (the ``lightning`` package): ``Trainer(callbacks=[GpuWatchCallback()])``.

Install with ``pip install 'gpuwatch[lightning]'``.
"""

from __future__ import annotations

from lightning.pytorch.callbacks import Callback

from gpuwatch.integrations._lightning_hooks import LightningHooks


class GpuWatchCallback(LightningHooks, Callback):
    """Attach gpuwatch to ``Trainer.fit`` on every rank; keyword arguments are settings."""
