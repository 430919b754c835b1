"""A turn's single tool call runs on the agent loop's thread; several still run concurrently."""

from __future__ import annotations

import concurrent.futures
import contextvars
import importlib
import inspect
import threading
from typing import Any

import pytest

from holmes_stream.engine import toolpool
from holmes_stream.engine.holmes_engine import HolmesEngine
from tests.test_engine import (
    FakeLLM,
    Recorder,
    fake_llm,  # noqa: F401 - module-scoped fixture
    make_request,
    redis_url,  # noqa: F401 - module-scoped fixture
)
from tests.test_engine_fastpath import engines  # noqa: F401 - module-scoped fixture


def _futures() -> Any:
    toolpool.install()
    return importlib.import_module(toolpool.MODULE).concurrent.futures


def test_call_stream_uses_the_two_names_we_replace() -> None:
    from holmes.core.tool_calling_llm import ToolCallingLLM

    source = inspect.getsource(ToolCallingLLM.call_stream)
    assert "concurrent.futures.ThreadPoolExecutor(" in source
    assert "concurrent.futures.as_completed(" in source
    futures = _futures()
    assert futures.Future is concurrent.futures.Future  # every other name is the standard one
    assert toolpool.install()  # idempotent


def test_outside_agent_loops_the_pool_is_the_standard_one() -> None:
    futures = _futures()
    with futures.ThreadPoolExecutor(max_workers=2) as pool:
        assert isinstance(pool, concurrent.futures.ThreadPoolExecutor)
        fs = [pool.submit(threading.get_ident) for _ in range(2)]
        assert all(f.result() != threading.get_ident() for f in futures.as_completed(fs))


def test_a_single_call_runs_on_the_asking_thread() -> None:
    futures = _futures()
    with toolpool.agent_loop(), futures.ThreadPoolExecutor(max_workers=16) as pool:
        future = pool.submit(lambda x: (x, threading.get_ident()), 7)
        assert not future.done()  # deferred until asked for
        [done] = list(futures.as_completed([future]))
    assert done is future and future.result() == (7, threading.get_ident())


def test_a_failing_call_hands_over_its_exception() -> None:
    futures = _futures()

    def boom() -> None:
        raise ValueError("tool failed")

    with toolpool.agent_loop(), futures.ThreadPoolExecutor(max_workers=16) as pool:
        [done] = list(futures.as_completed([pool.submit(boom)]))
    with pytest.raises(ValueError, match="tool failed"):
        done.result()


_CONTEXT: contextvars.ContextVar[str] = contextvars.ContextVar("test_toolpool", default="none")


def test_several_calls_run_concurrently_on_other_threads_in_the_loops_context() -> None:
    futures = _futures()
    barrier = threading.Barrier(3, timeout=10)  # passes only if all three run at once

    def call(i: int) -> tuple[int, int, str]:
        barrier.wait()
        return i, threading.get_ident(), _CONTEXT.get()

    token = _CONTEXT.set("investigation-1")
    try:
        with toolpool.agent_loop(), futures.ThreadPoolExecutor(max_workers=16) as pool:
            fs = [pool.submit(call, i) for i in range(3)]
            results = sorted(f.result() for f in futures.as_completed(fs, timeout=20))
    finally:
        _CONTEXT.reset(token)
    assert [i for i, _, _ in results] == [0, 1, 2]
    assert threading.get_ident() not in {t for _, t, _ in results}
    assert {c for _, _, c in results} == {"investigation-1"}


def test_calls_never_asked_for_are_cancelled_not_run() -> None:
    futures = _futures()
    ran: list[int] = []
    with toolpool.agent_loop(), futures.ThreadPoolExecutor(max_workers=16) as pool:
        future = pool.submit(ran.append, 1)  # the loop stops before as_completed
    assert future.cancelled() and ran == []


@pytest.mark.parametrize(("name", "own_thread"), [("fast", True), ("slow", False)])
def test_investigations_tool_call_thread(
    engines: dict[str, HolmesEngine],  # noqa: F811
    fake_llm: FakeLLM,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    own_thread: bool,
) -> None:
    """Through HolmesGPT's real loop: our engine's tool call runs on its agent-loop thread, the
    plain SDK's (``fast=False``) on the pool HolmesGPT starts for it, and both answer."""
    from holmes_stream.engine.toolsets import InvestigationHistoryTool

    threads: list[str] = []
    original = InvestigationHistoryTool._invoke

    def invoke(self: Any, *args: Any, **kwargs: Any) -> Any:
        threads.append(threading.current_thread().name)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(InvestigationHistoryTool, "_invoke", invoke)
    fake_llm.reset()
    result = engines[name].investigate(make_request(), Recorder(), threading.Event())
    assert result.num_llm_calls == 2 and len(result.tool_calls) == 1
    assert len(threads) == 1
    assert (threads[0] == "holmes-loop") is own_thread, threads
