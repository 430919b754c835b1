"""OpenTelemetry tracing, off unless ``HOLMES_STREAM_TELEMETRY__ENABLED=true``.

W3C trace context (``traceparent``) travels through HTTP (Litestar's OpenTelemetry plugin)
and through Kafka headers (FastStream's ``KafkaTelemetryMiddleware`` on the broker): a REST
submission, the alert message it publishes, the worker's processing of that message and the
result and progress messages it publishes all share one trace id. The trace id is also in the
JSON logs (``logcontext.ContextFilter``) and in the record's ``source.trace_id``.

The OpenTelemetry SDK and instrumentations come with the ``otel`` extra and are imported only
when tracing is enabled; with tracing off this module costs nothing.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

from holmes_stream.settings import TelemetrySettings

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Tracer

log = logging.getLogger(__name__)
T = TypeVar("T")

INSTRUMENTATION_NAME = "holmes_stream"


@dataclass
class Telemetry:
    """The process's tracer provider; built once, shared by the broker and the HTTP app."""

    settings: TelemetrySettings
    provider: TracerProvider
    tracer: Tracer

    def add_exporter(self, exporter: SpanExporter) -> None:
        """Also send every finished span to ``exporter`` at once (tests, debugging)."""
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor

        self.provider.add_span_processor(SimpleSpanProcessor(exporter))

    def kafka_middleware(self) -> Any:
        from faststream.kafka.opentelemetry import KafkaTelemetryMiddleware

        return KafkaTelemetryMiddleware(tracer_provider=self.provider)

    def litestar_plugin(self) -> Any:
        from litestar.plugins.opentelemetry import OpenTelemetryConfig, OpenTelemetryPlugin

        return OpenTelemetryPlugin(
            OpenTelemetryConfig(
                tracer_provider=self.provider,
                # One span per request: SSE streams would otherwise add one per event sent.
                exclude_spans=["receive", "send"],
                # Never copy credentials into span attributes.
                http_capture_headers_sanitize_fields=["authorization", "x-api-key", "cookie"],
            )
        )


_lock = threading.Lock()
_current: Telemetry | None = None


def setup(settings: TelemetrySettings) -> Telemetry | None:
    """The process's telemetry, built on first use; ``None`` when tracing is off.

    One tracer provider per process: the first enabled configuration wins (a process has one
    ``Settings``; tests that enable tracing share it).
    """
    global _current
    if not settings.enabled:
        return None
    with _lock:
        if _current is None:
            _current = _build(settings)
        elif _current.settings != settings:
            log.warning("telemetry already configured in this process; keeping the first settings")
        return _current


def active() -> bool:
    return _current is not None


def current_ids() -> tuple[str, str] | None:
    """(trace id, span id) of the current span, hex, or None when there is none."""
    if _current is None:
        return None
    from opentelemetry import trace

    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")


def current_trace_id() -> str | None:
    ids = current_ids()
    return ids[0] if ids else None


def _build(settings: TelemetrySettings) -> Telemetry:
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
    except ImportError as exc:  # pragma: no cover - depends on the installed extras
        raise RuntimeError(
            "HOLMES_STREAM_TELEMETRY__ENABLED needs the OpenTelemetry SDK:"
            " pip install 'holmes-stream[otel]'"
        ) from exc

    provider = TracerProvider(
        resource=Resource.create({"service.name": settings.service_name}),
        sampler=ParentBased(TraceIdRatioBased(settings.sample_ratio)),
    )
    exporter = _exporter(settings)
    if exporter is not None:
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        provider.add_span_processor(BatchSpanProcessor(exporter))
    # The global provider too, so that other libraries' spans join the same traces.
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        trace.set_tracer_provider(provider)
    log.info(
        "tracing enabled",
        extra={"exporter": type(exporter).__name__ if exporter else None},
    )
    return Telemetry(settings, provider, provider.get_tracer(INSTRUMENTATION_NAME))


def _exporter(settings: TelemetrySettings) -> SpanExporter | None:
    kind = settings.exporter
    if kind == "auto":
        kind = "otlp" if settings.otlp_endpoint else "console"
    if kind == "none":
        return None
    if kind == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        # One JSON line per span on stdout (the logs go to stderr).
        return ConsoleSpanExporter(formatter=lambda span: span.to_json(indent=None) + "\n")
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter(endpoint=_traces_url(settings.otlp_endpoint))


def _traces_url(endpoint: str | None) -> str | None:
    """A collector's base URL gets OTLP/HTTP's traces path; a full URL is kept."""
    if not endpoint:
        return None  # the exporter reads OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT itself
    if urlsplit(endpoint).path.strip("/"):
        return endpoint
    return endpoint.rstrip("/") + "/v1/traces"


# ------------------------------------------------------------------------------ Kafka records


def _headers(record: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in getattr(record, "headers", None) or ():
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        out[str(key)] = str(value)
    return out


def record_tracer(
    settings: TelemetrySettings,
) -> Callable[[Any, Coroutine[Any, Any, T]], Coroutine[Any, Any, T]]:
    """Wraps the processing of one consumed Kafka record in a span of its own trace.

    FastStream's middleware traces a fetched *batch* as one span linked to its messages; each
    record here continues the trace of its own ``traceparent`` header (linked to the batch
    span), or, without one, is a child of the batch span. Off: the coroutine itself.
    """
    telemetry = setup(settings)
    if telemetry is None:
        return _untraced

    from opentelemetry import trace
    from opentelemetry.trace import Link, SpanKind
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    propagator = TraceContextTextMapPropagator()
    tracer = telemetry.tracer

    async def traced(record: Any, work: Coroutine[Any, Any, T]) -> T:
        parent = propagator.extract(_headers(record))
        batch = trace.get_current_span().get_span_context()
        links = []
        if trace.get_current_span(parent).get_span_context().is_valid:
            if batch.is_valid:
                links.append(Link(batch))
            context = parent
        else:
            context = None  # the current one: the batch span
        attributes: dict[str, Any] = {
            "messaging.system": "kafka",
            "messaging.operation": "process",
            "messaging.destination.name": record.topic,
            "messaging.kafka.destination.partition": record.partition,
            "messaging.kafka.message.offset": record.offset,
        }
        with tracer.start_as_current_span(
            f"{record.topic} process",
            context=context,
            kind=SpanKind.CONSUMER,
            links=links,
            attributes=attributes,
        ):
            return await work

    return traced


def _untraced(record: Any, work: Coroutine[Any, Any, T]) -> Coroutine[Any, Any, T]:
    return work
