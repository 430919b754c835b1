"""The fast path sends what HolmesGPT would, and what it relies on in HolmesGPT still exists."""

from __future__ import annotations

import ast
import copy
import functools
import importlib
import inspect
import json
import logging
import re
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from holmes_stream.engine import fastpath, quietdebug
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
    for name in ("count_tokens", "completion"):
        assert getattr(getattr(fast_ai.llm, name), "__holmes_stream_memo__", False)
        assert not getattr(getattr(slow_ai.llm, name), "__holmes_stream_memo__", False)
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
    assert (memo.cache.hits, memo.cache.misses) == (1, 1)
    memo("ghijkl")  # pushes the first entry out
    assert "abcdef" not in memo.cache and memo.cache.weight == 6


def test_weighted_lru_evicts_least_recently_used() -> None:
    lru: fastpath.WeightedLru[str, int] = fastpath.WeightedLru(max_weight=10)
    lru.put("a", 1, 4)
    lru.put("b", 2, 4)
    assert lru.get("a") == 1  # now the most recent
    lru.put("c", 3, 4)  # over the bound: the least recent ("b") goes
    assert ("a" in lru, "b" in lru, "c" in lru) == (True, False, True)
    lru.put("a", 99, 4)  # present: kept as it is
    assert lru.get("a") == 1 and lru.weight == 8 and lru.get("b") is None


def test_weighted_lru_stays_exact_under_racing_threads() -> None:
    """Lock-free hits racing with insertions and evictions: every answer is the stored value,
    and the weight total matches the entries and their bound."""
    lru: fastpath.WeightedLru[int, int] = fastpath.WeightedLru(max_weight=300)
    wrong: list[tuple[int, int]] = []
    start = threading.Barrier(8)

    def work(seed: int) -> None:
        start.wait()
        for i in range(20_000):
            key = (i * 7 + seed * 13) % 97
            value = lru.get(key)
            if value is None:
                lru.put(key, key * 3, 1 + key % 9)
            elif value != key * 3:
                wrong.append((key, value))

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not wrong
    entries = list(lru._entries.items())
    assert lru.weight == sum(w for _, (_, w) in entries) <= 300
    assert all(value == key * 3 and w == 1 + key % 9 for key, (value, w) in entries)


def test_system_prompt_cache_follows_toolset_state(engines: dict[str, HolmesEngine]) -> None:
    from holmes.core.tools import ToolsetStatusEnum

    ai = engines["fast"]._create_ai(engines["fast"]._get_config())
    toolsets = ai.tool_executor.toolsets
    cache = fastpath.SystemPromptCache()
    first = cache.get(toolsets, None)
    assert cache.get(toolsets, None) is first and cache.cache.hits == 1
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


# -- whole-conversation token counts ----------------------------------------------------------


def _litellm_token_counter() -> Any:
    import litellm

    return inspect.unwrap(litellm.token_counter)


def _conversations() -> list[list[dict[str, Any]]]:
    shapes = [messages for messages, _ in _shapes()]
    system, user, assistant, tool, listed = shapes[2]
    counted = [dict(m, token_count=7) for m in (system, user, assistant, tool)]
    unicode = {"role": "user", "content": "Déploiement échoué — 磁盘已满 ✓"}
    return [
        *shapes,
        counted,
        [user, assistant, tool],  # no system message
        [unicode, {"role": "assistant", "content": "ok", "name": "holmes"}],
        [listed, user],
    ]


def test_whole_conversation_counts_equal_litellms() -> None:
    assert fastpath.install()
    original = _litellm_token_counter()
    counts = fastpath.MessageCounts(original)
    tools = _shapes()[0][1]
    for messages in _conversations():
        for with_tools in (None, [], tools):
            expected = original(model="openai/scripted", messages=messages, tools=with_tools)
            for _ in range(2):  # computed, then remembered
                got = counts.total("openai/scripted", messages, with_tools)
                assert got == expected, (messages, with_tools)
    assert counts.cache.hits and counts.cache.misses


def test_litellm_counts_messages_one_by_one_and_ignores_int_fields() -> None:
    from litellm.litellm_core_utils import token_counter as module

    original = _litellm_token_counter()
    assert {"model", "messages", "tools"} <= set(_params(original))
    source = inspect.getsource(module.token_counter)
    # count(M, T) = _count_messages(M) + _count_extra(T, system in M): what MessageCounts sums.
    assert "num_tokens = _count_messages(" in source
    assert "num_tokens += _count_extra(" in source
    count_messages = inspect.getsource(module._count_messages)
    assert "for message in messages:" in count_messages
    assert "num_tokens += params.tokens_per_message" in count_messages
    # HolmesGPT's per-message cache entry is an int, which litellm does not count.
    message = {"role": "user", "content": "Why is NodeDiskFull firing?"}
    assert original(model="openai/scripted", messages=[message]) == original(
        model="openai/scripted", messages=[dict(message, token_count=12345)]
    )


