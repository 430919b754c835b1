"""The Redis result store: records, episode leases, progress streams and indexes.

Keys (prefix ``p``, default ``hs:``):
- ``{p}inv:{id}``            the investigation record (JSON); the id is the episode key
- ``{p}lease:{id}``          which worker runs the episode now; expires unless renewed
- ``{p}ev:{id}``             progress events, a Redis stream whose entry ids are ``{seq}-0``
                             (none for a record that never ran: see ``replay``)
- ``{p}evseq:{id}``          the last sequence number given out
- ``{p}idx:{all|fp|alertname|ns|tenant|untenanted}[:{value}]``  sorted sets of ids scored by
  creation time
- ``{p}cancel``              pub/sub channel of ids whose investigation must stop
- ``{p}conv:{id}``           HolmesGPT's conversation of a completed investigation (JSON list),
  continued by chat follow-ups
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple, cast

from pydantic_core import to_json
from redis.asyncio import BlockingConnectionPool, Redis

from holmes_stream.schemas import InvestigationRecord, ProgressEvent, Status
from holmes_stream.schemas.investigations import (
    SCHEMA_VERSION,
    derived_events,
    never_ran,
    terminal_event,
)
from holmes_stream.settings import RedisSettings

# Sequence number and stream entry are written together so that a reader resuming from
# sequence N gets exactly the events after N, whichever worker wrote them.
# Events of any investigations, each numbered by its own counter: KEYS are (stream, counter)
# pairs, then published marks to set; ARGV the stream length cap, the TTL, the number of
# events, then one event per pair. Returns their seqs.
_APPEND_EVENTS = """
local seqs = {}
local n = tonumber(ARGV[3])
for i = 1, n do
  local stream, counter = KEYS[2 * i - 1], KEYS[2 * i]
  local seq = redis.call('INCR', counter)
  local event = string.gsub(ARGV[3 + i], '"seq":0', '"seq":' .. seq, 1)
  redis.call('XADD', stream, 'MAXLEN', '~', ARGV[1], seq .. '-0', 'e', event)
  redis.call('EXPIRE', stream, ARGV[2])
  redis.call('EXPIRE', counter, ARGV[2])
  seqs[i] = seq
end
for k = 2 * n + 1, #KEYS do
  redis.call('SET', KEYS[k], 1, 'EX', ARGV[2])
end
return seqs
"""

# Published marks of many outcomes: ARGV the TTL, the marks' key prefix, the ids as a JSON
# array. One argument, not a key each: the client packs every argument in Python, a
# microsecond each (a pipeline costs a command's packing each).
_MARK_PUBLISHED = """
local ttl, prefix = ARGV[1], ARGV[2]
for _, id in ipairs(cjson.decode(ARGV[3])) do
  redis.call('SET', prefix .. id, 1, 'EX', ttl)
