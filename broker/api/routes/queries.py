"""Aggregate queries and their policy dry run."""

from __future__ import annotations

from fastapi import APIRouter, Request

from broker.api.deps import ContextDep, QueryServiceDep
from broker.api.routes.common import AUTHENTICATED, problems
from broker.api.schemas.queries import AggregateIn, AggregateOut, CrosscheckIn, ExplainOut
from broker.domain.queries import Release
from broker.services.joins import JoinedQueries

router = APIRouter(tags=["queries"], responses=AUTHENTICATED)


@router.post("/v1/queries/aggregate")
def run_aggregate(body: AggregateIn, ctx: ContextDep, queries: QueryServiceDep,
                  request: Request) -> AggregateOut:
    """Run an aggregate query under an active usage contract, or across several providers'
    contracts joined by enterprise (``sources``); only safe cells carry values."""
    if body.joined:
        release = JoinedQueries(queries).aggregate(ctx, body.to_joined())
    else:
        release = queries.aggregate(ctx, body.to_domain())
    return AggregateOut.from_domain(_counted(request, release))


@router.post("/v1/policy/explain")
def explain_query(body: AggregateIn, ctx: ContextDep, queries: QueryServiceDep) -> ExplainOut:
    """Dry run: the per-field verdicts and reasons a query would get (per alias.field across
    sources); nothing is released."""
    if body.joined:
        return ExplainOut.from_domain(JoinedQueries(queries).explain(ctx, body.to_joined()))
    return ExplainOut.from_domain(queries.explain(ctx, body.to_domain()))


@router.post("/v1/queries/crosscheck", responses=problems(404))
def run_crosscheck(body: CrosscheckIn, ctx: ContextDep, queries: QueryServiceDep,
                   request: Request) -> AggregateOut:
    """Cross-check one figure between two providers, joined by enterprise: per cell the
    enterprises compared, how many disagree beyond the tolerance, and the sum of absolute
    differences; held to every disclosure rule, never naming an enterprise."""
    return AggregateOut.from_domain(_counted(request, JoinedQueries(queries).crosscheck(
        ctx, body.to_joined(), body.indicator)))


def _counted(request: Request, release: Release) -> Release:
    """``release``, its withheld cells counted in the metrics by reason."""
    request.app.state.metrics.cells_withheld(release.suppressed)
    return release
