"""Enrichment against a real Prometheus, the Context API test server and the session Redis.

Prometheus (Debian package, ``scripts/install-prometheus.sh``) scrapes a tiny exporter served
by this module every second, on loopback only, with its TSDB in a temp dir.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Gauge, start_http_server
from redis.asyncio import Redis

from holmes_stream.devstack.context_api import PLANTED_PASSWORD, ContextApiServer
from holmes_stream.devstack.stack import LocalStack
from holmes_stream.enrichment import Enricher, expr_from_generator_url
from holmes_stream.enrichment.breaker import BreakerState, CircuitBreaker, CircuitOpenError
from holmes_stream.enrichment.compact import bound, json_size
from holmes_stream.enrichment.context_api import ContextApiClient, alert_resource
from holmes_stream.enrichment.http import SourceError
from holmes_stream.schemas import Alert
from holmes_stream.settings import EnrichmentSettings, Settings
from tests.conftest import ARTIFACTS, free_port, load_fixture, make_settings

POD = "payment-api-7d9f8b6c5-x2x9k"


# --------------------------------------------------------------------------------------------
# A real Prometheus scraping an exporter the test controls
# --------------------------------------------------------------------------------------------


class LocalPrometheus:
    def __init__(self, root: Path, port: int, targets: list[str]) -> None:
        self.root = root
        self.port = port
        self.targets = targets
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60) -> None:
        binary = shutil.which("prometheus")
        assert binary, "prometheus not installed (scripts/install-prometheus.sh)"
        self.root.mkdir(parents=True, exist_ok=True)
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [
                {
                    "job_name": "kube-state-metrics",
                    "honor_labels": True,
                    "static_configs": [{"targets": self.targets}],
                }
            ],
        }
        # JSON is YAML: no YAML writer needed.
        (self.root / "prometheus.yml").write_text(json.dumps(config))
        argv = [
            binary,
            f"--config.file={self.root / 'prometheus.yml'}",
            f"--storage.tsdb.path={self.root / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--storage.tsdb.retention.time=1h",
            "--log.level=warn",
        ]
        log = open(self.root / "prometheus.log", "ab")  # the child keeps its own copy
        self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=self.root)
        log.close()
        deadline = time.monotonic() + timeout
        while not self._ready():
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited: {self._log_tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"prometheus not ready: {self._log_tail()}")
            time.sleep(0.1)

    def wait_for_series(self, expr: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            query = urllib.parse.urlencode({"query": expr})
            with urllib.request.urlopen(f"{self.url}/api/v1/query?{query}", timeout=2) as r:
                if json.loads(r.read())["data"]["result"]:
                    return
            time.sleep(0.2)
        raise TimeoutError(f"no series for {expr}: {self._log_tail()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def _log_tail(self) -> str:
        path = self.root / "prometheus.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""


@pytest.fixture(scope="module")
def prometheus() -> Iterator[LocalPrometheus]:
    if shutil.which("prometheus") is None:
        if os.environ.get("CI"):
            pytest.fail("prometheus missing: CI must run scripts/install-prometheus.sh")
        pytest.skip("prometheus not installed (bash scripts/install-prometheus.sh)")
    registry = CollectorRegistry()
    waiting = Gauge(
        "kube_pod_container_status_waiting_reason",
        "Container waiting reasons (as kube-state-metrics exports them)",
        ["namespace", "pod", "container", "reason"],
        registry=registry,
    )
    waiting.labels("checkout", POD, "payment-api", "CrashLoopBackOff").set(1)
    waiting.labels("checkout", "payment-api-7d9f8b6c5-q8w4z", "payment-api", "Running").set(0)
    exporter_port = free_port()
    server, thread = start_http_server(exporter_port, addr="127.0.0.1", registry=registry)
    root = Path(tempfile.mkdtemp(prefix="prometheus-", dir=ARTIFACTS))
    prom = LocalPrometheus(root, free_port(), [f"127.0.0.1:{exporter_port}"])
    try:
        prom.start()
        prom.wait_for_series("kube_pod_container_status_waiting_reason")
        yield prom
    finally:
        prom.stop()
        server.shutdown()
        thread.join(5)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def context_api() -> Iterator[ContextApiServer]:
    data_dir = ARTIFACTS / f"context-api-{os.getpid()}"
    server = ContextApiServer(free_port(), data_dir=data_dir)
    server.start()
    yield server
    server.stop()
    shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture
def ctx(context_api: ContextApiServer) -> ContextApiServer:
    """The module's server with failure switches off and counters at zero."""
    context_api.configure(down=False, latency_seconds=0.0, token=None, not_found=[])
    context_api.reset()
    return context_api


