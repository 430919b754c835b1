"""Prometheus metrics. Names and labels are a public contract (alerts and dashboards use them)."""

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
    ["outcome"],  # completed, failed, cancelled, skipped, duplicate, budget_exceeded
)
DEAD_LETTERS = Counter(
    "holmes_stream_alerts_dead_lettered_total", "Messages sent to the dead-letter topic", ["reason"]
)
IN_FLIGHT = Gauge("holmes_stream_investigations_in_flight", "Investigations running now")
INVESTIGATION_DURATION = Histogram(
    "holmes_stream_investigation_duration_seconds",
    "Wall time of one investigation, LLM loop included",
    ["outcome"],
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
