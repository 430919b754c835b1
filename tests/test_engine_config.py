"""The engine as configured: model list failover, circuit breakers, toolsets, the catalog API."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
from aiokafka import AIOKafkaProducer

from holmes_stream.devstack.scripted_llm import ScriptedLLM
from holmes_stream.runtime import Runtime
from holmes_stream.schemas import InvestigationRecord
from holmes_stream.settings import LLMSettings, ModelEntry, Settings
from holmes_stream.store import RecordStore
from tests.conftest import fresh, load_fixture, make_settings

KEY_ENV = "HS_TEST_ENGINE_KEY"
SECRETS = ("sk-inline-SECRET-1111", "sk-env-SECRET-2222", "sk-file-SECRET-3333")

CUSTOM_TOOLSETS = """
toolsets:
  test/echo:
    description: Says hello
    tags: [core]
    tools:
      - name: echo_hello
        description: Says hello
        command: echo hello
  test/needs-env:
    description: Needs an environment variable nobody sets
    tags: [core]
    prerequisites:
      - env: [HS_TEST_VARIABLE_NOBODY_SETS]
    tools:
      - name: never_runs
        description: Never runs
        command: echo never
"""


def python_toolsets() -> list[Any]:
    """A Python toolset factory, as ``HOLMES_STREAM_LLM__PYTHON_TOOLSETS`` names it."""
    from holmes.core.tools import (
        StructuredToolResult,
        StructuredToolResultStatus,
        Tool,
        Toolset,
        ToolsetTag,
    )

    class Runbook(Tool):
        def _invoke(self, params: dict, context: Any) -> StructuredToolResult:
            return StructuredToolResult(
                status=StructuredToolResultStatus.SUCCESS, data="restart it", params=params
            )

        def get_parameterized_one_liner(self, params: dict) -> str:
            return "runbook"

    tool = Runbook(name="runbook_lookup", description="The runbook of an alert", parameters={})
    return [
        Toolset(
            name="test/python",
            description="A toolset written in Python",
            enabled=True,
            tags=[ToolsetTag.CORE],
            tools=[tool],
        )
    ]


def entry(name: str, llm: ScriptedLLM, **extra: Any) -> ModelEntry:
    return ModelEntry(name=name, model=llm.model, api_base=llm.api_base, **extra)


def with_models(settings: Settings, models: list[ModelEntry], **llm: Any) -> Settings:
    values: dict[str, Any] = {"models": models, "timeout_seconds": 30, "max_steps": 5} | llm
    return settings.model_copy(update={"llm": LLMSettings(**values)})


async def wait_terminal(store: RecordStore, investigation_id: str, timeout: float = 45) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        record = await store.get(investigation_id)
        if record is not None and record.status.terminal:
            return record
        await asyncio.sleep(0.1)
    raise AssertionError(f"{investigation_id} did not finish in {timeout}s")


async def investigate(
    producer: AIOKafkaProducer, settings: Settings, runtime: Runtime, tag: str, **request: Any
) -> InvestigationRecord:
    alert = fresh(load_fixture("single-alert.json"), tag)
    body: dict[str, Any] = alert
    if request:
        body = {"kind": "investigation_request", "alert": alert, **request}
    await producer.send_and_wait(settings.kafka.alerts_topic, json.dumps(body).encode())
    from holmes_stream.intake import parse_payload

    [work] = parse_payload(body)
    record: InvestigationRecord = await wait_terminal(runtime.store, work.investigation_id)
    return record


async def test_failover_moves_to_the_next_model_and_records_why(
    stack,
    uid: str,
    scripted_llm_factory,
    producer: AIOKafkaProducer,
    start_worker,
    monkeypatch,
) -> None:
    monkeypatch.setenv(KEY_ENV, "sk-test")
    down = scripted_llm_factory(down=True)
    limited = scripted_llm_factory(fail_rate=1, fail_statuses=[429])
    healthy = scripted_llm_factory()
    models = [
        entry("keyless", healthy, api_key_env="HS_TEST_VARIABLE_NOBODY_SETS"),
        entry("primary", down, api_key_env=KEY_ENV),
        entry("secondary", limited, api_key_env=KEY_ENV),
        entry(
            "tertiary",
            healthy,
            api_key_env=KEY_ENV,
            input_cost_per_token=0.000002,
            output_cost_per_token=0.000008,
        ),
    ]
    settings = with_models(make_settings(stack, uid), models)
    runtime = await start_worker(settings)

    record = await investigate(producer, settings, runtime, uid)

    assert record.status == "completed", record
    result = record.result
    assert result is not None
    assert result.model == "tertiary" and result.provider_model == healthy.model
    assert [f.model for f in result.failover] == ["keyless", "primary", "secondary"]
    keyless, unavailable, limited_error = (f.error for f in result.failover)
    assert keyless == "HS_TEST_VARIABLE_NOBODY_SETS, the API key of keyless, is not set"
    assert "503" in unavailable or "ServiceUnavailable" in unavailable
    assert "429" in limited_error or "RateLimit" in limited_error
    assert result.cost > 0  # priced by the entry's per-token prices
    assert down.stats()["requests"] == 1 and limited.stats()["requests"] == 1
    assert healthy.stats()["requests"] == 2  # the keyless entry never called it
    events = await runtime.store.events_after(record.id, 0)
    failed_over = [e.payload["model"] for e in events if e.type == "failover"]
    assert failed_over == ["keyless", "primary", "secondary"]
    # One attempt: the failover happened inside it, not through the service's retries.
    assert record.attempts == 1
    errors = "holmes_stream_llm_errors_total"
    assert sample(errors, model="keyless", kind="unusable") >= 1
    assert sample(errors, model="primary", kind="unavailable") >= 1
    assert sample(errors, model="secondary", kind="rate_limit") >= 1
    assert sample("holmes_stream_llm_calls_total", model="tertiary", outcome="ok") >= 2


def sample(name: str, **labels: str) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_breaker_skips_a_dead_model_and_the_api_shows_it(
    stack,
    uid: str,
    scripted_llm_factory,
    producer: AIOKafkaProducer,
    start_worker,
    start_api,
) -> None:
    dead = scripted_llm_factory(down=True)
    backup = scripted_llm_factory()
    models = [entry("dead", dead, api_key="dummy"), entry("backup", backup, api_key="dummy")]
    settings = with_models(
        make_settings(stack, uid), models, breaker_failures=1, breaker_cooldown_seconds=300
    )
    runtime = await start_worker(settings)
    api = await start_api(settings, runtime)

    first = await investigate(producer, settings, runtime, f"{uid}-1")
    assert first.status == "completed" and first.result is not None
    assert first.result.model == "backup"
    assert dead.stats()["requests"] == 1

    second = await investigate(producer, settings, runtime, f"{uid}-2")
    assert second.status == "completed" and second.result is not None
    assert second.result.model == "backup"
    assert [(f.model, f.error) for f in second.result.failover] == [
        ("dead", "circuit open: skipped")
    ]
    assert dead.stats()["requests"] == 1  # the open circuit kept the dead endpoint out
    assert backup.stats()["requests"] == 4

    async with httpx.AsyncClient(base_url=api) as client:
        listed = (await client.get("/api/v1/models")).json()
    circuits = {m["name"]: m["circuit"] for m in listed["models"]}
    assert listed["failover"] is True
    assert circuits["dead"]["state"] == "open" and circuits["dead"]["consecutive_failures"] == 1
    assert circuits["backup"]["state"] == "closed"


async def test_catalog_lists_models_and_toolsets_without_secrets_and_requests_stay_within_it(
    stack,
    uid: str,
    scripted_llm_factory,
    producer: AIOKafkaProducer,
    start_worker,
    start_api,
    monkeypatch,
    tmp_path: Path,
) -> None:
    inline, from_env, from_file = SECRETS
    monkeypatch.setenv(KEY_ENV, from_env)
    key_file = tmp_path / "key"
    key_file.write_text(from_file + "\n")
    toolsets_file = tmp_path / "toolsets.yaml"
    toolsets_file.write_text(CUSTOM_TOOLSETS)
    llm = scripted_llm_factory()
    models = [
        entry("inline", llm, api_key=inline),
        entry("env", llm, api_key_env=KEY_ENV),
        entry("file", llm, api_key_file=key_file),
    ]
    settings = with_models(
        make_settings(stack, uid),
        models,
        custom_toolset_files=[toolsets_file],
        python_toolsets=["tests.test_engine_config:python_toolsets"],
    )
    runtime = await start_worker(settings)
    api = await start_api(settings, runtime)

    async with httpx.AsyncClient(base_url=api) as client:
        models_response = await client.get("/api/v1/models")
        toolsets_response = await client.get("/api/v1/toolsets")
    for response in (models_response, toolsets_response):
        assert response.status_code == 200
        assert not any(secret in response.text for secret in SECRETS), response.text
    listed = models_response.json()["models"]
    assert [m["name"] for m in listed] == ["inline", "env", "file"]
    assert [m["role"] for m in listed] == ["primary", "fallback", "fallback"]
    assert [m["api_key_source"] for m in listed] == [
        "inline",
        f"env:{KEY_ENV}",
        f"file:{key_file}",
    ]
    toolsets = toolsets_response.json()
    assert toolsets["source"] == "worker"
    by_name = {t["name"]: t for t in toolsets["toolsets"]}
    assert by_name["holmes_stream"]["enabled"] and by_name["holmes_stream"]["tools"] == [
        "investigation_history"
    ]
    assert by_name["test/echo"]["status"] == "enabled"
    assert by_name["test/python"]["enabled"] and by_name["test/python"]["tools"] == [
        "runbook_lookup"
    ]
    assert by_name["test/needs-env"]["status"] == "failed"
    assert "HS_TEST_VARIABLE_NOBODY_SETS" in (by_name["test/needs-env"]["error"] or "")

    # Requests choose a model by name and enabled toolsets; anything else fails clearly.
    chosen = await investigate(
        producer, settings, runtime, f"{uid}-ok", model="file", toolsets=["holmes_stream"]
    )
    assert chosen.status == "completed" and chosen.result is not None
    assert chosen.result.model == "file" and chosen.result.failover == []
    unknown = await investigate(producer, settings, runtime, f"{uid}-model", model="gpt-nope")
    assert unknown.status == "failed"
    assert "model 'gpt-nope' is not configured" in (unknown.error or "")
    disabled = await investigate(
        producer, settings, runtime, f"{uid}-toolset", toolsets=["test/needs-env"]
    )
    assert disabled.status == "failed"
    assert "toolsets not enabled: test/needs-env" in (disabled.error or "")


def test_model_list_settings_from_the_environment(monkeypatch, tmp_path: Path) -> None:
    models = [
        {"name": "primary", "model": "openai/gpt-4o", "api_key_env": "OPENAI_API_KEY"},
        {
            "name": "fallback",
            "model": "anthropic/claude-sonnet-4-5",
            "api_key_file": str(tmp_path / "k"),
            "temperature": 0.2,
            "input_cost_per_token": 3e-06,
            "output_cost_per_token": 1.5e-05,
        },
    ]
    monkeypatch.setenv("HOLMES_STREAM_LLM__MODELS", json.dumps(models))
    monkeypatch.setenv("HOLMES_STREAM_LLM__TOOLSETS", '{"kubernetes/core":{"enabled":true}}')
    monkeypatch.setenv("HOLMES_STREAM_LLM__CUSTOM_TOOLSET_FILES", '["/etc/holmes/toolsets.yaml"]')
    monkeypatch.setenv("HOLMES_STREAM_LLM__BREAKER_FAILURES", "5")
    settings = Settings.model_validate({})
    entries = settings.llm.model_entries()
    assert [e.name for e in entries] == ["primary", "fallback"]
    assert entries[1].temperature == 0.2 and entries[1].output_cost_per_token == 1.5e-05
    assert settings.llm.toolsets == {"kubernetes/core": {"enabled": True}}
    assert settings.llm.custom_toolset_files == [Path("/etc/holmes/toolsets.yaml")]
    assert settings.llm.breaker_failures == 5
    # The single-model shorthand still works and names the model after itself.
    monkeypatch.delenv("HOLMES_STREAM_LLM__MODELS")
    monkeypatch.setenv("HOLMES_STREAM_LLM__MODEL", "openai/gpt-4o-mini")
    [only] = Settings.model_validate({}).llm.model_entries()
    assert only.name == only.model == "openai/gpt-4o-mini"


def test_breaker_opens_then_lets_one_trial_through() -> None:
    from holmes_stream.engine.breaker import LocalBreaker

    breaker = LocalBreaker(failures=2, cooldown=0.2)
    assert breaker.allow("m")
    breaker.failure("m", "boom")
    assert breaker.allow("m") and breaker.states(["m"])["m"].state == "closed"
    breaker.failure("m", "boom")
    assert not breaker.allow("m") and breaker.states(["m"])["m"].state == "open"
    import time

    time.sleep(0.25)
    assert breaker.states(["m"])["m"].state == "half_open"
    assert breaker.allow("m")  # the trial
    assert not breaker.allow("m")  # others wait for it
    breaker.success("m")
    assert breaker.allow("m") and breaker.states(["m"])["m"].state == "closed"


def test_a_hanging_model_is_left_for_the_next_one(scripted_llm_factory) -> None:
    import threading
    import time
    from datetime import UTC, datetime

    from holmes_stream.engine.base import EngineRequest
    from holmes_stream.engine.holmes_engine import HolmesEngine
    from holmes_stream.schemas import Alert

    hanging = scripted_llm_factory(hang_seconds=5)
    healthy = scripted_llm_factory()
    settings = LLMSettings(
        models=[entry("hanging", hanging, api_key="k"), entry("healthy", healthy, api_key="k")],
        step_timeout_seconds=1,
        timeout_seconds=20,
        max_steps=5,
    )
    alert = Alert(labels={"alertname": "Hang"}, startsAt=datetime.now(UTC))
    engine = HolmesEngine(settings)
    engine.warm()
    started = time.monotonic()
    result = engine.investigate(
        EngineRequest(investigation_id="hang", alert=alert), lambda *_: None, threading.Event()
    )
    assert result.model == "healthy"
    assert [(f.model, f.error) for f in result.failover] == [
        ("hanging", "timeout: no agent step for 1s")
    ]
    assert time.monotonic() - started < 4  # not the 5 s the hanging model takes


def test_kept_conversations_are_bounded() -> None:
    from holmes_stream.engine.holmes_engine import conversation_of

    messages = [
        {"role": "system", "content": "You are HolmesGPT." * 100},
        {"role": "user", "content": "Why?", "token_count": 3},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c1"}]},
        {"role": "tool", "tool_call_id": "c1", "content": "x" * 50_000},
        {"role": "assistant", "content": "Because."},
    ]
    kept = conversation_of(messages)
    assert kept is not None and [m["role"] for m in kept] == [
        "user",
        "assistant",
        "tool",
        "assistant",
    ]
    assert "token_count" not in kept[0] and len(kept[2]["content"]) == 50_000
    shortened = conversation_of(messages, max_chars=20_000)
    assert shortened is not None and len(shortened[2]["content"]) < 9_000
    assert conversation_of(messages, max_chars=100) is None
