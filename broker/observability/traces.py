"""OpenTelemetry traces, exported over OTLP/HTTP when an endpoint is configured.

``BROKER_OTLP_ENDPOINT`` (a collector's base URL, e.g. ``http://collector:4318``), else the
standard ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` (the full URL) or ``OTEL_EXPORTER_OTLP_ENDPOINT``
(a base URL) names where spans go; with none of them set (or ``OTEL_SDK_DISABLED=true``) no
SDK is started, nothing is instrumented and the engine's span is never made.

What is traced: each HTTP request (FastAPI instrumentation; the operations endpoints left out),
each SQL statement of the metadata store (SQLAlchemy instrumentation: statements are
parameterised, so their text names no value; the audit append's statements run on the raw
driver cursor and are not traced), and each run of the query engine (``broker.engine.run``:
dataset id, engine and the result's row count). The query string is cut from the request
span's URL attributes: filters name values. Before export, every span loses what an error
may quote: a status description becomes the bare status, and an exception event keeps only
``exception.type`` (its message and stack trace text can hold a value, as a PostgreSQL
error's detail names the key it refused).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from broker.observability import spans

if TYPE_CHECKING:  # the SDK is imported only when tracing starts (no cost when it is off)
    from collections.abc import Sequence

    from fastapi import FastAPI
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
    from sqlalchemy import Engine

#: What an exception event keeps.
EXCEPTION_KEPT = frozenset({"exception.type", "exception.escaped"})

log = logging.getLogger(__name__)

#: Requests that are not traced (probes and scrapes, many and uninteresting).
UNTRACED = "/healthz,/readyz,/metrics"
#: URL attributes a request span may carry, and which of them hold the query string.
_QUERY_ATTRIBUTES = ("url.query", "http.target", "http.url", "url.full")


def traces_endpoint(configured: str | None,
                    environ: Mapping[str, str] | None = None) -> str | None:
    """Where spans go (an OTLP/HTTP traces URL), or None: tracing is off."""
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    if configured:
        return f"{configured.rstrip('/')}/v1/traces"
    if env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        return env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]
    if env.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return f"{env['OTEL_EXPORTER_OTLP_ENDPOINT'].rstrip('/')}/v1/traces"
    return None


class Tracing:
    """The tracer provider of one running app, and what it instruments."""

    def __init__(self, endpoint: str, *, service_version: str) -> None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        self.provider = TracerProvider(resource=Resource.create(
            {"service.name": os.environ.get("OTEL_SERVICE_NAME", "broker"),
             "service.version": service_version}))
        self.provider.add_span_processor(BatchSpanProcessor(
            redacting(OTLPSpanExporter(endpoint=endpoint))))
        self._sql: SQLAlchemyInstrumentor | None = None
        spans.use(self.provider.get_tracer("broker.engine"))

    def instrument_app(self, app: FastAPI) -> None:
        """Trace the app's requests (before it starts serving)."""
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

        FastAPIInstrumentor.instrument_app(
            app, tracer_provider=self.provider, excluded_urls=UNTRACED,
            exclude_spans=["receive", "send"], server_request_hook=_without_query)

    def instrument_engine(self, engine: Engine) -> None:
        """Trace the metadata store's statements."""
        from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

        self._sql = SQLAlchemyInstrumentor()
        # The instrumentation declares SQLAlchemy < 2.1; the engine events it hooks are the
        # same in 2.1 (the end-to-end test sees the statements' spans), so the check is skipped.
        self._sql.instrument(engine=engine, tracer_provider=self.provider,
                             enable_commenter=False, skip_dep_check=True)

    def shutdown(self) -> None:
        """Stop tracing the store; send what is buffered and stop the exporter."""
        if self._sql is not None:
            self._sql.uninstrument()
        spans.use(None)
        self.provider.shutdown()


def redacting(exporter: SpanExporter) -> SpanExporter:
    """``exporter``, handed each span without error descriptions or exception messages."""
    from opentelemetry.sdk.trace import Event, ReadableSpan
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Status

    def scrubbed(span: ReadableSpan) -> ReadableSpan:
        events = [
            Event(e.name, {k: v for k, v in (e.attributes or {}).items()
                           if k in EXCEPTION_KEPT}, e.timestamp)
            if e.name == "exception" else e
            for e in span.events]
        return ReadableSpan(
            name=span.name, context=span.context, parent=span.parent, resource=span.resource,
            attributes=span.attributes, events=events, links=span.links, kind=span.kind,
            status=Status(span.status.status_code), start_time=span.start_time,
            end_time=span.end_time, instrumentation_scope=span.instrumentation_scope)

    class Redacting(SpanExporter):
        """Scrubs, then exports."""

        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            """Export the scrubbed spans."""
            return exporter.export([scrubbed(span) for span in spans])

        def shutdown(self) -> None:
            """Shut the exporter down."""
            exporter.shutdown()

        def force_flush(self, timeout_millis: int = 30_000) -> bool:
            """Flush the exporter."""
            return exporter.force_flush(timeout_millis)

    return Redacting()


def start_tracing(configured: str | None, *, service_version: str) -> Tracing | None:
    """Tracing for one app when an endpoint is configured, else None (nothing started)."""
    endpoint = traces_endpoint(configured)
    if endpoint is None:
        return None
    log.info("exporting traces over OTLP/HTTP")
    return Tracing(endpoint, service_version=service_version)


def _without_query(span: Any, _scope: Mapping[str, Any]) -> None:
    """Overwrite the request span's URL attributes without the query string."""
    if not span.is_recording():
        return
    attributes = getattr(span, "attributes", None) or {}
    for name in _QUERY_ATTRIBUTES:
        value = attributes.get(name)
        if value is None:
            continue
        if name == "url.query":
            span.set_attribute(name, "")
        else:
            span.set_attribute(name, str(value).split("?", 1)[0])
