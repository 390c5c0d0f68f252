"""The audit log: entries, the providers' access view, checkpoints, proofs, verification."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

from fastapi import APIRouter, Depends, Path, Query

from audit.entry import format_ts
from broker.api.deps import AuditServiceDep, ContextDep
from broker.api.routes.common import AUTHENTICATED, problems
from broker.api.schemas.audit import (
    AccessPageOut,
    AuditPageOut,
    CheckpointPageOut,
    ConsistencyProofOut,
    InclusionProofOut,
    KeyOut,
    VerifyOut,
)
from broker.api.schemas.common import DateTimeText
from broker.domain.errors import InvalidInput
from broker.domain.ports import AuditQuery

router = APIRouter(prefix="/v1/audit", tags=["audit"], responses=AUTHENTICATED)


def _ts(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:
        raise InvalidInput("since/until need a timezone, e.g. 2026-01-01T00:00:00Z.")
    try:
        return format_ts(value)
    except OverflowError as exc:  # 0001-01-01T00:00:00+23:59 is before the year 1 in UTC
        raise InvalidInput("since/until is outside the years 1 to 9999 in UTC.") from exc


Cursor = Annotated[str | None, Query(pattern=r"^[0-9]{1,18}$")]
Seq = Annotated[int, Path(ge=1, le=2**53)]


def _query(
    actor: Annotated[str | None, Query(max_length=256)] = None,
    org: Annotated[str | None, Query(max_length=64)] = None,
    dataset_id: UUID | None = None,
    contract_id: UUID | None = None,
    action: Annotated[str | None, Query(pattern=r"^[a-z]+\.[a-z_]+$")] = None,
    allowed: bool | None = None,
    decision: Literal["allow", "deny"] | None = None,
    since: DateTimeText | None = None,
    until: DateTimeText | None = None,
    cursor: Cursor = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> AuditQuery:
    if decision is not None and allowed is not None and allowed != (decision == "allow"):
        raise InvalidInput("allowed and decision disagree.")
    return AuditQuery(
        actor=actor,
        org=org,
        dataset_ids=[str(dataset_id)] if dataset_id else None,
        contract_id=str(contract_id) if contract_id else None,
        action=action,
        since=_ts(since),
        until=_ts(until),
        allowed=allowed if decision is None else decision == "allow",
        after_seq=int(cursor) if cursor else 0,
        limit=limit,
    )


QueryDep = Annotated[AuditQuery, Depends(_query)]


@router.get("/entries")
def list_entries(ctx: ContextDep, audit: AuditServiceDep, query: QueryDep) -> AuditPageOut:
    """Ledger entries, oldest first: all for auditors, your datasets' for providers.

    Filters: ``actor`` (token subject), ``org``, ``dataset_id``, ``contract_id``, ``action``,
    ``decision`` (allow|deny), ``since``/``until`` (entry time); ``cursor`` from the last page.
    """
    return AuditPageOut.from_domain(audit.entries(ctx, query))


@router.get("/accesses")
def list_accesses(ctx: ContextDep, audit: AuditServiceDep, query: QueryDep) -> AccessPageOut:
    """Every access to your datasets (provider), or to any (auditor): who, when, for which
    purpose, under which contract, which fields, and what the broker decided."""
    return AccessPageOut.from_domain(audit.accesses(ctx, query))


@router.get("/entries/{seq}/proof", responses=problems(404))
def entry_proof(
    ctx: ContextDep,
    audit: AuditServiceDep,
    seq: Seq,
    size: Annotated[int | None, Query(ge=1, le=2**53)] = None,
) -> InclusionProofOut:
    """Inclusion proof of entry ``seq`` against a signed checkpoint (the latest, or ``size``).

    Auditors may prove any entry, providers entries about their datasets, consumers their own
    (a query answer's receipt). Check it offline: ``broker audit check FILE --pubkey KEY``.
    """
    return InclusionProofOut.from_domain(audit.proof(ctx, seq, size))


@router.get("/checkpoints")
def list_checkpoints(
    ctx: ContextDep,
    audit: AuditServiceDep,
    before: Cursor = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> CheckpointPageOut:
    """Signed checkpoints of the audit tree, newest first."""
    return CheckpointPageOut.from_domain(
        audit.checkpoints(ctx, before=int(before) if before else None, limit=limit))


@router.get("/consistency", responses=problems(404))
def consistency_proof(
    ctx: ContextDep,
    audit: AuditServiceDep,
    old: Annotated[int, Query(ge=1, le=2**53, description="the size you already trust")],
    new: Annotated[int | None, Query(ge=1, le=2**53,
                                     description="a checkpoint's size (default: latest)")] = None,
) -> ConsistencyProofOut:
    """Consistency proof from the tree of ``old`` entries to a signed checkpoint: the log you
    saw before was not rewritten, only extended."""
    return ConsistencyProofOut.from_domain(audit.consistency(ctx, old, new))


@router.get("/key", responses={})
def signing_key(audit: AuditServiceDep) -> KeyOut:
    """The public key that signs checkpoints (no token needed): verify with it offline."""
    return KeyOut.from_domain(audit.key())


@router.get("/verify")
def verify_log(ctx: ContextDep, audit: AuditServiceDep) -> VerifyOut:
    """Recompute every entry's hash, the chain and the Merkle root (auditor)."""
    return VerifyOut.from_domain(audit.verify(ctx))
