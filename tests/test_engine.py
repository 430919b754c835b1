"""HolmesEngine against a real HolmesGPT loop, a fake OpenAI-compatible LLM and a real Redis."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import redis

from holmes_stream.engine.base import (
    EngineCancelled,
    EngineRequest,
    PermanentEngineError,
    TransientEngineError,
)
from holmes_stream.engine.holmes_engine import (
    FORWARDED_EVENTS,
    HolmesEngine,
    InvestigationTimeout,
    build_ask,
    classify_exception,
)
from holmes_stream.schemas import Alert, InvestigationRecord, InvestigationResult, Status
from holmes_stream.settings import LLMSettings

PREFIX = "hs-test:"
EARLIER_ANALYSIS = "Earlier: the disk of node-7 filled up because of runaway logs."


# -- a throwaway scripted LLM -------------------------------------------------------------------


class FakeLLM:
    """POST /v1/chat/completions: call the first offered tool, then answer quoting its output."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.fail_status: int | None = None
        self.delay = 0.0
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers["content-length"]))
                with fake._lock:
                    fake.bodies.append(raw)
                if fake.delay:
                    time.sleep(fake.delay)
                if fake.fail_status is not None:
                    self._send(fake.fail_status, {"error": {"message": "scripted failure"}})
                    return
                self._send(200, fake.reply(json.loads(raw)))

            def _send(self, status: int, payload: dict[str, Any]) -> None:
                out = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.api_base = f"http://127.0.0.1:{self.port}/v1"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @staticmethod
    def reply(body: dict[str, Any]) -> dict[str, Any]:
        tool_messages = [m for m in body["messages"] if m["role"] == "tool"]
        message: dict[str, Any]
        if tool_messages or not body.get("tools"):
            content = tool_messages[-1]["content"] if tool_messages else "no tools"
            if not isinstance(content, str):
                content = json.dumps(content)
            message = {
                "role": "assistant",
                "content": f"## Root cause\n\nThe tool said:\n{content}",
            }
            finish = "stop"
        else:
            function = body["tools"][0]["function"]
            parameters = function.get("parameters", {})
            properties = parameters.get("properties", {})
            arguments = json.dumps(
                {
                    # Strict tool schemas list every parameter as required and mark optional ones
                    # nullable; a real model sends null for those.
                    name: None if _nullable(properties.get(name, {})) else "unknown"
                    for name in parameters.get("required", [])
                }
            )
            message = {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": function["name"], "arguments": arguments},
                    }
                ],
            }
            finish = "tool_calls"
        return {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": 1700000000,
            "model": body["model"],
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": {"prompt_tokens": 1200, "completion_tokens": 40, "total_tokens": 1240},
        }

    def reset(self) -> None:
        self.fail_status = None
        self.delay = 0.0
        with self._lock:
            self.bodies.clear()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _nullable(schema: dict[str, Any]) -> bool:
    types = schema.get("type")
    branches = schema.get("anyOf") or []
    return (
        types == "null"
        or (isinstance(types, list) and "null" in types)
        or any(b.get("type") == "null" for b in branches)
    )


# -- fixtures ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--save", "", "--appendonly", "no", "--daemonize", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    try:
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        yield url
    finally:
        client.close()
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def fake_llm() -> Iterator[FakeLLM]:
    fake = FakeLLM()
    yield fake
    fake.close()


@pytest.fixture(autouse=True)
def _reset_fake(fake_llm: FakeLLM) -> None:
    fake_llm.reset()


def settings_for(fake: FakeLLM, **overrides: Any) -> LLMSettings:
    values: dict[str, Any] = {
        "model": "openai/scripted",
        "api_base": fake.api_base,
        "api_key": "dummy",
        "max_steps": 5,
        "timeout_seconds": 30.0,
    }
    values.update(overrides)
    return LLMSettings(**values)


@pytest.fixture(scope="module")
def engine(fake_llm: FakeLLM, redis_url: str) -> HolmesEngine:
    from holmes_stream.engine.toolsets import history_toolset

    seed_history(redis_url)
    eng = HolmesEngine(settings_for(fake_llm), extra_toolsets=[history_toolset(redis_url, PREFIX)])
    eng.warm()
    return eng


def seed_history(url: str) -> None:
    client = redis.Redis.from_url(url)
    alert = make_alert()
    created = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    record = InvestigationRecord(
        id="inv-earlier",
        episode_key="ep-1",
        fingerprint=alert.identity(),
        status=Status.COMPLETED,
        alert=alert,
        created_at=created,
        result=InvestigationResult(analysis=EARLIER_ANALYSIS, model="openai/scripted"),
    )
    score = created.timestamp()
    client.set(f"{PREFIX}inv:{record.id}", record.model_dump_json())
    for index in (
        f"idx:fp:{record.fingerprint}",
        f"idx:alertname:{alert.alertname}",
        f"idx:ns:{alert.namespace}",
        "idx:all",
    ):
        client.zadd(f"{PREFIX}{index}", {record.id: score})
    client.close()


