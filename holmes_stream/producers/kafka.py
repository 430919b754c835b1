"""Kafka publishers for alerts, results, progress events and dead letters."""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, cast

from aiokafka import AIOKafkaProducer
from faststream.kafka import KafkaBroker

from holmes_stream.schemas import SCHEMA_VERSION, InvestigationRecord, ProgressEvent
from holmes_stream.settings import KafkaSettings
from holmes_stream.store import StoredEvent
from holmes_stream.telemetry import Telemetry

PRODUCER_BATCH_BYTES = 512 * 1024
# 20 ms measured 10-25 % less broker CPU and 4-12 % less worker CPU per investigation with an
# instant LLM, but a lower throughput with 64 investigations waiting on a slow one (interleaved
# pairs, each way): results wait longer for their acknowledgement while holding their slot.
# Closing the batches of settled outcomes so that they skip the linger measured slower too.
PRODUCER_LINGER_MS = 5


def make_broker(
    settings: KafkaSettings, telemetry: Telemetry | None = None, **kwargs: Any
) -> KafkaBroker:
    """One broker per process; its producer waits for all in-sync replicas, without duplicates.

    With ``telemetry``, publishing injects the W3C ``traceparent`` of the current span into the
    message headers and consuming continues the trace it carries.
    """
    if telemetry is not None:
        kwargs["middlewares"] = (*kwargs.get("middlewares", ()), telemetry.kafka_middleware())
    return KafkaBroker(
        settings.bootstrap_servers,
        acks="all",
        enable_idempotence=True,
        client_id="holmes-stream",
        # aiokafka sends one batch per partition at a time (idempotent): a send to a full batch
        # waits a broker round trip. At the default 16 KiB that is ~6 results per round trip.
        max_batch_size=PRODUCER_BATCH_BYTES,
        # Progress events and results of many investigations share produce requests: the broker's
        # CPU goes per request, and a few milliseconds are nothing beside an LLM's seconds.
        linger_ms=PRODUCER_LINGER_MS,
        # FastStream logs every message received and processed: debug detail, not operations.
        log_level=logging.DEBUG,
        **kwargs,
    )


