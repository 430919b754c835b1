"""The fast path sends what HolmesGPT would, and what it relies on in HolmesGPT still exists."""

from __future__ import annotations

import copy
import importlib
import inspect
import re
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from holmes_stream.engine import fastpath
from holmes_stream.engine.holmes_engine import HolmesEngine
from tests.test_engine import (
    FakeLLM,
    Recorder,
    fake_llm,  # noqa: F401 - module-scoped fixture
    make_request,
    redis_url,  # noqa: F401 - module-scoped fixture
    seed_history,
    settings_for,
)

FROZEN = datetime(2025, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


class FrozenDatetime(datetime):
    @classmethod
    def now(cls, tz: Any = None) -> FrozenDatetime:  # type: ignore[override]
        return cls.fromtimestamp(FROZEN.timestamp(), tz)


@pytest.fixture
def frozen_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """Prompts embed the current time; freeze it in HolmesGPT's renderer and in ours."""
    import holmes.plugins.prompts as holmes_prompts

    monkeypatch.setattr(holmes_prompts, "datetime", FrozenDatetime)
    monkeypatch.setattr(fastpath, "datetime", FrozenDatetime)


@pytest.fixture(scope="module")
def engines(fake_llm: FakeLLM, redis_url: str) -> dict[str, HolmesEngine]:  # noqa: F811
    from holmes_stream.engine.toolsets import history_toolset

    seed_history(redis_url)
    built = {}
    for name, fast in (("fast", True), ("slow", False)):
        toolsets = [history_toolset(redis_url, "hs-test:")]
        built[name] = HolmesEngine(settings_for(fake_llm), extra_toolsets=toolsets, fast=fast)
        built[name].warm()
    return built


@pytest.fixture(autouse=True)
def _reset_fake(fake_llm: FakeLLM) -> Iterator[None]:  # noqa: F811
    fake_llm.reset()
    yield


def _bodies(engine: HolmesEngine, fake: FakeLLM, request: Any) -> list[bytes]:
    fake.reset()
    engine.investigate(request, Recorder(), threading.Event())
    return list(fake.bodies)


@pytest.mark.usefixtures("frozen_time")
def test_request_bodies_are_byte_identical(
    engines: dict[str, HolmesEngine],
    fake_llm: FakeLLM,  # noqa: F811
) -> None:
    request = make_request(question="Why now?", context={"deploys": ["api v2 at 03:00"]})
    slow = _bodies(engines["slow"], fake_llm, request)
    fast_cold = _bodies(engines["fast"], fake_llm, request)
    fast_warm = _bodies(engines["fast"], fake_llm, request)  # served from the caches
    assert len(slow) == 2
    assert fast_cold == slow
    assert fast_warm == slow


@pytest.mark.usefixtures("frozen_time")
def test_bare_sdk_sends_the_same_bodies(
    engines: dict[str, HolmesEngine],
    fake_llm: FakeLLM,  # noqa: F811
    redis_url: str,  # noqa: F811
) -> None:
    from bench.bare_sdk import default_alert, run_bare
    from holmes_stream.engine.toolsets import history_toolset

    request = make_request(alert=default_alert())
    ours = _bodies(engines["fast"], fake_llm, request)
    captured: list[bytes] = []
    report = run_bare(
        1,
        fake_llm.api_base,
        1,
        extra_toolsets=[history_toolset(redis_url, "hs-test:")],
        max_steps=5,
        capture=captured,
        warmup=False,
    )
    assert report["errors"] == 0 and report["n"] == 1
    assert captured == ours


def _shapes() -> list[tuple[list[dict[str, Any]], list[dict[str, Any]] | None]]:
    system = {"role": "system", "content": "You are HolmesGPT. " * 200}
    user = {"role": "user", "content": "Why is NodeDiskFull firing?"}
    assistant = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "c1",
                "type": "function",
                "function": {"name": "investigation_history", "arguments": '{"limit": 3}'},
            }
        ],
    }
    tool = {"role": "tool", "tool_call_id": "c1", "name": "investigation_history", "content": "[]"}
    listed = {"role": "user", "content": [{"type": "text", "text": "a list-shaped message"}]}
    tools = [
        {
            "type": "function",
            "function": {
                "name": "investigation_history",
                "description": "history",
                "parameters": {
                    "type": "object",
                    "properties": {"limit": {"type": "integer", "description": "how many"}},
                    "required": ["limit"],
                },
            },
        }
    ]
    return [
        ([system, user], tools),
        ([system, user, assistant, tool], tools),
        ([system, user, assistant, tool, listed], None),
        ([user], None),
    ]


def test_token_counts_are_unchanged(engines: dict[str, HolmesEngine]) -> None:
    fast_ai = engines["fast"]._create_ai(engines["fast"]._get_config())
    slow_ai = engines["slow"]._create_ai(engines["slow"]._get_config())
    assert getattr(fast_ai.llm.count_tokens, "__holmes_stream_memo__", False)
    assert not getattr(slow_ai.llm.count_tokens, "__holmes_stream_memo__", False)
    for messages, tools in _shapes():
        slow_messages = copy.deepcopy(messages)
        expected = slow_ai.llm.count_tokens(messages=slow_messages, tools=tools)
        for _ in range(2):  # a miss, then a hit
            fast_messages = copy.deepcopy(messages)
            assert fast_ai.llm.count_tokens(messages=fast_messages, tools=tools) == expected
            # HolmesGPT's own per-message cache is filled the same way.
            assert [m.get("token_count") for m in fast_messages] == [
                m.get("token_count") for m in slow_messages
            ]
    assert any(stats["hits"] for stats in fastpath.memo_stats().values())


