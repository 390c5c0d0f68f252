"""Liveness, readiness and metrics (no authentication).

All three are answered on the event loop, never in the route handlers' thread pool, so a
flood of slow requests cannot keep an orchestrator from learning that the broker is alive.
Readiness probes the database and the policy engine on a thread of their own, one probe at a
time, and answers 503 if the probe does not finish within ``READY_TIMEOUT`` seconds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from broker.api.deps import ReadinessDep
from broker.api.problems import problem

router = APIRouter(tags=["operations"])

#: Seconds a readiness probe may take before the broker is reported not ready.
READY_TIMEOUT = 0.8
_PROBES = ThreadPoolExecutor(max_workers=1, thread_name_prefix="readyz")


class _Probe:
    """The probe under way in one app, shared by every readiness request that arrives while
    it runs (so a slow database does not pile up probes)."""

    def __init__(self) -> None:
        self.running: asyncio.Future[str] | None = None

    def start(self, ready: Callable[[], str]) -> asyncio.Future[str]:
        if self.running is None or self.running.done():
            self.running = asyncio.get_running_loop().run_in_executor(_PROBES, ready)
        return self.running


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz", response_model=None)
async def readyz(request: Request, ready: ReadinessDep) -> dict[str, str] | JSONResponse:
    """The database answers and the policy engine decides, on the expected revision."""
    state = request.app.state
    if not isinstance(getattr(state, "ready_probe", None), _Probe):
        state.ready_probe = _Probe()
    try:
        revision = await asyncio.wait_for(asyncio.shield(state.ready_probe.start(ready)),
                                          READY_TIMEOUT)
    except TimeoutError:
        return problem(request, 503, "unavailable", "Service unavailable",
                       f"The broker did not answer its readiness probe within "
                       f"{READY_TIMEOUT} s.")
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
    """Prometheus metrics."""
    return Response(generate_latest(request.app.state.metrics.registry),
                    media_type=CONTENT_TYPE_LATEST)
