"""Per-tenant budgets on the session's real Redis, each test under its own key prefix."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from holmes_stream.budgets import (
    BudgetExceeded,
    Budgets,
    SyncBudgetGuard,
    limits_for,
)
from holmes_stream.devstack.stack import LocalStack
from holmes_stream.settings import BudgetSettings, Settings, TenantBudget


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def redis(stack: LocalStack) -> AsyncIterator[Redis]:
    client = Redis.from_url(stack.endpoints()["redis_url"])
    yield client
    await client.aclose()


SETTINGS = BudgetSettings(
    tokens_per_window=1000,
    cost_per_window=1.0,
    window_seconds=60,
    tenants={
        "big": TenantBudget(tokens_per_window=0, cost_per_window=5.0),  # tokens unlimited
        "tiny": TenantBudget(tokens_per_window=10),  # cost inherits 1.0
    },
)


def test_limits_defaults_overrides_and_unlimited() -> None:
    assert limits_for(SETTINGS, None).tokens == 1000
    assert limits_for(SETTINGS, "big").tokens is None
    assert limits_for(SETTINGS, "big").cost == 5.0
    assert limits_for(SETTINGS, "tiny").tokens == 10
    assert limits_for(SETTINGS, "tiny").cost == 1.0
    unlimited = BudgetSettings(tokens_per_window=0, cost_per_window=None)
    assert limits_for(unlimited, "any").unlimited


def test_env_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOLMES_STREAM_BUDGETS__TOKENS_PER_WINDOW", "5000")
    monkeypatch.setenv("HOLMES_STREAM_BUDGETS__WINDOW_SECONDS", "86400")
    monkeypatch.setenv("HOLMES_STREAM_BUDGETS__TENANTS", '{"acme": {"cost_per_window": 2.5}}')
    budgets = Settings.model_validate({}).budgets
    assert budgets.tokens_per_window == 5000 and budgets.window_seconds == 86400
    assert limits_for(budgets, "acme").cost == 2.5


async def test_charge_accumulates_and_check_raises_at_the_limit(redis: Redis, uid: str) -> None:
    clock = Clock()
    budgets = Budgets(redis, f"t{uid}:", SETTINGS, clock=clock)
    assert (await budgets.check("acme")).tokens_used == 0

    state = await budgets.charge("acme", tokens=600, cost=0.25)
    assert (state.tokens_used, state.cost_used, state.exceeded) == (600, 0.25, False)
    await budgets.check("acme")

    state = await budgets.charge("acme", tokens=400, cost=0.1)
    assert state.tokens_used == 1000 and state.tokens_exceeded and not state.cost_exceeded
    with pytest.raises(BudgetExceeded) as info:
        await budgets.check("acme")
    assert info.value.state.tokens_used == 1000
    assert "tokens 1000/1000" in str(info.value)
    assert (await budgets.usage("acme")).exceeded  # usage() reports, never raises

    # Another tenant is untouched; the key expires after two windows.
    assert (await budgets.check("other")).tokens_used == 0
    key = f"t{uid}:budget:acme:{int(clock.now // 60)}"
    assert 60 < await redis.ttl(key) <= 120


async def test_cost_limit_and_new_window(redis: Redis, uid: str) -> None:
    clock = Clock()
    budgets = Budgets(redis, f"t{uid}:", SETTINGS, clock=clock)
    for _ in range(10):
        await budgets.charge("acme", tokens=1, cost=0.1)
    state = await budgets.usage("acme")
    assert state.cost_used == pytest.approx(1.0) and state.cost_exceeded
    with pytest.raises(BudgetExceeded, match="cost"):
        await budgets.check("acme")
    clock.now += 60  # the next window starts empty
    state = await budgets.check("acme")
    assert state.tokens_used == 0 and state.window_start == (clock.now // 60) * 60


async def test_overrides_and_unlimited_tenants(redis: Redis, uid: str) -> None:
    budgets = Budgets(redis, f"t{uid}:", SETTINGS, clock=Clock())
    await budgets.charge("big", tokens=10**9, cost=4.0)
    await budgets.check("big")  # tokens unlimited, cost 4.0 < 5.0
    await budgets.charge("tiny", tokens=10)
    with pytest.raises(BudgetExceeded):
        await budgets.check("tiny")
    # No tenant: charged to and checked as "default".
    await budgets.charge(None, tokens=1000)
    with pytest.raises(BudgetExceeded):
        await budgets.check("default")

    free = Budgets(redis, f"t{uid}:free:", BudgetSettings(), clock=Clock())
    await free.charge("acme", tokens=10**9, cost=10**6)
    assert not (await free.check("acme")).exceeded
    assert (await free.usage("acme")).tokens_used == 10**9  # still metered


async def test_concurrent_charges_are_atomic(redis: Redis, uid: str) -> None:
    budgets = Budgets(redis, f"t{uid}:", SETTINGS, clock=Clock())
    # 80 at once: below redis-py's default pool of 100 connections, which fails fast beyond.
    await asyncio.gather(*(budgets.charge("acme", tokens=5, cost=0.0025) for _ in range(80)))
    state = await budgets.usage("acme")
    assert state.tokens_used == 400
    assert state.cost_used == pytest.approx(0.2)


async def test_sync_guard_shares_the_ledger_across_threads(
    redis: Redis, stack: LocalStack, uid: str
) -> None:
    clock = Clock()
    prefix = f"t{uid}:"
    budgets = Budgets(redis, prefix, SETTINGS, clock=clock)
    guard = SyncBudgetGuard(stack.endpoints()["redis_url"], prefix, SETTINGS, clock=clock)
    try:
        errors: list[BaseException] = []

        def agent_steps() -> None:
            # What an engine thread does between LLM calls: check, then charge the call.
            try:
                for _ in range(50):
                    guard.check("acme")
                    guard.charge("acme", tokens=4, cost=0.0)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=agent_steps) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            await asyncio.to_thread(t.join)
        assert errors == []
        # Charges from threads are visible to the async side (another replica) and back.
        assert (await budgets.usage("acme")).tokens_used == 800
        await budgets.charge("acme", tokens=200)
        with pytest.raises(BudgetExceeded):
            await asyncio.to_thread(guard.check, "acme")
        assert guard.usage("acme").tokens_used == 1000
    finally:
        guard.close()
