"""The composition root: builds every client of one process, starts and stops them in order."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from faststream.kafka import KafkaBroker
from redis.asyncio import Redis

from holmes_stream import telemetry
from holmes_stream.budgets import Budgets, SyncBudgetGuard
from holmes_stream.consumers.alerts import Dispatcher, register_alert_subscriber
from holmes_stream.consumers.health_server import serve_health
from holmes_stream.enrichment import Enricher
from holmes_stream.producers.kafka import KafkaProducers, make_broker
from holmes_stream.redaction import Redactor
from holmes_stream.service import Extras, InvestigationService
from holmes_stream.settings import Settings
from holmes_stream.store import RecordStore

log = logging.getLogger(__name__)


def build_engine(settings: Settings) -> Any:
    """HolmesGPT is imported here, once per process, and only by processes that investigate."""
    from holmes_stream.engine.holmes_engine import build_engine as build_holmes_engine

    return build_holmes_engine(settings)


def build_extras(settings: Settings, redis: Redis, worker: bool) -> Extras:
    """Redaction, and for workers enrichment and budgets, each only when configured."""
    extras = Extras()
    if settings.redaction.enabled:
        extras.redactor = Redactor.from_settings(settings.redaction)
    if not worker:
        return extras
    enrichment = settings.enrichment
    if enrichment.enabled and (enrichment.context_api.url or enrichment.prometheus.url):
        extras.enricher = Enricher.from_settings(settings, redis)
    budgets = settings.budgets
    if budgets.tokens_per_window or budgets.cost_per_window or budgets.tenants:
        prefix = settings.redis.key_prefix
        extras.budgets = Budgets(redis, prefix, budgets)
        extras.budget_guard = SyncBudgetGuard(settings.redis.url, prefix, budgets)
    return extras


@dataclass
class Runtime:
    settings: Settings
    redis: Redis
    store: RecordStore
    broker: KafkaBroker
    producers: KafkaProducers
    service: InvestigationService
    dispatcher: Dispatcher | None = None
    executor: ThreadPoolExecutor | None = None
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _health: asyncio.AbstractServer | None = None

    @classmethod
    def build(cls, settings: Settings, *, worker: bool, engine: Any = None) -> Runtime:
        store = RecordStore.connect(settings.redis, settings.redis.max_connections, 30)
        redis = store.redis
        broker = make_broker(settings.kafka, telemetry.setup(settings.telemetry))
        producers = KafkaProducers(broker, settings.kafka)
        executor = None
        if worker:
            engine = engine if engine is not None else build_engine(settings)
            executor = ThreadPoolExecutor(settings.worker.llm_threads, thread_name_prefix="holmes")
        extras = build_extras(settings, redis, worker)
        service = InvestigationService(store, producers, settings.worker, engine, executor, extras)
        runtime = cls(settings, redis, store, broker, producers, service, executor=executor)
        if worker:
            runtime.dispatcher = Dispatcher(service, settings)
            register_alert_subscriber(broker, runtime.dispatcher, settings)
        return runtime

    async def start(self) -> None:
        if self.dispatcher is not None:
            engine: Any = self.service.engine
            if hasattr(engine, "warm"):
                await asyncio.get_running_loop().run_in_executor(self.executor, engine.warm)
            self._tasks.append(asyncio.create_task(self._listen_for_cancels()))
            await self.broker.start()
            worker = self.settings.worker
            if worker.health_port:
                self._health = await serve_health(
                    worker.health_host, worker.health_port, lambda: not self.service.stopping
                )
        else:
            await self.broker.connect()
        log.info("started", extra={"worker": self.dispatcher is not None})

    async def _listen_for_cancels(self) -> None:
        while True:
            try:
                async for investigation_id in self.store.cancel_requests():
                    self.service.stop_running(investigation_id)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis away: subscribe again shortly
                log.warning("cancel listener lost Redis: %s", exc)
                await asyncio.sleep(1)

    async def stop(self) -> None:
        if self.dispatcher is not None:
            await self.dispatcher.drain(self.settings.worker.shutdown_grace_seconds)
        for task in self._tasks:
            task.cancel()
        if self._health is not None:
            self._health.close()
        with contextlib.suppress(Exception):
            await self.broker.stop()
        if self.executor is not None:
            self.executor.shutdown(wait=False, cancel_futures=True)
        if self.service.extras.enricher is not None:
            await self.service.extras.enricher.aclose()
        await self.redis.aclose(close_connection_pool=True)
