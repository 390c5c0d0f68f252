"""Usage contracts: offers, signatures, acceptance and their views."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    Field,
    StringConstraints,
)

from broker.api.schemas.common import (
    ClosedKeys,
    FieldName,
    In,
    OrgId,
    Slug,
    Uuid,
)
from broker.services.contracts import ContractView
from contracts.model import FieldForm, Terms
from contracts.terms import ContractTerms


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
    linkable: bool
    terms_sha256: str = Field(description="SHA-256 of the canonical terms both parties sign")
    signatures: dict[Literal["provider", "consumer"], SignatureOut]

    @classmethod
    def from_domain(cls, view: ContractView) -> ContractOut:
        """Response form of a contract view."""
        c = view.contract
        return cls(
            id=c.id, provider_org=c.provider_org, consumer_org=c.consumer_org,
            **c.terms.as_record(),
            status=view.status.value, created_at=c.created_at, accepted_at=c.accepted_at,
            revoked_at=c.revoked_at, suspended_at=c.suspended_at,
            terms_sha256=hashlib.sha256(c.document().canonical()).hexdigest(),
            signatures={
                "provider": SignatureOut(signature=c.provider_signature,
                                         valid=view.provider_signed),
                "consumer": SignatureOut(signature=c.consumer_signature,
                                         valid=view.consumer_signed),
            },
        )


class ContractTermsOut(ContractTerms):
    """The terms document both parties sign, field for field (its JSON Schema is
    ``contracts/schema/contract-terms.schema.json``)."""

    @classmethod
    def from_domain(cls, terms: ContractTerms) -> ContractTermsOut:
        """Response form of the terms: the same document, so its RFC 8785 bytes are the ones
        to sign."""
        return cls.model_validate(terms.model_dump())
