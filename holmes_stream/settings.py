"""All configuration, read from ``HOLMES_STREAM_*`` environment variables.

Nested groups use a double underscore: ``HOLMES_STREAM_KAFKA__BOOTSTRAP_SERVERS``.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class KafkaSettings(BaseModel):
    bootstrap_servers: str = Field("127.0.0.1:19092", description="Kafka bootstrap servers")
    alerts_topic: str = Field("alerts", description="Topic the alerts arrive on")
    results_topic: str = Field("investigation.results", description="Finished investigations")
    progress_topic: str = Field("investigation.progress", description="Progress events")
    dlq_topic: str = Field("alerts.dlq", description="Dead letters: messages that cannot be processed")
    group_id: str = Field("holmes-stream", description="Consumer group of the workers")
    max_message_bytes: int = Field(1_000_000, description="Larger alert messages are dead-lettered")
    max_poll_interval_ms: int = Field(
        900_000, description="Upper bound between fetches before Kafka evicts the worker"
    )
    session_timeout_ms: int = Field(30_000, description="Group session timeout")


class RedisSettings(BaseModel):
    url: str = Field("redis://127.0.0.1:16379/0", description="Redis URL of the result store")
    key_prefix: str = Field("hs:", description="Prefix of every key the service writes")
    record_ttl_seconds: int = Field(7 * 24 * 3600, description="How long records are kept")
    events_max_len: int = Field(2000, description="Progress events kept per investigation")


class LLMSettings(BaseModel):
    model: str = Field("openai/scripted", description="litellm model name, e.g. openai/gpt-4o")
    api_base: str | None = Field(
        "http://127.0.0.1:18080/v1", description="OpenAI-compatible base URL (None: provider default)"
    )
    api_key: SecretStr = Field(SecretStr("dummy"), description="API key of the model provider")
    temperature: float = Field(0.0)
    max_steps: int = Field(10, description="Maximum agent steps (LLM calls) per investigation")
    timeout_seconds: float = Field(300.0, description="Time limit of one investigation")


class WorkerSettings(BaseModel):
    max_in_flight: int = Field(32, description="Investigations running at once in one worker")
    llm_threads: int = Field(32, description="Threads that run the synchronous HolmesGPT loop")
    claim_lease_seconds: int = Field(
        120, description="A worker's claim on an episode expires this long after its last renewal"
    )
    stale_after_seconds: int = Field(
        6 * 3600, description="Alerts older than this (startsAt or Kafka time) are skipped as stale"
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


class ApiSettings(BaseModel):
    host: str = Field("127.0.0.1")
    port: int = Field(18000)
    max_body_bytes: int = Field(1_048_576, description="Largest accepted request body")
    sse_keepalive_seconds: float = Field(15.0, description="Idle time before an SSE keep-alive")
    public_url: str | None = Field(None, description="Base URL used in Location headers")


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
    log_level: str = Field("INFO")
    log_json: bool = Field(True, description="Structured JSON logs")
    dev_dir: Path = Field(Path(".devstack"), description="Where `dev up` keeps data and logs")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
