"""Process-wide structured logging (structlog), configured once per process.

`configure_logging(node=..., role=...)` renders JSON lines when stderr is not a terminal (services,
CI, log shippers) and coloured console lines otherwise. Every line carries ISO-8601 UTC timestamps,
the level, and the node and role of the process; callers bind more (`job`, `round`) with
``log.bind(...)``. Identity is added by a processor rather than context variables, so lines logged
from paho's network thread and other background threads carry it too.
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import Any, cast

import structlog
from structlog.typing import EventDict, FilteringBoundLogger, Processor, WrappedLogger

__all__ = ["configure_logging", "get_logger"]

_WRITE_LOCK = threading.Lock()


class _StderrLogger:
    """Writes one rendered line to the *current* `sys.stderr` (resolved per call, so redirections work)."""

    def msg(self, message: str) -> None:
        stream = sys.stderr
        with _WRITE_LOCK:
            stream.write(message + "\n")
            stream.flush()

    log = debug = info = warn = warning = error = critical = exception = fatal = msg


def _stderr_logger_factory(*_args: Any) -> _StderrLogger:
    return _StderrLogger()


def _identity(node: str, role: str) -> Processor:
    def add_identity(_logger: WrappedLogger, _name: str, event: EventDict) -> EventDict:
        event.setdefault("node", node)
        event.setdefault("role", role)
        return event

    return add_identity


def configure_logging(node: str, role: str, level: str = "INFO") -> None:
    """Configure structlog for this process: JSON lines unless stderr is a TTY; bind node and role."""
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}: expected DEBUG, INFO, WARNING, ERROR or CRITICAL")
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        _identity(node, role),
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]
    renderer: list[Processor]
    if sys.stderr.isatty():
        renderer = [structlog.dev.ConsoleRenderer()]
    else:
        renderer = [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
    structlog.configure(
        processors=[*shared, *renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=_stderr_logger_factory,
        cache_logger_on_first_use=False,
    )


def get_logger(**bind: Any) -> FilteringBoundLogger:
    """A logger bound with `bind` (e.g. ``component="session"``).

    It is a lazy proxy: it follows `configure_logging` even when created before it (module level).
    Loggers derived from it with ``.bind()`` are fixed to the configuration of that moment.
    """
    return cast(FilteringBoundLogger, structlog.get_logger(**bind))
