"""Rate limits per principal and route, counted in Redis so that every replica shares them.

A sliding-window counter: the current fixed window's count plus the previous window's count
weighted by how much of it still overlaps the sliding window. One Lua call per request; the
clock is Redis's own, so replicas with skewed clocks still agree.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError

from holmes_stream.settings import RateLimitSettings

log = logging.getLogger(__name__)

# KEYS[1]: key base. ARGV: limit, window in ms.
# Returns {allowed (1/0), remaining, retry_after_ms}.
_SLIDING_WINDOW = """
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local index = math.floor(now / window)
local elapsed = now - index * window
local current_key = KEYS[1] .. ':' .. index
local previous_key = KEYS[1] .. ':' .. (index - 1)
local current = tonumber(redis.call('GET', current_key) or '0')
local previous = tonumber(redis.call('GET', previous_key) or '0')
local weight = (window - elapsed) / window
local estimate = previous * weight + current
if estimate + 1 > limit then
  local retry
  if current + 1 > limit or previous == 0 then
    retry = window - elapsed
  else
    -- previous * (window - e) / window + current + 1 <= limit  =>  e >= ...
    local needed = window - (limit - current - 1) * window / previous
    retry = math.max(1, needed - elapsed)
  end
  return {0, 0, math.ceil(retry)}
end
redis.call('INCR', current_key)
redis.call('PEXPIRE', current_key, window * 2)
return {1, math.floor(limit - estimate - 1), 0}
"""


@dataclass(frozen=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    retry_after_seconds: int


class RateLimiter:
    def __init__(self, redis: Redis, prefix: str, settings: RateLimitSettings) -> None:
        self.settings = settings
        self.prefix = prefix
        self._script = redis.register_script(_SLIDING_WINDOW)

    def limit_for(self, method: str, route: str) -> int:
        explicit = self.settings.routes.get(f"{method} {route}")
        if explicit is not None:
            return explicit
        if method in ("GET", "HEAD", "OPTIONS"):
            return self.settings.read_per_window
        return self.settings.write_per_window

    async def hit(self, principal_id: str, method: str, route: str) -> Decision | None:
        """Count one request; ``None`` when limits are off or Redis is away (fail open)."""
        if not self.settings.enabled:
            return None
        limit = self.limit_for(method, route)
        key = f"{self.prefix}rl:{principal_id}:{method}:{route}"
        try:
            allowed, remaining, retry_ms = await self._script(
                keys=[key], args=[limit, self.settings.window_seconds * 1000]
            )
        except RedisError as exc:
            log.warning("rate limit not checked, Redis unavailable: %s", exc)
            return None
        return Decision(
            bool(allowed), limit, max(0, int(remaining)), max(1, math.ceil(int(retry_ms) / 1000))
        )
