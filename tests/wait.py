"""Waiting for a condition in tests, never for a fixed time."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(predicate: Callable[[], T], deadline_s: float, what: str = "the condition",
             poll_s: float = 0.01) -> T:
    """Poll ``predicate`` until it returns something truthy and return that; raise
    AssertionError naming ``what`` once ``deadline_s`` seconds have passed."""
    deadline = time.monotonic() + deadline_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what} did not happen within {deadline_s:g} s")
        time.sleep(poll_s)
