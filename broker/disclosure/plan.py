"""Query spec -> SQL plan with entity-level pre-aggregation and every margin.

The plan has three stages. The first groups rows by (cell keys, enterprise), so an enterprise
with thirty monthly rows contributes once per cell. The second rolls those per-enterprise
partials up to every margin of the table (GROUPING SETS over the dimensions, each with the
enterprise), whether or not the query asked for totals: complementary suppression must protect
the table against margins that another query can publish. The third makes one row per cell
(table cell or margin) with what disclosure control needs: the distinct enterprises and their
dense indices, and per field the total, the count of values, the contributing enterprises, the
total of absolute contributions and the largest ones.

Field names come only from the declared schema (checked and double-quoted); filter values, bin
edges and labels are bound parameters. No text from a request is ever pasted into SQL.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

from broker.disclosure.levels import Generalisation, generalisation, generalise_gbt4754
from broker.domain.datasets import (
    ATOM_COLUMN,
    ATOM_OWNER_SHIFT,
    DECIMAL_PRECISION,
    ENTITY_INDEX_COLUMN,
    DatasetSchema,
    FieldRole,
    FieldSpec,
    FieldType,
)
from broker.domain.errors import InvalidInput
from broker.domain.queries import (
    AggregateSpec,
    Dimension,
    Filter,
    FilterOp,
    JoinedSpec,
    Measure,
    MeasureFn,
    split_qualified,
)

MAX_DIMENSIONS = 4
MAX_MEASURES = 16
MAX_FILTERS = 16
MAX_IN_VALUES = 1000
MAX_TOP = 10

#: The relation the engine sees: the dataset version, whose ENTITY_INDEX_COLUMN holds each
#: row's enterprise as a dense index (see connectors.storage).
SOURCE = "src"


#: Roles whose values are the figures being protected.
_MAGNITUDES = (FieldRole.MEASURE, FieldRole.SENSITIVE)


def quote(name: str) -> str:
    """Double-quoted SQL identifier; names are schema-checked before they get here."""
    return '"' + name.replace('"', '""') + '"'


@dataclass(frozen=True, slots=True)
class CellPlan:
    """SQL and parameters, plus what is needed to read and complete its result.

    Result columns: one per dimension, ``gid`` (GROUPING() bitmask: bit set = summed over),
    ``entities``, ``members`` (dense entity indices), then per field ``i`` of ``fields``:
    ``s{i}`` total, ``n{i}`` values, ``c{i}`` contributing enterprises, ``a{i}`` total of
    absolute contributions, ``t{i}`` the ``top`` largest absolute contributions, ``x{i}`` the
    indices of the cell's enterprises without a value (usually none), ``y{i}`` (table cells
    only) the atoms of the rows with a value. ``periods`` names the
    dataset's date fields, whose spans scope the differencing guard (see scopes).
    """

    sql: str
    params: tuple[Any, ...]
    dimensions: tuple[str, ...]
    keysets: tuple[tuple[Any, ...] | None, ...]
    measures: tuple[Measure, ...]
    fields: tuple[str, ...]
    top: int
    periods: tuple[str, ...] = ()
    figures: tuple[bool, ...] = ()  # per dimension: are its keys numbers or dates?
    #: Per field, the decimal places its sums are exact to (``FieldSpec.sum_scale``: 0 for an
    #: integer, the declared scale of a number), None for a double summed in a fixed order.
    exact: tuple[int | None, ...] = ()
    #: Per field, the scale a number declares (published sums are rounded to it), else None.
    scales: tuple[int | None, ...] = ()

    def exact_scale(self, j: int) -> int | None:
        """The exact scale of field ``j``'s sums (None: a double, or a plan without scales)."""
        return self.exact[j] if j < len(self.exact) else None

    def scale_of(self, name: str) -> int | None:
        """The scale the field ``name`` declares, if any."""
        for field, scale in zip(self.fields, self.scales, strict=False):
            if field == name:
                return scale
        return None


