"""Shrink a JSON-able value until its JSON fits a character budget.

The prompt has room for context, not for whatever a source returns; cutting lists and strings
step by step keeps the structure readable, where cutting the JSON text would break it.
"""

from __future__ import annotations

import json
from typing import Any

# (items kept per list/dict, characters kept per string), gentlest first.
_LEVELS = ((50, 2000), (20, 800), (10, 300), (5, 120), (3, 60), (1, 30))


def json_size(value: Any) -> int:
    return len(json.dumps(value, default=str, separators=(",", ":")))


def bound(value: Any, max_chars: int) -> Any:
    """``value`` itself if it fits, else a trimmed copy; at worst a truncated preview."""
    if json_size(value) <= max_chars:
        return value
    for items, chars in _LEVELS:
        trimmed = _clip(value, items, chars)
        if json_size(trimmed) <= max_chars:
            return trimmed
    text = json.dumps(value, default=str, separators=(",", ":"))
    return {"truncated": True, "preview": text[: max(0, max_chars - 40)]}


def _clip(value: Any, items: int, chars: int) -> Any:
    if isinstance(value, str):
        return value if len(value) <= chars else value[:chars] + "...[cut]"
    if isinstance(value, dict):
        out = {str(k): _clip(v, items, chars) for k, v in list(value.items())[:items]}
        if len(value) > items:
            out["..."] = f"{len(value) - items} more keys"
        return out
    if isinstance(value, list | tuple):
        clipped = [_clip(v, items, chars) for v in value[:items]]
        if len(value) > items:
            clipped.append(f"... {len(value) - items} more")
        return clipped
    return value
