"""Who is asking, before any worker thread is spent on it: bearer tokens verified at the ASGI
level, then per-principal limits.

A principal is a token's ``iss`` and ``sub`` (DESIGN.md section 8). Over the rate limit
(``BROKER_RATE_LIMIT``), with ``BROKER_MAX_CONCURRENT_PER_PRINCIPAL`` of its requests already in
flight, or with ``BROKER_MAX_CONCURRENT_PER_ORG`` of its organisation's, a request is a 429
problem with ``Retry-After`` and never reaches a route, so a flood from one principal or one
organisation (denied requests included, each of which would write an audit entry) cannot take
the worker threads from everyone else. The first refusal of each principal in each window is
audited; the rest are counted in the metrics, so a flood is on the record without flooding the
record.

The token is verified off the event loop, on threads of its own (an OIDC verifier may fetch
keys), so that health checks and other principals' requests are never queued behind it. A
token that does not verify is answered here (401, or 503 when the identity provider cannot be
reached) without reaching a route, and counts against the rate of the client's address; past
that rate, the address's requests without a valid token are 429 (a valid token from the same
address, behind the same proxy, is still served).
The verified principal rides on the request's state for ``broker.api.deps.get_principal``: a
token is verified once per request.
"""

from __future__ import annotations

import bisect
import email.message
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio
from limits import parse_many
from prometheus_client import Counter
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from broker.api.middleware import HttpMiddleware, send_problem
from broker.api.problems import status_of
from broker.domain.errors import BrokerError, Unauthenticated
from broker.domain.ports import RefusalRecorder
from broker.domain.principals import Principal, RequestContext

#: Threads for token verification, apart from the route handlers' pool.
AUTH_THREADS = 8
#: Threads for the audit entries of refusals, apart from both.
AUDIT_THREADS = 2
#: Every this many counted requests, the keys idle for longer than the longest window go.
SWEEP_EVERY = 10_000
#: Operations endpoints: never limited, never authenticated.
EXEMPT = frozenset({"/healthz", "/readyz", "/metrics"})
#: Methods whose requests carry a body: none of the broker's routes takes one without a token.
BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
#: The most values (counted by their separators) a JSON body may hold: FastAPI parses it on
#: the event loop, and a megabyte of ``[[],[],...]`` takes a tenth of a second to parse.
MAX_JSON_VALUES = 50_000


@dataclass(slots=True)
class PrincipalLimits:
    """The rate limit and the in-flight caps (per principal and per organisation), in this
    process.

    Counted in memory: with several worker processes each enforces the limit on its own share
    of the traffic. The rate is a moving window (``limits``' notation, parsed by that library)
    kept here as each key's request times: the library's in-memory storage starts a timer
    thread to expire entries after every request, which cost every request here 1.3 ms of p50
    (``tests.bench.limits``); these lists are trimmed as they are touched instead, and keys
    idle for longer than the longest window are swept every ``SWEEP_EVERY`` counts. Only the
    event loop's thread calls these methods, so nothing is locked.
    """

    rate: str
    max_concurrent: int
    max_concurrent_org: int = 1024
    clock: Callable[[], float] = time.monotonic
    #: (amount, seconds) of each window of the rate.
    _windows: list[tuple[int, int]] = field(init=False)
    _times: dict[str, list[float]] = field(default_factory=dict, init=False)
    _counted: int = field(default=0, init=False)
    _in_flight: dict[str, int] = field(default_factory=dict, init=False)
    _audited: dict[str, float] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        items = parse_many(self.rate) if self.rate.strip() else []
        self._windows = [(item.amount, item.get_expiry()) for item in items]

    def acquire(self, key: str, org: str = "") -> tuple[str, int] | None:
        """Take a slot for one request of principal ``key`` of organisation ``org``; None if
        taken, else the reason and the seconds to wait. A refused request takes no slot (it
        does not count against the rate either, so waiting as told always works)."""
        org_key = f"org\n{org}"
        if (self._in_flight.get(key, 0) >= self.max_concurrent
                or self._in_flight.get(org_key, 0) >= self.max_concurrent_org):
            return "too-many-concurrent-requests", 1
        refused = self.over_rate(key)
        if refused is not None:
            return refused
        self.count(key)
        self._in_flight[key] = self._in_flight.get(key, 0) + 1
        self._in_flight[org_key] = self._in_flight.get(org_key, 0) + 1
        return None

    def release(self, key: str, org: str = "") -> None:
        """Give back the slot ``acquire`` took."""
        for held in (key, f"org\n{org}"):
            left = self._in_flight.get(held, 0) - 1
            if left > 0:
                self._in_flight[held] = left
            else:
                self._in_flight.pop(held, None)

    def over_rate(self, key: str) -> tuple[str, int] | None:
        """("rate-limited", seconds to wait) if ``key`` is at its rate, else None."""
        times = self._times.get(key)
        if not times:
            return None
        now = self.clock()
        for amount, seconds in self._windows:
            inside = len(times) - bisect.bisect_right(times, now - seconds)
            if inside >= amount:  # the amount-th newest leaves the window first
                return "rate-limited", max(1, math.ceil(times[-amount] + seconds - now))
        return None

    def count(self, key: str) -> None:
        """Count one request of ``key`` against its rate."""
        if not self._windows:
            return
        now = self.clock()
        longest = max(seconds for _, seconds in self._windows)
        times = self._times.setdefault(key, [])
        times.append(now)
        if times[0] <= now - longest:
            del times[:bisect.bisect_right(times, now - longest)]
        self._counted += 1
        if self._counted % SWEEP_EVERY == 0:
            for idle in [k for k, t in self._times.items() if t[-1] <= now - longest]:
                del self._times[idle]

    def should_audit(self, key: str) -> bool:
        """Whether this refusal of ``key`` is its first in the longest window (the others are
        counted, not audited)."""
        window = max((seconds for _, seconds in self._windows), default=60)
        now = self.clock()
        if now - self._audited.get(key, -math.inf) < window:
            return False
        self._audited[key] = now
        if len(self._audited) > 100_000:  # forget the oldest half rather than grow forever
            for stale in sorted(self._audited, key=self._audited.__getitem__)[:50_000]:
                del self._audited[stale]
        return True


