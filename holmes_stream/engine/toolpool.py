"""A turn's single tool call runs on the agent loop's own thread (HolmesGPT 0.45's call_stream).

For every LLM turn that asks for tools, ``ToolCallingLLM.call_stream`` opens a new
``concurrent.futures.ThreadPoolExecutor``, submits each tool call, yields ``start_tool_calling``
per call, then takes the results through ``concurrent.futures.as_completed`` and shuts the pool
down. For the usual single call that is a thread started and joined per tool call, and the
call's result handed between two threads: under load every such hand-over waits for the GIL
among all the other investigations' threads (with 64 in flight, the gap between a turn's LLM
answer and the next request measured a mean of 124 and 103 ms before, 105 and 86 ms after).

``install()`` gives ``holmes.core.tool_calling_llm`` a ``concurrent`` whose ``futures`` differs
from the standard one in two names only, and only on threads inside ``agent_loop()`` (the
engine's own agent-loop threads; everything else, the bare SDK we benchmark against included,
gets the standard pool):

* ``ThreadPoolExecutor``: ``submit`` defers the call (a ``DeferredCall`` future);
* ``as_completed``: one deferred call runs right there, on the asking thread; several are
  started on a real pool of the size HolmesGPT asked for and complete as before.

Tool calls run in the agent loop's context (its log context: their log lines name the
investigation), which HolmesGPT's own pool threads do not inherit. A call the loop never asks for
(it was stopped in between) is cancelled when the ``with`` block ends, instead of running to no
one. ``tests/test_engine_toolpool.py`` fails if call_stream stops using these two names this
way.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import contextvars
import threading
import types
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from typing import Any

MODULE = "holmes.core.tool_calling_llm"

_in_agent_loop: ContextVar[bool] = ContextVar("holmes_stream_agent_loop", default=False)
_install_lock = threading.Lock()


class DeferredCall(concurrent.futures.Future[Any]):
    """A submitted call that runs when ``as_completed`` asks for it (or never, if cancelled)."""

    def __init__(self, pool: DeferringPool, fn: Callable[..., Any], args: Any, kwargs: Any) -> None:
        super().__init__()
        self.pool = pool
        self._call: tuple[Callable[..., Any], Any, Any] | None = (fn, args, kwargs)

    @property
    def started(self) -> bool:
        return self._call is None

    def run(self) -> None:
        call, self._call = self._call, None
        if call is None or not self.set_running_or_notify_cancel():
            return
        fn, args, kwargs = call
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:  # as ThreadPoolExecutor's workers hand it over
            self.set_exception(exc)
        else:
            self.set_result(result)


class DeferringPool:
    """``ThreadPoolExecutor`` as call_stream uses it (a ``with`` block, ``submit``)."""

    def __init__(self, max_workers: int | None = None, *args: Any, **kwargs: Any) -> None:
        self._max_workers = max_workers
        self._calls: list[DeferredCall] = []
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> DeferredCall:
        call = DeferredCall(self, fn, args, kwargs)
        self._calls.append(call)
        return call

    def start_all(self) -> None:
        """The calls not started yet, on threads: several tool calls run concurrently."""
        waiting = [call for call in self._calls if not call.started]
        if not waiting:
            return
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(self._max_workers)
        for call in waiting:
            # In the loop's context, as a single call runs: its log lines name the investigation.
            self._pool.submit(contextvars.copy_context().run, call.run)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        for call in self._calls:
            call.cancel()  # only those never started: the others are running or done
        if self._pool is not None:
            self._pool.shutdown(wait=wait, cancel_futures=cancel_futures)

    def __enter__(self) -> DeferringPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown(wait=True)


def as_completed(
    fs: Iterable[concurrent.futures.Future[Any]], timeout: float | None = None
) -> Iterator[concurrent.futures.Future[Any]]:
    """``concurrent.futures.as_completed``, which first runs or starts deferred calls."""
    futures = list(fs)
    deferred = [f for f in futures if isinstance(f, DeferredCall) and not f.started]
    if len(futures) == 1 and deferred:
        deferred[0].run()
        yield deferred[0]
        return
    for pool in {id(f.pool): f.pool for f in deferred}.values():
        pool.start_all()
    yield from concurrent.futures.as_completed(futures, timeout)


def _pool(*args: Any, **kwargs: Any) -> Any:
    if _in_agent_loop.get():
        return DeferringPool(*args, **kwargs)
    return concurrent.futures.ThreadPoolExecutor(*args, **kwargs)


class _Futures(types.ModuleType):
    """``concurrent.futures`` with the two names above; every other name is the standard one."""

    ThreadPoolExecutor = staticmethod(_pool)
    as_completed = staticmethod(as_completed)

    def __getattr__(self, name: str) -> Any:
        return getattr(concurrent.futures, name)


class _Concurrent(types.ModuleType):
    futures = _Futures("concurrent.futures")

    def __getattr__(self, name: str) -> Any:
        import concurrent as real

        return getattr(real, name)


def install() -> bool:
    """Give HolmesGPT's agent loop module the deferring ``concurrent``; False if it no longer
    imports ``concurrent`` (nothing is changed then)."""
    import importlib

    module = importlib.import_module(MODULE)
    with _install_lock:
        current = getattr(module, "concurrent", None)
        if isinstance(current, _Concurrent):
            return True
        if current is None or getattr(current, "futures", None) is not concurrent.futures:
            return False
        module.concurrent = _Concurrent("concurrent")  # type: ignore[attr-defined]
        return True


@contextlib.contextmanager
def agent_loop() -> Iterator[None]:
    """Mark the current thread's work as one of our agent loops (see the module docstring)."""
    token = _in_agent_loop.set(True)
    try:
        yield
    finally:
        _in_agent_loop.reset(token)
