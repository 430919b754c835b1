"""Kafka, Redis and the scripted LLM together, under one root directory."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from holmes_stream.devstack.kafka import KafkaBroker
from holmes_stream.devstack.redis import RedisServer
from holmes_stream.devstack.scripted_llm import ScriptedLLM


class LocalStack:
    """The service's dependencies for development, tests and benchmarks.

    Every piece keeps a pid file under ``root``, so ``stop()`` works from any process that
    builds a ``LocalStack`` on the same root and ports.
    """

    def __init__(
        self,
        root: Path,
        kafka_port: int = 19092,
        controller_port: int = 19093,
        redis_port: int = 16379,
        llm_port: int = 18080,
        llm_config: dict[str, Any] | None = None,
    ) -> None:
        self.root = Path(root).resolve()
        self.kafka = KafkaBroker(self.root / "kafka", kafka_port, controller_port)
        self.redis = RedisServer(self.root / "redis", redis_port)
        self.llm = ScriptedLLM(llm_port, data_dir=self.root / "llm", **(llm_config or {}))

    def start(self, kafka_timeout: float = 90) -> None:
        """Start all three at once (Kafka dominates); on any failure stop the others."""
        self.root.mkdir(parents=True, exist_ok=True)
        with ThreadPoolExecutor(max_workers=3, thread_name_prefix="devstack") as pool:
            futures = [
                pool.submit(self.kafka.start, kafka_timeout),
                pool.submit(self.redis.start),
                pool.submit(self.llm.start),
            ]
            errors = [f.exception() for f in futures]
        failed = [e for e in errors if e is not None]
        if failed:
            self.stop()
            raise failed[0]
        (self.root / "endpoints.json").write_text(json.dumps(self.endpoints(), indent=2) + "\n")

    def stop(self) -> None:
        # Stop the LLM first: it is what tests drive, and nothing depends on it.
        self.llm.stop()
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="devstack") as pool:
            futures = [pool.submit(self.kafka.stop), pool.submit(self.redis.stop)]
            for f in futures:
                f.result()

    def running(self) -> dict[str, bool]:
        return {
            "kafka": self.kafka.running(),
            "redis": self.redis.running(),
            "llm": self.llm.running(),
        }

    def endpoints(self) -> dict[str, str]:
        return {
            "kafka_bootstrap_servers": self.kafka.bootstrap_servers,
            "redis_url": self.redis.url,
            "llm_api_base": self.llm.api_base,
        }