def test_whole_conversation_memo_is_scoped() -> None:
    import litellm

    assert fastpath.install()
    wrapper = litellm.token_counter
    assert wrapper.__holmes_stream_memo__
    assert fastpath._message_counts is not None
    stats = fastpath._message_counts.cache
    before = (stats.hits, stats.misses)
    messages = _shapes()[1][0]
    # Outside our LLMs' calls (the bare SDK) litellm counts everything itself.
    assert wrapper(model="openai/scripted", messages=messages) == _litellm_token_counter()(
        model="openai/scripted", messages=messages
    )
    assert (stats.hits, stats.misses) == before


# -- the OpenAI SDK's request transform and body encoding -------------------------------------


def _property_infos(annotation: Any, seen: set[int] | None = None) -> Iterator[Any]:
    """Every PropertyInfo reachable from a type annotation of the OpenAI SDK's params."""
    from typing import get_args, get_type_hints

    from openai._utils import PropertyInfo
    from typing_extensions import is_typeddict

    seen = set() if seen is None else seen
    if id(annotation) in seen:
        return
    seen.add(id(annotation))
    for metadata in getattr(annotation, "__metadata__", ()):
        if isinstance(metadata, PropertyInfo):
            yield metadata
    if is_typeddict(annotation):
        for hint in get_type_hints(annotation, include_extras=True).values():
            yield from _property_infos(hint, seen)
    for arg in get_args(annotation):
        yield from _property_infos(arg, seen)


def test_chat_params_have_no_aliases_or_formats() -> None:
    from openai.types.chat import completion_create_params

    for params in (
        completion_create_params.CompletionCreateParamsNonStreaming,
        completion_create_params.CompletionCreateParamsStreaming,
    ):
        infos = list(_property_infos(params))
        # With neither, the transform of plain JSON only drops the omitted arguments.
        assert [i for i in infos if i.alias is not None or i.format is not None] == []


def _request_params(fake: FakeLLM) -> dict[str, Any]:
    """The create() arguments of a real request body, plus omitted ones and non-ASCII text."""
    from openai import omit

    body = json.loads(fake.bodies[-1])
    body["messages"].append({"role": "user", "content": "Déploiement échoué — 磁盘已满 ✓"})
    return {**body, "temperature": 0.25, "top_p": omit, "user": omit, "seed": omit}


@pytest.mark.usefixtures("frozen_time")
def test_transform_and_body_encoding_are_identities_for_our_bodies(
    engines: dict[str, HolmesEngine],
    fake_llm: FakeLLM,  # noqa: F811
) -> None:
    from openai._utils import maybe_transform as sdk_transform
    from openai._utils._json import openapi_dumps as sdk_dumps
    from openai.types.chat import completion_create_params

    assert fastpath.install()
    _bodies(engines["fast"], fake_llm, make_request(question="Why now?"))
    params = _request_params(fake_llm)
    kind = completion_create_params.CompletionCreateParamsNonStreaming
    transform = importlib.import_module(fastpath.TRANSFORM_MODULE).maybe_transform
    dumps = importlib.import_module(fastpath.BODY_DUMPS_MODULE).openapi_dumps
    assert transform.__holmes_stream_memo__ and dumps.__holmes_stream_memo__
    expected = sdk_transform(params, kind)
    token = fastpath._active.set(True)
    try:
        fast = transform(params, kind)
        assert fast == expected and list(fast) == list(expected)
        assert dumps(fast) == sdk_dumps(expected)
    finally:
        fastpath._active.reset(token)


def test_patched_openai_functions_are_as_expected() -> None:
    from openai._base_client import BaseClient
    from openai._utils import _json as openai_json
    from openai.resources.chat.completions.completions import Completions

    transform_module = importlib.import_module(fastpath.TRANSFORM_MODULE)
    original = inspect.unwrap(getattr(transform_module, fastpath.TRANSFORM_FUNCTION))
    assert _params(original) == ["data", "expected_type"]
    create = inspect.getsource(Completions.create)
    assert "body=maybe_transform(" in create
    assert "completion_create_params.CompletionCreateParamsNonStreaming" in create
    dumps_module = importlib.import_module(fastpath.BODY_DUMPS_MODULE)
    original_dumps = inspect.unwrap(getattr(dumps_module, fastpath.BODY_DUMPS_FUNCTION))
    assert original_dumps is openai_json.openapi_dumps
    assert _params(original_dumps) == ["obj"]
    source = inspect.getsource(openai_json.openapi_dumps)
    for fragment in (
        "cls=_CustomEncoder",
        "ensure_ascii=False",
        'separators=(",", ":")',
        "allow_nan=False",
        ").encode()",
    ):
        assert fragment in source, fragment
    assert "openapi_dumps(json_data)" in inspect.getsource(BaseClient._build_request)