@pytest.fixture
async def redis(stack: LocalStack) -> AsyncIterator[Redis]:
    client = Redis.from_url(stack.endpoints()["redis_url"])
    yield client
    await client.aclose()


def crashloop_alert(**changes: Any) -> Alert:
    raw = load_fixture("group-firing-crashloop.json")["alerts"][0]
    alert = Alert.model_validate(raw)
    return alert.model_copy(update=changes) if changes else alert


def enrichment_settings(
    stack: LocalStack,
    uid: str,
    *,
    context_api_url: str | None = None,
    prometheus_url: str | None = None,
    **overrides: Any,
) -> Settings:
    settings = make_settings(stack, uid)
    api = {"url": context_api_url, "retries": 1, "backoff_seconds": 0.01, "timeout_seconds": 2.0}
    api |= overrides.pop("context_api", {})
    prom = {"url": prometheus_url, "timeout_seconds": 2.0, "retries": 0}
    settings.enrichment = EnrichmentSettings.model_validate(
        {"context_api": api, "prometheus": prom, "timeout_seconds": 5.0} | overrides
    )
    return settings


async def enrich_once(settings: Settings, redis: Redis | None, alert: Alert) -> Any:
    enricher = Enricher.from_settings(settings, redis)
    try:
        return await enricher.enrich(alert)
    finally:
        await enricher.aclose()


# --------------------------------------------------------------------------------------------
# Pure pieces
# --------------------------------------------------------------------------------------------


def test_expression_and_resource_come_from_the_alert() -> None:
    alert = crashloop_alert()
    assert expr_from_generator_url(alert.generatorURL) == (
        'max_over_time(kube_pod_container_status_waiting_reason{reason="CrashLoopBackOff"}[5m])'
        " >= 1"
    )
    assert expr_from_generator_url(None) is None
    assert expr_from_generator_url("http://prometheus:9090/graph?g0.tab=1") is None
    assert alert_resource(alert.labels) == POD
    assert alert_resource({"alertname": "TargetDown", "service": "orders"}) == "orders"


def test_breaker_opens_after_threshold_and_half_opens_after_cool_down() -> None:
    now = [0.0]
    breaker = CircuitBreaker(3, reset_seconds=10, clock=lambda: now[0], name="t")
    for _ in range(2):
        breaker.record_failure()
    assert breaker.allow() and breaker.state is BreakerState.CLOSED
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN and not breaker.allow()
    with pytest.raises(CircuitOpenError):
        breaker.check()
    now[0] = 10.5
    assert breaker.allow()  # the one trial
    assert not breaker.allow()  # no second trial while the first is out
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN  # a failed trial re-opens at once
    now[0] = 21.0
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED and breaker.consecutive_failures == 0


def test_bound_keeps_structure_within_budget() -> None:
    series = [{"labels": {"pod": f"p-{i}" * 20}, "values": list(range(50))} for i in range(200)]
    big = {"series": series}
    small = bound(big, 1500)
    assert json_size(small) <= 1500
    assert isinstance(small, dict) and "series" in small
    assert bound({"a": 1}, 100) == {"a": 1}


# --------------------------------------------------------------------------------------------
# Real services
# --------------------------------------------------------------------------------------------


async def test_prometheus_evaluates_the_alert_expression(
    prometheus: LocalPrometheus, stack: LocalStack, uid: str
) -> None:
    settings = enrichment_settings(stack, uid, prometheus_url=prometheus.url)
    result = await enrich_once(settings, None, crashloop_alert())
    assert result.sources["prometheus"] == "ok", result.sources
    prom = result.context["prometheus"]
    assert prom["expr"].startswith("max_over_time(kube_pod_container_status_waiting_reason")
    assert prom["window_seconds"] == 1800 and prom["step_seconds"] == 60
    # Only the crash-looping pod passes `>= 1`; the other one's value is 0.
    assert prom["series_total"] == 1
    (series,) = prom["series"]
    assert series["labels"]["pod"] == POD
    assert series["labels"]["reason"] == "CrashLoopBackOff"
    assert 1 <= len(series["values"]) <= 5
    assert series["values"][-1][1] == 1
    # The Context API is not configured here.
    assert result.sources["kubernetes"] == "skipped: not configured"


