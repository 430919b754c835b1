"""Chat follow-ups over HTTP: ask about a finished investigation, follow the answer over SSE.

``POST /api/v1/investigations/{id}/messages`` accepts a question (202 with the turn id and its
events URL; with ``Accept: text/event-stream`` the response *is* the turn's event stream).
Workers answer it (see ``holmes_stream.chat``); the turn's events are appended to the
investigation's progress stream with a ``turn`` field, from ``chat_started`` to
``chat_completed``/``chat_failed``. ``GET .../messages`` lists the finished turns.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated, Any, cast

from aiokafka.errors import KafkaError
from faststream.exceptions import IncorrectState
from litestar import Controller, Request, WebSocket, get, post, websocket
from litestar.datastructures import State
from litestar.exceptions import WebSocketDisconnect
from litestar.params import Body, HeaderParameter, PathParameter, QueryParameter
from litestar.response import Response, ServerSentEvent, ServerSentEventMessage
from pydantic import BaseModel, Field, ValidationError

from holmes_stream import metrics
from holmes_stream.auth import READ, WRITE, Principal
from holmes_stream.chat import (
    MAX_MESSAGE_CHARS,
    TURN_END_EVENTS,
    ChatRefused,
    ChatService,
    ChatTurn,
)
from holmes_stream.http.choices import check_model
from holmes_stream.http.investigations import (
    AccessToken,
    InvestigationId,
    load_visible,
    sse_message,
)
from holmes_stream.http.problems import Problem
from holmes_stream.http.security import SECURITY, requires
from holmes_stream.http.sse_hub import SSEHub
from holmes_stream.schemas import ProgressEvent
from holmes_stream.store import RecordStore

TurnId = Annotated[str, PathParameter(description="Turn id", max_length=64)]


class ChatMessage(BaseModel):
    message: str = Field(min_length=1, max_length=MAX_MESSAGE_CHARS, description="The question")
    model: str | None = Field(None, description="A configured model (name) for this turn")


class ChatAccepted(BaseModel):
    investigation_id: str
    turn: str
    status: str = "queued"
    after_seq: int = Field(description="Events of this turn have larger sequence numbers")
    events_url: str


class ChatTranscript(BaseModel):
    investigation_id: str
    turns: list[ChatTurn]


def _principal(request: Request[Any, Any, Any]) -> Principal:
    return cast(Principal, request.scope["user"])


def _chat(state: State) -> ChatService:
    return ChatService(state.service, state.settings.llm.timeout_seconds)


def _base_url(request: Request[Any, Any, Any]) -> str:
    public = request.app.state.settings.api.public_url
    return (public or str(request.base_url)).rstrip("/")


class ChatController(Controller):
    path = "/api/v1/investigations/{investigation_id:str}/messages"
    tags = ["chat"]
    security = SECURITY

    @post(
        "/",
        status_code=202,
        summary="Ask a follow-up question about a completed investigation",
        description=(
            "Continues HolmesGPT's conversation of the investigation. Answers 202 with the turn"
            " id and the URL of its Server-Sent Events; with `Accept: text/event-stream` the"
            " response is that event stream. 409 when the investigation is not completed, its"
            " conversation expired, or another follow-up is still running. The answer arrives"
            " as the `chat_completed` event (`answer`, `model`, `failover`)."
        ),
        guards=[requires(WRITE)],
    )
    async def ask(
        self,
        request: Request[Any, Any, Any],
        state: State,
        investigation_id: InvestigationId,
        data: Annotated[ChatMessage, Body(description="The follow-up question")],
    ) -> Response[ChatAccepted] | ServerSentEvent:
        record = await load_visible(state.store, _principal(request), investigation_id)
        check_model(state, data.model)
        try:
            async with asyncio.timeout(state.settings.api.submit_timeout_seconds):
                turn, after = await _chat(state).submit(record, data.message, data.model)
        except ChatRefused as exc:
            raise Problem(409, "Conflict", str(exc)) from exc
        except (KafkaError, IncorrectState, TimeoutError, OSError) as exc:
            raise Problem(
                503,
                "Service unavailable",
                f"Kafka did not take the question ({type(exc).__name__}); retry later",
                retry_after=5,
            ) from exc
        events_url = (
            f"{_base_url(request)}/api/v1/investigations/{record.id}/messages/{turn}/events"
            f"?after={after}"
        )
        if "text/event-stream" in (request.headers.get("accept") or ""):
            keepalive = state.settings.api.sse_keepalive_seconds
            stream = turn_stream(
                state.store, state.sse_hub, _chat(state), record.id, turn, after, keepalive
            )
            return ServerSentEvent(
                stream, retry_duration=2000, headers={"X-Accel-Buffering": "no"}, status_code=200
            )
        body = ChatAccepted(
            investigation_id=record.id, turn=turn, after_seq=after, events_url=events_url
        )
        return Response(body, status_code=202, headers={"Location": events_url})

    @get("/", summary="The finished follow-up turns of an investigation", guards=[requires(READ)])
    async def transcript(
        self, request: Request[Any, Any, Any], state: State, investigation_id: InvestigationId
    ) -> ChatTranscript:
        record = await load_visible(state.store, _principal(request), investigation_id)
        return ChatTranscript(
            investigation_id=record.id, turns=await _chat(state).transcript(record.id)
        )

    @get(
        "/{turn:str}/events",
        summary="One follow-up turn as Server-Sent Events",
        description=(
            "The events of the turn (`chat_started`, HolmesGPT's steps, `failover`, `retry`),"
            " replayed from `after` (or `Last-Event-ID`), then live; the stream ends after"
            " `chat_completed` or `chat_failed`."
        ),
        guards=[requires(READ, page_token=True)],
    )
    async def turn_events(
        self,
        request: Request[Any, Any, Any],
        state: State,
        investigation_id: InvestigationId,
        turn: TurnId,
        after: Annotated[
            int, QueryParameter(ge=0, description="Replay the turn's events after this seq")
        ] = 0,
        last_event_id: Annotated[
            str | None, HeaderParameter(name="Last-Event-ID", description="Resume after this")
        ] = None,
        access_token: AccessToken = None,
    ) -> ServerSentEvent:
        record = await load_visible(state.store, _principal(request), investigation_id)
        start = int(last_event_id) if last_event_id and last_event_id.isdigit() else after
        keepalive = state.settings.api.sse_keepalive_seconds
        stream = turn_stream(
            state.store, state.sse_hub, _chat(state), record.id, turn, start, keepalive
        )
        return ServerSentEvent(stream, retry_duration=2000, headers={"X-Accel-Buffering": "no"})


def _of_turn(event: ProgressEvent, turn: str) -> bool:
    return event.payload.get("turn") == turn


async def turn_stream(
    store: RecordStore,
    hub: SSEHub,
    chat: ChatService,
    investigation_id: str,
    turn: str,
    after: int,
    keepalive: float,
) -> AsyncIterator[ServerSentEventMessage]:
    """The turn's events as Server-Sent Events, live until the turn ends."""
    metrics.SSE_CLIENTS.inc()
    try:
        async for event in turn_events(store, hub, chat, investigation_id, turn, after, keepalive):
            if event is None:
                yield ServerSentEventMessage(comment="keep-alive")
            else:
                yield sse_message(event)
    finally:
        metrics.SSE_CLIENTS.dec()


