"""Prometheus metrics. Names and labels are a public contract (alerts and dashboards use them).

Durations are in seconds, money in US dollars. Children whose label values are known up front
are created at import (``_initialise``): they are exported as 0 before their first event, so
``rate()``/``increase()`` see the first one and every name the alerts and dashboards use exists
from the start. Per-model children are created when the engine is built.
"""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

registry: CollectorRegistry = REGISTRY

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

ALERTS_CONSUMED = Counter(
    "holmes_stream_alerts_consumed_total", "Kafka messages read from the alerts topic", ["topic"]
)
ALERTS_PROCESSED = Counter(
    "holmes_stream_alerts_processed_total",
    "Alerts that reached an outcome",
    ["outcome"],  # completed, failed, cancelled, skipped, dead_lettered, budget_exceeded
)
DEAD_LETTERS = Counter(
    "holmes_stream_alerts_dead_lettered_total", "Messages sent to the dead-letter topic", ["reason"]
)
IN_FLIGHT = Gauge("holmes_stream_investigations_in_flight", "Investigations running now")
INVESTIGATION_DURATION = Histogram(
    "holmes_stream_investigation_duration_seconds",
    "Wall time of one investigation from its start to its outcome, retries included",
    ["outcome"],  # the outcomes above
    buckets=_LATENCY_BUCKETS,
)
ENGINE_RUN_DURATION = Histogram(
    "holmes_stream_engine_run_duration_seconds",
    "Wall time of one run of the agent loop",
    ["kind"],  # attempt (of an investigation), chat (a follow-up turn)
    buckets=_LATENCY_BUCKETS,
)
LLM_REQUEST_DURATION = Histogram(
    "holmes_stream_llm_request_duration_seconds",
    "Duration of one LLM request (one agent step) by model and outcome (ok, error)",
    ["model", "outcome"],
    buckets=_LATENCY_BUCKETS,
)
LLM_CALLS = Counter(
    "holmes_stream_llm_calls_total", "LLM calls by model and outcome", ["model", "outcome"]
)
LLM_ERRORS = Counter(
    "holmes_stream_llm_errors_total",
    "Failed investigation attempts caused by the LLM",
    ["model", "kind"],
)
LLM_TOKENS = Counter("holmes_stream_llm_tokens_total", "Tokens used", ["model", "tenant", "kind"])
LLM_COST = Counter(
    "holmes_stream_llm_cost_dollars_total", "LLM cost in US dollars", ["model", "tenant"]
)
RETRIES = Counter("holmes_stream_retries_total", "Retried investigation attempts", ["reason"])
DEDUP_HITS = Counter(
    "holmes_stream_dedup_hits_total", "Alerts mapped to an existing investigation", ["source"]
)
BUDGET_EXCEEDED = Counter(
    "holmes_stream_budget_exceeded_total", "Investigations stopped by a budget", ["tenant"]
)
CONSUMER_LAG = Gauge(
    "holmes_stream_consumer_lag_messages",
    "Messages between the committed offset and the end of the partition",
    ["topic", "partition"],
)
SSE_CLIENTS = Gauge("holmes_stream_sse_clients", "Open Server-Sent-Events connections")
HTTP_REQUESTS = Counter(
    "holmes_stream_http_requests_total", "HTTP requests", ["method", "route", "status"]
)
HTTP_DURATION = Histogram(
    "holmes_stream_http_request_duration_seconds",
    "HTTP request duration",
    ["method", "route"],
    buckets=_LATENCY_BUCKETS,
)


# Label values known up front (the service's own vocabulary).
OUTCOMES = ("completed", "failed", "cancelled", "skipped", "dead_lettered", "budget_exceeded")
DEAD_LETTER_REASONS = (
    "empty",
    "oversize",
    "undecodable",
    "invalid_json",
    "invalid_schema",
    "internal_error",
    "retries_exhausted",
)
RETRY_REASONS = ("llm", "infrastructure")
DEDUP_SOURCES = ("api", "kafka", "lease")
LLM_ERROR_KINDS = (
    "timeout",
    "unusable",
    "rate_limit",
    "connection",
    "unavailable",
    "client_error",
    "other",
)


def _initialise() -> None:
    for outcome in OUTCOMES:
        ALERTS_PROCESSED.labels(outcome)
    for reason in DEAD_LETTER_REASONS:
        DEAD_LETTERS.labels(reason)
    for reason in RETRY_REASONS:
        RETRIES.labels(reason)
    for source in DEDUP_SOURCES:
        DEDUP_HITS.labels(source)
    BUDGET_EXCEEDED.labels("default")  # alerts without a tenant; other tenants on first use


def initialise_model(model: str) -> None:
    """The per-model children of one configured model (called when the engine is built)."""
    for outcome in ("ok", "error"):
        LLM_CALLS.labels(model, outcome)
    for kind in LLM_ERROR_KINDS:
        LLM_ERRORS.labels(model, kind)


_initialise()
