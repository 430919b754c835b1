"""Cheaper paths through HolmesGPT 0.45 that send byte-identical requests to the LLM.

Profiling one investigation (2 LLM calls, 1 tool call) against an instant fake LLM showed ~140 ms
of CPU, almost all of it repeated work:

* **The system prompt** (~28 ms): ``build_chat_messages`` renders the same 15 KB
  ``generic_ask.jinja2`` through a new jinja2 ``Environment``, compiling it from source on every
  call. We render it once per distinct input (toolset names/statuses/instructions, cluster name,
  the prompt-selecting environment variables) and reuse the string.
* **The user prompt** (~5 ms): ``base_user_prompt.jinja2`` is compiled anew per call too. It embeds
  the current time, so we keep rendering it but from a compiled template (same source, same
  ``Environment`` settings, same context as ``holmes.plugins.prompts.load_and_render_prompt``).
* **Token counting** (~60 ms): ``DefaultLLM.count_tokens`` runs ~9 times per investigation and
  every run tokenizes the whole conversation twice (with and without tools), the 15 KB system
  prompt and the tool schemas included. Counting is a pure function of (tokenizer, text), so we
  memoise litellm's per-string count function in a bounded, content-keyed LRU. HolmesGPT's
  ``count_tokens`` itself still runs unchanged, so its context-window management (compaction,
  per-message ``token_count`` caching, the Anthropic image correction) is untouched.

The token memo is the one monkeypatch: litellm creates its count function per call inside
``litellm.litellm_core_utils.token_counter._get_count_function`` and offers no hook. ``install()``
wraps that module function once, idempotently, and the wrapper only memoises while a
``count_tokens`` call of an LLM made by ``create_toolcalling_llm`` below is running on the current
thread (a ``ContextVar``); every other caller, including the bare SDK we benchmark against, gets
litellm's original function. Everything else here composes HolmesGPT's public functions.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from holmes.config import Config
    from holmes.core.tool_calling_llm import ToolCallingLLM
    from jinja2 import Template

log = logging.getLogger(__name__)

# What is patched and wrapped; tests/test_engine_fastpath.py checks they still exist.
TOKEN_COUNTER_MODULE = "litellm.litellm_core_utils.token_counter"
TOKEN_COUNTER_FUNCTION = "_get_count_function"
USER_PROMPT_TEMPLATE = "builtin://base_user_prompt.jinja2"

# Environment variables that change which parts of the system prompt HolmesGPT renders.
PROMPT_ENV_VARS = ("ENABLED_PROMPTS", "SCOPED_NAMESPACES")

MEMO_MAX_CHARS = 64 * 1024 * 1024  # total text kept as keys of the token memo, per tokenizer
MEMO_MAX_ENTRY_CHARS = 1024 * 1024  # longer texts are counted but not remembered
SYSTEM_PROMPT_CACHE_SIZE = 32

_memo_active: ContextVar[bool] = ContextVar("holmes_stream_token_memo", default=False)
_install_lock = threading.Lock()
_installed = False


# -- token counting ---------------------------------------------------------------------------


class TokenMemo:
    """A thread-safe LRU of text → token count for one tokenizer, bounded by total characters."""

    def __init__(self, count: Callable[[str], int], max_chars: int = MEMO_MAX_CHARS) -> None:
        self._count = count
        self._max_chars = max_chars
        self._chars = 0
        self._cache: OrderedDict[str, int] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __call__(self, text: str) -> int:
        with self._lock:
            cached = self._cache.get(text)
            if cached is not None:
                self._cache.move_to_end(text)
                self.hits += 1
                return cached
            self.misses += 1
        count = self._count(text)
        if len(text) <= MEMO_MAX_ENTRY_CHARS:
            self._remember(text, count)
        return count

    def _remember(self, text: str, count: int) -> None:
        with self._lock:
            if text in self._cache:
                return
            self._cache[text] = count
            self._chars += len(text)
            while self._chars > self._max_chars and self._cache:
                evicted, _ = self._cache.popitem(last=False)
                self._chars -= len(evicted)


_memos: dict[str, TokenMemo] = {}
_memos_lock = threading.Lock()


def _memo_for(model: str, original: Callable[..., Callable[[str], int]]) -> TokenMemo:
    memo = _memos.get(model)
    if memo is None:
        with _memos_lock:
            memo = _memos.get(model)
            if memo is None:
                # litellm's count function depends on the model name only (tokenizer choice).
                memo = _memos[model] = TokenMemo(original(model, None))
    return memo


def install() -> bool:
    """Wrap litellm's count-function factory once. False if litellm no longer has it."""
    global _installed
    with _install_lock:
        if _installed:
            return True
        import importlib

        module = importlib.import_module(TOKEN_COUNTER_MODULE)
        original = getattr(module, TOKEN_COUNTER_FUNCTION, None)
        if original is None:
            log.warning("fastpath: %s.%s is gone; token counts are not memoised",
                        TOKEN_COUNTER_MODULE, TOKEN_COUNTER_FUNCTION)  # fmt: skip
            return False
        if getattr(original, "__holmes_stream_memo__", False):
            _installed = True
            return True

        @functools.wraps(original)
        def get_count_function(model: Any, custom_tokenizer: Any = None) -> Any:
            if custom_tokenizer is not None or not _memo_active.get():
                return original(model, custom_tokenizer)
            return _memo_for(str(model), original)

        get_count_function.__holmes_stream_memo__ = True  # type: ignore[attr-defined]
        setattr(module, TOKEN_COUNTER_FUNCTION, get_count_function)
        _installed = True
        return True


