"""Query spec -> SQL plan with entity-level pre-aggregation.

The plan is two-stage. The inner stage groups rows by (cell dimensions, entity), so an
enterprise with thirty monthly rows contributes once per cell; the outer stage groups those
per-entity partials into cells and counts distinct entities. Field names come only from the
declared schema (checked and double-quoted); filter values are bound parameters. No text from a
request is ever pasted into SQL.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from broker.domain.datasets import DatasetSchema, FieldType
from broker.domain.errors import InvalidInput
from broker.domain.queries import AggregateSpec, Filter, FilterOp, Measure, MeasureFn

MAX_DIMENSIONS = 4
MAX_MEASURES = 16
MAX_FILTERS = 16
MAX_IN_VALUES = 1000


def quote(name: str) -> str:
    """Double-quoted SQL identifier; names are schema-checked before they get here."""
    return '"' + name.replace('"', '""') + '"'


@dataclass(frozen=True, slots=True)
class CellPlan:
    """SQL and parameters, plus the layout of its result rows.

    Each row is: one value per dimension, the GROUPING() bitmask, the distinct entity count,
    then for each field in ``fields``: its sum, its count of non-null values, and the number of
    distinct entities that contributed a non-null value (the k that protects that measure).
    """

    sql: str
    params: tuple[Any, ...]
    dimensions: tuple[str, ...]
    measures: tuple[Measure, ...]
    fields: tuple[str, ...]
    columns: tuple[str, ...]


def _check_measure(m: Measure, schema: DatasetSchema) -> None:
    if m.fn is MeasureFn.COUNT:
        if m.fields:
            raise InvalidInput("count takes no field: it counts distinct enterprises.")
        return
    if m.fn is MeasureFn.RATIO:
        if m.numerator is None or m.denominator is None or m.field is not None:
            raise InvalidInput("ratio needs numerator and denominator and no field.")
    elif m.field is None or m.numerator is not None or m.denominator is not None:
        raise InvalidInput(f"{m.fn.value} needs exactly one field.")
    for name in m.fields:
        if not schema.field(name).type.is_numeric:
            raise InvalidInput("Measures need numeric fields.", fields=[name])


#: Which JSON values a filter may compare with a field of each type (dates come as ISO text).
_ACCEPTS: dict[FieldType, Callable[[Any], bool]] = {
    FieldType.STRING: lambda v: isinstance(v, str),
    FieldType.BOOLEAN: lambda v: isinstance(v, bool),
    FieldType.INTEGER: lambda v: isinstance(v, int) and not isinstance(v, bool),
    FieldType.NUMBER: lambda v: (
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    ),
}


def _coerce(value: Any, ftype: FieldType, field: str) -> Any:
    """A filter value as the engine should bind it; InvalidInput when it has the wrong type."""
    if ftype is FieldType.DATE:
        if isinstance(value, str):
            try:
                return dt.date.fromisoformat(value)
            except ValueError:
                pass
    elif _ACCEPTS[ftype](value):
        return value
    raise InvalidInput(
        f"Filter value has the wrong type for a {ftype.value} field.", fields=[field]
    )


def _where(filters: Sequence[Filter], schema: DatasetSchema) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    for flt in filters:
        spec = schema.field(flt.field)
        col = quote(flt.field)
        if flt.op is FilterOp.EQ:
            clauses.append(f"{col} = ?")
            params.append(_coerce(flt.value, spec.type, flt.field))
        elif flt.op is FilterOp.IN:
            if not isinstance(flt.value, list) or not 0 < len(flt.value) <= MAX_IN_VALUES:
                raise InvalidInput(
                    f"'in' takes a list of 1 to {MAX_IN_VALUES} values.", fields=[flt.field]
                )
            clauses.append(f"{col} IN ({', '.join('?' * len(flt.value))})")
            params += [_coerce(v, spec.type, flt.field) for v in flt.value]
        else:
            if not isinstance(flt.value, list) or len(flt.value) != 2 or flt.value == [None, None]:
                raise InvalidInput(
                    "'range' takes [low, high]; either may be null, not both.", fields=[flt.field]
                )
            if spec.type in (FieldType.STRING, FieldType.BOOLEAN):
                raise InvalidInput("'range' needs a numeric or date field.", fields=[flt.field])
            low, high = flt.value
            if low is not None:
                clauses.append(f"{col} >= ?")
                params.append(_coerce(low, spec.type, flt.field))
            if high is not None:
                clauses.append(f"{col} <= ?")
                params.append(_coerce(high, spec.type, flt.field))
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


def plan_aggregate(spec: AggregateSpec, schema: DatasetSchema) -> CellPlan:
    """Validate ``spec`` against ``schema`` and compile it to a cell-table plan."""
    dims = spec.group_by
    if len(dims) > MAX_DIMENSIONS:
        raise InvalidInput(f"At most {MAX_DIMENSIONS} group_by fields.")
    if len(set(dims)) != len(dims):
        raise InvalidInput("group_by fields must be distinct.")
    if not 0 < len(spec.measures) <= MAX_MEASURES:
        raise InvalidInput(f"Ask for 1 to {MAX_MEASURES} measures.")
    if len(spec.filters) > MAX_FILTERS:
        raise InvalidInput(f"At most {MAX_FILTERS} filters.")
    for name in dims:
        schema.field(name)
    names = [m.name for m in spec.measures]
    if len(set(names)) != len(names):
        raise InvalidInput("Measure names must be distinct; use 'as' to rename.")
    for m in spec.measures:
        _check_measure(m, schema)
    where, params = _where(spec.filters, schema)

    fields = tuple(dict.fromkeys(f for m in spec.measures for f in m.fields))

    # Internal aliases contain '#', which no field name can, so they never collide with a
    # column; the inner GROUP BY uses ordinals for the same reason.
    entity = quote(schema.entity_field)
    gcols = [quote(f"g#{i}") for i in range(len(dims))]
    inner_select = ", ".join(
        [*(f"{quote(d)} AS {g}" for d, g in zip(dims, gcols, strict=True)),
         f"{entity} AS {quote('e#')}",
         *(f"SUM({quote(f)}) AS {quote('s#' + f)}, COUNT({quote(f)}) AS {quote('n#' + f)}"
           for f in fields)]
    )
    ordinals = ", ".join(str(i) for i in range(1, len(dims) + 2))
    inner = f"SELECT {inner_select} FROM src{where} GROUP BY {ordinals}"  # noqa: S608
    grouping = f"GROUPING({', '.join(gcols)})" if gcols else "0"
    # The inner stage has one row per (cell, enterprise), so within a cell plain counts are
    # distinct counts. Margins merge cells an enterprise may appear in several times: only
    # then is COUNT(DISTINCT ...) needed (it costs about 40% more on a million rows).
    e = quote("e#")
    if spec.totals:
        entities = f"COUNT(DISTINCT {e})"
        contributing = "COUNT(DISTINCT CASE WHEN {n} > 0 THEN " + e + " END)"
    else:
        entities = "COUNT(*)"
        contributing = "SUM(CASE WHEN {n} > 0 THEN 1 ELSE 0 END)"
    outer_select = ", ".join(
        [*gcols, f"{grouping} AS gid", f"{entities} AS entities",
         *(f"SUM({quote('s#' + f)}), SUM({quote('n#' + f)}), "
           + contributing.format(n=quote("n#" + f))
           for f in fields)]
    )
    if not gcols:
        group = ""
    elif spec.totals:
        group = " GROUP BY GROUPING SETS (" + ", ".join(_grouping_sets(gcols)) + ")"
    else:
        group = " GROUP BY " + ", ".join(gcols)
    order = " ORDER BY gid, " + ", ".join(f"{g} NULLS LAST" for g in gcols) if gcols else ""
    sql = f"WITH ent AS ({inner}) SELECT {outer_select} FROM ent{group}{order}"  # noqa: S608
    columns = tuple(dict.fromkeys([*dims, schema.entity_field, *fields,
                                   *(f.field for f in spec.filters)]))
    return CellPlan(sql=sql, params=tuple(params), dimensions=dims,
                    measures=spec.measures, fields=fields, columns=columns)


def _grouping_sets(gcols: list[str]) -> list[str]:
    """Every subset of the dimensions: the table, all its margins and the grand total."""
    n = len(gcols)
    sets = []
    for mask in range(2**n):
        members = [g for i, g in enumerate(gcols) if not mask >> (n - 1 - i) & 1]
        sets.append("(" + ", ".join(members) + ")")
    return sets
