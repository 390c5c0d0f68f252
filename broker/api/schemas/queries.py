"""Aggregate queries, their answers and policy dry runs."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    Field,
    StringConstraints,
    model_validator,
)

from broker.domain.indicators import INDICATOR_ID
from broker.domain.queries import (
    MAX_SOURCES,
    MIN_SOURCES,
    SOURCE_ALIAS,
    AggregateSpec,
    Comparison,
    Dimension,
    JoinedSpec,
    Measure,
    MeasureFn,
    Release,
)
from broker.services.inputs import (
    ClosedKeys,
    FieldRef,
    FilterIn,
    Flag,
    In,
    Slug,
    Uuid,
)
from broker.services.queries import Explanation

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


class CellOut(BaseModel):
    """A released cell: values only when published."""

    key: dict[str, Any]
    values: dict[str, float | int | None] | None
    status: str
    reason: str | None = None


class PolicyOut(BaseModel):
    """Which policy revision decided, and each field's verdict."""

    revision: str
    fields: dict[str, str]


class ReceiptOut(BaseModel):
    """The audit entry that recorded this release; ``nonce`` salts its result digest."""

    seq: int
    leaf_hash: str
    nonce: str


class AggregateOut(BaseModel):
    """The answer to an aggregate query."""

    query_id: str
    k: int
    cells: list[CellOut]
    suppressed: dict[str, int]
    remainder: CellOut | None = Field(
        default=None, description="The withheld table cells pooled, when asked for; held "
                                  "to every rule itself")
    policy: PolicyOut
    receipt: ReceiptOut

    @classmethod
    def from_domain(cls, r: Release) -> AggregateOut:
        """Response form of a release (which always carries its receipt)."""
        if r.receipt is None or r.result_nonce is None:
            raise ValueError("a release is only returned once its audit entry is committed")
        return cls(
            query_id=r.query_id,
            k=r.k,
            cells=[CellOut.model_validate(c.as_json()) for c in r.cells],
            suppressed=dict(r.suppressed),
            remainder=CellOut.model_validate(r.remainder.as_json()) if r.remainder else None,
            policy=PolicyOut(revision=r.policy_revision, fields=dict(r.field_verdicts)),
            receipt=ReceiptOut(seq=r.receipt.seq, leaf_hash=r.receipt.leaf_hash,
                               nonce=r.result_nonce),
        )


class DisclosureRulesOut(BaseModel):
    """Thresholds of disclosure control: k, (n, k) dominance, p%, protection interval."""

    k_min: int
    dominance_n: int
    dominance_k: float
    p_percent: float
    protection_percent: float


class PredictedOut(BaseModel):
    """How many cells a query would publish, and withhold by reason, if it ran now."""

    published: int
    suppressed: dict[str, int]


class ExplainOut(BaseModel):
    """A dry run: what the policies would decide; nothing released."""

    allow: bool
    reasons: list[str] = Field(description="Stable kebab-case codes; empty when allowed")
    fields: dict[str, str] = Field(
        description="Per requested field: clear, generalize, pseudonymize, aggregate or deny")
    field_reasons: dict[str, list[str]] = Field(description="Why each denied field is denied")
    k: int = Field(description="Distinct enterprises every released cell would need")
    quota_remaining: int = Field(description="Queries left today under the contract")
    disclosure: DisclosureRulesOut | None = Field(
        description="The thresholds a release would be held to (when allowed)")
    policy_revision: str
    predicted: PredictedOut | None = Field(
        default=None, description="When allowed: how the cells would come out if the query "
        "ran now, against everything published so far (nothing is released or recorded)")

    @classmethod
    def from_domain(cls, explanation: Explanation) -> ExplainOut:
        """Response form of a dry run."""
        d, p = explanation.decision, explanation.predicted
        rules = DisclosureRulesOut(**asdict(d.rules)) if d.rules is not None else None
        verdicts = {name: verdict.value for name, verdict in d.fields.items()}
        predicted = (PredictedOut(published=p.published, suppressed=p.suppressed)
                     if p is not None else None)
        return cls(allow=d.allow, reasons=list(d.reasons), fields=verdicts,
                   field_reasons=d.field_reasons, k=d.k, quota_remaining=d.quota_remaining,
                   disclosure=rules, policy_revision=d.revision, predicted=predicted)
