"""The dispatcher's own decisions, with the service's replies scripted (no I/O involved)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from aiokafka import TopicPartition

from holmes_stream.consumers.alerts import Dispatcher
from holmes_stream.intake import AlertWork
from holmes_stream.schemas import Alert
from holmes_stream.service import Outcome, SettledEpisodes, Source
from holmes_stream.settings import Settings


class _Record:
    def __init__(self, offset: int, alert: dict[str, Any]) -> None:
        self.topic, self.partition, self.offset, self.timestamp = "alerts", 0, offset, None
        self.key, self.value = None, json.dumps(alert).encode()


class _Consumer:
    def __init__(self) -> None:
        self.paused = False

    def assignment(self) -> set[TopicPartition]:
        return {TopicPartition("alerts", 0)}

    def pause(self, *_: Any) -> None:
        self.paused = True

    def resume(self, *_: Any) -> None:
        self.paused = False


class _Service:
    """Settles every alert it is given once ``release`` is set; remembers what it settled."""

    def __init__(self) -> None:
        self.store = None
        self.settings = Settings().worker
        self.settled = SettledEpisodes()
        self.release = asyncio.Event()
        self.settle_calls: list[list[str]] = []
        self.handled: list[str] = []
        self.remembers = True  # False: settling leaves episodes unknown here
        self.stopping = False

    async def handle(self, work: AlertWork, source: Source) -> Outcome:
        self.handled.append(work.investigation_id)
        return Outcome.SKIPPED

    def settled_outcome(self, work: AlertWork, *, count: bool = True) -> Outcome | None:
        known = self.settled.lookup(work.investigation_id, resolved=True)
        return Outcome.RESOLVED_NOTED if known else None

    def settles_without_run(self, work: AlertWork, source: Source) -> bool:
        return True

    async def settle_many(self, items: list[tuple[AlertWork, Source]]) -> list[None]:
        self.settle_calls.append([w.investigation_id for w, _ in items])
        await self.release.wait()
        for work, _ in items:
            if self.remembers:
                self.settled.remember(work.investigation_id, 60_000, 60_000)
        return [None] * len(items)


def _alert(fingerprint: str) -> Alert:
    return Alert.model_validate(_resolved(fingerprint))


def _resolved(fingerprint: str) -> dict[str, Any]:
    return {
        "status": "resolved",
        "labels": {"alertname": "A"},
        "startsAt": "2026-01-01T00:00:00Z",
        "endsAt": "2026-01-01T01:00:00Z",
        "fingerprint": fingerprint,
    }


@contextlib.asynccontextmanager
async def _dispatching() -> AsyncIterator[tuple[_Service, Dispatcher, Any]]:
    """A dispatcher on the scripted service, and a consumer that records pausing."""
    service = _Service()
    dispatcher = Dispatcher(service, Settings())  # type: ignore[arg-type]
    try:
        yield service, dispatcher, _Consumer()
    finally:
        if dispatcher._committer is not None:
            dispatcher._committer.cancel()


async def _until_done(dispatcher: Dispatcher, tp: TopicPartition, offset: int) -> None:
    """Wait (up to half a second) for every offset before ``offset`` to be done."""
    for _ in range(50):
        if dispatcher.tracker.commit_point(tp) == offset:
            return
        await asyncio.sleep(0.01)


async def test_messages_of_an_episode_being_settled_wait_for_it() -> None:
    async with _dispatching() as (service, dispatcher, consumer):
        await dispatcher.dispatch_batch(
            [_Record(0, _resolved("x")), _Record(1, _resolved("y"))], consumer
        )
        # The next fetch holds a re-send of x while x is being settled, and settles z.
        await dispatcher.dispatch_batch(
            [_Record(2, _resolved("x")), _Record(3, _resolved("z"))], consumer
        )
        await asyncio.sleep(0)
        assert len(service.settle_calls) == 2
        assert len(service.settle_calls[1]) == 1  # z only
        tp = TopicPartition("alerts", 0)
        assert dispatcher.tracker.commit_point(tp) == 0
        service.release.set()
        await _until_done(dispatcher, tp, 4)
        # Every offset done, and x was settled once: its re-send was known when it was looked at.
        assert dispatcher.tracker.commit_point(tp) == 4
        assert len(service.settle_calls) == 2


async def test_a_fifth_batch_waits_decoded_for_a_settling_task_and_fetching_pauses() -> None:
    tp = TopicPartition("alerts", 0)
    async with _dispatching() as (service, dispatcher, consumer):
        for batch in range(4):  # four tasks settle at once; fetching goes on meanwhile
            records = [_Record(batch * 2 + i, _resolved(f"fp{batch}-{i}")) for i in range(2)]
            await dispatcher.dispatch_batch(records, consumer)
            await asyncio.sleep(0)
            assert len(service.settle_calls) == batch + 1
            assert not consumer.paused
        await dispatcher.dispatch_batch([_Record(8, _resolved("fp4-0"))], consumer)
        await asyncio.sleep(0)
        assert len(service.settle_calls) == 4  # the fifth waits for a task
        assert consumer.paused
        service.release.set()
        await _until_done(dispatcher, tp, 9)
        assert dispatcher.tracker.commit_point(tp) == 9
        assert service.settle_calls[4] == [AlertWork(_alert("fp4-0")).investigation_id]
        assert not consumer.paused
        assert not dispatcher._settling_ids


async def test_a_waiting_batch_of_a_revoked_partition_is_dropped() -> None:
    async with _dispatching() as (service, dispatcher, consumer):
        for offset in range(5):
            await dispatcher.dispatch_batch([_Record(offset, _resolved(f"fp{offset}"))], consumer)
        await asyncio.sleep(0)
        waiting = AlertWork(_alert("fp4")).investigation_id
        assert waiting in dispatcher._settling_ids
        await dispatcher.on_revoked({TopicPartition("alerts", 0)})
        assert waiting not in dispatcher._settling_ids
        service.release.set()
        await asyncio.sleep(0.05)
        assert len(service.settle_calls) == 4  # its next owner settles it


async def test_at_shutdown_a_waiting_batch_stays_uncommitted() -> None:
    committed: list[dict[TopicPartition, Any]] = []

    async def commit(offsets: dict[TopicPartition, Any]) -> None:
        committed.append(offsets)

    async with _dispatching() as (service, dispatcher, consumer):
        consumer.commit = commit
        consumer.highwater = lambda _tp: None
        for offset in range(5):
            await dispatcher.dispatch_batch([_Record(offset, _resolved(f"fp{offset}"))], consumer)
        await asyncio.sleep(0)
        service.release.set()
        await dispatcher.drain(grace_seconds=5)
        # The four running batches finished and were committed; the waiting one never started:
        # its message is redelivered, not lost.
        assert len(service.settle_calls) == 4
        assert committed[-1][TopicPartition("alerts", 0)].offset == 4


async def test_an_episode_met_twice_in_one_fetch_is_handled_message_by_message() -> None:
    tp = TopicPartition("alerts", 0)
    async with _dispatching() as (service, dispatcher, consumer):
        service.release.set()
        records = [_Record(0, _resolved("x")), _Record(1, _resolved("y"))]
        await dispatcher.dispatch_batch([*records, _Record(2, _resolved("x"))], consumer)
        await _until_done(dispatcher, tp, 3)
        x, y = (AlertWork(_alert(f)).investigation_id for f in ("x", "y"))
        assert service.settle_calls == [[y]]  # only y is settled with the batch
        assert service.handled == [x, x]
        assert dispatcher.tracker.commit_point(tp) == 3


async def test_re_sends_held_for_one_settling_batch_are_settled_together_then_forgotten() -> None:
    tp = TopicPartition("alerts", 0)
    async with _dispatching() as (service, dispatcher, consumer):
        service.remembers = False  # so the held re-sends still need settling afterwards
        await dispatcher.dispatch_batch([_Record(0, _resolved("x"))], consumer)
        for offset in (1, 2):  # two later fetches, each with a re-send of x: both held
            await dispatcher.dispatch_batch([_Record(offset, _resolved("x"))], consumer)
        await asyncio.sleep(0)
        x = AlertWork(_alert("x")).investigation_id
        assert service.settle_calls == [[x]]
        service.release.set()
        await _until_done(dispatcher, tp, 3)
        assert service.settle_calls == [[x], [x, x]]  # the held pair, in one batch
        assert dispatcher.tracker.commit_point(tp) == 3
        assert not dispatcher._settling_ids and not dispatcher._held
