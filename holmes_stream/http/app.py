"""App factory: one Litestar app over the same service layer as the workers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from litestar import Litestar
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin

from holmes_stream.http.alertmanager import AlertmanagerController
from holmes_stream.http.health import HealthController
from holmes_stream.http.investigations import InvestigationController
from holmes_stream.http.problems import exception_handlers
from holmes_stream.runtime import Runtime
from holmes_stream.settings import Settings, get_settings


def create_app(settings: Settings | None = None, runtime: Runtime | None = None) -> Litestar:
    """``runtime`` is given when API and worker share a process; else the app builds its own."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        own = runtime is None
        rt = runtime or Runtime.build(settings, worker=False)
        if own:
            await rt.start()
        async with httpx.AsyncClient(timeout=3) as client:
            app.state.update(
                settings=settings,
                store=rt.store,
                service=rt.service,
                broker=rt.broker,
                http_client=client,
            )
            try:
                yield
            finally:
                if own:
                    await rt.stop()

    return Litestar(
        route_handlers=[
            InvestigationController,
            AlertmanagerController,
            HealthController,
        ],
        lifespan=[lifespan],
        exception_handlers=exception_handlers,
        request_max_body_size=settings.api.max_body_bytes,
        openapi_config=OpenAPIConfig(
            title="holmes-stream",
            version="1",
            path="/docs",
            render_plugins=[SwaggerRenderPlugin()],
        ),
    )
