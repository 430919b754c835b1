"""Client of the Kubernaut Context API (the seed design's "Context API Client").

Endpoints (Kubernaut's context controller, the service the seed design integrates with):

- ``GET /api/v1/context/kubernetes/{namespace}/{resource}?labels=k=v,k2=v2``
  -> ``{namespace, resource, labels, context, timestamp}``
- ``GET /api/v1/context/metrics/{namespace}/{resource}?timeRange=1h``
  -> ``{namespace, resource, time_range, metrics, collection_time}``
- ``GET /api/v1/context/action-history/{alertType}?namespace=..&limit=10``
  -> ``{alert_type, context_hash, namespace, history_data, retrieved_time}``
- ``GET /api/v1/context/health`` -> ``{status: "healthy", ...}``
- errors: ``{error, message, timestamp}`` with a 4xx/5xx status

Answers are cached in Redis (seed: ``cache.ttl.context: 600``) under ``{prefix}ctx:``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

import httpx

from holmes_stream.enrichment.breaker import CircuitBreaker
from holmes_stream.enrichment.cache import JsonCache
from holmes_stream.enrichment.http import get_json

BASE_PATH = "/api/v1/context"

# Labels that name the Kubernetes object an alert is about, most specific first.
RESOURCE_LABELS = (
    "pod",
    "deployment",
    "statefulset",
    "daemonset",
    "replicaset",
    "job_name",
    "cronjob",
    "horizontalpodautoscaler",
    "persistentvolumeclaim",
    "service",
    "node",
)


def alert_resource(labels: Mapping[str, str]) -> str | None:
    """The name of the Kubernetes object an alert's labels point at, if any."""
    for name in RESOURCE_LABELS:
        value = labels.get(name)
        if value:
            return value
    return None


@dataclass(frozen=True)
class ContextResult:
    data: dict[str, Any]
    cached: bool


class ContextApiClient:
    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        timeout_seconds: float = 5.0,
        retries: int = 2,
        backoff_seconds: float = 0.2,
        breaker: CircuitBreaker | None = None,
        cache: JsonCache | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        headers = {"Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.base_url = base_url.rstrip("/")
        self.retries = retries
        self.backoff_seconds = backoff_seconds
        self.breaker = breaker or CircuitBreaker(name="context_api")
        self.cache = cache
        self._client = httpx.AsyncClient(
            base_url=self.base_url,
            headers=headers,
            timeout=httpx.Timeout(timeout_seconds),
            transport=transport,
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def health(self) -> dict[str, Any]:
        """Not cached and not retried: a probe should report what is true now."""
        data = await get_json(
            self._client, f"{BASE_PATH}/health", retries=0, backoff_seconds=0, breaker=None
        )
        return data if isinstance(data, dict) else {"status": str(data)}

    async def get_kubernetes_context(
        self, namespace: str, resource: str, labels: Mapping[str, str] | None = None
    ) -> ContextResult:
        params: dict[str, str | int] = {}
        if labels:
            params["labels"] = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
        return await self._get(f"kubernetes/{_seg(namespace)}/{_seg(resource)}", params)

    async def get_metrics_context(
        self, namespace: str, resource: str, time_range: str = "1h"
    ) -> ContextResult:
        path = f"metrics/{_seg(namespace)}/{_seg(resource)}"
        return await self._get(path, {"timeRange": time_range})

    async def get_action_history(
        self, alert_type: str, namespace: str | None = None, limit: int = 10
    ) -> ContextResult:
        params: dict[str, str | int] = {"limit": limit}
        if namespace:
            params["namespace"] = namespace
        return await self._get(f"action-history/{_seg(alert_type)}", params)

    async def _get(self, path: str, params: dict[str, str | int]) -> ContextResult:
        # The base URL is part of the key so two Context APIs never share entries.
        cache_name = f"{self.base_url}{BASE_PATH}/{path}?{urlencode(sorted(params.items()))}"
        if self.cache is not None:
            hit = await self.cache.get(cache_name)
            if isinstance(hit, dict):
                return ContextResult(hit, cached=True)
        data = await get_json(
            self._client,
            f"{BASE_PATH}/{path}",
            params,
            retries=self.retries,
            backoff_seconds=self.backoff_seconds,
            breaker=self.breaker,
        )
        if not isinstance(data, dict):
            data = {"value": data}
        if self.cache is not None:
            await self.cache.set(cache_name, data)
        return ContextResult(data, cached=False)


def _seg(value: str) -> str:
    return quote(value, safe="")
