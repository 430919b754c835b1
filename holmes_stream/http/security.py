"""Authentication and rate-limit guards, and the security headers of every answer."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, cast

from litestar.connection import ASGIConnection
from litestar.handlers import BaseRouteHandler
from litestar.types import Message, Scope

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


def credentials_of(scope: Scope) -> tuple[str | None, str | None]:
    """The first ``Authorization`` and ``X-API-Key`` values, read off the raw headers (names
    compared case-insensitively, values latin-1, as Litestar's ``Headers.get`` does)."""
    authorization = api_key = None
    for name, value in scope["headers"]:
        lowered = name.lower()
        if lowered == b"authorization":
            if authorization is None:
                authorization = value.decode("latin-1")
        elif lowered == b"x-api-key" and api_key is None:
            api_key = value.decode("latin-1")
    return authorization, api_key


async def authorize(scope: Scope, required: str, page_token: str | None = None) -> Principal:
    """Authenticate, check ``required``, then count the request against the caller's limit.

    Works on the raw ASGI scope so that the route guards and the direct lookup path
    (holmes_stream/http/middleware.py) share one implementation.
    """
    state = scope["litestar_app"].state
    auth: Authenticator = state.authenticator
    authorization, api_key = credentials_of(scope)
    try:
        principal = auth.authenticate(authorization, api_key, page_token)
    except AuthError as exc:
        raise Problem(
            401,
            "Unauthorized",
            exc.detail,
            headers={"WWW-Authenticate": f'Bearer realm="holmes-stream", error="{exc.error}"'},
        ) from exc
    if principal.investigation_id is not None:
        wanted = scope["path_params"].get("investigation_id")
        if wanted != principal.investigation_id:
            raise Problem(403, "Forbidden", "the access token is for another investigation")
    if not principal.allows(required):
        raise Problem(403, "Forbidden", f"the {required!r} scope is required")
    scope["user"] = principal
    await _rate_limit(scope, state.rate_limiter, principal)
    return principal


def requires(scope: str, *, page_token: bool = False) -> Guard:
    """A guard: :func:`authorize` with ``scope`` (and ``?access_token=`` when ``page_token``)."""

    async def guard(
        connection: ASGIConnection[Any, Any, Any, Any], _handler: BaseRouteHandler
    ) -> None:
        token = connection.query_params.get("access_token") if page_token else None
        await authorize(connection.scope, scope, token)

    return guard


async def _rate_limit(scope: Scope, limiter: RateLimiter, principal: Principal) -> None:
    who = principal.id
    if principal.kind == "anonymous":
        client = scope.get("client")
        who = f"ip:{client[0] if client else 'unknown'}"
    route = str(scope.get("path_template") or scope["path"])
    decision = await limiter.hit(who, str(scope.get("method", "GET")), route)
    if decision is None:
        return
    cast(dict[str, Any], scope)[_RATELIMIT_SCOPE_KEY] = decision
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
