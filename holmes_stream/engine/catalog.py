"""What the engine is configured with, as the API shows it, without importing HolmesGPT.

Workers write a snapshot when their engine is warm: ``{p}catalog``, JSON with the toolsets as
HolmesGPT loaded them (name, status enabled/disabled/failed, the error, the tools) and the model
list without secrets. The API reads it (and the models' circuit state, ``{p}breaker:{name}``)
for ``GET /api/v1/models`` and ``GET /api/v1/toolsets``. Nothing here imports HolmesGPT.
"""

from __future__ import annotations

import json
import os
import socket
import time
from typing import Any

from holmes_stream.settings import ModelEntry

CATALOG_TTL_SECONDS = 30 * 24 * 3600


def catalog_key(prefix: str) -> str:
    return f"{prefix}catalog"


def model_view(entry: ModelEntry, *, primary: bool) -> dict[str, Any]:
    """One model without its key: only where the key comes from."""
    if entry.api_key is not None:
        key_source = "inline"
    elif entry.api_key_env:
        key_source = f"env:{entry.api_key_env}"
    elif entry.api_key_file is not None:
        key_source = f"file:{entry.api_key_file}"
    else:
        key_source = None
    return {
        "name": entry.name,
        "model": entry.model,
        "api_base": entry.api_base,
        "role": "primary" if primary else "fallback",
        "api_key_source": key_source,
        "temperature": entry.temperature,
        "input_cost_per_token": entry.input_cost_per_token,
        "output_cost_per_token": entry.output_cost_per_token,
    }


def model_catalog(models: list[ModelEntry]) -> list[dict[str, Any]]:
    return [model_view(entry, primary=i == 0) for i, entry in enumerate(models)]


def redis_catalog_sink(redis_url: str, prefix: str) -> Any:
    """A function that stores the engine's catalog snapshot (called once the engine is warm)."""

    def publish(catalog: dict[str, Any]) -> None:
        import redis

        snapshot = {
            **catalog,
            "updated_at": time.time(),
            "written_by": f"{socket.gethostname()}:{os.getpid()}",
        }
        client = redis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)
        try:
            client.set(
                catalog_key(prefix), json.dumps(snapshot, default=str), ex=CATALOG_TTL_SECONDS
            )
        finally:
            client.close()

    return publish


async def read_catalog(redis: Any, prefix: str) -> dict[str, Any] | None:
    raw = await redis.get(catalog_key(prefix))
    if raw is None:
        return None
    value = json.loads(raw)
    return value if isinstance(value, dict) else None
