"""The investigation engine: HolmesGPT's agent loop, driven the way its own server drives it.

One ``HolmesEngine`` holds one ``holmes.config.Config`` (built once, shared by all threads) and
creates a fresh ``ToolCallingLLM`` per investigation, as HolmesGPT's ``/api/chat`` does. The loop
runs on a helper thread so that the calling thread can honour cancellation and the time limit
promptly even while an LLM request is blocking (HolmesGPT only checks its cancel event between
steps).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, cast

from holmes_stream import logcontext, metrics
from holmes_stream.engine import toolpool
from holmes_stream.engine.base import (
    ChatEngineRequest,
    EngineCancelled,
    EngineError,
    EngineRequest,
    EventSink,
    PermanentEngineError,
    StepGate,
    TransientEngineError,
)
from holmes_stream.engine.breaker import Breaker, LocalBreaker, RedisBreaker
from holmes_stream.engine.catalog import model_catalog, redis_catalog_sink
from holmes_stream.engine.fastpath import c_dumps, thread_event_loop
from holmes_stream.engine.llm_clients import ClientLender
from holmes_stream.schemas import Alert, FailoverAttempt, InvestigationResult, ToolCall
from holmes_stream.settings import LLMSettings, ModelEntry, Settings

if TYPE_CHECKING:
    from holmes.config import Config
    from holmes.core.tool_calling_llm import ToolCallingLLM
    from holmes.core.tools_utils.tool_executor import ToolExecutor

log = logging.getLogger(__name__)

# Default-on or commonly enabled HolmesGPT toolsets that need a cluster, a shell or the network.
DISABLED_TOOLSETS: tuple[str, ...] = (
    "kubernetes/core",
    "kubernetes/logs",
    "kubernetes/live-metrics",
    "kubernetes/kube-prometheus-stack",
    "internet",
    "connectivity_check",
    "bash",
    "core_investigation",
    "skills",
    "robusta",
    "helm/core",
)

# The stream vocabulary our ProgressEvent accepts; anything else HolmesGPT yields is not forwarded.
FORWARDED_EVENTS: frozenset[str] = frozenset(
    {
        "start_tool_calling",
        "tool_calling_result",
        "ai_message",
        "token_count",
        "conversation_history_compacted",
        "ai_answer_end",
    }
)

TOOL_OUTPUT_EVENT_CHARS = 2000
TOOL_OUTPUT_EXCERPT_CHARS = 2000
AI_MESSAGE_EVENT_CHARS = 8000
CONTEXT_PROMPT_CHARS = 20000
# The conversation kept in Redis for chat follow-ups (JSON characters), and what a tool output
# in it is shortened to when the whole is longer.
CONVERSATION_MAX_CHARS = 1_000_000
KEPT_TOOL_OUTPUT_CHARS = 8000
# How often the waiting thread looks at the cancel event and the deadline (events wake it at
# once). Each wake-up takes the GIL: with 64 investigations in flight, 0.1 s cost ~640 a second.
POLL_SECONDS = 0.5

ASK_TEMPLATE = (
    "Provide a terse root-cause analysis of the following Alertmanager alert: why it is "
    "firing, the most likely root cause, and the evidence you found for it. Use the available "
    "tools to gather evidence before concluding. If the evidence is insufficient, say what is "
    "missing instead of guessing.\n\n"
    "<alert>\n{alert}\n</alert>"
)


class InvestigationTimeout(TransientEngineError):
    """The investigation exceeded ``LLMSettings.timeout_seconds`` (retryable)."""


class StepTimeout(TransientEngineError):
    """One agent step (an LLM call or a tool) took longer than ``step_timeout_seconds``: the
    attempt moves on to the next model."""


class ModelUnusable(TransientEngineError):
    """A model's own configuration fails (its key is missing): the next model may still work.

    When no model of the list is usable the investigation fails permanently: retrying does not
    fix configuration.
    """


def _prepare_environment(settings: LLMSettings) -> None:
    # Must run before the first holmes/litellm import: litellm would otherwise download its price
    # map at import, and HolmesGPT reads LLM_REQUEST_TIMEOUT into a constant at import.
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    os.environ.setdefault("LLM_REQUEST_TIMEOUT", str(settings.timeout_seconds))


def alert_payload(alert: Alert) -> dict[str, Any]:
    """The alert as the LLM sees it: Alertmanager's own field names, JSON types."""
    data = alert.model_dump(
        mode="json",
        include={"status", "labels", "annotations", "startsAt", "fingerprint", "generatorURL"},
        exclude_none=True,
    )
    return {key: data[key] for key in sorted(data)}


