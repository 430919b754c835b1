"""Liveness, readiness with per-check detail, and Prometheus metrics."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
from litestar import Controller, Response, get
from litestar.datastructures import State
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from holmes_stream import metrics


async def _check(name: str, probe: Any) -> tuple[str, dict[str, Any]]:
    started = time.perf_counter()
    try:
        await asyncio.wait_for(probe, timeout=3)
        return name, {"ok": True, "ms": round((time.perf_counter() - started) * 1000, 1)}
    except Exception as exc:
        return name, {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]}


async def _llm_reachable(client: httpx.AsyncClient, api_base: str | None) -> None:
    if api_base is None:
        return  # the provider's default endpoint; nothing local to check
    # Any HTTP answer proves the endpoint is there; authentication is not checked here.
    await client.get(api_base.rstrip("/") + "/models")


async def _kafka_reachable(state: State) -> None:
    if not await state.broker.ping(timeout=3):
        raise ConnectionError("Kafka broker did not answer")


class HealthController(Controller):
    """Open: liveness and readiness never need credentials."""

    include_in_schema = True
    tags = ["operations"]

    @get("/health", summary="Liveness: the process runs")
    async def health(self) -> dict[str, str]:
        return {"status": "ok"}

    @get("/ready", summary="Readiness: Kafka, Redis and the LLM endpoint are reachable")
    async def ready(self, state: State) -> Response[dict[str, Any]]:
        checks = dict(
            await asyncio.gather(
                _check("kafka", _kafka_reachable(state)),
                _check("redis", state.store.ping()),
                _check("llm", _llm_reachable(state.http_client, state.settings.llm.api_base)),
            )
        )
        ok = all(c["ok"] for c in checks.values())
        return Response(
            {"status": "ready" if ok else "unavailable", "checks": checks},
            status_code=200 if ok else 503,
        )


class MetricsController(Controller):
    """Prometheus metrics; `auth.protect_metrics` puts them behind the `admin` scope."""

    tags = ["operations"]

    @get("/metrics", summary="Prometheus metrics", media_type=CONTENT_TYPE_LATEST)
    async def metrics_endpoint(self) -> Response[bytes]:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
