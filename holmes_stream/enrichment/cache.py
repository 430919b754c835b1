"""A JSON cache in Redis whose failures are misses: enrichment must work with Redis down."""

from __future__ import annotations

import json
import logging
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)


class JsonCache:
    def __init__(self, redis: Redis, prefix: str, ttl_seconds: int) -> None:
        self.redis = redis
        self.prefix = prefix
        self.ttl_seconds = ttl_seconds

    @property
    def enabled(self) -> bool:
        return self.ttl_seconds > 0

    def key(self, name: str) -> str:
        return self.prefix + name

    async def get(self, name: str) -> Any | None:
        if not self.enabled:
            return None
        try:
            raw = await self.redis.get(self.key(name))
        except (RedisError, OSError) as exc:
            log.debug("context cache read failed: %s", exc)
            return None
        if raw is None:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            return None

    async def set(self, name: str, value: Any) -> None:
        if not self.enabled:
            return
        try:
            await self.redis.set(self.key(name), json.dumps(value), ex=self.ttl_seconds)
        except (RedisError, OSError) as exc:
            log.debug("context cache write failed: %s", exc)
