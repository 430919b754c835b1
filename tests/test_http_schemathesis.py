"""Property-based test of the served OpenAPI document: no generated input gives a 5xx."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import uvicorn

from holmes_stream.auth import hash_key
from holmes_stream.settings import ApiKey, AuthSettings
from tests.conftest import make_settings

MAX_EXAMPLES = 25


@pytest.fixture
def served_api(stack, uid: str) -> Iterator[str]:
    """The app in its own thread and loop: schemathesis calls are blocking."""
    from holmes_stream.http import create_app

    settings = make_settings(stack, uid)
    settings.auth = AuthSettings(
        mode="required",
        api_keys=[ApiKey(name="fuzz", sha256=hash_key("fuzz-key"), scopes=["admin"])],
    )
    config = uvicorn.Config(
        create_app(settings),
        host="127.0.0.1",
        port=settings.api.port,
        log_config=None,
        lifespan="on",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "API did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{settings.api.port}"
    server.should_exit = True
    thread.join(15)


def test_no_generated_request_gets_a_server_error(served_api: str) -> None:
    import schemathesis
    from hypothesis import HealthCheck, given, settings

    document = httpx.get(f"{served_api}/docs/openapi.json").json()
    schema = schemathesis.openapi.from_dict(document)
    headers = {"X-API-Key": "fuzz-key"}
    failures: list[str] = []
    tested = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        tested += 1

        @given(case=operation.as_strategy())
        @settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def check(case: schemathesis.Case) -> None:
            response = case.call(base_url=served_api, headers=headers, timeout=10)
            if response.status_code >= 500:
                where = f"{case.method} {case.formatted_path}"
                failures.append(f"{where} -> {response.status_code}: {response.text[:300]}")
            if response.status_code >= 400:
                content_type = response.headers.get("content-type") or [""]
                if isinstance(content_type, list):
                    content_type = content_type[0]
                assert content_type.startswith("application/problem+json"), (
                    case.method,
                    case.formatted_path,
                    response.status_code,
                )

        check()
    assert tested >= 8
    assert failures == []
