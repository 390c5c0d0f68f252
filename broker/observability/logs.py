"""Log lines: one JSON object per line (or plain text), each naming its request.

The request id lives in a context variable that ``RequestIdMiddleware`` sets for the duration
of a request; a filter on the handler copies it (and the trace id, when a span is recording)
onto every record, whichever logger emitted it: the broker's, uvicorn's, SQLAlchemy's. The
context follows the request into the route handlers' threads (anyio copies it).

What a line may never carry: row values, tokens, bodies. The broker's own messages name only
types, ids and counts; two more guards sit here, since third-party messages are not ours to
word. An exception is rendered as its type and stack frames only (file, line, function), never
its message or source text (a DuckDB, pandas or driver error can quote a value). Uvicorn's
access line drops the query string.
"""

from __future__ import annotations

import logging
import re
import traceback
from contextvars import ContextVar
from types import TracebackType
from typing import Any, Literal

from opentelemetry import trace
from pythonjsonlogger.json import JsonFormatter

LogFormat = Literal["json", "text"]

#: The id of the request being handled in this context, if any (the broker's own).
REQUEST_ID: ContextVar[str | None] = ContextVar("broker_request_id", default=None)
#: The ``X-Request-ID`` the client (a gateway, a proxy) sent with it, if well formed.
CLIENT_REQUEST_ID: ContextVar[str | None] = ContextVar("broker_client_request_id", default=None)

#: An incoming ``X-Request-ID`` is kept only if it looks like this: bounded, and of characters
#: that are safe in a header, a log line, a JSON document and an audit entry.
REQUEST_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


def is_request_id(value: str) -> bool:
    """Whether a client's ``X-Request-ID`` may be written beside the request's own id."""
    return REQUEST_ID_PATTERN.fullmatch(value) is not None


class RequestContextFilter(logging.Filter):
    """Puts the request id (``-`` outside a request), the client's own id for it when it sent
    one, and the recording span's trace id on every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Annotate; never drop."""
        record.request_id = REQUEST_ID.get() or "-"
        client_id = CLIENT_REQUEST_ID.get()
        if client_id is not None:
            record.client_request_id = client_id
        record.__dict__.pop("color_message", None)  # uvicorn's copy of the message, in ANSI
        span = trace.get_current_span().get_span_context()
        if span.is_valid:
            record.trace_id = format(span.trace_id, "032x")
        return True


class AccessLogFilter(logging.Filter):
    """Rewrites uvicorn's access record without the query string (filters name values), and
    gives it ``method``, ``path`` and ``status`` fields."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Annotate; never drop."""
        args = record.args
        if isinstance(args, tuple) and len(args) == 5:
            client, method, full_path, version, status = args
            path = str(full_path).split("?", 1)[0]
            record.args = (client, method, path, version, status)
            record.method, record.path, record.status = method, path, status
        return True


class TracebackTextFilter(logging.Filter):
    """Uvicorn logs a failed start or stop as the text of the traceback itself (not as
    ``exc_info``): that text is cut to its frame lines and each exception's type."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite; never drop."""
        if isinstance(record.msg, str) and record.msg.startswith("Traceback (most recent"):
            kept = []
            for line in record.getMessage().splitlines():
                if line.startswith(("Traceback", '  File "')):
                    kept.append(line)
                elif line and not line.startswith(" ") and ":" in line:
                    kept.append(line.split(":", 1)[0])  # the type, not the message
                elif line and not line.startswith(" ") and line.isidentifier():
                    kept.append(line)
            record.msg, record.args = "\n".join(kept), None
        return True


def frames(tb: TracebackType | None) -> str:
    """A traceback's frames as file, line and function: no source text, no locals."""
    return "".join(f'  File "{f.filename}", line {f.lineno}, in {f.name}\n'
                   for f in traceback.extract_tb(tb))


def describe_exception(exc: BaseException | None) -> str:
    """An exception's type and frames, and those of its causes; never a message."""
    parts: list[str] = []
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        parts.append(f"Traceback (most recent call last):\n{frames(exc.__traceback__)}"
                     f"{type(exc).__module__}.{type(exc).__qualname__}")
        exc = exc.__cause__ or exc.__context__
    return "\n\nwhile handling:\n".join(reversed(parts))


class BrokerJsonFormatter(JsonFormatter):
    """python-json-logger's formatter, with exceptions reduced to types and frames."""

    def formatException(self, ei: Any) -> str:
        """Type and frames only (see the module docstring)."""
        return describe_exception(ei[1])


class BrokerTextFormatter(logging.Formatter):
    """Plain text with the request id, exceptions reduced to types and frames."""

    def formatException(self, ei: Any) -> str:
        """Type and frames only (see the module docstring)."""
        return describe_exception(ei[1])


JSON_FIELDS = "%(asctime)s %(levelname)s %(name)s %(message)s %(request_id)s"
TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s [%(request_id)s] %(message)s"


def logging_config(fmt: LogFormat = "json", level: str = "INFO") -> dict[str, Any]:
    """A ``logging.config.dictConfig`` document: one handler on stderr for the root logger,
    which uvicorn's loggers propagate to. Pass it to uvicorn as ``log_config`` (each worker
    process applies it)."""
    formatter: dict[str, Any]
    if fmt == "json":
        formatter = {
            "()": f"{__name__}.BrokerJsonFormatter",
            "fmt": JSON_FIELDS,
            "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"},
        }
    else:
        formatter = {"()": f"{__name__}.BrokerTextFormatter", "fmt": TEXT_FORMAT}
    quiet = {"handlers": [], "propagate": True}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {
            "request": {"()": f"{__name__}.RequestContextFilter"},
            "access": {"()": f"{__name__}.AccessLogFilter"},
            "traceback": {"()": f"{__name__}.TracebackTextFilter"},
        },
        "formatters": {"broker": formatter},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "formatter": "broker",
                "filters": ["request"],
            },
        },
        "root": {"handlers": ["stderr"], "level": level.upper()},
        "loggers": {
            "uvicorn": {**quiet, "level": level.upper()},
            "uvicorn.error": {**quiet, "level": level.upper(), "filters": ["traceback"]},
            "uvicorn.access": {**quiet, "level": level.upper(), "filters": ["access"]},
            # Alembic announces each of its plugins when it starts; migrations it runs (INFO
            # of alembic.runtime.migration) are still logged.
            "alembic.runtime.plugins": {"level": "WARNING"},
        },
    }