end
"""

# A record and its index entries appear together or not at all (a crash between the two
# would leave a record that no listing shows). Returns the existing record, if there is one.
# Every index write also drops the entries created before ARGV[5] (``_index_cutoff``).
_CREATE_RECORD = """
local existing = redis.call('GET', KEYS[1])
if existing then
  return existing
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
for i = 2, #KEYS do
  redis.call('ZADD', KEYS[i], ARGV[3], ARGV[4])
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', '(' .. ARGV[5])
  redis.call('EXPIRE', KEYS[i], ARGV[2])
end
return false
"""

# Outcomes reached without running anything (stale, resolved before known): per outcome, the
# record and its index entries in one step, unless a record already exists. No resolution mark
# beside it: the mark is for a run's outcome to pick up a resolution noted while it ran
# (``_STORE_OUTCOME``), and this record is finished and carries its own; a resolved re-send sets
# one (``mark_resolved_many``). Its terminal event is not stored: it is the record's only event
# and derived from it on reading (``schemas.derived_events``), which spares Redis a stream and a
# counter per outcome, more than half of its work and memory here. Only where events of that id
# are stored already (a record gone before its stream) is it appended to them: an outcome comes
# without its event (most never need it; it would be most of the argument), and one whose id has a
# stream is left unstored, for the caller to settle again with its event. ARGV[1]: a JSON array of
# outcomes (one argument for the whole batch: packing hundreds of keys and arguments costs the
# client more than this costs Redis), ARGV[2] the TTL, ARGV[3] the stream length cap, ARGV[4] the
# key prefix: an outcome's own keys are made here from its id, as ``RecordStore._k`` makes them
# (``tests/test_store.py`` reads them back through the store), ARGV[5] the records' JSON one after
# the other, each outcome giving its size in bytes (not inside ARGV[1], where every quote of a
# record would be escaped, then unescaped by Lua), ARGV[6] the index cutoff (``_index_cutoff``).
# Index entries go in one ZADD per index (and chunk): the outcomes of a batch share most indexes.
# Returns per outcome {1, existing record, 1 if its result was published}, {0, the terminal
# event's seq} (1: derived), or {2}: not stored, its id has a stream and the outcome came without
# its event.
_SETTLE_NEW = """
local out, members, ttl, p = {}, {}, ARGV[2], ARGV[4]
local records, at = ARGV[5], 1
for n, o in ipairs(cjson.decode(ARGV[1])) do
  local id, from = o.id, at
  at = at + o.size
  local key, stream = p .. 'inv:' .. id, p .. 'ev:' .. id
  -- Most ids are new: one call tells, for both keys.
  local found = redis.call('EXISTS', key, stream)
  local existing = found > 0 and redis.call('GET', key)
  if existing then
    out[n] = {1, existing, redis.call('EXISTS', p .. 'pub:' .. id)}
  elseif found > 0 and not o.event then -- no record: its stream is what exists
    out[n] = {2}
  else
    redis.call('SET', key, string.sub(records, from, at - 1), 'EX', ttl)
    for _, index in ipairs(o.index_keys) do
      local m = members[index]
      if not m then
        m = {}
        members[index] = m
      end
      m[#m + 1] = o.score
      m[#m + 1] = id
    end
    local seq = 1
    if o.event then
      local counter = p .. 'evseq:' .. id
      seq = redis.call('INCR', counter)
      local event = string.gsub(o.event, '"seq":1', '"seq":' .. seq, 1)
      redis.call('XADD', stream, 'MAXLEN', '~', ARGV[3], seq .. '-0', 'e', event)
      redis.call('EXPIRE', stream, ttl)
      redis.call('EXPIRE', counter, ttl)
    end
    out[n] = {0, seq}
  end
end
for index, m in pairs(members) do
  for i = 1, #m, 1000 do
    redis.call('ZADD', index, unpack(m, i, math.min(i + 999, #m)))
  end
  -- One outcome's own index (its fingerprint's, usually new) is trimmed on one write in
  -- sixteen (by its id's last character): a call per outcome for nothing, most of the time.
  if #m > 2 or string.byte(m[2], -1) % 16 == 0 then
    redis.call('ZREMRANGEBYSCORE', index, '-inf', '(' .. ARGV[6])
  end
  redis.call('EXPIRE', index, ttl)
end
return out
"""

# A firing alert's first step: its record created unless the episode has one, and its lease
# taken unless that record is finished, with any stop request: one round trip, not four.
# Returns {existing record or false, 1 if the lease was taken, the stop reason or false,
# 1 if that record is finished and its result was published (ARGV[8] is its mark's key)}.
# ARGV[9]: the index cutoff (``_index_cutoff``).
_CLAIM = """
local existing = redis.call('GET', KEYS[1])
if not existing then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
  for i = 4, #KEYS do
    redis.call('ZADD', KEYS[i], ARGV[3], ARGV[4])
    redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', '(' .. ARGV[9])
    redis.call('EXPIRE', KEYS[i], ARGV[2])
  end
elseif string.find(ARGV[7], ',' .. cjson.decode(existing)['status'] .. ',', 1, true) then
  return {existing, 0, false, redis.call('EXISTS', ARGV[8])}
end
local leased = redis.call('SET', KEYS[2], ARGV[5], 'NX', 'PX', ARGV[6]) and 1 or 0
return {existing or false, leased, redis.call('GET', KEYS[3]), 0}
"""

# Renew or release a lease only while we still own it.
_RENEW_LEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
# An outcome in one step: the record, its conversation, and its run's lease given back (only if
# still ours). KEYS: record, lease, resolution mark, conversation. ARGV: the record, TTL, lease
# owner, conversation ('' none), the resolution the record carries ('' none). A mark that
# differs from what the record carries is returned instead ('' for none): the record must carry
# it (marks are set once, SET NX), so the caller stores it again with it.
_STORE_OUTCOME = """
local resolved = redis.call('GET', KEYS[3]) or ''
if resolved ~= ARGV[5] then
  return {resolved}
end
if ARGV[4] ~= '' then
  redis.call('SET', KEYS[4], ARGV[4], 'EX', ARGV[2])
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
if redis.call('GET', KEYS[2]) == ARGV[3] then
  redis.call('DEL', KEYS[2])
end
return false
"""
_RELEASE_LEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


_TERMINAL_STATUSES = "," + ",".join(str(s) for s in Status if s.terminal) + ","


@dataclass(frozen=True)
class Claim:
    record: InvestigationRecord  # as stored: the given one when created
    leased: bool
    stop_reason: str | None
    published: bool = False  # a finished record's result reached Kafka (``mark_published``)


class StoredEvent(NamedTuple):
    """An event as a script stored it: what publishing it needs, without a model to build."""

    investigation_id: str
    seq: int
    type: str
    text: str

    def model(self) -> ProgressEvent:
        event = ProgressEvent.model_validate_json(self.text)
        event.set_json(self.text)
        return event


class Settlement(NamedTuple):
    """What ``settle_many`` did with one outcome: the record it found, or the event it stored."""

    existing: InvestigationRecord | None
    event: StoredEvent | None
    # The outcome's record as stored (when ``event`` is not None): sent as it is.
    record_json: bytes
    published: bool = False  # of ``existing``: as ``Claim.published``


def _record_json(record: InvestigationRecord) -> bytes:
    """``record.model_dump_json()``, encoded: as pydantic writes it, before decoding it."""
    return _RECORD_SERIALIZER.to_json(record)


_RECORD_SERIALIZER = InvestigationRecord.__pydantic_serializer__


def _conversation_json(messages: list[dict[str, Any]]) -> bytes:
    # Tool outputs may hold values JSON has no type for: their text instead.
    return to_json(messages, fallback=str)


def _event_json(
    investigation_id: str, seq: int, type_: str, payload: dict[str, Any], at_json: str
) -> str:
    """A ProgressEvent's JSON as the model writes it (``at_json``: its ``at`` as JSON), without
    building the model: half the cost of ``to_json`` of the event as a dict, a fifth with an
    enum in the payload (``tests/test_store.py`` compares it with the model's)."""
    return (
        f'{{"schema_version":{SCHEMA_VERSION},"investigation_id":{to_json(investigation_id).decode()}'
        f',"seq":{seq},"type":"{type_}","payload":{to_json(payload).decode()},"at":{at_json}}}'
    )


def _numbered(draft: ProgressEvent, text: str, seq: int) -> ProgressEvent:
    """The draft as a script stored it: the first '"seq":0' (the seq field) numbered."""
    draft.seq = int(seq)
    draft.set_json(text.replace('"seq":0', f'"seq":{draft.seq}', 1))
    return draft


class RecordStore:
    def __init__(
        self,
        redis: Redis,
        prefix: str = "hs:",
        ttl_seconds: int = 7 * 86400,
        events_max_len: int = 2000,
    ) -> None:
        # redis-py annotates replies as unions of its sync and async results: typed loosely.
        self.redis: Any = redis
        self.prefix = prefix
        self.ttl = ttl_seconds
        self.events_max_len = events_max_len
        self._idx = self._k("idx", "")
        self._idx_all, self._idx_untenanted = self._k("idx", "all"), self._k("idx", "untenanted")
        self._append_many = redis.register_script(_APPEND_EVENTS)
        self._mark_many = redis.register_script(_MARK_PUBLISHED)
        self._renew = redis.register_script(_RENEW_LEASE)
        self._release = redis.register_script(_RELEASE_LEASE)
        self._store_outcome = redis.register_script(_STORE_OUTCOME)
        self._create = redis.register_script(_CREATE_RECORD)
        self._settle_new = redis.register_script(_SETTLE_NEW)
        self._claim = redis.register_script(_CLAIM)

    @classmethod
    def connect(
        cls, settings: RedisSettings, max_connections: int, pool_timeout: float
    ) -> RecordStore:
        """A store on its own pool; callers queue for a connection instead of failing."""
        pool = BlockingConnectionPool.from_url(
            settings.url,
            max_connections=max_connections,
            timeout=pool_timeout,
            socket_timeout=10,
            socket_connect_timeout=5,
        )
        return cls(
            Redis(connection_pool=pool),
            settings.key_prefix,
            settings.record_ttl_seconds,
            settings.events_max_len,
        )

    # -- keys -------------------------------------------------------------------------------
    def _k(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    @property
    def cancel_channel(self) -> str:
        return self._k("cancel")

    # -- records ----------------------------------------------------------------------------
    async def create(self, record: InvestigationRecord) -> tuple[InvestigationRecord, bool]:
        """Store ``record`` unless one exists for its id; return the stored one and whether new."""
        keys = [self._k("inv", record.id), *self._index_keys(record)]
        args = [
            record.model_dump_json(),
            self.ttl,
            record.created_at.timestamp(),
            record.id,
            self._index_cutoff(),
        ]
        existing = await self._create(keys=keys, args=cast(list[str | float], args))
        if existing is None:
            return record, True
        return InvestigationRecord.model_validate_json(existing), False

    async def claim(self, record: InvestigationRecord, owner: str, lease_seconds: float) -> Claim:
        """Store ``record`` unless its id has one; take the lease unless that one is finished."""
        i = record.id
        keys = [
            self._k("inv", i),
            self._k("lease", i),
            self._k("stop", i),
            *self._index_keys(record),
        ]
        args: list[str | float] = [
            record.model_dump_json(),
            self.ttl,
            record.created_at.timestamp(),
            i,
            owner,
            int(lease_seconds * 1000),
            _TERMINAL_STATUSES,
            self._k("pub", i),
            self._index_cutoff(),
        ]
        existing, leased, stop, published = await self._claim(keys=keys, args=args)
        stored = record if existing is None else InvestigationRecord.model_validate_json(existing)
        return Claim(
            record=stored,
            leased=bool(leased),
            stop_reason=None if stop is None else stop.decode(),
            published=bool(published),
        )

    async def settle_many(self, records: Sequence[InvestigationRecord]) -> list[Settlement]:
        """Store terminal records that never ran (``never_ran``) unless a record exists for
        their ids. One round trip for all of them (two if events of some id are stored).

        Each stored one comes back with its terminal event (as ``derived_events`` derives it,
        unless an older stream of its id numbers it further), for the progress topic.
        """
        outcomes: list[dict[str, Any]] = []
        events: list[StoredEvent] = []
        moments: dict[datetime, str] = {}  # a batch's records share their finish
        scores: dict[datetime, float] = {}  # and their creation
        bodies: list[bytes] = []
        for record in records:
            i = record.id
            created = record.created_at
            if (score := scores.get(created)) is None:
                score = scores[created] = created.timestamp()
            type_, payload = terminal_event(record)
            at = record.finished_at or created
            if (at_json := moments.get(at)) is None:
                at_json = moments[at] = to_json(at).decode()
            events.append(StoredEvent(i, 1, type_, _event_json(i, 1, type_, payload, at_json)))
            body = _record_json(record)
            bodies.append(body)
            outcomes.append(
                {
                    "id": i,
                    "size": len(body),
                    "index_keys": self._index_keys(record),
                    "score": score,
                }
            )
        replies = await self._settle(outcomes, bodies)
        # Left unstored: their ids have streams, to which their events are appended.
        again = [n for n, reply in enumerate(replies) if reply[0] == 2]
        if again:
            for n in again:
                outcomes[n]["event"] = events[n].text
            redone = await self._settle([outcomes[n] for n in again], [bodies[n] for n in again])
            for n, reply in zip(again, redone, strict=True):
                replies[n] = reply
        out: list[Settlement] = []
        for event, body, reply in zip(events, bodies, replies, strict=True):
            if reply[0] == 1:
                existing = InvestigationRecord.model_validate_json(reply[1])
                out.append(Settlement(existing, None, body, bool(reply[2])))
                continue
            seq = int(reply[1])
            if seq != 1:
                text = event.text.replace('"seq":1', f'"seq":{seq}', 1)
                event = event._replace(seq=seq, text=text)
            out.append(Settlement(None, event, body))
        return out

    async def _settle(self, outcomes: list[dict[str, Any]], bodies: list[bytes]) -> list[Any]:
        return cast(
            list[Any],
            await self._settle_new(
                args=[
                    to_json(outcomes),
                    self.ttl,
                    self.events_max_len,
                    self.prefix,
                    b"".join(bodies),
                    self._index_cutoff(),
                ]
            ),
        )

    async def get(self, investigation_id: str) -> InvestigationRecord | None:
        raw = await self.get_raw(investigation_id)
        return None if raw is None else InvestigationRecord.model_validate_json(raw)

    async def get_raw(self, investigation_id: str) -> bytes | None:
        """The record's JSON as stored."""
        raw: bytes | None = await self.redis.get(self._k("inv", investigation_id))
        return raw

    async def get_many(self, ids: Sequence[str]) -> list[InvestigationRecord]:
        if not ids:
            return []
        raws = await self.redis.mget([self._k("inv", i) for i in ids])
        return [InvestigationRecord.model_validate_json(r) for r in raws if r is not None]

    async def put(self, record: InvestigationRecord) -> None:
        await self.redis.set(self._k("inv", record.id), _record_json(record), ex=self.ttl)

    async def store_outcome(
        self,
        record: InvestigationRecord,
        conversation: list[dict[str, Any]] | None = None,
        release_lease_of: str | None = None,
    ) -> None:
        """Store a terminal ``record`` and its conversation, release ``release_lease_of``'s lease
        on it, and set its ``resolved_at`` to when its episode resolved (``mark_resolved``), if
        it did: one round trip unless the record learns of a resolution here."""
        i = record.id
        keys = [self._k("inv", i), self._k("lease", i), self._k("resolved", i), self._k("conv", i)]
        talk = _conversation_json(conversation) if conversation else b""
        while True:
            resolved = record.resolved_at.isoformat() if record.resolved_at else ""
            args: list[bytes | str | int] = [
                _record_json(record),
                self.ttl,
                release_lease_of or "",
                talk,
                resolved,
            ]
            reply = await self._store_outcome(keys=keys, args=args)
            if reply is None:
                return
            mark = reply[0].decode()
            record.resolved_at = datetime.fromisoformat(mark) if mark else None

    def _index_cutoff(self) -> int:
        """Index entries of records created before this (epoch seconds) are dropped whenever
        the index is written. Each write renews an index's expiry, so without it an index in
        use (all records, one alert name) would keep the entries of expired records forever.
        Two TTLs back: a record lives a TTL from its last write, which comes later than its
        creation (resolutions rewrite it), so one older than that is gone but for an episode
        rewritten more than a TTL after it began (still found by id, no longer listed). Batch
        settling trims an index it adds one entry to on one write in sixteen only."""
        return int(time.time()) - 2 * self.ttl

    def _index_keys(self, record: InvestigationRecord) -> list[str]:
        """Everything, per alert name, per namespace and per tenant (the listing reads them,
        ``http/investigations.py``), and per fingerprint (the investigation history tool
        reads it, ``engine/toolsets.py``)."""
        # As ``_k("idx", ...)`` makes them, without its call and join per key (batch settling
        # makes five per outcome).
        idx, alert, tenant = self._idx, record.alert, record.tenant
        keys = [self._idx_all, f"{idx}fp:{record.fingerprint}", f"{idx}alertname:{alert.alertname}"]
        if namespace := alert.namespace:
            keys.append(f"{idx}ns:{namespace}")
        keys.append(f"{idx}tenant:{tenant}" if tenant else self._idx_untenanted)
        return keys

    async def list_ids(
        self,
        index: tuple[str, ...] | None = None,
        *,
        before: float | None = None,
        after: float | None = None,
        limit: int = 50,
    ) -> list[tuple[str, float]]:
        """Ids newest first from one index, with their creation times (epoch seconds)."""
        key = self._k("idx", *index) if index else self._k("idx", "all")
        high: str | float = f"({before}" if before is not None else "+inf"
        low: str | float = after if after is not None else "-inf"
        rows = await self.redis.zrevrangebyscore(
            key, high, low, start=0, num=limit, withscores=True
        )
        return [(i.decode() if isinstance(i, bytes) else i, s) for i, s in rows]

    async def list_page(
        self,
        index: tuple[str, ...] | None,
        *,
        cursor: tuple[float, str] | None = None,
        since: float | None = None,
        until: float | None = None,
        batch: int = 50,
    ) -> list[tuple[str, float]]:
        """Up to ``batch`` ids newest first, strictly after ``cursor`` (score, id) in that order.

        Members of equal score come in reverse lexicographic order, so the cursor's id breaks
        ties and no record is skipped or repeated at a page boundary.
        """
        key = self._k("idx", *index) if index else self._k("idx", "all")
        high: float | str = "+inf" if until is None else until
        if cursor is not None and (until is None or cursor[0] <= until):
            high = cursor[0]
        low: float | str = "-inf" if since is None else since
        rows: list[tuple[str, float]] = []
        offset = 0
        while True:
            got: Any = await self.redis.zrevrangebyscore(
                key, high, low, start=offset, num=batch, withscores=True
            )
            for raw, score in got:
                member = raw.decode() if isinstance(raw, bytes) else raw
                if cursor is not None and score == cursor[0] and member >= cursor[1]:
                    continue
                rows.append((member, score))
            if rows or len(got) < batch:
                return rows
            offset += len(got)

    # -- leases -----------------------------------------------------------------------------
    async def acquire_lease(self, investigation_id: str, owner: str, seconds: float) -> bool:
        key = self._k("lease", investigation_id)
        return bool(await self.redis.set(key, owner, nx=True, px=int(seconds * 1000)))

    async def renew_lease(self, investigation_id: str, owner: str, seconds: float) -> bool:
        key = self._k("lease", investigation_id)
        return bool(await self._renew(keys=[key], args=[owner, int(seconds * 1000)]))

    async def release_lease(self, investigation_id: str, owner: str) -> None:
        await self._release(keys=[self._k("lease", investigation_id)], args=[owner])

    async def lease_holder(self, investigation_id: str) -> str | None:
        raw = await self.redis.get(self._k("lease", investigation_id))
        return raw.decode() if isinstance(raw, bytes) else raw

    # -- progress events --------------------------------------------------------------------
    async def append_event(
        self, investigation_id: str, type_: str, payload: dict[str, Any], at: datetime | None = None
    ) -> ProgressEvent:
        draft = ProgressEvent(
            investigation_id=investigation_id,
            seq=0,
            type=type_,  # checked by pydantic at run time
            payload=payload,
        )
        if at is not None:
            draft.at = at
        (event,) = await self.append_events([draft])
        return event

    async def append_events(
        self, drafts: Sequence[ProgressEvent], published: Sequence[str] = ()
    ) -> list[ProgressEvent]:
        """Append events of any investigations in one round trip, each at its stream's next seq;
        with ``published``, ``mark_published`` those ids in the same round trip.

        The drafts come back numbered, their JSON (as stored) already serialised.
        """
        keys: list[str] = []
        texts: list[str] = []
        for draft in drafts:
            i = draft.investigation_id
            keys += [self._k("ev", i), self._k("evseq", i)]
            texts.append(draft.model_dump_json())
        keys += [self._k("pub", i) for i in published]
        args: list[str | int] = [self.events_max_len, self.ttl, len(drafts), *texts]
        seqs = await self._append_many(keys=keys, args=args)
        return [_numbered(d, t, s) for d, t, s in zip(drafts, texts, seqs, strict=True)]

    async def mark_published(self, investigation_ids: Sequence[str]) -> None:
        """Note that these finished records' results are on Kafka: a redelivered alert of one
        without the mark publishes it again (the worker died between storing and publishing)."""
        if investigation_ids:
            ids = to_json(list(investigation_ids))
            await self._mark_many(args=[self.ttl, self._k("pub", ""), ids])

    async def is_published(self, investigation_id: str) -> bool:
        return bool(await self.redis.exists(self._k("pub", investigation_id)))

    async def events_after(self, investigation_id: str, seq: int) -> list[ProgressEvent]:
        """The stored events after ``seq`` (see ``replay`` for those of a record)."""
        rows = await self.redis.xrange(self._k("ev", investigation_id), min=f"({seq}-0", max="+")
        return [ProgressEvent.model_validate_json(fields[b"e"]) for _, fields in rows]

    async def replay(self, record: InvestigationRecord, seq: int) -> list[ProgressEvent]:
        """``record``'s events after ``seq``: those stored, or if it never ran and has none
        stored, the one derived from it (``settle_many`` stores none)."""
        events = await self.events_after(record.id, seq)
        if not events and seq < 1 and never_ran(record):
            return derived_events(record)
        return events

    async def wait_events(
        self, investigation_id: str, seq: int, block_ms: int
    ) -> list[ProgressEvent]:
        """Events after ``seq``, waiting up to ``block_ms`` for the first one to arrive."""
        result = await self.redis.xread(
            {self._k("ev", investigation_id): f"{seq}-0"}, block=block_ms, count=500
        )
        events: list[ProgressEvent] = []
        for _stream, rows in result or []:
            events.extend(ProgressEvent.model_validate_json(f[b"e"]) for _, f in rows)
        return events

    # -- stopping: resolution and cancellation ----------------------------------------------
    async def record_expiry(self, investigation_id: str) -> int:
        """Milliseconds until the record expires (Redis PTTL: -2 gone)."""
        return int(await self.redis.pttl(self._k("inv", investigation_id)))

    async def mark_resolved(self, investigation_id: str, at: datetime) -> datetime:
        """Remember when the episode resolved (first report wins); return that time."""
        key = self._k("resolved", investigation_id)
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(key, at.isoformat(), nx=True, ex=self.ttl)
        pipe.get(key)
        _, raw = await pipe.execute()
        return at if raw is None else datetime.fromisoformat(raw.decode())

    async def mark_resolved_many(
        self, marks: Sequence[tuple[str, datetime]]
    ) -> list[tuple[datetime, int, int]]:
        """``mark_resolved`` of many episodes in one round trip; for each, also when its record
        and its mark expire (milliseconds, as ``record_expiry``)."""
        pipe = self.redis.pipeline(transaction=False)
        for investigation_id, at in marks:
            key = self._k("resolved", investigation_id)
            pipe.set(key, at.isoformat(), nx=True, ex=self.ttl)
            pipe.get(key)
            pipe.pttl(self._k("inv", investigation_id))
            pipe.pttl(key)
        replies = await pipe.execute()
        out = []
        for n, (_, at) in enumerate(marks):
            raw, record_ms, resolved_ms = replies[4 * n + 1 : 4 * n + 4]
            first = at if raw is None else datetime.fromisoformat(raw.decode())
            out.append((first, int(record_ms), int(resolved_ms)))
        return out

    async def put_many(self, records: Sequence[InvestigationRecord]) -> list[bytes]:
        """Store records (none leased) in one round trip; returns their JSON as stored."""
        texts = [_record_json(record) for record in records]
        pipe = self.redis.pipeline(transaction=False)
        for record, text in zip(records, texts, strict=True):
            pipe.set(self._k("inv", record.id), text, ex=self.ttl)
        await pipe.execute()
        return texts

    async def request_stop(self, investigation_id: str, reason: str) -> None:
        """Ask whichever worker runs the investigation to stop it, now or when it starts."""
        await self.redis.set(self._k("stop", investigation_id), reason, nx=True, ex=self.ttl)
        await self.redis.publish(self.cancel_channel, investigation_id)

    async def stop_reason(self, investigation_id: str) -> str | None:
        raw = await self.redis.get(self._k("stop", investigation_id))
        return None if raw is None else raw.decode()

    async def cancel_requests(self) -> AsyncIterator[str]:
        pubsub = self.redis.pubsub()
        await pubsub.subscribe(self.cancel_channel)
        try:
            async for message in pubsub.listen():
                if message.get("type") == "message":
                    data = message["data"]
                    yield data.decode() if isinstance(data, bytes) else data
        finally:
            await pubsub.aclose()

    # -- chat follow-ups --------------------------------------------------------------------
    async def put_conversation(self, investigation_id: str, messages: list[dict[str, Any]]) -> None:
        """HolmesGPT's conversation of a finished investigation (no system prompt), for chat."""
        key = self._k("conv", investigation_id)
        await self.redis.set(key, _conversation_json(messages), ex=self.ttl)

    async def get_conversation(self, investigation_id: str) -> list[dict[str, Any]] | None:
        raw = await self.redis.get(self._k("conv", investigation_id))
        if raw is None:
            return None
        value = json.loads(raw)
        return value if isinstance(value, list) else None

    async def ping(self) -> bool:
        return bool(await self.redis.ping())
