"""The service layer: every alert, from Kafka or from HTTP, is handled here.

An investigation's id is its firing episode (tenant, alert identity, ``startsAt``), so every
re-send of an episode lands on the same record; a lease in Redis makes sure that only one
worker at a time runs its LLM loop, and a crashed worker's lease simply expires.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, NamedTuple, TypeVar

from aiokafka.errors import KafkaError
from redis.exceptions import RedisError

from holmes_stream import logcontext, metrics, telemetry
from holmes_stream.budgets import BudgetExceeded, Budgets, SyncBudgetGuard
from holmes_stream.engine.base import (
    Engine,
    EngineCancelled,
    EngineRequest,
    PermanentEngineError,
    StepGate,
    TransientEngineError,
)
from holmes_stream.enrichment import Enricher
from holmes_stream.intake import AlertWork
from holmes_stream.producers.kafka import DeadLetter, KafkaProducers
from holmes_stream.progress import ProgressWriter
from holmes_stream.redaction import Redactor
from holmes_stream.schemas import (
    Alert,
    InvestigationRecord,
    InvestigationResult,
    ProgressEvent,
    Status,
)
from holmes_stream.schemas.investigations import (
    SCHEMA_VERSION,
    construct,
    terminal_event,
    utcnow,
)
from holmes_stream.settings import WorkerSettings
from holmes_stream.store import Claim, RecordStore, StoredEvent

log = logging.getLogger(__name__)
T = TypeVar("T")

# Failures of our own infrastructure that pass: retried, never turned into an outcome.
TRANSIENT_IO: tuple[type[BaseException], ...] = (
    RedisError,
    KafkaError,
    ConnectionError,
    TimeoutError,
)


# How often a duplicate checks whether the worker holding its episode has finished.
_LEASE_POLL_SECONDS = 0.25

# Episodes this process has seen finished, kept to answer their re-sends without Redis.
_SETTLED_CACHE_SIZE = 100_000
_UNKNOWN_EPISODE_RESOLVED = "resolved: no firing investigation of this episode was known"


class SettledEpisodes:
    """A bounded LRU of episode ids whose record is terminal, each valid until its key expires.

    A terminal record never changes status again, so a firing re-send of a remembered episode
    is a duplicate exactly as ``handle`` would find in Redis; entries lapse no later than the
    record's own key (its TTL is read when the entry is made; writes only ever extend it). An
    episode also remembered as resolved answers resolved re-sends, which change nothing either.
    """

    def __init__(self, size: int = _SETTLED_CACHE_SIZE) -> None:
        self._size = size
        # id -> (record valid until, resolution noted until or 0.0), time.monotonic() clock.
        # An OrderedDict, not a dict: evicting a plain dict's first key scans the holes its
        # earlier evictions left (measured 1.4 µs per entry below the size, 150 µs per entry
        # at three times the size); ``popitem(last=False)`` unlinks it at once.
        self._entries: collections.OrderedDict[str, tuple[float, float]] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def remember(self, investigation_id: str, record_ms: int, resolved_ms: int | None) -> None:
        if record_ms <= 0:  # no expiry (-1) would be unusual; gone (-2): nothing to remember
            return
        now = time.monotonic()
        resolved_until = now + resolved_ms / 1000 if resolved_ms and resolved_ms > 0 else 0.0
        entries = self._entries
        entries.pop(investigation_id, None)
        record_until = now + record_ms / 1000
        entries[investigation_id] = (record_until, min(resolved_until, record_until))
        if len(entries) > self._size:
            entries.popitem(last=False)

    def remember_stored(self, stored: Iterable[tuple[str, bool]], ttl_ms: int) -> None:
        """``remember(id, ttl_ms, ttl_ms if resolved else None)`` of each (id, resolved): records
        stored together with one expiry, remembered with one reading of the clock."""
        if ttl_ms <= 0:
            return
        until = time.monotonic() + ttl_ms / 1000
        entries = self._entries
        for investigation_id, resolved in stored:
            entries.pop(investigation_id, None)
            entries[investigation_id] = (until, until if resolved else 0.0)
        while len(entries) > self._size:
            entries.popitem(last=False)

    def lookup(self, investigation_id: str, resolved: bool) -> bool:
        entry = self._entries.get(investigation_id)
        if entry is None:
            return False
        now = time.monotonic()
        if entry[0] <= now:
            del self._entries[investigation_id]
            return False
        return not resolved or entry[1] > now


class Found(NamedTuple):
    """The record of an alert's episode, found where ``settle_many`` would have stored one."""

    record: InvestigationRecord
    published: bool  # finished, and its result is on Kafka


