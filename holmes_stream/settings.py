"""All configuration, read from ``HOLMES_STREAM_*`` environment variables.

Nested groups use a double underscore: ``HOLMES_STREAM_KAFKA__BOOTSTRAP_SERVERS``.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class KafkaSettings(BaseModel):
    bootstrap_servers: str = Field("127.0.0.1:19092", description="Kafka bootstrap servers")
    alerts_topic: str = Field("alerts", description="Topic the alerts arrive on")
    results_topic: str = Field("investigation.results", description="Finished investigations")
    progress_topic: str = Field("investigation.progress", description="Progress events")
    dlq_topic: str = Field(
        "alerts.dlq", description="Dead letters: messages that cannot be processed"
    )
    group_id: str = Field("holmes-stream", description="Consumer group of the workers")
    max_message_bytes: int = Field(1_000_000, description="Larger alert messages are dead-lettered")
    max_poll_interval_ms: int = Field(
        900_000, description="Upper bound between fetches before Kafka evicts the worker"
    )
    session_timeout_ms: int = Field(30_000, description="Group session timeout")


class RedisSettings(BaseModel):
    url: str = Field("redis://127.0.0.1:16379/0", description="Redis URL of the result store")
    key_prefix: str = Field("hs:", description="Prefix of every key the service writes")
    max_connections: int = Field(64, description="Redis connections per process (callers queue)")
    record_ttl_seconds: int = Field(7 * 24 * 3600, description="How long records are kept")
    events_max_len: int = Field(2000, description="Progress events kept per investigation")


class ModelEntry(BaseModel):
    """One model of the failover list, as a HolmesGPT ``model_list.yaml`` entry describes it."""

    name: str = Field(description="What requests, results and /api/v1/models call this model")
    model: str = Field(description="litellm model name, e.g. openai/gpt-4o, anthropic/claude-...")
    api_base: str | None = Field(
        default=None, description="Base URL (None: the provider's default)"
    )
    api_version: str | None = Field(default=None, description="API version (Azure)")
    api_key: SecretStr | None = Field(
        default=None, description="The key itself (prefer api_key_env or api_key_file)"
    )
    api_key_env: str | None = Field(
        default=None, description="Environment variable holding the key"
    )
    api_key_file: Path | None = Field(
        default=None, description="File holding the key (read per investigation: rotation-friendly)"
    )
    temperature: float | None = Field(default=None, description="None: LLMSettings.temperature")
    input_cost_per_token: float | None = Field(default=None, description="USD per prompt token")
    output_cost_per_token: float | None = Field(
        default=None, description="USD per completion token"
    )
    args: dict[str, Any] = Field(
        default_factory=dict,
        description="More litellm completion arguments, e.g. max_tokens, extra_headers",
    )

    def key(self) -> str | None:
        """The API key, resolved now; never logged or returned by the API."""
        if self.api_key is not None:
            return self.api_key.get_secret_value()
        if self.api_key_env:
            return os.environ.get(self.api_key_env)
        if self.api_key_file is not None:
            return self.api_key_file.read_text().strip()
        return None


class LLMSettings(BaseModel):
    model: str = Field(
        default="openai/scripted", description="litellm model name, e.g. openai/gpt-4o"
    )
    api_base: str | None = Field(
        default="http://127.0.0.1:18080/v1",
        description="OpenAI-compatible base URL (None: provider default)",
    )
    api_key: SecretStr = Field(
        default=SecretStr("dummy"), description="API key of the model provider"
    )
    temperature: float = Field(0.0, description="Sampling temperature of the single model")
    max_steps: int = Field(
        default=10, description="Maximum agent steps (LLM calls) per investigation"
    )
    timeout_seconds: float = Field(default=300.0, description="Time limit of one investigation")
    # The model list: primary first, then fallbacks in order. Empty: the single model above.
    models: list[ModelEntry] = Field(
        default_factory=list,
        description="Primary and fallback models (JSON list); empty: model/api_base/api_key",
    )
    toolsets: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description='HolmesGPT toolset config by name, e.g. {"kubernetes/core":{"enabled":true}}',
    )
    custom_toolset_files: list[Path] = Field(
        default_factory=list, description="HolmesGPT custom toolset YAML files (JSON list)"
    )
    python_toolsets: list[str] = Field(
        default_factory=list,
        description="`module:attribute` naming a Toolset, a list of them or a factory of either",
    )
    step_timeout_seconds: float | None = Field(
        default=None,
        description="A model with no agent step for this long is left for the next model",
    )
    breaker_failures: int = Field(
        default=3, description="Consecutive transient failures that open a model's circuit"
    )
    breaker_cooldown_seconds: float = Field(
        default=60.0, description="How long an open circuit skips its model before one trial call"
    )

    def model_entries(self) -> list[ModelEntry]:
        """The failover list; the single-model shorthand is a list of one named after its model."""
        if self.models:
            return list(self.models)
        return [
            ModelEntry(
                name=self.model,
                model=self.model,
                api_base=self.api_base,
                api_key=self.api_key,
                temperature=self.temperature,
            )
        ]


class WorkerSettings(BaseModel):
    max_in_flight: int = Field(32, description="Investigations running at once in one worker")
    llm_threads: int = Field(32, description="Threads that run the synchronous HolmesGPT loop")
    claim_lease_seconds: int = Field(
        30, description="A worker's claim on an episode expires this long after its last renewal"
    )
    stale_after_seconds: int = Field(
        24 * 3600,
        description="Alerts older than this (startsAt or Kafka time) are skipped as stale",
    )
    cancel_on_resolve: bool = Field(
        True, description="Cancel a running investigation when its alert resolves"
    )
    max_attempts: int = Field(5, description="Attempts at a transiently failing investigation")
    retry_base_seconds: float = Field(0.5, description="First backoff; doubles on each attempt")
    retry_max_seconds: float = Field(30.0, description="Longest backoff between attempts")
    shutdown_grace_seconds: float = Field(
        30.0, description="On SIGTERM, how long in-flight work may take to finish"
    )
    processes: int = Field(1, description="Worker processes in one consumer group (worker mode)")
    pin_processes: bool = Field(
        True,
        description="With several worker processes, each runs on CPUs of its own (a share of "
        "the CPUs this process may use; not when there are fewer CPUs than processes)",
    )
    health_host: str = Field("127.0.0.1", description="Where a worker serves /health and /metrics")
    health_port: int = Field(
        18001, description="Port of the worker's /health and /metrics (0: off)"
    )


class ApiSettings(BaseModel):
    host: str = Field("127.0.0.1", description="Where the API listens")
    port: int = Field(18000, description="Port of the API")
    max_body_bytes: int = Field(1_048_576, description="Largest accepted request body")
    sse_keepalive_seconds: float = Field(15.0, description="Idle time before an SSE keep-alive")
    public_url: str | None = Field(None, description="Base URL used in Location headers")
    submit_timeout_seconds: float = Field(
        default=8.0, description="A submission Kafka has not taken by then is answered 503"
    )
    cors_origins: list[str] = Field(
        default_factory=list, description="Origins allowed by CORS (JSON list); empty: no CORS"
    )
    hsts_max_age_seconds: int = Field(
        default=0, description="Strict-Transport-Security max-age; 0 leaves the header out"
    )


class ApiKey(BaseModel):
    """One API key, kept only as the SHA-256 hex digest of the key."""

    name: str = Field(description="Who holds the key; the rate limit and logs use it")
    sha256: str = Field(description="hex SHA-256 of the key (`printf %s KEY | sha256sum`)")
    scopes: list[str] = Field(
        default_factory=lambda: ["investigations:read", "investigations:write"]
    )
    tenant: str | None = Field(
        default=None, description="The only tenant the key may see and submit for"
    )


class AuthSettings(BaseModel):
    mode: Literal["required", "disabled"] = Field(
        default="required",
        description="`disabled` is for local development only: every caller is admin",
    )
    jwt_hs256_secret: SecretStr | None = Field(
        default=None, description="Secret of HS256 bearer tokens"
    )
    jwt_public_key_file: Path | None = Field(
        default=None, description="PEM public key of RS256 bearer tokens"
    )
    jwks_file: Path | None = Field(
        default=None, description="JWKS file with the RS256 keys, chosen by `kid`"
    )
    audience: str | None = Field(
        default="holmes-stream", description="Required `aud` of bearer tokens"
    )
    issuer: str | None = Field(default=None, description="Required `iss` of bearer tokens")
    leeway_seconds: float = Field(default=30, description="Clock skew allowed on exp/nbf/iat")
    tenant_claim: str = Field(default="tenant", description="JWT claim naming the tenant")
    api_keys: list[ApiKey] = Field(default_factory=list, description="API keys (JSON list)")
    protect_metrics: bool = Field(
        default=False, description="Require the `admin` scope on /metrics"
    )
    page_token_secret: SecretStr | None = Field(
        default=None,
        description="Signs the UI's short-lived access tokens (default: from the HS256 secret)",
    )
    page_token_ttl_seconds: int = Field(default=900, description="Lifetime of a UI access token")


class RateLimitSettings(BaseModel):
    enabled: bool = Field(default=True, description="Per principal and route, shared via Redis")
    window_seconds: int = Field(default=60, description="Length of the sliding window")
    write_per_window: int = Field(
        default=120, description="POST requests per principal, route and window"
    )
    read_per_window: int = Field(
        default=1200, description="GET requests per principal, route and window"
    )
    routes: dict[str, int] = Field(
        default_factory=dict,
        description='Overrides by route, e.g. {"POST /api/v1/investigations": 10}',
    )


class ContextApiSettings(BaseModel):
    url: str | None = Field(
        default=None,
        description="Kubernaut Context API base URL, e.g. http://context-api:8091 (None: off)",
    )
    token: SecretStr | None = Field(default=None, description="Bearer token for the Context API")
    timeout_seconds: float = Field(default=5.0, description="Time limit of one HTTP request")
    retries: int = Field(
        default=2, description="Retries of a failed request (connection errors, 5xx)"
    )
    backoff_seconds: float = Field(
        default=0.2, description="First retry delay; doubles on each retry"
    )
    metrics_time_range: str = Field(default="1h", description="timeRange of the metrics context")
    history_limit: int = Field(default=10, description="Past actions asked for per alert type")
    cache_ttl_seconds: int = Field(
        default=600, description="How long answers are cached in Redis (0: off)"
    )


class PrometheusEnrichmentSettings(BaseModel):
    url: str | None = Field(
        default=None, description="Prometheus base URL, e.g. http://prometheus:9090"
    )
    token: SecretStr | None = Field(default=None, description="Bearer token for Prometheus")
    timeout_seconds: float = Field(default=5.0, description="Time limit of one query")
    retries: int = Field(
        default=1, description="Retries of a failed query (connection errors, 5xx)"
    )
    window_seconds: int = Field(default=1800, description="query_range window ending now")
    step_seconds: int = Field(default=60, description="query_range resolution")
    max_series: int = Field(default=10, description="Series kept for the prompt")
    points_per_series: int = Field(default=5, description="Most recent values kept per series")


class EnrichmentSettings(BaseModel):
    enabled: bool = Field(default=True, description="Gather context before the LLM runs")
    context_api: ContextApiSettings = Field(default_factory=lambda: ContextApiSettings())
    prometheus: PrometheusEnrichmentSettings = Field(
        default_factory=lambda: PrometheusEnrichmentSettings()
    )
    timeout_seconds: float = Field(
        default=15.0, description="Time limit of one source, retries included"
    )
    max_context_chars: int = Field(default=8000, description="Upper bound of the context as JSON")
    step_timeout_seconds: float | None = Field(
        default=None,
        description="A model with no agent step for this long is left for the next model",
    )
    breaker_failures: int = Field(default=5, description="Consecutive failures that open a breaker")
    breaker_reset_seconds: float = Field(
        default=30.0, description="How long an open breaker stays open"
    )


class RedactionSettings(BaseModel):
    enabled: bool = Field(default=True, description="Redact secrets from prompts, results and logs")
    extra_patterns: list[str] = Field(
        default_factory=list,
        description="More regexes; a named group `secret` limits what is replaced",
    )
    extra_secret_keys: list[str] = Field(
        default_factory=list, description="More field names whose values are always redacted"
    )


class TenantBudget(BaseModel):
    """A tenant's override; a field left None inherits the default, 0 means unlimited."""

    tokens_per_window: int | None = None
    cost_per_window: float | None = None


