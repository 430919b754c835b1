"""REST submit, lookup, list and cancel; Server-Sent Events of progress."""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, cast

from aiokafka.errors import KafkaError
from faststream.exceptions import IncorrectState
from litestar import Controller, MediaType, Request, get, post
from litestar.datastructures import State
from litestar.params import Body, HeaderParameter, PathParameter, QueryParameter
from litestar.response import Response, ServerSentEvent, ServerSentEventMessage, Stream
from litestar.types import Scope
from pydantic import BaseModel

from holmes_stream import metrics
from holmes_stream.auth import READ, WRITE, Authenticator, Principal
from holmes_stream.http.choices import check_model, check_toolsets
from holmes_stream.http.middleware import DIRECT, Answer, Direct
from holmes_stream.http.problems import Problem
from holmes_stream.http.security import SECURITY, authorize, requires
from holmes_stream.http.sse_hub import SSEHub, encode_event
from holmes_stream.intake import AlertWork, RejectedMessage, parse_payload
from holmes_stream.schemas import InvestigationRecord, ProgressEvent, Status
from holmes_stream.store import RecordStore

MAX_ID = 300
InvestigationId = Annotated[str, PathParameter(description="Investigation id", max_length=MAX_ID)]
AccessToken = Annotated[
    str | None,
    QueryParameter(
        description="Short-lived page token (for EventSource and the browser page), instead of"
        " a header; see POST /api/v1/investigations/{id}/access-token"
    ),
]


class SubmittedInvestigation(BaseModel):
    id: str
    status: Status
    duplicate: bool
    href: str


class SubmitResponse(BaseModel):
    investigations: list[SubmittedInvestigation]


class InvestigationPage(BaseModel):
    items: list[InvestigationRecord]
    next_cursor: str | None


class AccessTokenResponse(BaseModel):
    access_token: str
    expires_at: datetime
    page_url: str


# ------------------------------------------------------------------------------- helpers
def _principal(request: Request[Any, Any, Any]) -> Principal:
    return cast(Principal, request.scope["user"])


def submission_tenant(principal: Principal, payload: Any) -> str | None:
    """The tenant a submission is made for; a tenant principal cannot submit for another."""
    body_tenant = None
    if isinstance(payload, dict) and payload.get("kind") == "investigation_request":
        raw = payload.get("tenant")
        body_tenant = raw if isinstance(raw, str) and raw else None
    if principal.tenant is not None:
        if body_tenant not in (None, principal.tenant):
            raise Problem(403, "Forbidden", f"tenant: you may submit only for {principal.tenant!r}")
        return principal.tenant
    if body_tenant is not None and not principal.is_admin:
        raise Problem(403, "Forbidden", "tenant: only an admin may submit for a tenant")
    return body_tenant


def works_of(payload: Any, principal: Principal) -> list[AlertWork]:
    tenant = submission_tenant(principal, payload)
    try:
        works = parse_payload(payload, tenant)
    except RejectedMessage as exc:
        raise Problem(422, "Invalid alert payload", exc.detail) from exc
    return [replace(w, tenant=tenant) for w in works]


def _base_url(request: Request[Any, Any, Any]) -> str:
    public = request.app.state.settings.api.public_url
    return (public or str(request.base_url)).rstrip("/")


async def submit_works(
    request: Request[Any, Any, Any], works: list[AlertWork]
) -> Response[SubmitResponse]:
    """Hand the works to Kafka; 503 with Retry-After whenever Kafka does not take them."""
    state = request.app.state
    try:
        async with asyncio.timeout(state.settings.api.submit_timeout_seconds):
            submissions = await state.service.submit(works)
    except (KafkaError, IncorrectState, TimeoutError, OSError) as exc:
        raise Problem(
            503,
            "Service unavailable",
            f"Kafka did not take the alerts ({type(exc).__name__}); retry later",
            retry_after=5,
        ) from exc
    base = _base_url(request)
    items = [
        SubmittedInvestigation(
            id=s.id,
            status=s.status,
            duplicate=s.duplicate,
            href=f"{base}/api/v1/investigations/{s.id}",
        )
        for s in submissions
    ]
    return Response(
        SubmitResponse(investigations=items), status_code=202, headers={"Location": items[0].href}
    )


