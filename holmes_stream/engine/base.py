"""The contract between the service layer and whatever runs the agent loop."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from holmes_stream.schemas import Alert, InvestigationResult

# Called from the engine's thread with (event type, payload) for every agent step.
EventSink = Callable[[str, dict[str, Any]], None]
# Called on the agent loop's own thread with HolmesGPT's raw (event, data); False stops the
# loop before its next step (budgets use it: no LLM call after the money ran out).
StepGate = Callable[[str, dict[str, Any]], bool]


@dataclass(frozen=True)
class EngineRequest:
    investigation_id: str
    alert: Alert
    question: str | None = None
    model: str | None = None
    toolsets: list[str] | None = None
    tenant: str | None = None
    context: dict[str, Any] = field(default_factory=dict)
    step_gate: StepGate | None = field(default=None, compare=False)


@dataclass(frozen=True)
class ChatEngineRequest:
    """A follow-up question on a finished investigation, with its conversation so far."""

    investigation_id: str
    question: str
    history: list[dict[str, Any]]
    model: str | None = None
    tenant: str | None = None
    step_gate: StepGate | None = field(default=None, compare=False)


class EngineError(Exception):
    """An investigation attempt failed."""


class TransientEngineError(EngineError):
    """Worth retrying: provider 5xx, 429, timeouts, connection errors."""


class PermanentEngineError(EngineError):
    """Retrying will not help: bad request, unknown model, too many steps."""


class EngineCancelled(EngineError):
    """The cancel event was set while the loop ran."""


class Engine(Protocol):
    def investigate(
        self, request: EngineRequest, emit: EventSink, cancel: threading.Event
    ) -> InvestigationResult: ...


class ChatEngine(Engine, Protocol):
    """An engine that can also continue a finished investigation's conversation."""

    def chat(
        self, request: ChatEngineRequest, emit: EventSink, cancel: threading.Event
    ) -> InvestigationResult: ...
