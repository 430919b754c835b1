"""Progress events on their way to Redis and Kafka, batched across investigations.

Every investigation of a process emits a handful of events (started, tool calls, token counts,
its outcome). Written one by one, each costs a Redis round trip and a Kafka publish on the
event loop; under load that is most of a worker's own CPU. The writer takes whatever events are
waiting, appends them all in one Redis script call, then hands them to Kafka, in emission order,
so every investigation's events keep their sequence on both.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from dataclasses import dataclass
from typing import Any

from holmes_stream import telemetry
from holmes_stream.producers.kafka import KafkaProducers
from holmes_stream.schemas import ProgressEvent
from holmes_stream.store import RecordStore

log = logging.getLogger(__name__)

# Events per Redis call: large enough to carry a burst, small enough to keep a batch's
# round trip short when thousands are waiting.
MAX_BATCH = 256


@dataclass
class _Pending:
    draft: ProgressEvent
    fingerprint: str
    done: asyncio.Future[ProgressEvent]
    # The emitter's context when tracing is on: its publish carries that investigation's trace.
    context: contextvars.Context | None
    published: bool  # an outcome's event: its result is on Kafka, marked with the event


class ProgressWriter:
    """One per process: ``write`` queues an event; one task at a time drains the queue."""

    def __init__(self, store: RecordStore, producers: KafkaProducers) -> None:
        self._store = store
        self._producers = producers
        self._pending: list[_Pending] = []
        self._task: asyncio.Task[None] | None = None

    def write(
        self,
        investigation_id: str,
        fingerprint: str,
        type_: str,
        payload: dict[str, Any],
        published: bool = False,
    ) -> asyncio.Future[ProgressEvent]:
        """Queue an event; the future gives it numbered, once Redis has it and Kafka took it."""
        draft = ProgressEvent(
            investigation_id=investigation_id,
            seq=0,
            type=type_,  # checked by pydantic at run time
            payload=payload,
        )
        done: asyncio.Future[ProgressEvent] = asyncio.get_running_loop().create_future()
        context = contextvars.copy_context() if telemetry.active() else None
        self._pending.append(_Pending(draft, fingerprint, done, context, published))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._drain())
        return done

    async def _drain(self) -> None:
        while self._pending:
            batch = self._pending[:MAX_BATCH]
            del self._pending[:MAX_BATCH]
            try:
                await self._write(batch)
            except BaseException as exc:  # every waiter learns it; the drain goes on
                for item in batch:
                    if not item.done.done():
                        item.done.set_exception(exc)
                if isinstance(exc, asyncio.CancelledError):
                    raise

    async def _write(self, batch: list[_Pending]) -> None:
        await self._store.append_events(
            [item.draft for item in batch],
            [item.draft.investigation_id for item in batch if item.published],
        )
        for item in batch:
            publish = self._producers.publish_progress(item.draft, item.fingerprint)
            try:
                if item.context is None:
                    await publish
                else:
                    await asyncio.create_task(publish, context=item.context)
            except Exception as exc:
                item.done.set_exception(exc)
            else:
                item.done.set_result(item.draft)