def test_openai_wrappers_are_scoped() -> None:
    from openai._utils._json import openapi_dumps as sdk_dumps
    from openai.types.chat import completion_create_params

    assert fastpath.install()
    transform = importlib.import_module(fastpath.TRANSFORM_MODULE).maybe_transform
    dumps = importlib.import_module(fastpath.BODY_DUMPS_MODULE).openapi_dumps
    stamp = datetime(2025, 1, 2, tzinfo=UTC)
    # Not plain JSON: the SDK's own code runs even inside our scope.
    token = fastpath._active.set(True)
    try:
        assert (
            dumps({"at": stamp})
            == sdk_dumps({"at": stamp})
            == b'{"at":"2025-01-02T00:00:00+00:00"}'
        )
    finally:
        fastpath._active.reset(token)
    # Outside it, always.
    params = {"messages": [{"role": "user", "content": "hi"}], "model": "x"}
    kind = completion_create_params.CompletionCreateParamsNonStreaming
    assert transform(params, kind) == params and transform(params, kind) is not params


def test_c_dumps_is_json_dumps() -> None:
    import json as stdlib_json

    class Colour(str):
        pass

    values: list[Any] = [
        {"a": [1, 2.5, -0.0, 1e300, True, False, None], "b": {"c": 'é\n\t"\\ 磁盘 \u2028'}},
        [],
        {},
        "plain",
        12,
        [{"k": Colour("red")}],
        {"when": datetime(2025, 1, 2, tzinfo=UTC), "set": {1}},
    ]
    for value in values:
        for kwargs in (
            {"default": str},
            {"default": str, "ensure_ascii": False, "separators": (",", ":")},
        ):
            assert fastpath.c_dumps(value, **kwargs) == stdlib_json.dumps(value, **kwargs)
    with pytest.raises(TypeError):
        fastpath.c_dumps({"when": datetime(2025, 1, 2, tzinfo=UTC)})
    assert fastpath.plain_json(values[:5]) and not fastpath.plain_json(values[5:])


# -- the agent loop's thread and the tool schemas ---------------------------------------------


def test_litellm_service_hook_uses_the_threads_event_loop() -> None:
    import asyncio

    from litellm._service_logger import ServiceLogging

    source = inspect.getsource(ServiceLogging.service_success_hook)
    for fragment in ("asyncio.get_event_loop()", "loop.run_until_complete(", "asyncio.run("):
        assert fragment in source, fragment
    seen: list[Any] = []

    def run() -> None:
        with fastpath.thread_event_loop():
            loop = asyncio.get_event_loop()
            assert not loop.is_running()
            seen.append(loop)
        with pytest.raises(RuntimeError):
            asyncio.get_event_loop()

    for _ in range(2):
        thread = threading.Thread(target=run)
        thread.start()
        thread.join()
    assert len(seen) == 2 and seen[0] is seen[1]  # reused, one thread at a time


def test_tool_schemas_are_cached_per_tool_set(engines: dict[str, HolmesEngine]) -> None:
    from holmes.core.tools_utils.tool_executor import ToolExecutor

    assert "self._get_base_tools()" in inspect.getsource(ToolExecutor.get_all_tools_openai_format)
    fast_ai = engines["fast"]._create_ai(engines["fast"]._get_config())
    executor = fast_ai.tool_executor
    assert executor._get_base_tools.__holmes_stream_memo__
    fresh = ToolExecutor._get_base_tools(executor)  # HolmesGPT's own formatting
    first = fast_ai._get_tools()
    second = fast_ai._get_tools()
    assert first == second == fresh and first is not second
    first[0]["function"]["name"] = "changed"  # a copy per call: nothing leaks
    assert fast_ai._get_tools() == fresh
    slow_ai = engines["slow"]._create_ai(engines["slow"]._get_config())
    assert not getattr(slow_ai.tool_executor._get_base_tools, "__holmes_stream_memo__", False)