def memoise_token_counts(ai: ToolCallingLLM) -> None:
    """Make this LLM's ``count_tokens`` use the memo; HolmesGPT's logic runs unchanged."""
    llm = ai.llm
    if getattr(llm.count_tokens, "__holmes_stream_memo__", False):
        return
    count_tokens = llm.count_tokens

    @functools.wraps(count_tokens)
    def memoised(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> Any:
        token = _memo_active.set(True)
        try:
            return count_tokens(messages=messages, tools=tools)
        finally:
            _memo_active.reset(token)

    memoised.__holmes_stream_memo__ = True  # type: ignore[attr-defined]
    # An instance attribute shadows the method for this LLM object only.
    setattr(llm, "count_tokens", memoised)  # noqa: B010


def memo_stats() -> dict[str, dict[str, int]]:
    return {
        model: {"hits": memo.hits, "misses": memo.misses, "entries": len(memo._cache)}
        for model, memo in list(_memos.items())
    }


# -- prompts ----------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _jinja_environment() -> Any:
    # The same Environment settings as holmes.plugins.prompts.load_and_render_prompt.
    from holmes.plugins.prompts import THIS_DIR
    from jinja2 import Environment, FileSystemLoader

    return Environment(loader=FileSystemLoader(THIS_DIR))


@functools.lru_cache(maxsize=16)
def _compiled(source: str) -> Template:
    return _jinja_environment().from_string(source)


@functools.lru_cache(maxsize=16)
def _builtin_source(prompt: str) -> str:
    from holmes.plugins.prompts import load_prompt

    return load_prompt(prompt)


def render_prompt(prompt: str, context: dict[str, Any]) -> str:
    """``load_and_render_prompt`` from a compiled template (builtin prompts are read once)."""
    if prompt.startswith("builtin://"):
        source = _builtin_source(prompt)
    else:
        from holmes.plugins.prompts import load_prompt

        source = load_prompt(prompt)
    now = datetime.now(UTC)
    values = {
        **context,
        "now": f"{now}",
        "now_timestamp_seconds": int(now.timestamp()),
        "current_year": now.year,
    }
    return _compiled(source).render(**values)


def user_prompt(ask: str) -> str:
    """``build_user_prompt`` as ``build_chat_messages`` calls it (no files, images or skills)."""
    from holmes.core.prompt import PromptComponent, _should_enable_skills, is_component_enabled
    from holmes.utils.global_instructions import generate_skills_args

    if not is_component_enabled(PromptComponent.TIME_SKILLS, {}):
        return ask
    skills_context = generate_skills_args(skill_catalog=None, global_instructions=None)
    context = {
        "user_prompt": ask,
        "skills_enabled": _should_enable_skills(skills_context),
        **skills_context,
    }
    return render_prompt(USER_PROMPT_TEMPLATE, context)


class SystemPromptCache:
    """``build_system_prompt`` results, keyed by everything the template reads."""

    def __init__(self, size: int = SYSTEM_PROMPT_CACHE_SIZE) -> None:
        self._size = size
        # key -> (toolsets kept alive so their ids in the key stay unique, prompt)
        self._entries: OrderedDict[tuple[Any, ...], tuple[list[Any], str | None]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(toolsets: list[Any], cluster_name: str | None) -> tuple[Any, ...]:
        toolset_state = tuple(
            (
                id(ts),
                ts.name,
                ts.status,
                ts.error,
                ts.description,
                ts.docs_url,
                ts.llm_instructions,
            )
            for ts in toolsets
        )
        environment = tuple(os.environ.get(name) for name in PROMPT_ENV_VARS)
        return (toolset_state, cluster_name, environment)

    def get(self, toolsets: list[Any], cluster_name: str | None) -> str | None:
        key = self.key(toolsets, cluster_name)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                self.hits += 1
                return entry[1]
            self.misses += 1
        prompt = self._build(toolsets, cluster_name)
        with self._lock:
            self._entries[key] = (list(toolsets), prompt)
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)
        return prompt

    @staticmethod
    def _build(toolsets: list[Any], cluster_name: str | None) -> str | None:
        from holmes.core.prompt import build_system_prompt

        # The arguments build_chat_messages passes through build_prompts.
        return build_system_prompt(
            toolsets=toolsets,
            skills=None,
            system_prompt_additions=None,
            cluster_name=cluster_name,
            ask_user_enabled=False,
            prompt_component_overrides={},
            conversation_link=None,
        )


system_prompts = SystemPromptCache()


def build_chat_messages(
    ask: str,
    *,
    ai: ToolCallingLLM,
    config: Config,
    history: list[dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """What ``build_chat_messages(ask, history, ai=ai, config=config)`` returns, without
    re-rendering the system prompt."""
    from holmes.core.conversations import add_or_update_system_prompt

    system_prompt = system_prompts.get(ai.tool_executor.toolsets, config.cluster_name)
    # As HolmesGPT: a shallow copy of the history, its system prompt added or replaced.
    start = [dict(m) if i == 0 else m for i, m in enumerate(history or [])]
    messages: list[dict[str, Any]] = add_or_update_system_prompt(start, system_prompt)
    messages.append({"role": "user", "content": user_prompt(ask)})
    return messages


# -- the agent --------------------------------------------------------------------------------


def create_toolcalling_llm(config: Config) -> ToolCallingLLM:
    """The server's ``create_toolcalling_llm`` call, with memoised token counting."""
    from holmes.core.tools import PrerequisiteCacheMode, ToolsetTag

    ai = config.create_toolcalling_llm(
        toolset_tag_filter=[ToolsetTag.CORE, ToolsetTag.CLUSTER],
        enable_all_toolsets_possible=False,
        prerequisite_cache=PrerequisiteCacheMode.DISABLED,
        reuse_executor=True,
    )
    if install():
        memoise_token_counts(ai)
    return ai


def toolcalling_llm(
    config: Config, llm: Any, executor: Any, *, memoise: bool = True
) -> ToolCallingLLM:
    """``ToolCallingLLM`` over a given LLM (one per model of the failover list) and the shared
    tool executor, as ``config.create_toolcalling_llm`` assembles it."""
    from holmes.core.tool_calling_llm import ToolCallingLLM

    ai = ToolCallingLLM(executor, config.max_steps, llm, tool_results_dir=None)
    if memoise and install():
        memoise_token_counts(ai)
    return ai


def warm(ai: ToolCallingLLM, config: Config) -> None:
    """Render the system prompt and count its tokens and the tool schemas ahead of traffic."""
    messages = build_chat_messages("warm-up", ai=ai, config=config)
    ai.llm.count_tokens(messages=messages[:1], tools=ai.tool_executor.get_all_tools_openai_format())