async def load_visible(
    store: RecordStore, principal: Principal, investigation_id: str
) -> InvestigationRecord:
    """The record, or 404 when it does not exist or belongs to another tenant."""
    record = await store.get(investigation_id)
    if record is None or not principal.can_see(record.tenant, record.id):
        raise Problem(404, "Not found", f"no investigation with id {investigation_id!r}")
    return record


def visible_raw(principal: Principal, raw: bytes, investigation_id: str) -> bool:
    """``can_see`` on a record as stored; its JSON is parsed only when the tenant matters."""
    tenant = None if principal.is_admin else json.loads(raw).get("tenant")
    return principal.can_see(tenant, investigation_id)


def _direct_lookup_accepts(scope: Scope) -> bool:
    """The common case: no query string (a page token goes through the handler) and an id
    that the path parameter's validation accepts (else the handler answers its 400)."""
    return not scope["query_string"] and len(scope["path_params"]["investigation_id"]) <= MAX_ID


async def _direct_lookup(scope: Scope) -> Answer:
    """``lookup`` on the raw ASGI scope: the stored JSON is the answer (the hottest read path;
    see holmes_stream/http/middleware.py). Same guard, same Redis read, same problems."""
    investigation_id: str = scope["path_params"]["investigation_id"]
    principal = await authorize(scope, READ)
    raw = await scope["litestar_app"].state.records.get_raw(investigation_id)
    if raw is None or not visible_raw(principal, raw, investigation_id):
        raise Problem(404, "Not found", f"no investigation with id {investigation_id!r}")
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(raw))]
    return 200, headers, raw


def encode_cursor(score: float, member: str) -> str:
    raw = json.dumps([score, member], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        score, member = json.loads(raw)
        if not isinstance(member, str):
            raise ValueError("member")
        return float(score), member
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError) as exc:
        raise Problem(400, "Invalid request parameter", "cursor: not a cursor of this API") from exc


def _epoch(value: datetime | None) -> float | None:
    if value is None:
        return None
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()


def _matches(
    record: InvestigationRecord,
    status: Status | None,
    alertname: str | None,
    namespace: str | None,
    severity: str | None,
) -> bool:
    alert = record.alert
    return (
        (status is None or record.status == status)
        and (alertname is None or alert.alertname == alertname)
        and (namespace is None or alert.namespace == namespace)
        and (severity is None or alert.severity == severity)
    )


