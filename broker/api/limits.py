"""Who is asking, before any worker thread is spent on it: bearer tokens verified at the ASGI
level, then a per-principal rate limit and a cap on requests in flight.

A principal is a token's ``iss`` and ``sub`` (DESIGN.md section 8). Over the rate limit
(``BROKER_RATE_LIMIT``) or the cap (``BROKER_MAX_CONCURRENT_PER_PRINCIPAL``) a request is a 429
problem with ``Retry-After`` and never reaches a route, so a flood from one principal (denied
requests included, each of which would write an audit entry) cannot take the worker threads
from everyone else. The first refusal of each principal in each window is audited; the rest
are counted in the metrics, so a flood is on the record without flooding the record.

The token is verified off the event loop, on threads of its own (an OIDC verifier may fetch
keys), so that health checks and other principals' requests are never queued behind it. The
verified principal, or the reason the token is not valid, rides on the request's state for
``broker.api.deps.get_principal``: a token is verified once per request.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Protocol

import anyio
from limits import RateLimitItem, parse_many
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter
from prometheus_client import Counter
from starlette.types import ASGIApp, Receive, Scope, Send

from broker.api.middleware import HttpMiddleware, send_problem
from broker.domain.errors import BrokerError
from broker.domain.principals import RequestContext

#: Threads for token verification, apart from the route handlers' pool.
AUTH_THREADS = 8
#: Operations endpoints: never limited, never authenticated.
EXEMPT = frozenset({"/healthz", "/readyz", "/metrics"})


class RefusalRecorder(Protocol):
    """Where a refusal goes on the audit record."""

    def record_refusal(self, ctx: RequestContext, action: str, reasons: tuple[str, ...]) -> None:
        """Append and commit a denied entry for ``ctx``."""


@dataclass(slots=True)
class PrincipalLimits:
    """The rate limit and the in-flight cap, per principal, in this process.

    Counted in memory: with several worker processes each enforces the limit on its own share
    of the traffic.
    """

    rate: str
    max_concurrent: int
    _items: list[RateLimitItem] = field(init=False)
    _limiter: MovingWindowRateLimiter = field(init=False)
    _in_flight: dict[str, int] = field(default_factory=dict, init=False)
    _audited: dict[str, float] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self._items = parse_many(self.rate) if self.rate.strip() else []
        self._limiter = MovingWindowRateLimiter(MemoryStorage())

    def acquire(self, key: str) -> tuple[str, int] | None:
        """Take a slot for one request of ``key``; None if taken, else the reason and the
        seconds to wait. A refused request takes no slot (it does not count against the
        rate either, so waiting as told always works)."""
        if self._in_flight.get(key, 0) >= self.max_concurrent:
            return "too-many-concurrent-requests", 1
        for item in self._items:
            if not self._limiter.test(item, key):
                reset = self._limiter.get_window_stats(item, key).reset_time
                return "rate-limited", max(1, math.ceil(reset - time.time()))
        for item in self._items:
            self._limiter.hit(item, key)
        self._in_flight[key] = self._in_flight.get(key, 0) + 1
        return None

    def release(self, key: str) -> None:
        """Give back the slot ``acquire`` took."""
        left = self._in_flight.get(key, 0) - 1
        if left > 0:
            self._in_flight[key] = left
        else:
            self._in_flight.pop(key, None)

    def should_audit(self, key: str) -> bool:
        """Whether this refusal of ``key`` is its first in the longest window (the others are
        counted, not audited)."""
        window = max((item.get_expiry() for item in self._items), default=60)
        now = time.monotonic()
        if now - self._audited.get(key, -math.inf) < window:
            return False
        self._audited[key] = now
        if len(self._audited) > 100_000:  # forget the oldest half rather than grow forever
            for stale in sorted(self._audited, key=self._audited.__getitem__)[:50_000]:
                del self._audited[stale]
        return True


class PrincipalMiddleware(HttpMiddleware):
    """Verifies the bearer token once, then applies ``PrincipalLimits`` to its principal."""

    def __init__(self, app: ASGIApp, *, limits: PrincipalLimits, refused: Counter) -> None:
        super().__init__(app)
        self.limits = limits
        self.refused = refused
        self._auth = anyio.CapacityLimiter(AUTH_THREADS)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Verify, count, pass on; or answer 429 at once."""
        token = None if scope.get("path") in EXEMPT else _bearer(scope)
        container = getattr(scope["app"].state, "container", None)
        if token is None or container is None:
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        try:
            principal = await anyio.to_thread.run_sync(container.tokens.verify, token,
                                                       limiter=self._auth)
        except BrokerError as exc:
            state["auth_error"] = exc  # the route answers it, as a 401 problem
            await self.app(scope, receive, send)
            return
        state["principal"] = principal
        key = f"{principal.iss}\n{principal.sub}"
        refusal = self.limits.acquire(key)
        if refusal is None:
            try:
                await self.app(scope, receive, send)
            finally:
                self.limits.release(key)
            return
        reason, wait = refusal
        self.refused.labels(reason).inc()
        if self.limits.should_audit(key):
            ctx = RequestContext(principal=principal, request_id=state.get("request_id", "-"))
            await anyio.to_thread.run_sync(container.audit.record_refusal, ctx, "request.limit",
                                           (reason,), limiter=self._auth)
        detail = ("Too many requests in flight for this principal." if reason.startswith("too")
                  else "This principal has made more requests than the rate limit allows.")
        await send_problem(scope, send, 429, reason, "Too many requests",
                           f"{detail} Try again in {wait} s; nothing was done.",
                           headers=[(b"retry-after", str(wait).encode())])


def _bearer(scope: Scope) -> str | None:
    """The bearer token of the Authorization header, if it has one."""
    for name, value in scope.get("headers") or ():
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            token = token.strip()
            return token if scheme.lower() == "bearer" and token else None
    return None
