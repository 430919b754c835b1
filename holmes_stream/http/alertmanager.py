"""Alertmanager's webhook receiver: point a ``webhook_configs`` URL here.

Alertmanager retries only on 5xx, so every failure to hand the alerts to Kafka (or to reach
Redis) is a 503 with Retry-After; a 4xx means the payload can never be accepted.
"""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, post
from litestar.params import JSONBody
from litestar.response import Response

from holmes_stream.auth import WRITE
from holmes_stream.http.investigations import SubmitResponse, submit_works, works_of
from holmes_stream.http.security import SECURITY, principal_of, requires
from holmes_stream.schemas import AlertGroup


class AlertmanagerController(Controller):
    path = "/api/v1/alertmanager"
    tags = ["alertmanager"]
    security = SECURITY

    @post(
        "/",
        status_code=202,
        summary="Alertmanager webhook v4 receiver",
        description=(
            "Answers 5xx (503 with Retry-After) whenever the alerts could not be handed to"
            " Kafka, so that Alertmanager retries; 4xx only for payloads that can never be"
            " accepted. Re-sent groups map to the same investigations (one per firing episode)."
        ),
        guards=[requires(WRITE)],
    )
    async def receive(
        self, request: Request[Any, Any, Any], data: JSONBody[AlertGroup]
    ) -> Response[SubmitResponse]:
        payload = data.model_dump(mode="json")
        return await submit_works(request, works_of(payload, principal_of(request)))
