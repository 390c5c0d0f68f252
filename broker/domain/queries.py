"""Aggregate query specification and the released result."""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

import rfc8785

JsonScalar = str | int | float | bool | None


class MeasureFn(StrEnum):
    """Aggregate functions a consumer may ask for."""

    COUNT = "count"
    SUM = "sum"
    MEAN = "mean"
    RATIO = "ratio"


class FilterOp(StrEnum):
    """The closed filter grammar: no free SQL ever reaches the engine."""

    EQ = "eq"
    IN = "in"
    RANGE = "range"


class FieldUse(StrEnum):
    """How a query uses a field; flow policies judge each use."""

    DIMENSION = "dimension"
    MEASURE = "measure"
    FILTER = "filter"


@dataclass(frozen=True, slots=True)
class Measure:
    """One requested statistic."""

    fn: MeasureFn
    field: str | None = None
    numerator: str | None = None
    denominator: str | None = None
    alias: str | None = None

    @property
    def name(self) -> str:
        """The key under which the value is released (DESIGN.md section 5)."""
        if self.alias:
            return self.alias
        if self.fn is MeasureFn.COUNT:
            return "count"
        if self.fn is MeasureFn.RATIO:
            return f"ratio_{self.numerator}_{self.denominator}"
        return f"{self.fn.value}_{self.field}"

    @property
    def fields(self) -> tuple[str, ...]:
        """The dataset fields this measure reads."""
        return tuple(f for f in (self.field, self.numerator, self.denominator) if f is not None)


@dataclass(frozen=True, slots=True)
class Dimension:
    """A group-by field, optionally generalised to a coarser ``level`` or cut into ``bins``."""

    field: str
    level: str | None = None
    bins: tuple[float, ...] | None = None


@dataclass(frozen=True, slots=True)
class Filter:
    """A row predicate: ``eq`` a value, ``in`` a list, or ``range`` [low, high] inclusive."""

    field: str
    op: FilterOp
    value: Any


@dataclass(frozen=True, slots=True)
class AggregateSpec:
    """What a consumer asks: grouped statistics over a contract's dataset."""

    contract_id: str
    purpose: str
    group_by: tuple[Dimension, ...]
    measures: tuple[Measure, ...]
    filters: tuple[Filter, ...] = ()
    totals: bool = False
    remainder: bool = False

    @property
    def dimensions(self) -> tuple[str, ...]:
        """The grouped field names, in order; each is a key of every cell."""
        return tuple(d.field for d in self.group_by)

    def field_uses(self) -> list[dict[str, str]]:
        """Every (field, use) pair the query makes, for the flow policy."""
        uses = [{"field": d.field, "use": FieldUse.DIMENSION.value} for d in self.group_by]
        uses += [
            {"field": f, "use": FieldUse.MEASURE.value} for m in self.measures for f in m.fields
        ]
        uses += [{"field": flt.field, "use": FieldUse.FILTER.value} for flt in self.filters]
        unique = {(u["field"], u["use"]): u for u in uses}
        return [unique[key] for key in sorted(unique)]

    def canonical(self) -> dict[str, Any]:
        """A JSON-able form whose RFC 8785 bytes identify the query."""
        return asdict(self)

    def fingerprint(self) -> str:
        """SHA-256 of the canonical spec: what the audit log keeps instead of the query."""
        return hashlib.sha256(rfc8785.dumps(self.canonical())).hexdigest()


#: An alias names one source of a cross-source query; its fields are named ``alias.field``.
SOURCE_ALIAS = re.compile(r"^[a-z][a-z0-9_]{0,15}$")
MIN_SOURCES, MAX_SOURCES = 2, 4


def split_qualified(name: str) -> tuple[str, str]:
    """``alias.field`` -> (alias, field); InvalidInput-free: the caller says what is wrong
    (ValueError when ``name`` is not qualified)."""
    alias, dot, field = name.partition(".")
    if not dot or not SOURCE_ALIAS.fullmatch(alias) or not field:
        raise ValueError(name)
    return alias, field


@dataclass(frozen=True, slots=True)
class Comparison:
    """An indicator's two sources compared per enterprise: ``left`` is authoritative."""

    left: str
    right: str
    tolerance_pct: float
    indicator: str | None = None


#: The values of a cross-check cell.
CROSSCHECK_VALUES = ("compared", "disagree", "abs_diff_sum")


