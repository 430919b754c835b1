"""Per-tenant budgets of LLM tokens and money per time window, kept in Redis.

Usage lives in Redis so that every replica charges and checks the same numbers. Windows are
fixed (``floor(now / window_seconds)``): one hash per tenant and window, fields ``tokens`` and
``cost``, raised with HINCRBY/HINCRBYFLOAT in one MULTI and expiring after two windows.

A check before an investigation cannot see what runs in parallel, so a tenant may overshoot by
what its in-flight investigations spend; ``SyncBudgetGuard.check`` between agent steps (from the
engine's thread) bounds that to about one LLM call per running investigation.

Limits: ``BudgetSettings`` defaults, overridden per tenant; 0 or None means unlimited (in an
override, None inherits the default and 0 lifts the limit).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import redis as redis_sync
from redis.asyncio import Redis

from holmes_stream.settings import BudgetSettings

DEFAULT_TENANT = "default"


@dataclass(frozen=True)
class BudgetLimits:
    tokens: int | None = None
    cost: float | None = None

    @property
    def unlimited(self) -> bool:
        return self.tokens is None and self.cost is None


@dataclass(frozen=True)
class BudgetState:
    tenant: str
    window_start: float  # epoch seconds
    window_seconds: int
    tokens_used: int
    cost_used: float
    tokens_limit: int | None
    cost_limit: float | None

    @property
    def tokens_exceeded(self) -> bool:
        return self.tokens_limit is not None and self.tokens_used >= self.tokens_limit

    @property
    def cost_exceeded(self) -> bool:
        return self.cost_limit is not None and self.cost_used >= self.cost_limit

    @property
    def exceeded(self) -> bool:
        return self.tokens_exceeded or self.cost_exceeded

    @property
    def window_end(self) -> float:
        return self.window_start + self.window_seconds

    @property
    def reason(self) -> str | None:
        parts = []
        if self.tokens_exceeded:
            parts.append(f"tokens {self.tokens_used}/{self.tokens_limit}")
        if self.cost_exceeded:
            parts.append(f"cost {self.cost_used:.4f}/{self.cost_limit:.4f}")
        if not parts:
            return None
        return f"budget of tenant {self.tenant!r} exceeded: " + ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"exceeded": self.exceeded, "window_end": self.window_end}


class BudgetExceeded(Exception):
    def __init__(self, state: BudgetState) -> None:
        super().__init__(state.reason or "budget exceeded")
        self.state = state


def _limit(value: float | None) -> float | None:
    return None if not value else value


def limits_for(settings: BudgetSettings, tenant: str | None) -> BudgetLimits:
    tokens: int | None = settings.tokens_per_window
    cost: float | None = settings.cost_per_window
    override = settings.tenants.get(tenant or DEFAULT_TENANT)
    if override is not None:
        if override.tokens_per_window is not None:
            tokens = override.tokens_per_window
        if override.cost_per_window is not None:
            cost = override.cost_per_window
    return BudgetLimits(tokens=int(tokens) if tokens else None, cost=_limit(cost))


class _Ledger:
    """Keys, windows and state decoding shared by the async and the sync flavour."""

    def __init__(
        self, prefix: str, settings: BudgetSettings, clock: Callable[[], float] = time.time
    ) -> None:
        if settings.window_seconds < 1:
            raise ValueError("window_seconds must be >= 1")
        self.prefix = prefix
        self.settings = settings
        self.clock = clock

    @property
    def window_seconds(self) -> int:
        return self.settings.window_seconds

    def window(self) -> int:
        return int(self.clock() // self.window_seconds)

    def key(self, tenant: str, window: int) -> str:
        return f"{self.prefix}budget:{tenant}:{window}"

    @property
    def ttl(self) -> int:
        # Kept a window longer than needed so a late reader still sees the last window.
        return 2 * self.window_seconds

    def state(self, tenant: str, window: int, tokens: Any, cost: Any) -> BudgetState:
        limits = limits_for(self.settings, tenant)
        return BudgetState(
            tenant=tenant,
            window_start=float(window * self.window_seconds),
            window_seconds=self.window_seconds,
            tokens_used=int(_num(tokens)),
            cost_used=round(_num(cost), 9),
            tokens_limit=limits.tokens,
            cost_limit=limits.cost,
        )


def _num(raw: Any) -> float:
    if raw is None:
        return 0.0
    if isinstance(raw, bytes):
        raw = raw.decode()
    return float(raw)


def _tenant(tenant: str | None) -> str:
    return tenant or DEFAULT_TENANT


class Budgets:
    """The async flavour, for the service layer on the event loop."""

    def __init__(
        self,
        redis: Redis,
        prefix: str,
        settings: BudgetSettings,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.redis = redis
        self._ledger = _Ledger(prefix, settings, clock)

    def limits(self, tenant: str | None) -> BudgetLimits:
        return limits_for(self._ledger.settings, _tenant(tenant))

    async def usage(self, tenant: str | None) -> BudgetState:
        """The tenant's usage in the current window; never raises on an exceeded budget."""
        t, window = _tenant(tenant), self._ledger.window()
        tokens, cost = await self.redis.hmget(self._ledger.key(t, window), ["tokens", "cost"])
        return self._ledger.state(t, window, tokens, cost)

    async def check(self, tenant: str | None) -> BudgetState:
        """The current state; raises ``BudgetExceeded`` when usage has reached a limit."""
        if self.limits(tenant).unlimited:
            return self._ledger.state(_tenant(tenant), self._ledger.window(), 0, 0)
        state = await self.usage(tenant)
        if state.exceeded:
            raise BudgetExceeded(state)
        return state

    async def charge(self, tenant: str | None, tokens: int = 0, cost: float = 0.0) -> BudgetState:
        """Add usage to the current window atomically; returns the state after the charge."""
        t, window = _tenant(tenant), self._ledger.window()
        key = self._ledger.key(t, window)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hincrby(key, "tokens", int(tokens))
            pipe.hincrbyfloat(key, "cost", float(cost))
            pipe.expire(key, self._ledger.ttl)
            new_tokens, new_cost, _ = await pipe.execute()
        return self._ledger.state(t, window, new_tokens, new_cost)


