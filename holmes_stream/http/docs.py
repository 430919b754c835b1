"""The API's documents: OpenAPI (HTTP) and AsyncAPI (Kafka), as served and as checked in.

Both are built from the default settings (not the environment), so that the checked-in files
in ``docs/`` are reproducible: ``holmes-stream docs --out docs/``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from holmes_stream.settings import (
    ApiSettings,
    AuthSettings,
    KafkaSettings,
    LLMSettings,
    RateLimitSettings,
    RedisSettings,
    Settings,
    WorkerSettings,
)


def default_settings() -> Settings:
    """Every group at its default, whatever ``HOLMES_STREAM_*`` variables are set."""
    groups: dict[str, Any] = {
        "kafka": KafkaSettings.model_validate({}),
        "redis": RedisSettings.model_validate({}),
        "llm": LLMSettings.model_validate({}),
        "worker": WorkerSettings.model_validate({}),
        "api": ApiSettings.model_validate({}),
        "auth": AuthSettings.model_validate({}),
        "ratelimit": RateLimitSettings.model_validate({}),
    }
    return Settings(**groups)


def openapi_document(settings: Settings | None = None) -> dict[str, Any]:
    from holmes_stream.http.app import create_app

    app = create_app(settings or default_settings())
    return app.openapi_schema.to_schema()


class _NoEngine:
    """Stands in for HolmesGPT: the AsyncAPI document needs the broker, not the engine."""


def asyncapi_document(settings: Settings | None = None) -> dict[str, Any]:
    from faststream.specification import AsyncAPI

    from holmes_stream.runtime import Runtime

    settings = settings or default_settings()
    runtime = Runtime.build(settings, worker=True, engine=_NoEngine())
    try:
        spec = AsyncAPI(
            runtime.broker,
            title="holmes-stream",
            version="1",
            description=(
                "Alerts in (Alertmanager webhook v4 groups, bare alerts or investigation"
                " requests), investigation results, progress events and dead letters out."
                " Topic names are the defaults; each is configurable."
            ),
        )
        return json.loads(spec.to_specification().to_json())
    finally:
        if runtime.executor is not None:
            runtime.executor.shutdown(wait=False)


def render(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


def write_documents(out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    from holmes_stream.settings_doc import configuration_reference

    for name, text in (
        ("openapi.json", render(openapi_document())),
        ("asyncapi.json", render(asyncapi_document())),
        ("configuration.md", configuration_reference()),
    ):
        path = out / name
        path.write_text(text)
        written.append(path)
    return written
