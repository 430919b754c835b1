"""Record reads of concurrent lookups, batched: one ``MGET`` per event-loop turn.

Every lookup still reads its record from Redis after its request arrived (nothing is cached);
lookups that arrive in the same turn of the event loop share one round trip. redis-py's
per-command overhead (pool checkout with its timeout, retry wrapper, packing, parsing) was
about as large as the rest of a lookup; under load it is paid once per batch.
"""

from __future__ import annotations

import asyncio

from holmes_stream.store import RecordStore

# A bound on one MGET: a burst larger than this is read in several batches.
MAX_BATCH = 256


class RecordReader:
    def __init__(self, store: RecordStore) -> None:
        self._store = store
        self._batch: list[tuple[str, asyncio.Future[bytes | None]]] = []

    async def get_raw(self, investigation_id: str) -> bytes | None:
        """The record's JSON as stored, as ``RecordStore.get_raw`` (and its errors)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bytes | None] = loop.create_future()
        if not self._batch:
            # Run after the callbacks already queued: the other requests of this turn join.
            loop.call_soon(self._flush)
        self._batch.append((self._store._k("inv", investigation_id), future))
        return await future

    def _flush(self) -> None:
        batch, self._batch = self._batch, []
        for start in range(0, len(batch), MAX_BATCH):
            # Its own task: a cancelled caller must not cancel the read of the others.
            asyncio.get_running_loop().create_task(self._read(batch[start : start + MAX_BATCH]))

    async def _read(self, batch: list[tuple[str, asyncio.Future[bytes | None]]]) -> None:
        try:
            values: list[bytes | None] = await self._store.redis.mget([key for key, _ in batch])
        except asyncio.CancelledError:  # shutting down
            for _, future in batch:
                future.cancel()
            raise
        except Exception as exc:  # every waiter gets the error (RedisError: 503)
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), value in zip(batch, values, strict=True):
            if not future.done():
                future.set_result(value)
