"""Context gathered for an alert before the LLM runs; every source optional, none fatal.

Sources: the Kubernaut Context API (``kubernetes``, ``metrics``, ``action_history``) and
Prometheus (``prometheus``: the alert's own expression over a recent window). Each outcome is
recorded in ``Enrichment.sources`` as ``ok``, ``cached``, ``skipped: <why>``,
``failed: <reason>`` or ``circuit open``; a failed source only leaves its part out.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from holmes_stream.enrichment.breaker import CircuitBreaker, CircuitOpenError
from holmes_stream.enrichment.cache import JsonCache
from holmes_stream.enrichment.compact import bound, json_size
from holmes_stream.enrichment.context_api import ContextApiClient, ContextResult, alert_resource
from holmes_stream.enrichment.http import SourceError
from holmes_stream.enrichment.prometheus import PrometheusClient, expr_from_generator_url
from holmes_stream.schemas import Alert

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from holmes_stream.redaction import Redactor
    from holmes_stream.settings import Settings

__all__ = [
    "CircuitBreaker",
    "CircuitOpenError",
    "ContextApiClient",
    "Enricher",
    "Enrichment",
    "PrometheusClient",
    "expr_from_generator_url",
]

log = logging.getLogger(__name__)

OK = "ok"
CACHED = "cached"
NOT_CONFIGURED = "skipped: not configured"
DISABLED = "skipped: disabled"
CIRCUIT_OPEN = "circuit open"
CONTEXT_API_SOURCES = ("kubernetes", "metrics", "action_history")
SOURCES = (*CONTEXT_API_SOURCES, "prometheus")


@dataclass
class Enrichment:
    context: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    elapsed_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "context": self.context,
            "sources": self.sources,
            "elapsed_seconds": round(self.elapsed_seconds, 3),
        }

    def as_prompt(self) -> str:
        """A markdown section for the investigation prompt; empty without context."""
        if not self.context:
            return ""
        body = json.dumps(self.context, indent=1, default=str, sort_keys=True)
        return (
            "## Context gathered before the investigation\n\n"
            "Collected automatically from the sources below; verify with tools before "
            "relying on it.\n\n```json\n" + body + "\n```\n"
        )


class Enricher:
    def __init__(
        self,
        context_api: ContextApiClient | None = None,
        prometheus: PrometheusClient | None = None,
        *,
        enabled: bool = True,
        timeout_seconds: float = 15.0,
        max_context_chars: int = 8000,
        metrics_time_range: str = "1h",
        history_limit: int = 10,
        redactor: Redactor | None = None,
    ) -> None:
        self.context_api = context_api
        self.prometheus = prometheus
        self.enabled = enabled
        self.timeout_seconds = timeout_seconds
        self.max_context_chars = max_context_chars
        self.metrics_time_range = metrics_time_range
        self.history_limit = history_limit
        self.redactor = redactor

    @classmethod
    def from_settings(cls, settings: Settings, redis: Redis | None = None) -> Enricher:
        """Clients for the configured sources; ``redis`` (optional) caches Context API answers."""
        cfg = settings.enrichment
        context_api = prometheus = None
        if cfg.context_api.url:
            api = cfg.context_api
            cache = None
            if redis is not None and api.cache_ttl_seconds > 0:
                cache = JsonCache(redis, settings.redis.key_prefix + "ctx:", api.cache_ttl_seconds)
            context_api = ContextApiClient(
                api.url,  # type: ignore[arg-type]  # checked above
                token=api.token.get_secret_value() if api.token else None,
                timeout_seconds=api.timeout_seconds,
                retries=api.retries,
                backoff_seconds=api.backoff_seconds,
                breaker=CircuitBreaker(
                    cfg.breaker_failures, cfg.breaker_reset_seconds, name="context_api"
                ),
                cache=cache,
            )
        if cfg.prometheus.url:
            prom = cfg.prometheus
            prometheus = PrometheusClient(
                prom.url,  # type: ignore[arg-type]  # checked above
                token=prom.token.get_secret_value() if prom.token else None,
                timeout_seconds=prom.timeout_seconds,
                retries=prom.retries,
                window_seconds=prom.window_seconds,
                step_seconds=prom.step_seconds,
                max_series=prom.max_series,
                points_per_series=prom.points_per_series,
                breaker=CircuitBreaker(
                    cfg.breaker_failures, cfg.breaker_reset_seconds, name="prometheus"
                ),
            )
        redactor = None
        if settings.redaction.enabled:
            from holmes_stream.redaction import Redactor

            redactor = Redactor.from_settings(settings.redaction)
        return cls(
            context_api,
            prometheus,
            enabled=cfg.enabled,
            timeout_seconds=cfg.timeout_seconds,
            max_context_chars=cfg.max_context_chars,
            metrics_time_range=cfg.context_api.metrics_time_range,
            history_limit=cfg.context_api.history_limit,
            redactor=redactor,
        )

    async def aclose(self) -> None:
        for client in (self.context_api, self.prometheus):
            if client is not None:
                await client.aclose()

    async def enrich(self, alert: Alert) -> Enrichment:
        """Never raises (except on cancellation): a source's failure is recorded, not thrown."""
        started = time.monotonic()
        result = Enrichment()
        if not self.enabled:
            result.sources = dict.fromkeys(SOURCES, DISABLED)
            return result
        jobs = self._plan(alert, result.sources)
        names = list(jobs)
        outcomes = await asyncio.gather(*(self._run(name, jobs[name]) for name in names))
        gathered: dict[str, Any] = {}
        for name, (status, data) in zip(names, outcomes, strict=True):
            result.sources[name] = status
            if data is not None:
                gathered[name] = data
        if self.redactor is not None:
            gathered = self.redactor.redact_obj(gathered)
        result.context = self._bounded(gathered)
        result.elapsed_seconds = time.monotonic() - started
        return result

    def _plan(
        self, alert: Alert, sources: dict[str, str]
    ) -> dict[str, Callable[[], Awaitable[Any]]]:
        jobs: dict[str, Callable[[], Awaitable[Any]]] = {}
        api = self.context_api
        if api is None:
            sources.update(dict.fromkeys(CONTEXT_API_SOURCES, NOT_CONFIGURED))
        else:
            namespace, resource = alert.namespace, alert_resource(alert.labels)
            if namespace and resource:
                ns, res = namespace, resource
                jobs["kubernetes"] = lambda: api.get_kubernetes_context(ns, res, alert.labels)
                time_range = self.metrics_time_range
                jobs["metrics"] = lambda: api.get_metrics_context(ns, res, time_range)
            else:
                why = "skipped: alert labels name no namespace and resource"
                sources.update(kubernetes=why, metrics=why)
            limit = self.history_limit
            jobs["action_history"] = lambda: api.get_action_history(
                alert.alertname, namespace, limit
            )
        prom = self.prometheus
        expr = expr_from_generator_url(alert.generatorURL)
        if prom is None:
            sources["prometheus"] = NOT_CONFIGURED
        elif expr is None:
            sources["prometheus"] = "skipped: no expression in generatorURL"
        else:
            # A resolved alert is best shown up to when it ended, not up to now.
            end = alert.endsAt if alert.status == "resolved" else None
            jobs["prometheus"] = lambda: prom.query_range(expr, end)
        return jobs

    async def _run(self, name: str, job: Callable[[], Awaitable[Any]]) -> tuple[str, Any | None]:
        try:
            async with asyncio.timeout(self.timeout_seconds):
                data = await job()
        except CircuitOpenError:
            return CIRCUIT_OPEN, None
        except SourceError as exc:
            return f"failed: {exc}", None
        except TimeoutError:
            return f"failed: timeout after {self.timeout_seconds:g}s", None
        except Exception as exc:  # a bug in one source must not cost the investigation
            log.warning("enrichment source %s failed", name, exc_info=True)
            return f"failed: {type(exc).__name__}: {exc}"[:300], None
        if isinstance(data, ContextResult):
            return (CACHED if data.cached else OK), data.data
        return OK, data

    def _bounded(self, gathered: dict[str, Any]) -> dict[str, Any]:
        if not gathered or json_size(gathered) <= self.max_context_chars:
            return gathered
        # Each source gets an equal share, so one talkative source cannot crowd out the rest.
        share = max(200, self.max_context_chars // len(gathered) - 20)
        return {name: bound(data, share) for name, data in gathered.items()}
