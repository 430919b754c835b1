"""Development aid: CPU per alert of the paths of alerts that need no LLM, without I/O.

    python -m bench.settle_cpu [--n 490] [--rounds 20]

Runs the dispatcher's intake and ``InvestigationService.settle_many`` for batches of stale and
of resolved alerts of unknown episodes, with Redis's and Kafka's replies stubbed (every record
new, every send delivered) but everything we compute (records, redaction, the Lua argument, the
Kafka record batches) real. Deterministic enough to compare changes that the end-to-end figure,
on a shared 2-core machine, cannot resolve. Not part of the suite.
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
from holmes_stream.consumers.alerts import _source
from holmes_stream.intake import decode_message
from holmes_stream.producers import kafka as kafka_producers
from holmes_stream.redaction import Redactor
from holmes_stream.service import Extras, InvestigationService, SettledEpisodes
from holmes_stream.settings import Settings
from holmes_stream.store import RecordStore


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
    _settled()  # the worker's collector settings: young collections every 50,000 allocations
    ended = REF_STARTS_AT.replace(hour=1)
    kinds = {
        "stale": lambda i: alert_json(f"fp-stale-{i}"),
        "resolved (unknown episode)": lambda i: alert_json(
            f"fp-orphan-{i}", status="resolved", ends_at=ended
        ),
    }
    for kind, make in kinds.items():
        best_take = best_settle = float("inf")
        for r in range(rounds):
            records = [_Record(i, json.dumps(make(r * n + i)).encode()) for i in range(n)]
            t0 = time.process_time()
            works = [(decode_message(rec.value, 10**6), _source(rec)) for rec in records]
            for ws, source in works:
                for w in ws:
                    service.settled_outcome(w, count=False)
                    service.settles_without_run(w, source)
            t1 = time.process_time()
            await service.settle_many([(w, s) for ws, s in works for w in ws])
            t2 = time.process_time()
            best_take, best_settle = min(best_take, t1 - t0), min(best_settle, t2 - t1)
        print(
            f"{kind:28s} intake {best_take / n * 1e6:6.1f} us/alert,"
            f" settle {best_settle / n * 1e6:6.1f} us/alert (best of {rounds})"
        )
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