def test_memo_is_off_outside_fast_llms() -> None:
    assert fastpath.install()
    module = importlib.import_module(fastpath.TOKEN_COUNTER_MODULE)
    counter = getattr(module, fastpath.TOKEN_COUNTER_FUNCTION)("gpt-4o", None)
    assert not isinstance(counter, fastpath.TokenMemo)
    assert fastpath.install()  # idempotent
    assert getattr(module, fastpath.TOKEN_COUNTER_FUNCTION).__holmes_stream_memo__


def test_token_memo_is_bounded() -> None:
    memo = fastpath.TokenMemo(len, max_chars=10)
    assert memo("abcdef") == 6 and memo("abcdef") == 6
    assert (memo.hits, memo.misses) == (1, 1)
    memo("ghijkl")  # pushes the first entry out
    assert "abcdef" not in memo._cache and memo._chars <= 10


def test_system_prompt_cache_follows_toolset_state(engines: dict[str, HolmesEngine]) -> None:
    from holmes.core.tools import ToolsetStatusEnum

    ai = engines["fast"]._create_ai(engines["fast"]._get_config())
    toolsets = ai.tool_executor.toolsets
    cache = fastpath.SystemPromptCache()
    first = cache.get(toolsets, None)
    assert cache.get(toolsets, None) is first and cache.hits == 1
    ours = next(ts for ts in toolsets if ts.name == "holmes_stream")
    changed = [ts for ts in toolsets if ts is not ours] + [
        ours.model_copy(update={"status": ToolsetStatusEnum.FAILED, "error": "redis down"})
    ]
    second = cache.get(changed, None)
    assert second != first and "redis down" in (second or "")
    assert cache.get(toolsets, "prod-eu") != first  # the cluster name is rendered too


# -- what the fast path relies on in HolmesGPT and litellm ------------------------------------


def _params(func: Any) -> list[str]:
    return list(inspect.signature(func).parameters)


def test_litellm_token_counter_still_builds_its_count_function_per_call() -> None:
    module = importlib.import_module(fastpath.TOKEN_COUNTER_MODULE)
    original = inspect.unwrap(getattr(module, fastpath.TOKEN_COUNTER_FUNCTION))
    assert _params(original) == ["model", "custom_tokenizer"]
    source = inspect.getsource(module)
    # Looked up as a module global at call time, so wrapping the attribute reaches every count.
    assert source.count(f"= {fastpath.TOKEN_COUNTER_FUNCTION}(model, custom_tokenizer)") >= 2


def test_holmes_count_tokens_and_llm_factory_are_as_expected() -> None:
    from holmes.config import Config
    from holmes.core.llm import DefaultLLM
    from holmes.core.tool_calling_llm import ToolCallingLLM

    assert _params(DefaultLLM.count_tokens) == ["self", "messages", "tools"]
    assert "litellm.token_counter(" in inspect.getsource(DefaultLLM.count_tokens)
    assert {
        "toolset_tag_filter",
        "enable_all_toolsets_possible",
        "prerequisite_cache",
        "reuse_executor",
    } <= set(_params(Config.create_toolcalling_llm))
    assert {"msgs", "cancel_event"} <= set(_params(ToolCallingLLM.call_stream))
    source = inspect.getsource(ToolCallingLLM)
    assert "self.llm.count_tokens(" in source


def test_build_chat_messages_is_what_we_replicate() -> None:
    from holmes.core import conversations, prompt

    assert _params(prompt.build_system_prompt) == [
        "toolsets",
        "skills",
        "system_prompt_additions",
        "cluster_name",
        "ask_user_enabled",
        "prompt_component_overrides",
        "conversation_link",
    ]
    chat = inspect.getsource(conversations.build_chat_messages)
    for fragment in (
        "build_prompts(",
        "ask_user_enabled=False",
        "file_paths=None",
        "include_todowrite_reminder=False",
        "add_or_update_system_prompt(",
        '{"role": "user", "content": user_content}',
    ):
        assert fragment in chat, fragment
    user = inspect.getsource(prompt.build_user_prompt) + inspect.getsource(
        prompt.generate_user_prompt
    )
    for fragment in (
        "PromptComponent.TIME_SKILLS",
        "generate_skills_args(",
        fastpath.USER_PROMPT_TEMPLATE,
        "_should_enable_skills(context)",
    ):
        assert fragment in user, fragment
    assert callable(conversations.add_or_update_system_prompt)


def test_prompt_renderer_is_what_we_replicate() -> None:
    import holmes.plugins.prompts as holmes_prompts

    source = inspect.getsource(holmes_prompts.load_and_render_prompt)
    for fragment in (
        "Environment(",
        "loader=FileSystemLoader(THIS_DIR)",
        "env.from_string(prompt_as_str)",
        '"now": f"{now}"',
        '"now_timestamp_seconds": int(now.timestamp())',
        '"current_year": now.year',
        "datetime.now(timezone.utc)",
    ):
        assert fragment in source, fragment


def test_system_prompt_reads_only_what_the_cache_keys_on() -> None:
    import holmes.plugins.prompts as holmes_prompts

    directory = Path(holmes_prompts.THIS_DIR)
    keyed = {"name", "status", "error", "description", "docs_url", "llm_instructions", "value"}
    pending, seen = ["generic_ask.jinja2"], set()
    while pending:  # the system prompt template and everything it includes
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        text = (directory / name).read_text()
        # The system prompt must not depend on the time of day: it is rendered once.
        assert not re.search(r"\{\{-?\s*now", text), name
        for attribute in re.findall(r"\b(?:toolset|[a-z0-9_]+_ts)\.(\w+)", text):
            assert attribute in keyed, (name, attribute)
        pending.extend(re.findall(r"include ['\"]([^'\"]+)['\"]", text))
    assert "_toolsets_instructions.jinja2" in seen
