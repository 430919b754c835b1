"""Progress events and batched outcomes go straight to aiokafka: the same bytes as FastStream."""

from __future__ import annotations

from typing import Any

from holmes_stream.producers.kafka import KafkaProducers, make_broker
from holmes_stream.schemas import Alert, InvestigationRecord, ProgressEvent, Status
from holmes_stream.store import StoredEvent
from tests.conftest import collect, make_settings


async def test_direct_sends_write_what_faststream_writes(stack: Any, uid: str) -> None:
    settings = make_settings(stack, uid)
    broker = make_broker(settings.kafka)
    producers = KafkaProducers(broker, settings.kafka)
    await broker.connect()
    try:
        # FastStream's internals we reach for are where we expect them (a pinned minor version).
        aiokafka_producer = producers._direct()
        assert aiokafka_producer is not None
        event = ProgressEvent(investigation_id=f"inv-{uid}", seq=3, type="started", payload={})
        await producers.publish_progress(event, "fp-1")
        direct = producers._direct
        producers._direct = lambda: None  # type: ignore[method-assign]
        await producers.publish_progress(event, "fp-1")
        producers._direct = direct  # type: ignore[method-assign]
        await aiokafka_producer.flush()
    finally:
        await broker.stop()
    got = await collect(
        settings.kafka.bootstrap_servers,
        settings.kafka.progress_topic,
        lambda m: len(m) >= 2,
        decode=False,
    )
    assert len(got) == 2
    ours, theirs = got
    assert (ours.key, ours.value) == (theirs.key, theirs.value)
    assert list(ours.headers) == list(theirs.headers)
    assert dict(ours.headers)["correlation_id"] == f"inv-{uid}:3".encode()


async def test_batched_outcomes_land_as_single_sends_would(stack: Any, uid: str) -> None:
    """Outcomes settled together go out as record batches: each record and event on the
    partition aiokafka's partitioner picks for its key, with the bytes FastStream writes."""
    settings = make_settings(stack, uid)
    broker = make_broker(settings.kafka)
    producers = KafkaProducers(broker, settings.kafka)
    await broker.connect()
    n = 40
    settled = []
    for i in range(n):
        alert = Alert.model_validate(
            {
                "labels": {"alertname": "A"},
                "startsAt": "2026-01-01T00:00:00Z",
                "fingerprint": f"f{i}",
            }
        )
        record = InvestigationRecord(
            id=f"inv-{uid}-{i}",
            episode_key="e",
            fingerprint=f"f{i}",
            status=Status.SKIPPED if i % 3 else Status.FAILED,  # headers differ by status
            alert=alert,
        )
        event = ProgressEvent(investigation_id=record.id, seq=1, type="skipped", payload={"i": i})
        stored = StoredEvent(record.id, 1, "skipped", event.model_dump_json())
        settled.append((record, record.model_dump_json().encode(), stored))
    try:
        aiokafka_producer = producers._direct()
        assert aiokafka_producer is not None
        await producers.publish_outcomes(settled)  # as record batches
        producers._direct = lambda: None  # type: ignore[method-assign]
        await producers.publish_outcomes(settled)  # one FastStream publish each
        await aiokafka_producer.flush()
    finally:
        await broker.stop()
    for topic in (settings.kafka.results_topic, settings.kafka.progress_topic):
        got = await collect(
            settings.kafka.bootstrap_servers, topic, lambda m: len(m) >= 2 * n, decode=False
        )
        assert len(got) == 2 * n
        by_key: dict[bytes, list[Any]] = {}
        for message in got:
            by_key.setdefault(message.key, []).append(message)
        assert len(by_key) == n
        partitions = set()
        for batched, single in by_key.values():
            partitions.add(single.partition)
            assert batched.partition == single.partition
            assert batched.value == single.value
            assert list(batched.headers) == list(single.headers)
        assert len(partitions) > 1  # the keys spread: the partitioning was really compared


def test_murmur2_is_kafkas_key_hash() -> None:
    import random

    from aiokafka.partitioner import murmur2 as aiokafka_murmur2

    from holmes_stream.producers.kafka import murmur2, murmur2_many

    rng = random.Random(7)
    keys = [rng.randbytes(n) for n in range(70) for _ in range(20)]
    keys += [b"", b"inv-1", "tenant.é".encode(), b"\xff" * 40, b"\x00" * 33]
    rng.shuffle(keys)  # lengths mixed, as tenants' ids would be
    expected = [aiokafka_murmur2(k) & 0xFFFFFFFF for k in keys]
    assert murmur2_many(keys) == expected  # grouped by length, each group in lanes
    assert [murmur2(k) for k in keys] == expected  # one lane each
    assert murmur2_many([]) == []
    # Java's Utils.murmur2 of these (as signed ints), the reference of Kafka's partitioner.
    assert murmur2(b"21") & 0x7FFFFFFF == (-973932308) & 0x7FFFFFFF
