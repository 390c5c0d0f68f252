"""Request (``XxxIn``) and response (``XxxOut``) models; requests forbid unknown fields."""

from __future__ import annotations

import hashlib
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)

from broker.domain.datasets import (
    DATASET_NAME,
    FIELD_NAME,
    FieldRole,
    FieldSpec,
    FieldType,
    Sensitivity,
)
from broker.domain.organisations import ORG_ID, Organisation, OrgKind
from broker.domain.queries import (
    AggregateSpec,
    Dimension,
    Filter,
    FilterOp,
    Measure,
    MeasureFn,
    Release,
)
from broker.domain.slices import SLICE_NAME, Consent, Slice
from broker.domain.uscc import is_valid_uscc
from broker.policy.decisions import FlowDecision
from broker.services.contracts import ContractView
from broker.services.datasets import DatasetView, SqlData, VersionView
from contracts.model import Dominance, FieldForm

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


def _check_uscc(value: str) -> str:
    if not is_valid_uscc(value):
        raise ValueError("not a unified social credit code with a valid check character")
    return value


class In(BaseModel):
    """Base of request bodies: unknown fields are an error (no mass assignment). Numbers and
    booleans are strict (no ``0`` for ``false``, no ``"5"`` for ``5``)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class OrgIn(In):
    """An organisation to register."""

    id: OrgId
    name: Text
    kind: OrgKind
    uscc: Uscc | None = None
    public_key: Annotated[str, StringConstraints(max_length=4096)] | None = None


class OrgOut(BaseModel):
    """A registered organisation."""

    id: str
    name: str
    kind: OrgKind
    uscc: str | None
    public_key: str | None
    created_at: datetime

    @classmethod
    def from_domain(cls, org: Organisation) -> OrgOut:
        """Response form of an organisation."""
        return cls(id=org.id, name=org.name, kind=org.kind, uscc=org.uscc,
                   public_key=org.public_key, created_at=org.created_at)


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

    def to_domain(self) -> FieldSpec:
        """Domain form."""
        return FieldSpec(self.name, self.type, self.role, self.sensitivity, self.hierarchy,
                         tuple(self.codes) if self.codes is not None else None,
                         tuple(self.bins) if self.bins is not None else None,
                         self.format)


class DatasetMetaIn(In):
    """The ``meta`` part of a dataset upload."""

    name: Annotated[str, StringConstraints(pattern=DATASET_NAME.pattern)]
    entity_field: FieldName
    fields: Annotated[list[FieldIn], Field(min_length=1, max_length=200)]


class FieldOut(BaseModel):
    """A declared column as the caller may see it."""

    name: str
    type: FieldType
    role: FieldRole
    sensitivity: Sensitivity
    hierarchy: str | None = None
    codes: list[str] | None = None
    bins: list[float] | None = None


class DatasetOut(BaseModel):
    """Catalogue entry: metadata only, never data."""

    id: str
    name: str
    owner_org: str
    entity_field: str
    version: int
    rows: int
    sha256: str
    created_at: datetime
    fields: list[FieldOut]

    @classmethod
    def from_domain(cls, view: DatasetView) -> DatasetOut:
        """Response form of a catalogue view."""
        d = view.dataset
        return cls(
            id=d.id, name=d.name, owner_org=d.owner_org, entity_field=d.schema.entity_field,
            version=d.version, rows=d.rows, sha256=d.sha256, created_at=d.created_at,
            fields=[FieldOut.model_validate(f.as_json()) for f in view.fields],
        )


#: A SQL source as the operator named it in ``BROKER_SQL_SOURCES``.
SourceName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
#: A table, optionally schema-qualified; the source checks that it exists and quotes it.
TableName = Annotated[str, StringConstraints(min_length=1, max_length=256,
                                             pattern=r"^[^\x00-\x1f\x7f]+$")]
#: The text of one query; what it may read is for the service and the source to check.
SqlQuery = Annotated[str, StringConstraints(min_length=1, max_length=65_536)]


class SqlSourceIn(In):
    """Where a SQL import reads from: a configured source and exactly one table or query."""

    name: SourceName = Field(description="A source the operator configured (BROKER_SQL_SOURCES)")
    table: TableName | None = Field(default=None, description="A table (or schema.table)")
    query: SqlQuery | None = Field(default=None, description="One read-only SELECT")

    @model_validator(mode="after")
    def _one_of_table_or_query(self) -> SqlSourceIn:
        if (self.table is None) == (self.query is None):
            raise ValueError("give exactly one of 'table' and 'query'")
        return self

    def to_domain(self) -> SqlData:
        """Domain form."""
        return SqlData(source=self.name, table=self.table, query=self.query)


class DatasetImportIn(DatasetMetaIn):
    """A dataset snapshotted from a SQL source: the upload's ``meta`` fields and the source."""

    source: SqlSourceIn