_M = 0x5BD1E995


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 key hash (Java's ``Utils.murmur2``), as unsigned 32 bits."""
    return murmur2_many([data])[0]


def murmur2_many(keys: Sequence[bytes]) -> list[int]:
    """``murmur2`` of each key. Keys of one length are hashed together, as lanes of 64 bits in
    Python integers: key ``i``'s 32-bit state is bits ``64 i`` to ``64 i + 31``, so that one
    multiplication, XOR or mask of the integers is that step for every key (a lane's product
    with the 32-bit constant stays within its 64 bits; what a right shift brings in from the
    next lane is masked off). 0.36 against 3.1 µs per 32-byte key one by one, a per-message
    cost of batch settling. ``tests/test_producers.py`` compares it with aiokafka's."""
    out = [0] * len(keys)
    by_length: dict[int, list[int]] = {}
    for i, key in enumerate(keys):
        by_length.setdefault(len(key), []).append(i)
    for length, where in by_length.items():
        for i, h in zip(where, _murmur2_lanes([keys[i] for i in where], length), strict=True):
            out[i] = h
    return out


def _murmur2_lanes(keys: list[bytes], length: int) -> tuple[int, ...]:
    n = len(keys)
    joined = b"".join(keys)
    mask = int.from_bytes(b"\xff\xff\xff\xff\0\0\0\0" * n, "little")  # each lane's 32 bits

    def column(first: int, count: int) -> int:
        """Bytes ``first`` to ``first + count`` of every key, each in its lane, little-endian."""
        lanes = bytearray(8 * n)
        for b in range(count):
            lanes[b::8] = joined[first + b :: length]
        return int.from_bytes(lanes, "little")

    h = (0x9747B28C ^ length) * (mask // 0xFFFFFFFF)  # in every lane
    words = length >> 2
    for j in range(words):
        k = (column(4 * j, 4) * _M) & mask
        # Java's two products masked after their XOR: the same low 32 bits.
        h = ((h * _M) ^ ((k ^ ((k >> 24) & mask)) * _M)) & mask
    if length & 3:
        h = ((h ^ column(4 * words, length & 3)) * _M) & mask
    h ^= (h >> 13) & mask
    h = (h * _M) & mask
    h ^= (h >> 15) & mask
    return struct.unpack(f"<{n}Q", h.to_bytes(8 * n, "little"))


def _wire(correlation_id: str, headers: dict[str, str]) -> list[tuple[str, bytes]]:
    """Headers as FastStream writes them for a bytes body: content type, correlation id, ours."""
    out = [("content-type", b""), ("correlation_id", correlation_id.encode())]
    out += [(name, value.encode()) for name, value in headers.items()]
    return out


def _headers(fingerprint: str | None = None, **extra: str) -> dict[str, str]:
    headers = {"schema-version": str(SCHEMA_VERSION), **extra}
    if fingerprint:
        headers["alert-fingerprint"] = fingerprint
    return headers


def _result_headers(record: InvestigationRecord) -> dict[str, str]:
    return _headers(record.fingerprint, status=str(record.status))


def _result_correlation(investigation_id: str, status: str) -> str:
    # Our ids already correlate; FastStream would otherwise draw a random UUID each time.
    return f"{investigation_id}:{status}"


def _event_correlation(event: ProgressEvent | StoredEvent) -> str:
    return f"{event.investigation_id}:{event.seq}"


class _Batches:
    """Messages appended to aiokafka record batches, one per partition (more when one fills),
    partitioned as aiokafka's default partitioner does: a message costs an append, not a send.
    For sends by the hundred (outcomes settled together)."""

    def __init__(self, producer: AIOKafkaProducer, partitions: dict[str, list[int]]) -> None:
        self._producer = producer
        self._partitions = partitions
        self._open: dict[tuple[str, int], Any] = {}
        self._full: list[tuple[str, int, Any]] = []

    @classmethod
    async def for_topics(cls, producer: AIOKafkaProducer, topics: Iterable[str]) -> _Batches:
        # The default partitioner's list: the topic's partitions in order.
        return cls(producer, {t: sorted(await producer.partitions_for(t)) for t in topics})

    def add(
        self, topic: str, slot: int, key: bytes, value: bytes, headers: list[tuple[str, bytes]]
    ) -> None:
        """``slot``: the key's murmur2 hash, masked to 31 bits, as the partitioner takes it."""
        partitions = self._partitions[topic]
        tp = (topic, partitions[slot % len(partitions)])
        batch = self._open.get(tp)
        if batch is None:
            batch = self._open[tp] = self._producer.create_batch()
        if batch.append(timestamp=None, key=key, value=value, headers=headers) is None:
            self._full.append((*tp, batch))  # full: closed by append
            batch = self._open[tp] = self._producer.create_batch()
            batch.append(timestamp=None, key=key, value=value, headers=headers)

    async def send(self) -> dict[str, list[asyncio.Future[Any]]]:
        """Queue every batch (a partition's in order); per topic, their delivery futures."""
        every = [*self._full, *((topic, p, b) for (topic, p), b in self._open.items())]
        futures = await asyncio.gather(
            *(self._producer.send_batch(b, topic, partition=p) for topic, p, b in every)
        )
        sent: dict[str, list[asyncio.Future[Any]]] = {topic: [] for topic in self._partitions}
        for (topic, _, _), future in zip(every, futures, strict=True):
            sent[topic].append(future)
        return sent


@dataclass(frozen=True)
class DeadLetter:
    value: bytes | None
    key: bytes | None
    reason: str
    message: str
    attempts: int
    source_topic: str
    source_partition: int | None
    source_offset: int | None
    first_seen_ms: int


class KafkaProducers:
    def __init__(self, broker: KafkaBroker, settings: KafkaSettings) -> None:
        self.broker = broker
        self.settings = settings
        self.alerts = broker.publisher(
            settings.alerts_topic,
            title="alerts:publish",
            description="Alerts submitted through the API",
        )
        self.results = broker.publisher(
            settings.results_topic,
            title="investigation.results",
            description="Investigation records with their outcome",
            schema=InvestigationRecord,
        )
        self.progress = broker.publisher(
            settings.progress_topic,
            title="investigation.progress",
            description="Progress events of running investigations",
            schema=ProgressEvent,
        )
        self.dlq = broker.publisher(
            settings.dlq_topic, title="alerts.dlq", description="Messages that cannot be processed"
        )

    async def publish_alert(self, body: bytes, key: str, tenant: str | None = None) -> None:
        extra = {"tenant": tenant} if tenant else {}
        await self.alerts.publish(body, key=key.encode(), headers=_headers(**extra))

    async def publish_result(self, record: InvestigationRecord) -> None:
        await self._send_result(record, confirm=True)

    async def publish_outcomes(
        self, settled: Sequence[tuple[InvestigationRecord, bytes, StoredEvent | None]]
    ) -> None:
        """Records (each with its JSON as stored) and their terminal events (if given), sent
        together; returns once Kafka has the records."""
        direct = self._direct()
        if direct is None:
            acks = []
            for record, body, event in settled:
                acks.append(await self._send_result(record, body, confirm=False))
                if event is not None:
                    await self.publish_progress(event.model(), record.fingerprint)
            await asyncio.gather(*acks)
            return
        results, progress = self.results.topic, self.progress.topic
        batches = await _Batches.for_topics(direct, (results, progress))
        # ``_wire`` of each message's headers, its parts shared by both messages of an outcome
        # and by all outcomes (the same bytes: tests/test_producers.py).
        typed, version = ("content-type", b""), ("schema-version", str(SCHEMA_VERSION).encode())
        keys = [record.id.encode() for record, _, _ in settled]
        # Per status (a batch's outcomes have one or two): its text and its header.
        statuses: dict[str, tuple[str, tuple[str, bytes]]] = {}
        for (record, body, event), key, hashed in zip(
            settled, keys, murmur2_many(keys), strict=True
        ):
            slot = hashed & 0x7FFFFFFF  # once for both topics
            fp = record.fingerprint
            tail = [("alert-fingerprint", fp.encode())] if fp else []
            if (status := statuses.get(record.status)) is None:
                text = str(record.status)
                status = statuses[record.status] = (text, ("status", text.encode()))
            correlation = ("correlation_id", _result_correlation(record.id, status[0]).encode())
            batches.add(results, slot, key, body, [typed, correlation, version, status[1], *tail])
            if event is None:
                continue
            correlation = ("correlation_id", _event_correlation(event).encode())
            batches.add(
                progress,
                slot,
                key,
                event.text.encode(),
                [typed, correlation, version, ("event", event.type.encode()), *tail],
            )
        sent = await batches.send()
        await asyncio.gather(*sent[results])

    async def _send_result(
        self, record: InvestigationRecord, body: bytes | None = None, *, confirm: bool
    ) -> Any:
        return await self._send(
            self.results,
            body or record.model_dump_json().encode(),
            key=record.id.encode(),
            headers=_result_headers(record),
            correlation_id=_result_correlation(record.id, str(record.status)),
            confirm=confirm,
        )

    async def publish_progress(self, event: ProgressEvent, fingerprint: str) -> None:
        # Progress is advisory (Redis holds the authoritative copy), so it is not awaited.
        await self._send(
            self.progress,
            event.json_text().encode(),
            key=event.investigation_id.encode(),
            headers=_headers(fingerprint, event=event.type),
            correlation_id=_event_correlation(event),
            confirm=False,
        )

    async def _send(
        self,
        publisher: Any,
        body: bytes,
        *,
        key: bytes,
        headers: dict[str, str],
        correlation_id: str,
        confirm: bool,
    ) -> Any:
        """Publish; unconfirmed sends go straight to aiokafka when they can (``_direct``) and
        return its delivery future, as FastStream's ``no_confirm`` publish does."""
        direct = None if confirm else self._direct()
        if direct is not None:
            return await direct.send(
                publisher.topic, body, key=key, headers=_wire(correlation_id, headers)
            )
        return await publisher.publish(
            body, key=key, headers=headers, correlation_id=correlation_id, no_confirm=not confirm
        )

    def _direct(self) -> AIOKafkaProducer | None:
        """The broker's own aiokafka producer, for the sends that come by the hundred (progress
        events, batches of outcomes): FastStream's per-message layers cost as much as the send
        itself. The same producer, so ordering per partition holds across both ways; the same
        headers (``_wire``). None with tracing on: its middleware must see every publish."""
        if self.broker.middlewares:
            return None
        try:
            producer: AIOKafkaProducer = cast(Any, self.broker.config.producer)._producer.producer
        except AttributeError:  # not connected (or FastStream changed: tested)
            return None
        return producer

    async def publish_dead_letter(self, letter: DeadLetter) -> None:
        headers = _headers(
            **{
                "error-class": letter.reason,
                "error-message": letter.message[:1000],
                "attempts": str(letter.attempts),
                "source-topic": letter.source_topic,
                "source-partition": str(letter.source_partition),
                "source-offset": str(letter.source_offset),
                "first-seen-ms": str(letter.first_seen_ms),
                "dead-lettered-ms": str(int(time.time() * 1000)),
            }
        )
        await self.dlq.publish(letter.value or b"", key=letter.key, headers=headers)