def sum_sql(expression: str, exact: bool) -> str:
    """SQL summing ``expression`` so that the result depends only on the values summed, never
    on their order (rows, files, DuckDB's parallel chunks).

    Integers and declared-scale decimals sum exactly (DuckDB's SUM over BIGINT gives HUGEINT,
    over DECIMAL(38, s) a DECIMAL(38, s), both exact and failing on overflow). Doubles are not
    associative, so a plain SUM differs in its last digits from one order to another; they
    are summed in ascending order with compensated (Kahan-Babuska) summation, ``fsum(x ORDER BY
    x)``: the same values give the same bits, and more accurate ones than a naive sum.
    """
    if exact:
        return f"SUM({expression})"
    return f"fsum({expression} ORDER BY {expression})"


def _value_sql(column: str, scale: int | None) -> str:
    """A field's column as the plan sums it: a scaled number as DECIMAL(38, scale) (what its
    versions store; a no-op then), anything else as stored."""
    if scale is None:
        return column
    return f"CAST({column} AS DECIMAL({DECIMAL_PRECISION}, {int(scale)}))"


def _check_measure(m: Measure, lookup: Callable[[str], FieldSpec]) -> None:
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
        if not lookup(name).type.is_numeric:
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
        if spec.role in _MAGNITUDES:
            # A threshold on the figures themselves selects firms by their secret: moved
            # across one firm's value, it makes any answer (even a refusal) an oracle for it.
            raise InvalidInput("Filters apply to dimensions, not to measure fields.",
                               fields=[flt.field])
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


def _keyset(dim: Dimension, spec: FieldSpec, gen: Generalisation,
            filters: Sequence[Filter]) -> tuple[Any, ...] | None:
    """The declared keys of a dimension, narrowed by eq/in filters on the same field."""
    if gen.keys is None:
        return None
    keys = gen.keys
    for flt in filters:
        if flt.field != dim.field or flt.op is FilterOp.RANGE or dim.bins is not None:
            continue
        values = flt.value if flt.op is FilterOp.IN else [flt.value]
        if dim.level is not None and spec.hierarchy == "gbt4754":
            values = [generalise_gbt4754(v, dim.level) for v in values if isinstance(v, str)]
        allowed = set(values)
        keys = tuple(k for k in keys if k in allowed)
    return keys


def plan_aggregate(spec: AggregateSpec, schema: DatasetSchema, *, top: int = 2) -> CellPlan:
    """Validate ``spec`` against ``schema`` and compile it to a cell-table plan.

    ``top`` is how many of the largest contributions each cell keeps per field: at least the
    n of the (n, k) dominance rule and the two the p% rule needs.
    """
    _check_shape(spec, top)
    gens = [_generalisation(dim, schema) for dim in spec.group_by]
    _check_measures(spec, schema)
    where, where_params = _where(spec.filters, schema)
    keysets = tuple(
        _keyset(dim, schema.field(dim.field), gen, spec.filters)
        for dim, gen in zip(spec.group_by, gens, strict=True)
    )
    fields = tuple(dict.fromkeys(f for m in spec.measures for f in m.fields))
    params = tuple(p for gen in gens for p in gen.params) + tuple(where_params)
    exact = tuple(schema.field(f).sum_scale for f in fields)
    scales = tuple(schema.field(f).scale for f in fields)
    return CellPlan(sql=_cells_sql(gens, fields, where, top, exact, scales), params=params,
                    dimensions=spec.dimensions, keysets=keysets,
                    measures=spec.measures, fields=fields, top=top,
                    periods=tuple(f.name for f in schema.fields if f.type is FieldType.DATE),
                    figures=tuple(schema.field(d.field).type not in (FieldType.STRING,
                                                                      FieldType.BOOLEAN)
                                  and d.bins is None and d.level in (None, "day")
                                  for d in spec.group_by),
                    exact=exact, scales=scales)


def source_relation(alias: str) -> str:
    """The relation the engine sees for one source of a cross-source query."""
    return f"{SOURCE}_{alias}"


