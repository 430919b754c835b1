"""The broker and Redis go away mid-stream and come back: nothing lost, nothing run twice.

These tests stop and restart the session's shared Kafka broker and Redis (their data stays on
disk), so they restore both before they end.
"""

from __future__ import annotations

import asyncio
import time

import httpx
from aiokafka import AIOKafkaProducer

from holmes_stream.devstack.stack import LocalStack
from tests.conftest import collect, make_settings
from tests.test_delivery import firing_alert, send, wait_for_records


async def test_kafka_broker_down_for_15_seconds_loses_and_repeats_nothing(
    stack: LocalStack, uid: str, producer: AIOKafkaProducer, scripted_llm_factory, start_worker
) -> None:
    llm = scripted_llm_factory(latency_seconds=0.3)
    settings = make_settings(stack, uid, llm.api_base, max_in_flight=8)
    await start_worker(settings)
    n = 40
    await send(producer, settings.kafka.alerts_topic, [firing_alert(uid, i) for i in range(n)])
    await wait_for_records(settings, 5)

    stack.kafka.stop()
    stopped = time.monotonic()
    await asyncio.sleep(15)
    stack.kafka.start()
    records = await wait_for_records(settings, n, timeout=240)
    print(f"\nbroker outage: all {n} done {time.monotonic() - stopped:.1f}s after the stop")

    assert len(records) == n
    assert {r.status for r in records} == {"completed"}
    assert llm.stats()["final_turns"] == n  # no episode investigated twice
    results = await collect(
        settings.kafka.bootstrap_servers,
        settings.kafka.results_topic,
        until=lambda got: len({m["id"] for m in got}) >= n,
    )
    assert {m["id"] for m in results} == {r.id for r in records}


async def test_redis_restart_loses_and_repeats_nothing_and_the_api_answers_503(
    stack: LocalStack,
    uid: str,
    producer: AIOKafkaProducer,
    scripted_llm_factory,
    start_worker,
    start_api,
) -> None:
    llm = scripted_llm_factory(latency_seconds=0.3)
    settings = make_settings(stack, uid, llm.api_base, max_in_flight=8)
    runtime = await start_worker(settings)
    api = await start_api(settings, runtime)
    n = 40
    await send(producer, settings.kafka.alerts_topic, [firing_alert(uid, i) for i in range(n)])
    [first, *_] = await wait_for_records(settings, 5)

    stack.redis.stop()
    try:
        async with httpx.AsyncClient(base_url=api, timeout=30) as client:
            lookup = await client.get(f"/api/v1/investigations/{first.id}")
            ready = await client.get("/ready")
        assert lookup.status_code == 503, lookup.text
        assert lookup.headers["content-type"].startswith("application/problem+json")
        assert "Retry-After" in lookup.headers
        assert ready.status_code == 503 and ready.json()["checks"]["redis"]["ok"] is False
        await asyncio.sleep(5)
    finally:
        stack.redis.start()

    records = await wait_for_records(settings, n, timeout=240)
    assert len(records) == n
    assert {r.status for r in records} == {"completed"}
    assert llm.stats()["final_turns"] == n
    async with httpx.AsyncClient(base_url=api, timeout=30) as client:
        assert (await client.get(f"/api/v1/investigations/{first.id}")).status_code == 200
