"""Circuit breakers of the models of the failover list.

A model whose calls fail transiently ``failures`` times in a row is *open*: investigations skip it
for ``cooldown`` seconds. Then it is *half-open*: the next investigation that reaches it makes one
trial call (others keep skipping it while the trial runs); success closes the circuit, failure
opens it for another cool-down.

``RedisBreaker`` keeps the state in Redis, shared by every worker and visible to the API
(``GET /api/v1/models``) without importing HolmesGPT: one hash per model,
``{p}breaker:{name}`` with ``failures``, ``open_until`` (epoch seconds), ``last_error`` and
``changed_at``. ``LocalBreaker`` keeps the same state in the process (engines built without
Redis, e.g. in unit tests). A breaker that cannot reach Redis lets calls through: it must never
be the reason an investigation fails.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol

log = logging.getLogger(__name__)

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half_open"

ERROR_CHARS = 300
# How long a half-open trial may hold the circuit before another caller may try.
TRIAL_SECONDS = 60.0
STATE_TTL_SECONDS = 7 * 24 * 3600


@dataclass(frozen=True)
class CircuitState:
    model: str
    state: str
    failures: int = 0
    open_until: float | None = None
    last_error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "consecutive_failures": self.failures,
            "open_until": self.open_until,
            "last_error": self.last_error,
        }


def state_of(model: str, fields: dict[str, Any], now: float) -> CircuitState:
    failures = int(fields.get("failures") or 0)
    raw_until = fields.get("open_until")
    open_until = float(raw_until) if raw_until not in (None, "", b"") else None
    error = fields.get("last_error")
    if isinstance(error, bytes):
        error = error.decode(errors="replace")
    if open_until is None:
        state = CLOSED
    elif now < open_until:
        state = OPEN
    else:
        state = HALF_OPEN
    return CircuitState(model, state, failures, open_until, error or None)


class Breaker(Protocol):
    def allow(self, model: str) -> bool:
        """May this model be called now? (Half-open: True for one trial caller.)"""

    def success(self, model: str) -> None: ...

    def failure(self, model: str, error: str) -> None: ...

    def states(self, models: list[str]) -> dict[str, CircuitState]: ...


class LocalBreaker:
    """Per-process circuit state."""

    def __init__(self, failures: int = 3, cooldown: float = 60.0) -> None:
        self.threshold = max(1, failures)
        self.cooldown = cooldown
        self._lock = threading.Lock()
        self._fields: dict[str, dict[str, Any]] = {}

    def allow(self, model: str) -> bool:
        now = time.time()
        with self._lock:
            fields = self._fields.get(model)
            if fields is None:
                return True
            state = state_of(model, fields, now)
            if state.state == OPEN:
                return False
            if state.state == HALF_OPEN:
                fields["open_until"] = now + min(TRIAL_SECONDS, max(self.cooldown, 1.0))
            return True

    def success(self, model: str) -> None:
        with self._lock:
            self._fields.pop(model, None)

    def failure(self, model: str, error: str) -> None:
        now = time.time()
        with self._lock:
            fields = self._fields.setdefault(model, {"failures": 0})
            fields["failures"] = int(fields["failures"]) + 1
            fields["last_error"] = error[:ERROR_CHARS]
            if fields["failures"] >= self.threshold:
                fields["open_until"] = now + self.cooldown

    def states(self, models: list[str]) -> dict[str, CircuitState]:
        now = time.time()
        with self._lock:
            return {m: state_of(m, dict(self._fields.get(m) or {}), now) for m in models}


# KEYS[1] the model's hash; ARGV: now, trial seconds. 1: call it, 0: skip it.
_ALLOW = """
local open_until = redis.call('HGET', KEYS[1], 'open_until')
if not open_until or open_until == '' then return 1 end
local now = tonumber(ARGV[1])
if now < tonumber(open_until) then return 0 end
redis.call('HSET', KEYS[1], 'open_until', now + tonumber(ARGV[2]), 'changed_at', now)
return 1
"""

# KEYS[1]; ARGV: now, threshold, cooldown, error, ttl
_FAILURE = """
local failures = redis.call('HINCRBY', KEYS[1], 'failures', 1)
redis.call('HSET', KEYS[1], 'last_error', ARGV[4], 'changed_at', ARGV[1])
if failures >= tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[1], 'open_until', tonumber(ARGV[1]) + tonumber(ARGV[3]))
end
redis.call('EXPIRE', KEYS[1], ARGV[5])
return failures
"""


def breaker_key(prefix: str, model: str) -> str:
    return f"{prefix}breaker:{model}"


class RedisBreaker:
    """Circuit state shared through Redis by every worker of the deployment."""

    def __init__(
        self, redis_url: str, key_prefix: str, failures: int = 3, cooldown: float = 60.0
    ) -> None:
        import redis

        self.threshold = max(1, failures)
        self.cooldown = cooldown
        self.prefix = key_prefix
        self._client = redis.Redis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=2)
        self._allow = self._client.register_script(_ALLOW)
        self._failure = self._client.register_script(_FAILURE)

    def _key(self, model: str) -> str:
        return breaker_key(self.prefix, model)

    def allow(self, model: str) -> bool:
        trial = min(TRIAL_SECONDS, max(self.cooldown, 1.0))
        try:
            return bool(self._allow(keys=[self._key(model)], args=[time.time(), trial]))
        except Exception as exc:  # Redis away: call the model
            log.warning("model breaker: Redis failed (%s); calling %s", exc, model)
            return True

    def success(self, model: str) -> None:
        try:
            self._client.delete(self._key(model))
        except Exception as exc:
            log.warning("model breaker: could not record success of %s: %s", model, exc)

    def failure(self, model: str, error: str) -> None:
        try:
            self._failure(
                keys=[self._key(model)],
                args=[
                    time.time(),
                    self.threshold,
                    self.cooldown,
                    error[:ERROR_CHARS],
                    STATE_TTL_SECONDS,
                ],
            )
        except Exception as exc:
            log.warning("model breaker: could not record failure of %s: %s", model, exc)

    def states(self, models: list[str]) -> dict[str, CircuitState]:
        now = time.time()
        pipe = self._client.pipeline(transaction=False)
        for model in models:
            pipe.hgetall(self._key(model))
        rows = pipe.execute()
        return {m: state_of(m, _text_keys(row), now) for m, row in zip(models, rows, strict=True)}

    def close(self) -> None:
        self._client.close()


def _text_keys(row: dict[Any, Any]) -> dict[str, Any]:
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in row.items()}


async def read_states(redis: Any, prefix: str, models: list[str]) -> dict[str, CircuitState]:
    """The circuits of ``models`` through an asyncio Redis client (the API process)."""
    now = time.time()
    pipe = redis.pipeline(transaction=False)
    for model in models:
        pipe.hgetall(breaker_key(prefix, model))
    rows = await pipe.execute()
    return {m: state_of(m, _text_keys(row), now) for m, row in zip(models, rows, strict=True)}
