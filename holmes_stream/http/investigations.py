"""REST submit, lookup, list and cancel; Server-Sent Events of progress."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated, Any

from litestar import Controller, Request, get, post
from litestar.datastructures import State
from litestar.params import Body, Parameter
from litestar.response import Response, ServerSentEvent, ServerSentEventMessage
from pydantic import BaseModel

from holmes_stream import metrics
from holmes_stream.intake import AlertWork, RejectedMessage, parse_payload
from holmes_stream.http.problems import Problem
from holmes_stream.schemas import InvestigationRecord, Status
from holmes_stream.service import InvestigationService
from holmes_stream.store import RecordStore


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


def _works(payload: Any, tenant: str | None) -> list[AlertWork]:
    try:
        return parse_payload(payload, tenant)
    except RejectedMessage as exc:
        raise Problem(422, "Invalid alert payload", exc.detail) from exc


async def submit_works(
    request: Request[Any, Any, Any], service: InvestigationService, works: list[AlertWork]
) -> Response[SubmitResponse]:
    submissions = await service.submit(works)
    base = str(request.base_url).rstrip("/")
    items = [
        SubmittedInvestigation(
            id=s.id, status=s.status, duplicate=s.duplicate, href=f"{base}/api/v1/investigations/{s.id}"
        )
        for s in submissions
    ]
    return Response(
        SubmitResponse(investigations=items), status_code=202, headers={"Location": items[0].href}
    )


async def _load(store: RecordStore, investigation_id: str) -> InvestigationRecord:
    record = await store.get(investigation_id)
    if record is None:
        raise Problem(404, "Not found", f"no investigation with id {investigation_id!r}")
    return record


class InvestigationController(Controller):
    path = "/api/v1/investigations"
    tags = ["investigations"]

    @post(
        "/",
        status_code=202,
        summary="Submit an alert, an Alertmanager group or an investigation request",
    )
    async def submit(
        self,
        request: Request[Any, Any, Any],
        state: State,
        data: Annotated[dict[str, Any], Body(description="Alert, webhook v4 group or request")],
    ) -> Response[SubmitResponse]:
        return await submit_works(request, state.service, _works(data, None))

    @get("/{investigation_id:str}", summary="Look up an investigation")
    async def lookup(self, state: State, investigation_id: str) -> InvestigationRecord:
        return await _load(state.store, investigation_id)

    @get("/", summary="List investigations, newest first")
    async def list_investigations(
        self,
        state: State,
        status: Status | None = None,
        alertname: str | None = None,
        namespace: str | None = None,
        severity: str | None = None,
        cursor: str | None = Parameter(None, description="next_cursor of the previous page"),
        limit: int = Parameter(50, ge=1, le=500),
    ) -> InvestigationPage:
        store: RecordStore = state.store
        index = ("alertname", alertname) if alertname else ("ns", namespace) if namespace else None
        before = float(cursor) if cursor else None
        items: list[InvestigationRecord] = []
        next_cursor = None
        while len(items) < limit:
            rows = await store.list_ids(index, before=before, limit=limit)
            if not rows:
                break
            for record in await store.get_many([i for i, _ in rows]):
                if _matches(record, status, alertname, namespace, severity):
                    items.append(record)
            before = rows[-1][1]
            next_cursor = repr(before)
            if len(rows) < limit:
                next_cursor = None
                break
        return InvestigationPage(items=items[:limit], next_cursor=next_cursor)

    @post("/{investigation_id:str}/cancel", status_code=202, summary="Cancel an investigation")
    async def cancel(self, state: State, investigation_id: str) -> InvestigationRecord:
        record = await _load(state.store, investigation_id)
        if not record.status.terminal:
            await state.service.cancel(investigation_id)
        return record

    @get("/{investigation_id:str}/events", summary="Progress as Server-Sent Events")
    async def events(
        self,
        state: State,
        investigation_id: str,
        last_event_id: str | None = Parameter(None, header="Last-Event-ID"),
    ) -> ServerSentEvent:
        store: RecordStore = state.store
        await _load(store, investigation_id)
        start = int(last_event_id) if last_event_id and last_event_id.isdigit() else 0
        keepalive = state.settings.api.sse_keepalive_seconds
        return ServerSentEvent(_event_stream(store, investigation_id, start, keepalive))


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


async def _event_stream(
    store: RecordStore, investigation_id: str, after: int, keepalive: float
) -> AsyncIterator[ServerSentEventMessage]:
    metrics.SSE_CLIENTS.inc()
    try:
        events = await store.events_after(investigation_id, after)
        while True:
            for event in events:
                yield ServerSentEventMessage(
                    data=event.model_dump_json(), event=event.type, id=event.seq
                )
                after = event.seq
                if event.terminal:
                    return
            events = await store.wait_events(investigation_id, after, int(keepalive * 1000))
            if not events:
                yield ServerSentEventMessage(comment="keep-alive")
    except asyncio.CancelledError:
        raise
    finally:
        metrics.SSE_CLIENTS.dec()
