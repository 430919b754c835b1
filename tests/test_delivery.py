"""Delivery guarantees on the real stack: nothing lost, no episode investigated twice."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from aiokafka import AIOKafkaProducer
from redis.asyncio import Redis

from holmes_stream.devstack.service import ServiceProcess
from holmes_stream.intake import decode_message
from holmes_stream.schemas import InvestigationRecord, Status
from holmes_stream.settings import Settings
from holmes_stream.store import RecordStore
from tests.conftest import (
    ARTIFACTS,
    collect,
    count_keys,
    fresh,
    load_fixture,
    make_settings,
    settings_env,
)


def firing_alert(tag: str, i: int, starts_at: datetime | None = None) -> dict[str, Any]:
    alert = fresh(load_fixture("single-alert.json"), f"{tag}-{i}", starts_at)
    alert["labels"]["pod"] = f"payment-api-{i}"
    return alert


async def all_records(settings: Settings) -> list[InvestigationRecord]:
    redis = Redis.from_url(settings.redis.url)
    try:
        store = RecordStore(redis, settings.redis.key_prefix)
        ids = await store.list_ids(limit=100_000)
        return await store.get_many([i for i, _ in ids])
    finally:
        await redis.aclose()


async def wait_for_records(
    settings: Settings, n: int, timeout: float = 300, terminal: bool = True
) -> list[InvestigationRecord]:
    deadline = time.monotonic() + timeout
    while True:
        records = await all_records(settings)
        done = [r for r in records if r.status.terminal or not terminal]
        if len(done) >= n or time.monotonic() > deadline:
            return records
        await asyncio.sleep(0.5)


async def _stored(
    store: RecordStore, alert: dict[str, Any], status: Status, resolved: bool = False
) -> InvestigationRecord:
    """The record of ``alert``'s episode as a worker before this one left it in Redis."""
    [work] = decode_message(json.dumps(alert).encode(), 1 << 20)
    record = InvestigationRecord(
        id=work.investigation_id,
        episode_key=work.alert.episode_key(),
        fingerprint=work.alert.identity(),
        status=status,
        alert=work.alert,
        resolved_at=datetime.now(UTC) if resolved else None,
    )
    await store.create(record)
    return record


async def send(producer: AIOKafkaProducer, topic: str, payloads: list[Any]) -> None:
    futures = [
        await producer.send(topic, p if isinstance(p, bytes) else json.dumps(p).encode())
        for p in payloads
    ]
    await asyncio.gather(*futures)


async def test_kill_9_with_200_in_flight_loses_nothing(
    stack, uid: str, producer: AIOKafkaProducer, scripted_llm_factory
) -> None:
    # A very slow LLM keeps every investigation in flight until the kill, however slowly
    # a loaded machine consumes; after the kill the LLM answers quickly again.
    llm = scripted_llm_factory(latency_seconds=60.0)
    settings = make_settings(
        stack, uid, llm.api_base, max_in_flight=256, llm_threads=256, claim_lease_seconds=5
    )
    worker = ServiceProcess("worker", settings_env(settings), ARTIFACTS / f"kill9-{uid}")
    try:
        await _kill_9_and_recover(settings, worker, producer, llm)
    finally:
        worker.stop()


async def _kill_9_and_recover(
    settings: Settings, worker: ServiceProcess, producer: AIOKafkaProducer, llm: Any
) -> None:
    uid = settings.kafka.group_id.removeprefix("group-")
    worker.start()
    n = 250
    await send(producer, settings.kafka.alerts_topic, [firing_alert(uid, i) for i in range(n)])

    deadline = time.monotonic() + 120
    while await count_keys(settings.redis.url, f"{settings.redis.key_prefix}lease:*") < 200:
        assert time.monotonic() < deadline, "the worker never had 200 investigations in flight"
        await asyncio.sleep(0.2)
    worker.kill()
    llm.configure(latency_seconds=0.2)
    killed_at = time.monotonic()
    before = await all_records(settings)
    unfinished = sum(1 for r in before if not r.status.terminal)
    assert unfinished >= 200

    worker.start()
    records = await wait_for_records(settings, n)
    recovery = time.monotonic() - killed_at
    worker.stop()
    print(f"\nkill -9 with {unfinished} unfinished: all {n} done {recovery:.1f}s after the kill")

    assert len(records) == n
    assert {r.status for r in records} == {"completed"}, [r.status for r in records]
    results = await collect(
        settings.kafka.bootstrap_servers,
        settings.kafka.results_topic,
        until=lambda got: len({m["id"] for m in got}) >= n,
    )
    assert {m["id"] for m in results} == {r.id for r in records}


