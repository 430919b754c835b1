"""The REST face: submit, lookup, list, cancel, errors as problem+json, headers, metrics, docs."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from aiokafka import AIOKafkaProducer  # noqa: F401 - fixture type

from holmes_stream.settings import Settings
from tests.conftest import ROOT, collect, free_port, fresh, load_fixture, make_settings

PROBLEM = "application/problem+json"


def alert(uid: str, i: int, **labels: str) -> dict[str, Any]:
    payload = fresh(load_fixture("single-alert.json"), f"{uid}-{i}")
    payload["labels"].update(labels)
    return payload


def assert_problem(response: httpx.Response, status: int, *fragments: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM), response.headers
    body = response.json()
    assert body["status"] == status and body["title"] and body["type"] == "about:blank"
    for fragment in fragments:
        assert fragment in body["detail"], body
    return body


async def test_submit_lookup_list_filter_paginate_cancel(
    settings: Settings, uid: str, start_api
) -> None:
    api = await start_api(settings)
    async with httpx.AsyncClient(base_url=api, timeout=30) as client:
        # A single alert, an Alertmanager group, and an explicit request with model/toolsets.
        single = alert(uid, 0, severity="critical")
        one = await client.post("/api/v1/investigations", json=single)
        assert one.status_code == 202, one.text
        first = one.json()["investigations"][0]
        assert (
            one.headers["location"] == first["href"] == f"{api}/api/v1/investigations/{first['id']}"
        )
        assert first["status"] == "queued" and first["duplicate"] is False

        group = fresh(load_fixture("group-firing-crashloop.json"), uid)
        many = await client.post("/api/v1/investigations", json=group)
        assert many.status_code == 202 and len(many.json()["investigations"]) == 2

        request = {
            "kind": "investigation_request",
            "alert": alert(uid, 1, alertname="DiskFull", namespace=f"ns-{uid}", severity="warning"),
            "question": "why?",
            "model": "openai/scripted",
            "toolsets": ["kubernetes/core"],
        }
        explicit = await client.post("/api/v1/investigations", json=request)
        assert explicit.status_code == 202, explicit.text
        explicit_id = explicit.json()["investigations"][0]["id"]

        again = await client.post("/api/v1/investigations", json=single)
        assert again.json()["investigations"][0] == {**first, "duplicate": True}

        record = (await client.get(f"/api/v1/investigations/{explicit_id}")).json()
        assert record["question"] == "why?" and record["alert"]["labels"]["alertname"] == "DiskFull"

        for i in range(2, 6):
            r = await client.post(
                "/api/v1/investigations",
                json=alert(uid, i, alertname=f"Page{uid}", severity="info"),
            )
            assert r.status_code == 202

        # Filters.
        by_name = (
            await client.get("/api/v1/investigations", params={"alertname": f"Page{uid}"})
        ).json()
        assert len(by_name["items"]) == 4 and by_name["next_cursor"] is None
        by_ns = (
            await client.get("/api/v1/investigations", params={"namespace": f"ns-{uid}"})
        ).json()
        assert [r["id"] for r in by_ns["items"]] == [explicit_id], by_ns
        by_sev = (
            await client.get("/api/v1/investigations", params={"severity": "critical"})
        ).json()
        assert [r["id"] for r in by_sev["items"]] == [first["id"]]
        both = {"alertname": f"Page{uid}", "severity": "info", "limit": 3}
        page1 = (await client.get("/api/v1/investigations", params=both)).json()
        page2 = (
            await client.get(
                "/api/v1/investigations", params={**both, "cursor": page1["next_cursor"]}
            )
        ).json()
        assert (
            len(page1["items"]) == 3 and len(page2["items"]) == 1 and page2["next_cursor"] is None
        )
        queued = (await client.get("/api/v1/investigations", params={"status": "queued"})).json()
        assert len(queued["items"]) == 8
        done = (await client.get("/api/v1/investigations", params={"status": "completed"})).json()
        assert done == {"items": [], "next_cursor": None}

        # Time range.
        future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
        past = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
        assert (await client.get("/api/v1/investigations", params={"since": future})).json()[
            "items"
        ] == []
        assert (
            len(
                (await client.get("/api/v1/investigations", params={"until": future})).json()[
                    "items"
                ]
            )
            == 8
        )
        assert (await client.get("/api/v1/investigations", params={"until": past})).json()[
            "items"
        ] == []

        # Cursor pagination: newest first, no gaps, no repeats.
        seen: list[str] = []
        cursor = None
        pages = 0
        while True:
            params: dict[str, Any] = {"limit": 3}
            if cursor:
                params["cursor"] = cursor
            page = (await client.get("/api/v1/investigations", params=params)).json()
            seen += [r["id"] for r in page["items"]]
            pages += 1
            cursor = page["next_cursor"]
            if not cursor:
                break
        assert len(seen) == len(set(seen)) == 8 and pages >= 3
        created = [
            (await client.get(f"/api/v1/investigations/{i}")).json()["created_at"] for i in seen
        ]
        assert created == sorted(created, reverse=True)

        # Cancel: accepted for a queued one, 404 for unknown ids.
        cancelled = await client.post(f"/api/v1/investigations/{explicit_id}/cancel")
        assert cancelled.status_code == 202 and cancelled.json()["id"] == explicit_id
        assert_problem(await client.post("/api/v1/investigations/nope/cancel"), 404, "nope")
        assert_problem(await client.get("/api/v1/investigations/nope"), 404, "nope")
        assert_problem(await client.get("/api/v1/investigations/nope/events"), 404, "nope")


async def test_submit_refuses_a_model_or_toolset_no_worker_would_run(
    settings: Settings, uid: str, start_api
) -> None:
    from redis.asyncio import Redis

    from holmes_stream.engine.catalog import catalog_key

    api = await start_api(settings)

    def request(i: int, **choices: Any) -> dict[str, Any]:
        return {"kind": "investigation_request", "alert": alert(uid, i), **choices}

    configured = settings.llm.model_entries()[0]
    async with httpx.AsyncClient(base_url=api, timeout=30) as client:
        submit = client.post
        assert_problem(
            await submit("/api/v1/investigations", json=request(0, model="gpt-nope")),
            422,
            "model: 'gpt-nope' is not configured",
            configured.name,
        )
        for i, model in enumerate((configured.name, configured.model), start=1):
            ok = await submit("/api/v1/investigations", json=request(i, model=model))
            assert ok.status_code == 202, ok.text
        # No worker has listed its toolsets yet: the worker that takes the request decides.
        ok = await submit("/api/v1/investigations", json=request(3, toolsets=["nope"]))
        assert ok.status_code == 202, ok.text

        redis = Redis.from_url(settings.redis.url)
        catalog = {
            "toolsets": [
                {"name": "investigation_history", "status": "enabled", "enabled": True},
                {"name": "kubernetes/core", "status": "disabled", "enabled": False},
            ]
        }
        await redis.set(catalog_key(settings.redis.key_prefix), json.dumps(catalog))
        await redis.aclose()
        for i, toolsets in enumerate((["kubernetes/core"], ["investigation_history", "nope"])):
            assert_problem(
                await submit("/api/v1/investigations", json=request(4 + i, toolsets=toolsets)),
                422,
                "toolsets: not enabled",
                toolsets[-1],
                "(enabled: investigation_history)",
            )
        ok = await submit(
            "/api/v1/investigations", json=request(6, toolsets=["investigation_history"])
        )
        assert ok.status_code == 202, ok.text
        # Nothing refused reached Kafka as a record either.
        listed = (await client.get("/api/v1/investigations", params={"limit": 50})).json()
        assert len(listed["items"]) == 4


async def test_errors_are_problems_naming_the_field(stack, uid: str, start_api) -> None:
    settings = make_settings(stack, uid)
    settings.api.max_body_bytes = 20_000
    api = await start_api(settings)
    bad_group = {"alerts": [{"startsAt": "2024-01-01T00:00:00Z"}]}
    async with httpx.AsyncClient(base_url=api, timeout=30) as client:
        body = assert_problem(
            await client.post("/api/v1/alertmanager", json=bad_group),
            422,
            "alerts.0.labels: Field required",
        )
        assert body["errors"][0]["key"] == "alerts.0.labels"
        assert_problem(
            await client.post("/api/v1/investigations", json=bad_group),
            422,
            "alerts.0.labels: Field required",
        )
        assert_problem(
            await client.post("/api/v1/alertmanager", json={"alerts": []}), 422, "alerts"
        )
        assert_problem(await client.post("/api/v1/investigations", json=[1, 2]), 422, "(body)")
        assert_problem(
            await client.post(
                "/api/v1/investigations",
                content=b"{not json",
                headers={"content-type": "application/json"},
            ),
            400,
        )
        big = {
            "labels": {"alertname": "X", "blob": "x" * 30_000},
            "startsAt": "2024-01-01T00:00:00Z",
        }
        assert_problem(await client.post("/api/v1/investigations", json=big), 413, "20000 bytes")
        assert_problem(
            await client.get("/api/v1/investigations", params={"limit": 0}), 400, "limit"
        )
        assert_problem(
            await client.get("/api/v1/investigations", params={"cursor": "!!"}), 400, "cursor"
        )
        assert_problem(
            await client.get(
                "/api/v1/investigations",
                params={"since": "2030-01-01T00:00:00Z", "until": "2020-01-01T00:00:00Z"},
            ),
            400,
            "since",
        )
        assert_problem(await client.get("/no/such/route"), 404)


async def test_security_headers_cors_and_route_metrics(stack, uid: str, start_api) -> None:
    settings = make_settings(stack, uid)
    settings.api.cors_origins = ["https://console.example"]
    settings.api.hsts_max_age_seconds = 3600
    api = await start_api(settings)
    async with httpx.AsyncClient(base_url=api, timeout=30) as client:
        for response in (
            await client.get("/health"),
            await client.get(f"/api/v1/investigations/x{uid}"),
        ):
            headers = response.headers
            assert headers["x-content-type-options"] == "nosniff"
            assert headers["x-frame-options"] == "DENY"
            assert headers["referrer-policy"] == "no-referrer"
            assert "default-src 'none'" in headers["content-security-policy"]
            assert headers["strict-transport-security"].startswith("max-age=3600")
        preflight = await client.options(
            "/api/v1/investigations",
            headers={
                "Origin": "https://console.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization,content-type",
            },
        )
        assert preflight.headers["access-control-allow-origin"] == "https://console.example"
        other = await client.get("/health", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers

        page = await client.get("/ui/investigations/abc")
        assert (
            page.status_code == 200
            and "script-src 'self'" in page.headers["content-security-policy"]
        )

        assert (await client.get("/docs/openapi.json")).status_code == 200
        text = (await client.get("/metrics")).text
    # Route templates, not raw paths, label the request metrics.
    assert (
        'holmes_stream_http_requests_total{method="GET",route="/api/v1/investigations/{investigation_id}",status="404"}'
        in text
    )
    assert f"x{uid}" not in text
    assert 'holmes_stream_http_request_duration_seconds_count{method="GET",route="/health"}' in text


async def test_alertmanager_receiver_answers_503_when_kafka_is_unreachable_then_processes_once(
    stack, uid: str, start_api, start_worker
) -> None:
    down = make_settings(stack, uid)
    down.kafka.bootstrap_servers = f"127.0.0.1:{free_port()}"
    down_api = await start_api(down)  # a publish-only API must start without Kafka
    group = fresh(load_fixture("group-firing-crashloop.json"), uid)
    async with httpx.AsyncClient(timeout=30) as client:
        refused = await client.post(f"{down_api}/api/v1/alertmanager", json=group)
        body = assert_problem(refused, 503, "Kafka")
        assert int(refused.headers["retry-after"]) > 0 and body["retry_after"] > 0
        ready = await client.get(f"{down_api}/ready")
        assert ready.status_code == 503 and ready.json()["checks"]["kafka"]["ok"] is False
        assert ready.json()["checks"]["redis"]["ok"] is True

        # Alertmanager retries (here: against a healthy replica): accepted, investigated once.
        settings = make_settings(stack, uid)
        runtime = await start_worker(settings)
        api = await start_api(settings, runtime)
        accepted = await client.post(f"{api}/api/v1/alertmanager", json=group)
        assert accepted.status_code == 202, accepted.text
        ids = {i["id"] for i in accepted.json()["investigations"]}
        results = await collect(
            settings.kafka.bootstrap_servers,
            settings.kafka.results_topic,
            until=lambda got: {r["id"] for r in got} >= ids,
        )
        resent = await client.post(f"{api}/api/v1/alertmanager", json=group)
        assert resent.status_code == 202
        assert all(i["duplicate"] for i in resent.json()["investigations"])
        alerts_seen = await collect(
            settings.kafka.bootstrap_servers,
            settings.kafka.alerts_topic,
            until=lambda got: len(got) >= 2,
            timeout=5,
        )
    assert len(alerts_seen) == 2  # the re-send was answered from the store, not published again
    assert sorted(r["id"] for r in results) == sorted(ids)
    assert all(r["status"] == "completed" for r in results)


def test_checked_in_documents_match_the_code(tmp_path: Path) -> None:
    from holmes_stream.cli import main

    assert main(["docs", "--out", str(tmp_path)]) == 0
    for name in ("openapi.json", "asyncapi.json", "configuration.md"):
        fresh_doc = (tmp_path / name).read_text()
        checked_in = (ROOT / "docs" / name).read_text()
        assert fresh_doc == checked_in, (
            f"docs/{name} is stale: run `holmes-stream docs --out docs/`"
        )
    openapi = json.loads((tmp_path / "openapi.json").read_text())
    assert "/api/v1/investigations/{investigation_id}/events" in openapi["paths"]
    asyncapi = json.loads((tmp_path / "asyncapi.json").read_text())
    addresses = {c["address"] for c in asyncapi["channels"].values()}
    assert {"alerts", "investigation.results", "investigation.progress", "alerts.dlq"} <= addresses
    # The alerts topic is both consumed (workers) and published to (the API).
    assert {"alerts:consume", "alerts:publish"} <= set(asyncapi["channels"])


def test_the_api_is_served_with_uvicorns_c_http_parser() -> None:
    """Without httptools uvicorn falls back to pure-Python h11: about half the requests per
    second (bench figure 5), and nothing would say so."""
    from litestar import Litestar

    from holmes_stream.cli import uvicorn_config

    config = uvicorn_config(Litestar(route_handlers=[]), "127.0.0.1", 0)
    config.load()
    assert config.http_protocol_class.__name__ == "HttpToolsProtocol"
