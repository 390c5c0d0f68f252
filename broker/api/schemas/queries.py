"""Aggregate queries, their answers and policy dry runs."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from pydantic import BaseModel, Field

from broker.domain.queries import Release
from broker.services.queries import Explanation

# The request models are shared with the console (``broker.services.query_inputs``).
from broker.services.query_inputs import (
    AggregateIn,
    Alias,
    CrosscheckIn,
    DimensionIn,
    FieldRef,
    FilterIn,
    MeasureIn,
)

__all__ = ["AggregateIn", "AggregateOut", "Alias", "CellOut", "CrosscheckIn", "DimensionIn",
           "DisclosureRulesOut", "ExplainOut", "FieldRef", "FilterIn", "MeasureIn",
           "PolicyOut", "PredictedOut", "ReceiptOut"]


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
