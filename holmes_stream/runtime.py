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

from holmes_stream.consumers.alerts import Dispatcher, register_alert_subscriber
from holmes_stream.consumers.health_server import serve_health
from holmes_stream.producers.kafka import KafkaProducers, make_broker
from holmes_stream.service import InvestigationService
from holmes_stream.settings import Settings
from holmes_stream.store import RecordStore

log = logging.getLogger(__name__)


def build_engine(settings: Settings) -> Any:
    """HolmesGPT is imported here, once per process, and only by processes that investigate."""
    from holmes_stream.engine.holmes_engine import HolmesEngine
    from holmes_stream.engine.toolsets import history_toolset

    toolsets = [history_toolset(settings.redis.url, settings.redis.key_prefix)]
    return HolmesEngine(settings.llm, extra_toolsets=toolsets)


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
        redis = Redis.from_url(settings.redis.url, socket_timeout=10, socket_connect_timeout=5)
        store = RecordStore(
            redis,
            settings.redis.key_prefix,
            settings.redis.record_ttl_seconds,
            settings.redis.events_max_len,
        )
        broker = make_broker(settings.kafka)
        producers = KafkaProducers(broker, settings.kafka)
        executor = None
        if worker:
            engine = engine if engine is not None else build_engine(settings)
            executor = ThreadPoolExecutor(settings.worker.llm_threads, thread_name_prefix="holmes")
        service = InvestigationService(store, producers, settings.worker, engine, executor)
        runtime = cls(settings, redis, store, broker, producers, service, executor=executor)
        if worker:
            runtime.dispatcher = Dispatcher(service, settings)
            register_alert_subscriber(broker, runtime.dispatcher, settings)
        return runtime

    async def start(self) -> None:
        if self.dispatcher is not None:
            engine = self.service.engine
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
        await self.redis.aclose()