class Outcome(StrEnum):
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"
    DUPLICATE = "duplicate"
    DEAD_LETTERED = "dead_lettered"
    BUDGET_EXCEEDED = "budget_exceeded"
    RESOLVED_NOTED = "resolved_noted"


_STATUS_OUTCOME = {
    Status.COMPLETED: Outcome.COMPLETED,
    Status.FAILED: Outcome.FAILED,
    Status.CANCELLED: Outcome.CANCELLED,
    Status.SKIPPED: Outcome.SKIPPED,
    Status.DEAD_LETTERED: Outcome.DEAD_LETTERED,
    Status.BUDGET_EXCEEDED: Outcome.BUDGET_EXCEEDED,
}


@dataclass(slots=True)
class Source:
    """Where a unit of work came from; kept for dead letters and the record. Not changed once
    made (not frozen: a frozen dataclass's construction costs three times as much, once per
    message)."""

    topic: str
    partition: int | None = None
    offset: int | None = None
    timestamp_ms: int | None = None
    key: bytes | None = None
    value: bytes | None = None
    first_seen_ms: int = 0

    def describe(self) -> dict[str, Any]:
        described = {"topic": self.topic, "partition": self.partition, "offset": self.offset}
        trace_id = telemetry.current_trace_id()  # None unless tracing is on
        if trace_id is not None:
            described["trace_id"] = trace_id
        return described


@dataclass
class Extras:
    """Optional collaborators of an investigation: each one off when absent."""

    enricher: Enricher | None = None
    budgets: Budgets | None = None
    budget_guard: SyncBudgetGuard | None = None
    redactor: Redactor | None = None


@dataclass(frozen=True)
class Submission:
    id: str
    status: Status
    duplicate: bool


def _about(work: AlertWork) -> contextlib.AbstractContextManager[dict[str, Any]]:
    """Every log line on the way, HolmesGPT's in its threads too, says which alert it is about."""
    return logcontext.bind(
        investigation_id=work.investigation_id,
        fingerprint=work.alert.identity(),
        tenant=work.tenant,
    )


def backoff(attempt: int, base: float, cap: float) -> float:
    """Exponential backoff with full jitter."""
    return random.uniform(0, min(cap, base * 2 ** max(0, attempt - 1)))


class EventPump:
    """Carries progress events from the engine's thread, in order, to the process's writer."""

    def __init__(self, service: InvestigationService, record: InvestigationRecord) -> None:
        self._service = service
        self._record = record
        self._loop = asyncio.get_running_loop()
        self._last: asyncio.Future[ProgressEvent] | None = None

    def emit_threadsafe(self, type_: str, payload: dict[str, Any]) -> None:
        self._loop.call_soon_threadsafe(self._write, type_, payload)

    def _write(self, type_: str, payload: dict[str, Any]) -> None:
        # What the engine reports was built from redacted input and redacted tool output.
        written = self._service.write_event(
            self._record, type_, payload, redact=not self._service._engine_redacts
        )
        written.add_done_callback(self._written)
        self._last = written

    def _written(self, written: asyncio.Future[ProgressEvent]) -> None:
        if not written.cancelled() and written.exception() is not None:
            log.warning("progress event lost", extra={"investigation_id": self._record.id})

    async def close(self) -> None:
        """Returns once every event emitted so far is written (or lost, and logged)."""
        # The engine's thread queued its last event before its result reached this loop.
        if self._last is not None:
            await asyncio.wait([self._last])