async def turn_events(
    store: RecordStore,
    hub: SSEHub,
    chat: ChatService,
    investigation_id: str,
    turn: str,
    after: int,
    keepalive: float,
) -> AsyncIterator[ProgressEvent | None]:
    """The turn's events after ``after``, live until the turn ends; None while idle."""
    watch = await hub.watch(investigation_id)
    try:
        for event in await store.events_after(investigation_id, after):
            after = event.seq
            if _of_turn(event, turn):
                yield event
                if event.type in TURN_END_EVENTS:
                    return
        while True:
            items = await watch.next(keepalive)
            if not items:
                ended = await chat.turn_outcome(investigation_id, turn) is not None
                if not ended and await chat.running_turn(investigation_id) != turn:
                    # Not running: it ended meanwhile, or there is no such turn.
                    if await chat.turn_outcome(investigation_id, turn) is None:
                        return
                    ended = True
                if ended:
                    # Its last event is written just after the outcome: replay up to it.
                    for _ in range(50):
                        for event in await store.events_after(investigation_id, after):
                            after = event.seq
                            if _of_turn(event, turn):
                                yield event
                                if event.type in TURN_END_EVENTS:
                                    return
                        await asyncio.sleep(0.1)
                    return
                yield None
                continue
            for item in items:
                event = item.event
                if event.seq <= after:
                    continue
                after = event.seq
                if _of_turn(event, turn):
                    yield event
                    if event.type in TURN_END_EVENTS:
                        return
    finally:
        hub.unwatch(watch)


class ChatFrame(BaseModel):
    """What a WebSocket client sends: one question about one investigation."""

    investigation_id: str = Field(max_length=300)
    message: str = Field(min_length=1, max_length=MAX_MESSAGE_CHARS)
    model: str | None = None


@websocket(
    "/api/v1/chat/ws",
    guards=[requires(WRITE)],
    tags=["chat"],
    summary="Chat follow-ups over one WebSocket",
)
async def chat_socket(socket: WebSocket[Any, Any, Any]) -> None:
    """Send ``{"investigation_id", "message", "model"?}``; receive ``{"type": "accepted",
    "turn", ...}``, then the turn's progress events (``{"type": "event", "event": {...}}``) up
    to ``chat_completed``/``chat_failed``, or ``{"type": "error", "status", "detail"}``. Ask
    again on the same socket for the next turn. Authentication and tenant isolation are those
    of the HTTP routes (headers or ``?access_token=`` are checked before the socket opens)."""
    await socket.accept()
    state = socket.app.state
    principal = cast(Principal, socket.scope["user"])
    chat = _chat(state)
    keepalive = state.settings.api.sse_keepalive_seconds
    try:
        while True:
            raw = await socket.receive_data(mode="text")
            try:
                frame = ChatFrame.model_validate_json(raw)
                record = await load_visible(state.store, principal, frame.investigation_id)
                check_model(state, frame.model)
                turn, after = await chat.submit(record, frame.message, frame.model)
            except ValidationError as exc:
                await _send_error(socket, 422, str(exc.errors()[:3]))
                continue
            except Problem as exc:
                await _send_error(socket, exc.status_code, str(exc.detail))
                continue
            except ChatRefused as exc:
                await _send_error(socket, 409, str(exc))
                continue
            except (KafkaError, IncorrectState, TimeoutError, OSError) as exc:
                await _send_error(socket, 503, f"Kafka did not take the question: {exc!r}")
                continue
            await socket.send_json(
                {
                    "type": "accepted",
                    "investigation_id": record.id,
                    "turn": turn,
                    "after_seq": after,
                }
            )
            async for event in turn_events(
                state.store, state.sse_hub, chat, record.id, turn, after, keepalive
            ):
                if event is None:
                    await socket.send_json({"type": "keepalive"})
                else:
                    await socket.send_json(
                        {"type": "event", "event": event.model_dump(mode="json")}
                    )
    except WebSocketDisconnect:
        return


async def _send_error(socket: WebSocket[Any, Any, Any], status: int, detail: str) -> None:
    await socket.send_json({"type": "error", "status": status, "detail": detail})
