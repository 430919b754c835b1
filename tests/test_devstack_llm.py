"""The devstack: scripted LLM replies and failure injection, Kafka and Redis persistence."""

from __future__ import annotations

import asyncio
import json
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from holmes_stream.devstack.kafka import KafkaBroker
from holmes_stream.devstack.redis import RedisServer
from holmes_stream.devstack.scripted_llm import ScriptedLLM

ALERT = (
    'Analyse this alert: {"labels": {"alertname": "KubePodCrashLooping", '
    '"namespace": "checkout", "pod": "checkout-7f9c"}}'
)
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "kubectl_logs",
            "parameters": {
                "type": "object",
                "properties": {"namespace": {"type": "string"}, "pod": {"type": "string"}},
                "required": ["namespace", "pod"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "investigation_history",
            "parameters": {
                "type": "object",
                "properties": {
                    "namespace": {"type": "string"},
                    "service": {"type": "string"},
                    "window": {"type": "string"},
                    "limit": {"type": "integer"},
                },
                "required": ["namespace", "service"],
            },
        },
    },
]
TOOL_OUTPUT = "2 earlier episodes: OOMKilled at 512Mi, fixed by raising the memory limit"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def llm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScriptedLLM]:
    server = ScriptedLLM(free_port(), data_dir=tmp_path_factory.mktemp("llm"))
    server.start()
    yield server
    server.stop()
    assert not server.running()


@pytest.fixture
def fresh(llm: ScriptedLLM) -> Iterator[ScriptedLLM]:
    llm.reset()
    yield llm
    llm.configure(fail_rate=0.0, fail_statuses=[500, 429], down=False, latency_seconds=0.0)


def chat(llm: ScriptedLLM, messages: list[dict[str, Any]]) -> httpx.Response:
    body = {
        "model": "scripted",
        "messages": messages,
        "tools": TOOLS,
        "tool_choice": "auto",
        "temperature": 0,
        "max_tokens": 4096,
    }
    return httpx.post(f"{llm.api_base}/chat/completions", json=body, timeout=10)


def first_turn() -> list[dict[str, Any]]:
    return [{"role": "system", "content": "You are Holmes."}, {"role": "user", "content": ALERT}]


def with_tool_result(messages: list[dict[str, Any]], reply: dict[str, Any]) -> None:
    message = reply["choices"][0]["message"]
    messages.append(message)
    call_id = message["tool_calls"][0]["id"]
    messages.append({"role": "tool", "tool_call_id": call_id, "content": TOOL_OUTPUT})