@contextmanager
def _qualified(alias: str) -> Iterator[None]:
    """Errors about a source's fields name them as the query does: ``alias.field``."""
    try:
        yield
    except InvalidInput as exc:
        named = exc.extensions.get("fields")
        if named:
            exc.extensions["fields"] = [f"{alias}.{f}" for f in named]
        raise


@dataclass(frozen=True, slots=True)
class _Source:
    """One source of a joined plan: its dimensions and fields by their global positions."""

    alias: str
    dims: tuple[int, ...]
    fields: tuple[int, ...]
    sql: str  # the base rows: keys, entity, atom and values, filtered
    params: tuple[Any, ...]

#: The table fields a cross-check releases (internal names: '#' is in no field name).
DISAGREE, ABS_DIFF = "#disagree", "#abs_diff"


def plan_joined(spec: JoinedSpec, schemas: Mapping[str, DatasetSchema], *, top: int = 2
                ) -> CellPlan:
    """Validate a cross-source query against its sources' schemas (by alias) and compile it
    to a cell-table plan over the sources joined by enterprise.

    Each source is first reduced to one row per (its own keys, enterprise), summing its rows
    in scope, so one enterprise's many rows in one source never multiply its rows in
    another. For every margin, each source is rolled up over its own dimensions only and the
    sources are inner-joined on the enterprise (its index in the county register): an
    enterprise counts in a cell when it is in every source there. The cell stage is the
    single-source plan's. Fields are named ``alias.field``; each source's relation is
    ``source_relation(alias)``.
    """
    if set(schemas) != set(spec.aliases):
        raise InvalidInput("Every source needs its dataset.")
    _check_shape(spec, top)

    def owner(name: str) -> tuple[str, str]:
        try:
            alias, field = split_qualified(name)
        except ValueError:
            alias, field = "", ""
        if alias not in schemas:
            raise InvalidInput("Fields of a cross-source query are named alias.field, with "
                               "the alias of one of its sources.", fields=[name])
        return alias, field

    gens: list[Generalisation] = []
    keysets: list[tuple[Any, ...] | None] = []
    figures: list[bool] = []
    for dim in spec.group_by:
        alias, field = owner(dim.field)
        schema = schemas[alias]
        local = replace(dim, field=field)
        own_filters = [replace(f, field=owner(f.field)[1]) for f in spec.filters
                       if owner(f.field)[0] == alias]
        with _qualified(alias):
            gen = _generalisation(local, schema)
            fspec = schema.field(field)
        gens.append(gen)
        keysets.append(_keyset(local, fspec, gen, own_filters))
        figures.append(fspec.type not in (FieldType.STRING, FieldType.BOOLEAN)
                       and dim.bins is None and dim.level in (None, "day"))
    names = [m.name for m in spec.measures]
    if len(set(names)) != len(names):
        raise InvalidInput("Measure names must be distinct; use 'as' to rename.")

    def lookup(name: str) -> FieldSpec:
        alias, field = owner(name)
        with _qualified(alias):
            return schemas[alias].field(field)

    compare = spec.compare
    measures = spec.measures
    if compare is None:
        for m in spec.measures:
            _check_measure(m, lookup)
        fields = tuple(dict.fromkeys(f for m in spec.measures for f in m.fields))
        exact = tuple(lookup(f).sum_scale for f in fields)
        scales = tuple(lookup(f).scale for f in fields)
    else:
        for name in (compare.left, compare.right):
            if not lookup(name).type.is_numeric:
                raise InvalidInput("A cross-check compares numeric fields.", fields=[name])
        if owner(compare.left)[0] == owner(compare.right)[0]:
            raise InvalidInput("A cross-check compares fields of two different sources.",
                               fields=[compare.left, compare.right])
        if not (math.isfinite(compare.tolerance_pct) and 0 <= compare.tolerance_pct <= 100):
            raise InvalidInput("tolerance_pct is a percentage from 0 to 100.")
        # The two fields compared are fields of the table too: not released as values, but held
        # to dominance and audited as if their sums were, since the figures derive from them.
        fields = (DISAGREE, ABS_DIFF, compare.left, compare.right)
        measures = (Measure(MeasureFn.COUNT, alias="compared"),
                    Measure(MeasureFn.SUM, DISAGREE, alias="disagree"),
                    Measure(MeasureFn.SUM, ABS_DIFF, alias="abs_diff_sum"))
        sides = (lookup(compare.left).sum_scale, lookup(compare.right).sum_scale)
        # disagreements are counted (exact); the absolute differences are exact when both
        # sides are (a DECIMAL of the larger scale), else doubles
        differences = None if None in sides else max(s for s in sides if s is not None)
        exact = (0, differences, *sides)
        scales = (None, None, lookup(compare.left).scale, lookup(compare.right).scale)
    for f in spec.filters:
        owner(f.field)
    sources = []
    for alias in spec.aliases:
        dims = tuple(k for k, d in enumerate(spec.group_by) if owner(d.field)[0] == alias)
        own = tuple(j for j, f in enumerate(fields)
                    if not f.startswith("#") and owner(f)[0] == alias)
        filters = [replace(f, field=owner(f.field)[1]) for f in spec.filters
                   if owner(f.field)[0] == alias]
        with _qualified(alias):
            where, where_params = _where(filters, schemas[alias])
        base = ", ".join([
            *(f"{gens[k].sql} AS {quote(f'g#{k}')}" for k in dims),
            f"{quote(ENTITY_INDEX_COLUMN)} AS {quote('i#')}",
            f"{quote(ATOM_COLUMN)} AS {quote('a#')}",
            *(f"{_value_sql(quote(owner(fields[j])[1]), scales[j])} AS {quote(f'v#{j}')}"
              for j in own),
        ])
        sources.append(_Source(
            alias, dims, own, f"SELECT {base} FROM {source_relation(alias)}{where}",  # noqa: S608
            tuple(p for k in dims for p in gens[k].params) + tuple(where_params)))
    derived = None
    if compare is not None:
        # the joined enterprise's sums of the two fields compared (fields 2 and 3)
        left, right = (f"t{next(t for t, src in enumerate(sources) if j in src.fields)}."
                       f"{quote(f's#{j}')}" for j in (2, 3))
        # The tolerance is a checked float, written as a literal (no text from a request).
        tolerance = repr(float(compare.tolerance_pct))
        disagrees = (f"CASE WHEN {left} IS NULL OR {right} IS NULL OR abs({left} - {right}) > "
                     f"{tolerance} / 100.0 * abs({left}) THEN 1 ELSE 0 END")
        # (per-enterprise value, its "has a value" count): the disagreeing enterprises are the
        # contributors of the first, so the cell knows who they are (never released).
        derived = {0: (disagrees, disagrees),
                   1: (f"abs(coalesce({left}, 0) - coalesce({right}, 0))", "1")}
    return CellPlan(sql=_joined_sql(sources, len(gens), len(fields), top, derived,
                                    exact=[e is not None for e in exact]),
                    params=tuple(p for src in sources for p in src.params),
                    dimensions=spec.dimensions, keysets=tuple(keysets),
                    measures=measures, fields=fields, top=top, periods=(),
                    figures=tuple(figures), exact=exact, scales=scales)


