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

A second profile (~30 ms per investigation left, the agent loop's thread half of it) showed:

* **Whole-conversation counts** (~7 ms): every ``count_tokens`` still passes the whole
  conversation to ``litellm.token_counter`` twice, which formats all of it into a debug f-string
  (the 15 KB system prompt included) and walks it. litellm's count is a sum over messages plus
  one term for the tools, so ``MessageCounts`` rebuilds it from litellm's own counts of single
  messages and of the tool list, remembered per content. Exact: tested against litellm.
* **The OpenAI SDK's request transform** (~2 ms): ``Completions.create`` walks the whole request
  (messages, tool schemas) against its TypedDicts. No field of the chat-completion params has an
  alias or a format (tested), so for plain JSON it only drops the omitted arguments.
* **JSON encoding** (~2 ms): HolmesGPT imports python-benedict, which turns off the standard
  library's C JSON encoder for the whole process (``json.encoder.c_make_encoder = None``). The
  request body (``openapi_dumps``), our token-memo keys and our event payloads use the C encoder
  directly (``c_dumps``: the same text as ``json.dumps`` for plain JSON, tested).
* **An event loop per LLM request** (~2 ms each): after every sync request litellm's
  ``ServiceLogging.service_success_hook`` runs a no-op coroutine with ``asyncio.run`` on threads
  without an event loop, as our agent-loop threads are. ``thread_event_loop`` gives the thread a
  (reused, not running) loop, so litellm runs the same coroutine with ``run_until_complete``.
* **Success logging nobody receives** (~1 ms): after every completion litellm runs its success
  handler in a thread pool, which computes the response cost again and a logging payload for
  callbacks; with none registered, nothing reads them (``QuietSuccessExecutor``).
* **Debug lines nobody reads** (~1.2 ms): HolmesGPT's ``call_stream`` and litellm's
  ``get_optional_params`` build f-strings of the whole conversation and the tool schemas for
  ``debug`` log lines on every request, logged or not (``quietdebug``).
* **Tool schemas** (~0.5 ms): ``ToolExecutor._get_base_tools`` formats and deep-copies every
  tool's schema twice per investigation; ``cache_tool_schemas`` formats it once per tool set and
  hands out a copy per call.

Monkeypatches: litellm and the OpenAI SDK offer no hooks, so ``install()`` replaces these module
attributes once, idempotently (``tests/test_engine_fastpath.py`` fails if any of them changes
name, signature or the way it is used):

* ``litellm.litellm_core_utils.token_counter._get_count_function`` (per-string count memo),
* ``litellm.token_counter`` (whole-conversation counts, the calls ``count_tokens`` makes only),
* ``openai.resources.chat.completions.completions.maybe_transform`` (chat-completion params
  made of plain JSON only),
* ``openai._base_client.openapi_dumps`` (request bodies made of plain JSON only),
* ``litellm.caching.caching_handler.convert_args_to_kwargs`` (no positional arguments only: after
  every completion litellm maps them to names through ``inspect.signature``, cache or not; with
  none the mapping is ``{}``),
* ``litellm.utils.executor`` (``QuietSuccessExecutor``: a completion's success logging is not
  run while no success callback is registered to receive it),
* ``holmes.core.tool_calling_llm.concurrent`` (``toolpool``: a turn's single tool call runs on
  the agent loop's own thread, inside ``toolpool.agent_loop()`` only),
* ``litellm.main.get_optional_params`` (``quietdebug``: a copy without the debug lines that
  format the whole request on every call, while litellm's logger drops debug messages); our
  ``ToolCallingLLM`` objects' ``call_stream`` likewise (an instance attribute).

Every wrapper falls through to the original unless a ``count_tokens`` or ``completion`` call of an
LLM made here (``create_toolcalling_llm``/``toolcalling_llm``) is running on the current thread
(a ``ContextVar``); every other caller, including the bare SDK we benchmark against, gets the
libraries' own functions. The per-LLM and per-executor wrappers are instance attributes of our
objects only. Everything else here composes HolmesGPT's public functions.
"""

from __future__ import annotations

import _json
import asyncio
import concurrent.futures
import contextlib
import contextvars
import functools
import json
import logging
import os
import threading
import types
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

from holmes_stream.engine import quietdebug, toolpool

if TYPE_CHECKING:
    from holmes.config import Config
    from holmes.core.tool_calling_llm import ToolCallingLLM
    from jinja2 import Template

log = logging.getLogger(__name__)

K = TypeVar("K")
V = TypeVar("V")

# What is patched and wrapped; tests/test_engine_fastpath.py checks they still exist.
TOKEN_COUNTER_MODULE = "litellm.litellm_core_utils.token_counter"
TOKEN_COUNTER_FUNCTION = "_get_count_function"
LITELLM_TOKEN_COUNTER = "token_counter"  # litellm.token_counter, as DefaultLLM.count_tokens uses it
TRANSFORM_MODULE = "openai.resources.chat.completions.completions"
TRANSFORM_FUNCTION = "maybe_transform"
BODY_DUMPS_MODULE = "openai._base_client"
BODY_DUMPS_FUNCTION = "openapi_dumps"
CACHE_ARGS_MODULE = "litellm.caching.caching_handler"
CACHE_ARGS_FUNCTION = "convert_args_to_kwargs"
EXECUTOR_MODULE = "litellm.utils"  # its ``executor``: where a completion's success logging runs
OPTIONAL_PARAMS_MODULE = "litellm.main"  # ``completion`` calls its ``get_optional_params``
OPTIONAL_PARAMS_FUNCTION = "get_optional_params"
OPTIONAL_PARAMS_LOGGERS = frozenset({"verbose_logger"})  # its debug lines' logger, by name
CALL_STREAM_LOGGERS = frozenset({"logging"})  # ToolCallingLLM.call_stream's: the root logger
USER_PROMPT_TEMPLATE = "builtin://base_user_prompt.jinja2"

# Environment variables that change which parts of the system prompt HolmesGPT renders.
PROMPT_ENV_VARS = ("ENABLED_PROMPTS", "SCOPED_NAMESPACES")

MEMO_MAX_CHARS = 64 * 1024 * 1024  # total text kept as keys of the token memo, per tokenizer
MEMO_MAX_ENTRY_CHARS = 1024 * 1024  # longer texts are counted but not remembered
SYSTEM_PROMPT_CACHE_SIZE = 32
MESSAGE_MEMO_MAX_CHARS = 64 * 1024 * 1024  # message texts kept as keys of the per-message memo

# True while a call of one of our LLMs (count_tokens, completion) runs on this thread.
_active: ContextVar[bool] = ContextVar("holmes_stream_fastpath", default=False)
_install_lock = threading.Lock()
_installed = False


# -- token counting ---------------------------------------------------------------------------


class WeightedLru(Generic[K, V]):
    """An LRU map for many threads, bounded by the total weight of its entries.

    A hit takes no lock: under the GIL each ``OrderedDict`` call is atomic, and a lock around
    every lookup queued the agent loops' threads on it (32 threads counting the same messages
    spent 108-122 µs of CPU per whole-conversation count with the lock, 38 µs without).
    Insertion and eviction hold the lock, so the weight total stays exact; a hit may move an
    entry another thread has just evicted, which is then simply gone (``tests/
    test_engine_fastpath.py`` races threads against it). ``get`` answers None for a miss: values
    are never None."""

    def __init__(self, max_weight: int) -> None:
        self._max_weight = max_weight
        self._weight = 0
        self._entries: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0  # statistics: increments may race, nothing depends on them
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    @property
    def weight(self) -> int:
        return self._weight

    def get(self, key: K) -> V | None:
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        with contextlib.suppress(KeyError):  # evicted meanwhile
            self._entries.move_to_end(key)
        self.hits += 1
        return entry[0]

    def put(self, key: K, value: V, weight: int) -> None:
        with self._lock:
            if key in self._entries:
                return
            self._entries[key] = (value, weight)
            self._weight += weight
            while self._weight > self._max_weight and self._entries:
                _, (_, evicted) = self._entries.popitem(last=False)
                self._weight -= evicted


class TokenMemo:
    """text → token count for one tokenizer, bounded by total characters."""

    def __init__(self, count: Callable[[str], int], max_chars: int = MEMO_MAX_CHARS) -> None:
        self._count = count
        self.cache: WeightedLru[str, int] = WeightedLru(max_chars)

    def __call__(self, text: str) -> int:
        cached = self.cache.get(text)
        if cached is not None:
            return cached
        count = self._count(text)
        if len(text) <= MEMO_MAX_ENTRY_CHARS:
            self.cache.put(text, count, len(text))
        return count


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


# -- JSON -------------------------------------------------------------------------------------


def plain_json(values: Any) -> bool:
    """Whether these values are made of dicts with string keys, lists, strings, numbers, booleans
    and None only (exact types: no subclasses)."""
    stack = list(values)
    while stack:
        value = stack.pop()
        kind = type(value)
        if kind is str or kind is int or kind is float or kind is bool or value is None:
            continue
        if kind is dict:
            for key in value:
                if type(key) is not str:
                    return False
            stack.extend(value.values())
        elif kind is list:
            stack.extend(value)
        else:
            return False
    return True


def _not_serializable(value: Any) -> Any:
    raise TypeError(f"Object of type {value.__class__.__name__} is not JSON serializable")


def c_dumps(
    value: Any,
    *,
    ensure_ascii: bool = True,
    separators: tuple[str, str] = (", ", ": "),
    allow_nan: bool = True,
    default: Callable[[Any], Any] | None = None,
) -> str:
    """``json.dumps(value, ...)`` through the C encoder the standard library ships.

    HolmesGPT imports python-benedict, which sets ``json.encoder.c_make_encoder = None`` for the
    whole process, so every ``json.dumps`` runs the pure-Python encoder (several times slower).
    This builds the C encoder ``JSONEncoder.iterencode`` would use (same arguments); for plain
    JSON (``plain_json``) both produce the same text (tested)."""
    encode_string = _json.encode_basestring_ascii if ensure_ascii else _json.encode_basestring
    if isinstance(value, str):
        return str(encode_string(value))
    encode = _json.make_encoder(
        {},  # check_circular, as json.dumps
        default or _not_serializable,
        encode_string,
        None,  # indent
        separators[1],
        separators[0],
        False,  # sort_keys
        False,  # skipkeys
        allow_nan,
    )
    return "".join(encode(value, 0))


# -- whole-message token counts ---------------------------------------------------------------

_JSON_VALUE = object()  # marks a key part holding a JSON-encoded (non-string) value


def message_key(message: Any) -> tuple[Any, ...] | None:
    """What litellm's count of one message depends on, hashable; None for anything but a plain
    JSON dict (litellm then counts it itself).

    HolmesGPT's own per-message cache entry (``token_count``, an int) is left out: litellm counts
    strings, tool calls and content lists only, and the test suite checks it ignores that key."""
    if type(message) is not dict:
        return None
    parts: list[Any] = []
    for key, value in message.items():
        if value is None or type(value) is str:
            parts.append((key, value))
        elif key == "token_count" and type(value) is int:
            continue
        elif plain_json((value,)):
            parts.append((key, _JSON_VALUE, c_dumps(value)))
        else:
            return None
    return tuple(parts)


def _key_chars(key: tuple[Any, ...]) -> int:
    return sum(len(part[-1]) for part in key if isinstance(part[-1], str)) + 64


class MessageCounts:
    """litellm's token count of single messages and of tool definitions, per model.

    ``litellm.token_counter(messages=M, tools=T)`` is a sum: every message is counted on its own
    (``_count_messages``) and one ``_count_extra(tools, includes_system_message)`` is added. So

        count(M, T) = Σ (count([m]) - count([])) + count([]) + extra(T, system in M)
        extra(T, s) = count([p_s], T) - count([p_s])     (p_s: a system or user message)

    where every term on the right is litellm's own result for a smaller input, remembered here.
    HolmesGPT asks for the whole conversation twice per ``count_tokens`` (with and without tools);
    litellm formats the whole list into a debug f-string and walks it each time. Bounded LRU."""

    def __init__(self, count: Callable[..., int], max_chars: int = MESSAGE_MEMO_MAX_CHARS) -> None:
        self._count = count
        self.cache: WeightedLru[tuple[Any, ...], int] = WeightedLru(max_chars)

    def _get(self, key: tuple[Any, ...], compute: Callable[[], int], chars: int) -> int:
        cached = self.cache.get(key)
        if cached is None:
            cached = compute()
            self.cache.put(key, cached, chars)
        return cached

    def single(self, model: str, message: Any, key: tuple[Any, ...]) -> int:
        return self._get(
            ("message", model, key),
            lambda: self._count(model=model, messages=[message]),
            _key_chars(key),
        )

    def empty(self, model: str) -> int:
        return self._get(("empty", model), lambda: self._count(model=model, messages=[]), 64)

    def extra(self, model: str, tools: list[Any], tools_json: str, system: bool) -> int:
        probe = [{"role": "system" if system else "user", "content": ""}]

        def compute() -> int:
            with_tools = self._count(model=model, messages=probe, tools=tools)
            return with_tools - self._count(model=model, messages=probe)

        return self._get(("tools", model, system, tools_json), compute, len(tools_json) + 64)

    def total(self, model: str, messages: list[Any], tools: list[Any] | None) -> int | None:
        """``count(model=model, messages=messages, tools=tools)``; None when not decomposable."""
        keys = []
        for message in messages:
            key = message_key(message)
            if key is None:
                return None
            keys.append(key)
        if len(messages) == 1 and not tools:
            return self.single(model, messages[0], keys[0])
        base = self.empty(model)
        pairs = zip(messages, keys, strict=True)
        total = base + sum(self.single(model, m, k) - base for m, k in pairs)
        if tools:
            if not plain_json((tools,)):
                return None
            tools_json = c_dumps(tools)
            system = any(m.get("role") == "system" for m in messages)
            total += self.extra(model, tools, tools_json, system)
        return total


_message_counts: MessageCounts | None = None


def _replace(
    module: Any, name: str, otherwise: str, make: Callable[[Any], Callable[..., Any]]
) -> bool:
    """Put ``make(original)`` in place of ``module.name``, once; False (logged) if it is gone."""
    original = getattr(module, name, None)
    if original is None:
        log.warning("fastpath: %s.%s is gone; %s", module.__name__, name, otherwise)
        return False
    if getattr(original, "__holmes_stream_memo__", False):
        return True
    wrapper = functools.wraps(original)(make(original))
    wrapper.__holmes_stream_memo__ = True  # type: ignore[attr-defined]
    setattr(module, name, wrapper)
    return True


def _wrap_token_counter(litellm: Any) -> bool:
    def make(original: Any) -> Callable[..., Any]:
        global _message_counts
        counts = _message_counts = MessageCounts(original)

        def token_counter(*args: Any, **kwargs: Any) -> Any:
            # Only the calls DefaultLLM.count_tokens makes: model=, messages=[, tools=].
            if args or not _active.get() or litellm.disable_token_counter or kwargs.keys() - _PLAIN:
                return original(*args, **kwargs)
            model, messages = kwargs.get("model"), kwargs.get("messages")
            if type(model) is not str or type(messages) is not list or not messages:
                return original(*args, **kwargs)
            total = counts.total(model, messages, kwargs.get("tools"))
            return original(*args, **kwargs) if total is None else total

        return token_counter

    return _replace(litellm, LITELLM_TOKEN_COUNTER, "whole conversations are recounted", make)


_PLAIN = frozenset({"model", "messages", "tools"})


# -- the OpenAI SDK's request-parameter transform ---------------------------------------------


def _wrap_transform() -> bool:
    import importlib

    from openai._utils import is_given
    from openai.types.chat import completion_create_params

    create_params = (
        completion_create_params.CompletionCreateParamsNonStreaming,
        completion_create_params.CompletionCreateParamsStreaming,
    )

    def make(original: Any) -> Callable[..., Any]:
        def maybe_transform(data: Any, expected_type: Any) -> Any:
            # For chat-completion params made of plain JSON the transform only drops the omitted
            # arguments (no field of these types has an alias or a format: tested).
            if _active.get() and type(data) is dict and expected_type in create_params:
                given = {key: value for key, value in data.items() if is_given(value)}
                if plain_json(given.values()):
                    return given
            return original(data, expected_type)

        return maybe_transform

    module = importlib.import_module(TRANSFORM_MODULE)
    return _replace(module, TRANSFORM_FUNCTION, "request params are transformed as usual", make)


def _wrap_body_dumps() -> bool:
    import importlib

    def make(original: Any) -> Callable[..., Any]:
        def openapi_dumps(obj: Any) -> bytes:
            # The same json.dumps arguments as openai._utils._json.openapi_dumps; its encoder's
            # ``default`` (datetimes, pydantic models) is never reached by plain JSON.
            if _active.get() and type(obj) is dict and plain_json((obj,)):
                text = c_dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
                return text.encode()
            return cast(bytes, original(obj))

        return openapi_dumps

    module = importlib.import_module(BODY_DUMPS_MODULE)
    return _replace(module, BODY_DUMPS_FUNCTION, "request bodies are encoded as usual", make)


def _wrap_cache_args() -> bool:
    import importlib

    def make(original: Any) -> Callable[..., Any]:
        def convert_args_to_kwargs(original_function: Any, args: Any = None) -> Any:
            # litellm maps positional arguments to names through inspect.signature after every
            # completion, cache or not; HolmesGPT passes none, and with none the mapping is empty.
            if not args and _active.get():
                return {}
            return original(original_function, args)

        return convert_args_to_kwargs

    module = importlib.import_module(CACHE_ARGS_MODULE)
    return _replace(module, CACHE_ARGS_FUNCTION, "arguments are mapped as usual", make)


def _quiet_optional_params() -> bool:
    """litellm's ``get_optional_params`` as ``completion`` calls it, without its debug lines'
    f-strings (``quietdebug``) for our calls while litellm's logger drops debug messages."""
    import importlib

    from litellm._logging import verbose_logger

    def make(original: Any) -> Callable[..., Any]:
        quiet = quietdebug.quiet(original, OPTIONAL_PARAMS_LOGGERS, verbose_logger)
        if quiet is None:
            return original

        def get_optional_params(*args: Any, **kwargs: Any) -> Any:
            return (quiet if _active.get() else original)(*args, **kwargs)

        return get_optional_params

    module = importlib.import_module(OPTIONAL_PARAMS_MODULE)
    return _replace(module, OPTIONAL_PARAMS_FUNCTION, "debug lines are formatted as usual", make)


@functools.cache
def _quiet_call_stream() -> Callable[..., Any] | None:
    """``ToolCallingLLM.call_stream`` as ``quietdebug.quiet`` makes it (once: None stays None)."""
    from holmes.core.tool_calling_llm import ToolCallingLLM

    return quietdebug.quiet(ToolCallingLLM.call_stream, CALL_STREAM_LOGGERS, logging.getLogger())


def quiet_call_stream(ai: ToolCallingLLM) -> None:
    """This LLM's ``call_stream`` without its debug lines' f-strings (``quietdebug``) while the
    root logger (HolmesGPT's ``logging.debug``) drops debug messages. An instance attribute:
    other ``ToolCallingLLM`` objects keep the class's method."""
    from holmes.core.tool_calling_llm import ToolCallingLLM

    if type(ai).call_stream is not ToolCallingLLM.call_stream:  # a subclass of its own
        return
    quiet = _quiet_call_stream()
    if quiet is not None:
        setattr(ai, "call_stream", types.MethodType(quiet, ai))  # noqa: B010


class QuietSuccessExecutor:
    """litellm's thread pool, without the success logging of our completions when nobody
    listens to it.

    After every sync completion litellm submits ``ctx.run(logging_obj.success_handler, ...)`` to
    its pool. With no success callback registered (litellm's or the call's own) that handler
    only computes the response cost a second time and a logging payload nobody reads: about 3 %
    of an investigation's CPU, and a thread competing for the GIL. Any other submission, a
    streaming call's, or any call while a callback is registered, goes to the pool as before.
    """

    __holmes_stream_memo__ = True

    def __init__(self, executor: Any) -> None:
        self.executor = executor

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        if _active.get() and self._unheard(fn, args):
            skipped: concurrent.futures.Future[None] = concurrent.futures.Future()
            skipped.set_result(None)
            return skipped
        return self.executor.submit(fn, *args, **kwargs)

    @staticmethod
    def _unheard(fn: Any, args: tuple[Any, ...]) -> bool:
        import litellm
        from litellm.litellm_core_utils.litellm_logging import Logging

        if type(getattr(fn, "__self__", None)) is not contextvars.Context or not args:
            return False
        handler = args[0]
        logging_obj = getattr(handler, "__self__", None)
        return (
            getattr(handler, "__func__", None) is Logging.success_handler
            and isinstance(logging_obj, Logging)
            and not logging_obj.stream
            and not logging_obj.dynamic_success_callbacks
            and not litellm.success_callback
            and not litellm.callbacks
        )

    def __getattr__(self, name: str) -> Any:
        return getattr(self.executor, name)


def _quiet_success_logging() -> bool:
    import importlib

    module = importlib.import_module(EXECUTOR_MODULE)
    executor = getattr(module, "executor", None)
    if executor is None:
        log.warning("fastpath: %s.executor is gone; success logging runs as usual", EXECUTOR_MODULE)
        return False
    if not getattr(executor, "__holmes_stream_memo__", False):
        setattr(module, "executor", QuietSuccessExecutor(executor))  # noqa: B010
    return True


# -- installation -----------------------------------------------------------------------------


def install() -> bool:
    """Install the scoped wrappers once. False if litellm no longer has its count-function
    factory (the other wrappers are then skipped too: nothing is memoised)."""
    global _installed
    with _install_lock:
        if _installed:
            return True
        import importlib

        import litellm

        module = importlib.import_module(TOKEN_COUNTER_MODULE)
        original = getattr(module, TOKEN_COUNTER_FUNCTION, None)
        if original is None:
            log.warning("fastpath: %s.%s is gone; token counts are not memoised",
                        TOKEN_COUNTER_MODULE, TOKEN_COUNTER_FUNCTION)  # fmt: skip
            return False
        if not getattr(original, "__holmes_stream_memo__", False):

            @functools.wraps(original)
            def get_count_function(model: Any, custom_tokenizer: Any = None) -> Any:
                if custom_tokenizer is not None or not _active.get():
                    return original(model, custom_tokenizer)
                return _memo_for(str(model), original)

            get_count_function.__holmes_stream_memo__ = True  # type: ignore[attr-defined]
            setattr(module, TOKEN_COUNTER_FUNCTION, get_count_function)
        _wrap_token_counter(litellm)
        _wrap_transform()
        _wrap_body_dumps()
        _wrap_cache_args()
        _quiet_success_logging()
        _quiet_optional_params()
        toolpool.install()
        _installed = True
        return True


def _scoped(function: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(function)
    def scoped(*args: Any, **kwargs: Any) -> Any:
        token = _active.set(True)
        try:
            return function(*args, **kwargs)
        finally:
            _active.reset(token)

    scoped.__holmes_stream_memo__ = True  # type: ignore[attr-defined]
    return scoped


def memoise_token_counts(ai: ToolCallingLLM) -> None:
    """Make this LLM's ``count_tokens`` and ``completion`` run inside the fast-path scope;
    HolmesGPT's logic runs unchanged."""
    llm = ai.llm
    # Instance attributes shadow the methods for this LLM object only.
    for name in ("count_tokens", "completion"):
        method = getattr(llm, name)
        if not getattr(method, "__holmes_stream_memo__", False):
            setattr(llm, name, _scoped(method))


def memo_stats() -> dict[str, dict[str, int]]:
    caches: dict[str, WeightedLru[Any, int]] = {
        model: memo.cache for model, memo in list(_memos.items())
    }
    if _message_counts is not None:
        caches["<messages>"] = _message_counts.cache
    return {
        name: {"hits": cache.hits, "misses": cache.misses, "entries": len(cache)}
        for name, cache in caches.items()
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
        # key -> (toolsets kept alive so their ids in the key stay unique, prompt); weight 1
        self.cache: WeightedLru[tuple[Any, ...], tuple[list[Any], str | None]] = WeightedLru(size)

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
        entry = self.cache.get(key)
        if entry is None:
            entry = (list(toolsets), self._build(toolsets, cluster_name))
            self.cache.put(key, entry, 1)
        return entry[1]

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
        quiet_call_stream(ai)
        cache_tool_schemas(ai.tool_executor)
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
        quiet_call_stream(ai)
        cache_tool_schemas(executor)
    return ai


def warm(ai: ToolCallingLLM, config: Config) -> None:
    """Render the system prompt and count its tokens and the tool schemas ahead of traffic."""
    messages = build_chat_messages("warm-up", ai=ai, config=config)
    ai.llm.count_tokens(messages=messages[:1], tools=ai.tool_executor.get_all_tools_openai_format())


# -- the agent loop's thread ------------------------------------------------------------------

_idle_loops: list[asyncio.AbstractEventLoop] = []
_idle_loops_lock = threading.Lock()
IDLE_LOOPS_MAX = 64


@contextlib.contextmanager
def thread_event_loop() -> Iterator[None]:
    """Give the current thread a (not running) asyncio event loop while the agent loop runs.

    After every sync LLM request litellm's ``track_llm_api_timing`` calls
    ``ServiceLogging.service_success_hook``, which runs its (callback-less) coroutine with
    ``loop.run_until_complete`` on the thread's event loop, or, on a thread without one (the
    engine's fresh ``holmes-loop`` threads), with ``asyncio.run``: a new event loop and its
    default-executor shutdown per request, ~2 ms of CPU. The same coroutine runs either way.
    Loops are reused across investigations (one thread at a time) and never run concurrently.
    Code on the thread that calls ``asyncio.run`` itself is unaffected (it makes its own loop)."""
    if _running_loop() is not None:  # already inside a running loop: leave it alone
        yield
        return
    with _idle_loops_lock:
        loop = _idle_loops.pop() if _idle_loops else None
    if loop is None or loop.is_closed():
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        yield
    finally:
        asyncio.set_event_loop(None)
        if not loop.is_closed() and not loop.is_running():
            with _idle_loops_lock:
                keep = len(_idle_loops) < IDLE_LOOPS_MAX
                if keep:
                    _idle_loops.append(loop)
            if not keep:
                loop.close()


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


# -- tool schemas -----------------------------------------------------------------------------


def cache_tool_schemas(executor: Any) -> None:
    """Build the OpenAI-format schema of this executor's tools once per tool set.

    ``ToolCallingLLM._get_tools`` calls ``ToolExecutor.get_all_tools_openai_format`` at the start
    of every loop and after every tool step; it formats each tool anew (``apply_strict_mode``
    deep-copies each schema). The formatted list depends only on the tools (keyed on the tool
    objects and their names and descriptions); every call gets its own copy (a C JSON round
    trip), so nothing HolmesGPT or litellm does to one list reaches another. HolmesGPT's
    per-user OAuth replacement (``get_all_tools_openai_format``) still runs on every call."""
    base = executor._get_base_tools
    if getattr(base, "__holmes_stream_memo__", False):
        return
    lock = threading.Lock()
    cached: dict[str, Any] = {}

    @functools.wraps(base)
    def get_base_tools() -> list[Any]:
        tools = list(executor.tools_by_name.items())
        key = tuple((name, id(tool), tool.description) for name, tool in tools)
        entry = cached.get("entry")  # replaced whole (under the lock), read without it
        if entry is None or entry[0] != key:
            schemas = base()
            if not plain_json((schemas,)):
                return list(schemas)
            entry = (key, c_dumps(schemas), [tool for _, tool in tools])
            with lock:
                cached["entry"] = entry
        return list(json.loads(entry[1]))

    get_base_tools.__holmes_stream_memo__ = True  # type: ignore[attr-defined]
    # An instance attribute shadows the method for this executor only.
    setattr(executor, "_get_base_tools", get_base_tools)  # noqa: B010
