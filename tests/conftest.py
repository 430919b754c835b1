"""One real Kafka broker, one Redis and one scripted LLM per test run; unique names per test.

The broker is Apache Kafka itself (KRaft, jars from Maven Central) and Redis is redis-server,
both started by the project's devstack on free loopback ports: no container engine needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from holmes_stream.devstack.process import kill_orphans_of, pid_alive
from holmes_stream.devstack.scripted_llm import ScriptedLLM
from holmes_stream.devstack.stack import LocalStack
from holmes_stream.settings import (
    ApiSettings,
    AuthSettings,
    KafkaSettings,
    LLMSettings,
    RateLimitSettings,
    RedisSettings,
    Settings,
    WorkerSettings,
)

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "tests" / "artifacts"
# Everything this test session starts (the stack, private LLMs, workers) inherits this tag, so
# that the next session can stop what a killed one left running.
SESSION_TAG = "HS_TEST_SESSION"  # not HOLMES_STREAM_*: settings_env drops those
FIXTURES = ROOT / "holmes_stream" / "fixtures"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# Logs of private LLMs, workers and their data stay this long for a look after a failure.
ARTIFACTS_KEPT_SECONDS = 2 * 86400


def prune_artifacts(root: Path, older_than: float, now: float | None = None) -> list[Path]:
    """Remove what tests left under ``root`` last modified more than ``older_than`` seconds
    ago; returns what was removed."""
    limit = (time.time() if now is None else now) - older_than
    removed = []
    for entry in root.glob("*"):
        try:
            if entry.lstat().st_mtime >= limit:
                continue
        except OSError:  # removed meanwhile (a parallel session)
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


def pytest_sessionstart(session: pytest.Session) -> None:
    """Stop what killed test sessions left running (their stacks, LLMs, workers), remove what
    they and old sessions left on disk, then tag everything this session will start."""
    if orphans := kill_orphans_of(SESSION_TAG, owner_marker="pytest"):
        print(f"\nkilled {len(orphans)} processes left running by killed test sessions")
    for stale in ARTIFACTS.glob("stack-*"):
        owner = stale.name.removeprefix("stack-")
        if owner.isdigit() and not pid_alive(int(owner), "pytest"):
            shutil.rmtree(stale, ignore_errors=True)
    prune_artifacts(ARTIFACTS, ARTIFACTS_KEPT_SECONDS)
    os.environ[SESSION_TAG] = str(os.getpid())


@pytest.fixture(scope="session")
def stack() -> Iterator[LocalStack]:
    # Per test session: parallel runs on one machine must not share a broker's data.
    root = ARTIFACTS / f"stack-{os.getpid()}"
    shutil.rmtree(root, ignore_errors=True)
    local = LocalStack(
        root,
        kafka_port=free_port(),
        controller_port=free_port(),
        redis_port=free_port(),
        llm_port=free_port(),
    )
    local.start()
    print(f"\ntest stack: local Apache Kafka + redis-server + scripted LLM: {local.endpoints()}")
    yield local
    local.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def uid() -> str:
    return uuid.uuid4().hex[:10]


def make_settings(
    stack: LocalStack, uid: str, llm_api_base: str | None = None, **worker: Any
) -> Settings:
    endpoints = stack.endpoints()
    return Settings(
        kafka=KafkaSettings(
            bootstrap_servers=endpoints["kafka_bootstrap_servers"],
            alerts_topic=f"alerts-{uid}",
            results_topic=f"results-{uid}",
            progress_topic=f"progress-{uid}",
            dlq_topic=f"dlq-{uid}",
            group_id=f"group-{uid}",
            max_message_bytes=64_000,
            session_timeout_ms=10_000,
        ),
        redis=RedisSettings(url=endpoints["redis_url"], key_prefix=f"t{uid}:"),
        llm=LLMSettings(api_base=llm_api_base or endpoints["llm_api_base"], timeout_seconds=60),
        worker=WorkerSettings(
            **{
                "retry_base_seconds": 0.05,
                "retry_max_seconds": 0.5,
                "shutdown_grace_seconds": 10,
                "health_port": 0,
            }
            | worker
        ),
        api=ApiSettings(port=free_port(), sse_keepalive_seconds=1.0),
        # Tests of the service run without credentials; tests/test_http_auth.py turns auth on.
        auth=AuthSettings(mode="disabled"),
        # Load-shaped tests submit hundreds of requests; the rate-limit tests turn it on.
        ratelimit=RateLimitSettings(enabled=False),
    )


@pytest.fixture
def settings(stack: LocalStack, uid: str) -> Settings:
    return make_settings(stack, uid)


_ENGINES: dict[str, Any] = {}


def shared_engine(settings: Settings) -> Any:
    """HolmesGPT's Config is built once per LLM endpoint and Redis prefix for the whole run."""
    from holmes_stream.engine.holmes_engine import build_engine

    key = settings.model_dump_json(include={"llm", "redis", "redaction"})
    if key not in _ENGINES:
        _ENGINES[key] = build_engine(settings)
    return _ENGINES[key]


