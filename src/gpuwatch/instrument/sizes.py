"""Sizes of what a training loop hands over, read without touching the device: a
batch's leading dimension, a tensor's bytes, a saved checkpoint's bytes on disk."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def batch_size(batch: Any, depth: int = 0) -> int:
    """Leading dimension of the first tensor-like in a batch (0 when there is none)."""
    shape = getattr(batch, "shape", None)
    if shape is not None:
        return int(shape[0]) if len(shape) else 0
    if depth < 3:
        if isinstance(batch, (list, tuple)) and batch:
            return batch_size(batch[0], depth + 1)
        if isinstance(batch, dict) and batch:
            return batch_size(next(iter(batch.values())), depth + 1)
    return 0


def size_on_disk(target: Any) -> int:
    """Bytes of a saved file, or of every file under a saved directory; 0 if unknown."""
    try:
        path = Path(os.fspath(target))
        if path.is_dir():
            return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        return path.stat().st_size
    except (OSError, TypeError):
        return 0


def tensor_bytes(obj: Any) -> int:
    """Bytes of a tensor or a list of tensors (metadata only: no device sync)."""
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(t) for t in obj)
    try:
        return int(obj.numel() * obj.element_size())
    except Exception:
        return 0