class PrincipalMiddleware(HttpMiddleware):
    """Verifies the bearer token once, then applies ``PrincipalLimits`` to its principal."""

    def __init__(self, app: ASGIApp, *, limits: PrincipalLimits, refused: Counter,
                 denied: Callable[[str], None] | None = None,
                 session: Callable[[Scope], str | None] | None = None,
                 session_prefix: str = "/console") -> None:
        super().__init__(app)
        self.limits = limits
        self.refused = refused
        self.denied = denied  # every refusal, by reason (the metrics' denials)
        #: Under ``session_prefix`` (the web console) the token is the session cookie's, read
        #: by ``session``, and never the Authorization header's; elsewhere it is the header's.
        self.session = session
        self.session_prefix = session_prefix
        self._auth = anyio.CapacityLimiter(AUTH_THREADS)
        self._audit = anyio.CapacityLimiter(AUDIT_THREADS)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Verify, count, pass on; or answer 401, 429 or 503 at once."""
        container = getattr(scope["app"].state, "container", None)
        if scope.get("path") in EXEMPT or container is None:
            await self.app(scope, receive, send)
            return
        if b"%00" in scope.get("query_string", b""):
            await send_problem(scope, send, 422, "invalid-input", "Invalid input",
                               "The query string holds a NUL character (%00).")
            return
        address = f"addr\n{(scope.get('client') or ('-',))[0]}"
        path = scope.get("path", "")
        in_session = self.session is not None and (
            path == self.session_prefix or path.startswith(self.session_prefix + "/"))
        token = self.session(scope) if in_session and self.session else _bearer(scope)
        if (token is None and scope.get("method") in BODY_METHODS and not in_session
                and _routed(scope)):
            # Every route that takes a body needs a token: refuse before reading (parsing a
            # crafted JSON body holds the event loop for a tenth of a second per megabyte).
            # A path or method no route serves is left to the router's 404 or 405.
            await self._unauthenticated(scope, send, address,
                                        Unauthenticated("A bearer token is required."))
            return
        if token is None:  # the route answers 401 (or serves a public page)
            await self._without_token(scope, receive, send, address)
            return
        try:
            principal = await anyio.to_thread.run_sync(container.tokens.verify, token,
                                                       limiter=self._auth)
        except Exception as exc:  # whatever went wrong, the caller is not authenticated
            if in_session:  # an expired session: the console's page asks to log in again,
                if isinstance(exc, BrokerError) and exc.status == 503:  # or says who is down
                    scope.setdefault("state", {})["session_error"] = exc
                await self._without_token(scope, receive, send, address)
                return
            await self._unauthenticated(scope, send, address, exc if isinstance(
                exc, BrokerError) else Unauthenticated("The bearer token is not valid."))
            return
        state = scope.setdefault("state", {})
        state["principal"] = principal
        key = f"{principal.iss}\n{principal.sub}"
        refusal = self.limits.acquire(key, principal.org)
        if refusal is not None:
            await self._too_many(scope, send, refusal, principal, container)
            return
        try:
            if _is_json(scope):
                await self._json_within_bounds(scope, receive, send)
            else:
                await self.app(scope, receive, send)
        finally:
            self.limits.release(key, principal.org)

    async def _unauthenticated(self, scope: Scope, send: Send, address: str,
                               error: BrokerError) -> None:
        """Answer ``error`` (401, or 503 when the identity provider is down), counted against
        the client's address; a 429 once the address is past the rate."""
        over = self.limits.over_rate(address)
        if over is not None:
            await self._too_many(scope, send, over, None, None)
            return
        self.limits.count(address)
        await _send_error(scope, send, error)

    async def _json_within_bounds(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Read a JSON body (the body limit, outside, bounds it), refuse it with 413 if it
        holds more than ``MAX_JSON_VALUES`` values, else hand it on."""
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        values = body.count(b",") + body.count(b"[") + body.count(b"{")
        if values > MAX_JSON_VALUES:
            await send_problem(scope, send, 413, "payload-too-large", "Payload too large",
                               f"The JSON body holds more than {MAX_JSON_VALUES} values.")
            return
        if b"\\u0000" in body:  # JSON's only spelling of NUL, which no text column stores
            await send_problem(scope, send, 422, "invalid-input", "Invalid input",
                               "The JSON body holds a NUL character (\\u0000).")
            return
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _without_token(self, scope: Scope, receive: Receive, send: Send,
                             address: str) -> None:
        """A request with no bearer token: limited by its address once its 401s pass the
        rate."""
        over = self.limits.over_rate(address)
        if over is not None:
            await self._too_many(scope, send, over, None, None)
            return

        async def counting(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 401:
                self.limits.count(address)
            await send(message)

        await self.app(scope, receive, counting)

    async def _too_many(self, scope: Scope, send: Send, refusal: tuple[str, int],
                        principal: Principal | None, container: object) -> None:
        """The 429, and for a principal's first refusal in the window, its audit entry."""
        reason, wait = refusal
        self.refused.labels(reason).inc()
        if self.denied is not None:
            self.denied(reason)
        recorder = getattr(container, "audit", None)
        if (principal is not None and isinstance(recorder, RefusalRecorder)
                and self.limits.should_audit(f"{principal.iss}\n{principal.sub}")):
            ctx = RequestContext(principal=principal,
                                 request_id=scope.get("state", {}).get("request_id", "-"))
            await anyio.to_thread.run_sync(recorder.record_refusal, ctx, "request.limit",
                                           (reason,), limiter=self._audit)
        who = "this principal" if principal is not None else "this address without a valid token"
        detail = (f"Too many requests in flight for {who} or its organisation."
                  if reason.startswith("too")
                  else f"More requests from {who} than the rate limit allows.")
        await send_problem(scope, send, 429, reason, "Too many requests",
                           f"{detail} Try again in {wait} s; nothing was done.",
                           headers=[(b"retry-after", str(wait).encode())])


async def _send_error(scope: Scope, send: Send, error: BrokerError) -> None:
    """A token that did not verify, answered as the routes answer it."""
    status = status_of(error)
    headers = [(b"www-authenticate", b'Bearer realm="broker"')] if status == 401 else []
    await send_problem(scope, send, status, error.slug, error.title, error.detail,
                       headers=headers)


def _routed(scope: Scope) -> bool:
    """Whether a route serves this path and method."""
    return any(route.matches(scope)[0] is Match.FULL for route in scope["app"].router.routes)


def _is_json(scope: Scope) -> bool:
    """Whether FastAPI would parse the body as JSON: it says so (``application/json`` or
    ``+json``), or it names no type at all."""
    if scope.get("method") not in BODY_METHODS:
        return False
    value = next((v.decode("latin-1") for name, v in scope.get("headers") or ()
                  if name == b"content-type"), "")
    if not value:
        return True
    message = email.message.Message()  # read as FastAPI reads it, control characters and all
    message["content-type"] = value
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (
        subtype == "json" or subtype.endswith("+json"))


def _bearer(scope: Scope) -> str | None:
    """The bearer token of the Authorization header, if it has one."""
    for name, value in scope.get("headers") or ():
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            token = token.strip()
            return token if scheme.lower() == "bearer" and token else None
    return None