@pytest.fixture
async def start_worker() -> AsyncIterator[Callable[..., Any]]:
    """Start in-process workers (a Runtime each) on the test's event loop."""
    from holmes_stream.runtime import Runtime

    started: list[Runtime] = []

    async def start(settings: Settings) -> Runtime:
        runtime = Runtime.build(settings, worker=True, engine=shared_engine(settings))
        await runtime.start()
        started.append(runtime)
        return runtime

    yield start
    for runtime in reversed(started):
        with contextlib.suppress(Exception):
            await runtime.stop()


@pytest.fixture
async def start_api() -> AsyncIterator[Callable[..., Any]]:
    """Serve the API with uvicorn on the test's loop; returns its base URL."""
    from holmes_stream.http import create_app

    servers: list[tuple[uvicorn.Server, asyncio.Task[None]]] = []

    async def start(settings: Settings, runtime: Any = None) -> str:
        app = create_app(settings, runtime)
        config = uvicorn.Config(
            app, host="127.0.0.1", port=settings.api.port, log_config=None, lifespan="on"
        )
        server = uvicorn.Server(config)
        task = asyncio.create_task(server.serve())
        servers.append((server, task))
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.05)
        return f"http://127.0.0.1:{settings.api.port}"

    yield start
    for server, task in servers:
        server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 15)


@pytest.fixture
async def producer(stack: LocalStack) -> AsyncIterator[AIOKafkaProducer]:
    """A plain aiokafka producer: what an Alertmanager-to-Kafka bridge would use."""
    p = AIOKafkaProducer(bootstrap_servers=stack.endpoints()["kafka_bootstrap_servers"], acks="all")
    await p.start()
    yield p
    await p.stop()


async def collect(
    bootstrap: str,
    topic: str,
    until: Callable[[list[Any]], bool],
    timeout: float = 120,
    decode: bool = True,
) -> list[Any]:
    """Read ``topic`` from the beginning until ``until(messages)`` or the timeout."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    out: list[Any] = []
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not until(out) and loop.time() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                out.extend(json.loads(r.value) if decode else r for r in records)
        return out
    finally:
        await consumer.stop()


def load_fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / name).read_text())


def fresh(payload: dict[str, Any], tag: str, starts_at: datetime | None = None) -> dict[str, Any]:
    """The sample made new: fingerprints unique to ``tag``, firing since now."""
    when = (starts_at or datetime.now(UTC)).isoformat(timespec="milliseconds")
    payload = json.loads(json.dumps(payload))
    for alert in payload.get("alerts", [payload]):
        alert["fingerprint"] = f"{alert['fingerprint']}-{tag}"
        alert["startsAt"] = when
    return payload


@pytest.fixture
def scripted_llm_factory() -> Iterator[Callable[..., ScriptedLLM]]:
    """A private scripted LLM for a test that counts requests or injects failures."""
    started: list[ScriptedLLM] = []

    def start(**config: Any) -> ScriptedLLM:
        llm = ScriptedLLM(free_port(), data_dir=ARTIFACTS / f"llm-{uuid.uuid4().hex[:6]}", **config)
        llm.start()
        started.append(llm)
        return llm

    yield start
    for llm in started:
        llm.stop()


def settings_env(settings: Settings) -> dict[str, str]:
    """``settings`` as the HOLMES_STREAM_* environment of a child process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOLMES_STREAM_")}
    for group, values in settings.model_dump(mode="json").items():
        if isinstance(values, dict):
            for name, value in values.items():
                if value is None:
                    continue
                text = json.dumps(value) if isinstance(value, dict | list) else str(value)
                env[f"HOLMES_STREAM_{group.upper()}__{name.upper()}"] = text
        else:
            env[f"HOLMES_STREAM_{group.upper()}"] = str(values)
    env["HOLMES_STREAM_LLM__API_KEY"] = settings.llm.api_key.get_secret_value()
    env["HOLMES_STREAM_LOG_JSON"] = "true"
    return env


async def count_keys(redis_url: str, pattern: str) -> int:
    from redis.asyncio import Redis

    client = Redis.from_url(redis_url)
    try:
        return sum([1 async for _ in client.scan_iter(match=pattern, count=1000)])
    finally:
        await client.aclose()