@dataclass(frozen=True, slots=True)
class JoinedSpec:
    """A cross-source aggregate: several contracts' datasets joined by enterprise.

    Fields are named ``alias.field`` everywhere (group_by, measures, filters, cell keys).
    Each source is reduced to one value per enterprise and cell, then the sources are joined
    on the enterprise; only enterprises present in every source count.
    """

    sources: tuple[tuple[str, str], ...]  # (alias, contract_id), sorted by alias
    purpose: str
    group_by: tuple[Dimension, ...]
    measures: tuple[Measure, ...]
    filters: tuple[Filter, ...] = ()
    totals: bool = False
    remainder: bool = False
    #: A cross-check instead of measures: the authoritative field, the field checked against
    #: it, and the tolerance in percent of the authoritative value (``measures`` then name
    #: the sums each source's policy judges).
    compare: Comparison | None = None

    @property
    def aliases(self) -> tuple[str, ...]:
        """The source aliases, sorted."""
        return tuple(alias for alias, _ in self.sources)

    @property
    def dimensions(self) -> tuple[str, ...]:
        """The grouped (qualified) field names, in order."""
        return tuple(d.field for d in self.group_by)

    def contract_of(self, alias: str) -> str:
        """The contract id the alias names."""
        return dict(self.sources)[alias]

    def part(self, alias: str) -> AggregateSpec:
        """The query as it reads one source, its fields unqualified: that source's
        dimensions and filters, and each measure restricted to the fields it reads there
        (a source whose fields no measure reads contributes its enterprises, as a count)."""
        def own(name: str | None) -> str | None:
            if name is None:
                return None
            where, field = split_qualified(name)
            return field if where == alias else None

        measures = []
        for m in self.measures:
            if m.fn is MeasureFn.COUNT:
                measures.append(Measure(MeasureFn.COUNT))
                continue
            mine = Measure(m.fn, own(m.field), own(m.numerator), own(m.denominator))
            if mine.fields:
                measures.append(mine)
        if not measures:
            measures.append(Measure(MeasureFn.COUNT))
        return AggregateSpec(
            contract_id=self.contract_of(alias), purpose=self.purpose,
            group_by=tuple(Dimension(f, d.level, d.bins) for d in self.group_by
                           if (f := own(d.field)) is not None),
            measures=tuple(dict.fromkeys(measures)),
            filters=tuple(Filter(f, flt.op, flt.value) for flt in self.filters
                          if (f := own(flt.field)) is not None),
        )

    def field_uses(self) -> list[dict[str, str]]:
        """Every (qualified field, use) pair the query makes."""
        return AggregateSpec(contract_id="", purpose=self.purpose, group_by=self.group_by,
                             measures=self.measures, filters=self.filters).field_uses()

    def canonical(self) -> dict[str, Any]:
        """A JSON-able form whose RFC 8785 bytes identify the query."""
        return asdict(self)

    def fingerprint(self) -> str:
        """SHA-256 of the canonical spec: what the audit log keeps instead of the query."""
        return hashlib.sha256(rfc8785.dumps(self.canonical())).hexdigest()


class CellStatus(StrEnum):
    """Whether a cell's values were released."""

    PUBLISHED = "published"
    SUPPRESSED = "suppressed"


class SuppressionReason(StrEnum):
    """Why a cell was withheld (DESIGN.md section 5)."""

    MIN_ENTITIES = "min-entities"
    DOMINANCE = "dominance"
    COMPLEMENTARY = "complementary"
    DIFFERENCING = "differencing"
    #: Withheld because, with everything already published from the dataset, it would let
    #: one enterprise's figures (or a cell withheld as small or dominated) be derived.
    LINKED = "linked"


@dataclass(frozen=True, slots=True)
class Cell:
    """One released cell; a suppressed cell carries neither values nor an entity count."""

    key: Mapping[str, JsonScalar]
    values: Mapping[str, float | int | None] | None
    status: CellStatus
    reason: SuppressionReason | None = None

    def as_json(self) -> dict[str, Any]:
        """The cell as released to the consumer."""
        out: dict[str, Any] = {
            "key": dict(self.key),
            "values": dict(self.values) if self.values is not None else None,
            "status": self.status.value,
        }
        if self.reason is not None:
            out["reason"] = self.reason.value
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Cell:
        """A cell from its released form (as kept for identical repeats)."""
        reason = data.get("reason")
        return cls(key=dict(data["key"]), values=data["values"],
                   status=CellStatus(data["status"]),
                   reason=SuppressionReason(reason) if reason is not None else None)


@dataclass(frozen=True, slots=True)
class Receipt:
    """Proof of the audit entry that recorded a release: its seq and leaf hash."""

    seq: int
    leaf_hash: str


@dataclass(frozen=True, slots=True)
class Release:
    """The outcome of an aggregate query after disclosure control."""

    query_id: str
    cells: tuple[Cell, ...]
    k: int
    policy_revision: str
    field_verdicts: Mapping[str, str]
    receipt: Receipt | None = None
    result_nonce: str | None = None
    remainder: Cell | None = None

    @property
    def suppressed(self) -> dict[str, int]:
        """Suppressed cells counted by reason."""
        return dict(Counter(c.reason.value for c in self.cells if c.reason is not None))

    @property
    def cells_published(self) -> int:
        """How many cells carry values."""
        return sum(1 for c in self.cells if c.status is CellStatus.PUBLISHED)

    @property
    def cells_suppressed(self) -> int:
        """How many cells were withheld."""
        return len(self.cells) - self.cells_published
