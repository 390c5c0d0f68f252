"""The cell table: a dense grid of every cell and margin, with contributor statistics.

Each dimension's domain is its declared key set (a code list, bin labels, true/false) when it
has one, otherwise the values present after filtering. The grid holds every combination of
domain values, plus one "total" position per dimension for the margins, so a combination with
no enterprise is an ordinary cell with zero enterprises: it is suppressed like any small cell,
and empty and suppressed cells look alike to the consumer.
"""

from __future__ import annotations

import array
import datetime as dt
import itertools
import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Context, Decimal
from typing import Any

import numpy as np
import pyarrow as pa
from pyroaring import BitMap, BitMap64

from broker.disclosure.plan import CellPlan
from broker.disclosure.scopes import Scopes
from broker.domain.errors import InvalidInput
from broker.domain.queries import JsonScalar, MeasureFn

#: Above this many cells (margins included) a table is refused: no consumer reads it, and
#: protecting it would take longer than anyone waits.
MAX_GRID = 200_000

Index = tuple[int, ...]

#: A cell's sum of a field: exact (int, Decimal) or a double.
Total = float | int | Decimal


def _json_scalar(value: Any) -> JsonScalar:
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def _order(values: set[Any]) -> list[Any]:
    present = sorted((v for v in values if v is not None), key=lambda v: (str(type(v)), v))
    return present + ([None] if None in values else [])


@dataclass(slots=True)
class FieldStats:
    """Per-cell statistics of one measured field, as arrays over the grid."""

    total: np.ndarray          # sum of values (0 where none)
    values: np.ndarray         # count of non-null values (mean denominator)
    contributors: np.ndarray   # enterprises with a value
    abs_total: np.ndarray      # sum of the enterprises' absolute contributions
    top: np.ndarray            # grid shape + (top,): largest absolute contributions, descending
    members: Members = field(default_factory=lambda: Members())
    atoms: Atoms = field(default_factory=lambda: Atoms())
    #: The exact sums (int or Decimal, 0 where none) of a field summed exactly (an integer, a
    #: number with a declared scale); ``total`` holds them as the nearest doubles.
    exact: np.ndarray | None = None

    def sum_at(self, index: Index) -> Total:
        """The cell's sum: exact where the field sums exactly, else the double."""
        if self.exact is not None:
            value: Total = self.exact[index]
            return value
        return float(self.total[index])


@dataclass(slots=True)
class CellTable:
    """Every cell of a query's table and all its margins, on a dense grid.

    Position ``len(domains[j])`` along dimension ``j`` is that dimension's total.
    """

    dimensions: tuple[str, ...]
    domains: tuple[tuple[Any, ...], ...]
    entities: np.ndarray
    members: Members
    fields: dict[str, FieldStats]
    scopes: dict[Index, str] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, ...]:
        """Grid shape: each domain plus its total position."""
        return tuple(len(d) + 1 for d in self.domains)

    def is_margin(self, index: Index) -> bool:
        """Whether the cell sums over at least one dimension."""
        return any(i == len(d) for i, d in zip(index, self.domains, strict=True))

    def key(self, index: Index) -> dict[str, JsonScalar]:
        """The released key of a cell: the dimensions it is not summed over."""
        return {
            dim: _json_scalar(dom[i])
            for dim, dom, i in zip(self.dimensions, self.domains, index, strict=True)
            if i < len(dom)
        }

    def cells(self, *, margins: bool) -> Iterator[Index]:
        """Table cells in domain order, then (when ``margins``) margins from finest to total."""
        everything = sorted(np.ndindex(*self.shape), key=lambda ix: (
            sum(i == len(d) for i, d in zip(ix, self.domains, strict=True)), ix))
        for index in everything:
            if margins or not self.is_margin(index):
                yield index

    def values(self, index: Index, plan: CellPlan) -> dict[str, float | int | None]:
        """The measure values of one cell, named as released."""
        return measure_values(
            plan, int(self.entities[index]),
            {f: (s.sum_at(index), int(s.values[index]), int(s.contributors[index]))
             for f, s in self.fields.items()},
        )


