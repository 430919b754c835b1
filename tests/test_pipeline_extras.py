"""Enrichment, redaction and budgets inside the real pipeline: Kafka in, HolmesGPT, Redis out."""

from __future__ import annotations

import json
from pathlib import Path

from aiokafka import AIOKafkaProducer

from holmes_stream.devstack.context_api import PLANTED_PASSWORD, ContextApiServer
from holmes_stream.devstack.stack import LocalStack
from holmes_stream.settings import (
    BudgetSettings,
    ContextApiSettings,
    EnrichmentSettings,
    PrometheusEnrichmentSettings,
    Settings,
)
from tests.conftest import ARTIFACTS, collect, fresh, load_fixture, make_settings
from tests.test_delivery import wait_for_records
from tests.test_enrichment import (  # noqa: F401  (fixtures)
    LocalPrometheus,
    context_api,
    ctx,
    prometheus,
)

SECRET_URL_PASSWORD = "pg-hunter2-pass"
GITHUB_TOKEN = "ghp_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8"


def with_enrichment(settings: Settings, prometheus_url: str, context_url: str) -> Settings:
    settings.enrichment = EnrichmentSettings(
        context_api=ContextApiSettings(url=context_url, retries=0),
        prometheus=PrometheusEnrichmentSettings(url=prometheus_url, retries=0),
        timeout_seconds=5,
    )
    return settings


async def test_enriched_redacted_investigation_keeps_secrets_from_llm_store_and_events(
    stack: LocalStack,
    uid: str,
    producer: AIOKafkaProducer,
    scripted_llm_factory,
    start_worker,
    prometheus: LocalPrometheus,  # noqa: F811
    ctx: ContextApiServer,  # noqa: F811
) -> None:
    record_file = ARTIFACTS / f"llm-bodies-{uid}.jsonl"
    llm = scripted_llm_factory(record_file=str(record_file))
    settings = make_settings(stack, uid, llm.api_base)
    settings = with_enrichment(settings, prometheus.url, ctx.base_url)
    await start_worker(settings)
    alert = fresh(load_fixture("group-firing-crashloop.json"), uid)["alerts"][0]
    alert["annotations"]["description"] = (
        f"cannot reach postgres://app:{SECRET_URL_PASSWORD}@db:5432/orders; "
        f"deploy token {GITHUB_TOKEN}"
    )
    await producer.send_and_wait(settings.kafka.alerts_topic, json.dumps(alert).encode())

    [record] = await wait_for_records(settings, 1)
    assert record.status == "completed", record
    assert record.enrichment["prometheus"] == "ok"
    assert record.enrichment["kubernetes"] in ("ok", "cached")

    sent = Path(record_file).read_text()  # noqa: ASYNC240 - a small local file
    assert "CrashLoopBackOff" in sent  # the enrichment reached the prompt
    assert "kube_pod_container_status_waiting_reason" in sent
    stored = record.model_dump_json()
    events = await collect(
        settings.kafka.bootstrap_servers,
        settings.kafka.progress_topic,
        until=lambda got: any(e["type"] == "completed" for e in got),
    )
    for secret in (SECRET_URL_PASSWORD, GITHUB_TOKEN, PLANTED_PASSWORD):
        assert secret not in sent, f"{secret} reached the LLM"
        assert secret not in stored, f"{secret} was stored"
        assert secret not in json.dumps(events), f"{secret} was in a progress event"
    assert "[REDACTED:" in sent
    assert any(e["type"] == "enrichment" for e in events)


async def test_investigation_completes_when_every_enrichment_source_is_down(
    stack: LocalStack, uid: str, producer: AIOKafkaProducer, start_worker
) -> None:
    from tests.conftest import free_port

    dead = f"http://127.0.0.1:{free_port()}"
    settings = with_enrichment(make_settings(stack, uid), dead, dead)
    await start_worker(settings)
    alert = fresh(load_fixture("single-alert.json"), uid)
    await producer.send_and_wait(settings.kafka.alerts_topic, json.dumps(alert).encode())

    [record] = await wait_for_records(settings, 1)
    assert record.status == "completed"
    assert record.enrichment["prometheus"].startswith("failed")
    assert record.enrichment["kubernetes"].startswith("failed")


async def test_an_exhausted_budget_stops_investigations_of_that_tenant_only(
    stack: LocalStack, uid: str, producer: AIOKafkaProducer, scripted_llm_factory, start_worker
) -> None:
    llm = scripted_llm_factory()
    settings = make_settings(stack, uid, llm.api_base)
    # One investigation of the scripted LLM uses ~9,600 tokens: the first one spends it all.
    settings.budgets = BudgetSettings(tenants={"acme": {"tokens_per_window": 2000}})
    await start_worker(settings)

    def request(i: int, tenant: str) -> bytes:
        alert = fresh(load_fixture("single-alert.json"), f"{uid}-{i}")
        body = {"kind": "investigation_request", "alert": alert, "tenant": tenant}
        return json.dumps(body).encode()

    await producer.send_and_wait(settings.kafka.alerts_topic, request(1, "acme"))
    [first] = await wait_for_records(settings, 1)
    await producer.send_and_wait(settings.kafka.alerts_topic, request(2, "acme"))
    await producer.send_and_wait(settings.kafka.alerts_topic, request(3, "globex"))
    records = {r.fingerprint.rsplit("-", 1)[-1]: r for r in await wait_for_records(settings, 3)}

    assert first.status == "budget_exceeded", first
    assert "token" in (first.reason or "")
    assert records["2"].status == "budget_exceeded" and records["2"].started_at is None
    assert records["3"].status == "completed"


async def test_secrets_in_tool_output_never_reach_the_llm(
    stack: LocalStack, uid: str, producer: AIOKafkaProducer, scripted_llm_factory, start_worker
) -> None:
    from redis.asyncio import Redis

    from holmes_stream.schemas import Alert, InvestigationRecord, InvestigationResult, Status
    from holmes_stream.store import RecordStore

    record_file = ARTIFACTS / f"llm-bodies-{uid}.jsonl"
    llm = scripted_llm_factory(record_file=str(record_file))
    settings = make_settings(stack, uid, llm.api_base)
    alert = fresh(load_fixture("single-alert.json"), uid)
    # An earlier investigation stored before redaction was on: the history tool returns it.
    earlier = InvestigationRecord(
        id=f"earlier-{uid}",
        episode_key="e",
        fingerprint=alert["fingerprint"],
        status=Status.COMPLETED,
        alert=Alert.model_validate(alert),
        result=InvestigationResult(
            analysis=f"the pod logged password={SECRET_URL_PASSWORD} then crashed", model="m"
        ),
    )
    redis = Redis.from_url(settings.redis.url)
    await RecordStore(redis, settings.redis.key_prefix).create(earlier)
    await redis.aclose()

    await start_worker(settings)
    alert["startsAt"] = fresh(alert, "again")["startsAt"]
    await producer.send_and_wait(settings.kafka.alerts_topic, json.dumps(alert).encode())
    records = await wait_for_records(settings, 2)
    [record] = [r for r in records if r.id != earlier.id]
    assert record.status == "completed"
    assert earlier.id in record.result.tool_calls[0].output_excerpt  # the tool did return it
    sent = Path(record_file).read_text()  # noqa: ASYNC240 - a small local file
    assert earlier.id in sent
    assert SECRET_URL_PASSWORD not in sent
    assert SECRET_URL_PASSWORD not in record.model_dump_json()