def _joined_sql(sources: Sequence[_Source], dims: int, nfields: int, top: int,
                derived: Mapping[int, tuple[str, str]] | None = None, *,
                exact: Sequence[bool]) -> str:
    """Per source its base rows, its (keys, enterprise) rows and its own lattice; per margin
    the sources' nodes joined on the enterprise; then the cell stage.

    ``derived`` (a cross-check) gives table fields by position as an expression over the
    joined enterprise's sums of other fields (the two compared) instead of a source's
    column, with its "has a value" count: one unknown per
    enterprise, so its rows for the release audit are the enterprise itself; the first
    (a count of enterprises) carries no largest contributions."""
    g = [quote(f"g#{k}") for k in range(dims)]
    s = [quote(f"s#{j}") for j in range(nfields)]
    n = [quote(f"n#{j}") for j in range(nfields)]
    atoms = [quote(f"l#{j}") for j in range(nfields)]
    i, a = quote("i#"), quote("a#")
    ctes: list[str] = []
    universes: list[int] = []
    for t, src in enumerate(sources):
        v = {j: quote(f"v#{j}") for j in src.fields}
        keys = [g[k] for k in src.dims]
        ent = ", ".join([
            *keys, i,
            *(f"{sum_sql(v[j], exact[j])} AS {s[j]}, COUNT({v[j]}) AS {n[j]}"
              for j in src.fields),
            *(f"list({a}) FILTER (WHERE {v[j]} IS NOT NULL) AS {atoms[j]}"
              for j in src.fields),
        ])
        ordinals = ", ".join(str(k) for k in range(1, len(keys) + 2))
        ctes.append(f"b{t} AS ({src.sql})")
        ctes.append(f"e{t} AS MATERIALIZED (SELECT {ent} FROM b{t} GROUP BY {ordinals})")  # noqa: S608
        universe = sum(1 << k for k in src.dims)
        universes.append(universe)
        nodes, _ = _lattice(g, [s[j] for j in src.fields], [n[j] for j in src.fields], i,
                            exact=[exact[j] for j in src.fields],
                            universe=universe, prefix=f"r{t}_", top=f"e{t}")
        ctes += nodes
    full = (1 << dims) - 1
    _, branches = _lattice(g, s, n, i, exact=exact)
    for mask, _, _ in branches:
        parts = []
        for t in range(len(sources)):
            own = mask & universes[t]
            parts.append(f"e{t}" if own == universes[t] else f"r{t}_{own}")
        picked = [f"t{next(t for t, src in enumerate(sources) if k in src.dims)}.{g[k]}"
                  for k in range(dims) if mask >> k & 1]
        for t, src in enumerate(sources):
            picked += [f"t{t}.{s[j]}, t{t}.{n[j]}" for j in src.fields]
            if mask == full:
                picked += [f"t{t}.{atoms[j]}" for j in src.fields]
        for j, (expression, valued) in (derived or {}).items():
            picked.append(f"{expression} AS {s[j]}, {valued} AS {n[j]}")
            if mask == full:
                picked.append(f"[CAST({i} AS BIGINT) << {ATOM_OWNER_SHIFT}] AS {atoms[j]}")
        joined = " JOIN ".join(f"{rel} AS t{t}" + (f" USING ({i})" if t else "")
                               for t, rel in enumerate(parts))
        ctes.append(f"j{mask} AS (SELECT {', '.join([*picked, i])} FROM {joined})")  # noqa: S608
    return ("WITH " + ", ".join(ctes) + " "
            + _cell_stage(g, s, n, i, atoms, top, branches, lambda mask: f"j{mask}",
                          frozenset({0}) if derived else frozenset(), exact=exact))


