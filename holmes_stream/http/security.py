"""Authentication and rate-limit guards, security headers and HTTP request metrics."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

from litestar.connection import ASGIConnection
from litestar.enums import ScopeType
from litestar.handlers import BaseRouteHandler
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from holmes_stream import metrics
from holmes_stream.auth import Authenticator, AuthError, Principal
from holmes_stream.http.problems import Problem
from holmes_stream.ratelimit import Decision, RateLimiter
from holmes_stream.settings import ApiSettings

Guard = Callable[[ASGIConnection[Any, Any, Any, Any], BaseRouteHandler], Awaitable[None]]

_RATELIMIT_SCOPE_KEY = "holmes.ratelimit"
SECURITY: list[dict[str, list[str]]] = [{"bearer": []}, {"apiKey": []}]

# The progress page: its own script and style only; it talks to this origin only.
CSP_STRICT = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
# Swagger UI (at /docs) loads its bundle from a CDN and starts with an inline script.
CSP_DOCS = (
    "default-src 'none'; script-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; "
    "style-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; "
    "img-src 'self' data: https://cdn.jsdelivr.net; connect-src 'self'; base-uri 'none'; "
    "frame-ancestors 'none'"
)


def principal_of(connection: ASGIConnection[Any, Any, Any, Any]) -> Principal:
    return cast(Principal, connection.scope.get("user"))


def requires(scope: str, *, page_token: bool = False) -> Guard:
    """Authenticate, check ``scope``, then count the request against the caller's limit."""

    async def guard(
        connection: ASGIConnection[Any, Any, Any, Any], _handler: BaseRouteHandler
    ) -> None:
        auth: Authenticator = connection.app.state.authenticator
        token = connection.query_params.get("access_token") if page_token else None
        try:
            principal = auth.authenticate(
                connection.headers.get("authorization"), connection.headers.get("x-api-key"), token
            )
        except AuthError as exc:
            raise Problem(
                401,
                "Unauthorized",
                exc.detail,
                headers={"WWW-Authenticate": f'Bearer realm="holmes-stream", error="{exc.error}"'},
            ) from exc
        if principal.investigation_id is not None:
            wanted = connection.path_params.get("investigation_id")
            if wanted != principal.investigation_id:
                raise Problem(403, "Forbidden", "the access token is for another investigation")
        if not principal.allows(scope):
            raise Problem(403, "Forbidden", f"the {scope!r} scope is required")
        connection.scope["user"] = principal
        await _rate_limit(connection, principal)

    return guard


async def _rate_limit(connection: ASGIConnection[Any, Any, Any, Any], principal: Principal) -> None:
    limiter: RateLimiter = connection.app.state.rate_limiter
    who = principal.id
    if principal.kind == "anonymous":
        who = f"ip:{connection.client.host if connection.client else 'unknown'}"
    route = str(connection.scope.get("path_template") or connection.scope["path"])
    decision = await limiter.hit(who, str(connection.scope.get("method", "GET")), route)
    if decision is None:
        return
    cast(dict[str, Any], connection.scope)[_RATELIMIT_SCOPE_KEY] = decision
    if not decision.allowed:
        raise Problem(
            429,
            "Too many requests",
            f"more than {decision.limit} requests per {limiter.settings.window_seconds}s"
            f" on {route}; retry in {decision.retry_after_seconds}s",
            retry_after=decision.retry_after_seconds,
        )


def security_headers_hook(settings: ApiSettings) -> Callable[[Message, Scope], Awaitable[None]]:
    """A ``before_send`` hook: security and rate-limit headers on every answer, errors too.

    Headers are added as raw pairs in one pass (this runs on every response; a header
    object with a lookup per header costs more than the lookup handler itself).
    """
    common: list[tuple[bytes, bytes]] = [
        (b"x-content-type-options", b"nosniff"),
        (b"x-frame-options", b"DENY"),
        (b"referrer-policy", b"no-referrer"),
        (b"cross-origin-opener-policy", b"same-origin"),
        (b"permissions-policy", b"geolocation=(), microphone=(), camera=()"),
    ]
    if settings.hsts_max_age_seconds > 0:
        hsts = f"max-age={settings.hsts_max_age_seconds}; includeSubDomains".encode()
        common.append((b"strict-transport-security", hsts))
    strict = [*common, (b"content-security-policy", CSP_STRICT.encode())]
    docs = [*common, (b"content-security-policy", CSP_DOCS.encode())]

    async def before_send(message: Message, scope: Scope) -> None:
        if message["type"] != "http.response.start":
            return
        raw = list(message.get("headers") or ())
        present = {name.lower() for name, _ in raw}
        wanted = docs if scope.get("path", "").startswith("/docs") else strict
        raw.extend(pair for pair in wanted if pair[0] not in present)
        decision = cast(dict[str, Any], scope).get(_RATELIMIT_SCOPE_KEY)
        if isinstance(decision, Decision):
            for name, value in (
                (b"ratelimit-limit", decision.limit),
                (b"ratelimit-remaining", decision.remaining),
            ):
                if name not in present:
                    raw.append((name, str(value).encode()))
        message["headers"] = raw
        if "path_template" not in scope:  # no route matched: the middleware did not see it
            metrics.HTTP_REQUESTS.labels(
                scope.get("method", "GET"), "unmatched", str(message["status"])
            ).inc()

    return before_send


class HttpMetricsMiddleware(ASGIMiddleware):
    """Counts and times every routed request by its route template, never the raw path."""

    scopes = (ScopeType.HTTP,)

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await next_app(scope, receive, send_wrapper)
        finally:
            route = str(scope.get("path_template") or "unmatched")
            method = scope.get("method", "GET")
            metrics.HTTP_REQUESTS.labels(method, route, str(status)).inc()
            metrics.HTTP_DURATION.labels(method, route).observe(time.perf_counter() - started)
