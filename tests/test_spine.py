"""An alert on a real Kafka topic comes back as an investigated, stored, published result."""

from __future__ import annotations

import json

import httpx
from aiokafka import AIOKafkaProducer

from holmes_stream.settings import Settings
from tests.conftest import collect, fresh, load_fixture


async def read_sse(url: str, headers: dict[str, str] | None = None) -> list[dict[str, str]]:
    """Every SSE message of a stream that ends by itself."""
    events: list[dict[str, str]] = []
    current: dict[str, str] = {}
    async with httpx.AsyncClient(timeout=60) as client:
        async with client.stream("GET", url, headers=headers or {}) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            async for line in response.aiter_lines():
                if not line:
                    if current:
                        events.append(current)
                    current = {}
                elif not line.startswith(":"):
                    field, _, value = line.partition(":")
                    current[field] = value.lstrip(" ")
    return events


async def test_alertmanager_group_on_kafka_is_investigated_stored_and_published(
    settings: Settings, uid: str, producer: AIOKafkaProducer, start_worker, start_api
) -> None:
    runtime = await start_worker(settings)
    api = await start_api(settings, runtime)
    group = fresh(load_fixture("group-firing-crashloop.json"), uid)
    await producer.send_and_wait(settings.kafka.alerts_topic, json.dumps(group).encode())

    results = await collect(
        settings.kafka.bootstrap_servers,
        settings.kafka.results_topic,
        until=lambda got: len({r["id"] for r in got}) >= 2,
    )
    by_fp = {r["fingerprint"]: r for r in results}
    assert set(by_fp) == {a["fingerprint"] for a in group["alerts"]}
    for record in by_fp.values():
        assert record["status"] == "completed", record
        assert record["schema_version"] == 1
        result = record["result"]
        assert [t["tool_name"] for t in result["tool_calls"]] == ["investigation_history"]
        # The history tool read this very record from Redis; the analysis quotes its output.
        assert record["id"] in result["tool_calls"][0]["output_excerpt"]
        assert record["id"] in result["analysis"]
        assert result["num_llm_calls"] == 2 and result["total_tokens"] > 0

    async with httpx.AsyncClient(base_url=api) as client:
        for record in by_fp.values():
            stored = (await client.get(f"/api/v1/investigations/{record['id']}")).json()
            assert stored["status"] == "completed"
            assert stored["result"]["analysis"] == record["result"]["analysis"]
        missing = await client.get("/api/v1/investigations/nope")
        assert missing.status_code == 404
        assert missing.headers["content-type"].startswith("application/problem+json")

    some_id = next(iter(by_fp.values()))["id"]
    events = await read_sse(f"{api}/api/v1/investigations/{some_id}/events")
    seqs = [int(e["id"]) for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    types = [e["event"] for e in events]
    assert types[0] == "started" and types[-1] == "completed"
    assert {"start_tool_calling", "tool_calling_result", "ai_answer_end"} <= set(types)


async def test_progress_and_results_carry_key_and_fingerprint_header(
    settings: Settings, uid: str, producer: AIOKafkaProducer, start_worker
) -> None:
    await start_worker(settings)
    alert = fresh(load_fixture("single-alert.json"), uid)
    await producer.send_and_wait(settings.kafka.alerts_topic, json.dumps(alert).encode())
    results = await collect(
        settings.kafka.bootstrap_servers,
        settings.kafka.results_topic,
        until=lambda got: len(got) >= 1,
        decode=False,
    )
    record = json.loads(results[0].value)
    assert results[0].key.decode() == record["id"]
    headers = dict(results[0].headers)
    assert headers["alert-fingerprint"].decode() == alert["fingerprint"]
    assert headers["schema-version"] == b"1"
    progress = await collect(
        settings.kafka.bootstrap_servers,
        settings.kafka.progress_topic,
        until=lambda got: any(json.loads(m.value)["type"] == "completed" for m in got),
        decode=False,
    )
    events = [json.loads(m.value) for m in progress]
    assert all(m.key.decode() == record["id"] for m in progress)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
