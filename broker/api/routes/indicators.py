"""The indicator catalogue."""

from __future__ import annotations

from fastapi import APIRouter

from broker.api.deps import ContextDep, IndicatorServiceDep
from broker.api.routes.common import AUTHENTICATED, problems
from broker.api.schemas.indicators import IndicatorIn, IndicatorOut

router = APIRouter(prefix="/v1/indicators", tags=["indicators"], responses=AUTHENTICATED)


@router.post("", status_code=201, responses=problems(409))
def register_indicator(body: IndicatorIn, ctx: ContextDep,
                       indicators: IndicatorServiceDep) -> IndicatorOut:
    """Add an indicator to the catalogue (admin): its authoritative source field and the
    fields of other datasets that cross-check it."""
    return IndicatorOut.from_domain(indicators.register(
        ctx, indicator_id=body.id, name=body.name, unit=body.unit, definition=body.definition,
        source=body.source.to_domain(), checks=tuple(c.to_domain() for c in body.checks)))


@router.get("")
def list_indicators(ctx: ContextDep, indicators: IndicatorServiceDep) -> list[IndicatorOut]:
    """The indicator catalogue (every registered organisation)."""
    return [IndicatorOut.from_domain(i) for i in indicators.list(ctx)]