# ---------------------------------------------------------------------------- controller
class InvestigationController(Controller):
    path = "/api/v1/investigations"
    tags = ["investigations"]
    security = SECURITY

    @post(
        "/",
        status_code=202,
        summary="Submit an alert, an Alertmanager group or an investigation request",
        description=(
            "The body is one of: an Alertmanager webhook v4 group (`alerts` list), a bare"
            " alert (`labels`, `startsAt`, ...), or an explicit request"
            ' `{"kind": "investigation_request", "alert": {...}, "question": ...,'
            ' "model": ..., "toolsets": [...]}`. Answers 202 with the investigation ids'
            " (deterministic per firing episode, tenant-prefixed for tenant callers) and a"
            " Location header; 422 for an invalid payload, a model that is not configured or"
            " a toolset the workers have not enabled (as `GET /api/v1/toolsets` lists them);"
            " 503 with Retry-After when Kafka does not take the message."
        ),
        guards=[requires(WRITE)],
    )
    async def submit(
        self,
        request: Request[Any, Any, Any],
        data: Annotated[
            dict[str, Any], Body(description="Alert, webhook v4 group or investigation request")
        ],
    ) -> Response[SubmitResponse]:
        works = works_of(data, _principal(request))
        state = request.app.state
        for model in {w.model for w in works}:
            check_model(state, model)
        await check_toolsets(state, (t for w in works for t in w.toolsets or ()))
        return await submit_works(request, works)

    @get(
        "/{investigation_id:str}",
        summary="Look up an investigation",
        guards=[requires(READ, page_token=True)],
        opt={DIRECT: Direct(_direct_lookup_accepts, _direct_lookup)},
    )
    async def lookup(
        self,
        request: Request[Any, Any, Any],
        state: State,
        investigation_id: InvestigationId,
        access_token: AccessToken = None,
    ) -> Response[InvestigationRecord]:
        # The common case (no query string) is answered by _direct_lookup instead.
        raw = await state.records.get_raw(investigation_id)
        if raw is None or not visible_raw(_principal(request), raw, investigation_id):
            raise Problem(404, "Not found", f"no investigation with id {investigation_id!r}")
        return Response(raw, media_type=MediaType.JSON)

    @get("/", summary="List investigations, newest first", guards=[requires(READ)])
    async def list_investigations(
        self,
        request: Request[Any, Any, Any],
        state: State,
        status: Annotated[Status | None, QueryParameter(description="Only this status")] = None,
        alertname: Annotated[str | None, QueryParameter(description="Only this alertname")] = None,
        namespace: Annotated[str | None, QueryParameter(description="Only this namespace")] = None,
        severity: Annotated[str | None, QueryParameter(description="Only this severity")] = None,
        tenant: Annotated[
            str | None, QueryParameter(description="Only this tenant (admin; others: their own)")
        ] = None,
        since: Annotated[
            datetime | None, QueryParameter(description="Created at or after (RFC 3339)")
        ] = None,
        until: Annotated[
            datetime | None, QueryParameter(description="Created at or before (RFC 3339)")
        ] = None,
        cursor: Annotated[
            str | None, QueryParameter(description="next_cursor of the previous page")
        ] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=500, description="Page size")] = 50,
    ) -> InvestigationPage:
        principal = _principal(request)
        store: RecordStore = state.store
        lo, hi = _epoch(since), _epoch(until)
        if lo is not None and hi is not None and lo > hi:
            raise Problem(400, "Invalid request parameter", "since: later than until")
        index: tuple[str, ...] | None
        if not principal.is_admin:
            if tenant not in (None, principal.tenant):
                raise Problem(403, "Forbidden", "tenant: you may list only your own tenant")
            index = ("tenant", principal.tenant) if principal.tenant else ("untenanted",)
        elif tenant:
            index = ("tenant", tenant)
        elif alertname:
            index = ("alertname", alertname)
        elif namespace:
            index = ("ns", namespace)
        else:
            index = None
        position = decode_cursor(cursor) if cursor else None
        items: list[InvestigationRecord] = []
        budget = max(500, limit * 10)  # index entries read per page at most: pages may be short
        exhausted = False
        while len(items) < limit and budget > 0:
            rows = await store.list_page(
                index, cursor=position, since=lo, until=hi, batch=min(budget, max(limit, 50))
            )
            if not rows:
                exhausted = True
                break
            found = {r.id: r for r in await store.get_many([m for m, _ in rows])}
            for member, score in rows:
                budget -= 1
                position = (score, member)
                record = found.get(member)
                if (
                    record is not None
                    and principal.can_see(record.tenant)
                    and _matches(record, status, alertname, namespace, severity)
                ):
                    items.append(record)
                    if len(items) == limit:
                        break
        next_cursor = None if exhausted or position is None else encode_cursor(*position)
        return InvestigationPage(items=items, next_cursor=next_cursor)

    @post(
        "/{investigation_id:str}/cancel",
        status_code=202,
        summary="Cancel an investigation",
        guards=[requires(WRITE)],
    )
    async def cancel(
        self, request: Request[Any, Any, Any], state: State, investigation_id: InvestigationId
    ) -> InvestigationRecord:
        record = await load_visible(state.store, _principal(request), investigation_id)
        if not record.status.terminal:
            await state.service.cancel(investigation_id)
        return record

    @post(
        "/{investigation_id:str}/access-token",
        status_code=201,
        summary="A short-lived read-only token for the progress page of one investigation",
        guards=[requires(READ)],
    )
    async def access_token(
        self, request: Request[Any, Any, Any], state: State, investigation_id: InvestigationId
    ) -> AccessTokenResponse:
        principal = _principal(request)
        record = await load_visible(state.store, principal, investigation_id)
        auth: Authenticator = state.authenticator
        token, expires = auth.issue_page_token(principal, record.id, record.tenant)
        return AccessTokenResponse(
            access_token=token,
            expires_at=datetime.fromtimestamp(expires, UTC),
            page_url=f"{_base_url(request)}/ui/investigations/{record.id}?access_token={token}",
        )

    @get(
        "/{investigation_id:str}/events",
        summary="Progress as Server-Sent Events",
        description=(
            "Replays the stored events after `Last-Event-ID` (the event sequence number), then"
            " follows live ones; keep-alive comments while idle; the stream ends after the"
            " terminal event (completed, failed, cancelled, skipped, budget_exceeded). Any"
            " replica can resume any stream."
        ),
        guards=[requires(READ, page_token=True)],
    )
    async def events(
        self,
        request: Request[Any, Any, Any],
        state: State,
        investigation_id: InvestigationId,
        last_event_id: Annotated[
            str | None, HeaderParameter(name="Last-Event-ID", description="Resume after this")
        ] = None,
        access_token: AccessToken = None,
    ) -> ServerSentEvent:
        record = await load_visible(state.store, _principal(request), investigation_id)
        start = int(last_event_id) if last_event_id and last_event_id.isdigit() else 0
        keepalive = state.settings.api.sse_keepalive_seconds
        stream = event_stream(state.store, state.sse_hub, record, start, keepalive)
        return EventStream(stream, headers={"X-Accel-Buffering": "no"})