#: Decimal places a published mean of a number with a declared scale keeps beyond the scale.
MEAN_EXTRA_DIGITS = 2


#: Decimal arithmetic wide enough for any sum of DECIMAL(38, s) (and any double, exactly:
#: 767 significant digits at most) so that rounding happens only where asked for.
_WIDE = Context(prec=800, rounding=ROUND_HALF_EVEN)


def _rounded(value: Total, places: int) -> float:
    """``value`` rounded half to even to ``places`` decimals, computed on its exact decimal
    value (a double's too), then the nearest double: the same sum gives the same bits."""
    exact = Decimal(value).quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_EVEN,
                                    context=_WIDE)
    return float(exact) + 0.0  # a negative zero (-0.001 to two places) made zero


#: The largest integer I-JSON (RFC 7493, and so the audit's RFC 8785 encoding) carries exactly.
MAX_JSON_INTEGER = 2**53 - 1


def published_sum(value: Total, scale: int | None) -> float | int:
    """A sum as released: rounded to the field's declared ``scale``; an exact integer sum as
    an integer (as the nearest double beyond 2**53, which JSON numbers cannot carry exactly);
    a double as it is (a negative zero made zero)."""
    if scale is not None:
        return _rounded(value, scale)
    if isinstance(value, Decimal) and value == value.to_integral():
        value = int(value)
    if isinstance(value, int) and abs(value) <= MAX_JSON_INTEGER:
        return value
    return float(value) + 0.0


def published_mean(value: Total, count: int, scale: int | None) -> float:
    """A mean as released: of a field with a declared scale, the exact sum over the count
    rounded to scale + ``MEAN_EXTRA_DIGITS`` decimals; otherwise the double nearest the sum
    over the count (exact sums divided exactly, then rounded once)."""
    if scale is not None:
        exact = _WIDE.divide(Decimal(value), Decimal(count))
        return _rounded(exact, scale + MEAN_EXTRA_DIGITS)
    if isinstance(value, int):
        return value / count  # one correctly rounded division
    return float(value) / count + 0.0  # a negative zero made zero


def measure_values(
    plan: CellPlan, entities: int, fields: Mapping[str, tuple[Total, int, int]]
) -> dict[str, float | int | None]:
    """Named measure values from a count of enterprises and, per field, (total, values,
    contributors): sums and means rounded as ``published_sum`` and ``published_mean`` say,
    ratios the quotient of the two sums as doubles."""

    def total(name: str) -> Total | None:
        value, _, contributors = fields[name]
        finite = value.is_finite() if isinstance(value, Decimal) else math.isfinite(value)
        return value if contributors and finite else None

    out: dict[str, float | int | None] = {}
    for m in plan.measures:
        if m.fn is MeasureFn.COUNT:
            out[m.name] = entities
        elif m.fn is MeasureFn.SUM and m.field:
            s = total(m.field)
            out[m.name] = published_sum(s, plan.scale_of(m.field)) if s is not None else None
        elif m.fn is MeasureFn.MEAN and m.field:
            s, n = total(m.field), fields[m.field][1]
            out[m.name] = (published_mean(s, n, plan.scale_of(m.field))
                           if s is not None and n else None)
        elif m.numerator and m.denominator:
            num, den = total(m.numerator), total(m.denominator)
            out[m.name] = float(num) / float(den) + 0.0 if num is not None and den else None
    return out


