"""Alertmanager webhook v4 payloads and single alerts as bridges send them."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# Alertmanager marks a still-firing alert with the zero time.
_ZERO_TIME_YEAR = 1


class Alert(BaseModel):
    """One Alertmanager alert."""

    model_config = ConfigDict(extra="allow")

    status: Literal["firing", "resolved"] = "firing"
    labels: dict[str, str] = Field(min_length=1)
    annotations: dict[str, str] = Field(default_factory=dict)
    startsAt: datetime
    endsAt: datetime | None = None
    generatorURL: str | None = None
    fingerprint: str | None = None

    @field_validator("endsAt")
    @classmethod
    def _zero_time_is_none(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.year == _ZERO_TIME_YEAR:
            return None
        return value

    @field_validator("startsAt", "endsAt")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value

    @property
    def alertname(self) -> str:
        return self.labels.get("alertname", "unknown")

    @property
    def namespace(self) -> str | None:
        return self.labels.get("namespace")

    @property
    def severity(self) -> str | None:
        return self.labels.get("severity")

    def identity(self) -> str:
        """The alert's stable identity: Alertmanager's fingerprint, else a hash of its labels."""
        if self.fingerprint:
            return self.fingerprint
        canonical = json.dumps(sorted(self.labels.items()), separators=(",", ":"))
        return "l" + hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def episode_key(self) -> str:
        """One firing episode: the alert's identity plus when it started firing."""
        started = self.startsAt
        if started.utcoffset():  # a zero offset is written as UTC's "+00:00": no conversion
            started = started.astimezone(UTC)
        # Positional: isoformat's keyword parsing is a sixth of this key's cost, once per alert.
        started_at = started.isoformat("T", "milliseconds")
        raw = f"{self.identity()}|{started_at}"
        return hashlib.sha256(raw.encode()).hexdigest()[:32]


class AlertGroup(BaseModel):
    """Alertmanager webhook payload, version 4."""

    model_config = ConfigDict(extra="allow")

    version: str = "4"
    groupKey: str | None = None
    truncatedAlerts: int = 0
    status: Literal["firing", "resolved"] = "firing"
    receiver: str | None = None
    groupLabels: dict[str, str] = Field(default_factory=dict)
    commonLabels: dict[str, str] = Field(default_factory=dict)
    commonAnnotations: dict[str, str] = Field(default_factory=dict)
    externalURL: str | None = None
    alerts: list[Alert] = Field(min_length=1)
