"""Sizes of what a training loop hands over, read without touching the device: a
batch's leading dimension and its token ids, a tensor's bytes, a saved checkpoint's
bytes on disk."""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def first_tensor(batch: Any, depth: int = 0) -> Any:
    """The first tensor-like (anything with a ``shape``) in a batch: the batch itself, or
    the first of a list, tuple or mapping (a Hugging Face ``BatchEncoding`` too), three
    levels deep at most; None when there is none."""
    if getattr(batch, "shape", None) is not None:
        return batch
    if depth < 3:
        if isinstance(batch, (list, tuple)) and batch:
            return first_tensor(batch[0], depth + 1)
        if isinstance(batch, Mapping) and batch:
            return first_tensor(next(iter(batch.values())), depth + 1)
    return None


def batch_size(batch: Any) -> int:
    """Leading dimension of the first tensor-like in a batch (0 when there is none)."""
    return leading_size(first_tensor(batch))


def leading_size(tensor: Any) -> int:
    """A tensor-like's leading dimension (0 for None or a scalar)."""
    shape = getattr(tensor, "shape", None)
    return int(shape[0]) if shape is not None and len(shape) else 0


def token_ids(tensor: Any) -> int:
    """A tensor-like's elements where it holds token ids: two dimensions (batch,
    sequence) of signed integers (a padded batch's padding counted: the work done); else
    0 (images, bytes, masks, floats, None)."""
    shape = getattr(tensor, "shape", None)
    if shape is None or len(shape) != 2:
        return 0
    dtype = getattr(tensor, "dtype", None)
    ids = ((getattr(dtype, "is_signed", None) is True  # (torch: int8..int64, not bool/uint8)
            and getattr(dtype, "is_floating_point", None) is False
            and not getattr(dtype, "is_complex", False))
           or getattr(dtype, "kind", None) == "i")  # (numpy's signed integers)
    return int(shape[0]) * int(shape[1]) if ids else 0


MAX_ENTRIES = 10_000  # a directory sized for a save is walked no further than this
QUICK_ENTRIES = 64  # a directory this small is sized at once, on the training thread
# Files a save wrote may carry a time a little before it began: a file server whose clock
# runs behind this host's, coarse timestamps.
MTIME_SLACK_S = 5.0


# A torch.distributed.checkpoint shard: written by the rank its name gives
_SHARD = re.compile(r"__(\d+)_\d+\.distcp")


def saved_at(target: Any, since: float, rank: int | None = None
             ) -> int | tuple[str, float, int | None] | None:
    """What a save wrote, as the training thread can tell it at once: a file's bytes,
    or a small directory's (``QUICK_ENTRIES``: a checkpoint's shards; saved under a
    temporary name and renamed, either is gone by the time the agent looks); for a
    larger directory its path, when the save began (Unix s, less ``MTIME_SLACK_S``) and
    ``rank``, sized later off the training thread; None for no path. ``rank``: the
    saving process's in its group, whose own shards alone count (every rank of a
    distributed checkpoint writes into one directory)."""
    try:
        path = os.fspath(target)
        st = os.stat(path)
    except Exception:  # (no file, a NUL, a remote path object's own error: never the job's)
        return None
    if not stat.S_ISDIR(st.st_mode):
        return st.st_size
    total, whole = _walk(Path(path), since - MTIME_SLACK_S, QUICK_ENTRIES, rank)
    return total if whole else (path, since - MTIME_SLACK_S, rank)


def saved_bytes(saved: Any) -> int:
    """The bytes a ``saved_at`` value stands for (a directory's read now: never on the
    training thread); 0 for none."""
    if isinstance(saved, tuple):
        return size_on_disk(*saved)
    return saved if isinstance(saved, int) and saved > 0 else 0


def size_on_disk(target: Any, since: float = 0.0, rank: int | None = None) -> int:
    """Bytes of a saved file, or of the files under a saved directory written at or
    after ``since`` (Unix s: the save's own, not the older checkpoints beside them;
    of ``rank``'s shards, not the other ranks'), walking at most ``MAX_ENTRIES``
    entries; 0 if unknown. It stats every file: never on the training thread."""
    try:
        path = Path(os.fspath(target))
        if not path.is_dir():
            return path.stat().st_size
    except (OSError, TypeError):
        return 0
    return _walk(path, since, MAX_ENTRIES, rank)[0]


def _walk(path: Path, since: float, limit: int, rank: int | None) -> tuple[int, bool]:
    """(bytes of the files under ``path`` changed at or after ``since``, whether the
    walk saw every entry) walking at most ``limit`` entries. With ``rank``, of a
    distributed checkpoint (shards named by rank) only that rank's shards count, and the
    files no rank names (.metadata) only for rank 0, their writer."""
    own = unnamed = 0
    shards = False
    seen, pending = 0, [path]

    def total() -> int:
        return own + (unnamed if not shards or not rank else 0)

    while pending:
        try:
            with os.scandir(pending.pop()) as entries:
                for entry in entries:
                    seen += 1
                    if seen > limit:
                        return total(), False
                    if entry.is_dir(follow_symlinks=False):
                        pending.append(Path(entry.path))
                        continue
                    if not entry.is_file(follow_symlinks=False):
                        continue
                    shard = _SHARD.fullmatch(entry.name) if rank is not None else None
                    shards = shards or shard is not None
                    if shard is not None and int(shard[1]) != rank:
                        continue
                    st = entry.stat(follow_symlinks=False)
                    size = st.st_size if st.st_mtime >= since else 0
                    if shard is not None:
                        own += size
                    else:
                        unnamed += size
        except OSError:
            continue
    return total(), True


def tensor_bytes(obj: Any) -> int:
    """Bytes of a tensor or a list of tensors (metadata only: no device sync)."""
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(t) for t in obj)
    try:
        return int(obj.numel() * obj.element_size())
    except Exception:
        return 0
