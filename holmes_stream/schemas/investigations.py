"""Investigation requests, records, results and progress events."""

from __future__ import annotations

import functools
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal, TypeVar, cast

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from holmes_stream.schemas.alerts import Alert

SCHEMA_VERSION = 1

_Model = TypeVar("_Model", bound=BaseModel)
_set = object.__setattr__


def construct(cls: type[_Model], values: dict[str, Any]) -> _Model:
    """``cls`` from values already valid, every field given: what ``model_construct`` builds,
    without its per-field alias and default handling, which cost more than the rest of
    settling an alert that needs no LLM. ``values`` becomes the model's own (not copied; its
    order is the caller's, pydantic serialises in declared order). A missing field is a
    KeyError, an unknown one a TypeError. For models without extra fields;
    ``tests/test_schemas.py`` checks the result against ``model_construct``'s."""
    names = _field_names(cls)
    if values.keys() != names:
        if missing := names - values.keys():
            raise KeyError(f"missing fields of {cls.__name__}: {sorted(missing)}")
        raise TypeError(f"not fields of {cls.__name__}: {sorted(values.keys() - names)}")
    model = cls.__new__(cls)
    _set(model, "__dict__", values)
    _set(model, "__pydantic_fields_set__", set(names))
    _set(model, "__pydantic_extra__", None)
    private = _private_defaults(cls)
    _set(model, "__pydantic_private__", dict(private) if private is not None else None)
    return model


@functools.cache
def _field_names(cls: type[BaseModel]) -> frozenset[str]:
    return frozenset(cls.__pydantic_fields__)


@functools.cache
def _private_defaults(cls: type[BaseModel]) -> dict[str, Any] | None:
    attrs = cls.__private_attributes__
    return {name: attr.get_default() for name, attr in attrs.items()} if attrs else None


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return uuid.uuid4().hex


class Status(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"
    DEAD_LETTERED = "dead_lettered"
    BUDGET_EXCEEDED = "budget_exceeded"

    @property
    def terminal(self) -> bool:
        return self not in (Status.QUEUED, Status.RUNNING)


class InvestigationRequest(BaseModel):
    """An explicit request to investigate one alert."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["investigation_request"] = "investigation_request"
    alert: Alert
    question: str | None = Field(None, max_length=4000, description="Extra instructions")
    model: str | None = Field(None, description="A configured model to use")
    toolsets: list[str] | None = Field(None, description="Enabled toolsets to offer, by name")
    tenant: str | None = None


class ToolCall(BaseModel):
    tool_name: str
    toolset: str | None = None
    status: str
    description: str | None = None
    output_excerpt: str = Field("", description="The first characters of the tool's output")


class FailoverAttempt(BaseModel):
    """A model that did not answer before the one that did."""

    model: str = Field(description="Configured name of the model")
    error: str = Field(description="Why it did not answer (or `circuit open`: skipped)")


class InvestigationResult(BaseModel):
    analysis: str
    tool_calls: list[ToolCall] = Field(default_factory=list)
    model: str = Field(description="Configured name of the model that answered")
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cost: float = 0.0
    num_llm_calls: int = 0
    duration_seconds: float = 0.0
    provider_model: str | None = Field(None, description="litellm model name of that model")
    failover: list[FailoverAttempt] = Field(
        default_factory=list, description="Models tried before, in order, and why they failed"
    )
    # HolmesGPT's conversation (LLMResult.messages): kept in Redis for chat follow-ups, never
    # serialised with the result.
    _conversation: list[dict[str, Any]] | None = PrivateAttr(None)

    @property
    def conversation(self) -> list[dict[str, Any]] | None:
        return self._conversation

    def with_conversation(self, messages: list[dict[str, Any]] | None) -> InvestigationResult:
        self._conversation = messages
        return self


class InvestigationRecord(BaseModel):
    """What the store keeps and the results topic carries."""

    schema_version: int = SCHEMA_VERSION
    id: str
    episode_key: str
    fingerprint: str
    tenant: str | None = None
    status: Status
    reason: str | None = Field(None, description="Why skipped, failed or cancelled")
    alert: Alert
    question: str | None = None
    created_at: datetime = Field(default_factory=utcnow)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    resolved_at: datetime | None = None
    attempts: int = 0
    result: InvestigationResult | None = None
    error: str | None = None
    enrichment: dict[str, str] = Field(
        default_factory=dict, description="Per enrichment source: ok, cached, skipped or failed"
    )
    source: dict[str, Any] = Field(default_factory=dict, description="Where the alert came from")


# HolmesGPT's stream vocabulary plus our own lifecycle events.
EventType = Literal[
    "queued",
    "started",
    "enrichment",
    "start_tool_calling",
    "tool_calling_result",
    "ai_message",
    "token_count",
    "conversation_history_compacted",
    "ai_answer_end",
    "retry",
    "error",
    "completed",
    "failed",
    "cancelled",
    "skipped",
    "budget_exceeded",
    # The engine moved on to the next model of the failover list.
    "failover",
    # Chat follow-ups on a finished investigation: a turn starts, then HolmesGPT's events
    # (payloads carry the turn id), then exactly one of completed/failed ends the turn.
    "chat_started",
    "chat_completed",
    "chat_failed",
]

TERMINAL_EVENTS: frozenset[str] = frozenset(
    {"completed", "failed", "cancelled", "skipped", "budget_exceeded"}
)


class ProgressEvent(BaseModel):
    schema_version: int = SCHEMA_VERSION
    investigation_id: str
    seq: int
    type: EventType
    payload: dict[str, Any] = Field(default_factory=dict)
    at: datetime = Field(default_factory=utcnow)
    _json: str | None = PrivateAttr(default=None)

    @property
    def terminal(self) -> bool:
        return self.type in TERMINAL_EVENTS

    # ``_json`` through the private-attribute dict itself: pydantic's __getattr__ and
    # __setattr__ for private attributes cost more than the rest of these methods.
    def json_text(self) -> str:
        """The event as JSON, serialised once: one event goes out to every client following it."""
        private = cast("dict[str, Any]", self.__pydantic_private__)  # set: a private field
        text: str | None = private["_json"]
        if text is None:
            text = private["_json"] = self.model_dump_json()
        return text

    def set_json(self, text: str) -> None:
        """Adopt ``text``, this event's JSON as stored, as its serialised form."""
        cast("dict[str, Any]", self.__pydantic_private__)["_json"] = text


def terminal_event(record: InvestigationRecord) -> tuple[EventType, dict[str, Any]]:
    """The event that tells followers a record reached its outcome: its type and payload."""
    status = str(record.status)  # its value (a StrEnum): ``.value`` is a slower descriptor
    payload: dict[str, Any] = {"status": status}
    if record.reason:
        payload["reason"] = record.reason
    if record.error:
        payload["error"] = record.error
    if record.status is Status.DEAD_LETTERED:
        return "failed", payload
    return cast(EventType, status), payload


def never_ran(record: InvestigationRecord) -> bool:
    """Finished without a run having started: settled as stale or as resolved before it was
    known (their one event, the terminal one, is not stored but derived: ``derived_events``),
    or skipped or cancelled while queued (their events are stored)."""
    return record.status.terminal and record.started_at is None


def derived_events(record: InvestigationRecord) -> list[ProgressEvent]:
    """The events of a record that never ran and has none stored: its terminal event, seq 1,
    at its finish, as it went to the progress topic."""
    type_, payload = terminal_event(record)
    at = record.finished_at or record.created_at
    return [ProgressEvent(investigation_id=record.id, seq=1, type=type_, payload=payload, at=at)]