class Members:
    """Per cell, the dense indices of its enterprises, as bitmaps made on first use.

    Built from the engine's list column without Python integers; only the cells the
    differencing guard and the ledger look at (released ones) are ever turned into bitmaps.
    """

    def __init__(self, column: pa.ChunkedArray | None = None, *,
                 minus: Members | None = None) -> None:
        self._rows: dict[Index, int] = {}
        self._made: dict[Index, BitMap] = {}
        self._minus = minus
        if column is None or len(column) == 0:
            self._offsets, self._values = np.zeros(1, dtype=np.int64), np.zeros(0, np.uint32)
            return
        lists = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
        self._offsets = lists.offsets.to_numpy()
        self._values = lists.values.cast(pa.uint32()).to_numpy(zero_copy_only=False)

    def place(self, index: Index, row: int) -> None:
        """Say which result row holds the cell at ``index``."""
        self._rows[index] = row

    def get(self, index: Index, default: BitMap | None = None) -> BitMap:
        """The cell's bitmap (empty for a cell no enterprise is in)."""
        if index not in self._made:
            row = self._rows.get(index)
            if row is None:
                return default if default is not None else BitMap()
            members = array.array("I")
            start, end = self._offsets[row], self._offsets[row + 1]
            members.frombytes(self._values[start:end].tobytes())
            made = BitMap(members)
            if self._minus is not None:  # the cell's enterprises less those listed here
                made = self._minus.get(index) - made
            self._made[index] = made
        return self._made[index]


class Atoms:
    """Per table cell, the atoms (rows) behind one field's figures, as 64-bit bitmaps made on
    first use; a margin's are the union of the table cells it sums over."""

    def __init__(self, column: pa.ChunkedArray | None = None) -> None:
        self._rows: dict[Index, int] = {}
        self._made: dict[Index, BitMap64] = {}
        if column is None or len(column) == 0:
            self._offsets, self._values = np.zeros(1, dtype=np.int64), np.zeros(0, np.uint64)
            return
        lists = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
        self._offsets = lists.offsets.to_numpy()
        self._values = lists.values.cast(pa.uint64()).to_numpy(zero_copy_only=False)

    def place(self, index: Index, row: int) -> None:
        """Say which result row holds the table cell at ``index``."""
        self._rows[index] = row

    def get(self, table: CellTable, index: Index) -> BitMap64:
        """The atoms of the cell (a table cell, or a margin as the union of its cells)."""
        if index not in self._made:
            if table.is_margin(index):
                ranges = [range(len(d)) if i == len(d) else (i,)
                          for i, d in zip(index, table.domains, strict=True)]
                made = BitMap64()
                for cell in itertools.product(*ranges):
                    made |= self.get(table, cell)
            else:
                row = self._rows.get(index)
                if row is None:
                    return BitMap64()
                start, end = self._offsets[row], self._offsets[row + 1]
                atoms = array.array("Q")  # from the buffer: no Python integer per atom
                atoms.frombytes(self._values[start:end].tobytes())
                made = BitMap64(atoms)
            self._made[index] = made
        return self._made[index]


