"""The configuration reference (docs/configuration.md), generated from the settings models."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, SecretStr
from pydantic_core import PydanticUndefined

from holmes_stream.settings import Settings

_PREFIX = "HOLMES_STREAM_"


def _default(field: Any) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
    elif field.default is PydanticUndefined:
        return "(required)"
    else:
        value = field.default
    if isinstance(value, SecretStr):
        return "(secret)"
    if isinstance(value, BaseModel):
        return ""
    if value is None:
        return "unset"
    text = json.dumps(value, default=str) if not isinstance(value, str) else value
    return f"`{text}`" if text != "" else '`""`'


def _rows(model: type[BaseModel], env: str) -> list[tuple[str, str, str]]:
    rows = []
    for name, field in model.model_fields.items():
        key = f"{env}{name.upper()}"
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            rows.extend(_rows(annotation, key + "__"))
            continue
        rows.append((key, _default(field), (field.description or "").replace("|", "\\|")))
    return rows


def configuration_reference() -> str:
    lines = [
        "# Configuration reference",
        "",
        "Every setting is an environment variable; nested groups are joined with a double",
        "underscore. Lists and objects are JSON. Generated from `holmes_stream/settings.py` by",
        "`holmes-stream docs --out docs/`; a test fails when this file is stale.",
        "",
        "| variable | default | meaning |",
        "| --- | --- | --- |",
    ]
    lines += [f"| `{k}` | {d} | {m} |" for k, d, m in _rows(Settings, _PREFIX)]
    return "\n".join(lines) + "\n"