class BudgetSettings(BaseModel):
    tokens_per_window: int | None = Field(
        default=None, description="LLM tokens per tenant and window"
    )
    cost_per_window: float | None = Field(
        default=None, description="Money (USD) per tenant and window"
    )
    window_seconds: int = Field(default=3600, description="Length of a budget window")
    tenants: dict[str, TenantBudget] = Field(
        default_factory=dict, description="Per-tenant overrides, e.g. JSON in the env variable"
    )


class TelemetrySettings(BaseModel):
    """OpenTelemetry tracing: W3C trace context through HTTP and Kafka headers (off by default).

    Needs the ``otel`` extra (``pip install holmes-stream[otel]``).
    """

    enabled: bool = Field(default=False, description="Trace requests and investigations")
    service_name: str = Field(default="holmes-stream", description="`service.name` of the spans")
    otlp_endpoint: str | None = Field(
        default=None,
        description="OTLP/HTTP collector, e.g. http://otel-collector:4318 (/v1/traces is added)",
    )
    exporter: Literal["auto", "otlp", "console", "none"] = Field(
        default="auto",
        description="auto: OTLP when an endpoint is set, else one JSON line per span on stdout;"
        " none: ids are propagated and logged, spans are not exported",
    )
    sample_ratio: float = Field(
        default=1.0,
        ge=0.0,
        le=1.0,
        description="Share of new traces sampled; an incoming traceparent's decision is kept",
    )


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="HOLMES_STREAM_",
        env_nested_delimiter="__",
        extra="ignore",
    )

    kafka: KafkaSettings = KafkaSettings()
    redis: RedisSettings = RedisSettings()
    llm: LLMSettings = LLMSettings()
    worker: WorkerSettings = WorkerSettings()
    api: ApiSettings = ApiSettings()
    auth: AuthSettings = AuthSettings()
    ratelimit: RateLimitSettings = RateLimitSettings()
    log_level: str = Field("INFO", description="Log level: DEBUG, INFO, WARNING, ERROR")
    log_json: bool = Field(True, description="Structured JSON logs")
    dev_dir: Path = Field(Path(".devstack"), description="Where `dev up` keeps data and logs")
    enrichment: EnrichmentSettings = EnrichmentSettings()
    redaction: RedactionSettings = RedactionSettings()
    budgets: BudgetSettings = BudgetSettings()
    telemetry: TelemetrySettings = TelemetrySettings()


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
