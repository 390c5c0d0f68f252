"""ASGI middleware: request ids, body size limits and request metrics."""

from __future__ import annotations

import json
import logging
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import Any

from prometheus_client import Counter, Histogram
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from broker.api.problems import PROBLEM_JSON
from broker.domain.errors import PayloadTooLarge
from broker.observability.logs import CLIENT_REQUEST_ID, REQUEST_ID, frames, is_request_id
from broker.observability.metrics import BrokerMetrics
from broker.policy.cache import CachedPolicyEngine
from broker.services.uploads import MULTIPART_OVERHEAD

log = logging.getLogger("broker.api")

#: Methods that get a metrics label of their own; any other is counted as ``OTHER``, or a
#: client inventing methods would add label series without end.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class HttpMiddleware(ABC):
    """A pure ASGI middleware that handles HTTP requests and passes every other scope
    (lifespan, websockets) straight through."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self.handle(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    @abstractmethod
    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one HTTP request."""


class UnexpectedErrorMiddleware(HttpMiddleware):
    """Answers any unhandled exception with a 500 problem and does not re-raise it.

    Starlette's own error middleware re-raises after its handler, and the server then logs the
    exception's message, which may quote data (a DuckDB or pandas error can name a value).
    Here only the exception's type and stack frames are logged.
    """

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on; answer 500 if it raises before a response has started."""
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            request_id = scope.get("state", {}).get("request_id", "-")
            log.error("unhandled %s in request %s\n%s", type(exc).__name__, request_id,
                      frames(exc.__traceback__))
            if not started:
                await send_problem(scope, send, 500, "internal-error", "Internal error",
                                    "The broker failed to handle the request; nothing was "
                                    "released.")


class RequestMetrics(BrokerMetrics):
    """Per-app Prometheus collectors (a registry per app keeps tests independent): HTTP
    requests, limits, the policy cache, and the broker's own (``BrokerMetrics``)."""

    def __init__(self) -> None:
        super().__init__()
        self.requests = Counter(
            "broker_requests_total", "HTTP requests", ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "broker_request_seconds", "HTTP request latency", ["method", "route"],
            registry=self.registry,
        )
        self.limited = Counter(
            "broker_requests_limited_total", "Requests refused by the per-principal limits",
            ["reason"], registry=self.registry,
        )

    def watch_policy_cache(self, cache: CachedPolicyEngine) -> None:
        """Export the decision cache's hits and misses (read from this process's cache: with
        several worker processes they are not exported, see ``broker.observability.metrics``)."""
        self.registry.register(_PolicyCacheCollector(cache))


class _PolicyCacheCollector(Collector):
    """Reads the cache's counters at scrape time."""

    def __init__(self, cache: CachedPolicyEngine) -> None:
        self._cache = cache

    def collect(self) -> Iterable[Metric]:
        """The two counters, labelled with the engine behind the cache."""
        for name, value, doc in (
            ("broker_policy_cache_hits", self._cache.hits, "Decisions answered from the cache"),
            ("broker_policy_cache_misses", self._cache.misses, "Decisions asked of the engine"),
        ):
            family = CounterMetricFamily(name, doc, labels=["engine"])
            family.add_metric([self._cache.name], value)
            yield family


class RequestIdMiddleware(HttpMiddleware):
    """Gives every request a server-side id (``X-Request-ID``) that audit entries, answers,
    problems and log lines carry. A client's own well-formed ``X-Request-ID`` (``is_request_id``:
    a proxy's or a gateway's id) is written beside it on log lines (``client_request_id``), so
    one request can be followed across systems; it never becomes the request's id, which a
    client could otherwise make collide with another's in the audit log."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Give the request its id, for its context (log lines) and the response's headers."""
        request_id = str(uuid.uuid4())
        scope.setdefault("state", {})["request_id"] = request_id
        token = REQUEST_ID.set(request_id)
        client_token = CLIENT_REQUEST_ID.set(_incoming_id(scope))

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", []).append((b"x-request-id", request_id.encode()))
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            CLIENT_REQUEST_ID.reset(client_token)
            REQUEST_ID.reset(token)


def _incoming_id(scope: Scope) -> str | None:
    """The client's ``X-Request-ID`` if it sent exactly one and it is well formed."""
    found = [v for name, v in scope.get("headers") or () if name == b"x-request-id"]
    if len(found) != 1:
        return None
    value = found[0].decode("latin-1")
    return value if is_request_id(value) else None


class BodyLimitMiddleware(HttpMiddleware):
    """Refuses bodies over the limit: by Content-Length up front, else while streaming.

    Multipart uploads get ``upload_limit`` plus the room ``broker.services.uploads`` allows for the
    ``meta`` part and the framing (the upload routes then hold each part to its own limit);
    everything else ``body_limit``.
    """

    def __init__(self, app: ASGIApp, *, body_limit: int, upload_limit: int) -> None:
        super().__init__(app)
        self.body_limit = body_limit
        self.upload_limit = upload_limit + MULTIPART_OVERHEAD

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on with its body counted against the limit."""
        headers = dict(scope.get("headers") or [])
        ctype = headers.get(b"content-type", b"").decode("latin-1").lower()
        limit = self.upload_limit if ctype.startswith("multipart/") else self.body_limit
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            await _reject(scope, send, limit)
            return
        seen = 0
        over = False

        async def limited() -> Message:
            nonlocal seen, over
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    over = True
                    raise PayloadTooLarge(f"The request body is larger than {limit} bytes.")
            return message

        replaced = False

        async def guarded_send(message: Message) -> None:
            # Body parsers may turn the exception above into their own 400; answer 413 instead.
            nonlocal replaced
            if not over:
                await send(message)
            elif not replaced:
                replaced = True
                await _reject(scope, send, limit)

        await self.app(scope, limited, guarded_send)


async def _reject(scope: Scope, send: Send, limit: int) -> None:
    await send_problem(scope, send, 413, "payload-too-large", "Payload too large",
                        f"The request body is larger than {limit} bytes.")


async def send_problem(
    scope: Scope, send: Send, status: int, slug: str, title: str, detail: str,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    """A problem response sent at the ASGI level (outside FastAPI's handlers)."""
    body = json.dumps({
        "type": slug,
        "title": title,
        "status": status,
        "detail": detail,
        "instance": scope.get("path"),
        "request_id": scope.get("state", {}).get("request_id"),
    }).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", PROBLEM_JSON.encode()),
                            (b"content-length", str(len(body)).encode()), *(headers or ())]})
    await send({"type": "http.response.body", "body": body})


class MetricsMiddleware(HttpMiddleware):
    """Counts requests and times them per route template (never per raw path)."""

    def __init__(self, app: ASGIApp, metrics: RequestMetrics) -> None:
        super().__init__(app)
        self.metrics = metrics

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on, counting and timing it."""
        start = time.perf_counter()
        status: dict[str, Any] = {"code": 500}

        async def record(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = Request(scope).method
            method = method if method in KNOWN_METHODS else "OTHER"  # the client picks it
            self.metrics.requests.labels(method, template, str(status["code"])).inc()
            self.metrics.latency.labels(method, template).observe(time.perf_counter() - start)