async def test_prometheus_series_are_bounded(
    prometheus: LocalPrometheus, stack: LocalStack, uid: str
) -> None:
    settings = enrichment_settings(stack, uid, prometheus_url=prometheus.url)
    settings.enrichment.prometheus.max_series = 1
    settings.enrichment.prometheus.points_per_series = 2
    # Every series of the metric (2 pods), not just the alerting one.
    url = "http://prometheus:9090/graph?" + urllib.parse.urlencode(
        {"g0.expr": "kube_pod_container_status_waiting_reason", "g0.tab": "1"}
    )
    result = await enrich_once(settings, None, crashloop_alert(generatorURL=url))
    prom = result.context["prometheus"]
    assert prom["series_total"] == 2 and prom["truncated"] is True
    assert len(prom["series"]) == 1 and len(prom["series"][0]["values"]) <= 2


async def test_all_sources_together_redacted_and_bounded(
    prometheus: LocalPrometheus, ctx: ContextApiServer, stack: LocalStack, uid: str, redis: Redis
) -> None:
    settings = enrichment_settings(
        stack, uid, context_api_url=ctx.base_url, prometheus_url=prometheus.url
    )
    result = await enrich_once(settings, redis, crashloop_alert())
    assert result.sources == {
        "kubernetes": "ok",
        "metrics": "ok",
        "action_history": "ok",
        "prometheus": "ok",
    }
    k8s = result.context["kubernetes"]
    assert k8s["resource"] == POD and k8s["context"]["owner"]["name"] == "payment-api"
    assert k8s["labels"]["reason"] == "CrashLoopBackOff"  # labels went out as the query
    assert result.context["metrics"]["time_range"] == "1h"
    assert result.context["action_history"]["alert_type"] == "KubePodCrashLooping"
    text = json.dumps(result.context)
    # The credential planted in the pod's env never reaches the prompt; the digest does.
    assert PLANTED_PASSWORD not in text
    assert "[REDACTED:url_password]" in text
    assert "@sha256:" in text
    assert json_size(result.context) <= settings.enrichment.max_context_chars
    assert "## Context gathered" in result.as_prompt()
    assert ctx.stats()["by_endpoint"] == {"action_history": 1, "kubernetes": 1, "metrics": 1}


async def test_cache_serves_the_second_call_without_http(
    ctx: ContextApiServer, stack: LocalStack, uid: str, redis: Redis
) -> None:
    settings = enrichment_settings(stack, uid, context_api_url=ctx.base_url)
    first = await enrich_once(settings, redis, crashloop_alert())
    assert first.sources["kubernetes"] == "ok"
    requests = ctx.stats()["requests"]
    assert requests == 3
    second = await enrich_once(settings, redis, crashloop_alert())
    assert {second.sources[s] for s in ("kubernetes", "metrics", "action_history")} == {"cached"}
    assert second.context == first.context
    assert ctx.stats()["requests"] == requests
    keys = [k.decode() async for k in redis.scan_iter(match=f"t{uid}:ctx:*")]
    assert len(keys) == 3
    assert 0 < await redis.ttl(keys[0]) <= settings.enrichment.context_api.cache_ttl_seconds


async def test_everything_down_is_recorded_not_raised(
    ctx: ContextApiServer, stack: LocalStack, uid: str
) -> None:
    ctx.configure(down=True)
    closed_port = free_port()  # nothing listens there: Prometheus is "down"
    settings = enrichment_settings(
        stack, uid, context_api_url=ctx.base_url, prometheus_url=f"http://127.0.0.1:{closed_port}"
    )
    # Redis down too: the cache must only miss.
    dead_redis = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.5)
    try:
        result = await enrich_once(settings, dead_redis, crashloop_alert())
    finally:
        await dead_redis.aclose()
    assert result.context == {}
    assert result.sources["kubernetes"] == "failed: HTTP 503"
    assert result.sources["metrics"] == "failed: HTTP 503"
    assert result.sources["action_history"] == "failed: HTTP 503"
    assert result.sources["prometheus"].startswith("failed: connection error")
    assert result.as_prompt() == ""
    # retries=1: two requests per endpoint.
    assert ctx.stats()["by_endpoint"] == {"action_history": 2, "kubernetes": 2, "metrics": 2}


