"""The audit log: entries, verification, checkpoints, proofs and the providers' view."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    BaseModel,
)


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