class _Encoded(ServerSentEventMessage):
    """A message whose wire form is already known."""

    def __init__(self, encoded: bytes) -> None:
        super().__init__()
        self._encoded = encoded

    def encode(self) -> bytes:
        return self._encoded


def sse_message(event: ProgressEvent) -> ServerSentEventMessage:
    """An event as SSE, encoded once for all the clients that follow its investigation."""
    return _Encoded(encode_event(event))


RETRY_MS = 2000
# What ServerSentEvent(retry_duration=RETRY_MS) sends first, and its keep-alive comment.
_RETRY = f"retry: {RETRY_MS}\r\n".encode()
_KEEPALIVE = ServerSentEventMessage(comment="keep-alive", data=None).encode()


class EventStream(ServerSentEvent):
    """A ``ServerSentEvent`` whose chunks are wire bytes already: none of Litestar's
    per-message layers (iterator wrappers, encoding, a thread hop for the first chunk), and
    one body write per wake-up of the client however many events are pending."""

    def __init__(self, chunks: AsyncIterator[bytes], headers: dict[str, str]) -> None:
        Stream.__init__(self, chunks, media_type="text/event-stream", headers=headers)
        # The headers ServerSentEvent sets.
        self.headers.setdefault("Cache-Control", "no-cache")
        self.headers["Connection"] = "keep-alive"
        self.headers["X-Accel-Buffering"] = "no"


def _wire(events: list[ProgressEvent]) -> bytes:
    return b"".join(encode_event(e) for e in events)


def _long_finished(record: InvestigationRecord | None, grace: float) -> bool:
    """Terminal long enough ago that its terminal event must be stored (it is written last)."""
    if record is None:
        return True
    if not record.status.terminal:
        return False
    finished = record.finished_at or record.created_at
    return finished < datetime.now(UTC) - timedelta(seconds=grace)


async def event_stream(
    store: RecordStore, hub: SSEHub, record: InvestigationRecord, after: int, keepalive: float
) -> AsyncIterator[bytes]:
    metrics.SSE_CLIENTS.inc()
    investigation_id = record.id
    watch = None
    try:
        yield _RETRY
        if _long_finished(record, keepalive):
            if replay := await store.replay(record, after):
                yield _wire(replay)
            return
        watch = await hub.watch(investigation_id)
        if replay := await store.replay(record, after):
            ends = next((i for i, e in enumerate(replay) if e.terminal), None)
            yield _wire(replay if ends is None else replay[: ends + 1])
            if ends is not None:
                return
            after = replay[-1].seq
        while True:
            items = await watch.next(keepalive)
            if not items:
                current = await store.get(investigation_id)
                if _long_finished(current, keepalive):
                    if current is None:  # gone: what is left of its events
                        replay = await store.events_after(investigation_id, after)
                    else:
                        replay = await store.replay(current, after)
                    if replay:
                        yield _wire(replay)
                    return
                yield _KEEPALIVE
                continue
            out: list[bytes] = []
            ended = False
            for item in items:
                if item.event.seq <= after:
                    continue
                out.append(item.wire)
                after = item.event.seq
                if item.event.terminal:
                    ended = True
                    break
            if out:
                yield b"".join(out)
            if ended:
                return
    finally:
        if watch is not None:
            hub.unwatch(watch)
        metrics.SSE_CLIENTS.dec()
