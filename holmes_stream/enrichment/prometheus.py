"""Evaluate the alert's own rule expression over a recent window (Prometheus ``query_range``).

Alertmanager's ``generatorURL`` is the Prometheus graph link of the rule that fired, with the
expression in its ``g0.expr`` parameter; re-running it shows the LLM how the alerting series
moved before and during the alert, which the alert itself (one instant) does not.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx

from holmes_stream.enrichment.breaker import CircuitBreaker
from holmes_stream.enrichment.http import SourceError, get_json

MAX_LABEL_CHARS = 120
MAX_LABELS = 20


def expr_from_generator_url(url: str | None) -> str | None:
    """The PromQL expression of a Prometheus graph URL (``g0.expr``), or None."""
    if not url:
        return None
    values = parse_qs(urlsplit(url).query).get("g0.expr")
    expr = values[0].strip() if values else ""
    return expr or None


class PrometheusClient:
    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        timeout_seconds: float = 5.0,
        retries: int = 1,
        backoff_seconds: float = 0.2,
        window_seconds: int = 1800,
        step_seconds: int = 60,
        max_series: int = 10,
        points_per_series: int = 5,
        breaker: CircuitBreaker | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        headers = {"Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.base_url = base_url.rstrip("/")
        self.retries = retries
        self.backoff_seconds = backoff_seconds
        self.window_seconds = window_seconds
        self.step_seconds = max(1, step_seconds)
        self.max_series = max_series
        self.points_per_series = points_per_series
        self.breaker = breaker or CircuitBreaker(name="prometheus")
        self._client = httpx.AsyncClient(
            base_url=self.base_url,
            headers=headers,
            timeout=httpx.Timeout(timeout_seconds),
            transport=transport,
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def query_range(self, expr: str, end: datetime | None = None) -> dict[str, Any]:
        """Compact series of ``expr`` over the window ending at ``end`` (default: now)."""
        end_ts = (end or datetime.now(UTC)).timestamp()
        start_ts = end_ts - self.window_seconds
        params: dict[str, str | int] = {
            "query": expr,
            "start": f"{start_ts:.3f}",
            "end": f"{end_ts:.3f}",
            "step": f"{self.step_seconds}s",
            # Bounded on the server as well; our own cut follows below.
            "timeout": f"{max(1, int(self._client.timeout.read or 5))}s",
        }
        body = await get_json(
            self._client,
            "/api/v1/query_range",
            params,
            retries=self.retries,
            backoff_seconds=self.backoff_seconds,
            breaker=self.breaker,
        )
        if not isinstance(body, dict) or body.get("status") != "success":
            error = body.get("error") if isinstance(body, dict) else None
            raise SourceError(f"query failed: {error or 'unexpected answer'}")
        data = body.get("data") or {}
        return self.compact(expr, data.get("resultType"), data.get("result") or [])

    def compact(self, expr: str, result_type: Any, result: list[Any]) -> dict[str, Any]:
        series = [self._series(item) for item in result if isinstance(item, dict)]
        # Most recent activity first: the series that alerted last matter most.
        series.sort(key=lambda s: s["values"][-1][0] if s["values"] else 0, reverse=True)
        return {
            "expr": expr,
            "window_seconds": self.window_seconds,
            "step_seconds": self.step_seconds,
            "result_type": result_type,
            "series_total": len(series),
            "series": series[: self.max_series],
            "truncated": len(series) > self.max_series,
        }

    def _series(self, item: dict[str, Any]) -> dict[str, Any]:
        labels = item.get("metric") or {}
        compact_labels = {
            str(k)[:MAX_LABEL_CHARS]: str(v)[:MAX_LABEL_CHARS]
            for k, v in list(labels.items())[:MAX_LABELS]
        }
        raw = item.get("values") or ([item["value"]] if "value" in item else [])
        values = [[int(float(ts)), _number(v)] for ts, v in raw[-self.points_per_series :]]
        return {"labels": compact_labels, "points": len(raw), "values": values}


def _number(value: Any) -> float | str:
    """Prometheus sends sample values as strings; numbers read better and are shorter."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    if math.isnan(number) or math.isinf(number):
        return str(value)
    return int(number) if number.is_integer() and abs(number) < 2**53 else round(number, 6)