def _check_shape(spec: AggregateSpec | JoinedSpec, top: int) -> None:
    """The limits on how many dimensions, measures and filters a query has."""
    dims = spec.dimensions
    if len(dims) > MAX_DIMENSIONS:
        raise InvalidInput(f"At most {MAX_DIMENSIONS} group_by fields.")
    if len(set(dims)) != len(dims):
        raise InvalidInput("group_by fields must be distinct.")
    if not 0 < len(spec.measures) <= MAX_MEASURES:
        raise InvalidInput(f"Ask for 1 to {MAX_MEASURES} measures.")
    if len(spec.filters) > MAX_FILTERS:
        raise InvalidInput(f"At most {MAX_FILTERS} filters.")
    if not 2 <= top <= MAX_TOP:
        raise InvalidInput(f"Dominance n must be 1 to {MAX_TOP}.")


def _generalisation(dim: Dimension, schema: DatasetSchema) -> Generalisation:
    """How a dimension's keys are computed; never the entity, a measure only in bins."""
    fspec = schema.field(dim.field)
    if fspec.role is FieldRole.ENTITY:
        raise InvalidInput("The entity field cannot be a dimension.", fields=[dim.field])
    if fspec.role in _MAGNITUDES and dim.bins is None:
        # Its values are the secrets themselves: a key would show one firm's figure.
        raise InvalidInput("A measure field can be grouped only into bins.",
                           fields=[dim.field])
    return generalisation(fspec, quote(dim.field), dim.level, dim.bins)