async def test_a_thousand_copies_of_one_episode_cost_one_llm_run(
    stack, uid: str, producer: AIOKafkaProducer, scripted_llm_factory, start_worker, start_api
) -> None:
    llm = scripted_llm_factory()
    settings = make_settings(stack, uid, llm.api_base)
    runtime = await start_worker(settings)
    api = await start_api(settings, runtime)
    alert = firing_alert(uid, 0)
    group = load_fixture("group-firing-crashloop.json") | {"alerts": [alert]}

    rest_ids: list[str] = []

    async def rest_submits(count: int) -> None:
        async with httpx.AsyncClient(base_url=api, timeout=30) as client:
            for _ in range(count):
                response = await client.post("/api/v1/investigations", json=alert)
                assert response.status_code == 202, response.text
                rest_ids.append(response.json()["investigations"][0]["id"])

    kafka_copies = [alert] * 400 + [group] * 300
    await asyncio.gather(
        send(producer, settings.kafka.alerts_topic, kafka_copies),
        *(rest_submits(30) for _ in range(10)),
    )
    records = await wait_for_records(settings, 1)
    # Let every copy drain: the committed offsets reach the end of the topic.
    consumed = await _wait_consumed(settings)
    assert consumed >= 700  # the Kafka copies, plus what the API published before dedup

    assert len(records) == 1 and records[0].status == "completed"
    assert set(rest_ids) == {records[0].id}
    stats = llm.stats()
    assert stats["final_turns"] == 1, stats
    assert stats["requests"] == 2, stats


