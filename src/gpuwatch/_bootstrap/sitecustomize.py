"""Loaded by every Python process that ``gpuwatch run`` starts (it is on PYTHONPATH).

It registers gpuwatch's torch import hook, then runs the ``sitecustomize`` this
one shadows, if any. It never stops the process from starting, and says nothing in
a Python that cannot run gpuwatch (a tool's own, a system one) unless that process
imports torch: only a process that trains is told it runs unmonitored. Written to
load in any Python (no annotations, no f-strings: type comments instead).
"""

import os
import sys

MYPY = False
if MYPY:  # (type comments' names, for the checker only: no typing module in old Pythons)
    from collections.abc import Callable  # noqa: F401 (named in type comments)


def _attach():  # type: () -> None
    if sys.version_info < (3, 11):
        _at_torch("gpuwatch needs Python 3.11 or newer")
        return
    try:
        from gpuwatch.instrument.attach import install
    except ImportError as exc:  # (not this Python's package, or one of its own missing)
        _at_torch("this Python cannot import gpuwatch: %s" % exc)
        return
    try:
        install(start=_start_agent)
    except Exception as exc:
        _say("zero-code attach failed (%s); running unmonitored" % _describe(exc))


def _start_agent():  # type: () -> Callable[..., None]
    # runs at the first mark, not at startup
    from gpuwatch.monitor import start_agent

    return start_agent()


def _describe(exc):  # type: (Exception) -> str
    """The error, redacted; only its type when gpuwatch's redaction cannot be imported."""
    try:
        from gpuwatch.redact import redact

        return redact("%s: %s" % (type(exc).__name__, exc))
    except Exception:
        return type(exc).__name__


def _say(text):  # type: (str) -> None
    try:
        sys.stderr.write("gpuwatch: %s\n" % text)
    except Exception:  # (a closed or broken stderr: nothing to tell it on)
        pass


class _TorchNotice(object):
    """A meta-path finder that finds nothing: when the process first imports torch,
    it says (once) why gpuwatch does not watch it, and takes itself off the path."""

    def __init__(self, reason):  # type: (str) -> None
        self.reason = reason

    def find_spec(self, name, path=None, target=None):  # type: (str, object, object) -> None
        if name == "torch":
            if self in sys.meta_path:
                sys.meta_path.remove(self)
            _say("%s; torch runs unmonitored" % self.reason)
        return None


def _at_torch(reason):  # type: (str) -> None
    if sys.version_info >= (3, 4):  # (find_spec: the finders of every Python torch runs on)
        sys.meta_path.insert(0, _TorchNotice(reason))


def _chain():  # type: () -> None
    if sys.version_info < (3, 4):
        return
    import importlib.machinery
    import importlib.util

    here = os.path.dirname(os.path.abspath(__file__))
    rest = [p for p in sys.path if os.path.abspath(p or ".") != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)


_attach()
_chain()
