"""The one middleware of every route: request id and log context, route metrics, direct paths.

One pure-ASGI middleware instead of a chain: each layer costs a coroutine call per request
and per streamed chunk, which showed up in profiles of the lookup and of 1,000 SSE clients.

A route handler may name, in ``opt[DIRECT]``, a :class:`Direct` implementation of its common
case written against the raw ASGI scope; the middleware calls it instead of Litestar's handler
machinery (request object, signature model, response object) when it ``accepts`` the request,
and Litestar's handler otherwise. It runs after Litestar's routing (so 404/405, path
parameters and exception handlers are Litestar's). It returns the response instead of sending
it, so the middleware sends it without wrapping ``send`` in layers that watch for errors
after the response started (there can be none); what it raises goes through Litestar's
exception handling as a handler's errors do: the same problem+json answers, with the request
id and metrics.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from litestar.middleware._internal.exceptions import ExceptionHandlerMiddleware
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from prometheus_client.metrics import Counter, Histogram

from holmes_stream import logcontext, metrics
from holmes_stream.http.requestcontext import request_id_of

DIRECT = "holmes.direct"
_REQUEST_ID = b"x-request-id"


# A direct answer: status, headers, body.
Answer = tuple[int, list[tuple[bytes, bytes]], bytes]


class Direct:
    """A route's common case: ``answer`` computes the response from the raw scope, or raises
    as the handler would; ``accepts`` must not have side effects."""

    def __init__(
        self, accepts: Callable[[Scope], bool], answer: Callable[[Scope], Awaitable[Answer]]
    ) -> None:
        self.accepts = accepts
        self.answer = answer


async def _answer_error(exc: Exception, scope: Scope, receive: Receive, send: Send) -> None:
    """Litestar's answer to a handler's exception: the exception handling it puts around a
    handler when a route has middleware."""

    async def raising(_scope: Scope, _receive: Receive, _send: Send) -> None:
        raise exc

    await ExceptionHandlerMiddleware(app=raising, debug=None)(scope, receive, send)


# Labelled children by (method, route, status): ``labels()`` takes a lock and builds a key
# on every call; routes and statuses are few.
_children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}


def _metrics_of(method: str, route: str, status: int) -> tuple[Counter, Histogram]:
    key = (method, route, status)
    found = _children.get(key)
    if found is None:
        found = _children[key] = (
            metrics.HTTP_REQUESTS.labels(method, route, str(status)),
            metrics.HTTP_DURATION.labels(method, route),
        )
    return found


class RequestMiddleware:
    """Binds ``request_id`` (the caller's ``X-Request-ID`` or a new one) to the log context of
    the request and answers it in ``X-Request-ID``; counts and times every routed HTTP request
    by its route template, never the raw path; dispatches to a route's :class:`Direct` path."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request_id = request_id_of(scope)
        if scope["type"] != "http":
            with logcontext.bind(request_id=request_id):
                await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        request_id_header = (_REQUEST_ID, request_id.encode("latin-1"))

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers") or ())
                if not any(name.lower() == _REQUEST_ID for name, _ in headers):
                    headers.append(request_id_header)
                message["headers"] = headers
            await send(message)

        direct: Direct | None = scope["route_handler"].opt.get(DIRECT)
        with logcontext.bind(request_id=request_id):
            try:
                if direct is None or not direct.accepts(scope):
                    await self.app(scope, receive, send_wrapper)
                else:
                    try:
                        status, headers, body = await direct.answer(scope)
                    except Exception as exc:
                        status = 500
                        await _answer_error(exc, scope, receive, send_wrapper)
                    else:
                        headers.append(request_id_header)
                        await send(
                            {"type": "http.response.start", "status": status, "headers": headers}
                        )
                        await send({"type": "http.response.body", "body": body, "more_body": False})
            finally:
                method = str(scope.get("method", "GET"))
                route = str(scope.get("path_template") or "unmatched")
                count, duration = _metrics_of(method, route, status)
                count.inc()
                duration.observe(time.perf_counter() - started)
