"""Request inputs shared by the API and the console: constrained types, the request base,
and the bodies both rooms accept (a dataset's declaration, a contract offer).

They live below both entry points so that a form in the console is checked exactly as the
same request to the API is, never by a second copy of the rules."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    StringConstraints,
    ValidationError,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from broker.domain.datasets import (
    DATASET_NAME,
    MAX_SCALE,
    FieldRole,
    FieldSpec,
    FieldType,
    Sensitivity,
)
from broker.domain.errors import InvalidInput
from broker.domain.names import FIELD_NAME, ORG_ID
from broker.domain.queries import SOURCE_ALIAS, Filter, FilterOp
from broker.domain.slices import SLICE_NAME, Consent
from broker.domain.uscc import is_valid_uscc
from contracts.model import FieldForm, Terms

FieldName = Annotated[str, StringConstraints(pattern=FIELD_NAME.pattern)]
OrgId = Annotated[str, StringConstraints(pattern=ORG_ID.pattern)]
Slug = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")]
Uscc = Annotated[str, AfterValidator(lambda v: _check_uscc(v))]
Uuid = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-"
                                                r"[0-9a-f]{4}-[0-9a-f]{12}$")]
Text = Annotated[str, StringConstraints(min_length=1, max_length=200)]
#: Filter values: JSON scalars that canonical JSON (RFC 8785) can carry exactly, since the query
#: fingerprint in the audit log is computed over them: finite numbers, integers within +-2^53.
SafeInt = Annotated[int, Field(ge=-(2**53 - 1), le=2**53 - 1, strict=True)]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False, strict=True)]
Flag = Annotated[bool, Field(strict=True)]
Scalar = Annotated[str, StringConstraints(max_length=200)] | SafeInt | FiniteFloat | Flag | None


class ClosedKeys:
    """Marks a mapping whose keys follow a pattern (``patternProperties``) as closed: a key
    outside the pattern is refused, and the schema says so (``additionalProperties: false``)."""

    def __get_pydantic_json_schema__(self, core_schema: CoreSchema,
                                     handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        """The mapping's schema, closed to keys outside its pattern."""
        schema = handler(core_schema)
        schema["additionalProperties"] = False
        return schema


#: RFC 3339 date-time with its offset: what ``format: date-time`` promises. Pydantic also reads
#: numbers (Unix time) and dates without an offset, which the schema does not admit.
_DATE_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d{1,9})?"
                        r"([Zz]|[+-]\d{2}:\d{2})$")


def _rfc3339(value: Any) -> Any:
    if isinstance(value, str) and _DATE_TIME.fullmatch(value):
        return value
    raise ValueError("an RFC 3339 date-time with a time zone, e.g. 2026-01-01T00:00:00Z")


#: A date-time given as RFC 3339 text with a time zone (query parameters).
DateTimeText = Annotated[datetime, BeforeValidator(_rfc3339)]


def _check_uscc(value: str) -> str:
    if not is_valid_uscc(value):
        raise ValueError("not a unified social credit code with a valid check character")
    return value


class In(BaseModel):
    """Base of request bodies: unknown fields are an error (no mass assignment). Numbers and
    booleans are strict (no ``0`` for ``false``, no ``"5"`` for ``5``)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


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


#: A field as a query names it: ``field``, or ``alias.field`` in a cross-source query.
FieldRef = Annotated[str, StringConstraints(
    pattern="^(?:" + SOURCE_ALIAS.pattern.strip("^$") + r"\.)?" + FIELD_NAME.pattern.strip("^$")
    + "$")]


class FilterIn(In):
    """A predicate in the closed grammar: eq, in (list), range ([low, high], inclusive)."""

    field: FieldRef
    op: FilterOp
    value: Scalar | Annotated[list[Scalar], Field(max_length=1000)]

    def to_domain(self) -> Filter:
        """Domain form."""
        return Filter(self.field, self.op, self.value)


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
