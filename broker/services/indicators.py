"""Use cases: the indicator catalogue (one authoritative source per data item)."""

from __future__ import annotations

from dataclasses import dataclass

from broker.domain.datasets import FieldRole
from broker.domain.errors import InvalidInput
from broker.domain.indicators import INDICATOR_ID, FieldOf, Indicator
from broker.domain.ports import Clock, UnitOfWork, UnitOfWorkFactory
from broker.domain.principals import RequestContext
from broker.services.guard import Guard

#: At most this many check sources per indicator.
MAX_CHECKS = 8


@dataclass(frozen=True, slots=True)
class IndicatorService:
    """The catalogue the operator keeps: each indicator's authoritative field and the fields
    of other providers that cross-check it."""

    uow: UnitOfWorkFactory
    guard: Guard
    clock: Clock

    def register(self, ctx: RequestContext, *, indicator_id: str, name: str, unit: str,
                 definition: str, source: FieldOf, checks: tuple[FieldOf, ...]) -> Indicator:
        """Add an indicator (admin); every field must be a numeric figure of a registered
        dataset, the checks other datasets than the source's and than each other's."""
        with self.uow() as uow:
            self.guard.require(uow, ctx, "indicator.register", {})
            if not INDICATOR_ID.fullmatch(indicator_id):
                raise InvalidInput("Indicator ids are 1-63 lowercase letters, digits or '-'.",
                                   fields=["id"])
            if not 0 < len(checks) <= MAX_CHECKS:
                raise InvalidInput(f"An indicator has 1 to {MAX_CHECKS} check sources.",
                                   fields=["checks"])
            named = [source, *checks]
            if len({f.dataset_id for f in named}) != len(named):
                raise InvalidInput("The source and each check must be different datasets.",
                                   fields=["checks"])
            for where, item in zip(["source", *(f"checks[{i}]" for i in range(len(checks)))],
                                   named, strict=True):
                _check_figure(uow, item, where)
            indicator = Indicator(id=indicator_id, name=name, unit=unit,
                                  definition=definition, source=source, checks=checks,
                                  created_at=self.clock())
            uow.indicators.add(indicator)
            self.guard.record(uow, ctx, "indicator.register")
            uow.commit()
            return indicator

    def list(self, ctx: RequestContext) -> list[Indicator]:
        """The catalogue, for every registered organisation."""
        with self.uow() as uow:
            self.guard.require(uow, ctx, "indicator.read", {"kind": "indicator"})
        with self.uow(read_only=True) as uow:
            return uow.indicators.all()

    def get(self, uow: UnitOfWork, indicator_id: str) -> Indicator | None:
        """One indicator, read in the caller's unit of work."""
        return uow.indicators.get(indicator_id)


def _check_figure(uow: UnitOfWork, item: FieldOf, where: str) -> None:
    dataset = uow.datasets.get(item.dataset_id)
    if dataset is None:
        raise InvalidInput("No such dataset.", fields=[f"{where}.dataset_id"])
    if not dataset.schema.has_field(item.field):
        raise InvalidInput("The dataset has no such field.", fields=[f"{where}.field"])
    spec = dataset.schema.field(item.field)
    if not spec.type.is_numeric or spec.role not in (FieldRole.MEASURE, FieldRole.SENSITIVE):
        raise InvalidInput("An indicator's fields are numeric measures.",
                           fields=[f"{where}.field"])
