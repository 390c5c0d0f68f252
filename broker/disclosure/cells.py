"""The cell table: per-cell contributor statistics computed by the engine, before release."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from broker.disclosure.plan import CellPlan
from broker.domain.queries import JsonScalar, MeasureFn


@dataclass(frozen=True, slots=True)
class CellStats:
    """One cell before disclosure control: its key, distinct entity count and measure values.

    ``key`` holds only the dimensions the cell is grouped by; a margin omits the dimensions it
    sums over, and the grand total has an empty key.
    """

    key: Mapping[str, JsonScalar]
    entities: int
    values: Mapping[str, float | int | None]
    contributors: Mapping[str, int] = field(default_factory=dict)

    @property
    def k(self) -> int:
        """The fewest distinct enterprises behind any released number of this cell.

        A sum over a cell of ten enterprises where only one reported the field is that one
        enterprise's value: each measure is protected by the enterprises that contribute to it.
        """
        return min([self.entities, *self.contributors.values()])


def _json_scalar(value: Any) -> JsonScalar:
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def _number(value: Any) -> float | int | None:
    if value is None:
        return None
    if isinstance(value, Decimal):
        value = float(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value  # type: ignore[no-any-return]


def _divide(num: Any, den: Any) -> float | None:
    num, den = _number(num), _number(den)
    if num is None or den is None or den == 0:
        return None
    return float(num) / float(den)


def read_cells(plan: CellPlan, rows: Iterable[tuple[Any, ...]]) -> list[CellStats]:
    """Turn engine rows laid out as ``plan`` says into cells with named measure values."""
    n = len(plan.dimensions)
    cells = []
    for row in rows:
        gid = int(row[n])
        key = {
            dim: _json_scalar(row[i])
            for i, dim in enumerate(plan.dimensions)
            if not gid >> (n - 1 - i) & 1
        }
        entities = int(row[n + 1])
        total, count, contributors = {}, {}, {}
        for i, name in enumerate(plan.fields):
            base = n + 2 + 3 * i
            total[name], count[name], contributors[name] = row[base], row[base + 1], row[base + 2]
        values: dict[str, float | int | None] = {}
        for m in plan.measures:
            if m.fn is MeasureFn.COUNT:
                values[m.name] = entities
            elif m.fn is MeasureFn.SUM and m.field:
                values[m.name] = _number(total[m.field])
            elif m.fn is MeasureFn.MEAN and m.field:
                values[m.name] = _divide(total[m.field], count[m.field])
            elif m.numerator and m.denominator:
                values[m.name] = _divide(total[m.numerator], total[m.denominator])
        cells.append(CellStats(key=key, entities=entities, values=values,
                               contributors={f: int(c) for f, c in contributors.items()}))
    return cells