class BudgetMeter:
    """Charges each LLM call to the tenant's budget on the agent loop's thread, between steps.

    HolmesGPT reports cumulative usage in every ``token_count`` event; when the budget runs out
    the gate says no, so the loop stops before its next LLM call, and the attempt is cancelled.
    """

    def __init__(
        self, guard: SyncBudgetGuard | None, tenant: str | None, cancel: threading.Event
    ) -> None:
        self.guard, self.tenant, self.cancel = guard, tenant, cancel
        self.tokens = 0
        self.cost = 0.0
        self.exceeded: str | None = None

    def gate(self, event: str, data: dict[str, Any]) -> bool:
        if self.guard is None or event != "token_count":
            return True
        costs = (data.get("metadata") or {}).get("costs") or {}
        tokens = int(costs.get("total_tokens") or 0)
        cost = float(costs.get("total_cost") or 0.0)
        try:
            state = self.guard.charge(self.tenant, tokens - self.tokens, cost - self.cost)
        except TRANSIENT_IO as exc:  # budgets fail open: Redis away must not stop the work
            log.warning("budget charge failed: %s", exc)
            return True
        self.tokens, self.cost = tokens, cost
        if state.exceeded:
            self.exceeded = state.reason or "budget exceeded"
            self.cancel.set()
            return False
        return True


