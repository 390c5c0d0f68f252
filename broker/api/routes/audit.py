"""The audit log: entries and verification."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Query

from audit.entry import format_ts
from broker.api.deps import AuditServiceDep, ContextDep
from broker.api.routes.common import AUTHENTICATED
from broker.api.schemas import AuditItemOut, AuditPageOut, VerifyOut
from broker.domain.errors import InvalidInput
from broker.domain.ports import AuditQuery

router = APIRouter(prefix="/v1/audit", tags=["audit"], responses=AUTHENTICATED)


def _ts(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:
        raise InvalidInput("since/until need a timezone, e.g. 2026-01-01T00:00:00Z.")
    return format_ts(value)


@router.get("/entries")
def list_entries(
    ctx: ContextDep,
    audit: AuditServiceDep,
    actor: Annotated[str | None, Query(max_length=256)] = None,
    org: Annotated[str | None, Query(max_length=64)] = None,
    dataset_id: UUID | None = None,
    action: Annotated[str | None, Query(pattern=r"^[a-z]+\.[a-z_]+$")] = None,
    allowed: bool | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    cursor: Annotated[str | None, Query(pattern=r"^[0-9]{1,18}$")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> AuditPageOut:
    """Ledger entries, oldest first: all for auditors, your datasets' for providers."""
    page = audit.entries(
        ctx,
        AuditQuery(
            actor=actor,
            org=org,
            dataset_ids=[str(dataset_id)] if dataset_id else None,
            action=action,
            since=_ts(since),
            until=_ts(until),
            allowed=allowed,
            after_seq=int(cursor) if cursor else 0,
            limit=limit,
        ),
    )
    return AuditPageOut(
        entries=[AuditItemOut.model_validate(e) for e in page.entries],
        next_cursor=str(page.next_cursor) if page.next_cursor is not None else None,
    )


@router.get("/verify")
def verify_log(ctx: ContextDep, audit: AuditServiceDep) -> VerifyOut:
    """Recompute every entry's hash, the chain and the Merkle root (auditor)."""
    return VerifyOut.model_validate(audit.verify(ctx).as_json())
