"""Liveness, readiness and metrics (no authentication)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from broker.api.deps import ReadinessDep
from broker.api.problems import problem

router = APIRouter(tags=["operations"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz", response_model=None)
def readyz(request: Request, ready: ReadinessDep) -> dict[str, str] | JSONResponse:
    """The database answers and the policy engine decides, on the expected revision."""
    try:
        revision = ready()
    except Exception:
        return problem(request, 503, "unavailable", "Service unavailable",
                       "The broker is not ready.")
    return {"status": "ready", "policy_revision": revision}


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text"}},
)
def metrics(request: Request) -> Response:
    """Prometheus metrics."""
    return Response(generate_latest(request.app.state.metrics.registry),
                    media_type=CONTENT_TYPE_LATEST)
