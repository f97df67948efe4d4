"""PyTorch Lightning under its older ``pytorch_lightning`` namespace."""

from __future__ import annotations

from pytorch_lightning.callbacks import Callback

from gpuwatch.integrations._lightning_hooks import LightningHooks


class GpuWatchCallback(LightningHooks, Callback):
    """Attach gpuwatch to ``Trainer.fit`` on every rank; keyword arguments are settings."""