async def _wait_consumed(settings: Settings, timeout: float = 120) -> int:
    """Wait until the group has committed every message of the alerts topic; return how many."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    topic = settings.kafka.alerts_topic
    probe = AIOKafkaConsumer(bootstrap_servers=settings.kafka.bootstrap_servers)
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap_servers)
    await probe.start()
    await admin.start()
    try:
        [described] = await admin.describe_topics([topic])
        partitions = [TopicPartition(topic, p["partition"]) for p in described["partitions"]]
        assert partitions, f"no partitions known for {topic}"
        ends = await probe.end_offsets(partitions)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            committed = await admin.list_consumer_group_offsets(settings.kafka.group_id)
            if all(
                end == 0 or (committed.get(tp) and committed[tp].offset >= end)
                for tp, end in ends.items()
            ):
                return sum(ends.values())
            await asyncio.sleep(0.3)
        raise AssertionError(f"the worker did not commit every message: {committed} < {ends}")
    finally:
        await admin.close()
        await probe.stop()


async def test_poison_goes_to_the_dead_letter_topic_and_the_stream_goes_on(
    settings: Settings, uid: str, producer: AIOKafkaProducer, start_worker
) -> None:
    await start_worker(settings)
    good = [firing_alert(uid, i) for i in range(6)]
    bad: list[tuple[bytes, str]] = [
        (b'{"labels": {"alertname": "x"', "invalid_json"),
        (json.dumps({"hello": "world"}).encode(), "invalid_schema"),
        (b"\xff\xfe\xfa not utf-8", "undecodable"),
        (json.dumps(good[0] | {"pad": "x" * 100_000}).encode(), "oversize"),
    ]
    interleaved: list[Any] = []
    for i, alert in enumerate(good):
        interleaved.append(alert)
        if i < len(bad):
            interleaved.append(bad[i][0])
    await send(producer, settings.kafka.alerts_topic, interleaved)

    letters = await collect(
        settings.kafka.bootstrap_servers,
        settings.kafka.dlq_topic,
        until=lambda got: len(got) >= len(bad),
        decode=False,
    )
    by_value = {m.value: dict(m.headers) for m in letters}
    for value, reason in bad:
        headers = by_value[value]
        assert headers["error-class"].decode() == reason
        assert headers["source-topic"].decode() == settings.kafka.alerts_topic
        assert int(headers["source-offset"]) >= 0
        assert headers["error-message"]
    records = await wait_for_records(settings, len(good))
    assert sorted(r.fingerprint for r in records) == sorted(a["fingerprint"] for a in good)
    assert {r.status for r in records} == {"completed"}


async def test_resolved_alert_cancels_the_running_investigation(
    stack, uid: str, producer: AIOKafkaProducer, scripted_llm_factory, start_worker
) -> None:
    llm = scripted_llm_factory(latency_seconds=3.0)
    settings = make_settings(stack, uid, llm.api_base)
    await start_worker(settings)
    alert = firing_alert(uid, 0)
    await send(producer, settings.kafka.alerts_topic, [alert])
    running = await wait_for_records(settings, 1, terminal=False)
    while running[0].status != "running":
        running = await wait_for_records(settings, 1, terminal=False)
    resolved = alert | {"status": "resolved", "endsAt": datetime.now(UTC).isoformat()}
    await send(producer, settings.kafka.alerts_topic, [resolved])

    [record] = await wait_for_records(settings, 1)
    assert record.status == "cancelled", record
    assert record.resolved_at is not None
    assert "resolved" in (record.reason or "")
    assert llm.stats()["final_turns"] == 0


async def test_stale_and_orphan_resolved_alerts_are_recorded_not_investigated(
    stack, uid: str, producer: AIOKafkaProducer, scripted_llm_factory, start_worker
) -> None:
    llm = scripted_llm_factory()
    settings = make_settings(stack, uid, llm.api_base, stale_after_seconds=3600)
    await start_worker(settings)
    stale = firing_alert(uid, 0, datetime.now(UTC) - timedelta(days=2))
    orphan = firing_alert(uid, 1) | {"status": "resolved", "endsAt": datetime.now(UTC).isoformat()}
    await send(producer, settings.kafka.alerts_topic, [stale, orphan])

    records = {r.fingerprint: r for r in await wait_for_records(settings, 2)}
    assert records[stale["fingerprint"]].status == "skipped"
    assert (records[stale["fingerprint"]].reason or "").startswith("stale")
    assert records[orphan["fingerprint"]].status == "skipped"
    assert records[orphan["fingerprint"]].resolved_at is not None
    assert llm.stats()["requests"] == 0


async def test_alerts_needing_no_llm_are_settled_in_batches_each_with_its_result(
    stack, uid: str, producer: AIOKafkaProducer, scripted_llm_factory, start_worker
) -> None:
    """Written before the worker starts, they arrive in large fetches and are settled together;
    an episode that already has a record, or that the batch holds twice, goes the usual way."""
    llm = scripted_llm_factory()
    settings = make_settings(stack, uid, llm.api_base, stale_after_seconds=3600)
    old = datetime.now(UTC) - timedelta(days=2)
    now = datetime.now(UTC).isoformat()
    stale = [firing_alert(f"{uid}-s", i, old) for i in range(150)]
    orphans = [
        firing_alert(f"{uid}-o", i) | {"status": "resolved", "endsAt": now} for i in range(150)
    ]
    # Episodes finished before the worker started: their resolution is noted on their records,
    # which are published again; one already noted resolved is left as it is.
    known = [firing_alert(f"{uid}-k", i) for i in range(3)]
    redis = Redis.from_url(settings.redis.url)
    store = RecordStore(redis, settings.redis.key_prefix)
    finished = [
        await _stored(store, alert, Status.COMPLETED, resolved=i == 2)
        for i, alert in enumerate(known)
    ]
    await store.mark_published([r.id for r in finished])  # as a worker leaves what it finished
    await redis.aclose()
    known_resolved = [alert | {"status": "resolved", "endsAt": now} for alert in known]
    # Fired and resolved in the same batch: both go the usual way, not the batch.
    twice = firing_alert(f"{uid}-t", 0)
    payloads = [*stale, *known_resolved, *orphans, twice, twice | {"status": "resolved"}]
    await send(producer, settings.kafka.alerts_topic, payloads)

    await start_worker(settings)
    assert await _wait_consumed(settings) == len(payloads)
    records = {r.fingerprint: r for r in await all_records(settings)}
    assert len(records) == 150 + 150 + 3 + 1
    for alert in stale:
        assert (records[alert["fingerprint"]].reason or "").startswith("stale")
    for alert in orphans:
        record = records[alert["fingerprint"]]
        assert record.status == "skipped" and record.resolved_at is not None
    for alert in known:
        assert records[alert["fingerprint"]].status == "completed"
        assert records[alert["fingerprint"]].resolved_at is not None
    # Whichever of the two reached Redis first (they run side by side, as two messages of one
    # episode always have), the episode ends with its resolution noted.
    assert records[twice["fingerprint"]].status.terminal
    assert records[twice["fingerprint"]].resolved_at is not None
    # Every outcome is on the results topic, with its terminal event on the progress topic.
    skipped_ids = {r.id for r in records.values() if r.status == "skipped"}
    results = await collect(
        settings.kafka.bootstrap_servers,
        settings.kafka.results_topic,
        lambda got: skipped_ids <= {m["id"] for m in got},
    )
    assert skipped_ids <= {m["id"] for m in results}
    republished = {finished[0].id, finished[1].id}
    assert republished <= {m["id"] for m in results if m["resolved_at"]}
    assert finished[2].id not in {m["id"] for m in results}
    events = await collect(
        settings.kafka.bootstrap_servers,
        settings.kafka.progress_topic,
        lambda got: skipped_ids | republished <= {m["investigation_id"] for m in got},
    )
    assert skipped_ids <= {e["investigation_id"] for e in events if e["type"] == "skipped"}
    assert republished <= {e["investigation_id"] for e in events if e["type"] == "completed"}


async def test_an_outcome_stored_but_never_published_is_published_when_its_alert_returns(
    stack, uid: str, producer: AIOKafkaProducer, scripted_llm_factory, start_worker
) -> None:
    """A worker that dies after storing an outcome but before Kafka has its result leaves its
    message uncommitted; whichever worker gets it again publishes that result (and its terminal
    event) instead of taking the message for a duplicate. A published one is not sent twice."""
    llm = scripted_llm_factory()
    settings = make_settings(stack, uid, llm.api_base, stale_after_seconds=3600)
    old = datetime.now(UTC) - timedelta(days=2)
    now = datetime.now(UTC).isoformat()
    alerts = {
        "firing": firing_alert(f"{uid}-f", 0),  # the claim finds it finished
        "stale": firing_alert(f"{uid}-s", 0, old),  # settled in a batch: finds it finished
        "resolved": firing_alert(f"{uid}-r", 0) | {"status": "resolved", "endsAt": now},
        "published": firing_alert(f"{uid}-p", 0),
    }
    redis = Redis.from_url(settings.redis.url)
    store = RecordStore(redis, settings.redis.key_prefix)
    ids = {
        kind: (await _stored(store, alert, Status.COMPLETED, resolved=kind == "resolved")).id
        for kind, alert in alerts.items()
    }
    await store.mark_published([ids["published"]])
    await redis.aclose()
    await send(producer, settings.kafka.alerts_topic, list(alerts.values()))

    await start_worker(settings)
    assert await _wait_consumed(settings) == len(alerts)
    lost = {ids["firing"], ids["stale"], ids["resolved"]}
    results = await collect(
        settings.kafka.bootstrap_servers,
        settings.kafka.results_topic,
        lambda got: lost <= {m["id"] for m in got},
        timeout=30,
    )
    assert lost <= {m["id"] for m in results}
    assert all(m["status"] == "completed" for m in results)
    assert ids["published"] not in {m["id"] for m in results}
    events = await collect(
        settings.kafka.bootstrap_servers,
        settings.kafka.progress_topic,
        lambda got: lost <= {m["investigation_id"] for m in got},
        timeout=30,
    )
    assert lost <= {e["investigation_id"] for e in events if e["type"] == "completed"}
    # Now marked: the next re-send of each is a plain duplicate again.
    redis = Redis.from_url(settings.redis.url)
    store = RecordStore(redis, settings.redis.key_prefix)
    assert all([await store.is_published(i) for i in lost])
    await redis.aclose()


async def test_a_stale_resend_leaves_a_running_episode_alone_and_closes_a_queued_one(
    stack, uid: str, producer: AIOKafkaProducer, scripted_llm_factory, start_worker
) -> None:
    llm = scripted_llm_factory()
    settings = make_settings(stack, uid, llm.api_base, stale_after_seconds=3600)
    old = datetime.now(UTC) - timedelta(days=2)
    alerts = {s: firing_alert(f"{uid}-{s}", 0, old) for s in ("running", "queued")}
    redis = Redis.from_url(settings.redis.url)
    store = RecordStore(redis, settings.redis.key_prefix)
    ids = {
        status: (await _stored(store, alert, Status(status))).id for status, alert in alerts.items()
    }
    # Another worker runs the first one: it holds the episode's lease.
    assert await store.acquire_lease(ids["running"], "another-worker", 120)
    await send(producer, settings.kafka.alerts_topic, list(alerts.values()))

    await start_worker(settings)
    assert await _wait_consumed(settings) == len(alerts)
    running, queued = await store.get(ids["running"]), await store.get(ids["queued"])
    await redis.aclose()
    assert running is not None and running.status == "running"
    assert queued is not None and queued.status == "skipped"
    assert (queued.reason or "").startswith("stale")
    results = await collect(
        settings.kafka.bootstrap_servers,
        settings.kafka.results_topic,
        lambda got: ids["queued"] in {m["id"] for m in got},
        timeout=30,
    )
    assert ids["running"] not in {m["id"] for m in results}


async def test_two_workers_share_partitions_and_a_stopped_one_hands_over(
    stack, uid: str, producer: AIOKafkaProducer, scripted_llm_factory
) -> None:
    llm = scripted_llm_factory(latency_seconds=0.5)
    settings = make_settings(
        stack, uid, llm.api_base, max_in_flight=8, claim_lease_seconds=5, shutdown_grace_seconds=1
    )
    run_dir = ARTIFACTS / f"pair-{uid}"
    first = ServiceProcess("worker", settings_env(settings), run_dir, name="first")
    second = ServiceProcess("worker", settings_env(settings), run_dir, name="second")
    try:
        first.start()
        second.start()
        n = 60
        await send(producer, settings.kafka.alerts_topic, [firing_alert(uid, i) for i in range(n)])
        await wait_for_records(settings, 10)
        first.stop()  # SIGTERM: a short grace, then its partitions move to the second worker
        records = await wait_for_records(settings, n)
    finally:
        first.stop()
        second.stop()
    assert len(records) == n
    assert {r.status for r in records} == {"completed"}
    # Only what the stopped worker left unfinished may have run again.
    assert n <= llm.stats()["final_turns"] <= n + settings.worker.max_in_flight
    first_log = first.log_file.read_text()
    assert "worker ready" in first_log


async def test_an_llm_failing_30_percent_ends_every_alert_completed_or_dead_lettered(
    stack, uid: str, producer: AIOKafkaProducer, scripted_llm_factory, start_worker
) -> None:
    llm = scripted_llm_factory(fail_rate=0.3, fail_statuses=[500, 429], seed=7)
    settings = make_settings(stack, uid, llm.api_base, max_attempts=3)
    await start_worker(settings)
    n = 30
    await send(producer, settings.kafka.alerts_topic, [firing_alert(uid, i) for i in range(n)])

    records = await wait_for_records(settings, n)
    statuses = [r.status for r in records]
    assert len(records) == n
    assert set(statuses) <= {"completed", "dead_lettered"}
    dead = [r for r in records if r.status == "dead_lettered"]
    assert all(r.attempts == 3 for r in dead)
    assert any(r.attempts > 1 for r in records), "30 % failures must cause retries"
    if dead:
        letters = await collect(
            settings.kafka.bootstrap_servers,
            settings.kafka.dlq_topic,
            until=lambda got: len(got) >= len(dead),
            decode=False,
        )
        assert len(letters) == len(dead)
        assert {dict(m.headers)["error-class"] for m in letters} == {b"retries_exhausted"}
    print(
        f"\n30 % LLM failures: {statuses.count('completed')} completed, {len(dead)} dead-lettered"
    )


async def test_the_in_flight_limit_pauses_fetching_and_everything_still_completes(
    stack, uid: str, producer: AIOKafkaProducer, scripted_llm_factory, start_worker
) -> None:
    llm = scripted_llm_factory(latency_seconds=0.5)
    settings = make_settings(stack, uid, llm.api_base, max_in_flight=3)
    await start_worker(settings)
    n = 12
    await send(producer, settings.kafka.alerts_topic, [firing_alert(uid, i) for i in range(n)])

    most = 0
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        running = await count_keys(settings.redis.url, f"{settings.redis.key_prefix}lease:*")
        most = max(most, running)
        done = [r for r in await all_records(settings) if r.status.terminal]
        if len(done) == n:
            break
        await asyncio.sleep(0.05)
    assert len(done) == n
    assert 1 <= most <= 3, most
