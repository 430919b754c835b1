"""Progress events and batched outcomes go straight to aiokafka: the same bytes as FastStream."""

from __future__ import annotations

from typing import Any

from holmes_stream.producers.kafka import KafkaProducers, make_broker
from holmes_stream.schemas import ProgressEvent
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
