"""The alerts subscriber: many investigations at once, commits in offset order, backpressure.

FastStream delivers what one fetch returned as a batch (its overhead is per batch, not per
message). A re-send of an episode this process already knows to be finished is settled on the
spot, without any I/O; every other message becomes a task, and the handler returns. When the
worker is full (what a fetch brought beyond the limit waits in a backlog) it pauses its
partitions (backpressure) rather than blocking the handler, so the consumer keeps polling and
never outstays ``max.poll.interval.ms`` however long the LLM takes. Offsets are committed by us
(``AckPolicy.MANUAL``), and only up to the lowest unfinished one.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from typing import Any, NamedTuple

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.structs import OffsetAndMetadata
from faststream import AckPolicy
from faststream.kafka import KafkaBroker, KafkaMessage

from holmes_stream import metrics, telemetry
from holmes_stream.chat import ChatService, decode_chat
from holmes_stream.consumers.offsets import OffsetTracker
from holmes_stream.intake import AlertWork, RejectedMessage, decode_message
from holmes_stream.producers.kafka import DeadLetter
from holmes_stream.service import (
    TRANSIENT_IO,
    Found,
    InvestigationService,
    Outcome,
    Source,
    backoff,
)
from holmes_stream.settings import Settings

log = logging.getLogger(__name__)

_COMMIT_INTERVAL_SECONDS = 0.5
# How often the consumer lag of every assigned partition is measured.
_LAG_INTERVAL_SECONDS = 10.0
# Most messages one fetch hands to the handler.
_MAX_BATCH = 500
# Batch-settling tasks at once (see _start_settling).
_SETTLING_AT_ONCE = 4


class Dispatcher:
    def __init__(self, service: InvestigationService, settings: Settings) -> None:
        self.service = service
        self.settings = settings
        self.chat = ChatService(service, settings.llm.timeout_seconds)
        self.tracker = OffsetTracker()
        self.consumer: AIOKafkaConsumer | None = None
        self._limit = settings.worker.max_in_flight
        self._paused = False
        self._tasks: set[asyncio.Task[Any]] = set()
        # Batch-settling tasks running, and batches waiting for one to end (see _start_settling).
        self._settling = 0
        self._settle_queue: collections.deque[_Settling] = collections.deque()
        # Episodes in those batches, and messages of them fetched meanwhile: these wait for the
        # batch, after which their episode is mostly known here (no I/O, no second settling).
        # A set: an episode is in one batch at a time (the others' messages of it are held).
        self._settling_ids: set[str] = set()
        self._held: list[tuple[Any, Any, list[AlertWork], Source]] = []
        # Fetched beyond the in-flight limit (a batch can hold more): started as slots free up.
        self._backlog: collections.deque[tuple[Any, Any, list[AlertWork]]] = collections.deque()
        self._closing = asyncio.Event()
        self._commit_lock = asyncio.Lock()
        self._committer: asyncio.Task[None] | None = None
        # Each record's work continues the trace of its traceparent header (tracing on).
        self._traced = telemetry.record_tracer(settings.telemetry)

    # -- intake ----------------------------------------------------------------------------
    async def dispatch_batch(self, records: Any, consumer: AIOKafkaConsumer) -> None:
        self.consumer = consumer
        if self._committer is None:
            self._committer = asyncio.create_task(self._commit_loop())
        if self._closing.is_set():
            # Shutting down: hold these messages (they stay uncommitted and are redelivered).
            await asyncio.Event().wait()
        for topic, n in collections.Counter(record.topic for record in records).items():
            metrics.ALERTS_CONSUMED.labels(topic).inc(n)
        taken = self._take_all(records)
        # Alerts that need no LLM (resolved, stale), of episodes met only once in this batch,
        # are settled together; the rest, each message on its own, as slots free up.
        ids = [w.investigation_id for _, _, ws in taken for w in ws]
        repeated = (
            set()
            if len(set(ids)) == len(ids)  # mostly: no Counter, no lookup per alert
            else {i for i, n in collections.Counter(ids).items() if n > 1}
        )
        quick: list[tuple[Any, Any, list[AlertWork], Source]] = []
        settles = self.service.settles_without_run
        seen_ms = int(time.time() * 1000)  # when this fetch was taken (dead letters carry it)
        for record, state, works in taken:
            source = _source(record, seen_ms)
            if works and all(
                w.investigation_id not in repeated and settles(w, source) for w in works
            ):
                quick.append((record, state, works, source))
            else:
                self._start_or_hold(record, state, works)
        self._settle_or_hold(quick)

    def _settle_or_hold(
        self, quick: list[tuple[Any, Any, list[AlertWork], Source]], held: bool = False
    ) -> None:
        """Settle these together, but hold those of an episode a settling task has in hand.

        ``held``: these waited for a task, so their episodes may be known by now (a fresh fetch
        was just looked up: ``_decode_settled``)."""
        ids = _ids(quick)
        if not held and self._settling_ids.isdisjoint(ids):
            if quick:  # mostly: no episode of these is being settled
                self._start_settling(quick, ids)
        elif ready := self._ready(quick, held):
            self._start_settling(ready)

    def _ready(
        self, quick: list[tuple[Any, Any, list[AlertWork], Source]], held: bool
    ) -> list[tuple[Any, Any, list[AlertWork], Source]]:
        ready = []
        for item in quick:
            record, state, works, _ = item
            if any(w.investigation_id in self._settling_ids for w in works):
                self._held.append(item)
            elif held and all(self.service.settled_outcome(w) is not None for w in works):
                self.tracker.done(state, record.offset)  # known by now: nothing to do
            else:
                ready.append(item)
        return ready

    def _take_all(self, records: Any) -> list[tuple[Any, Any, list[AlertWork]]]:
        """Take a fetch's messages: each settled on the spot, or its alerts for the caller to
        start (with its partition's offset state). A fetch's messages come partition by
        partition: the state is looked up once per run of them."""
        taken = []
        tracker, decode = self.tracker, self._decode_settled
        where: tuple[str, int] | None = None
        state: Any = None
        for record in records:
            if where != (record.topic, record.partition):
                where = (record.topic, record.partition)
                state = tracker.state(TopicPartition(*where))
            offset = record.offset
            tracker.begin_in(state, offset)
            works = decode(record)
            if works is None:
                # Only re-sends of finished episodes: nothing to do, their outcome is durable.
                tracker.done(state, offset)
            else:
                taken.append((record, state, works))
        return taken

    def _start_or_hold(self, record: Any, state: Any, works: list[AlertWork]) -> None:
        if self._running() >= self._limit:
            self._backlog.append((record, state, works))
        else:
            self._start(record, state, works)
        self._apply_backpressure()

    def _start(self, record: Any, state: Any, works: list[AlertWork]) -> None:
        task = asyncio.create_task(self._traced(record, self._process(record, works)))
        self._tasks.add(task)

        def finished(t: asyncio.Task[None]) -> None:
            self._tasks.discard(t)
            if not t.cancelled() and t.exception() is None:
                self.tracker.done(state, record.offset)
            self._fill_slots()

        task.add_done_callback(finished)

    def _running(self) -> int:
        """Investigations (and other single messages) running: what the in-flight limit bounds."""
        return len(self._tasks) - self._settling

    def _fill_slots(self) -> None:
        while self._backlog and self._running() < self._limit and not self._closing.is_set():
            self._start(*self._backlog.popleft())
        self._apply_backpressure()

    def _start_settling(
        self, items: list[tuple[Any, Any, list[AlertWork], Source]], ids: list[str] | None = None
    ) -> None:
        """One task settles the messages' alerts together, their known episodes included.

        Up to four such tasks run at once, the next fetches settled while the others wait for
        Redis and Kafka (measured: 15 % faster than two, eight slower than four). One more
        batch waits, fetched and decoded, and starts the moment one ends: no task waits for a
        fetch (without it, 2 in 5 tasks started with only one or two others running). Fetching
        pauses while it waits. Messages of its episodes fetched meanwhile wait for its task
        (``_held``). ``ids``: the items' episode ids, when the caller has them already.
        """
        settling = _Settling(items, _ids(items) if ids is None else ids)
        self._settling_ids.update(settling.ids)
        self._settle_queue.append(settling)
        self._run_settling()
        self._apply_backpressure()

    def _run_settling(self) -> None:
        while (
            self._settle_queue
            and self._settling < _SETTLING_AT_ONCE
            and not self._closing.is_set()  # else they stay uncommitted: redelivered
        ):
            self._settle_task(self._settle_queue.popleft())

    def _settle_task(self, settling: _Settling) -> None:
        items, ids = settling
        task = asyncio.create_task(self._settle(items))
        self._tasks.add(task)
        self._settling += 1

        def finished(t: asyncio.Task[None]) -> None:
            self._tasks.discard(t)
            self._settling -= 1
            self._forget_settling(ids)
            if not t.cancelled() and t.exception() is not None:
                log.warning("settling %d messages together failed: %s", len(items), t.exception())
                # Each one on its own, retried as any message is; handling is idempotent.
                self._backlog.extend(
                    (record, state, works)
                    for record, state, works, _ in items
                    if not self.tracker.is_done(state, record.offset)
                )
            if not self._closing.is_set():  # else held messages stay uncommitted: redelivered
                waited, self._held = self._held, []
                self._settle_or_hold(waited, held=True)
            self._run_settling()
            self._fill_slots()

        task.add_done_callback(finished)

    def _forget_settling(self, ids: list[str]) -> None:
        self._settling_ids.difference_update(ids)

    async def _settle(self, items: list[tuple[Any, Any, list[AlertWork], Source]]) -> None:
        flat = [(w, source) for _, _, works, source in items for w in works]
        found = iter(await self.service.settle_many(flat))
        known = []
        for record, state, works, source in items:
            ours = [(w, e) for w in works if (e := next(found)) is not None]
            if ours:
                known.append((record, state, source, ours))
            else:
                self.tracker.done(state, record.offset)

        async def finish(
            record: Any, state: Any, source: Source, ours: list[tuple[AlertWork, Found]]
        ) -> None:
            # Never an LLM run: a resolution noted, a stale re-send closed, or a duplicate.
            try:
                await asyncio.gather(*(self.service.resume_settled(e, w, source) for w, e in ours))
            except Exception as exc:  # the usual way, with its retries and dead letters
                log.warning("offset %s goes the usual way: %s", record.offset, exc)
                await self._process(record, [w for w, _ in ours])
            self.tracker.done(state, record.offset)

        def resolving(ours: list[tuple[AlertWork, Found]]) -> bool:
            return all(w.alert.status == "resolved" and f.record.status.terminal for w, f in ours)

        async def note(items: list[tuple[Any, Any, Source, list[tuple[AlertWork, Found]]]]) -> None:
            # Resolutions of finished episodes (re-sends of a resolved alert, mostly): together.
            if not items:
                return
            try:
                await self.service.note_resolutions([(e, w) for *_, ours in items for w, e in ours])
            except Exception as exc:
                log.warning("noting %d resolutions together failed: %s", len(items), exc)
                await asyncio.gather(*(finish(*item) for item in items))
                return
            for record, state, _, _ in items:
                self.tracker.done(state, record.offset)

        resolutions = [item for item in known if resolving(item[3])]
        others = [item for item in known if not resolving(item[3])]
        await asyncio.gather(note(resolutions), *(finish(*item) for item in others))

    def _decode_settled(self, record: Any) -> list[AlertWork] | None:
        """The message's alerts, or ``None`` when ``settled_outcome`` knows all their outcomes.

        An empty list: something for ``_process`` to look at (a chat turn, a bad message).
        """
        value = record.value
        try:
            if decode_chat(value) is not None:
                return []
            works = decode_message(value, self.settings.kafka.max_message_bytes)
        except Exception:  # RejectedMessage or unforeseen: _process decides, as before
            return []
        settled = self.service.settled_outcome
        if len(works) == 1:  # mostly: a bare alert
            if (outcome := settled(works[0], count=False)) is None:
                return works
            outcomes: list[Outcome | None] = [outcome]
        else:
            outcomes = [settled(w, count=False) for w in works]
            if None in outcomes:
                return works
        if duplicates := outcomes.count(Outcome.DUPLICATE):
            metrics.DEDUP_HITS.labels("kafka").inc(duplicates)
        return None

    def _apply_backpressure(self) -> None:
        """Pause fetching while work waits beyond what may run, resume when none does."""
        consumer = self.consumer
        if consumer is None or self._closing.is_set():
            return
        # Once work waits beyond what may run (a batch holds up to 500 messages), fetching stops;
        # until then the next batch is fetched and decoded while the running work waits on I/O.
        full = bool(self._backlog or self._settle_queue)
        if full != self._paused:
            partitions = consumer.assignment()
            if full:
                consumer.pause(*partitions)
            else:
                consumer.resume(*partitions)
            self._paused = full

    def on_assigned(self, assigned: set[TopicPartition]) -> None:
        if self._paused and self.consumer is not None:
            self.consumer.pause(*assigned)

    async def _process(self, record: Any, decoded: list[AlertWork] | None = None) -> None:
        source = _source(record)
        attempt = 0
        while True:
            try:
                chat = decode_chat(record.value)
                if chat is not None:  # a follow-up question on a finished investigation
                    await self.chat.handle(chat, source)
                    return
                works = decoded or decode_message(
                    record.value, self.settings.kafka.max_message_bytes
                )
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
        lag_due = 0.0
        while True:
            await asyncio.sleep(_COMMIT_INTERVAL_SECONDS)
            try:
                await self.commit()
            except Exception as exc:  # commit failures are retried on the next tick
                log.warning("offset commit failed: %s", exc)
            if time.monotonic() >= lag_due:
                lag_due = time.monotonic() + _LAG_INTERVAL_SECONDS
                await self.report_lag()

    async def report_lag(self) -> None:
        """``holmes_stream_consumer_lag_messages`` of every assigned partition: its end offset
        (asked of the broker: fetches stop while paused) minus its commit point."""
        consumer = self.consumer
        partitions = list(consumer.assignment()) if consumer is not None else []
        if consumer is None or not partitions:
            return
        try:
            ends = await consumer.end_offsets(partitions)
            for tp, end in ends.items():
                point = self.tracker.commit_point(tp)
                if point is None:  # nothing fetched from it here yet
                    point = await consumer.committed(tp)
                if point is not None:
                    lag = max(0, end - point)
                    metrics.CONSUMER_LAG.labels(tp.topic, str(tp.partition)).set(lag)
        except Exception as exc:  # informative only: the next tick tries again
            log.debug("consumer lag not measured: %s", exc)

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

        # Not started yet and no longer ours: the partition's next owner gets them.
        def ours(record: Any) -> bool:
            return TopicPartition(record.topic, record.partition) not in revoked

        self._backlog = collections.deque(item for item in self._backlog if ours(item[0]))
        self._held = [item for item in self._held if ours(item[0])]
        queue, self._settle_queue = self._settle_queue, collections.deque()
        for settling in queue:
            self._forget_settling(settling.ids)
            if kept := [item for item in settling.items if ours(item[0])]:
                self._settle_queue.append(_Settling(kept, _ids(kept)))
                self._settling_ids.update(self._settle_queue[-1].ids)
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


class _Settling(NamedTuple):
    """Messages to settle together, and the episodes of their alerts."""

    items: list[tuple[Any, Any, list[AlertWork], Source]]
    ids: list[str]


def _ids(items: list[tuple[Any, Any, list[AlertWork], Source]]) -> list[str]:
    return [w.investigation_id for _, _, works, _ in items for w in works]


def _source(record: Any, first_seen_ms: int | None = None) -> Source:
    """``first_seen_ms``: now, unless given (a fetch's messages are seen together)."""
    if first_seen_ms is None:
        first_seen_ms = int(time.time() * 1000)
    # Positional, in Source's order: keywords cost a fifth more, once per message.
    return Source(
        record.topic,
        record.partition,
        record.offset,
        record.timestamp,
        record.key,
        record.value,
        first_seen_ms,
    )


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self.dispatcher.on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self.dispatcher.on_assigned(set(assigned))


async def _raw_bytes(msg: Any) -> Any:
    # Undecodable bytes must reach our own decoder (and the dead-letter topic), not FastStream's.
    return msg.body


def register_alert_subscriber(
    broker: KafkaBroker, dispatcher: Dispatcher, settings: Settings
) -> Any:
    kafka = settings.kafka
    context = broker.context

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
        batch=True,
        max_records=_MAX_BATCH,
        decoder=_raw_bytes,
        title="alerts:consume",
        description=(
            "Alertmanager groups, bare alerts, investigation requests or chat requests"
            " (follow-up questions on finished investigations)"
        ),
    )
    async def on_alert(body: list[bytes]) -> None:
        # The message from the context directly: as a parameter (``msg: KafkaMessage``),
        # FastDepends resolves it in a worker thread, a thread hop per fetched batch.
        msg: KafkaMessage = context.get_local("message")
        await dispatcher.dispatch_batch(msg.raw_message, msg.consumer)

    return on_alert