async def test_breaker_opens_and_stops_calling(
    ctx: ContextApiServer, stack: LocalStack, uid: str
) -> None:
    ctx.configure(down=True)
    settings = enrichment_settings(
        stack,
        uid,
        context_api_url=ctx.base_url,
        context_api={"retries": 0, "cache_ttl_seconds": 0},
        breaker_failures=3,
        breaker_reset_seconds=0.5,
    )
    enricher = Enricher.from_settings(settings, None)
    alert = crashloop_alert()
    try:
        # Three calls per enrichment (kubernetes, metrics, history): one enrichment opens it.
        first = await enricher.enrich(alert)
        assert first.sources["kubernetes"] == "failed: HTTP 503"
        assert ctx.stats()["requests"] == 3
        for _ in range(3):
            later = await enricher.enrich(alert)
            assert {later.sources[s] for s in ("kubernetes", "metrics", "action_history")} == {
                "circuit open"
            }
        assert ctx.stats()["requests"] == 3  # no HTTP while open

        # After the cool-down one trial goes out; the service is back, so the circuit closes.
        ctx.configure(down=False)
        await asyncio.sleep(0.6)
        trial = await enricher.enrich(alert)
        statuses = sorted(trial.sources[s] for s in ("kubernetes", "metrics", "action_history"))
        assert statuses.count("ok") == 1 and statuses.count("circuit open") == 2
        healed = await enricher.enrich(alert)
        assert healed.sources["kubernetes"] == healed.sources["metrics"] == "ok"
    finally:
        await enricher.aclose()


async def test_slow_source_times_out(ctx: ContextApiServer, stack: LocalStack, uid: str) -> None:
    ctx.configure(latency_seconds=1.5)
    settings = enrichment_settings(
        stack,
        uid,
        context_api_url=ctx.base_url,
        context_api={"retries": 0, "timeout_seconds": 10.0, "cache_ttl_seconds": 0},
        timeout_seconds=0.3,
    )
    started = time.monotonic()
    result = await enrich_once(settings, None, crashloop_alert())
    assert time.monotonic() - started < 1.2
    assert result.sources["kubernetes"] == "failed: timeout after 0.3s"


async def test_token_and_not_found(ctx: ContextApiServer, stack: LocalStack, uid: str) -> None:
    ctx.configure(token="s3cret-token", not_found=[POD])
    plain = enrichment_settings(stack, uid, context_api_url=ctx.base_url)
    denied = await enrich_once(plain, None, crashloop_alert())
    assert denied.sources["action_history"].startswith("failed: HTTP 401")

    authed = enrichment_settings(
        stack, uid, context_api_url=ctx.base_url, context_api={"token": "s3cret-token"}
    )
    result = await enrich_once(authed, None, crashloop_alert())
    assert result.sources["action_history"] == "ok"
    assert result.sources["kubernetes"].startswith("failed: HTTP 404")
    # A 4xx is an answer, not an outage: no retries were spent on it.
    assert ctx.stats()["by_status"]["404"] == 2


async def test_unconfigured_disabled_and_unaddressable(
    ctx: ContextApiServer, stack: LocalStack, uid: str
) -> None:
    alert = crashloop_alert()
    nothing = await enrich_once(make_settings(stack, uid), None, alert)
    assert set(nothing.sources.values()) == {"skipped: not configured"}
    assert nothing.context == {}

    off = enrichment_settings(stack, uid, context_api_url=ctx.base_url, enabled=False)
    disabled = await enrich_once(off, None, alert)
    assert set(disabled.sources.values()) == {"skipped: disabled"}

    target_down = Alert.model_validate(load_fixture("group-firing-targetdown.json")["alerts"][0])
    target_down = target_down.model_copy(update={"labels": {"alertname": "TargetDown"}})
    on = enrichment_settings(stack, uid, context_api_url=ctx.base_url)
    partial = await enrich_once(on, None, target_down)
    assert partial.sources["kubernetes"].startswith("skipped: alert labels name no")
    assert partial.sources["action_history"] == "ok"
    assert partial.sources["prometheus"] == "skipped: not configured"
    assert ctx.stats()["by_endpoint"] == {"action_history": 1}


async def test_context_api_health(ctx: ContextApiServer) -> None:
    client = ContextApiClient(ctx.base_url)
    try:
        assert (await client.health())["status"] == "healthy"
        ctx.configure(down=True)
        with pytest.raises(SourceError, match="HTTP 503"):
            await client.health()
        assert ctx.stats()["by_endpoint"]["health"] == 2
    finally:
        await client.aclose()