def build_ask(request: EngineRequest) -> str:
    """The user turn of the investigation chat."""
    alert_json = json.dumps(alert_payload(request.alert), indent=2, ensure_ascii=False)
    parts = [ASK_TEMPLATE.format(alert=alert_json)]
    if request.question:
        parts.append(f"Additional instructions from the requester:\n{request.question}")
    if request.context:
        context_json = json.dumps(request.context, indent=2, sort_keys=True, default=str)
        parts.append(
            "Context gathered about this alert before the investigation:\n"
            f"<context>\n{_truncate(context_json, CONTEXT_PROMPT_CHARS)}\n</context>"
        )
    return "\n\n".join(parts)


def _truncate(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return text[:limit] + f"... [truncated, {len(text) - limit} more chars]"


class HolmesEngine:
    """Runs investigations and chat follow-ups with HolmesGPT 0.45. Safe to share between threads.

    One ``Config`` and one tool executor serve every model of the failover list: each model is
    only a ``DefaultLLM`` (litellm arguments), built per investigation like HolmesGPT's server
    does, so N models cost N small objects, not N executors.
    """

    def __init__(
        self,
        settings: LLMSettings,
        extra_toolsets: list[Any] | None = None,
        toolsets_config: dict[str, dict[str, Any]] | None = None,
        *,
        fast: bool = True,
        breaker: Breaker | None = None,
        catalog_sink: Callable[[dict[str, Any]], None] | None = None,
        redact: Callable[[Any], Any] | None = None,
    ) -> None:
        self._settings = settings
        self._redact = redact
        self._models = settings.model_entries()
        names = [m.name for m in self._models]
        if len(set(names)) != len(names):
            raise ValueError(f"model names must be unique: {names}")
        for name in names:
            metrics.initialise_model(name)
        self._extra_toolsets = list(extra_toolsets or [])
        self._toolsets_config = toolsets_config
        self.fast = fast
        self._clients = ClientLender()
        self._breaker: Breaker = breaker or LocalBreaker(
            settings.breaker_failures, settings.breaker_cooldown_seconds
        )
        self._catalog_sink = catalog_sink
        self._lock = threading.Lock()
        self._config: Config | None = None
        self._executors: dict[frozenset[str], ToolExecutor] = {}
        _prepare_environment(settings)

    @property
    def redacts_tool_output(self) -> bool:
        """Whether tool output is redacted before the LLM, the events and the result see it."""
        return self._redact is not None

    @property
    def model_name(self) -> str:
        """The primary model's configured name."""
        return self._models[0].name

    @property
    def models(self) -> list[ModelEntry]:
        return list(self._models)

    @property
    def breaker(self) -> Breaker:
        return self._breaker

    def warm(self) -> None:
        """Import HolmesGPT, build the config, toolsets and LLMs once, ahead of the first alert."""
        config = self._get_config()
        executor = self._base_executor(config)
        for entry in self._models:  # the first usable model warms the shared caches
            try:
                ai = self._toolcalling_llm(config, entry, executor)
            except ModelUnusable as exc:
                log.warning("model %s is unusable: %s", entry.name, exc)
                continue
            if self.fast:
                from holmes_stream.engine import fastpath

                fastpath.warm(ai, config)
            break
        if self._catalog_sink is not None:
            try:
                self._catalog_sink(self.catalog())
            except Exception as exc:  # the catalog is informative; never block the worker
                log.warning("could not publish the engine catalog: %s", exc)

    def catalog(self) -> dict[str, Any]:
        """Toolsets as HolmesGPT loaded them (no configuration values: they may hold secrets)."""
        executor = self._base_executor(self._get_config())
        return {
            "toolsets": toolset_catalog(executor.toolsets),
            "models": model_catalog(self._models),
        }

    # -- investigation and chat ---------------------------------------------------------------

    def investigate(
        self, request: EngineRequest, emit: EventSink, cancel: threading.Event
    ) -> InvestigationResult:
        ask = build_ask(request)
        return self._run_models(
            request.model, request.toolsets, ask, None, emit, cancel, request.step_gate
        )

    def chat(
        self, request: ChatEngineRequest, emit: EventSink, cancel: threading.Event
    ) -> InvestigationResult:
        """Continue a finished investigation's conversation with a follow-up question."""
        return self._run_models(
            request.model, None, request.question, request.history, emit, cancel, request.step_gate
        )

    def _run_models(
        self,
        model: str | None,
        toolsets: list[str] | None,
        ask: str,
        history: list[dict[str, Any]] | None,
        emit: EventSink,
        cancel: threading.Event,
        gate: StepGate | None = None,
    ) -> InvestigationResult:
        """Try the candidate models in order until one answers (failover within one attempt)."""
        started = time.monotonic()
        if cancel.is_set():
            raise EngineCancelled("cancelled before start")
        candidates = self.candidates(model)
        try:
            config = self._get_config()
            executor = self._executor(config, toolsets)
        except EngineError:
            raise
        except Exception as exc:
            raise classify_exception(exc) from exc
        # With one model there is nothing to fail over to: the service's retries with backoff
        # are the only protection, and a breaker would only turn them into instant failures.
        guarded = len(self._models) > 1
        deadline = started + self._settings.timeout_seconds
        failures: list[FailoverAttempt] = []
        unusable = 0
        for entry in candidates:
            if guarded and not self._breaker.allow(entry.name):
                failures.append(FailoverAttempt(model=entry.name, error="circuit open: skipped"))
                emit("failover", {"model": entry.name, "error": "circuit open: skipped"})
                continue
            try:
                result = self._run_model(
                    entry, config, executor, ask, history, emit, cancel, deadline, gate
                )
            except InvestigationTimeout as exc:
                # The whole attempt's time is spent: no time left for another model.
                count_llm_error(entry.name, exc)
                if guarded:
                    self._breaker.failure(entry.name, str(exc))
                raise
            except ModelUnusable as exc:
                count_llm_error(entry.name, exc)
                unusable += 1
                error = _short_error(exc)
                log.warning("model %s is unusable, failing over: %s", entry.name, error)
                failures.append(FailoverAttempt(model=entry.name, error=error))
                emit("failover", {"model": entry.name, "error": error})
                continue
            except TransientEngineError as exc:
                count_llm_error(entry.name, exc)
                error = _short_error(exc)
                log.warning("model %s failed, failing over: %s", entry.name, error)
                if guarded:
                    self._breaker.failure(entry.name, error)
                failures.append(FailoverAttempt(model=entry.name, error=error))
                emit("failover", {"model": entry.name, "error": error})
                continue
            except PermanentEngineError as exc:
                count_llm_error(entry.name, exc)
                raise
            metrics.LLM_CALLS.labels(entry.name, "ok").inc(max(1, result.num_llm_calls))
            if guarded:
                self._breaker.success(entry.name)
            result.failover = failures
            result.duration_seconds = round(time.monotonic() - started, 3)
            return result
        summary = "; ".join(f"{f.model}: {f.error}" for f in failures)
        if unusable == len(candidates):
            raise PermanentEngineError(f"no configured model is usable ({summary})")
        raise TransientEngineError(f"no model answered ({summary})")

    def candidates(self, requested: str | None) -> list[ModelEntry]:
        """The failover list, or the one model a request chose (by name or litellm model)."""
        if not requested:
            return list(self._models)
        for entry in self._models:
            if entry.name == requested:
                return [entry]
        matches = [e for e in self._models if e.model == requested]
        if len(matches) == 1:
            return matches
        allowed = ", ".join(e.name for e in self._models)
        raise PermanentEngineError(f"model {requested!r} is not configured (allowed: {allowed})")

    def _run_model(
        self,
        entry: ModelEntry,
        config: Config,
        executor: ToolExecutor,
        ask: str,
        history: list[dict[str, Any]] | None,
        emit: EventSink,
        cancel: threading.Event,
        deadline: float,
        gate: StepGate | None = None,
    ) -> InvestigationResult:
        try:
            ai = self._toolcalling_llm(config, entry, executor)
            messages = self._build_messages(ai, config, ask, history)
        except EngineError:
            raise
        except Exception as exc:
            raise classify_exception(exc) from exc
        collector = _ResultCollector()
        for event, data in self._run(ai, messages, cancel, deadline, gate):
            collector.add(event, data)
            if event in FORWARDED_EVENTS:
                emit(event, event_payload(event, data))
        return collector.result(entry)

    def _run(
        self,
        ai: ToolCallingLLM,
        messages: list[dict[str, Any]],
        cancel: threading.Event,
        deadline: float,
        gate: StepGate | None = None,
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """Yield (event, data) from HolmesGPT's loop; raise an EngineError when it fails."""
        stop = threading.Event()
        events: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        runner = threading.Thread(
            # HolmesGPT's own log lines carry the investigation's log context and trace.
            target=logcontext.in_context(_drain),
            args=(ai, messages, stop, events, gate, self.fast),
            name="holmes-loop",
            daemon=True,
        )
        runner.start()
        try:
            while True:
                kind, item = self._next(events, cancel, deadline)
                if kind == "event":
                    yield item
                elif kind == "done":
                    return
                else:
                    raise self._failure(item, cancel)
        finally:
            # Any exit but a finished loop (cancel, timeout, a failing emit) stops the runner at its
            # next step; its blocking LLM request ends at the litellm request timeout.
            stop.set()

    def _next(
        self, events: queue.SimpleQueue[tuple[str, Any]], cancel: threading.Event, deadline: float
    ) -> tuple[str, Any]:
        stall = self._settings.step_timeout_seconds
        stalled_at = time.monotonic() + stall if stall else None
        while True:
            if cancel.is_set():
                raise EngineCancelled("cancelled")
            now = time.monotonic()
            remaining = deadline - now
            if remaining <= 0:
                raise InvestigationTimeout(
                    f"timeout: investigation exceeded {self._settings.timeout_seconds:g}s"
                )
            if stalled_at is not None and now >= stalled_at:
                # The model (or a tool) hangs: leave it to its request timeout, try the next one.
                raise StepTimeout(f"timeout: no agent step for {stall:g}s")
            try:
                return events.get(timeout=min(POLL_SECONDS, remaining))
            except queue.Empty:
                continue

    @staticmethod
    def _failure(exc: BaseException, cancel: threading.Event) -> EngineError:
        if cancel.is_set():
            return EngineCancelled("cancelled")
        error = classify_exception(exc)
        error.__cause__ = exc
        return error

    # -- HolmesGPT objects --------------------------------------------------------------------

    def _get_config(self) -> Config:
        if self._config is not None:  # built once: read without the lock the build takes
            return self._config
        with self._lock:
            if self._config is None:
                self._config = self._build_config()
            return self._config

    def _build_config(self) -> Config:
        from holmes.config import Config

        toolsets: dict[str, dict[str, Any]] = {
            name: {"enabled": False} for name in DISABLED_TOOLSETS
        }
        toolsets.update(self._settings.toolsets)
        toolsets.update(self._toolsets_config or {})
        additional = self._extra_toolsets + load_python_toolsets(self._settings.python_toolsets)
        primary = self._models[0]
        # The Config's own model is never used to call an LLM (each model entry gets its own
        # DefaultLLM), so it carries no key.
        return Config(
            model=primary.model,
            api_base=primary.api_base,
            max_steps=self._settings.max_steps,
            toolsets=toolsets,
            custom_toolsets=list(self._settings.custom_toolset_files) or None,
            additional_toolsets=additional or None,
        )

    def _base_executor(self, config: Config) -> ToolExecutor:
        from holmes.core.tools import PrerequisiteCacheMode

        # The server's executor key (tags CORE+CLUSTER, enable_all=False), built once and reused.
        return config.create_server_tool_executor(prerequisite_cache=PrerequisiteCacheMode.DISABLED)

    def _executor(self, config: Config, toolsets: list[str] | None) -> ToolExecutor:
        base = self._base_executor(config)
        return base if toolsets is None else self._filtered_executor(base, toolsets)

    def _create_ai(self, config: Config, toolsets: list[str] | None = None) -> ToolCallingLLM:
        """The primary model over the (optionally filtered) shared executor."""
        return self._toolcalling_llm(config, self._models[0], self._executor(config, toolsets))

    def _toolcalling_llm(
        self, config: Config, entry: ModelEntry, executor: ToolExecutor
    ) -> ToolCallingLLM:
        from holmes_stream.engine import fastpath

        ai = fastpath.toolcalling_llm(config, self._llm(entry), executor, memoise=self.fast)
        if self._redact is not None:
            _redact_tool_results(ai, self._redact)
        return ai

    def _llm(self, entry: ModelEntry) -> Any:
        """A ``DefaultLLM`` for one model entry, as HolmesGPT builds one from model_list.yaml."""
        from holmes.core.llm import DefaultLLM

        try:
            key = entry.key()
        except OSError as exc:
            raise ModelUnusable(f"the API key file of {entry.name} is unreadable: {exc}") from exc
        if key is None and entry.api_key_env:
            raise ModelUnusable(f"{entry.api_key_env}, the API key of {entry.name}, is not set")
        llm = DefaultLLM(
            model=entry.model,
            api_key=key,
            api_base=entry.api_base,
            api_version=entry.api_version,
            args=llm_args(entry, self._settings),
            name=entry.name,
        )
        time_completions(llm, entry.name)
        if self.fast:
            self._clients.lend_to(llm)
        return llm

    def _filtered_executor(self, base: ToolExecutor, wanted: list[str]) -> ToolExecutor:
        """An executor offering only the named enabled toolsets (cached per selection)."""
        from holmes.core.tools import ToolsetStatusEnum
        from holmes.core.tools_utils.tool_executor import ToolExecutor

        key = frozenset(wanted)
        cached = self._executors.get(key)  # entries are only added (under the lock)
        if cached is not None:
            return cached
        enabled = {ts.name for ts in base.toolsets if ts.status == ToolsetStatusEnum.ENABLED}
        unknown = sorted(key - enabled)
        if unknown:
            offered = ", ".join(sorted(enabled))
            raise PermanentEngineError(
                f"toolsets not enabled: {', '.join(unknown)} (enabled: {offered})"
            )
        kept = [
            ts for ts in base.toolsets if ts.name in key or ts.status != ToolsetStatusEnum.ENABLED
        ]
        executor = ToolExecutor(kept)
        with self._lock:
            return self._executors.setdefault(key, executor)

    def _build_messages(
        self,
        ai: ToolCallingLLM,
        config: Config,
        ask: str,
        history: list[dict[str, Any]] | None = None,
    ) -> list[dict[str, Any]]:
        if self.fast:
            from holmes_stream.engine import fastpath

            return fastpath.build_chat_messages(ask, ai=ai, config=config, history=history)
        from holmes.core.conversations import build_chat_messages

        return build_chat_messages(ask, history or [], ai=ai, config=config)


def llm_args(entry: ModelEntry, settings: LLMSettings) -> dict[str, Any]:
    """litellm completion arguments of one model, as a model_list.yaml entry would set them.

    ``num_retries=0`` turns off litellm's and the OpenAI client's own retries (2 by default), so
    failover and the worker's retry policy are the only ones. Prices given per token make
    litellm cost the calls of models it does not know.
    """
    args: dict[str, Any] = dict(entry.args)
    temperature = entry.temperature if entry.temperature is not None else settings.temperature
    args.setdefault("temperature", temperature)
    args.setdefault("num_retries", 0)
    if entry.input_cost_per_token is not None and entry.output_cost_per_token is not None:
        args.setdefault("input_cost_per_token", entry.input_cost_per_token)
        args.setdefault("output_cost_per_token", entry.output_cost_per_token)
    return args


def load_python_toolsets(specs: list[str]) -> list[Any]:
    """Toolsets named ``module:attribute``: a Toolset, a list of them, or a factory of either."""
    import importlib

    loaded: list[Any] = []
    for spec in specs:
        module_name, _, attribute = spec.partition(":")
        if not module_name or not attribute:
            raise ValueError(f"python toolset {spec!r}: expected module:attribute")
        value = getattr(importlib.import_module(module_name), attribute)
        if callable(value) and not hasattr(value, "tools"):
            value = value()
        loaded.extend(value if isinstance(value, list | tuple) else [value])
    return loaded


def toolset_catalog(toolsets: list[Any]) -> list[dict[str, Any]]:
    """What HolmesGPT made of each toolset: enabled, disabled, or failed with the reason."""
    from holmes_stream.redaction import Redactor

    redactor = Redactor()
    out = []
    for ts in sorted(toolsets, key=lambda t: t.name):
        status = str(getattr(ts.status, "value", ts.status))
        error = getattr(ts, "error", None)
        out.append(
            {
                "name": ts.name,
                "status": status,
                "enabled": status == "enabled",
                "error": redactor.redact_text(str(error)) if error else None,
                "description": ts.description,
                "type": _enum_text(getattr(ts, "type", None)),
                "tools": sorted(t.name for t in (ts.tools or [])),
            }
        )
    return out


def time_completions(llm: Any, model: str) -> None:
    """``holmes_stream_llm_request_duration_seconds``: every LLM request of this ``DefaultLLM``.

    HolmesGPT sends each request of its agent loop (and of its history compaction) through
    ``llm.completion``; this instance's method is wrapped, HolmesGPT's code is unchanged.
    """
    complete = llm.completion
    ok = metrics.LLM_REQUEST_DURATION.labels(model, "ok")
    error = metrics.LLM_REQUEST_DURATION.labels(model, "error")

    def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            response = complete(*args, **kwargs)
        except BaseException:
            error.observe(time.perf_counter() - started)
            raise
        ok.observe(time.perf_counter() - started)
        return response

    llm.completion = timed


def count_llm_error(model: str, exc: BaseException) -> None:
    """``holmes_stream_llm_calls_total{outcome="error"}`` and ``..._llm_errors_total{kind}``."""
    metrics.LLM_CALLS.labels(model, "error").inc()
    metrics.LLM_ERRORS.labels(model, error_kind(exc)).inc()


def error_kind(exc: BaseException) -> str:
    if isinstance(exc, InvestigationTimeout | StepTimeout):
        return "timeout"
    if isinstance(exc, ModelUnusable):
        return "unusable"
    cause = exc.__cause__ or exc
    name = type(cause).__name__
    status = _status_code(cause)
    if status == 429 or "RateLimit" in name:
        return "rate_limit"
    if "Timeout" in name or isinstance(cause, TimeoutError):
        return "timeout"
    if "Connection" in name or isinstance(cause, ConnectionError):
        return "connection"
    if (status is not None and status >= 500) or isinstance(exc, TransientEngineError):
        return "unavailable"
    if status is not None and 400 <= status < 500:
        return "client_error"
    return "other"


def _enum_text(value: Any) -> str | None:
    return None if value is None else str(getattr(value, "value", value))


def _short_error(exc: BaseException) -> str:
    return _truncate(str(exc) or type(exc).__name__, 500)


def _drain(
    ai: ToolCallingLLM,
    messages: list[dict[str, Any]],
    stop: threading.Event,
    events: queue.SimpleQueue[tuple[str, Any]],
    gate: StepGate | None = None,
    fast: bool = True,
) -> None:
    try:
        # litellm runs a coroutine after every request: on the thread's own event loop when it
        # has one, else through asyncio.run (a new loop each time). See fastpath. A turn's
        # single tool call runs on this thread, not on a pool started for it (see toolpool).
        with (
            thread_event_loop() if fast else contextlib.nullcontext(),
            toolpool.agent_loop() if fast else contextlib.nullcontext(),
        ):
            _stream(ai, messages, stop, events, gate)
    except BaseException as exc:  # handed to the waiting thread, which classifies it
        events.put(("error", exc))


def _stream(
    ai: ToolCallingLLM,
    messages: list[dict[str, Any]],
    stop: threading.Event,
    events: queue.SimpleQueue[tuple[str, Any]],
    gate: StepGate | None,
) -> None:
    for message in ai.call_stream(msgs=messages, cancel_event=stop):
        if stop.is_set():
            return
        name = _event_name(message.event)
        events.put(("event", (name, message.data)))
        # The gate runs on the loop's own thread, so a "no" stops it before its next step.
        if gate is not None and not gate(name, message.data):
            stop.set()
            return
    events.put(("done", None))


def _event_name(event: Any) -> str:
    return str(getattr(event, "value", event))


# -- results ----------------------------------------------------------------------------------


class _ResultCollector:
    """Builds the InvestigationResult from the stream: tool results and the final answer."""

    def __init__(self) -> None:
        self._tool_calls: dict[str, ToolCall] = {}
        self._answer: dict[str, Any] | None = None

    def add(self, event: str, data: dict[str, Any]) -> None:
        if event == "tool_calling_result":
            key = str(data.get("tool_call_id") or len(self._tool_calls))
            self._tool_calls[key] = tool_call_from_event(data)
        elif event == "ai_answer_end":
            self._answer = data

    def result(self, entry: ModelEntry) -> InvestigationResult:
        if self._answer is None:
            # e.g. HolmesGPT paused for an approval we cannot give.
            raise PermanentEngineError("the agent loop ended without an answer")
        costs = self._answer.get("costs") or {}
        prompt = int(costs.get("prompt_tokens") or 0)
        completion = int(costs.get("completion_tokens") or 0)
        result = InvestigationResult(
            analysis=self._answer.get("content") or "",
            tool_calls=list(self._tool_calls.values()),
            model=entry.name,
            provider_model=entry.model,
            prompt_tokens=prompt,
            completion_tokens=completion,
            total_tokens=int(costs.get("total_tokens") or prompt + completion),
            cost=float(costs.get("total_cost") or 0.0),
            num_llm_calls=int(self._answer.get("num_llm_calls") or 0),
        )
        return result.with_conversation(conversation_of(self._answer.get("messages")))


def conversation_of(
    messages: Any, max_chars: int = CONVERSATION_MAX_CHARS
) -> list[dict[str, Any]] | None:
    """The conversation to keep for follow-ups: JSON-safe, without the system prompt (rebuilt
    for every turn from the toolsets of the time) and HolmesGPT's token-count cache.

    Bounded: beyond ``max_chars`` (as JSON) tool outputs, the bulk of it, are shortened; a
    conversation still too long is not kept (a follow-up then answers 409)."""
    if not isinstance(messages, list):
        return None
    kept = cast(
        list[dict[str, Any]],
        _json_safe(
            [
                {k: v for k, v in m.items() if k != "token_count"}
                for m in messages
                if isinstance(m, dict) and m.get("role") != "system"
            ]
        ),
    )
    if len(c_dumps(kept)) <= max_chars:
        return kept
    for message in kept:
        content = message.get("content")
        if message.get("role") == "tool" and isinstance(content, str):
            message["content"] = _truncate(content, KEPT_TOOL_OUTPUT_CHARS)
    if len(c_dumps(kept)) <= max_chars:
        return kept
    log.warning("conversation of %d messages too long to keep for follow-ups", len(kept))
    return None


def _tool_output(result: dict[str, Any]) -> str:
    data = result.get("data")
    if data in (None, "") and result.get("error"):
        return str(result["error"])
    if data is None:
        return ""
    return data if isinstance(data, str) else c_dumps(data, default=str)


def tool_call_from_event(data: dict[str, Any]) -> ToolCall:
    result = data.get("result") or {}
    return ToolCall(
        tool_name=str(data.get("tool_name") or data.get("name") or "unknown"),
        toolset=data.get("toolset_name"),
        status=str(getattr(result.get("status"), "value", result.get("status")) or "unknown"),
        description=data.get("description") or None,
        output_excerpt=_tool_output(result)[:TOOL_OUTPUT_EXCERPT_CHARS],
    )


# -- events -----------------------------------------------------------------------------------


def event_payload(event: str, data: dict[str, Any]) -> dict[str, Any]:
    """A bounded, JSON-safe view of one HolmesGPT stream event (never the whole conversation)."""
    if event == "tool_calling_result":
        return _tool_result_payload(data)
    if event == "start_tool_calling":
        return {"tool_name": data.get("tool_name"), "id": data.get("id")}
    if event == "ai_message":
        return {
            "content": _maybe_truncate(data.get("content"), AI_MESSAGE_EVENT_CHARS),
            "reasoning": _maybe_truncate(data.get("reasoning"), AI_MESSAGE_EVENT_CHARS),
        }
    if event == "token_count":
        metadata = data.get("metadata") or {}
        return _json_safe(
            {
                key: metadata.get(key)
                for key in ("tokens", "max_tokens", "max_output_tokens", "usage", "costs")
                if key in metadata
            }
        )
    if event == "ai_answer_end":
        return _json_safe(
            {
                "content": data.get("content"),
                "num_llm_calls": data.get("num_llm_calls"),
                "costs": data.get("costs"),
                "tool_calls": len(data.get("tool_calls") or []),
            }
        )
    return _json_safe({k: v for k, v in data.items() if k not in ("messages", "prompt")})


def _tool_result_payload(data: dict[str, Any]) -> dict[str, Any]:
    result = data.get("result") or {}
    output = _tool_output(result)
    status = result.get("status")
    return _json_safe(
        {
            "tool_call_id": data.get("tool_call_id"),
            "tool_name": data.get("tool_name"),
            "toolset_name": data.get("toolset_name"),
            "description": data.get("description"),
            "status": getattr(status, "value", status),
            "error": _maybe_truncate(result.get("error"), TOOL_OUTPUT_EVENT_CHARS),
            "params": result.get("params"),
            "output": output[:TOOL_OUTPUT_EVENT_CHARS],
            "output_chars": len(output),
            "truncated": len(output) > TOOL_OUTPUT_EVENT_CHARS,
        }
    )


def _maybe_truncate(value: Any, limit: int) -> Any:
    return _truncate(value, limit) if isinstance(value, str) else value


def _json_safe(value: Any) -> Any:
    return json.loads(c_dumps(value, default=str))


# -- errors -----------------------------------------------------------------------------------

_TRANSIENT_STATUS = frozenset({408, 409, 425, 429})


def classify_exception(exc: BaseException) -> EngineError:
    """Map an exception from HolmesGPT/litellm/openai to our retry semantics."""
    if isinstance(exc, EngineError):
        return exc
    name = type(exc).__name__
    message = f"{name}: {exc}"
    if name == "LLMInterruptedError":
        return EngineCancelled(message)
    if _is_transient(exc):
        return TransientEngineError(message)
    return PermanentEngineError(message)


def _is_transient(exc: BaseException) -> bool:
    import litellm
    import openai

    transient_types: tuple[type[BaseException], ...] = (
        litellm.RateLimitError,
        litellm.APIConnectionError,  # includes litellm.Timeout
        litellm.Timeout,
        litellm.ServiceUnavailableError,
        litellm.InternalServerError,
        litellm.BadGatewayError,
        openai.APIConnectionError,  # includes openai.APITimeoutError
        ConnectionError,
        TimeoutError,
    )
    if isinstance(exc, transient_types):
        return True
    status = _status_code(exc)
    if status is not None:
        return status in _TRANSIENT_STATUS or status >= 500
    # Bedrock throttling arrives as a bare Exception (HolmesGPT checks the same text).
    return "Model is getting throttled" in str(exc)


def _status_code(exc: BaseException) -> int | None:
    status = getattr(exc, "status_code", None)
    if status is None:
        response = getattr(exc, "response", None)
        status = getattr(response, "status_code", None)
    try:
        return int(status) if status is not None else None
    except (TypeError, ValueError):
        return None


# -- assembly ---------------------------------------------------------------------------------


def _redact_tool_results(ai: ToolCallingLLM, redact: Callable[[Any], Any]) -> None:
    """Secrets in what a tool returns never reach the LLM, the events or the record.

    HolmesGPT turns a tool's ``StructuredToolResult`` into the tool message of the next LLM
    call; this instance's tool invocation hands back a redacted copy of it.
    """
    invoke = ai._directly_invoke_tool_call

    def redacted(*args: Any, **kwargs: Any) -> Any:
        result = invoke(*args, **kwargs)
        changes = {
            name: redact(value)
            for name in ("data", "error")
            if (value := getattr(result, name, None)) is not None
        }
        return result.model_copy(update=changes) if changes else result

    ai._directly_invoke_tool_call = redacted


def build_engine(settings: Settings, extra_toolsets: list[Any] | None = None) -> HolmesEngine:
    """The worker's engine: our history toolset, circuit state and catalog shared via Redis."""
    from holmes_stream.engine.toolsets import history_toolset

    url, prefix = settings.redis.url, settings.redis.key_prefix
    llm = settings.llm
    return HolmesEngine(
        llm,
        extra_toolsets=[history_toolset(url, prefix), *(extra_toolsets or [])],
        breaker=RedisBreaker(url, prefix, llm.breaker_failures, llm.breaker_cooldown_seconds),
        catalog_sink=redis_catalog_sink(url, prefix),
        redact=_redactor(settings),
    )


def _redactor(settings: Settings) -> Callable[[Any], Any] | None:
    if not settings.redaction.enabled:
        return None
    from holmes_stream.redaction import Redactor

    return Redactor.from_settings(settings.redaction).redact_obj
