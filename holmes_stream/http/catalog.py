"""What the investigation engine is configured with: models (with circuit state) and toolsets.

The API does not import HolmesGPT. Models come from the settings (never a key: only where the key
comes from) plus each model's circuit state, which workers keep in Redis. Toolsets come from the
snapshot the workers write when their engine is warm (``{p}catalog``): what HolmesGPT made of
each toolset, enabled or failed with the reason. Before any worker has started, the configured
toolset switches are shown instead (``source: settings``).
"""

from __future__ import annotations

from typing import Any

from litestar import Controller, get
from litestar.datastructures import State
from pydantic import BaseModel, Field

from holmes_stream.auth import READ
from holmes_stream.engine.breaker import read_states
from holmes_stream.engine.catalog import model_catalog, read_catalog
from holmes_stream.http.security import SECURITY, requires
from holmes_stream.settings import Settings


class ModelInfo(BaseModel):
    name: str
    model: str = Field(description="litellm model name")
    api_base: str | None = None
    role: str = Field(description="primary or fallback (in list order)")
    api_key_source: str | None = Field(None, description="inline, env:NAME or file:PATH")
    temperature: float | None = None
    input_cost_per_token: float | None = None
    output_cost_per_token: float | None = None
    circuit: dict[str, Any] = Field(
        default_factory=dict,
        description="state closed/open/half_open, consecutive_failures, open_until, last_error",
    )


class ModelList(BaseModel):
    models: list[ModelInfo]
    failover: bool = Field(description="More than one model: failures move to the next one")
    breaker: dict[str, Any]


class ToolsetInfo(BaseModel):
    name: str
    status: str = Field(description="enabled, disabled or failed")
    enabled: bool
    error: str | None = None
    description: str | None = None
    type: str | None = None
    tools: list[str] = Field(default_factory=list)


class ToolsetList(BaseModel):
    source: str = Field(description="worker: as a worker loaded them; settings: not loaded yet")
    updated_at: float | None = None
    toolsets: list[ToolsetInfo]
    custom_toolset_files: list[str] = Field(default_factory=list)
    python_toolsets: list[str] = Field(default_factory=list)


class CatalogController(Controller):
    path = "/api/v1"
    tags = ["catalog"]
    security = SECURITY

    @get("/models", summary="Configured models, in failover order", guards=[requires(READ)])
    async def models(self, state: State) -> ModelList:
        settings: Settings = state.settings
        entries = settings.llm.model_entries()
        views = model_catalog(entries)
        circuits = await read_states(
            state.store.redis, settings.redis.key_prefix, [e.name for e in entries]
        )
        guarded = len(entries) > 1
        models = [
            ModelInfo(
                **view,
                circuit=circuits[view["name"]].as_dict() if guarded else {"state": "unused"},
            )
            for view in views
        ]
        return ModelList(
            models=models,
            failover=guarded,
            breaker={
                "failures": settings.llm.breaker_failures,
                "cooldown_seconds": settings.llm.breaker_cooldown_seconds,
                "shared": "redis",
            },
        )

    @get("/toolsets", summary="Toolsets: enabled, disabled or failed", guards=[requires(READ)])
    async def toolsets(self, state: State) -> ToolsetList:
        settings: Settings = state.settings
        llm = settings.llm
        files = [str(p) for p in llm.custom_toolset_files]
        snapshot = await read_catalog(state.store.redis, settings.redis.key_prefix)
        if snapshot is not None and isinstance(snapshot.get("toolsets"), list):
            return ToolsetList(
                source="worker",
                updated_at=snapshot.get("updated_at"),
                toolsets=[ToolsetInfo.model_validate(t) for t in snapshot["toolsets"]],
                custom_toolset_files=files,
                python_toolsets=list(llm.python_toolsets),
            )
        configured = [
            ToolsetInfo(
                name=name,
                status="enabled" if cfg.get("enabled") else "disabled",
                enabled=bool(cfg.get("enabled")),
            )
            for name, cfg in sorted(llm.toolsets.items())
        ]
        return ToolsetList(
            source="settings",
            toolsets=configured,
            custom_toolset_files=files,
            python_toolsets=list(llm.python_toolsets),
        )
