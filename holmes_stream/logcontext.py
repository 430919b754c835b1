"""Log context: who a log line is about (investigation, alert, tenant, request, trace).

The context lives in a ``contextvars.ContextVar``, so it follows asyncio tasks on its own
(a task copies the context it was created in). Threads do not inherit it: work handed to a
thread pool or a new thread must run in a copy of the caller's context (``in_context``), as
the investigation engine's calls do.

``ContextFilter`` sits on the log handler and copies the context, and the trace and span ids
of the current OpenTelemetry span when tracing is on, into every record it sees, HolmesGPT's
and the libraries' records included.
"""

from __future__ import annotations

import contextvars
import functools
import logging
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")

_context: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "holmes_stream_log_context", default=None
)


def current() -> dict[str, Any]:
    """The fields bound now (a copy)."""
    return dict(_context.get() or {})


class bind:
    """Add ``fields`` (None values are left out) to the log context of this block.

    A class rather than a ``@contextmanager`` generator: it is entered for every HTTP request
    and alert, and a generator costs twice as much per block."""

    __slots__ = ("_merged", "_token")

    def __init__(self, **fields: Any) -> None:
        self._merged = {
            **(_context.get() or {}),
            **{k: v for k, v in fields.items() if v is not None},
        }

    def __enter__(self) -> dict[str, Any]:
        self._token = _context.set(self._merged)
        return self._merged

    def __exit__(self, *_exc: object) -> None:
        _context.reset(self._token)


def in_context(fn: Callable[P, R]) -> Callable[P, R]:
    """``fn`` bound to a copy of the current context: for ``run_in_executor`` and threads.

    The copy carries the log context and the current OpenTelemetry span alike.
    """
    run = contextvars.copy_context().run

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        return run(fn, *args, **kwargs)

    return wrapper


def _trace_ids() -> tuple[str, str] | None:
    from holmes_stream import telemetry

    if not telemetry.active():
        return None
    return telemetry.current_ids()


class ContextFilter(logging.Filter):
    """Adds the bound fields and the trace/span id to every record (never overriding ``extra``).

    Install it on handlers, before the redacting filter: a filter on a logger does not see
    records propagated from child loggers.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        fields = _context.get()
        if fields:
            for key, value in fields.items():
                if key not in record.__dict__:
                    record.__dict__[key] = value
        ids = _trace_ids()
        if ids is not None and "trace_id" not in record.__dict__:
            record.trace_id, record.span_id = ids
        return True