def test_tool_call_turn_fills_arguments_from_user_message(fresh: ScriptedLLM) -> None:
    resp = chat(fresh, first_turn())
    assert resp.status_code == 200
    data = resp.json()
    assert data["object"] == "chat.completion"
    choice = data["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    (call,) = choice["message"]["tool_calls"]
    assert call["function"]["name"] == "investigation_history"  # preferred over the first
    args = json.loads(call["function"]["arguments"])
    # Found in the text; required but absent -> "unknown"; optional and absent -> omitted.
    assert args == {"namespace": "checkout", "service": "unknown"}
    usage = data["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0


def test_final_turn_quotes_tool_output(fresh: ScriptedLLM) -> None:
    messages = first_turn()
    with_tool_result(messages, chat(fresh, messages).json())
    data = chat(fresh, messages).json()
    choice = data["choices"][0]
    assert choice["finish_reason"] == "stop"
    content = choice["message"]["content"]
    assert content.startswith("## Analysis of KubePodCrashLooping")
    assert "### Evidence from investigation_history" in content
    assert TOOL_OUTPUT in content
    assert "Previously concluded" not in content


def test_follow_up_mentions_previous_conclusion(fresh: ScriptedLLM) -> None:
    messages = first_turn()
    with_tool_result(messages, chat(fresh, messages).json())
    messages.append(chat(fresh, messages).json()["choices"][0]["message"])
    messages.append({"role": "user", "content": "Could it be the new release?"})
    second_call = chat(fresh, messages).json()
    assert second_call["choices"][0]["finish_reason"] == "tool_calls"
    with_tool_result(messages, second_call)
    content = chat(fresh, messages).json()["choices"][0]["message"]["content"]
    assert "Previously concluded: ## Analysis of KubePodCrashLooping" in content
    assert TOOL_OUTPUT in content


def test_fail_rate_one_answers_429_with_retry_after(fresh: ScriptedLLM) -> None:
    fresh.configure(fail_rate=1.0, fail_statuses=[429])
    for _ in range(3):
        resp = chat(fresh, first_turn())
        assert resp.status_code == 429
        assert resp.headers["retry-after"] == "0"
        assert resp.json()["error"]["type"] == "rate_limit_error"
    assert fresh.stats()["by_status"] == {"429": 3}


def test_fail_rate_sequence_repeats_after_reset(fresh: ScriptedLLM) -> None:
    fresh.configure(fail_rate=0.5, fail_statuses=[500])
    first = [chat(fresh, first_turn()).status_code for _ in range(12)]
    fresh.reset()
    second = [chat(fresh, first_turn()).status_code for _ in range(12)]
    assert first == second
    assert {200, 500} == set(first)


def test_down_answers_503(fresh: ScriptedLLM) -> None:
    fresh.configure(down=True)
    assert chat(fresh, first_turn()).status_code == 503
    assert httpx.get(f"{fresh.base_url}/health").status_code == 200  # only completions fail
    fresh.configure(down=False)
    assert chat(fresh, first_turn()).status_code == 200


def test_stats_count_turns_and_failures(fresh: ScriptedLLM) -> None:
    messages = first_turn()
    with_tool_result(messages, chat(fresh, messages).json())
    chat(fresh, messages)
    fresh.configure(down=True)
    chat(fresh, messages)
    assert fresh.stats() == {
        "requests": 3,
        "completions_ok": 2,
        "failures": 1,
        "by_status": {"200": 2, "503": 1},
        "tool_call_turns": 1,
        "final_turns": 1,
    }
    fresh.reset()
    assert fresh.stats()["requests"] == 0


def test_models_and_bad_config(fresh: ScriptedLLM) -> None:
    models = httpx.get(f"{fresh.api_base}/models").json()
    assert models["data"][0]["id"] == "scripted"
    resp = httpx.post(f"{fresh.base_url}/_scripted/config", json={"no_such_key": 1})
    assert resp.status_code == 400


async def test_kafka_broker_keeps_data_across_restart(tmp_path: Path) -> None:
    from aiokafka import AIOKafkaProducer

    broker = KafkaBroker(tmp_path / "kafka", port=free_port(), controller_port=free_port())
    topic = f"devstack-{uuid.uuid4().hex[:8]}"
    await asyncio.to_thread(broker.start)
    try:
        assert broker.running()
        await asyncio.to_thread(broker.start)  # already running: a no-op
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap_servers)
        await producer.start()
        try:
            await producer.send_and_wait(topic, b"survives restarts", key=b"k")
        finally:
            await producer.stop()
        assert await _read_one(broker.bootstrap_servers, topic) == b"survives restarts"

        await asyncio.to_thread(broker.stop)
        assert not broker.running()
        await asyncio.to_thread(broker.start)
        assert await _read_one(broker.bootstrap_servers, topic) == b"survives restarts"
    finally:
        await asyncio.to_thread(broker.stop)
    assert not broker.running()
    assert not broker.pid_file.exists()


async def _read_one(bootstrap: str, topic: str) -> bytes | None:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    try:
        msg = await asyncio.wait_for(consumer.getone(), timeout=30)
        return msg.value
    finally:
        await consumer.stop()


def test_redis_server_keeps_data_across_restart(tmp_path: Path) -> None:
    import redis

    server = RedisServer(tmp_path / "redis", port=free_port())
    server.start()
    try:
        client = redis.Redis.from_url(server.url)
        client.set("hs:test", "persisted")
        client.close()
        # Another process would stop it the same way: through the pid file.
        RedisServer(tmp_path / "redis", port=server.port).stop()
        assert not server.running()
        server.start()
        client = redis.Redis.from_url(server.url)
        assert client.get("hs:test") == b"persisted"
        client.close()
    finally:
        server.stop()
    assert not server.running()
