"""Per-process fan-out of progress events to Server-Sent-Events clients.

One reader task and one Redis connection per process, whatever the number of clients: it
blocks in a single ``XREAD`` over the streams of every investigation being watched, plus a
private "wake" stream that a new watch writes to so that the blocked read returns and the new
stream joins at once. Each event is parsed and encoded as Server-Sent Events once, then
appended to every watching client's pending list; a client wakes once for whatever is pending
and writes it in one go (no per-client queue, task or timeout per event). A client replays the
history itself (``XRANGE``) after registering, so nothing is lost between replay and live
events, and drops what it has already sent by sequence number.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import uuid
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from litestar.response import ServerSentEventMessage
from redis.asyncio import Redis

from holmes_stream.schemas import ProgressEvent
from holmes_stream.store import RecordStore

log = logging.getLogger(__name__)

# After a read that returned events, wait this long before the next one: events written in a
# burst (a hundred investigations progressing at once) then come in a few reads instead of one
# XREAD over every watched stream per event, each costing more than a hundred deliveries. The
# clients write what the last read brought meanwhile.
LINGER_SECONDS = 0.005


@functools.lru_cache(maxsize=8192)
def _wire(seq: int, type_: str, data: str) -> bytes:
    return ServerSentEventMessage(data=data, event=type_, id=seq).encode()


def encode_event(event: ProgressEvent) -> bytes:
    """An event as Server-Sent Events, encoded once for all the clients that follow it."""
    return _wire(event.seq, event.type, event.json_text())


class Live(NamedTuple):
    event: ProgressEvent
    wire: bytes  # encode_event(event)


def _bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


@dataclass(eq=False)
class Watch:
    """One client's live events: the hub appends, the client takes all that is pending.

    The idle timeout is one timer per client that re-arms itself when the client was active
    meanwhile, not a timer per wait: a timer per event and client (asyncio's timer heap) cost
    more than the rest of a delivery.
    """

    investigation_id: str
    pending: list[Live] = field(default_factory=list)
    _waiter: asyncio.Future[None] | None = None
    _timer: asyncio.TimerHandle | None = None
    _deadline: float = 0.0

    def push(self, items: list[Live]) -> None:
        self.pending.extend(items)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def next(self, timeout: float) -> list[Live]:
        """What is pending, waiting up to ``timeout`` seconds for it; ``[]`` when idle."""
        if not self.pending:
            loop = asyncio.get_running_loop()
            self._deadline = loop.time() + timeout
            if self._timer is None:
                self._timer = loop.call_at(self._deadline, self._expire)
            self._waiter = waiter = loop.create_future()
            try:
                await waiter
            finally:
                self._waiter = None
        items, self.pending = self.pending, []
        return items

    def _expire(self) -> None:
        self._timer = None
        waiter = self._waiter
        if waiter is None or waiter.done():
            return  # not waiting: the next wait arms the timer again
        loop = waiter.get_loop()
        if loop.time() < self._deadline:  # the client was woken since: wait out this wait
            self._timer = loop.call_at(self._deadline, self._expire)
        else:
            waiter.set_result(None)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


@dataclass
class _Topic:
    # Bytes, as Redis answers them: the reader sends a hundred keys and ids per XREAD.
    key: bytes
    cursor: bytes  # last stream id read for this investigation
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
        self._wake_key = f"{store.prefix}ssewake:{uuid.uuid4().hex}".encode()
        self._wake_cursor = b"0-0"
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
            key = self._store._k("ev", investigation_id).encode()
            last: Any = await self._store.redis.xrevrange(key, count=1)
            cursor = _bytes(last[0][0]) if last else b"0-0"
            topic = self._topics.setdefault(investigation_id, _Topic(key, cursor))
            topic.watches.add(w)
            self._has_topics.set()
            await self._wake()
        else:
            topic.watches.add(w)
        return w

    def unwatch(self, w: Watch) -> None:
        w.close()
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
                if await self._read_once():
                    await asyncio.sleep(LINGER_SECONDS)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis away: clients keep their keep-alives; retry
                log.warning("SSE hub read failed: %s", exc)
                await asyncio.sleep(1)

    async def _read_once(self) -> bool:
        """One blocking read; whether it brought events for clients."""
        streams: dict[bytes, bytes] = {self._wake_key: self._wake_cursor}
        by_key: dict[bytes, _Topic] = {}
        for topic in self._topics.values():
            streams[topic.key] = topic.cursor
            by_key[topic.key] = topic
        result: Any = await self._redis.xread(streams, block=self._block_ms, count=500)  # type: ignore[arg-type]
        delivered = False
        for raw_key, rows in result or []:
            if not rows:
                continue
            key, last_id = _bytes(raw_key), _bytes(rows[-1][0])
            if key == self._wake_key:
                self._wake_cursor = last_id
                continue
            topic = by_key[key]
            topic.cursor = last_id
            items = []
            for _, fields in rows:
                event = ProgressEvent.model_validate_json(fields[b"e"])
                items.append(Live(event, encode_event(event)))
            for w in list(topic.watches):
                w.push(items)
            delivered = True
        return delivered
