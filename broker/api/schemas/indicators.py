"""Indicators: the catalogue of data items and their sources."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, Field, StringConstraints

from broker.api.schemas.common import FieldName, In, Text, Uuid
from broker.domain.indicators import INDICATOR_ID, FieldOf, Indicator


class FieldOfIn(In):
    """A field of a dataset."""

    dataset_id: Uuid
    field: FieldName

    def to_domain(self) -> FieldOf:
        """Domain form."""
        return FieldOf(self.dataset_id, self.field)


class IndicatorIn(In):
    """An indicator: one authoritative source field and the fields that check it."""

    id: Annotated[str, StringConstraints(pattern=INDICATOR_ID.pattern)]
    name: Text
    unit: Annotated[str, StringConstraints(min_length=1, max_length=50)]
    definition: Annotated[str, StringConstraints(min_length=1, max_length=2000)]
    source: FieldOfIn
    checks: Annotated[list[FieldOfIn], Field(min_length=1, max_length=8)]


class FieldOfOut(BaseModel):
    """A field of a dataset."""

    dataset_id: str
    field: str


class IndicatorOut(BaseModel):
    """An indicator of the catalogue."""

    id: str
    name: str
    unit: str
    definition: str
    source: FieldOfOut
    checks: list[FieldOfOut]
    created_at: datetime

    @classmethod
    def from_domain(cls, i: Indicator) -> IndicatorOut:
        """Response form."""
        return cls(id=i.id, name=i.name, unit=i.unit, definition=i.definition,
                   source=FieldOfOut(dataset_id=i.source.dataset_id, field=i.source.field),
                   checks=[FieldOfOut(dataset_id=c.dataset_id, field=c.field)
                           for c in i.checks],
                   created_at=i.created_at)
