"""Per-request log context: every log line of a request carries its request id."""

from __future__ import annotations

import re
import uuid

from litestar.datastructures import MutableScopeHeaders
from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from holmes_stream import logcontext

REQUEST_ID_HEADER = "X-Request-ID"
# A caller's request id is kept when it is a plain token; anything else is replaced.
_SANE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def request_id_of(scope: Scope) -> str:
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            text = value.decode("latin-1")
            if _SANE_ID.match(text):
                return text
            break
    return uuid.uuid4().hex


class RequestContextMiddleware(ASGIMiddleware):
    """Binds ``request_id`` (the caller's ``X-Request-ID`` or a new one) to the log context of
    the request and answers it in ``X-Request-ID``; the trace id comes from the current span
    when tracing is on."""

    scopes = (ScopeType.HTTP, ScopeType.WEBSOCKET)

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        request_id = request_id_of(scope)

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableScopeHeaders.from_message(message).setdefault(REQUEST_ID_HEADER, request_id)
            await send(message)

        with logcontext.bind(request_id=request_id):
            await next_app(scope, receive, send_wrapper)