def make_alert(**labels: str) -> Alert:
    return Alert(
        labels={
            "alertname": "NodeDiskFull",
            "namespace": "storage",
            "severity": "critical",
            **labels,
        },
        annotations={"summary": "Disk on node-7 is 97% full"},
        startsAt=datetime.now(UTC) - timedelta(minutes=5),
        generatorURL="http://prometheus/graph?g0.expr=disk",
        fingerprint="fp-node7",
    )


def make_request(**kwargs: Any) -> EngineRequest:
    return EngineRequest(
        investigation_id="inv-1", alert=kwargs.pop("alert", make_alert()), **kwargs
    )


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, event: str, payload: dict[str, Any]) -> None:
        json.dumps(payload)  # every payload must be JSON-safe
        self.events.append((event, payload))

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.events]


# -- the happy path ---------------------------------------------------------------------------


def test_investigation_runs_the_real_loop(engine: HolmesEngine, fake_llm: FakeLLM) -> None:
    recorder = Recorder()
    result = engine.investigate(make_request(), recorder, threading.Event())

    assert EARLIER_ANALYSIS in result.analysis  # the tool's output made it into the answer
    assert result.model == "openai/scripted" == engine.model_name
    assert result.num_llm_calls == 2
    assert result.prompt_tokens == 2400 and result.completion_tokens == 80
    assert result.total_tokens == 2480
    assert result.duration_seconds > 0
    [call] = result.tool_calls
    assert call.tool_name == "investigation_history"
    assert call.toolset == "holmes_stream"
    assert call.status == "success"
    assert "inv-earlier" in call.output_excerpt and len(call.output_excerpt) <= 2000

    names = recorder.names
    assert set(names) <= FORWARDED_EVENTS
    assert names.index("start_tool_calling") < names.index("tool_calling_result")
    assert names[-1] == "ai_answer_end"
    assert "token_count" in names
    tool_event = dict(recorder.events)["tool_calling_result"]
    assert tool_event["tool_name"] == "investigation_history" and tool_event["status"] == "success"
    answer = dict(recorder.events)["ai_answer_end"]
    assert "messages" not in answer and answer["num_llm_calls"] == 2
    assert len(fake_llm.bodies) == 2


def test_prompt_carries_alert_question_and_context(engine: HolmesEngine, fake_llm: FakeLLM) -> None:
    request = make_request(question="Focus on log volume", context={"runbook": "https://rb/disk"})
    engine.investigate(request, Recorder(), threading.Event())

    first = json.loads(fake_llm.bodies[0])
    system, user = first["messages"][0], first["messages"][1]
    assert system["role"] == "system" and "HolmesGPT" in system["content"]
    assert user["role"] == "user"
    text = user["content"]
    assert "root-cause analysis" in text
    assert '"alertname": "NodeDiskFull"' in text and '"fingerprint": "fp-node7"' in text
    assert '"generatorURL": "http://prometheus/graph?g0.expr=disk"' in text
    assert "Focus on log volume" in text and "https://rb/disk" in text
    assert [t["function"]["name"] for t in first["tools"]] == ["investigation_history"]
    assert first["temperature"] == 0.0
    assert "num_retries" not in first and "max_retries" not in first


def test_build_ask_without_extras() -> None:
    ask = build_ask(make_request())
    assert "<alert>" in ask and "Additional instructions" not in ask and "<context>" not in ask


def test_concurrent_investigations(engine: HolmesEngine) -> None:
    results: list[InvestigationResult] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(engine.investigate(make_request(), lambda e, p: None, threading.Event()))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    assert len(results) == 8
    assert all(EARLIER_ANALYSIS in r.analysis for r in results)
    # Their requests ran on lent clients (``llm_clients``), given back: at most one per request
    # that was in flight at once.
    assert 1 <= engine._clients.idle() <= 8


def test_toolset_selection(engine: HolmesEngine) -> None:
    result = engine.investigate(
        make_request(toolsets=["holmes_stream"]), Recorder(), threading.Event()
    )
    assert result.tool_calls[0].toolset == "holmes_stream"
    with pytest.raises(PermanentEngineError, match="not enabled"):
        engine.investigate(make_request(toolsets=["nope"]), Recorder(), threading.Event())


def test_unknown_model_is_permanent(engine: HolmesEngine) -> None:
    with pytest.raises(PermanentEngineError):
        engine.investigate(make_request(model="openai/other"), Recorder(), threading.Event())


# -- failures ---------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 502, 503, 429])
def test_provider_failures_are_transient(
    engine: HolmesEngine, fake_llm: FakeLLM, status: int
) -> None:
    fake_llm.fail_status = status
    with pytest.raises(TransientEngineError):
        engine.investigate(make_request(), Recorder(), threading.Event())
    assert len(fake_llm.bodies) == 1  # litellm/openai retries are off: ours are the only ones


@pytest.mark.parametrize("status", [400, 401, 404])
def test_client_errors_are_permanent(engine: HolmesEngine, fake_llm: FakeLLM, status: int) -> None:
    fake_llm.fail_status = status
    with pytest.raises(PermanentEngineError):
        engine.investigate(make_request(), Recorder(), threading.Event())


