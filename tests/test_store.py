"""The store's batch settling against the real redis-server: every key the one Lua call writes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pydantic_core import to_json
from redis.asyncio import Redis

from holmes_stream.schemas import Alert, InvestigationRecord, ProgressEvent, Status
from holmes_stream.store import RecordStore, _event_json
from tests.conftest import load_fixture


def skipped(n: int, tenant: str | None = None, resolved: bool = False) -> InvestigationRecord:
    now = datetime.now(UTC)
    alert = Alert.model_validate(load_fixture("single-alert.json"))
    return InvestigationRecord(
        id=f"inv-{n}",
        episode_key=f"ep-{n}",
        fingerprint=f"fp-{n}",
        tenant=tenant,
        status=Status.SKIPPED,
        reason="stale: long ago",
        alert=alert,
        created_at=now,
        finished_at=now,
        resolved_at=now if resolved else None,
    )


async def test_settle_many_stores_records_and_indexes_and_derives_events(stack, uid: str) -> None:
    redis = Redis.from_url(stack.endpoints()["redis_url"])
    store = RecordStore(redis, prefix=f"t{uid}:")
    try:
        records = [skipped(1), skipped(2, tenant="acme", resolved=True)]
        # Events of the first id stored already (its record gone): its event is appended.
        await store.append_event(records[0].id, "queued", {})
        settled = await store.settle_many(records)

        for record, s in zip(records, settled, strict=True):
            assert s.existing is None and s.event is not None
            assert s.record_json == record.model_dump_json().encode()
            assert await store.get(record.id) == record
            # The event as published, as a reader gets it, and as ProgressEvent writes it.
            replayed = await store.replay(record, s.event.seq - 1)
            assert [e.model_dump_json() for e in replayed] == [s.event.text]
            assert s.event.model().json_text() == s.event.text
            [event] = replayed
            assert (event.type, event.investigation_id) == ("skipped", record.id)
            assert event.payload == {"status": "skipped", "reason": "stale: long ago"}
            assert event.at == record.finished_at
        assert [s.event.seq for s in settled if s.event] == [2, 1]
        assert await redis.ttl(f"t{uid}:ev:inv-1") > 0
        assert len(await store.events_after("inv-1", 0)) == 2
        # The second one's event is derived: no stream, no counter, nothing after it.
        assert not await redis.exists(f"t{uid}:ev:inv-2", f"t{uid}:evseq:inv-2")
        assert await store.events_after("inv-2", 0) == []
        assert await store.replay(records[1], 1) == []
        # Indexes: everything, per fingerprint, per alert name, per tenant.
        assert await store.list_ids(limit=10) != []
        assert {m.decode() for m in await redis.zrange(f"t{uid}:idx:all", 0, -1)} == {
            "inv-1",
            "inv-2",
        }
        assert await redis.zrange(f"t{uid}:idx:fp:fp-2", 0, -1) == [b"inv-2"]
        assert await redis.zrange(f"t{uid}:idx:tenant:acme", 0, -1) == [b"inv-2"]
        assert await redis.zrange(f"t{uid}:idx:untenanted", 0, -1) == [b"inv-1"]
        # The resolution is the record's: no mark beside it (a run's outcome reads marks).
        assert (await store.get("inv-2")).resolved_at == records[1].resolved_at
        assert not await redis.exists(f"t{uid}:resolved:inv-2", f"t{uid}:resolved:inv-1")

        # Settled again (a redelivery): the records are found, nothing is written twice.
        await store.mark_published(["inv-1"])
        again = await store.settle_many(records)
        assert [(s.existing, s.event, s.published) for s in again] == [
            (records[0], None, True),
            (records[1], None, False),
        ]
        assert len(await store.events_after("inv-1", 0)) == 2
        assert not await redis.exists(f"t{uid}:ev:inv-2")
    finally:
        await redis.aclose()


async def test_only_records_that_never_ran_derive_their_event(stack, uid: str) -> None:
    redis = Redis.from_url(stack.endpoints()["redis_url"])
    store = RecordStore(redis, prefix=f"t{uid}:")
    try:
        never = skipped(3)
        ran = never.model_copy(update={"id": "inv-4", "started_at": never.created_at})
        running = never.model_copy(update={"id": "inv-5", "status": Status.RUNNING})
        assert [e.type for e in await store.replay(never, 0)] == ["skipped"]
        assert await store.replay(ran, 0) == []  # its events were stored, and are gone
        assert await store.replay(running, 0) == []
        # Stored events win: a never-run record's stream is what it says.
        await store.append_event(never.id, "skipped", {"status": "skipped"})
        assert [e.payload for e in await store.replay(never, 0)] == [{"status": "skipped"}]
    finally:
        await redis.aclose()


def test_event_json_is_the_models_own() -> None:
    at = datetime(2026, 11, 27, 9, 30, 1, 123456, tzinfo=UTC)
    payloads = [
        {"status": Status.SKIPPED, "reason": "stale: started firing at 2026-11-25T10:00:00+00:00"},
        {"status": Status.FAILED, "error": 'quotes " and \\ and ünïcode ✓ and\nnewline'},
        {},
    ]
    for payload in payloads:
        event = ProgressEvent(
            investigation_id='i-"1"', seq=7, type="failed", payload=payload, at=at
        )
        assert _event_json('i-"1"', 7, "failed", payload, to_json(at).decode()) == (
            event.model_dump_json()
        )


async def test_store_outcome_carries_the_resolution_conversation_and_lease(stack, uid: str) -> None:
    """One step stores a finished record with its conversation and releases the owner's lease;
    a resolution noted meanwhile ends up in the stored record (and the caller's)."""
    redis = Redis.from_url(stack.endpoints()["redis_url"])
    store = RecordStore(redis, prefix=f"o{uid}:")
    try:
        plain, resolved, foreign = (skipped(n) for n in (1, 2, 3))
        for record in (plain, resolved, foreign):
            record.status = Status.COMPLETED
        await redis.set(f"o{uid}:lease:inv-1", "me")
        await redis.set(f"o{uid}:lease:inv-3", "someone else")
        at = await store.mark_resolved(resolved.id, datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
        talk = [{"role": "user", "content": "why?"}, {"role": "assistant", "content": "disk"}]

        await store.store_outcome(plain, talk, release_lease_of="me")
        await store.store_outcome(resolved, None, release_lease_of="me")
        await store.store_outcome(foreign, None, release_lease_of="me")

        assert plain.resolved_at is None and await store.get(plain.id) == plain
        assert await store.get_conversation(plain.id) == talk
        assert not await redis.exists(f"o{uid}:lease:inv-1")
        assert resolved.resolved_at == at
        assert (await store.get(resolved.id)) == resolved
        assert await store.get_conversation(resolved.id) is None
        assert await redis.get(f"o{uid}:lease:inv-3") == b"someone else"
        for i in (1, 2, 3):
            assert 0 < await redis.ttl(f"o{uid}:inv:inv-{i}") <= store.ttl
        assert 0 < await redis.ttl(f"o{uid}:conv:inv-1") <= store.ttl

        # A record that believed in a resolution no mark backs loses it, as the mark says.
        stray = skipped(4, resolved=True)
        await store.store_outcome(stray)
        assert stray.resolved_at is None and (await store.get(stray.id)) == stray
    finally:
        await redis.aclose()


async def test_index_writes_drop_entries_of_records_older_than_two_ttls(stack, uid: str) -> None:
    """Every path that indexes a record trims the indexes it writes: entries created more than
    two TTLs ago go (their records expired), younger ones stay. Without it an index in use
    renews its expiry on every write and keeps every entry forever."""
    redis = Redis.from_url(stack.endpoints()["redis_url"])
    ttl = 1000
    store = RecordStore(redis, prefix=f"t{uid}:", ttl_seconds=ttl)
    now = datetime.now(UTC)

    def made(n: int, age: float) -> InvestigationRecord:
        record = skipped(n).model_copy(update={"fingerprint": "fp-shared"})
        return record.model_copy(update={"created_at": now - timedelta(seconds=age)})

    async def members(*index: str) -> set[str]:
        return {m.decode() for m in await redis.zrange(f"t{uid}:idx:{':'.join(index)}", 0, -1)}

    async def seed(*index: str) -> None:
        # Entries written by earlier writes: one past the cutoff, one just inside it.
        key = f"t{uid}:idx:{':'.join(index)}"
        await redis.zadd(key, {"old": now.timestamp() - 2 * ttl - 60})
        await redis.zadd(key, {"young": now.timestamp() - 2 * ttl + 60})

    try:
        for write in (
            lambda: store.settle_many([made(10, 0), made(11, 0)]),
            lambda: store.create(made(2, 0)),
            lambda: store.claim(made(3, 0).model_copy(update={"status": Status.QUEUED}), "w", 30),
        ):
            await redis.delete(*[f"t{uid}:idx:{i}" for i in ("all", "fp:fp-shared", "untenanted")])
            await seed("all")
            await seed("fp", "fp-shared")
            await seed("untenanted")
            await write()
            for index in (("all",), ("fp", "fp-shared"), ("untenanted",)):
                got = await members(*index)
                assert "old" not in got and "young" in got, (index, got)
                assert 0 < await redis.ttl(f"t{uid}:idx:{':'.join(index)}") <= ttl

        # Batch settling trims an index it adds one entry to on one write in sixteen: when the
        # id's last character is one of them ("0": byte 48).
        for n, trimmed in ((21, False), (20, True)):
            await redis.delete(f"t{uid}:idx:fp:fp-lone")
            await seed("fp", "fp-lone")
            lone = made(n, 0).model_copy(update={"fingerprint": "fp-lone"})
            await store.settle_many([lone])
            assert ("old" not in await members("fp", "fp-lone")) is trimmed
    finally:
        await redis.aclose()