def test_litellm_cache_argument_mapping_is_as_expected() -> None:
    import litellm

    assert fastpath.install()
    module = importlib.import_module(fastpath.CACHE_ARGS_MODULE)
    wrapper = getattr(module, fastpath.CACHE_ARGS_FUNCTION)
    assert wrapper.__holmes_stream_memo__
    original = inspect.unwrap(wrapper)
    assert _params(original) == ["original_function", "args"]
    source = inspect.getsource(module.LLMCachingHandler.sync_set_cache)
    assert f"{fastpath.CACHE_ARGS_FUNCTION}(" in source
    token = fastpath._active.set(True)
    try:
        for args in (None, ()):
            assert wrapper(litellm.completion, args) == original(litellm.completion, args) == {}
        assert wrapper(litellm.completion, ("m",)) == original(litellm.completion, ("m",))
    finally:
        fastpath._active.reset(token)


def test_success_logging_is_skipped_only_when_nobody_listens() -> None:
    import contextvars

    import litellm
    from litellm.litellm_core_utils.litellm_logging import Logging

    assert fastpath.install()
    module = importlib.import_module(fastpath.EXECUTOR_MODULE)
    quiet = module.executor
    assert isinstance(quiet, fastpath.QuietSuccessExecutor)
    # litellm still submits the success handler this way after a sync completion.
    source = inspect.getsource(module.client)
    assert 'getattr(sys.modules[__name__], "executor")' in source
    assert "logging_obj.success_handler," in source

    logging_obj = Logging.__new__(Logging)  # only what the executor looks at
    logging_obj.stream = False
    logging_obj.dynamic_success_callbacks = None
    calls: list[tuple[Any, ...]] = []

    class Pool:
        def submit(self, fn: Any, *args: Any) -> str:
            calls.append(args)
            return "submitted"

    executor = fastpath.QuietSuccessExecutor(Pool())
    ctx = contextvars.copy_context()
    submit = functools.partial(executor.submit, ctx.run, logging_obj.success_handler, "r", 0, 1)
    assert submit() == "submitted"  # outside our completions: as litellm does
    token = fastpath._active.set(True)
    try:
        assert submit().result() is None and len(calls) == 1  # nobody listens: skipped
        litellm.success_callback.append("langfuse")
        try:
            assert submit() == "submitted"
        finally:
            litellm.success_callback.remove("langfuse")
        logging_obj.dynamic_success_callbacks = ["langfuse"]
        assert submit() == "submitted"
        logging_obj.dynamic_success_callbacks, logging_obj.stream = None, True
        assert submit() == "submitted"
        assert executor.submit(ctx.run, print, "other") == "submitted"  # other work: pooled
    finally:
        fastpath._active.reset(token)
    assert len(calls) == 5


# -- debug lines without their f-strings (quietdebug) -----------------------------------------

_QUIETED = [
    (
        "litellm.utils",
        "get_optional_params",
        fastpath.OPTIONAL_PARAMS_LOGGERS,
        ["Params passed to completion()", "Non-Default params passed to completion()"],
    ),
    (
        "holmes.core.tool_calling_llm",
        "ToolCallingLLM.call_stream",
        fastpath.CALL_STREAM_LOGGERS,
        ["running iteration", "sending messages="],
    ),
]


def _target(module: str, qualname: str) -> Any:
    found: Any = importlib.import_module(module)
    for part in qualname.split("."):
        found = getattr(found, part)
    return found


def _instructions(code: Any) -> list[Any]:
    """A code object's instructions, and its nested ones', without positions or jump offsets.

    One form is normalised: compiled on its own, a function does not know which of its module's
    names are imported at its top, and calls their functions as methods (``LOAD_GLOBAL m;
    LOAD_METHOD f``), where the whole module's compilation loads the attribute (``LOAD_GLOBAL
    NULL + m; LOAD_ATTR f``, or ``PUSH_NULL`` first): the same call."""
    import dis

    out: list[Any] = []
    for i in dis.get_instructions(code):
        if i.opname == "PUSH_NULL":
            continue
        if inspect.iscode(i.argval):
            arg = i.argval.co_name
        elif i.opcode in dis.hasjrel or i.opcode in dis.hasjabs:  # offsets
            arg = ""
        else:
            arg = i.argrepr.removeprefix("NULL + ")
        out.append(("LOAD_ATTR" if i.opname == "LOAD_METHOD" else i.opname, arg))
    out += [_instructions(c) for c in code.co_consts if inspect.iscode(c)]
    return out


