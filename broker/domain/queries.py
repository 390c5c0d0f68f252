"""Aggregate query specification and the released result."""

from __future__ import annotations

import hashlib
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
