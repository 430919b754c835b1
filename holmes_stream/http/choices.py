"""The model and toolsets a caller may choose: checked where the request arrives (422), not
left for a worker to refuse after the 202."""

from __future__ import annotations

from collections.abc import Iterable

from litestar.datastructures import State

from holmes_stream.engine.catalog import read_catalog
from holmes_stream.http.problems import Problem


def check_model(state: State, model: str | None) -> None:
    """A configured model (by name or litellm model), nothing else."""
    if model is None:
        return
    entries = state.settings.llm.model_entries()
    if any(model in (e.name, e.model) for e in entries):
        return
    allowed = ", ".join(e.name for e in entries)
    raise Problem(422, "Invalid request", f"model: {model!r} is not configured ({allowed})")


async def check_toolsets(state: State, wanted: Iterable[str]) -> None:
    """Toolsets a worker has enabled, as its catalog snapshot lists them. Before any worker
    has written one, nothing is refused here: the worker that takes the request decides."""
    wanted = set(wanted)
    if not wanted:
        return
    snapshot = await read_catalog(state.store.redis, state.settings.redis.key_prefix)
    toolsets = (snapshot or {}).get("toolsets")
    if not isinstance(toolsets, list):
        return
    enabled = {t.get("name") for t in toolsets if isinstance(t, dict) and t.get("enabled")}
    unknown = sorted(wanted - enabled)
    if unknown:
        offered = ", ".join(sorted(str(n) for n in enabled))
        raise Problem(
            422,
            "Invalid request",
            f"toolsets: not enabled: {', '.join(unknown)} (enabled: {offered})",
        )