@pytest.mark.parametrize(("module", "qualname", "loggers", "lines"), _QUIETED)
def test_quiet_copies_drop_exactly_the_known_debug_lines(
    module: str, qualname: str, loggers: frozenset[str], lines: list[str]
) -> None:
    """The statements removed are these f-string debug lines and nothing else: a library
    change that adds, moves or rewrites one fails here."""
    original = _target(module, qualname)
    copy, removed = quietdebug.without_debug_fstrings(original, loggers)
    statements = [
        ast.unparse(node)
        for node in ast.walk(quietdebug.function_tree(original))
        if isinstance(node, ast.Expr) and node.lineno in removed
    ]
    assert len(statements) == len(removed) == len(lines)
    for text, fragment in zip(statements, lines, strict=True):
        assert fragment in text and text.split("(")[0].endswith(".debug"), text
    assert copy is not original and copy.__qualname__ == original.__qualname__
    assert copy.__defaults__ == original.__defaults__
    assert copy.__globals__ is original.__globals__


@pytest.mark.parametrize(("module", "qualname", "loggers", "lines"), _QUIETED)
def test_recompiling_a_function_reproduces_it(
    module: str, qualname: str, loggers: frozenset[str], lines: list[str]
) -> None:
    """Compiled again from its source with nothing removed, each function has the original's
    instructions (nested functions included), flags and names: the copies differ only by the
    statements removed."""
    original = _target(module, qualname)
    same, removed = quietdebug.without_debug_fstrings(original, frozenset())
    assert removed == []
    assert _instructions(same.__code__) == _instructions(original.__code__)
    for attr in ("co_flags", "co_varnames", "co_names", "co_firstlineno", "co_filename"):
        assert getattr(same.__code__, attr) == getattr(original.__code__, attr), attr
    quiet, _ = quietdebug.without_debug_fstrings(original, loggers)
    assert _instructions(quiet.__code__) != _instructions(original.__code__)


def test_quiet_optional_params_give_the_same_params() -> None:
    import litellm.utils

    original = litellm.utils.get_optional_params
    quiet, _ = quietdebug.without_debug_fstrings(original, fastpath.OPTIONAL_PARAMS_LOGGERS)
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    for kwargs in (
        {"model": "scripted", "custom_llm_provider": "openai", "tools": tools},
        {"model": "gpt-4o", "custom_llm_provider": "openai", "temperature": 0.0, "n": 1},
        {
            "model": "scripted",
            "custom_llm_provider": "openai",
            "tool_choice": "auto",
            "messages": [{"role": "user", "content": "hi"}],
            "tools": tools,
        },
    ):
        assert quiet(**copy.deepcopy(kwargs)) == original(**copy.deepcopy(kwargs))


def test_quiet_copies_serve_only_while_debug_is_off(
    engines: dict[str, HolmesEngine], caplog: pytest.LogCaptureFixture
) -> None:
    """Our LLMs' agent loop runs the copy unless the root logger logs debug messages; other
    ToolCallingLLM objects keep the class's method. Request bodies: identical either way
    (``test_request_bodies_are_byte_identical`` runs the copies)."""
    from holmes.core.tool_calling_llm import ToolCallingLLM

    engine = engines["fast"]
    ai = engine._create_ai(engine._get_config())
    assert ai.call_stream.__func__ is fastpath._quiet_call_stream()  # type: ignore[attr-defined]
    assert "call_stream" not in vars(engines["slow"]._create_ai(engines["slow"]._get_config()))
    assert ToolCallingLLM.call_stream.__name__ == "call_stream"

    calls: list[str] = []
    logger = logging.getLogger("quietdebug-test")
    chosen = quietdebug.when_quiet(
        lambda: calls.append("original"), lambda: calls.append("copy"), logger
    )
    logger.setLevel(logging.INFO)
    chosen()
    logger.setLevel(logging.DEBUG)
    chosen()
    assert calls == ["copy", "original"]

    # With debug logging on, the agent loop is HolmesGPT's own: its debug lines are there.
    with caplog.at_level(logging.DEBUG):
        engine.investigate(make_request(), Recorder(), threading.Event())
    assert any("sending messages=" in r.getMessage() for r in caplog.records)


def _decorated(func: Any) -> Any:
    return func


class _Mangles:
    def __init__(self) -> None:
        self.__hidden = 1

    def peek(self) -> int:
        logging.debug(f"peek {self.__hidden}")
        return self.__hidden


@_decorated
def _decorated_function() -> None:
    logging.debug(f"{_decorated}")


def test_functions_that_cannot_be_copied_are_refused() -> None:
    def closure() -> None:
        logging.debug(f"{tools}")

    tools: list[Any] = []
    for func in (closure, _decorated_function, _Mangles.peek):
        with pytest.raises(quietdebug.Unsupported):
            quietdebug.without_debug_fstrings(func, frozenset({"logging"}))
