"""Development aid: CPU per alert of the paths of alerts that need no LLM, without I/O.

    python -m bench.settle_cpu [--n 490] [--rounds 20]

Runs the worker's ``Dispatcher`` on batches of stale and of resolved alerts of unknown
episodes, as a fetch hands them over (its per-message bookkeeping, decoding,
``InvestigationService.settle_many``), with Redis's and Kafka's replies stubbed (every record
new, every send delivered) but everything we compute (records, redaction, the Lua argument, the
Kafka record batches) real; and the intake alone (decoding, the in-process lookups). Deterministic
enough to compare changes that the end-to-end figure, on a shared 2-core machine, cannot
resolve. Not part of the suite.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

from aiokafka import AIOKafkaProducer

from bench.common import REF_STARTS_AT, alert_json
from holmes_stream.cli import _settled
from holmes_stream.consumers.alerts import Dispatcher, _source
from holmes_stream.intake import decode_message
from holmes_stream.producers import kafka as kafka_producers
from holmes_stream.redaction import Redactor
from holmes_stream.service import Extras, InvestigationService, SettledEpisodes
from holmes_stream.settings import Settings
from holmes_stream.store import RecordStore


class _Consumer:
    """What the dispatcher asks of aiokafka's consumer: its assignment, pauses, commits."""

    def assignment(self) -> set[Any]:
        return set()

    def pause(self, *partitions: Any) -> None: ...

    def resume(self, *partitions: Any) -> None: ...

    async def commit(self, offsets: Any) -> None: ...

    def highwater(self, tp: Any) -> None:
        return None


class _Record:
    def __init__(self, offset: int, value: bytes) -> None:
        self.topic, self.partition, self.offset, self.timestamp = "alerts", 0, offset, None
        self.key, self.value = None, value


async def main(n: int, rounds: int) -> None:
    from redis.asyncio import Redis

    settings = Settings()
    store = RecordStore(Redis(), "bench:")

    async def settle_new(args: list[Any]) -> list[list[int]]:
        return [[0, 1]] * args[0].count(b'"id":')  # one per outcome, without a decode

    store._settle_new = settle_new  # type: ignore[assignment]

    async def mark_many(keys: Any = None, args: Any = None) -> None:
        return None

    store._mark_many = mark_many  # type: ignore[assignment]
    producer = AIOKafkaProducer(max_batch_size=kafka_producers.PRODUCER_BATCH_BYTES)
    producers = kafka_producers.KafkaProducers(
        kafka_producers.make_broker(settings.kafka), settings.kafka
    )
    producers._direct = lambda: producer  # type: ignore[method-assign]

    async def for_topics(_p: Any, topics: Any) -> kafka_producers._Batches:
        return kafka_producers._Batches(producer, {t: [0, 1, 2, 3] for t in topics})

    kafka_producers._Batches.for_topics = for_topics  # type: ignore[method-assign,assignment]

    async def send(self: Any) -> dict[str, list[Any]]:
        every = [*self._full, *self._open.values()]
        for b in every:
            b._build()
        return {t: [] for t in self._partitions}

    kafka_producers._Batches.send = send  # type: ignore[method-assign]
    service = InvestigationService(
        store, producers, settings.worker, extras=Extras(redactor=Redactor())
    )
    dispatcher, consumer = Dispatcher(service, settings), _Consumer()
    _settled()  # the worker's collector settings: young collections every 50,000 allocations
    ended = REF_STARTS_AT.replace(hour=1)
    kinds = {
        "stale": lambda i: alert_json(f"fp-stale-{i}"),
        "resolved (unknown episode)": lambda i: alert_json(
            f"fp-orphan-{i}", status="resolved", ends_at=ended
        ),
    }
    for kind, make in kinds.items():
        best_take = best_all = float("inf")
        for r in range(rounds):
            records = [_Record(i, json.dumps(make(2 * r * n + i)).encode()) for i in range(n)]
            t0 = time.process_time()
            works = [(decode_message(rec.value, 10**6), _source(rec)) for rec in records]
            for ws, source in works:
                for w in ws:
                    service.settled_outcome(w, count=False)
                    service.settles_without_run(w, source)
            t1 = time.process_time()
            # The same kind of batch again (new alerts), through the dispatcher, as fetched.
            records = [_Record(i, json.dumps(make((2 * r + 1) * n + i)).encode()) for i in range(n)]
            t2 = time.process_time()
            await dispatcher.dispatch_batch(records, consumer)
            while tasks := dispatcher._tasks:
                await asyncio.gather(*tasks)
            t3 = time.process_time()
            if dispatcher.tracker.in_flight or dispatcher._backlog:  # each one settled together
                raise RuntimeError("the dispatcher left messages unsettled")
            best_take, best_all = min(best_take, t1 - t0), min(best_all, t3 - t2)
        print(
            f"{kind:28s} intake {best_take / n * 1e6:6.1f} us/alert,"
            f" dispatched and settled {best_all / n * 1e6:6.1f} us/alert (best of {rounds})"
        )
    if dispatcher._committer is not None:
        dispatcher._committer.cancel()
    remember_cost()


def remember_cost(size: int = 100_000) -> None:
    """A long-running worker's memory of settled episodes, below and beyond its size: what
    every settled alert pays to be remembered."""
    settled = SettledEpisodes(size)
    for lap in range(3):
        t0 = time.process_time()
        for i in range(lap * size, (lap + 1) * size):
            settled.remember(f"episode-{i:012d}", 86_400_000, None)
        per = (time.process_time() - t0) / size * 1e6
        print(f"remember, entries {lap * size:>7,}-{(lap + 1) * size:<7,} {per:6.1f} us/alert")


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=490)
    p.add_argument("--rounds", type=int, default=20)
    a = p.parse_args()
    asyncio.run(main(a.n, a.rounds))
