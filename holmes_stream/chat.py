"""Chat follow-ups: questions about a finished investigation, continuing HolmesGPT's conversation.

Design: the same path as alerts. The API never imports HolmesGPT; it checks the request, marks
the investigation busy (one turn at a time), appends a ``chat_started`` event to the
investigation's progress stream and publishes a ``chat_request`` message on the alerts topic
(keyed by the investigation id). A worker picks it up, takes a lease on the turn, loads the
conversation kept at the end of the investigation (``{p}conv:{id}``), runs HolmesGPT with it
(failover included) and appends the turn's events to the same stream, every payload carrying
``turn``; ``chat_completed`` or ``chat_failed`` ends the turn. The new conversation replaces the
stored one, so the next turn continues from it; a transcript of the turns is kept too.

Redis keys (prefix ``p``), all with the record TTL:
- ``{p}chatbusy:{id}``       the turn running now (released when it ends; expires)
- ``{p}turn:{id}:{turn}``    a finished turn's outcome (JSON): redeliveries skip it
- ``{p}chat:{id}``           the transcript: a list of finished turns (JSON each)
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import threading
import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

from holmes_stream import logcontext, metrics
from holmes_stream.budgets import BudgetExceeded
from holmes_stream.engine.base import (
    ChatEngineRequest,
    EngineCancelled,
    PermanentEngineError,
    TransientEngineError,
)
from holmes_stream.intake import RejectedMessage
from holmes_stream.schemas import (
    TERMINAL_EVENTS,
    FailoverAttempt,
    InvestigationRecord,
    InvestigationResult,
    Status,
)
from holmes_stream.schemas.investigations import utcnow
from holmes_stream.service import (
    TRANSIENT_IO,
    BudgetMeter,
    EventPump,
    InvestigationService,
    Source,
    backoff,
)

log = logging.getLogger(__name__)

CHAT_KIND = "chat_request"
TURN_END_EVENTS = frozenset({"chat_completed", "chat_failed"})
_KIND_MARKER = b'"chat_request"'
_LEASE_POLL_SECONDS = 0.25
_TERMINAL_EVENT_GRACE_SECONDS = 3.0
MAX_MESSAGE_CHARS = 4000


class ChatRequest(BaseModel):
    """A follow-up question, as it travels on the alerts topic."""

    kind: Literal["chat_request"] = "chat_request"
    investigation_id: str
    turn: str
    message: str = Field(min_length=1, max_length=MAX_MESSAGE_CHARS)
    model: str | None = None
    tenant: str | None = None


class ChatTurn(BaseModel):
    """One finished turn of the transcript."""

    turn: str
    status: Literal["completed", "failed"]
    question: str
    answer: str | None = None
    error: str | None = None
    model: str | None = None
    failover: list[FailoverAttempt] = Field(default_factory=list)
    total_tokens: int = 0
    cost: float = 0.0
    at: str = Field(default_factory=lambda: utcnow().isoformat())


class ChatRefused(Exception):
    """The follow-up cannot be accepted now (answered 409 by the API)."""


def decode_chat(value: bytes | None) -> ChatRequest | None:
    """A chat request from the alerts topic; None for anything else (alerts, requests)."""
    if value is None or _KIND_MARKER not in value:
        return None
    try:
        payload = json.loads(value)
    except (ValueError, UnicodeDecodeError):
        return None  # the alert decoder dead-letters it with the precise reason
    if not isinstance(payload, dict) or payload.get("kind") != CHAT_KIND:
        return None
    try:
        return ChatRequest.model_validate(payload)
    except ValidationError as exc:
        raise RejectedMessage("invalid_schema", f"chat_request: {exc.errors()[:3]}") from exc


def new_turn_id() -> str:
    return uuid.uuid4().hex[:16]


class ChatService:
    """Both halves of a chat turn: accepting it (API) and running it (worker)."""

    def __init__(self, service: InvestigationService, turn_timeout_seconds: float = 300.0) -> None:
        self.service = service
        self.store = service.store
        # A busy mark outlives the longest turn (all attempts), then lapses by itself.
        self.busy_seconds = int(turn_timeout_seconds * max(1, service.settings.max_attempts)) + 60

    def _k(self, *parts: str) -> str:
        return self.store._k(*parts)

    # -- API side ---------------------------------------------------------------------------
    async def submit(
        self, record: InvestigationRecord, message: str, model: str | None = None
    ) -> tuple[str, int]:
        """Accept a follow-up on ``record``: (turn id, last event seq before the turn)."""
        if record.status is not Status.COMPLETED:
            raise ChatRefused(
                f"the investigation is {record.status}; follow-ups need a completed one"
            )
        if not await self.store.redis.exists(self._k("conv", record.id)):
            raise ChatRefused("no conversation is kept for this investigation (expired?)")
        await self._after_terminal_event(record)
        turn = new_turn_id()
        busy = self._k("chatbusy", record.id)
        if not await self.store.redis.set(busy, turn, nx=True, ex=self.busy_seconds):
            raise ChatRefused("a follow-up on this investigation is still running")
        try:
            raw_seq = await self.store.redis.get(self._k("evseq", record.id))
            after = int(raw_seq or 0)
            body = ChatRequest(
                investigation_id=record.id,
                turn=turn,
                message=message,
                model=model,
                tenant=record.tenant,
            )
            await self.service.producers.publish_alert(
                body.model_dump_json().encode(), key=record.id, tenant=record.tenant
            )
        except BaseException:
            await self.store.redis.delete(busy)
            raise
        question = message
        if self.service.extras.redactor is not None:
            question = self.service.extras.redactor.redact_text(message)
        await self.service.emit(record, "chat_started", {"turn": turn, "message": question})
        return turn, after

    async def _after_terminal_event(self, record: InvestigationRecord) -> None:
        """The record turns terminal just before its terminal event is written: a turn asked
        in between waits for that event, so that turns always follow it in the stream."""
        finished = record.finished_at or record.created_at
        if (utcnow() - finished).total_seconds() > _TERMINAL_EVENT_GRACE_SECONDS:
            return
        deadline = time.monotonic() + _TERMINAL_EVENT_GRACE_SECONDS
        while time.monotonic() < deadline:
            last = int(await self.store.redis.get(self._k("evseq", record.id)) or 0)
            recent = await self.store.events_after(record.id, max(0, last - 50))
            if any(event.type in TERMINAL_EVENTS for event in recent):
                return
            await asyncio.sleep(0.05)

    async def transcript(self, investigation_id: str) -> list[ChatTurn]:
        rows = await self.store.redis.lrange(self._k("chat", investigation_id), 0, -1)
        return [ChatTurn.model_validate_json(r) for r in rows]

    async def running_turn(self, investigation_id: str) -> str | None:
        raw = await self.store.redis.get(self._k("chatbusy", investigation_id))
        return raw.decode() if isinstance(raw, bytes) else raw

    async def turn_outcome(self, investigation_id: str, turn: str) -> ChatTurn | None:
        raw = await self.store.redis.get(self._k("turn", investigation_id, turn))
        return None if raw is None else ChatTurn.model_validate_json(raw)

    # -- worker side ------------------------------------------------------------------------
    async def handle(self, request: ChatRequest, source: Source) -> None:
        """Run one turn to its end. Idempotent: a redelivered turn that ended is skipped."""
        with logcontext.bind(
            investigation_id=request.investigation_id, tenant=request.tenant, chat_turn=request.turn
        ):
            await self._handle(request, source)

    async def _handle(self, request: ChatRequest, source: Source) -> None:
        lease_id = f"{request.investigation_id}:chat:{request.turn}"
        owner = f"{self.service.worker_id}:{uuid.uuid4().hex[:8]}"
        seconds = self.service.settings.claim_lease_seconds
        while not await self.store.acquire_lease(lease_id, owner, seconds):
            if await self.turn_outcome(request.investigation_id, request.turn) is not None:
                return
            await asyncio.sleep(_LEASE_POLL_SECONDS)
        keeper = asyncio.create_task(self._keep_lease(lease_id, owner, seconds))
        try:
            if await self.turn_outcome(request.investigation_id, request.turn) is not None:
                return
            record = await self.store.get(request.investigation_id)
            if record is None:
                log.warning("chat turn for an unknown investigation %s", request.investigation_id)
                return
            with logcontext.bind(fingerprint=record.fingerprint):
                await self._run_turn(record, request)
        finally:
            keeper.cancel()
            await self.store.release_lease(lease_id, owner)

    async def _keep_lease(self, lease_id: str, owner: str, seconds: float) -> None:
        while True:
            await asyncio.sleep(seconds / 3)
            try:
                await self.store.renew_lease(lease_id, owner, seconds)
            except TRANSIENT_IO:
                log.warning("chat lease renewal failed", extra={"investigation_id": lease_id})

    async def _run_turn(self, record: InvestigationRecord, request: ChatRequest) -> None:
        service = self.service
        engine = service.engine
        history = await self.store.get_conversation(record.id)
        if engine is None or not hasattr(engine, "chat"):
            await self._end(record, request, error="this worker cannot run chat follow-ups")
            return
        if history is None:
            await self._end(record, request, error="no conversation is kept for this investigation")
            return
        budgets = service.extras.budgets
        if budgets is not None:
            try:
                await budgets.check(request.tenant)
            except BudgetExceeded as exc:
                metrics.BUDGET_EXCEEDED.labels(request.tenant or "default").inc()
                await self._end(record, request, error=f"budget exceeded: {exc}")
                return
        question = request.message
        redactor = service.extras.redactor
        if redactor is not None:
            question = redactor.redact_text(question)
        engine_request = ChatEngineRequest(
            investigation_id=record.id,
            question=question,
            history=history,
            model=request.model,
            tenant=request.tenant,
        )
        attempt = 0
        while True:
            attempt += 1
            cancel = threading.Event()
            pump = EventPump(service, record)

            def forward(type_: str, payload: dict[str, Any], pump: EventPump = pump) -> None:
                pump.emit_threadsafe(type_, {**payload, "turn": request.turn})

            meter = BudgetMeter(service.extras.budget_guard, request.tenant, cancel)
            engine_request = dataclasses.replace(engine_request, step_gate=meter.gate)
            loop = asyncio.get_running_loop()
            started = time.perf_counter()
            try:
                result = await loop.run_in_executor(
                    service.executor,
                    logcontext.in_context(engine.chat),
                    engine_request,
                    forward,
                    cancel,
                )
            except TransientEngineError as exc:
                await pump.close()
                metrics.RETRIES.labels("llm").inc()
                if attempt >= service.settings.max_attempts:
                    error = f"gave up after {attempt} attempts: {exc}"
                    await self._end(record, request, error=error)
                    return
                await service.emit(
                    record, "retry", {"attempt": attempt, "error": str(exc), "turn": request.turn}
                )
                await asyncio.sleep(
                    backoff(
                        attempt,
                        service.settings.retry_base_seconds,
                        service.settings.retry_max_seconds,
                    )
                )
                continue
            except EngineCancelled:
                await pump.close()
                if meter.exceeded is not None:
                    await self._end(record, request, error=f"budget exceeded: {meter.exceeded}")
                    return
                if service.stopping:
                    raise asyncio.CancelledError from None  # redelivered after the restart
                await self._end(record, request, error="cancelled")
                return
            except PermanentEngineError as exc:
                await pump.close()
                await self._end(record, request, error=f"{type(exc).__name__}: {exc}")
                return
            finally:
                metrics.ENGINE_RUN_DURATION.labels("chat").observe(time.perf_counter() - started)
            await pump.close()
            await self._complete(record, request, question, result)
            return

    async def _complete(
        self,
        record: InvestigationRecord,
        request: ChatRequest,
        question: str,
        result: InvestigationResult,
    ) -> None:
        self.service._account(result, request.tenant)
        conversation = result.conversation
        answer = result.analysis
        redactor = self.service.extras.redactor
        if redactor is not None:
            answer = redactor.redact_text(answer)
            conversation = redactor.redact_obj(conversation) if conversation else None
        if conversation:
            kept = conversation
            await self.service._durably(lambda: self.store.put_conversation(record.id, kept))
        turn = ChatTurn(
            turn=request.turn,
            status="completed",
            question=question,
            answer=answer,
            model=result.model,
            failover=result.failover,
            total_tokens=result.total_tokens,
            cost=result.cost,
        )
        await self._record(record, turn)

    async def _end(self, record: InvestigationRecord, request: ChatRequest, *, error: str) -> None:
        turn = ChatTurn(turn=request.turn, status="failed", question=request.message, error=error)
        if self.service.extras.redactor is not None:
            turn.question = self.service.extras.redactor.redact_text(turn.question)
        await self._record(record, turn)

    async def _record(self, record: InvestigationRecord, turn: ChatTurn) -> None:
        """Keep the turn's outcome, free the investigation for the next turn, end the turn."""
        ttl = self.store.ttl
        raw = turn.model_dump_json()

        async def write() -> None:
            pipe = self.store.redis.pipeline(transaction=True)
            pipe.set(self._k("turn", record.id, turn.turn), raw, ex=ttl)
            pipe.rpush(self._k("chat", record.id), raw)
            pipe.expire(self._k("chat", record.id), ttl)
            await pipe.execute()
            busy = self._k("chatbusy", record.id)
            if await self.store.redis.get(busy) in (turn.turn, turn.turn.encode()):
                await self.store.redis.delete(busy)

        await self.service._durably(write)
        payload: dict[str, Any] = {"turn": turn.turn}
        if turn.status == "completed":
            payload |= {
                "answer": turn.answer,
                "model": turn.model,
                "failover": [f.model_dump() for f in turn.failover],
                "total_tokens": turn.total_tokens,
                "cost": turn.cost,
            }
            event = "chat_completed"
        else:
            payload["error"] = turn.error
            event = "chat_failed"
        await self.service._durably(lambda: self.service.emit(record, event, payload))
