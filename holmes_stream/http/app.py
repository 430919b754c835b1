"""App factory: one Litestar app over the same service layer as the workers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from aiokafka.errors import KafkaError
from litestar import Litestar, Router
from litestar.config.cors import CORSConfig
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme

from holmes_stream import telemetry
from holmes_stream.auth import ADMIN, Authenticator
from holmes_stream.http.alertmanager import AlertmanagerController
from holmes_stream.http.catalog import CatalogController
from holmes_stream.http.chat import ChatController, chat_socket
from holmes_stream.http.health import HealthController, MetricsController
from holmes_stream.http.investigations import InvestigationController
from holmes_stream.http.lookups import RecordReader
from holmes_stream.http.middleware import RequestMiddleware
from holmes_stream.http.problems import exception_handlers
from holmes_stream.http.security import (
    SECURITY,
    requires,
    security_headers_hook,
)
from holmes_stream.http.sse_hub import SSEHub
from holmes_stream.http.ui import UIController, static_router
from holmes_stream.ratelimit import RateLimiter
from holmes_stream.runtime import Runtime
from holmes_stream.settings import Settings, get_settings
from holmes_stream.store import RecordStore

log = logging.getLogger(__name__)

API_VERSION = "1"
# Connections of the HTTP layer's own Redis pool: a burst of clients (say a thousand SSE
# clients reconnecting after a deploy) waits for a free connection instead of failing.
HTTP_REDIS_CONNECTIONS = 64


async def _connect_later(runtime: Runtime) -> None:
    """Kafka was away at start: keep trying; until then submissions answer 503."""
    delay = 1.0
    while True:
        await asyncio.sleep(delay)
        try:
            await runtime.broker.connect()
            log.info("Kafka connected")
            return
        except (KafkaError, OSError) as exc:
            with contextlib.suppress(Exception):
                await runtime.broker.stop()
            log.warning("Kafka still unreachable: %s", exc)
            delay = min(delay * 2, 30.0)


def _warn_if_open(settings: Settings) -> None:
    if settings.auth.mode == "disabled":
        log.warning(
            "AUTHENTICATION IS DISABLED (HOLMES_STREAM_AUTH__MODE=disabled): every caller is"
            " admin of every tenant. Use this for local development only."
        )


def create_app(settings: Settings | None = None, runtime: Runtime | None = None) -> Litestar:
    """``runtime`` is given when API and worker share a process; else the app builds its own."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        _warn_if_open(settings)
        own = runtime is None
        rt = runtime or Runtime.build(settings, worker=False)
        reconnect: asyncio.Task[None] | None = None
        if own:
            try:
                await rt.start()
            except (KafkaError, OSError) as exc:
                # A publish-only API starts without Kafka: /ready says so, submissions get 503.
                log.warning("Kafka unreachable at start, retrying in the background: %s", exc)
                with contextlib.suppress(Exception):
                    await rt.broker.stop()
                reconnect = asyncio.create_task(_connect_later(rt))
        # Its own pool: in `run` mode the worker's traffic must not queue API requests.
        store = RecordStore.connect(settings.redis, HTTP_REDIS_CONNECTIONS, pool_timeout=10)
        redis = store.redis
        hub = SSEHub(settings.redis.url, store, block_ms=5000)
        await hub.start()
        async with httpx.AsyncClient(timeout=3) as client:
            app.state.update(
                settings=settings,
                store=store,
                records=RecordReader(store),
                service=rt.service,
                broker=rt.broker,
                http_client=client,
                sse_hub=hub,
                authenticator=Authenticator(settings.auth),
                rate_limiter=RateLimiter(redis, settings.redis.key_prefix, settings.ratelimit),
            )
            try:
                yield
            finally:
                if reconnect is not None:
                    reconnect.cancel()
                await hub.stop()
                await redis.aclose(close_connection_pool=True)
                if own:
                    await rt.stop()

    return Litestar(
        route_handlers=build_routes(settings),
        lifespan=[lifespan],
        exception_handlers=exception_handlers,
        request_max_body_size=settings.api.max_body_bytes,
        middleware=[RequestMiddleware],
        plugins=_plugins(settings),
        before_send=[security_headers_hook(settings.api)],
        cors_config=_cors(settings),
        openapi_config=openapi_config(),
        # Logging is ours (logs.configure): Litestar's default would replace the root handler,
        # and with it the JSON format, the log context and the redaction of secrets.
        logging_config=None,
    )


def build_routes(settings: Settings) -> list[Any]:
    metrics_guards = [requires(ADMIN)] if settings.auth.protect_metrics else []
    metrics_security = SECURITY if settings.auth.protect_metrics else None
    return [
        InvestigationController,
        ChatController,
        chat_socket,
        CatalogController,
        AlertmanagerController,
        HealthController,
        Router(
            "/",
            route_handlers=[MetricsController],
            guards=metrics_guards,
            security=metrics_security,
        ),
        UIController,
        static_router,
    ]


def _plugins(settings: Settings) -> list[Any]:
    """Tracing of every request (continuing an incoming ``traceparent``) when it is on."""
    tel = telemetry.setup(settings.telemetry)
    return [] if tel is None else [tel.litestar_plugin()]


def _cors(settings: Settings) -> CORSConfig | None:
    if not settings.api.cors_origins:
        return None
    return CORSConfig(
        allow_origins=settings.api.cors_origins,
        allow_methods=["GET", "POST", "OPTIONS"],
        allow_headers=["Authorization", "Content-Type", "Last-Event-ID", "X-API-Key"],
        expose_headers=[
            "Location",
            "Retry-After",
            "RateLimit-Limit",
            "RateLimit-Remaining",
            "X-Request-ID",
        ],
        allow_credentials=False,
        max_age=600,
    )


def openapi_config() -> OpenAPIConfig:
    return OpenAPIConfig(
        title="holmes-stream",
        version=API_VERSION,
        description=(
            "AI root-cause investigations of Alertmanager alerts with HolmesGPT. Errors are"
            " RFC 7807 `application/problem+json`. Authenticate with `Authorization: Bearer"
            " <JWT or API key>` or `X-API-Key`; scopes `investigations:read`,"
            " `investigations:write`, `admin`."
        ),
        path="/docs",
        render_plugins=[SwaggerRenderPlugin()],
        components=Components(
            security_schemes={
                "bearer": SecurityScheme(
                    type="http",
                    scheme="bearer",
                    bearer_format="JWT or API key",
                    description="A JWT (HS256/RS256, `aud`, `iss`, `exp` checked) or an API key",
                ),
                "apiKey": SecurityScheme(
                    type="apiKey", name="X-API-Key", security_scheme_in="header"
                ),
            }
        ),
    )
