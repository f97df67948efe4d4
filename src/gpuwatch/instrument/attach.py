"""Zero-code attach: a post-import hook that patches torch the moment it is imported.

``gpuwatch run`` puts ``gpuwatch/_bootstrap`` on the child's PYTHONPATH; its
``sitecustomize`` calls :func:`install` in every Python process of the job.
That only registers the hook: nothing is patched until torch is imported and
no agent starts until a hook sees training (see ``patches.LazyPush``).
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import threading
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

from gpuwatch.faults import log
from gpuwatch.instrument.patches import (
    OWN_AGENT_PATCHES,
    PATCHES,
    LazyPush,
    Push,
    in_dataloader_worker,
)


class _PatchingLoader(importlib.abc.Loader):
    """Runs the real loader, then the patch; a failing patch is logged, never raised."""

    def __init__(self, loader: Any, after: Callable[[ModuleType], None]) -> None:
        self._loader = loader
        self._after = after

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        create: Callable[..., ModuleType | None] | None = getattr(
            self._loader, "create_module", None)
        return create(spec) if create is not None else None

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        self._after(module)

    def __getattr__(self, name: str) -> Any:  # resource readers, get_source, ...
        return getattr(self._loader, name)


class PostImportHook(importlib.abc.MetaPathFinder):
    """Calls ``patches[name](module)`` right after ``name`` is first imported."""

    def __init__(self, patches: dict[str, Callable[[ModuleType], None]]) -> None:
        self._patches = patches
        self._busy = threading.local()

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        patch = self._patches.get(fullname)
        if patch is None or getattr(self._busy, "name", None) == fullname:
            return None
        self._busy.name = fullname
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self._busy.name = None
        if spec is None or spec.loader is None:
            return None
        spec.loader = _PatchingLoader(spec.loader, _guarded(fullname, patch))
        return spec


def _guarded(name: str, patch: Callable[[ModuleType], None]) -> Callable[[ModuleType], None]:
    def run(module: ModuleType) -> None:
        try:
            patch(module)
        except Exception as exc:  # an unexpected torch version: run unpatched
            log.warning("gpuwatch: could not instrument %s (%s: %s); it runs unmonitored",
                        name, type(exc).__name__, exc)
    return run


_installed: LazyPush | None = None  # the zero-code hooks' state, once installed


def installed() -> bool:
    """Whether the zero-code hooks are installed in this process (``gpuwatch run``): its
    agent is theirs, for the whole process, whoever starts it."""
    return _installed is not None


def framework_loop_ended() -> None:
    """A framework's training loop ended: the zero-code hooks let the next optimizer to
    step end steps at once (a plain loop after a fit)."""
    if _installed is not None:
        _installed.release_boundary()


def install(start: Callable[[], Push]) -> LazyPush:
    """Patch torch now if imported, else when it is; returns the hooks' shared state.
    ``start`` starts the agent at the first mark and returns its push (the layer above
    passes ``gpuwatch.monitor.start_agent``)."""
    global _installed
    lazy = _installed = LazyPush(start, in_dataloader_worker)
    os.register_at_fork(after_in_child=lazy.forget_agent)
    _patch(lazy, PATCHES)
    return lazy


_own_agent: LazyPush | None = None  # the hooks of an agent the job's code started


def install_own_agent_hooks(push: Push) -> None:
    """Time the job's collectives and tell its DataLoaders apart into ``push`` (the ring
    of an agent the job's own code started: ``watch()``, a framework callback, which
    mark their own steps, samples and data): ``OWN_AGENT_PATCHES``, installed once per
    process, then pointed at each new agent. Nothing where the zero-code hooks are
    installed (they do this already)."""
    global _own_agent
    if _installed is not None:
        return
    if _own_agent is not None:
        _own_agent.push = push
        return
    lazy = _own_agent = LazyPush(lambda: push, in_dataloader_worker)
    lazy.push = push
    _patch(lazy, OWN_AGENT_PATCHES)


def _patch(lazy: LazyPush, table: dict[str, Callable[[LazyPush, ModuleType], None]]) -> None:
    """Each of ``table``'s patches on its module: now if it is imported, else when it is."""
    patches: dict[str, Callable[[ModuleType], None]] = {
        name: functools.partial(fn, lazy) for name, fn in table.items()}
    hook = PostImportHook({n: p for n, p in patches.items() if n not in sys.modules})
    sys.meta_path.insert(0, hook)
    for name, patch in patches.items():
        module = sys.modules.get(name)
        if module is not None:
            _guarded(name, patch)(module)
