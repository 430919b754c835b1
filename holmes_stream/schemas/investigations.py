"""Investigation requests, records, results and progress events."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from holmes_stream.schemas.alerts import Alert

SCHEMA_VERSION = 1


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

    def json_text(self) -> str:
        """The event as JSON, serialised once: one event goes out to every client following it."""
        if self._json is None:
            self._json = self.model_dump_json()
        return self._json

    def set_json(self, text: str) -> None:
        """Adopt ``text``, this event's JSON as stored, as its serialised form."""
        self._json = text
