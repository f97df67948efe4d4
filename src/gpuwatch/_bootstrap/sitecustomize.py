"""Loaded by every Python process that ``gpuwatch run`` starts (it is on PYTHONPATH).

It registers gpuwatch's torch import hook, then runs the ``sitecustomize`` this
one shadows, if any. It never stops the process from starting.
"""

import importlib.machinery
import importlib.util
import os
import sys


def _attach() -> None:
    try:
        from gpuwatch.instrument.attach import install

        install()
    except Exception as exc:
        try:
            from gpuwatch.redact import redact
        except Exception:  # gpuwatch itself is broken: say only what failed
            def redact(text: str) -> str:
                return text.split(":", 1)[0]
        print(redact(f"gpuwatch: zero-code attach failed ({type(exc).__name__}: {exc}); "
                     "running unmonitored"), file=sys.stderr)


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