class InvestigationService:
    def __init__(
        self,
        store: RecordStore,
        producers: KafkaProducers,
        settings: WorkerSettings,
        engine: Engine | None = None,
        executor: ThreadPoolExecutor | None = None,
        extras: Extras | None = None,
    ) -> None:
        self.store = store
        self.producers = producers
        self.settings = settings
        self.engine = engine
        self.executor = executor
        self.extras = extras or Extras()
        self.worker_id = uuid.uuid4().hex[:12]
        self.stopping = False
        self._running: dict[str, threading.Event] = {}
        self.settled = SettledEpisodes()
        self.progress = ProgressWriter(store, producers)
        # Investigation id -> owner of the lease this process holds on it.
        self._leases: dict[str, str] = {}
        # Settled outcomes on Kafka, to be marked published (see _publish_settled).
        self._unmarked: list[str] = []
        self._marker: asyncio.Task[None] | None = None

    # ---------------------------------------------------------------- submission (API side)
    async def submit(self, works: list[AlertWork]) -> list[Submission]:
        """Accept work for the workers: published to the alerts topic unless already known."""
        out = []
        for work in works:
            existing = await self.store.get(work.investigation_id)
            if existing is not None:
                metrics.DEDUP_HITS.labels("api").inc()
                out.append(Submission(existing.id, existing.status, True))
                continue
            body = work.to_request().model_dump_json().encode()
            await self.producers.publish_alert(body, key=work.alert.identity(), tenant=work.tenant)
            # Created only after Kafka took the message, so a queued record always has one.
            record, created = await self.store.create(self._new_record(work, Source("api")))
            out.append(Submission(record.id, record.status, not created))
        return out

    async def cancel(self, investigation_id: str, reason: str = "cancelled by request") -> None:
        await self.store.request_stop(investigation_id, reason)

    # ---------------------------------------------------------------- handling (worker side)
    def settled_outcome(self, work: AlertWork, *, count: bool = True) -> Outcome | None:
        """The outcome of a re-send of an episode known here to be finished, without any I/O.

        ``None``: not known, ``handle`` must look. The same outcome ``handle`` would reach;
        ``count=False`` leaves the dedup metric to the caller.
        """
        if work.alert.status == "resolved":
            if self.settled.lookup(work.investigation_id, resolved=True):
                return Outcome.RESOLVED_NOTED
            return None
        if self.settled.lookup(work.investigation_id, resolved=False):
            if count:
                metrics.DEDUP_HITS.labels("kafka").inc()
            return Outcome.DUPLICATE
        return None

    async def handle(self, work: AlertWork, source: Source) -> Outcome:
        """Bring one alert to an outcome. Idempotent: safe to call again for the same alert."""
        settled = self.settled_outcome(work)
        if settled is not None:
            return settled
        with _about(work):
            return await self._handle(work, source)

    async def _handle(self, work: AlertWork, source: Source) -> Outcome:
        if self.settles_without_run(work, source):
            (found,) = await self.settle_many([(work, source)])
            if found is None:
                return Outcome.SKIPPED
            return await self._after_settle(found, work, source)
        owner = f"{self.worker_id}:{uuid.uuid4().hex[:8]}"
        lease = self.settings.claim_lease_seconds
        claim = await self.store.claim(self._new_record(work, source), owner, lease)
        if claim.record.status.terminal:
            return await self._duplicate(claim.record, claim.published)
        return await self._run_exclusively(claim, owner, work, source)

    async def resume_settled(self, found: Found, work: AlertWork, source: Source) -> Outcome:
        """``handle`` for an alert whose episode ``settle_many`` found: from where it stopped."""
        with _about(work):
            return await self._after_settle(found, work, source)

    async def _after_settle(self, found: Found, work: AlertWork, source: Source) -> Outcome:
        existing = found.record
        if work.alert.status == "resolved":
            return await self._on_resolved(existing, work, found.published)
        if existing.status.terminal:
            return await self._duplicate(existing, found.published)
        return await self._close_stale(existing, work, source)

    async def _close_stale(
        self, existing: InvestigationRecord, work: AlertWork, source: Source
    ) -> Outcome:
        """A stale alert of an unfinished episode: skipped, unless a worker runs it (its run
        decides). Closed under the episode's lease, so no run starts meanwhile."""
        owner = f"{self.worker_id}:{uuid.uuid4().hex[:8]}"
        if not await self.store.acquire_lease(
            existing.id, owner, self.settings.claim_lease_seconds
        ):
            metrics.DEDUP_HITS.labels("lease").inc()
            return Outcome.DUPLICATE
        self._leases[existing.id] = owner  # given back by the outcome's write
        try:
            current = await self.store.get(existing.id)  # it may have finished meanwhile
            if current is None or current.status.terminal:
                metrics.DEDUP_HITS.labels("lease").inc()
                return Outcome.DUPLICATE
            stale = self._staleness(work, source) or "stale"
            return await self._finish(current, Status.SKIPPED, reason=stale)
        finally:
            if self._leases.pop(existing.id, None) is not None:
                await self.store.release_lease(existing.id, owner)

    def settles_without_run(self, work: AlertWork, source: Source) -> bool:
        """Resolved or stale: an outcome reached without the LLM."""
        if work.alert.status == "resolved":
            return True
        return self._stale_moment(work, source, self._horizon()) is not None

    async def settle_many(self, items: Sequence[tuple[AlertWork, Source]]) -> list[Found | None]:
        """Settle alerts that need no run (resolved, stale) of episodes not known yet, together.

        One Redis round trip stores every record (its terminal event is derived from it), then
        their results and terminal events go to Kafka together. Per item: the episode's
        existing record, for ``handle`` to take on, or None when the item is settled (skipped).
        """
        now = utcnow()
        horizon = self._horizon(now.timestamp())
        records: list[InvestigationRecord] = []
        for work, source in items:
            alert = work.alert
            reason: str | None
            if alert.status == "resolved":
                resolved_at, reason = alert.endsAt or now, _UNKNOWN_EPISODE_RESOLVED
            else:
                resolved_at, reason = None, self._staleness(work, source, horizon)
            records.append(
                self._new_record(
                    work,
                    source,
                    status=Status.SKIPPED,
                    reason=reason,
                    created_at=now,
                    finished_at=now,
                    resolved_at=resolved_at,
                )
            )
        replies = await self.store.settle_many(records)
        settled = [
            (record, settled.record_json, settled.event)
            for record, settled in zip(records, replies, strict=True)
            if settled.event is not None
        ]
        if settled:
            await self._durably(lambda: self._publish_settled(settled))
            metrics.ALERTS_PROCESSED.labels(Outcome.SKIPPED).inc(len(settled))
            self.settled.remember_stored(
                ((record.id, record.resolved_at is not None) for record, _, _ in settled),
                self.store.ttl * 1000,
            )
        return [None if s.existing is None else Found(s.existing, s.published) for s in replies]

    async def _publish_settled(
        self, settled: Sequence[tuple[InvestigationRecord, bytes, StoredEvent | None]]
    ) -> None:
        await self.producers.publish_outcomes(settled)
        # Marked later, not awaited: committing the offsets needs only the results on Kafka. A
        # mark lost to a crash costs a repeated result when the alert comes again, never a
        # missing one.
        self._unmarked += [record.id for record, _, _ in settled]
        if self._marker is None or self._marker.done():
            self._marker = asyncio.create_task(self._mark_published())

    async def _mark_published(self) -> None:
        while self._unmarked:
            ids, self._unmarked = self._unmarked, []
            try:
                await self.store.mark_published(ids)
            except Exception as exc:  # best effort (see above), e.g. Redis gone at shutdown
                log.warning("%d outcomes not marked published: %s", len(ids), exc)

    async def _duplicate(self, record: InvestigationRecord, published: bool) -> Outcome:
        metrics.DEDUP_HITS.labels("kafka").inc()
        if not published:
            await self._republish(record)
        self.settled.remember(record.id, await self.store.record_expiry(record.id), None)
        return Outcome.DUPLICATE

    async def _republish(self, record: InvestigationRecord) -> None:
        """A finished record whose result Kafka never had (its worker died between storing and
        publishing it: the message came back): its result and terminal event, now."""
        log.info("publishing a stored outcome whose worker stopped before Kafka had it")

        async def publish() -> None:
            await self.producers.publish_result(record)
            await self.write_event(record, *terminal_event(record), published=True)

        await self._durably(publish)

    def _new_record(
        self, work: AlertWork, source: Source, status: Status = Status.QUEUED, **fields: Any
    ) -> InvestigationRecord:
        # Every part is validated already (the alert, our own values): built without a second
        # validation, which costs as much as the rest of settling an alert that needs no LLM.
        created_at = fields.pop("created_at", None) or utcnow()
        values = {
            "schema_version": SCHEMA_VERSION,
            "id": work.investigation_id,
            "episode_key": work.episode_key,
            "fingerprint": work.alert.identity(),
            "tenant": work.tenant,
            "status": status,
            "reason": None,
            "alert": self._redacted(work.alert),
            "question": work.question,
            "created_at": created_at,
            "started_at": None,
            "finished_at": None,
            "resolved_at": None,
            "attempts": 0,
            "result": None,
            "error": None,
            "enrichment": {},
            "source": source.describe(),
        }
        values.update(fields)
        return construct(InvestigationRecord, values)

    def _redacted(self, alert: Alert) -> Alert:
        """The alert as it may be stored and shown to the LLM: secrets in it replaced."""
        redactor = self.extras.redactor
        if redactor is None:
            return alert
        # Most alerts hold no secret: then the alert itself is what may be stored and shown.
        # Its text fields tell (by their names too: a configured secret key). Timestamps are
        # validated datetimes and the status one of two words, no place for a secret; the
        # fingerprint is the alert's identity, which the record and the Kafka headers carry
        # as it is anyway.
        url = alert.generatorURL
        if (
            not alert.model_extra
            and redactor.keeps(alert.labels)
            and redactor.keeps(alert.annotations)
            and (not url or redactor.keeps({"generatorURL": url}))
        ):
            return alert
        plain = alert.model_dump(mode="json")
        redacted = redactor.redact_obj(plain)
        redacted["fingerprint"] = plain["fingerprint"]
        return alert if redacted == plain else Alert.model_validate(redacted)

    def _staleness(
        self, work: AlertWork, source: Source, horizon: float | None = None
    ) -> str | None:
        """Why the alert is stale (None: it is not). ``horizon``: as ``_horizon`` gives it."""
        moment = self._stale_moment(work, source, self._horizon() if horizon is None else horizon)
        if moment is None:
            return None
        if isinstance(moment, datetime):
            return f"stale: started firing at {moment.isoformat()}, before the window"
        produced = datetime.fromtimestamp(moment / 1000, UTC)
        return f"stale: reached Kafka at {produced.isoformat()}, before the window"

    def _horizon(self, now: float | None = None) -> float:
        """The start of the staleness window, in epoch seconds (``now``: time.time())."""
        return (time.time() if now is None else now) - self.settings.stale_after_seconds

    def _stale_moment(
        self, work: AlertWork, source: Source, horizon: float
    ) -> datetime | int | None:
        """The alert's start, or when it reached Kafka (ms), if before ``horizon``. Compared as
        timestamps: the reason's words are made only where they are kept (``_staleness``)."""
        started = work.alert.startsAt
        if started.timestamp() < horizon:
            return started
        produced_ms = source.timestamp_ms
        if produced_ms is not None and produced_ms < horizon * 1000:
            return produced_ms
        return None

    async def note_resolutions(self, items: Sequence[tuple[Found, AlertWork]]) -> None:
        """``_on_resolved`` of resolved alerts of finished episodes, together: one round trip
        notes them, and the records that gain a resolution (or were never published) are
        published together."""
        now = utcnow()
        marks = await self.store.mark_resolved_many(
            [(found.record.id, work.alert.endsAt or now) for found, work in items]
        )
        changed = []
        ttl_ms = self.store.ttl * 1000
        for (found, _), (resolved_at, record_ms, resolved_ms) in zip(items, marks, strict=True):
            stored = found.record
            if stored.resolved_at is None or not found.published:
                stored.resolved_at = stored.resolved_at or resolved_at
                changed.append((stored, resolved_ms))
            else:
                self.settled.remember(stored.id, record_ms, resolved_ms)
        if changed:
            await self._durably(lambda: self._publish_outcomes([r for r, _ in changed]))
            for stored, resolved_ms in changed:  # put: the record's key lives a full TTL again
                self.settled.remember(stored.id, ttl_ms, resolved_ms)

    async def _on_resolved(
        self, stored: InvestigationRecord, work: AlertWork, published: bool
    ) -> Outcome:
        """A resolved alert of a known episode: noted on its record, its run asked to stop."""
        if stored.status.terminal:
            await self.note_resolutions([(Found(stored, published), work)])
            return Outcome.RESOLVED_NOTED
        resolved_at = await self.store.mark_resolved(stored.id, work.alert.endsAt or utcnow())
        if self.settings.cancel_on_resolve:
            await self.store.request_stop(stored.id, f"alert resolved at {resolved_at.isoformat()}")
        return Outcome.RESOLVED_NOTED

    async def _run_exclusively(
        self, claim: Claim, owner: str, work: AlertWork, source: Source
    ) -> Outcome:
        record, stop = claim.record, claim.stop_reason
        lease = self.settings.claim_lease_seconds
        if not claim.leased:
            while not await self.store.acquire_lease(record.id, owner, lease):
                # Another worker runs this episode: wait for its outcome, or its lease to lapse.
                current = await self.store.get(record.id)
                if current is not None and current.status.terminal:
                    metrics.DEDUP_HITS.labels("lease").inc()
                    return Outcome.DUPLICATE
                await asyncio.sleep(_LEASE_POLL_SECONDS)
        keeper = asyncio.create_task(self._keep_lease(record.id, owner, lease))
        # The outcome's write gives the lease back with it (see _publish_outcome).
        self._leases[record.id] = owner
        try:
            if not claim.leased:
                # The holder before us may have finished it in the meantime.
                current = await self.store.get(record.id)
                if current is None or current.status.terminal:
                    metrics.DEDUP_HITS.labels("lease").inc()
                    return Outcome.DUPLICATE
                record, stop = current, await self._stop_reason(record.id)
            return await self._investigate(record, work, source, stop)
        finally:
            keeper.cancel()
            if self._leases.pop(record.id, None) is not None:
                await self.store.release_lease(record.id, owner)

    async def _keep_lease(self, investigation_id: str, owner: str, seconds: float) -> None:
        while True:
            await asyncio.sleep(seconds / 3)
            try:
                await self.store.renew_lease(investigation_id, owner, seconds)
            except TRANSIENT_IO:
                log.warning("lease renewal failed", extra={"investigation_id": investigation_id})

    async def _investigate(
        self, record: InvestigationRecord, work: AlertWork, source: Source, stop: str | None
    ) -> Outcome:
        """Run the episode, whose lease we hold; ``stop``: its stop request, just read."""
        if self.engine is None:
            raise RuntimeError("this process has no investigation engine (API only)")
        budgets = self.extras.budgets
        if budgets is not None:
            try:
                await budgets.check(work.tenant)
            except BudgetExceeded as exc:
                metrics.BUDGET_EXCEEDED.labels(work.tenant or "default").inc()
                return await self._finish(record, Status.BUDGET_EXCEEDED, reason=str(exc))
        context = await self._enrich(record, work)
        cancel = threading.Event()
        self._running[record.id] = cancel
        try:
            # Enrichment takes a while: a stop may have come since the claim read it.
            checked = self.extras.enricher is None
            while True:
                if not checked:  # a retry: a stop may have come during the last attempt
                    stop = await self._stop_reason(record.id)
                checked = False
                if stop is not None:
                    return await self._finish(record, Status.CANCELLED, reason=stop)
                record.status = Status.RUNNING
                record.started_at = record.started_at or utcnow()
                record.attempts += 1
                await self.store.put(record)
                await self.emit(record, "started", {"attempt": record.attempts})
                outcome = await self._attempt(record, work, cancel, context)
                if outcome is not None:
                    return outcome
                delay = backoff(
                    record.attempts,
                    self.settings.retry_base_seconds,
                    self.settings.retry_max_seconds,
                )
                await asyncio.sleep(delay)
                if record.attempts >= self.settings.max_attempts:
                    return await self._dead_letter(record, source)
        finally:
            self._running.pop(record.id, None)

    async def _enrich(self, record: InvestigationRecord, work: AlertWork) -> dict[str, Any]:
        """Context for the prompt; every source optional, failures recorded and never fatal."""
        enricher = self.extras.enricher
        if enricher is None:
            return {}
        enrichment = await enricher.enrich(work.alert)
        record.enrichment = dict(enrichment.sources)
        await self.emit(
            record,
            "enrichment",
            {"sources": enrichment.sources, "elapsed_seconds": enrichment.elapsed_seconds},
        )
        return enrichment.context

    def _engine_request(
        self,
        record: InvestigationRecord,
        work: AlertWork,
        context: dict[str, Any],
        gate: StepGate | None = None,
    ) -> EngineRequest:
        question = work.question
        if self.extras.redactor is not None and question:
            question = self.extras.redactor.redact_text(question)
        return EngineRequest(
            investigation_id=record.id,
            alert=record.alert,  # redacted when the record was made
            question=question,
            model=work.model,
            toolsets=work.toolsets,
            tenant=work.tenant,
            context=context,
            step_gate=gate,
        )

    async def _attempt(
        self,
        record: InvestigationRecord,
        work: AlertWork,
        cancel: threading.Event,
        context: dict[str, Any],
    ) -> Outcome | None:
        """Run the agent loop once. ``None`` means: a transient failure, try again."""
        assert self.engine is not None
        meter = BudgetMeter(self.extras.budget_guard, work.tenant, cancel)
        request = self._engine_request(record, work, context, meter.gate)
        pump = EventPump(self, record)
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        metrics.IN_FLIGHT.inc()
        try:
            # In a copy of this context: the log context and the trace reach the engine's thread.
            result = await loop.run_in_executor(
                self.executor,
                logcontext.in_context(self.engine.investigate),
                request,
                pump.emit_threadsafe,
                cancel,
            )
        except TransientEngineError as exc:
            record.error = f"{type(exc).__name__}: {exc}"
            metrics.RETRIES.labels("llm").inc()
            await pump.close()
            await self.emit(record, "retry", {"attempt": record.attempts, "error": record.error})
            return None
        except EngineCancelled:
            await pump.close()
            if meter.exceeded is not None:
                metrics.BUDGET_EXCEEDED.labels(work.tenant or "default").inc()
                return await self._finish(record, Status.BUDGET_EXCEEDED, reason=meter.exceeded)
            reason = await self._stop_reason(record.id)
            if reason is None and self.stopping:
                # Interrupted by our own shutdown, not by a user: leave it for redelivery.
                raise asyncio.CancelledError from None
            return await self._finish(record, Status.CANCELLED, reason=reason or "cancelled")
        except PermanentEngineError as exc:
            await pump.close()
            return await self._finish(record, Status.FAILED, error=f"{type(exc).__name__}: {exc}")
        finally:
            metrics.IN_FLIGHT.dec()
            metrics.ENGINE_RUN_DURATION.labels("attempt").observe(time.perf_counter() - started)
        await pump.close()
        self._account(result, work.tenant)
        redactor = self.extras.redactor
        if redactor is not None:
            if self._engine_redacts:
                # Tool output was redacted before the LLM saw it, and the prompt was built from
                # redacted input: only the model's own words are checked once more.
                result.analysis = redactor.redact_text(result.analysis)
            else:
                conversation = result.conversation
                result = InvestigationResult.model_validate(
                    redactor.redact_obj(result.model_dump(mode="json"))
                ).with_conversation(redactor.redact_obj(conversation) if conversation else None)
        return await self._finish(record, Status.COMPLETED, result=result)

    @property
    def _engine_redacts(self) -> bool:
        return bool(getattr(self.engine, "redacts_tool_output", False))

    def _account(self, result: InvestigationResult, tenant: str | None) -> None:
        t = tenant or "default"
        metrics.LLM_TOKENS.labels(result.model, t, "prompt").inc(result.prompt_tokens)
        metrics.LLM_TOKENS.labels(result.model, t, "completion").inc(result.completion_tokens)
        metrics.LLM_COST.labels(result.model, t).inc(result.cost)

    async def _stop_reason(self, investigation_id: str) -> str | None:
        return await self.store.stop_reason(investigation_id)

    def stop_running(self, investigation_id: str) -> None:
        """Called when a cancel request arrives: stops the local run, if any."""
        event = self._running.get(investigation_id)
        if event is not None:
            event.set()

    def cancel_all_running(self) -> None:
        for event in self._running.values():
            event.set()

    async def _dead_letter(self, record: InvestigationRecord, source: Source) -> Outcome:
        letter = DeadLetter(
            value=source.value,
            key=source.key,
            reason="retries_exhausted",
            message=record.error or "transient failures",
            attempts=record.attempts,
            source_topic=source.topic,
            source_partition=source.partition,
            source_offset=source.offset,
            first_seen_ms=source.first_seen_ms,
        )
        await self._durably(lambda: self.producers.publish_dead_letter(letter))
        metrics.DEAD_LETTERS.labels("retries_exhausted").inc()
        return await self._finish(
            record, Status.DEAD_LETTERED, reason=f"gave up after {record.attempts} attempts"
        )

    async def _finish(
        self,
        record: InvestigationRecord,
        status: Status,
        *,
        reason: str | None = None,
        error: str | None = None,
        result: InvestigationResult | None = None,
    ) -> Outcome:
        """Make the outcome durable: record in Redis, result on Kafka, terminal event last."""
        record.status, record.finished_at = status, utcnow()
        record.reason = reason
        if error is not None or status is Status.COMPLETED:
            record.error = error
        record.result = result
        # The conversation goes with the record, before the terminal event: a chat follow-up
        # may come right after.
        conversation = result.conversation if result is not None else None
        await self._durably(lambda: self._publish_outcome(record, conversation))
        outcome = _STATUS_OUTCOME[status]
        metrics.ALERTS_PROCESSED.labels(outcome).inc()
        if record.started_at is not None:
            elapsed = (record.finished_at - record.started_at).total_seconds()
            metrics.INVESTIGATION_DURATION.labels(outcome).observe(elapsed)
        return outcome

    async def _publish_outcome(
        self, record: InvestigationRecord, conversation: list[dict[str, Any]] | None
    ) -> None:
        # A terminal record needs no lease: a redelivery finds it finished.
        await self.store.store_outcome(record, conversation, self._leases.get(record.id))
        self._leases.pop(record.id, None)
        await self.producers.publish_result(record)
        await self.write_event(record, *terminal_event(record), published=True)

    async def _publish_outcomes(self, records: Sequence[InvestigationRecord]) -> None:
        """``_publish_outcome`` of records no lease of ours covers, together."""
        texts = await self.store.put_many(records)
        await self.producers.publish_outcomes(
            [(record, text, None) for record, text in zip(records, texts, strict=True)]
        )
        await asyncio.gather(
            *(self.write_event(r, *terminal_event(r), published=True) for r in records)
        )

    async def emit(
        self,
        record: InvestigationRecord,
        type_: str,
        payload: dict[str, Any],
        *,
        redact: bool = True,
    ) -> None:
        await self.write_event(record, type_, payload, redact=redact)

    def write_event(
        self,
        record: InvestigationRecord,
        type_: str,
        payload: dict[str, Any],
        *,
        redact: bool = True,
        published: bool = False,
    ) -> asyncio.Future[ProgressEvent]:
        """``published``: the record's outcome is on Kafka (``RecordStore.mark_published``)."""
        if redact and self.extras.redactor is not None:
            payload = self.extras.redactor.redact_obj(payload)
        return self.progress.write(record.id, record.fingerprint, type_, payload, published)

    async def _durably(self, op: Callable[[], Awaitable[T]]) -> T:
        """Retry an outcome write through Redis or Kafka blips: the work is done, keep it."""
        attempt = 0
        deadline = None
        while True:
            try:
                return await op()
            except TRANSIENT_IO as exc:
                attempt += 1
                if self.stopping:
                    deadline = deadline or time.monotonic() + self.settings.shutdown_grace_seconds
                    if time.monotonic() > deadline:
                        raise
                log.warning("outcome write failed, retrying: %s", exc)
                await asyncio.sleep(backoff(attempt, 0.2, 5.0) + 0.05)
