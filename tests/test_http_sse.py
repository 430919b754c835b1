"""Server-Sent Events: resume on another replica, keep-alives, closing, one reader per process."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from typing import Any

import httpx
from redis.asyncio import Redis

from holmes_stream.schemas import Alert, InvestigationRecord, Status
from holmes_stream.schemas.investigations import utcnow
from holmes_stream.settings import Settings
from holmes_stream.store import RecordStore
from tests.conftest import free_port, fresh, load_fixture


async def read_sse(
    url: str,
    headers: dict[str, str] | None = None,
    stop_after: int | None = None,
    timeout: float = 20,
) -> tuple[list[dict[str, str]], int, bool]:
    """(events, keep-alive comments, whether the server ended the stream)."""
    events: list[dict[str, str]] = []
    comments = 0
    current: dict[str, str] = {}

    async def run() -> bool:
        nonlocal comments, current
        async with httpx.AsyncClient(timeout=timeout) as client:
            async with client.stream("GET", url, headers=headers or {}) as response:
                assert response.status_code == 200, await response.aread()
                assert response.headers["content-type"].startswith("text/event-stream")
                async for line in response.aiter_lines():
                    if not line:
                        if "data" in current:
                            events.append(current)
                            if stop_after is not None and len(events) >= stop_after:
                                return False  # we hang up mid-stream
                        current = {}
                    elif line.startswith(":"):
                        comments += 1
                    else:
                        field, _, value = line.partition(":")
                        current[field] = value.lstrip(" ")
        return True

    ended = await asyncio.wait_for(run(), timeout)
    return events, comments, ended


async def submit(api: str, uid: str, tag: str) -> str:
    async with httpx.AsyncClient(timeout=30) as client:
        r = await client.post(
            f"{api}/api/v1/investigations",
            json=fresh(load_fixture("single-alert.json"), f"{uid}{tag}"),
        )
        assert r.status_code == 202, r.text
        return str(r.json()["investigations"][0]["id"])


def store_for(settings: Settings) -> RecordStore:
    redis = Redis.from_url(settings.redis.url)
    return RecordStore(redis, settings.redis.key_prefix)


async def test_resume_on_another_replica_without_gap_or_duplicate(
    settings: Settings, uid: str, start_api
) -> None:
    first = await start_api(settings)
    other = settings.model_copy(deep=True)
    other.api.port = free_port()
    second = await start_api(other)
    inv = await submit(first, uid, "r")
    store = store_for(settings)  # stands in for the worker that writes progress
    try:
        for i in range(3):
            await store.append_event(inv, "ai_message", {"content": f"step {i}"})
        url = f"/api/v1/investigations/{inv}/events"
        got, _, ended = await read_sse(first + url, stop_after=2)
        assert not ended and [e["id"] for e in got] == ["1", "2"]

        # Events written while nobody listens, then live ones while following on replica two.
        await store.append_event(inv, "start_tool_calling", {"tool_name": "kubectl"})

        async def write_more() -> None:
            await asyncio.sleep(0.5)
            await store.append_event(
                inv, "tool_calling_result", {"tool_name": "kubectl", "status": "success"}
            )
            await asyncio.sleep(0.3)
            await store.append_event(inv, "completed", {"status": "completed"})

        writer = asyncio.create_task(write_more())
        rest, _, ended = await read_sse(second + url, headers={"Last-Event-ID": got[-1]["id"]})
        await writer
        assert ended  # the terminal event closes the stream
        ids = [int(e["id"]) for e in got + rest]
        assert ids == [1, 2, 3, 4, 5, 6], ids
        assert [e["event"] for e in rest] == [
            "ai_message",
            "start_tool_calling",
            "tool_calling_result",
            "completed",
        ]
        assert json.loads(rest[0]["data"])["payload"] == {"content": "step 2"}
    finally:
        await store.redis.aclose()


async def test_keepalive_while_idle_and_finished_replays_then_closes(
    settings: Settings, uid: str, start_api
) -> None:
    api = await start_api(settings)
    inv = await submit(api, uid, "k")
    store = store_for(settings)
    try:
        await store.append_event(inv, "started", {"attempt": 1})
        url = f"{api}/api/v1/investigations/{inv}/events"
        # keep-alive is 1 s in tests: an idle stream sends comments and stays open.
        events, comments = await _read_for(url, seconds=2.5)
        assert [e["event"] for e in events] == ["started"] and comments >= 2

        await store.append_event(inv, "completed", {"status": "completed"})
        record = await store.get(inv)
        assert record is not None
        record.status, record.finished_at = Status.COMPLETED, utcnow() - timedelta(seconds=30)
        await store.put(record)
        started = asyncio.get_running_loop().time()
        events, _, ended = await read_sse(url, timeout=5)
        assert ended and [e["event"] for e in events] == ["started", "completed"]
        assert asyncio.get_running_loop().time() - started < 1.0
        # A client that already saw the end is told so at once, with nothing more.
        events, _, ended = await read_sse(url, headers={"Last-Event-ID": "2"}, timeout=5)
        assert ended and events == []
    finally:
        await store.redis.aclose()


async def _read_for(url: str, seconds: float) -> tuple[list[dict[str, str]], int]:
    events: list[dict[str, str]] = []
    comments = 0

    async def run() -> None:
        nonlocal comments
        current: dict[str, str] = {}
        async with httpx.AsyncClient(timeout=10) as client:
            async with client.stream("GET", url) as response:
                async for line in response.aiter_lines():
                    if not line:
                        if "data" in current:
                            events.append(current)
                        current = {}
                    elif line.startswith(":"):
                        comments += 1
                    else:
                        field, _, value = line.partition(":")
                        current[field] = value.lstrip(" ")

    try:
        await asyncio.wait_for(run(), seconds)
    except TimeoutError:
        pass
    return events, comments


async def test_many_clients_share_one_blocking_reader(
    settings: Settings, uid: str, start_api
) -> None:
    api = await start_api(settings)
    ids = [await submit(api, uid, f"m{i}") for i in range(2)]
    store = store_for(settings)
    clients = 200
    try:
        for inv in ids:
            await store.append_event(inv, "started", {"attempt": 1})
        limits = httpx.Limits(max_connections=clients + 10)
        async with httpx.AsyncClient(timeout=30, limits=limits) as client:
            received: list[list[str]] = [[] for _ in range(clients)]
            connected = asyncio.Event()
            opened = 0

            async def follow(n: int) -> None:
                nonlocal opened
                url = f"{api}/api/v1/investigations/{ids[n % 2]}/events"
                async with client.stream("GET", url) as response:
                    assert response.status_code == 200
                    async for line in response.aiter_lines():
                        if line.startswith("event:"):
                            received[n].append(line.split(":", 1)[1].strip())
                            if len(received[n]) == 1:
                                opened += 1
                                if opened == clients:
                                    connected.set()

            tasks = [asyncio.create_task(follow(n)) for n in range(clients)]
            try:
                await asyncio.wait_for(connected.wait(), 30)
            except TimeoutError:
                errors = [t.exception() for t in tasks if t.done()][:3]
                raise AssertionError(f"only {opened} of {clients} connected: {errors}") from None
            await asyncio.sleep(0.3)
            info: dict[str, Any] = await store.redis.info("clients")
            # One blocked XREAD for the whole process, not one per client.
            assert info["blocked_clients"] <= 2, info
            for inv in ids:
                await store.append_event(inv, "completed", {"status": "completed"})
            await asyncio.wait_for(asyncio.gather(*tasks), 30)
        assert all(r == ["started", "completed"] for r in received)
    finally:
        await store.redis.aclose()


async def test_a_record_that_never_ran_tells_its_outcome(
    settings: Settings, uid: str, start_api
) -> None:
    """Stale alerts and resolutions of unknown episodes store no events: the stream tells the
    terminal event derived from the record, as it went to the progress topic."""
    api = await start_api(settings)
    store = store_for(settings)
    alert = Alert.model_validate(fresh(load_fixture("single-alert.json"), f"{uid}n"))
    try:
        settled = []
        for n, finished in enumerate((utcnow(), utcnow() - timedelta(seconds=30))):
            record = InvestigationRecord(
                id=f"{uid}-never-{n}",
                episode_key=f"ep-{uid}-{n}",
                fingerprint=alert.identity(),
                status=Status.SKIPPED,
                reason="stale: long ago",
                alert=alert,
                created_at=finished,
                finished_at=finished,
            )
            [s] = await store.settle_many([record])
            assert s.event is not None
            settled.append((record, s.event))
        for record, published in settled:  # just finished, and long ago
            url = f"{api}/api/v1/investigations/{record.id}/events"
            events, _, ended = await read_sse(url, timeout=5)
            assert ended and [(e["id"], e["event"]) for e in events] == [("1", "skipped")]
            assert json.loads(events[0]["data"]) == json.loads(published.text)
            events, _, ended = await read_sse(url, headers={"Last-Event-ID": "1"}, timeout=5)
            assert ended and events == []
    finally:
        await store.redis.aclose()
