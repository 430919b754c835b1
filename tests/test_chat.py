"""Chat follow-ups on a finished investigation: through Kafka to a worker, answered over SSE."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
from websockets.asyncio.client import connect

from holmes_stream.settings import Settings
from tests.conftest import fresh, load_fixture, make_settings
from tests.test_engine_config import wait_terminal
from tests.test_spine import read_sse

# Workers whose engine is built as in production (Redis-backed breakers, catalog snapshot).


async def ask(client: httpx.AsyncClient, investigation_id: str, message: str) -> dict[str, Any]:
    response = await client.post(
        f"/api/v1/investigations/{investigation_id}/messages", json={"message": message}
    )
    assert response.status_code == 202, response.text
    body: dict[str, Any] = response.json()
    assert response.headers["location"] == body["events_url"]
    return body


def answer_of(events: list[dict[str, str]], turn: str) -> dict[str, Any]:
    payloads = [json.loads(e["data"]) for e in events]
    assert all(p["payload"]["turn"] == turn for p in payloads)
    types = [p["type"] for p in payloads]
    assert types[0] == "chat_started" and types[-1] == "chat_completed", types
    assert {"start_tool_calling", "tool_calling_result", "ai_answer_end"} <= set(types)
    return dict(payloads[-1]["payload"])


async def test_two_turn_chat_continues_the_conversation(
    stack, uid: str, scripted_llm_factory, start_worker, start_api
) -> None:
    llm = scripted_llm_factory()
    settings: Settings = make_settings(stack, uid, llm.api_base)
    runtime = await start_worker(settings)
    api = await start_api(settings, runtime)
    alert = fresh(load_fixture("single-alert.json"), uid)

    async with httpx.AsyncClient(base_url=api, timeout=30) as client:
        missing = await client.post(
            "/api/v1/investigations/nope/messages", json={"message": "anything?"}
        )
        assert missing.status_code == 404

        submitted = await client.post("/api/v1/investigations", json=alert)
        investigation_id = submitted.json()["investigations"][0]["id"]
        record = await wait_terminal(runtime.store, investigation_id)
        assert record.status == "completed"
        first_line = record.result.analysis.splitlines()[0]
        assert first_line == "## Analysis of KubePodCrashLooping"

        # Turn 1 continues the investigation's conversation.
        turn1 = await ask(client, investigation_id, 'Is it the same as alertname="FollowUpOne"?')
        events1 = await read_sse(turn1["events_url"])
        answer1 = answer_of(events1, turn1["turn"])
        assert answer1["answer"].startswith("## Analysis of FollowUpOne")
        assert f"Previously concluded: {first_line}" in answer1["answer"]
        assert answer1["model"] == settings.llm.model and answer1["failover"] == []
        assert min(int(e["id"]) for e in events1) > turn1["after_seq"]

        # Turn 2 continues from turn 1: its answer quotes turn 1's, not the investigation's.
        turn2 = await ask(client, investigation_id, "And what should I check first?")
        events2 = await read_sse(turn2["events_url"])
        answer2 = answer_of(events2, turn2["turn"])
        assert "Previously concluded: ## Analysis of FollowUpOne" in answer2["answer"]

        transcript = (
            await client.get(f"/api/v1/investigations/{investigation_id}/messages")
        ).json()
        assert [t["turn"] for t in transcript["turns"]] == [turn1["turn"], turn2["turn"]]
        assert [t["status"] for t in transcript["turns"]] == ["completed", "completed"]
        assert transcript["turns"][1]["answer"] == answer2["answer"]

        # The investigation's own stream replays everything, turns included, in order (once
        # finished for longer than the keep-alive; before that it ends at its terminal event).
        await asyncio.sleep(settings.api.sse_keepalive_seconds + 0.2)
        everything = await read_sse(f"{api}/api/v1/investigations/{investigation_id}/events")
        kinds = [e["event"] for e in everything]
        assert kinds.count("chat_completed") == 2, " ".join(kinds)
        assert kinds.index("completed") < kinds.index("chat_started"), kinds

        # With Accept: text/event-stream the POST itself streams the turn.
        streamed: list[str] = []
        async with client.stream(
            "POST",
            f"/api/v1/investigations/{investigation_id}/messages",
            json={"message": "One more?"},
            headers={"Accept": "text/event-stream"},
        ) as response:
            assert response.status_code == 200
            async for line in response.aiter_lines():
                if line.startswith("event:"):
                    streamed.append(line.partition(":")[2].strip())
        assert streamed[0] == "chat_started" and streamed[-1] == "chat_completed"


async def test_follow_ups_are_refused_while_running_or_without_a_conversation(
    stack, uid: str, scripted_llm_factory, start_worker, start_api
) -> None:
    llm = scripted_llm_factory(latency_seconds=0.5)
    settings = make_settings(stack, uid, llm.api_base)
    runtime = await start_worker(settings)
    api = await start_api(settings, runtime)
    alert = fresh(load_fixture("single-alert.json"), uid)
    async with httpx.AsyncClient(base_url=api, timeout=30) as client:
        submitted = await client.post("/api/v1/investigations", json=alert)
        investigation_id = submitted.json()["investigations"][0]["id"]
        wrong_model = await client.post(
            f"/api/v1/investigations/{investigation_id}/messages",
            json={"message": "done?", "model": "gpt-nope"},
        )
        assert wrong_model.status_code == 422 and "not configured" in wrong_model.text
        early = await client.post(
            f"/api/v1/investigations/{investigation_id}/messages", json={"message": "done?"}
        )
        assert early.status_code == 409 and "follow-ups need a completed" in early.text
        await wait_terminal(runtime.store, investigation_id)

        first = await ask(client, investigation_id, "Why?")
        busy = await client.post(
            f"/api/v1/investigations/{investigation_id}/messages", json={"message": "And?"}
        )
        assert busy.status_code == 409 and "still running" in busy.text
        await read_sse(first["events_url"])

        # The same conversation over one WebSocket: errors as frames, then a turn's events.
        async with connect(api.replace("http://", "ws://") + "/api/v1/chat/ws") as socket:
            await socket.send(json.dumps({"investigation_id": "nope", "message": "Hi?"}))
            error = json.loads(await socket.recv())
            assert error["type"] == "error" and error["status"] == 404
            frame = {"investigation_id": investigation_id, "message": "Over the socket?"}
            await socket.send(json.dumps(frame))
            accepted = json.loads(await socket.recv())
            assert accepted["type"] == "accepted"
            kinds: list[str] = []
            while not kinds or kinds[-1] not in ("chat_completed", "chat_failed"):
                message = json.loads(await asyncio.wait_for(socket.recv(), 30))
                if message["type"] == "event":
                    assert message["event"]["payload"]["turn"] == accepted["turn"]
                    kinds.append(message["event"]["type"])
            assert kinds[0] == "chat_started" and kinds[-1] == "chat_completed"

        await runtime.redis.delete(f"{settings.redis.key_prefix}conv:{investigation_id}")
        expired = await client.post(
            f"/api/v1/investigations/{investigation_id}/messages", json={"message": "Still?"}
        )
        assert expired.status_code == 409 and "no conversation" in expired.text
