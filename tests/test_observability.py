"""Observability on the real stack: log context, W3C trace propagation, live metric names.

- JSON log lines emitted during an investigation, HolmesGPT's own from its threads included,
  carry the investigation id, the alert fingerprint and the tenant.
- With tracing on, an incoming ``traceparent`` on a REST submit continues through the alert
  message's Kafka headers, the worker's processing span and the result message's headers.
- The running service's ``/metrics`` exposes a sample of every metric name the
  PrometheusRule and the Grafana dashboard use.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import secrets
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import yaml

from holmes_stream import logcontext, telemetry
from holmes_stream.logs import JsonFormatter
from holmes_stream.settings import Settings, TelemetrySettings
from tests.conftest import collect, fresh, load_fixture, make_settings
from tests.test_deploy import DEPLOY, FOREIGN_METRICS, dashboard_exprs, metric_names_in

SUBMIT = "/api/v1/investigations"


def alert(uid: str, tag: str) -> dict[str, Any]:
    return fresh(load_fixture("single-alert.json"), f"{uid}-{tag}")


class _Capture:
    """JSON log lines of every logger, formatted as ``logs.configure`` does."""

    def __init__(self) -> None:
        self.stream = io.StringIO()
        self.handler = logging.StreamHandler(self.stream)
        self.handler.setFormatter(JsonFormatter())
        self.handler.addFilter(logcontext.ContextFilter())

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stream.getvalue().splitlines() if line]


@pytest.fixture
def json_logs() -> Iterator[_Capture]:
    capture = _Capture()
    root = logging.getLogger()
    holmes = logging.getLogger("holmes")
    levels = root.level, holmes.level
    root.addHandler(capture.handler)
    root.setLevel(logging.INFO)
    holmes.setLevel(logging.DEBUG)
    try:
        yield capture
    finally:
        root.removeHandler(capture.handler)
        root.setLevel(levels[0])
        holmes.setLevel(levels[1])


async def submit(
    api: str, payload: dict[str, Any], headers: dict[str, str] | None = None
) -> httpx.Response:
    async with httpx.AsyncClient(base_url=api, timeout=30) as client:
        response = await client.post(SUBMIT, json=payload, headers=headers or {})
    assert response.status_code == 202, response.text
    return response


def finished(investigation_id: str) -> Any:
    def until(messages: list[Any]) -> bool:
        return any(_value(m)["id"] == investigation_id for m in messages)

    return until


def _value(message: Any) -> dict[str, Any]:
    return message if isinstance(message, dict) else json.loads(message.value)


def _headers(message: Any) -> dict[str, str]:
    return {k: v.decode() for k, v in message.headers}


def _trace_id(traceparent: str) -> str:
    version, trace_id, span_id, flags = traceparent.split("-")
    assert version == "00" and len(trace_id) == 32 and len(span_id) == 16 and flags, traceparent
    return trace_id


# --------------------------------------------------------------------------- logs


async def test_investigation_log_lines_carry_the_context(
    settings: Settings, uid: str, start_worker, start_api, json_logs: _Capture
) -> None:
    await start_worker(settings)
    api = await start_api(settings)
    payload = {
        "kind": "investigation_request",
        "alert": alert(uid, "logs"),
        "tenant": f"tenant-{uid}",
    }
    response = await submit(api, payload, {"X-Request-ID": f"req-{uid}"})
    assert response.headers["x-request-id"] == f"req-{uid}"
    investigation_id = response.json()["investigations"][0]["id"]
    records = await collect(
        settings.kafka.bootstrap_servers, settings.kafka.results_topic, finished(investigation_id)
    )
    record = next(r for r in records if r["id"] == investigation_id)
    assert record["status"] == "completed", record

    ours = [line for line in json_logs.lines() if line.get("investigation_id") == investigation_id]
    assert ours, "no log line carried the investigation id"
    for line in ours:
        assert line["fingerprint"] == record["fingerprint"], line
        assert line["tenant"] == f"tenant-{uid}", line
    # HolmesGPT's own lines (its cost accounting at DEBUG), logged on the engine's loop thread,
    # carry it too.
    holmes = [line for line in ours if line["logger"].startswith("holmes.")]
    assert holmes, sorted({line["logger"] for line in json_logs.lines()})
    # Nothing leaks out of the investigation: the API's lines have the request id instead.
    api_lines = [line for line in json_logs.lines() if line.get("request_id") == f"req-{uid}"]
    assert all("fingerprint" not in line for line in api_lines)


# --------------------------------------------------------------------------- tracing


@pytest.fixture
def spans() -> Any:
    """Tracing on for the process, every finished span also kept in memory."""
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    tel = telemetry.setup(TelemetrySettings(enabled=True, exporter="none"))
    assert tel is not None
    exporter = InMemorySpanExporter()
    tel.add_exporter(exporter)
    yield exporter
    exporter.shutdown()


async def test_trace_context_flows_from_http_through_kafka_to_the_result(
    stack, uid: str, start_worker, start_api, spans: Any, json_logs: _Capture
) -> None:
    settings = make_settings(stack, uid).model_copy(
        update={"telemetry": TelemetrySettings(enabled=True, exporter="none")}
    )
    await start_worker(settings)
    api = await start_api(settings)
    # Three investigations at once, each in its own trace: their progress events are written
    # together, yet each one's events carry its own trace.
    trace_ids = [secrets.token_hex(16) for _ in range(3)]
    responses = await asyncio.gather(
        *(
            submit(
                api, alert(uid, f"trace{i}"), {"traceparent": f"00-{t}-{secrets.token_hex(8)}-01"}
            )
            for i, t in enumerate(trace_ids)
        )
    )
    traces = {
        r.json()["investigations"][0]["id"]: t for r, t in zip(responses, trace_ids, strict=True)
    }
    investigation_id, trace_id = next(iter(traces.items()))
    kafka = settings.kafka

    # Each alert message carries its caller's trace in its own traceparent header.
    alerts = await collect(
        kafka.bootstrap_servers, kafka.alerts_topic, lambda m: len(m) >= 3, decode=False
    )
    assert {_trace_id(_headers(m)["traceparent"]) for m in alerts} == set(trace_ids)

    # So does the result the worker published, and the record says which trace it was.
    results = await collect(
        kafka.bootstrap_servers, kafka.results_topic, finished(investigation_id), decode=False
    )
    result = next(m for m in results if _value(m)["id"] == investigation_id)
    assert _value(result)["status"] == "completed"
    assert _trace_id(_headers(result)["traceparent"]) == trace_id
    assert _value(result)["source"]["trace_id"] == trace_id

    def all_finished(got: list[Any]) -> bool:
        ended = {_value(m)["investigation_id"] for m in got if _value(m)["type"] == "completed"}
        return ended >= set(traces)

    progress = await collect(
        kafka.bootstrap_servers, kafka.progress_topic, all_finished, decode=False
    )
    assert all_finished(progress)
    for m in progress:
        assert _trace_id(_headers(m)["traceparent"]) == traces[_value(m)["investigation_id"]]

    # The spans: the HTTP request, the alert's publish, the worker's processing of it, the
    # result's publish — one trace, exported by the SDK.
    for _ in range(50):
        names = {s.name for s in spans.get_finished_spans() if _hex(s) == trace_id}
        if f"{kafka.results_topic} publish" in names and f"{kafka.alerts_topic} process" in names:
            break
        await asyncio.sleep(0.1)
    assert f"POST {SUBMIT}" in names, names
    assert f"{kafka.alerts_topic} publish" in names, names
    assert f"{kafka.alerts_topic} process" in names, names
    assert f"{kafka.results_topic} publish" in names, names
    process = next(
        s
        for s in spans.get_finished_spans()
        if s.name == f"{kafka.alerts_topic} process" and _hex(s) == trace_id
    )
    assert process.kind.name == "CONSUMER" and process.links, "linked to FastStream's batch span"

    # The JSON logs of the investigation, HolmesGPT's thread included, name the trace.
    ours = [line for line in json_logs.lines() if line.get("investigation_id") == investigation_id]
    assert ours and all(line.get("trace_id") == trace_id for line in ours), ours[:3]
    assert any(line["logger"].startswith("holmes.") for line in ours)


def _hex(span: Any) -> str:
    return format(span.context.trace_id, "032x")


def test_tracing_is_off_by_default() -> None:
    assert Settings().telemetry.enabled is False
    assert telemetry.setup(TelemetrySettings()) is None
    assert telemetry._traces_url("http://collector:4318") == "http://collector:4318/v1/traces"
    assert telemetry._traces_url("http://c:4318/custom/traces") == "http://c:4318/custom/traces"


# --------------------------------------------------------------------------- live metrics


def _sample_names(text: str) -> set[str]:
    """Names that have at least one sample line (not merely HELP/TYPE lines)."""
    return {
        re.split(r"[{\s]", line, maxsplit=1)[0]
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


def _names_used() -> set[str]:
    rule = yaml.safe_load((DEPLOY / "base" / "prometheusrule.yaml").read_text())
    used: set[str] = set()
    for group in rule["spec"]["groups"]:
        for r in group["rules"]:
            used |= metric_names_in(r["expr"])
    dash = json.loads((DEPLOY / "grafana" / "holmes-stream-dashboard.json").read_text())
    exprs = dashboard_exprs() + [
        v["query"]["query"] if isinstance(v.get("query"), dict) else v.get("query", "")
        for v in dash["templating"]["list"]
        if v.get("type") == "query"
    ]
    for expr in exprs:
        expr = re.sub(r"\$\{?\w+\}?", "", expr)
        expr = re.sub(r"label_values\(\s*([^,()]+?)\s*,\s*\w+\s*\)", r"\1", expr)
        used |= metric_names_in(expr)
    return used - FOREIGN_METRICS


async def test_live_metrics_cover_rules_and_dashboard(
    settings: Settings, uid: str, start_worker, start_api
) -> None:
    runtime = await start_worker(settings)
    api = await start_api(settings, runtime)  # worker and API in one process, as `run` does
    response = await submit(api, alert(uid, "metrics"))
    investigation_id = response.json()["investigations"][0]["id"]
    kafka = settings.kafka
    await collect(kafka.bootstrap_servers, kafka.results_topic, finished(investigation_id))

    used = _names_used()
    assert len(used) >= 15, used
    topic = f'topic="{kafka.alerts_topic}"'
    async with httpx.AsyncClient(base_url=api, timeout=30) as client:
        # An SSE client of the finished investigation (its stream ends after the terminal event).
        async with client.stream("GET", f"{SUBMIT}/{investigation_id}/events") as events:
            assert events.status_code == 200
            async for _ in events.aiter_lines():
                pass
        for _ in range(60):  # the offset commit (and its lag sample) follows within a second
            text = (await client.get("/metrics")).text
            if f"holmes_stream_consumer_lag_messages{{{topic}" in text:
                break
            await asyncio.sleep(0.25)
    missing = sorted(used - _sample_names(text))
    assert not missing, f"no sample of {missing} in the running service's /metrics"
    # This run's own traffic is in it, not only other tests'.
    lag = re.findall(rf"holmes_stream_consumer_lag_messages\{{[^}}]*{topic}[^}}]*\}} (\S+)", text)
    assert lag and float(lag[0]) == 0.0, lag
    assert re.search(rf"holmes_stream_alerts_consumed_total\{{{topic}\}} [1-9]", text)
    llm = r'holmes_stream_llm_request_duration_seconds_count\{model="[^"]+",outcome="ok"\} [1-9]'
    assert re.search(llm, text), "no LLM request timed"