class VersionImportIn(In):
    """A new version of a dataset, snapshotted from a SQL source."""

    source: SqlSourceIn


class VersionOut(BaseModel):
    """One stored version of a dataset: metadata only."""

    version: int
    rows: int
    sha256: str
    created_at: datetime

    @classmethod
    def from_domain(cls, view: VersionView) -> VersionOut:
        """Response form of a version."""
        return cls(version=view.version, rows=view.rows, sha256=view.sha256,
                   created_at=view.created_at)


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
    fields: Annotated[dict[FieldName, FieldForm], Field(min_length=1, max_length=200)]
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


Signature = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9+/]{86}==$")]


class SignatureIn(In):
    """A base64 Ed25519 signature over the contract's canonical terms (RFC 8785 bytes of
    ``GET /v1/contracts/{id}/terms``), made with the organisation's registered key."""

    signature: Signature


class AcceptIn(In):
    """Acceptance: the consumer's signature, unless the broker holds the consumer's key."""

    signature: Signature | None = None


class SignatureOut(BaseModel):
    """A party's signature and whether it verifies under its registered key now."""

    signature: str | None
    valid: bool


class ContractOut(BaseModel):
    """A contract and its effective status."""

    id: str
    dataset_id: str
    provider_org: str
    consumer_org: str
    purposes: list[str]
    fields: dict[str, FieldForm]
    k_min: int
    dominance: DominanceIn
    valid_from: datetime
    valid_until: datetime
    max_queries_per_day: int
    status: str
    created_at: datetime
    accepted_at: datetime | None
    revoked_at: datetime | None
    suspended_at: datetime | None
    dataset_version: int | None
    slice_id: str | None
    result_retention_days: int
    terms_sha256: str = Field(description="SHA-256 of the canonical terms both parties sign")
    signatures: dict[Literal["provider", "consumer"], SignatureOut]

    @classmethod
    def from_domain(cls, view: ContractView) -> ContractOut:
        """Response form of a contract view."""
        c = view.contract
        return cls(
            id=c.id, dataset_id=c.dataset_id, provider_org=c.provider_org,
            consumer_org=c.consumer_org, purposes=list(c.purposes), fields=dict(c.fields),
            k_min=c.k_min, dominance=DominanceIn(n=c.dominance.n, k=c.dominance.k, p=c.dominance.p),
            valid_from=c.valid_from, valid_until=c.valid_until,
            max_queries_per_day=c.max_queries_per_day, status=view.status.value,
            created_at=c.created_at, accepted_at=c.accepted_at, revoked_at=c.revoked_at,
            suspended_at=c.suspended_at, dataset_version=c.dataset_version,
            slice_id=c.slice_id, result_retention_days=c.result_retention_days,
            terms_sha256=hashlib.sha256(c.terms().canonical()).hexdigest(),
            signatures={
                "provider": SignatureOut(signature=c.provider_signature,
                                         valid=view.provider_signed),
                "consumer": SignatureOut(signature=c.consumer_signature,
                                         valid=view.consumer_signed),
            },
        )


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


class ConsentOut(BaseModel):
    """The consent record of a slice."""

    given_by: str
    given_at: datetime
    scope: str
    reference: str | None


class SliceOut(BaseModel):
    """A published slice."""

    id: str
    dataset_id: str
    name: str
    fields: list[str]
    predicate: list[dict[str, Any]]
    consent: ConsentOut
    created_at: datetime

    @classmethod
    def from_domain(cls, item: Slice) -> SliceOut:
        """Response form."""
        c = item.consent
        return cls(id=item.id, dataset_id=item.dataset_id, name=item.name,
                   fields=list(item.fields), predicate=item.predicate_json(),
                   consent=ConsentOut(given_by=c.given_by, given_at=c.given_at, scope=c.scope,
                                      reference=c.reference),
                   created_at=item.created_at)


def dominance_of(d: DominanceIn) -> Dominance:
    """Domain form of the dominance parameters."""
    return Dominance(n=d.n, k=d.k, p=d.p)


class MeasureIn(In):
    """A statistic: count (distinct enterprises), sum, mean or ratio of sums."""

    fn: MeasureFn
    field: FieldName | None = None
    numerator: FieldName | None = None
    denominator: FieldName | None = None
    as_: Annotated[str, StringConstraints(pattern=r"^[a-z_][a-z0-9_]{0,62}$")] | None = Field(
        default=None, alias="as"
    )

    def to_domain(self) -> Measure:
        """Domain form."""
        return Measure(self.fn, self.field, self.numerator, self.denominator, self.as_)


class FilterIn(In):
    """A predicate in the closed grammar: eq, in (list), range ([low, high], inclusive)."""

    field: FieldName
    op: FilterOp
    value: Scalar | Annotated[list[Scalar], Field(max_length=1000)]

    def to_domain(self) -> Filter:
        """Domain form."""
        return Filter(self.field, self.op, self.value)