def test_connection_refused_is_transient(fake_llm: FakeLLM) -> None:
    dead = LLMSettings(model="openai/scripted", api_base=f"http://127.0.0.1:{free_port()}/v1")
    eng = HolmesEngine(dead)
    with pytest.raises(TransientEngineError):
        eng.investigate(make_request(), Recorder(), threading.Event())


def test_too_many_steps_is_permanent() -> None:
    error = classify_exception(Exception("Too many LLM calls - exceeded max_steps: 5/5"))
    assert isinstance(error, PermanentEngineError)


def test_cancel_between_steps(engine: HolmesEngine) -> None:
    cancel = threading.Event()
    recorder = Recorder()

    def emit(event: str, payload: dict[str, Any]) -> None:
        recorder(event, payload)
        if event == "tool_calling_result":
            cancel.set()

    with pytest.raises(EngineCancelled):
        engine.investigate(make_request(), emit, cancel)
    assert "ai_answer_end" not in recorder.names


def test_cancel_during_a_slow_llm_call_is_prompt(engine: HolmesEngine, fake_llm: FakeLLM) -> None:
    fake_llm.delay = 3.0
    cancel = threading.Event()
    threading.Timer(0.3, cancel.set).start()
    started = time.monotonic()
    with pytest.raises(EngineCancelled):
        engine.investigate(make_request(), Recorder(), cancel)
    assert time.monotonic() - started < 2.0


def test_cancelled_before_start(engine: HolmesEngine, fake_llm: FakeLLM) -> None:
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(EngineCancelled):
        engine.investigate(make_request(), Recorder(), cancel)
    assert fake_llm.bodies == []


def test_timeout_is_transient(fake_llm: FakeLLM, redis_url: str) -> None:
    fake_llm.delay = 3.0
    eng = HolmesEngine(settings_for(fake_llm, timeout_seconds=0.5))
    started = time.monotonic()
    with pytest.raises(InvestigationTimeout, match="timeout"):
        eng.investigate(make_request(), Recorder(), threading.Event())
    assert time.monotonic() - started < 2.0
    assert issubclass(InvestigationTimeout, TransientEngineError)


# -- the history toolset on its own -----------------------------------------------------------


def _invoke(toolset: Any, params: dict[str, Any]) -> Any:
    # The tool ignores its invoke context, so call _invoke directly without an LLM.
    return toolset.tools[0]._invoke(params, None)


def test_history_tool_picks_the_most_specific_index(redis_url: str) -> None:
    from holmes_stream.engine.toolsets import history_toolset, index_key

    assert index_key("p:", {"fingerprint": "f", "alertname": "a"}) == "p:idx:fp:f"
    assert index_key("p:", {"alertname": "a", "namespace": "n"}) == "p:idx:alertname:a"
    assert index_key("p:", {"namespace": "n"}) == "p:idx:ns:n"
    assert index_key("p:", {}) == "p:idx:all"

    seed_history(redis_url)
    toolset = history_toolset(redis_url, PREFIX)
    result = _invoke(toolset, {"fingerprint": "fp-node7", "limit": 3})
    assert result.status.value == "success"
    [item] = json.loads(result.data)
    assert item["id"] == "inv-earlier" and item["status"] == "completed"
    assert item["alertname"] == "NodeDiskFull" and item["namespace"] == "storage"
    assert item["analysis"] == EARLIER_ANALYSIS

    empty = _invoke(toolset, {"alertname": "NeverFired"})
    assert empty.status.value == "success" and empty.data == "No earlier investigations found."


def test_history_tool_lists_newest_first_within_its_limit_and_skips_expired(
    redis_url: str, uid: str
) -> None:
    from holmes_stream.engine.toolsets import history_toolset

    prefix = f"hist{uid}:"
    client = redis.Redis.from_url(redis_url)
    alert = make_alert()
    base = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    for n in range(4):
        created = base + timedelta(hours=n)
        record = InvestigationRecord(
            id=f"inv-{n}",
            episode_key=f"ep-{n}",
            fingerprint="fp-h",
            status=Status.COMPLETED,
            alert=alert,
            created_at=created,
        )
        if n != 2:  # inv-2's record expired; its index entry is still there
            client.set(f"{prefix}inv:{record.id}", record.model_dump_json())
        client.zadd(f"{prefix}idx:fp:fp-h", {record.id: created.timestamp()})
    client.close()
    toolset = history_toolset(redis_url, prefix)
    items = json.loads(_invoke(toolset, {"fingerprint": "fp-h", "limit": 3}).data)
    assert [i["id"] for i in items] == ["inv-3", "inv-1"]  # the newest three, one gone


def test_history_tool_reports_an_unreachable_store() -> None:
    from holmes_stream.engine.toolsets import history_toolset

    toolset = history_toolset(f"redis://127.0.0.1:{free_port()}/0", PREFIX)
    result = _invoke(toolset, {})
    assert result.status.value == "error" and "unavailable" in result.error
