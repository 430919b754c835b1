"""`holmes-stream dev up|down` and `holmes-stream demo`: the whole thing on one machine."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from datetime import UTC, datetime
from importlib import resources
from typing import Any

from holmes_stream.devstack.service import ServiceProcess, service_env
from holmes_stream.devstack.stack import LocalStack
from holmes_stream.settings import Settings


def _stack(settings: Settings) -> LocalStack:
    return LocalStack(settings.dev_dir.resolve() / "stack")


def _service(settings: Settings, endpoints: dict[str, str]) -> ServiceProcess:
    env = service_env(
        endpoints,
        HOLMES_STREAM_API__PORT=str(settings.api.port),
        HOLMES_STREAM_API__HOST=settings.api.host,
    )
    return ServiceProcess("run", env, settings.dev_dir.resolve() / "service", name="service")


def up(settings: Settings) -> dict[str, str]:
    stack = _stack(settings)
    stack.start()
    endpoints = stack.endpoints()
    service = _service(settings, endpoints)
    service.start()
    return {
        **endpoints,
        "api_url": service.api_url,
        "service_log": str(service.log_file),
    }


def down(settings: Settings) -> None:
    stack = _stack(settings)
    _service(settings, stack.endpoints()).stop()
    stack.stop()


def sample_alerts(run_id: str) -> list[dict[str, Any]]:
    """The shipped Alertmanager samples, made fresh: firing now, fingerprints unique to the run."""
    now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    payloads = []
    for name in (
        "group-firing-crashloop.json",
        "group-firing-targetdown.json",
        "single-alert.json",
    ):
        payload = json.loads(resources.files("holmes_stream.fixtures").joinpath(name).read_text())
        alerts = payload["alerts"] if "alerts" in payload else [payload]
        for alert in alerts:
            alert["startsAt"] = now
            alert["fingerprint"] = f"{alert.get('fingerprint', 'x')}-{run_id}"
        payloads.append(payload)
    return payloads


async def _send_and_collect(endpoints: dict[str, str], settings: Settings) -> list[dict[str, Any]]:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    run_id = uuid.uuid4().hex[:6]
    payloads = sample_alerts(run_id)
    # The bare sample alert repeats one alert of the first group: one episode, one result.
    expected = len({a["fingerprint"] for p in payloads for a in p.get("alerts", [p])})
    bootstrap = endpoints["kafka_bootstrap_servers"]
    consumer = AIOKafkaConsumer(
        settings.kafka.results_topic, bootstrap_servers=bootstrap, auto_offset_reset="latest"
    )
    await consumer.start()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        await consumer.seek_to_end()
        for payload in payloads:
            await producer.send_and_wait(settings.kafka.alerts_topic, json.dumps(payload).encode())
            print(f"sent {payload.get('groupKey') or payload['labels']['alertname']}")
        results: list[dict[str, Any]] = []
        deadline = time.monotonic() + 120
        while len(results) < expected and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=1000)
            for records in batch.values():
                for rec in records:
                    record = json.loads(rec.value)
                    if record["fingerprint"].endswith(run_id):
                        results.append(record)
                        _print_result(record)
        return results
    finally:
        await producer.stop()
        await consumer.stop()


def _print_result(record: dict[str, Any]) -> None:
    alert = record["alert"]["labels"]
    result = record.get("result") or {}
    print(
        f"\n=== {record['status'].upper()} {alert.get('alertname')} {alert.get('pod', '')}"
        f" (id {record['id']})"
    )
    if result:
        tools = ", ".join(t["tool_name"] for t in result.get("tool_calls", []))
        print(
            f"model {result['model']}, {result['num_llm_calls']} LLM calls, tools: {tools},"
            f" {result['total_tokens']} tokens, {result['duration_seconds']:.2f}s"
        )
        print(result["analysis"][:600])
    elif record.get("reason"):
        print(record["reason"])


def demo(settings: Settings, keep: bool = False) -> int:
    started = time.monotonic()
    print("starting Kafka, Redis, the scripted LLM and holmes-stream ...")
    endpoints = up(settings)
    for name, value in endpoints.items():
        print(f"  {name:26} {value}")
    print(f"ready after {time.monotonic() - started:.1f}s; sending the sample alerts")
    try:
        results = asyncio.run(_send_and_collect(endpoints, settings))
    finally:
        if not keep:
            down(settings)
    done = sum(1 for r in results if r["status"] == "completed")
    print(
        f"\n{done} of {len(results)} investigations completed in {time.monotonic() - started:.1f}s"
    )
    if keep:
        print(
            f"the stack keeps running: try {endpoints['api_url']}/docs; stop it with"
            " `holmes-stream dev down`"
        )
    return 0 if results and done == len(results) else 1
