"""Counting the agent's own failures: each is counted per component and logged once.

No exception from gpuwatch reaches the training code; this is where they go.
Every message of the ``gpuwatch`` logger is redacted (``gpuwatch.redact``).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import Counter

from gpuwatch.redact import RedactingFilter

_logger = logging.getLogger("gpuwatch")
if not any(isinstance(f, RedactingFilter) for f in _logger.filters):
    _logger.addFilter(RedactingFilter())


class Log:
    """The ``gpuwatch`` logger, through calls that never raise: a handler that fails (a
    closed ``sys.stderr`` behind logging's last resort, raising ValueError; a handler of
    the job's own) loses the message, never the job's step or the agent's thread."""

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger

    def debug(self, msg: str, *args: object) -> None:
        self._log(logging.DEBUG, msg, args)

    def info(self, msg: str, *args: object) -> None:
        self._log(logging.INFO, msg, args)

    def warning(self, msg: str, *args: object) -> None:
        self._log(logging.WARNING, msg, args)

    def error(self, msg: str, *args: object) -> None:
        self._log(logging.ERROR, msg, args)

    def _log(self, level: int, msg: str, args: tuple[object, ...]) -> None:
        with contextlib.suppress(Exception):  # (where nothing can be told, nothing is)
            self.logger.log(level, msg, *args)


log = Log(_logger)


class FaultLog:
    """Counts failures by component (``agent_errors_total{component}``), logging each kind once."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self._seen: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def record(self, component: str, exc: BaseException | str) -> None:
        """Count one failure of ``component``; log it the first time its kind is seen."""
        what = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
        key = (component, what if isinstance(exc, str) else type(exc).__name__)
        with self._lock:
            self.counts[component] += 1
            first = key not in self._seen
            self._seen.add(key)
        if first:
            log.warning("gpuwatch %s: %s (counted; further ones are not logged)", component, what)

    def note_once(self, key: str, message: str) -> None:
        """Log an informational message once per key (not a failure)."""
        with self._lock:
            if ("note", key) in self._seen:
                return
            self._seen.add(("note", key))
        log.info("gpuwatch: %s", message)
