"""The alerts subscriber: many investigations at once, commits in offset order, backpressure.

FastStream delivers one message at a time per subscriber; the handler only waits for a free
in-flight slot (so fetching stops when the worker is full) and starts the work as a task.
Offsets are committed by us (``AckPolicy.MANUAL``), and only up to the lowest unfinished one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.structs import OffsetAndMetadata
from faststream import AckPolicy
from faststream.kafka import KafkaBroker, KafkaMessage

from holmes_stream import metrics
from holmes_stream.chat import ChatService, decode_chat
from holmes_stream.consumers.offsets import OffsetTracker
from holmes_stream.intake import RejectedMessage, decode_message
from holmes_stream.producers.kafka import DeadLetter
from holmes_stream.service import TRANSIENT_IO, InvestigationService, Source, backoff
from holmes_stream.settings import Settings

log = logging.getLogger(__name__)

_COMMIT_INTERVAL_SECONDS = 0.5


class Dispatcher:
    def __init__(self, service: InvestigationService, settings: Settings) -> None:
        self.service = service
        self.settings = settings
        self.chat = ChatService(service, settings.llm.timeout_seconds)
        self.tracker = OffsetTracker()
        self.consumer: AIOKafkaConsumer | None = None
        self._slots = asyncio.Semaphore(settings.worker.max_in_flight)
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = asyncio.Event()
        self._commit_lock = asyncio.Lock()
        self._committer: asyncio.Task[None] | None = None

    # -- intake ----------------------------------------------------------------------------
    async def dispatch(self, record: Any, consumer: AIOKafkaConsumer) -> None:
        self.consumer = consumer
        if self._committer is None:
            self._committer = asyncio.create_task(self._commit_loop())
        if self._closing.is_set():
            # Shutting down: hold this message (it stays uncommitted and is redelivered).
            await asyncio.Event().wait()
        await self._slots.acquire()
        metrics.ALERTS_CONSUMED.labels(record.topic).inc()
        tp = TopicPartition(record.topic, record.partition)
        state = self.tracker.begin(tp, record.offset)
        task = asyncio.create_task(self._process(record))
        self._tasks.add(task)

        def finished(t: asyncio.Task[None]) -> None:
            self._tasks.discard(t)
            self._slots.release()
            if not t.cancelled() and t.exception() is None:
                self.tracker.done(state, record.offset)

        task.add_done_callback(finished)

    async def _process(self, record: Any) -> None:
        source = Source(
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            timestamp_ms=record.timestamp,
            key=record.key,
            value=record.value,
            first_seen_ms=int(time.time() * 1000),
        )
        attempt = 0
        while True:
            try:
                chat = decode_chat(record.value)
                if chat is not None:  # a follow-up question on a finished investigation
                    await self.chat.handle(chat, source)
                    return
                works = decode_message(record.value, self.settings.kafka.max_message_bytes)
                await asyncio.gather(*(self.service.handle(w, source) for w in works))
                return
            except RejectedMessage as exc:
                await self._dead_letter(source, exc.reason, exc.detail, attempt + 1)
                return
            except TRANSIENT_IO as exc:
                attempt += 1
                metrics.RETRIES.labels("infrastructure").inc()
                log.warning("transient failure at offset %s: %s", record.offset, exc)
            except Exception as exc:  # a bug or an unforeseen input: never block the partition
                attempt += 1
                log.exception("processing failed at offset %s", record.offset)
                if attempt >= self.settings.worker.max_attempts:
                    await self._dead_letter(source, "internal_error", repr(exc), attempt)
                    return
            await asyncio.sleep(
                backoff(attempt, self.settings.worker.retry_base_seconds, 10.0) + 0.05
            )

    async def _dead_letter(self, source: Source, reason: str, detail: str, attempts: int) -> None:
        letter = DeadLetter(
            value=source.value,
            key=source.key,
            reason=reason,
            message=detail,
            attempts=attempts,
            source_topic=source.topic,
            source_partition=source.partition,
            source_offset=source.offset,
            first_seen_ms=source.first_seen_ms,
        )
        await self.service._durably(lambda: self.service.producers.publish_dead_letter(letter))
        metrics.DEAD_LETTERS.labels(reason).inc()
        log.warning("dead-lettered offset %s: %s: %s", source.offset, reason, detail[:200])

    # -- commits ---------------------------------------------------------------------------
    async def _commit_loop(self) -> None:
        while True:
            await asyncio.sleep(_COMMIT_INTERVAL_SECONDS)
            try:
                await self.commit()
            except Exception as exc:  # commit failures are retried on the next tick
                log.warning("offset commit failed: %s", exc)

    async def commit(self, only: set[TopicPartition] | None = None) -> None:
        if self.consumer is None:
            return
        async with self._commit_lock:
            pending = self.tracker.pending_commits(only)
            if not pending:
                return
            await self.consumer.commit({tp: OffsetAndMetadata(o, "") for tp, o in pending.items()})
            self.tracker.mark_committed(pending)
            for tp, offset in pending.items():
                high = self.consumer.highwater(tp)
                if high is not None:
                    metrics.CONSUMER_LAG.labels(tp.topic, str(tp.partition)).set(high - offset)

    async def on_revoked(self, revoked: set[TopicPartition]) -> None:
        try:
            await self.commit(only=revoked)
        except Exception as exc:
            log.warning("commit on revoke failed: %s", exc)
        self.tracker.forget(revoked)

    # -- shutdown --------------------------------------------------------------------------
    async def drain(self, grace_seconds: float) -> None:
        """Stop taking work, let what runs finish within the grace period, commit it."""
        self._closing.set()
        self.service.stopping = True
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=grace_seconds)
            if pending:
                log.warning(
                    "%d investigations unfinished at shutdown: redelivered later", len(pending)
                )
                self.service.cancel_all_running()
                for task in pending:
                    task.cancel()
                await asyncio.wait(pending, timeout=5)
        with contextlib.suppress(Exception):
            await self.commit()
        if self._committer is not None:
            self._committer.cancel()


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self.dispatcher.on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        return None


async def _raw_bytes(msg: Any) -> Any:
    # Undecodable bytes must reach our own decoder (and the dead-letter topic), not FastStream's.
    return msg.body


def register_alert_subscriber(
    broker: KafkaBroker, dispatcher: Dispatcher, settings: Settings
) -> Any:
    kafka = settings.kafka

    @broker.subscriber(
        kafka.alerts_topic,
        group_id=kafka.group_id,
        ack_policy=AckPolicy.MANUAL,
        auto_offset_reset="earliest",
        max_poll_interval_ms=kafka.max_poll_interval_ms,
        session_timeout_ms=kafka.session_timeout_ms,
        max_partition_fetch_bytes=max(kafka.max_message_bytes * 2, 1_048_576),
        fetch_max_bytes=max(kafka.max_message_bytes * 4, 52_428_800),
        listener=_Rebalance(dispatcher),
        decoder=_raw_bytes,
        title="alerts",
        description="Alertmanager groups, bare alerts or investigation requests",
    )
    async def on_alert(body: bytes, msg: KafkaMessage) -> None:
        await dispatcher.dispatch(msg.raw_message, msg.consumer)  # type: ignore[arg-type]

    return on_alert
