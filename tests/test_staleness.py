"""Which alerts settle without an LLM run, and the staleness reason their record is given: by
when the alert started firing and when it reached Kafka, either side of the window."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from holmes_stream.intake import AlertWork
from holmes_stream.schemas import Alert
from holmes_stream.service import InvestigationService, Source
from holmes_stream.settings import WorkerSettings
from tests.conftest import load_fixture

WINDOW = 3600
# Well inside and outside the window, measured from when each test runs: clear of its edge.
AGES = [None, timedelta(0), timedelta(seconds=WINDOW - 600), timedelta(seconds=WINDOW + 600)]


def service() -> InvestigationService:
    settings = WorkerSettings(stale_after_seconds=WINDOW)
    return InvestigationService(store=None, producers=None, settings=settings)  # type: ignore[arg-type]


@pytest.mark.parametrize("status", ["firing", "resolved"])
@pytest.mark.parametrize("started_ago", AGES[1:])
@pytest.mark.parametrize("produced_ago", AGES)
def test_settles_without_run_iff_resolved_or_a_staleness_reason(
    status: str, started_ago: timedelta, produced_ago: timedelta | None
) -> None:
    now = datetime.now(UTC)
    fields: dict[str, Any] = {"status": status, "startsAt": (now - started_ago).isoformat()}
    work = AlertWork(Alert.model_validate(load_fixture("single-alert.json") | fields))
    produced = None if produced_ago is None else int((now - produced_ago).timestamp() * 1000)
    source = Source("alerts", 0, 1, timestamp_ms=produced)
    svc = service()
    reason = svc._staleness(work, source)
    assert svc.settles_without_run(work, source) == (status == "resolved" or reason is not None)
    expected_stale = started_ago > timedelta(seconds=WINDOW) or (
        produced_ago is not None and produced_ago > timedelta(seconds=WINDOW)
    )
    assert (reason is not None) == expected_stale
