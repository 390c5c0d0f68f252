"""Indicators: one authoritative source per data item, and the sources that check it."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

#: An indicator's id: a slug, as purposes are.
INDICATOR_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


@dataclass(frozen=True, slots=True)
class FieldOf:
    """A field of a dataset."""

    dataset_id: str
    field: str


@dataclass(frozen=True, slots=True)
class Indicator:
    """A data item of the county's catalogue (一数一源): the one field that is authoritative
    for it and the fields of other providers that cross-check it (多元校核)."""

    id: str
    name: str
    unit: str
    definition: str
    source: FieldOf
    checks: tuple[FieldOf, ...]
    created_at: datetime
