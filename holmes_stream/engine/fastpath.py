"""Cheaper paths through HolmesGPT that send byte-identical requests (phase 2: placeholder)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from holmes.config import Config
    from holmes.core.tool_calling_llm import ToolCallingLLM


def create_toolcalling_llm(config: Config) -> ToolCallingLLM:
    from holmes.core.tools import PrerequisiteCacheMode, ToolsetTag

    return config.create_toolcalling_llm(
        toolset_tag_filter=[ToolsetTag.CORE, ToolsetTag.CLUSTER],
        enable_all_toolsets_possible=False,
        prerequisite_cache=PrerequisiteCacheMode.DISABLED,
        reuse_executor=True,
    )


def build_chat_messages(ask: str, *, ai: ToolCallingLLM, config: Config) -> list[dict[str, Any]]:
    from holmes.core.conversations import build_chat_messages as holmes_build

    return holmes_build(ask, [], ai=ai, config=config)


def warm(ai: ToolCallingLLM, config: Config) -> None:
    return None
