"""The provider's request bodies, shared by the API and the console: a dataset's declaration
(the upload's ``meta`` part), a contract offer, an offer signature and a consented slice.

They live below both entry points so that a console form is checked exactly as the same
request to the API is, never by a second copy of the rules."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import AwareDatetime, Field, StringConstraints, ValidationError

from broker.domain.datasets import (
    DATASET_NAME,
    MAX_SCALE,
    FieldRole,
    FieldSpec,
    FieldType,
    Sensitivity,
)
from broker.domain.errors import InvalidInput
from broker.domain.slices import SLICE_NAME, Consent
from broker.services.inputs import ClosedKeys, FieldName, In, OrgId, Slug, Text, Uuid
from broker.services.query_inputs import FilterIn
from contracts.model import FieldForm, Terms

# -- a dataset's declaration (the upload's ``meta`` part) ---------------------------------


class FieldIn(In):
    """One declared column."""

    name: FieldName
    type: FieldType
    role: FieldRole
    sensitivity: Sensitivity = Sensitivity.L1
    hierarchy: Literal["gbt4754"] | None = None
    codes: Annotated[list[Annotated[str, StringConstraints(min_length=1, max_length=64)]],
                     Field(min_length=1, max_length=10_000)] | None = None
    bins: Annotated[list[float], Field(min_length=1, max_length=32)] | None = Field(
        default=None, description="Bin edges a number may be grouped by (a query picks any of "
        "them); measures and generalize-form numbers are grouped only on declared edges")
    format: Literal["uscc"] | None = Field(
        default=None, description="A checked value format: 'uscc' requires every value to be "
        "a unified social credit code with a correct check character (GB 32100)")
    scale: Annotated[int, Field(strict=True, ge=0, le=MAX_SCALE)] | None = Field(
        default=None, description="Decimal places of a number field (0 to 9): its values are "
        "held and summed as exact decimals, so every format and row order gives the same "
        "sums; a value with more decimals, or more than 18 digits before the point, is "
        "refused at upload; sums are published rounded to this scale, means to scale + 2")

    def to_domain(self) -> FieldSpec:
        """Domain form."""
        return FieldSpec(self.name, self.type, self.role, self.sensitivity, self.hierarchy,
                         tuple(self.codes) if self.codes is not None else None,
                         tuple(self.bins) if self.bins is not None else None,
                         self.format, self.scale)


class DatasetMetaIn(In):
    """The ``meta`` part of a dataset upload."""

    name: Annotated[str, StringConstraints(pattern=DATASET_NAME.pattern)]
    entity_field: FieldName
    fields: Annotated[list[FieldIn], Field(min_length=1, max_length=200)]


def parse_dataset_meta(meta: bytes | str) -> DatasetMetaIn:
    """A dataset's declaration from its JSON text; a 422 (``errors`` names each problem's
    place, never a value) when it does not match."""
    try:
        return DatasetMetaIn.model_validate_json(meta)
    except ValidationError as exc:
        issues = [{"loc": [str(p) for p in e["loc"]], "msg": e["msg"], "type": e["type"]}
                  for e in exc.errors()]
        raise InvalidInput("The 'meta' part does not match the dataset schema.",
                           errors=issues) from exc


# -- a contract offer --------------------------------------------------------------------


class DominanceIn(In):
    """(n, k) dominance: suppress when the n largest contributors exceed k percent."""

    n: int = Field(default=2, ge=1, le=10, strict=True)
    k: float = Field(default=85.0, gt=0, le=100, strict=True)
    p: float = Field(default=0.0, ge=0, le=100, strict=True,
                     description="p% rule: withhold a cell when the second-largest contributor "
                                 "could estimate the largest to within p percent; 0 = off")


class ContractIn(In):
    """Terms a provider offers to one consumer organisation."""

    dataset_id: Uuid
    consumer_org: OrgId
    purposes: Annotated[list[Slug], Field(min_length=1, max_length=20)]
    fields: Annotated[dict[FieldName, FieldForm], ClosedKeys(),
                      Field(min_length=1, max_length=200)]
    k_min: int = Field(default=5, ge=2, le=10_000, strict=True)
    dominance: DominanceIn = Field(default_factory=DominanceIn)
    # Whole seconds by default: the policy compares windows in whole seconds, rounded inwards,
    # so a start with a fraction would only begin at the next second.
    valid_from: AwareDatetime = Field(
        default_factory=lambda: datetime.now(UTC).replace(microsecond=0))
    valid_until: AwareDatetime
    max_queries_per_day: int = Field(default=100, ge=1, le=1_000_000, strict=True)
    dataset_version: int | None = Field(
        default=None, ge=1, strict=True,
        description="Pin the contract to this version; by default it follows the latest")
    slice_id: Uuid | None = Field(default=None, description="Limit the contract to this "
                                  "consented slice of the dataset")
    result_retention_days: int = Field(default=30, ge=0, le=3650, strict=True,
                                       description="Days the consumer may keep a result")
    linkable: bool = Field(default=False, strict=True,
                           description="Let the consumer join this data with other "
                                       "providers' data by enterprise (cross-source queries)")

    def to_domain(self) -> Terms:
        """The offered terms (every field but ``consumer_org``, to whom they are offered)."""
        return Terms.from_record(self.model_dump(exclude={"consumer_org"}))


#: A base64 Ed25519 signature (64 bytes) over a contract's canonical terms.
Signature = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9+/]{86}==$")]


# -- a consented slice -------------------------------------------------------------------


class ConsentIn(In):
    """Who consented to sharing the slice, when, to what, and where that is recorded."""

    given_by: Text
    given_at: AwareDatetime
    scope: Annotated[str, StringConstraints(min_length=1, max_length=2000)]
    reference: Text | None = None


class SliceIn(In):
    """A consented slice: a subset of fields and a row predicate (the query filter grammar)."""

    name: Annotated[str, StringConstraints(pattern=SLICE_NAME.pattern)]
    fields: Annotated[list[FieldName], Field(min_length=1, max_length=200)]
    predicate: Annotated[list[FilterIn], Field(max_length=16)] = []
    consent: ConsentIn

    def consent_domain(self) -> Consent:
        """Domain form of the consent record."""
        c = self.consent
        return Consent(given_by=c.given_by, given_at=c.given_at, scope=c.scope,
                       reference=c.reference)
