"""Per-process fan-out of progress events to Server-Sent-Events clients.

One reader task and one Redis connection per process, whatever the number of clients: it
blocks in a single ``XREAD`` over the streams of every investigation being watched, plus a
private "wake" stream that a new watch writes to so that the blocked read returns and the new
stream joins at once. Events are put on each watching client's queue; a client replays the
history itself (``XRANGE``) after registering, so nothing is lost between replay and live
events, and drops what it has already sent by sequence number.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis

from holmes_stream.schemas import ProgressEvent
from holmes_stream.store import RecordStore

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Watch:
    investigation_id: str
    queue: asyncio.Queue[ProgressEvent] = field(default_factory=asyncio.Queue)


@dataclass
class _Topic:
    key: str
    cursor: str  # last stream id read for this investigation
    watches: set[Watch] = field(default_factory=set)


class SSEHub:
    def __init__(self, redis_url: str, store: RecordStore, block_ms: int = 5000) -> None:
        # The blocking reader gets its own connection; its socket timeout outlasts the block.
        self._redis = Redis.from_url(
            redis_url, socket_timeout=block_ms / 1000 + 10, socket_connect_timeout=5
        )
        self._store = store
        self._block_ms = block_ms
        self._topics: dict[str, _Topic] = {}
        self._wake_key = f"{store.prefix}ssewake:{uuid.uuid4().hex}"
        self._wake_cursor = "0-0"
        self._has_topics = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def watched(self) -> int:
        return len(self._topics)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="sse-hub")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        with contextlib.suppress(Exception):
            await self._redis.delete(self._wake_key)
        await self._redis.aclose()

    async def watch(self, investigation_id: str) -> Watch:
        """Start receiving live events; replay history *after* this returns."""
        w = Watch(investigation_id)
        topic = self._topics.get(investigation_id)
        if topic is None:
            key = self._store._k("ev", investigation_id)
            last: Any = await self._store.redis.xrevrange(key, count=1)
            cursor = last[0][0].decode() if last else "0-0"
            topic = self._topics.setdefault(investigation_id, _Topic(key, cursor))
            topic.watches.add(w)
            self._has_topics.set()
            await self._wake()
        else:
            topic.watches.add(w)
        return w

    def unwatch(self, w: Watch) -> None:
        topic = self._topics.get(w.investigation_id)
        if topic is None:
            return
        topic.watches.discard(w)
        if not topic.watches:
            del self._topics[w.investigation_id]

    async def _wake(self) -> None:
        pipe = self._store.redis.pipeline(transaction=False)
        pipe.xadd(self._wake_key, {"w": "1"}, maxlen=10, approximate=True)
        pipe.expire(self._wake_key, 3600)
        await pipe.execute()

    async def _run(self) -> None:
        while True:
            try:
                if not self._topics:
                    self._has_topics.clear()
                    await self._has_topics.wait()
                await self._read_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis away: clients keep their keep-alives; retry
                log.warning("SSE hub read failed: %s", exc)
                await asyncio.sleep(1)

    async def _read_once(self) -> None:
        streams: dict[str, str] = {self._wake_key: self._wake_cursor}
        by_key: dict[str, _Topic] = {}
        for topic in self._topics.values():
            streams[topic.key] = topic.cursor
            by_key[topic.key] = topic
        result: Any = await self._redis.xread(streams, block=self._block_ms, count=500)  # type: ignore[arg-type]
        for raw_key, rows in result or []:
            key = raw_key.decode() if isinstance(raw_key, bytes) else raw_key
            if not rows:
                continue
            last_id = rows[-1][0].decode() if isinstance(rows[-1][0], bytes) else rows[-1][0]
            if key == self._wake_key:
                self._wake_cursor = last_id
                continue
            topic = by_key[key]
            topic.cursor = last_id
            events = [ProgressEvent.model_validate_json(fields[b"e"]) for _, fields in rows]
            for w in list(topic.watches):
                for event in events:
                    w.queue.put_nowait(event)
