"""Liveness, readiness and metrics (no authentication).

All three are answered on the event loop, never in the route handlers' thread pool, so a
flood of slow requests cannot keep an orchestrator from learning how the broker is.

Readiness probes the database and the policy engine on a thread of its own, one probe at a
time, and waits at most ``READY_TIMEOUT`` seconds for it. A busy broker is still ready: when
the probe is slower than that (it queues for a database connection behind the requests in
flight), the answer is the last finished probe's, if that one is at most ``READY_GRACE``
seconds old. A failed probe, or none finished for that long (a dependency that hangs), is a
503.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from broker.api.deps import ReadinessDep
from broker.api.problems import problem

router = APIRouter(tags=["operations"])

#: Seconds a readiness request waits for its probe.
READY_TIMEOUT = 0.8
#: Seconds a finished probe's answer stands for one that has not finished yet.
READY_GRACE = 10.0


class ReadyProbe:
    """The probes of one app, on a thread of their own: the one under way, shared by every
    readiness request that arrives while it runs (so a slow database does not pile up
    probes), and the last one that finished. Made and closed in the app's lifespan."""

    def __init__(self) -> None:
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="readyz")
        self.running: asyncio.Future[str] | None = None
        self.last: tuple[float, str | None] | None = None  # (when, revision or None: failed)

    def close(self) -> None:
        """Stop the probe thread (a probe under way finishes on its own)."""
        self._thread.shutdown(wait=False, cancel_futures=True)

    def start(self, ready: Callable[[], str]) -> asyncio.Future[str]:
        """The probe under way, started now if none is."""
        if self.running is None or self.running.done():
            self.running = asyncio.get_running_loop().run_in_executor(self._thread, ready)
            self.running.add_done_callback(self._finished)
        return self.running

    def _finished(self, future: asyncio.Future[str]) -> None:
        ok = not future.cancelled() and future.exception() is None
        self.last = (time.monotonic(), future.result() if ok else None)

    def recent(self) -> str | None:
        """The revision of the last probe if it succeeded within the grace period."""
        if self.last is None or time.monotonic() - self.last[0] > READY_GRACE:
            return None
        return self.last[1]


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz", response_model=None)
async def readyz(request: Request, ready: ReadinessDep) -> dict[str, str] | JSONResponse:
    """The database answers and the policy engine decides, on the expected revision."""
    probe: ReadyProbe = request.app.state.ready_probe
    try:
        revision = await asyncio.wait_for(asyncio.shield(probe.start(ready)), READY_TIMEOUT)
    except TimeoutError:
        recent = probe.recent()
        if recent is not None:
            return {"status": "ready", "policy_revision": recent}
        return problem(request, 503, "unavailable", "Service unavailable",
                       f"The broker's readiness probe failed or has not finished within "
                       f"{READY_GRACE:g} s.")
    except Exception:
        return problem(request, 503, "unavailable", "Service unavailable",
                       "The broker is not ready.")
    return {"status": "ready", "policy_revision": revision}


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text"}},
)
async def metrics(request: Request) -> Response:
    """Prometheus metrics (of every worker process when ``PROMETHEUS_MULTIPROC_DIR`` is set)."""
    return Response(generate_latest(request.app.state.metrics.exposition()),
                    media_type=CONTENT_TYPE_LATEST)
