"""HolmesGPT toolsets of our own that work without a cluster."""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import redis

# This module imports holmes (and so litellm) at import time: keep litellm from downloading its
# price map, as holmes_engine does before its own lazy import.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from holmes.core.tools import (
    StructuredToolResult,
    StructuredToolResultStatus,
    Tool,
    ToolInvokeContext,
    ToolParameter,
    Toolset,
    ToolsetTag,
)
from pydantic import PrivateAttr

log = logging.getLogger(__name__)

HISTORY_TOOLSET_NAME = "holmes_stream"
NO_HISTORY = "No earlier investigations found."
DEFAULT_LIMIT = 5
MAX_LIMIT = 20
ANALYSIS_EXCERPT_CHARS = 300

# Most specific first: a fingerprint names one alert, a namespace many.
_INDEX_ORDER: tuple[tuple[str, str], ...] = (
    ("fingerprint", "fp"),
    ("alertname", "alertname"),
    ("namespace", "ns"),
)


# The newest ids of one index and their records in one round trip: the tool runs on an agent
# loop's thread, where every blocking call queues again for the GIL. KEYS[1] the index; ARGV
# the key prefix and how many. Returns the records (nil for an expired one), newest first.
_HISTORY = """
local ids = redis.call('ZREVRANGE', KEYS[1], 0, tonumber(ARGV[2]) - 1)
if #ids == 0 then
  return {}
end
local keys = {}
for i, id in ipairs(ids) do
  keys[i] = ARGV[1] .. 'inv:' .. id
end
return redis.call('MGET', unpack(keys))
"""


def index_key(key_prefix: str, params: dict[str, Any]) -> str:
    """The sorted set to read: the most specific index the parameters name, else all."""
    for param, index in _INDEX_ORDER:
        value = params.get(param)
        if isinstance(value, str) and value.strip():
            return f"{key_prefix}idx:{index}:{value.strip()}"
    return f"{key_prefix}idx:all"


def _limit(params: dict[str, Any]) -> int:
    try:
        value = int(params.get("limit") or DEFAULT_LIMIT)
    except (TypeError, ValueError):
        value = DEFAULT_LIMIT
    return max(1, min(value, MAX_LIMIT))


def summarize_record(raw: str | bytes) -> dict[str, Any] | None:
    """A compact view of one stored InvestigationRecord; None when it is unreadable."""
    try:
        record = json.loads(raw)
    except (TypeError, ValueError):
        return None
    if not isinstance(record, dict):
        return None
    alert = record.get("alert") or {}
    labels = alert.get("labels") or {}
    result = record.get("result") or {}
    analysis = (result.get("analysis") or "").strip()
    summary: dict[str, Any] = {
        "id": record.get("id"),
        "status": record.get("status"),
        "created_at": record.get("created_at"),
        "alertname": labels.get("alertname"),
        "namespace": labels.get("namespace"),
        "fingerprint": record.get("fingerprint"),
    }
    if analysis:
        summary["analysis"] = analysis[:ANALYSIS_EXCERPT_CHARS]
    if record.get("reason"):
        summary["reason"] = record["reason"]
    return summary


class InvestigationHistoryTool(Tool):
    """Earlier investigations of the same alert, alertname or namespace, newest first."""

    _key_prefix: str = PrivateAttr()
    _history_script: Any = PrivateAttr()

    def __init__(self, client: redis.Redis, key_prefix: str) -> None:
        super().__init__(
            name="investigation_history",
            description=(
                "List earlier root-cause investigations of alerts, newest first: status, "
                "time, alertname, namespace and the start of the analysis. Filter by the "
                "alert's fingerprint (most specific), alertname or namespace; no filter "
                "lists the most recent investigations of any alert."
            ),
            parameters={
                "fingerprint": ToolParameter(
                    description="Alertmanager fingerprint of the alert", required=False
                ),
                "alertname": ToolParameter(
                    description="Value of the alertname label", required=False
                ),
                "namespace": ToolParameter(
                    description="Value of the namespace label", required=False
                ),
                "limit": ToolParameter(
                    description=f"How many to return (default {DEFAULT_LIMIT}, max {MAX_LIMIT})",
                    type="integer",
                    required=False,
                ),
            },
        )
        self._key_prefix = key_prefix
        self._history_script = client.register_script(_HISTORY)

    def _invoke(self, params: dict, context: ToolInvokeContext) -> StructuredToolResult:
        try:
            items = self._history(params)
        except redis.RedisError as exc:
            # The LLM can carry on without history; tell it why there is none.
            log.warning("investigation_history failed: %s", exc)
            return StructuredToolResult(
                status=StructuredToolResultStatus.ERROR,
                error=f"The investigation store is unavailable: {exc}",
                params=params,
            )
        data = json.dumps(items, separators=(",", ":"), default=str) if items else NO_HISTORY
        return StructuredToolResult(
            status=StructuredToolResultStatus.SUCCESS, data=data, params=params
        )

    def _history(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        raws = self._history_script(
            keys=[index_key(self._key_prefix, params)], args=[self._key_prefix, _limit(params)]
        )
        return [s for raw in raws if raw is not None and (s := summarize_record(raw)) is not None]

    def get_parameterized_one_liner(self, params: dict) -> str:
        filters = ", ".join(
            f"{name}={params[name]}" for name, _ in _INDEX_ORDER if params.get(name)
        )
        return f"{HISTORY_TOOLSET_NAME}: investigation history ({filters or 'all'})"


def history_toolset(redis_url: str, key_prefix: str) -> Toolset:
    """The ``holmes_stream`` toolset: read-only access to our own investigation store."""
    # Sync client: HolmesGPT runs tools on its own threads; redis-py's pool is thread-safe.
    client = redis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)
    return Toolset(
        name=HISTORY_TOOLSET_NAME,
        description="Earlier root-cause investigations made by holmes-stream",
        enabled=True,
        tags=[ToolsetTag.CORE],
        tools=[InvestigationHistoryTool(client, key_prefix)],
        llm_instructions=(
            "Use investigation_history to see whether this alert fired before and what "
            "earlier investigations concluded."
        ),
    )
