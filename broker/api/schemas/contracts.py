"""Usage contracts: offers, signatures, acceptance and their views."""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Literal

from pydantic import (
    BaseModel,
    Field,
)

from broker.api.schemas.common import In
from broker.services.contracts import ContractView
from broker.services.provider_inputs import DominanceIn, Signature
from contracts.model import FieldForm
from contracts.terms import ContractTerms


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
