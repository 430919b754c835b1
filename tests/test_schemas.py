"""``construct`` builds what pydantic's ``model_construct`` builds, only faster."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import BaseModel

from holmes_stream.schemas import Alert, InvestigationRecord, ProgressEvent, Status
from holmes_stream.schemas.investigations import SCHEMA_VERSION, construct
from tests.conftest import load_fixture

WHEN = datetime(2026, 11, 27, 7, 0, 1, 234000, tzinfo=UTC)


def record_values() -> dict[str, Any]:
    alert = Alert.model_validate(load_fixture("single-alert.json") | {"extra": {"x": 1}})
    return {
        "schema_version": SCHEMA_VERSION,
        "id": "inv-1",
        "episode_key": "ep-1",
        "fingerprint": "fp-1",
        "tenant": None,
        "status": Status.SKIPPED,
        "reason": "stale: because",
        "alert": alert,
        "question": None,
        "created_at": WHEN,
        "started_at": None,
        "finished_at": WHEN,
        "resolved_at": None,
        "attempts": 0,
        "result": None,
        "error": None,
        "enrichment": {},
        "source": {"topic": "alerts", "partition": 0, "offset": 7},
    }


def event_values() -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "investigation_id": "inv-1",
        "seq": 0,
        "type": "skipped",
        "payload": {"status": "skipped"},
        "at": WHEN,
    }


def state(model: BaseModel) -> tuple[Any, ...]:
    # Every slot pydantic keeps on an instance (a new one fails the slot test below).
    return (
        list(model.__dict__.items()),
        model.__pydantic_fields_set__,
        model.__pydantic_extra__,
        model.__pydantic_private__,
        model.model_dump_json(),
    )


def test_pydantic_keeps_the_instance_state_that_construct_sets() -> None:
    assert set(BaseModel.__slots__) == {
        "__dict__",
        "__pydantic_fields_set__",
        "__pydantic_extra__",
        "__pydantic_private__",
    }


@pytest.mark.parametrize(
    ("cls", "values"), [(InvestigationRecord, record_values), (ProgressEvent, event_values)]
)
def test_construct_builds_what_model_construct_builds(cls: type[BaseModel], values: Any) -> None:
    ours, theirs = construct(cls, values()), cls.model_construct(**values())
    assert state(ours) == state(theirs)
    # And what validation would build from the same values.
    assert ours == cls.model_validate(values())


def test_private_attributes_are_per_instance() -> None:
    a, b = construct(ProgressEvent, event_values()), construct(ProgressEvent, event_values())
    a.set_json("{}")
    assert a.json_text() == "{}"
    assert b.json_text() == b.model_dump_json()


def test_construct_wants_every_field_and_no_other() -> None:
    values = event_values()
    del values["at"]
    with pytest.raises(KeyError, match="at"):
        construct(ProgressEvent, values)
    with pytest.raises(TypeError, match="bogus"):
        construct(ProgressEvent, {**event_values(), "bogus": 1})
