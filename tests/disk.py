"""A full disk for tests: a tiny tmpfs whose last byte is taken (root only, else the
test is skipped)."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def full_disk(path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs at ``path`` holding an empty ``rank0/`` and a file that fills the
    rest to the last byte (root only, else skipped); yields the filler."""
    path.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(path)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        (path / "rank0").mkdir()
        fd = os.open(path / "filler", os.O_WRONLY | os.O_CREAT)
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"x" * 512)
        os.close(fd)
        yield path / "filler"
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)
