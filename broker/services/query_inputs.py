"""Aggregate queries as a request names them (a JSON body, a console form): validated once,
here, for every entry point, and turned into the domain's query specs."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, StringConstraints, model_validator

from broker.domain.indicators import INDICATOR_ID
from broker.domain.names import FIELD_NAME
from broker.domain.queries import (
    MAX_SOURCES,
    MIN_SOURCES,
    SOURCE_ALIAS,
    AggregateSpec,
    Comparison,
    Dimension,
    Filter,
    FilterOp,
    JoinedSpec,
    Measure,
    MeasureFn,
)
from broker.services.inputs import ClosedKeys, Flag, In, Scalar, Slug, Uuid

#: A field as a query names it: ``field``, or ``alias.field`` in a cross-source query.
FieldRef = Annotated[str, StringConstraints(
    pattern="^(?:" + SOURCE_ALIAS.pattern.strip("^$") + r"\.)?" + FIELD_NAME.pattern.strip("^$")
    + "$")]
Alias = Annotated[str, StringConstraints(pattern=SOURCE_ALIAS.pattern)]


class MeasureIn(In):
    """A statistic: count (distinct enterprises), sum, mean or ratio of sums."""

    fn: MeasureFn
    field: FieldRef | None = None
    numerator: FieldRef | None = None
    denominator: FieldRef | None = None
    as_: Annotated[str, StringConstraints(pattern=r"^[a-z_][a-z0-9_]{0,62}$")] | None = Field(
        default=None, alias="as"
    )

    def to_domain(self) -> Measure:
        """Domain form."""
        return Measure(self.fn, self.field, self.numerator, self.denominator, self.as_)


class FilterIn(In):
    """A predicate in the closed grammar: eq, in (list), range ([low, high], inclusive)."""

    field: FieldRef
    op: FilterOp
    value: Scalar | Annotated[list[Scalar], Field(max_length=1000)]

    def to_domain(self) -> Filter:
        """Domain form."""
        return Filter(self.field, self.op, self.value)


class DimensionIn(In):
    """A group-by field at a coarser level (month, quarter, year; GB/T 4754 group, division,
    section) or cut into numeric bins."""

    field: FieldRef
    level: Literal["day", "month", "quarter", "year", "class", "group", "division",
                   "section"] | None = None
    bins: Annotated[list[Annotated[float, Field(strict=True, allow_inf_nan=False)]],
                    Field(min_length=1, max_length=32)] | None = None

    def to_domain(self) -> Dimension:
        """Domain form."""
        return Dimension(self.field, self.level,
                         tuple(self.bins) if self.bins is not None else None)


class AggregateIn(In):
    """An aggregate query under a contract (``contract_id``), or across sources joined by
    enterprise (``sources``: alias -> contract id, 2 to 4; fields then named
    ``alias.field``)."""

    contract_id: Uuid | None = None
    sources: Annotated[dict[Alias, Uuid], ClosedKeys(),
                       Field(min_length=MIN_SOURCES, max_length=MAX_SOURCES)] | None = Field(
        default=None, description="A cross-source query: alias -> contract id (2 to 4), "
                                  "instead of contract_id; fields are named alias.field")
    purpose: Slug
    group_by: Annotated[list[FieldRef | DimensionIn], Field(max_length=4)] = []
    measures: Annotated[list[MeasureIn], Field(min_length=1, max_length=16)]
    filters: Annotated[list[FilterIn], Field(max_length=16)] = []
    totals: Flag = False
    remainder: Flag = False

    @model_validator(mode="after")
    def _one_kind(self) -> AggregateIn:
        if (self.contract_id is None) == (self.sources is None):
            raise ValueError("Give either contract_id or sources (a cross-source query).")
        for name in self._field_names():
            alias, dot, _ = name.partition(".")
            if self.sources is None and dot:
                raise ValueError(f"Field {name!r}: only a cross-source query (sources) names "
                                 "fields alias.field.")
            if self.sources is not None and (not dot or alias not in self.sources):
                raise ValueError(f"Field {name!r}: a cross-source query names each field "
                                 "alias.field, with one of its sources' aliases.")
        return self

    def _field_names(self) -> list[str]:
        names = [d if isinstance(d, str) else d.field for d in self.group_by]
        names += [f for m in self.measures for f in (m.field, m.numerator, m.denominator)
                  if f is not None]
        return names + [f.field for f in self.filters]

    def _parts(self) -> dict[str, Any]:
        return {
            "purpose": self.purpose,
            "group_by": tuple(Dimension(d) if isinstance(d, str) else d.to_domain()
                              for d in self.group_by),
            "measures": tuple(m.to_domain() for m in self.measures),
            "filters": tuple(f.to_domain() for f in self.filters),
            "totals": self.totals,
            "remainder": self.remainder,
        }

    @property
    def joined(self) -> bool:
        """Whether this is a cross-source query."""
        return self.sources is not None

    def to_domain(self) -> AggregateSpec:
        """Domain form of a single-source query."""
        if self.contract_id is None:
            raise ValueError("a cross-source query has no single contract")
        return AggregateSpec(contract_id=self.contract_id, **self._parts())

    def to_joined(self) -> JoinedSpec:
        """Domain form of a cross-source query (sources sorted by alias)."""
        if self.sources is None:
            raise ValueError("a single-source query has no sources")
        return JoinedSpec(sources=tuple(sorted(self.sources.items())), **self._parts())


class CrosscheckIn(In):
    """A cross-check of one figure between two sources joined by enterprise: an indicator of
    the catalogue, or two fields (``left`` is authoritative)."""

    sources: Annotated[dict[Alias, Uuid], ClosedKeys(), Field(min_length=2, max_length=2)]
    purpose: Slug
    indicator: Annotated[str, StringConstraints(pattern=INDICATOR_ID.pattern)] | None = None
    left: FieldRef | None = None
    right: FieldRef | None = None
    tolerance_pct: Annotated[float, Field(ge=0, le=100, allow_inf_nan=False)] = Field(
        default=5.0, description="An enterprise disagrees when its values differ by more "
                                 "than this percentage of the authoritative (left) value")
    group_by: Annotated[list[FieldRef | DimensionIn], Field(max_length=4)] = []
    filters: Annotated[list[FilterIn], Field(max_length=16)] = []
    totals: Flag = False

    @model_validator(mode="after")
    def _one_comparison(self) -> CrosscheckIn:
        if (self.indicator is None) == (self.left is None or self.right is None) or (
                self.indicator is not None and (self.left or self.right)):
            raise ValueError("Give either indicator or both left and right.")
        names = [d if isinstance(d, str) else d.field for d in self.group_by]
        names += [f.field for f in self.filters]
        names += [f for f in (self.left, self.right) if f is not None]
        for name in names:
            alias, dot, _ = name.partition(".")
            if not dot or alias not in self.sources:
                raise ValueError(f"Field {name!r}: a cross-check names each field "
                                 "alias.field, with one of its sources' aliases.")
        return self

    def to_joined(self) -> JoinedSpec:
        """Domain form: the comparison's fields as the sums each source's policy judges."""
        compare = None
        measures: tuple[Measure, ...] = (Measure(MeasureFn.COUNT),)
        if self.left is not None and self.right is not None:
            compare = Comparison(self.left, self.right, self.tolerance_pct)
            measures = (Measure(MeasureFn.SUM, self.left), Measure(MeasureFn.SUM, self.right))
        else:
            compare = Comparison("", "", self.tolerance_pct)
        return JoinedSpec(
            sources=tuple(sorted(self.sources.items())), purpose=self.purpose,
            group_by=tuple(Dimension(d) if isinstance(d, str) else d.to_domain()
                           for d in self.group_by),
            measures=measures, filters=tuple(f.to_domain() for f in self.filters),
            totals=self.totals, compare=compare)