class DimensionIn(In):
    """A group-by field at a coarser level (month, quarter, year; GB/T 4754 group, division,
    section) or cut into numeric bins."""

    field: FieldName
    level: Literal["day", "month", "quarter", "year", "class", "group", "division",
                   "section"] | None = None
    bins: Annotated[list[Annotated[float, Field(strict=True, allow_inf_nan=False)]],
                    Field(min_length=1, max_length=32)] | None = None

    def to_domain(self) -> Dimension:
        """Domain form."""
        return Dimension(self.field, self.level,
                         tuple(self.bins) if self.bins is not None else None)


class AggregateIn(In):
    """An aggregate query under a contract."""

    contract_id: Uuid
    purpose: Slug
    group_by: Annotated[list[FieldName | DimensionIn], Field(max_length=4)] = []
    measures: Annotated[list[MeasureIn], Field(min_length=1, max_length=16)]
    filters: Annotated[list[FilterIn], Field(max_length=16)] = []
    totals: Flag = False
    remainder: Flag = False

    def to_domain(self) -> AggregateSpec:
        """Domain form."""
        return AggregateSpec(
            contract_id=self.contract_id,
            purpose=self.purpose,
            group_by=tuple(Dimension(d) if isinstance(d, str) else d.to_domain()
                           for d in self.group_by),
            measures=tuple(m.to_domain() for m in self.measures),
            filters=tuple(f.to_domain() for f in self.filters),
            totals=self.totals,
            remainder=self.remainder,
        )


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

    @classmethod
    def from_domain(cls, d: FlowDecision) -> ExplainOut:
        """Response form of a flow decision."""
        rules = DisclosureRulesOut(**asdict(d.rules)) if d.rules is not None else None
        return cls(allow=d.allow, reasons=list(d.reasons), fields=d.fields,
                   field_reasons=d.field_reasons, k=d.k, quota_remaining=d.quota_remaining,
                   disclosure=rules, policy_revision=d.revision)


class AuditItemOut(BaseModel):
    """One ledger entry with its leaf hash."""

    entry: dict[str, Any]
    leaf_hash: str


class AuditPageOut(BaseModel):
    """A page of entries; pass ``next_cursor`` as ``cursor`` for the next."""

    entries: list[AuditItemOut]
    next_cursor: str | None


class VerifyOut(BaseModel):
    """Outcome of verifying the log against its signed checkpoints."""

    valid: bool
    size: int
    root: str
    checkpoints_checked: int
    latest_checkpoint: int | None
    kind: Literal["bad-entry", "gap", "reorder", "rollback", "fork", "bad-checkpoint"] | None = None
    first_bad_seq: int | None = None
    reason: str | None = None
    detail: str | None = None


class KeyOut(BaseModel):
    """The key that signs checkpoints; ``vkey`` is the C2SP/sumdb verifier key string."""

    origin: str
    algorithm: Literal["Ed25519"]
    key_id: str
    vkey: str
    public_key_pem: str


class CheckpointOut(BaseModel):
    """A signed checkpoint: a C2SP tlog-checkpoint signed as a C2SP signed note."""

    size: int
    root: str
    ts: str
    note: str


class CheckpointPageOut(BaseModel):
    """Checkpoints, newest first; pass ``next_cursor`` as ``before`` for older ones."""

    checkpoints: list[CheckpointOut]
    next_cursor: str | None


class InclusionProofOut(BaseModel):
    """Entry ``seq`` is leaf ``leaf_index`` of the tree the signed ``checkpoint`` commits to."""

    type: Literal["inclusion"]
    seq: int
    leaf_index: int
    leaf_hash: str
    entry: dict[str, Any] | None
    tree_size: int
    proof: list[str]
    checkpoint: str


class ConsistencyProofOut(BaseModel):
    """The tree of ``old_size`` entries is a prefix of the signed one of ``new_size``."""

    type: Literal["consistency"]
    old_size: int
    old_root: str
    new_size: int
    new_root: str
    proof: list[str]
    checkpoint: str


class WhoOut(BaseModel):
    """Who acted: the token's subject and organisation."""

    sub: str | None
    org: str | None


class AccessOut(BaseModel):
    """One access to a provider's dataset, as the provider reads it."""

    seq: int
    ts: str
    action: str
    who: WhoOut
    purpose: str | None
    dataset_id: str | None
    version: int | None
    contract_id: str | None
    fields: list[str] | None
    allowed: bool
    reasons: list[str]
    disclosure: dict[str, Any] | None
    leaf_hash: str


class AccessPageOut(BaseModel):
    """A page of accesses; pass ``next_cursor`` as ``cursor`` for the next."""

    accesses: list[AccessOut]
    next_cursor: str | None
