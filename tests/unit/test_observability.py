"""Log formats and where traces go, without a server."""

from __future__ import annotations

import io
import logging
import logging.config
import traceback
from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Status, StatusCode

from broker.observability import spans
from broker.observability.logs import REQUEST_ID, is_request_id
from broker.observability.traces import redacting, start_tracing, traces_endpoint
from tests.logcapture import captured_log


@pytest.fixture
def text_log(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    """The root logger in the text format, into a buffer."""
    with captured_log(monkeypatch, "text") as stream:
        yield stream


def test_text_lines_name_the_request_and_drop_exception_messages(text_log: io.StringIO) -> None:
    log = logging.getLogger("broker.example")
    log.info("outside")
    token = REQUEST_ID.set("abc-123")
    try:
        try:
            raise KeyError("value 31337 of a row")
        except KeyError:
            log.exception("failed")
    finally:
        REQUEST_ID.reset(token)
    lines = text_log.getvalue().splitlines()
    assert "[-] outside" in lines[0]
    assert "[abc-123] failed" in lines[1]
    assert "builtins.KeyError" in text_log.getvalue()
    assert "31337" not in text_log.getvalue()


def test_uvicorn_access_lines_lose_the_query_string(text_log: io.StringIO) -> None:
    logging.getLogger("uvicorn.access").info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:5",
                                             "GET", "/v1/audit/entries?actor=secret", "1.1",
                                             200)
    line = text_log.getvalue()
    assert "/v1/audit/entries" in line
    assert "secret" not in line


def test_a_traceback_uvicorn_logs_as_text_keeps_frames_and_types_only(
        text_log: io.StringIO) -> None:
    try:
        raise ValueError("value 27182 of a row")
    except ValueError:
        logging.getLogger("uvicorn.error").error(traceback.format_exc())
    text = text_log.getvalue()
    assert "Traceback (most recent call last)" in text
    assert 'File "' in text
    assert "ValueError" in text
    assert "27182" not in text


@pytest.mark.parametrize(("value", "kept"), [
    ("0f8fad5b-d9cb-469f-a165-70867728950e", True), ("gw:1.2_3-4", True), ("a" * 128, True),
    ("a" * 129, False), ("", False), ("-x", False), ("a b", False), ("a\r\nb", False),
    ("a\"b", False),
])
def test_request_ids_are_bounded_and_of_a_safe_alphabet(value: str, kept: bool) -> None:
    assert is_request_id(value) is kept


def test_the_broker_setting_names_the_collector_before_the_standard_variables() -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://std:4318/"}
    assert traces_endpoint("http://mine:4318/", env) == "http://mine:4318/v1/traces"
    assert traces_endpoint(None, env) == "http://std:4318/v1/traces"
    assert traces_endpoint(None, {**env, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://t/x"}
                           ) == "http://t/x"
    assert traces_endpoint("http://mine:4318", {"OTEL_SDK_DISABLED": "true"}) is None
    assert traces_endpoint(None, {}) is None


def test_without_an_endpoint_nothing_is_started_and_no_span_is_made(
        monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    assert start_tracing(None, service_version="0") is None
    with spans.engine_span("DuckDBEngine", "ds-1") as rows:
        assert not trace.get_current_span().get_span_context().is_valid
        rows(3)


def test_exported_spans_lose_error_descriptions_and_exception_messages() -> None:
    exported = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(redacting(exported)))
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("outer", attributes={"broker.dataset.id": "ds-1"}) as span:
        span.record_exception(ValueError('Key (name)=(Secret Firm 4242) already exists'))
        span.add_event("kept", {"n": 1})
        span.set_status(Status(StatusCode.ERROR, "duplicate key Secret Firm 4242"))
    provider.shutdown()
    (got,) = exported.get_finished_spans()
    assert got.status.status_code is StatusCode.ERROR
    assert not got.status.description
    assert [e.name for e in got.events] == ["exception", "kept"]
    assert dict(got.events[0].attributes or {}) == {"exception.type": "ValueError",
                                                    "exception.escaped": "False"}
    assert dict(got.attributes or {}) == {"broker.dataset.id": "ds-1"}
    assert "4242" not in got.to_json()