def read_table(plan: CellPlan, result: pa.Table, scopes: Scopes | None = None) -> CellTable:
    """Lay the engine's rows out on the dense grid, adding empty cells for missing keys."""
    members = Members(result.column("members"))
    lists = {"members": members}
    for j in range(len(plan.fields)):  # contributors: members less those without a value
        lists[f"x{j}"] = Members(result.column(f"x{j}"), minus=members)
    atoms = {f"y{j}": Atoms(result.column(f"y{j}")) for j in range(len(plan.fields))}
    rows = result.drop_columns([*lists, *atoms]).to_pydict()
    count = result.num_rows
    d = len(plan.dimensions)
    gids = rows["gid"]
    observed: list[set[Any]] = [set() for _ in range(d)]
    for r in range(count):
        if gids[r] == 0:
            for k in range(d):
                observed[k].add(rows[f"d{k}"][r])
    domains = []
    for k, keys in enumerate(plan.keysets):
        if keys is None:
            domains.append(tuple(_order(observed[k])))
        else:
            extra = observed[k] - set(keys)
            domains.append(tuple(keys) + tuple(_order(extra)))
    shape = tuple(len(dom) + 1 for dom in domains)
    size = math.prod(shape)
    if size > MAX_GRID:
        raise InvalidInput(
            f"The table would have {size:,} cells with its margins (at most {MAX_GRID:,}); "
            "group by fewer or coarser fields, or filter."
        )
    positions = [{value: i for i, value in enumerate(dom)} for dom in domains]
    table = CellTable(
        dimensions=plan.dimensions,
        domains=tuple(domains),
        entities=np.zeros(shape, dtype=np.int64),
        members=lists.get("members", Members()),
        fields={
            f: FieldStats(
                total=np.zeros(shape), values=np.zeros(shape, dtype=np.int64),
                contributors=np.zeros(shape, dtype=np.int64), abs_total=np.zeros(shape),
                top=np.zeros((*shape, plan.top)),
            )
            for f in plan.fields
        },
    )
    for j, name in enumerate(plan.fields):
        table.fields[name].members = lists[f"x{j}"]
        table.fields[name].atoms = atoms[f"y{j}"]
        if plan.exact_scale(j) is not None:
            table.fields[name].exact = np.full(shape, 0, dtype=object)
    for r in range(count):
        gid = gids[r]
        index = tuple(
            len(domains[k]) if gid >> (d - 1 - k) & 1 else positions[k][rows[f"d{k}"][r]]
            for k in range(d)
        )
        table.entities[index] = rows["entities"][r]
        if scopes is not None:
            table.scopes[index] = scopes.of_cell(
                [None if gid >> (d - 1 - k) & 1 else _json_scalar(rows[f"d{k}"][r])
                 for k in range(d)])
        table.members.place(index, r)
        for j, name in enumerate(plan.fields):
            stats = table.fields[name]
            stats.total[index] = _float(rows[f"s{j}"][r])
            if stats.exact is not None:
                stats.exact[index] = _exact(rows[f"s{j}"][r])
            stats.values[index] = rows[f"n{j}"][r] or 0
            stats.contributors[index] = rows[f"c{j}"][r]
            stats.abs_total[index] = _float(rows[f"a{j}"][r])
            top = [_float(x) for x in rows[f"t{j}"][r] or []][: plan.top]
            stats.top[index][: len(top)] = top
            stats.members.place(index, r)
            if gid == 0:
                stats.atoms.place(index, r)
    return table


def set_source_scopes(table: CellTable, scopes: Mapping[str, Scopes]) -> None:
    """A joined table's cell scopes: each source's own (its date fields' span in the cell),
    as one JSON object by alias, so that the differencing guard compares a joined cell with
    each source's releases of the same period (see ``SourcesLedger``)."""
    if not scopes:
        return
    for index in np.ndindex(*table.shape):
        key = [None if i == len(dom) else _json_scalar(dom[i])
               for dom, i in zip(table.domains, index, strict=True)]
        own = {alias: scope for alias, found in sorted(scopes.items())
               if (scope := found.of_cell(key))}
        if own:
            table.scopes[index] = json.dumps(own, sort_keys=True)


def _exact(value: Any) -> int | Decimal:
    """An exact sum as the engine gives it (an int, or a Decimal; None: no value)."""
    if value is None:
        return 0
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral() and value.as_tuple().exponent == 0 \
            else value
    return int(value)


def _float(value: Any) -> float:
    if value is None:
        return 0.0
    value = float(value)
    return value if math.isfinite(value) else math.nan


def measure_members(table: CellTable, index: Index, key: str) -> BitMap:
    """The enterprises behind one measure of a cell: all of them, or a field's contributors."""
    if key == ENTITIES:
        return table.members.get(index, BitMap())
    return table.fields[key.removeprefix("f:")].members.get(index, BitMap())


def ledger_key(table: CellTable, index: Index, measure: str) -> str:
    """The ledger key of one measure of a cell: the measure and the period its rows span.

    Cells are compared by the differencing guard only within the same scope (see scopes).
    """
    scope = table.scopes.get(index)
    return f"{measure}@{scope}" if scope else measure


#: Key of the distinct-enterprise count, as a ledger measure and as a protected quantity;
#: fields are keyed ``f:<name>`` in the ledger and by name as quantities.
ENTITIES = "#entities"


def measure_keys(plan: CellPlan) -> tuple[str, ...]:
    """The ledger keys of what a query releases: the count, and each measured field."""
    keys = [ENTITIES] if any(m.fn is MeasureFn.COUNT for m in plan.measures) else []
    return tuple(keys + [f"f:{f}" for f in plan.fields])