def _check_measures(spec: AggregateSpec, schema: DatasetSchema) -> None:
    """Distinct measure names, and each measure well formed over numeric fields."""
    names = [m.name for m in spec.measures]
    if len(set(names)) != len(names):
        raise InvalidInput("Measure names must be distinct; use 'as' to rename.")
    for m in spec.measures:
        _check_measure(m, schema.field)


def _cells_sql(gens: Sequence[Generalisation], fields: tuple[str, ...], where: str,
               top: int, exact: Sequence[int | None], scales: Sequence[int | None]) -> str:
    """The three stages as one statement: rows per (cell, enterprise), the lattice of
    margins per enterprise, and one row per cell with its contributor statistics."""
    # Internal aliases contain '#', which no field name can, so they never collide with a
    # column; GROUP BY uses ordinals for the same reason.
    g = [quote(f"g#{i}") for i in range(len(gens))]
    v = [quote(f"v#{j}") for j in range(len(fields))]
    s = [quote(f"s#{j}") for j in range(len(fields))]
    n = [quote(f"n#{j}") for j in range(len(fields))]
    i = quote("i#")
    a = quote("a#")
    atoms = [quote(f"l#{j}") for j in range(len(fields))]

    base = ", ".join([
        *(f"{gen.sql} AS {gc}" for gen, gc in zip(gens, g, strict=True)),
        f"{quote(ENTITY_INDEX_COLUMN)} AS {i}",
        f"{quote(ATOM_COLUMN)} AS {a}",
        *(f"{_value_sql(quote(f), scale)} AS {vc}"
          for f, vc, scale in zip(fields, v, scales, strict=True)),
    ])
    exacts = [e is not None for e in exact]
    ent = ", ".join([
        *g, i, *(f"{sum_sql(vc, e)} AS {sc}, COUNT({vc}) AS {nc}"
                 for vc, sc, nc, e in zip(v, s, n, exacts, strict=True)),
        *(f"list({a}) FILTER (WHERE {vc} IS NOT NULL) AS {lc}"
          for vc, lc in zip(v, atoms, strict=True)),
    ])
    ordinals = ", ".join(str(k) for k in range(1, len(gens) + 2))
    nodes, branches = _lattice(g, s, n, i, exact=exacts)
    full = (1 << len(g)) - 1
    return (
        f"WITH base AS (SELECT {base} FROM {SOURCE}{where}), "  # noqa: S608
        f"ent AS MATERIALIZED (SELECT {ent} FROM base GROUP BY {ordinals})"
        + "".join(f", {node}" for node in nodes)
        + " " + _cell_stage(g, s, n, i, atoms, top, branches,
                            lambda mask: "ent" if mask == full else f"r{mask}", exact=exacts)
    )


