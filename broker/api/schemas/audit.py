"""The audit log: entries, verification, checkpoints, proofs and the providers' view."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    BaseModel,
    Field,
)

from audit.proofs import ConsistencyProof, InclusionProof
from audit.verify import Verification
from broker.domain.ports import StoredCheckpoint
from broker.services.audit import Access, AuditItem, CheckpointKey, Page, Who


def _cursor(value: int | None) -> str | None:
    """A cursor as the API hands it out: digits, or None at the end."""
    return str(value) if value is not None else None


class AuditItemOut(BaseModel):
    """One ledger entry with its leaf hash."""

    entry: dict[str, Any]
    leaf_hash: str

    @classmethod
    def from_domain(cls, item: AuditItem) -> AuditItemOut:
        """Response form of a stored entry (the entry object as it was hashed)."""
        return cls(entry=item.entry, leaf_hash=item.leaf_hash)


class AuditPageOut(BaseModel):
    """A page of entries; pass ``next_cursor`` as ``cursor`` for the next."""

    entries: list[AuditItemOut]
    next_cursor: str | None

    @classmethod
    def from_domain(cls, page: Page[AuditItem]) -> AuditPageOut:
        """Response form of a page of entries."""
        return cls(entries=[AuditItemOut.from_domain(e) for e in page.items],
                   next_cursor=_cursor(page.next_cursor))


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

    @classmethod
    def from_domain(cls, result: Verification) -> VerifyOut:
        """Response form of a verification run: the fields ``broker audit verify --json``
        prints, the fault's only when it failed."""
        return cls.model_validate(result.as_json())


class KeyOut(BaseModel):
    """The key that signs checkpoints; ``vkey`` is the C2SP/sumdb verifier key string."""

    origin: str
    algorithm: Literal["Ed25519"]
    key_id: str
    vkey: str
    public_key_pem: str

    @classmethod
    def from_domain(cls, key: CheckpointKey) -> KeyOut:
        """Response form of the checkpoint key."""
        return cls(origin=key.origin, algorithm=key.algorithm, key_id=key.key_id,
                   vkey=key.vkey, public_key_pem=key.public_key_pem)


class CheckpointOut(BaseModel):
    """A signed checkpoint: a C2SP tlog-checkpoint signed as a C2SP signed note."""

    size: int
    root: str
    ts: str
    note: str

    @classmethod
    def from_domain(cls, checkpoint: StoredCheckpoint) -> CheckpointOut:
        """Response form of a stored checkpoint."""
        return cls(size=checkpoint.size, root=checkpoint.root, ts=checkpoint.ts,
                   note=checkpoint.note)


class CheckpointPageOut(BaseModel):
    """Checkpoints, newest first; pass ``next_cursor`` as ``before`` for older ones."""

    checkpoints: list[CheckpointOut]
    next_cursor: str | None

    @classmethod
    def from_domain(cls, page: Page[StoredCheckpoint]) -> CheckpointPageOut:
        """Response form of a page of checkpoints."""
        return cls(checkpoints=[CheckpointOut.from_domain(c) for c in page.items],
                   next_cursor=_cursor(page.next_cursor))


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

    @classmethod
    def from_domain(cls, proof: InclusionProof) -> InclusionProofOut:
        """Response form of an inclusion proof: the document ``broker audit check`` reads."""
        return cls(type="inclusion", seq=proof.seq, leaf_index=proof.leaf_index,
                   leaf_hash=proof.leaf_hash, entry=proof.entry, tree_size=proof.tree_size,
                   proof=list(proof.proof), checkpoint=proof.checkpoint)


class ConsistencyProofOut(BaseModel):
    """The tree of ``old_size`` entries is a prefix of the signed one of ``new_size``."""

    type: Literal["consistency"]
    old_size: int
    old_root: str
    new_size: int
    new_root: str
    proof: list[str]
    checkpoint: str

    @classmethod
    def from_domain(cls, proof: ConsistencyProof) -> ConsistencyProofOut:
        """Response form of a consistency proof: the document ``broker audit check`` reads."""
        return cls(type="consistency", old_size=proof.old_size, old_root=proof.old_root,
                   new_size=proof.new_size, new_root=proof.new_root, proof=list(proof.proof),
                   checkpoint=proof.checkpoint)


class WhoOut(BaseModel):
    """Who acted: the token's subject and organisation."""

    sub: str | None
    org: str | None

    @classmethod
    def from_domain(cls, who: Who) -> WhoOut:
        """Response form of an actor."""
        return cls(sub=who.sub, org=who.org)


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
    sources: list[dict[str, Any]] | None = Field(
        default=None, description="A cross-source query's sources: alias, provider_org, "
                                  "dataset_id, version and contract_id each")

    @classmethod
    def from_domain(cls, access: Access) -> AccessOut:
        """Response form of one access."""
        return cls(
            seq=access.seq, ts=access.ts, action=access.action,
            who=WhoOut.from_domain(access.who), purpose=access.purpose,
            dataset_id=access.dataset_id, version=access.version,
            contract_id=access.contract_id,
            fields=list(access.fields) if access.fields is not None else None,
            allowed=access.allowed, reasons=list(access.reasons),
            disclosure=access.disclosure, leaf_hash=access.leaf_hash,
            sources=[dict(s) for s in access.sources] if access.sources is not None else None,
        )


class AccessPageOut(BaseModel):
    """A page of accesses; pass ``next_cursor`` as ``cursor`` for the next."""

    accesses: list[AccessOut]
    next_cursor: str | None

    @classmethod
    def from_domain(cls, page: Page[Access]) -> AccessPageOut:
        """Response form of a page of accesses."""
        return cls(accesses=[AccessOut.from_domain(a) for a in page.items],
                   next_cursor=_cursor(page.next_cursor))