class SyncBudgetGuard:
    """The synchronous twin, for HolmesGPT's loop in worker threads (between agent steps).

    redis-py's sync client is thread-safe (a connection pool), so one guard serves all threads.
    """

    def __init__(
        self,
        redis_url: str,
        prefix: str,
        settings: BudgetSettings,
        *,
        clock: Callable[[], float] = time.time,
        socket_timeout: float = 5.0,
    ) -> None:
        self.redis = redis_sync.Redis.from_url(
            redis_url, socket_timeout=socket_timeout, socket_connect_timeout=socket_timeout
        )
        self._ledger = _Ledger(prefix, settings, clock)

    def close(self) -> None:
        self.redis.close()

    def limits(self, tenant: str | None) -> BudgetLimits:
        return limits_for(self._ledger.settings, _tenant(tenant))

    def usage(self, tenant: str | None) -> BudgetState:
        t, window = _tenant(tenant), self._ledger.window()
        tokens, cost = self.redis.hmget(self._ledger.key(t, window), ["tokens", "cost"])
        return self._ledger.state(t, window, tokens, cost)

    def check(self, tenant: str | None) -> BudgetState:
        """Raises ``BudgetExceeded`` when the tenant's usage has reached a limit."""
        if self.limits(tenant).unlimited:
            return self._ledger.state(_tenant(tenant), self._ledger.window(), 0, 0)
        state = self.usage(tenant)
        if state.exceeded:
            raise BudgetExceeded(state)
        return state

    def charge(self, tenant: str | None, tokens: int = 0, cost: float = 0.0) -> BudgetState:
        t, window = _tenant(tenant), self._ledger.window()
        key = self._ledger.key(t, window)
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.hincrby(key, "tokens", int(tokens))
            pipe.hincrbyfloat(key, "cost", float(cost))
            pipe.expire(key, self._ledger.ttl)
            new_tokens, new_cost, _ = pipe.execute()
        return self._ledger.state(t, window, new_tokens, new_cost)