def _cell_stage(g: Sequence[str], s: Sequence[str], n: Sequence[str], i: str,
                atoms: Sequence[str], top: int, branches: Sequence[tuple[int, int, list[str]]],
                relation: Callable[[int], str], untopped: frozenset[int] = frozenset(), *,
                exact: Sequence[bool]) -> str:
    """One row per cell (table cell or margin), each margin grouped by its own dimensions
    only, from the per-enterprise relation of its kept-dimension mask: the enterprises and
    their indices, and per field what disclosure control needs. Fields in ``untopped``
    (counts of enterprises with some property, not magnitudes) carry no largest
    contributions, so the dominance rules do not apply to them."""
    per_field = "".join(
        f", {sum_sql(sc, exact[j])} AS s{j}, SUM({nc}) AS n{j}"
        f", COUNT(*) FILTER (WHERE {nc} > 0) AS c{j}"
        f", {sum_sql(f'abs({sc})', exact[j])} AS a{j}, "
        + (f"CAST([] AS DOUBLE[]) AS t{j}" if j in untopped
           else f"max(abs({sc}), {int(top)}) AS t{j}")
        + f", list({i}) FILTER (WHERE {nc} = 0) AS x{j}"
        for j, (sc, nc) in enumerate(zip(s, n, strict=True))
    )
    full = (1 << len(g)) - 1
    cells = []
    for mask, summed, kept in branches:
        outer = ", ".join([*(f"{gc} AS d{k}" if mask >> k & 1 else f"NULL AS d{k}"
                             for k, gc in enumerate(g)), f"{summed} AS gid"])
        group = f" GROUP BY {', '.join(kept)}" if kept else ""
        # The rows (atoms) behind each table cell's figures, per field: the release audit's
        # forms; a margin's are the union of its table cells'.
        rows = "".join(f", flatten(list({lc})) AS y{j}" if mask == full
                       else f", CAST(NULL AS BIGINT[]) AS y{j}"
                       for j, lc in enumerate(atoms))
        cells.append(
            f"SELECT {outer}, COUNT(*) AS entities, list({i}) AS members{per_field}{rows} "  # noqa: S608
            f"FROM {relation(mask)}{group}"
        )
    return " UNION ALL ".join(cells)


def _lattice(g: list[str], s: Sequence[str], n: Sequence[str], i: str, *,
             exact: Sequence[bool], universe: int | None = None, prefix: str = "r",
             top: str = "ent") -> tuple[list[str], list[tuple[int, int, list[str]]]]:
    """Every margin per enterprise, as CTEs, and per margin (kept-dimension mask, GROUPING()
    bitmask, kept key columns).

    Each set of kept dimensions is aggregated from the smallest already computed set that has
    one more dimension (sums, minima and maxima compose), not from the full table as GROUPING
    SETS would: a lattice that reads the big (cell, enterprise) table once per dimension
    instead of once per margin. ``universe`` (a mask over ``g``, all of it by default) limits
    the lattice to one source's dimensions; its nodes are ``{prefix}{mask}``, and the node of
    the whole universe is ``top``. ``exact`` says per field whether its sums are exact
    (``sum_sql``).
    """
    partial_sums = "".join(f", {sum_sql(sc, e)} AS {sc}, SUM({nc}) AS {nc}"
                           for sc, nc, e in zip(s, n, exact, strict=True))
    nodes: list[str] = []
    branches: list[tuple[int, int, list[str]]] = []
    dims = len(g)
    full = (1 << dims) - 1 if universe is None else universe
    for mask in sorted(sorted(_submasks(full)), key=lambda m: -m.bit_count()):
        kept = [g[k] for k in range(dims) if mask >> k & 1]
        if mask != full:
            missing = next(k for k in range(dims) if full >> k & 1 and not mask >> k & 1)
            parent = mask | 1 << missing
            source = top if parent == full else f"{prefix}{parent}"
            keys = ", ".join([*kept, i])
            nodes.append(f"{prefix}{mask} AS MATERIALIZED (SELECT {keys}{partial_sums} "  # noqa: S608
                         f"FROM {source} GROUP BY {keys})")
        summed = sum(1 << (dims - 1 - k) for k in range(dims) if not mask >> k & 1)
        branches.append((mask, summed, kept))
    return nodes, branches


def _submasks(mask: int) -> list[int]:
    """Every mask whose bits are a subset of ``mask``'s."""
    out, sub = [], mask
    while True:
        out.append(sub)
        if sub == 0:
            return out
        sub = (sub - 1) & mask
