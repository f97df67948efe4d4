"""Loaded by every Python process that ``gpuwatch run`` starts (it is on PYTHONPATH).

It registers gpuwatch's torch import hook, then runs the ``sitecustomize`` this
one shadows, if any. It never stops the process from starting.
"""

import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Callable


def _attach() -> None:
    try:
        from gpuwatch.instrument.attach import install

        install(start=_start_agent)
    except Exception as exc:
        print(f"gpuwatch: zero-code attach failed ({_describe(exc)}); running unmonitored",
              file=sys.stderr)


def _start_agent() -> Callable[..., None]:  # runs at the first mark, not at startup
    from gpuwatch.monitor import start_agent

    return start_agent()


def _describe(exc: Exception) -> str:
    """The error, redacted; only its type when gpuwatch itself cannot be imported."""
    try:
        from gpuwatch.redact import redact

        return redact(f"{type(exc).__name__}: {exc}")
    except Exception:
        return type(exc).__name__


def _chain() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    rest = [p for p in sys.path if os.path.abspath(p or ".") != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)


_attach()
_chain()
