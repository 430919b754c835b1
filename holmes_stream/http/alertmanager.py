"""Alertmanager's webhook receiver: point a ``webhook_configs`` URL here."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, post
from litestar.datastructures import State
from litestar.response import Response

from holmes_stream.http.investigations import SubmitResponse, _works, submit_works
from holmes_stream.http.problems import Problem
from holmes_stream.schemas import AlertGroup


class AlertmanagerController(Controller):
    path = "/api/v1/alertmanager"
    tags = ["alertmanager"]

    @post(
        "/",
        status_code=202,
        summary="Alertmanager webhook v4 receiver",
        description=(
            "Answers 5xx whenever the alerts could not be handed to Kafka, so that Alertmanager"
            " retries; 4xx only for payloads that can never be accepted."
        ),
    )
    async def receive(
        self, request: Request[Any, Any, Any], state: State, data: AlertGroup
    ) -> Response[SubmitResponse]:
        if not data.alerts:
            raise Problem(422, "Invalid alert payload", "alerts: the group has no alerts")
        payload = data.model_dump(mode="json")
        return await submit_works(request, state.service, _works(payload, None))
