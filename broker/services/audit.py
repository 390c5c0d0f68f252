"""Use cases: reading and verifying the audit log."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from audit.verify import Verification, verify_chain
from broker.domain.ports import AuditQuery, UnitOfWorkFactory
from broker.domain.principals import RequestContext, Role
from broker.services.guard import Guard

AUDIT_LOG = {"kind": "audit-log"}


@dataclass(frozen=True, slots=True)
class AuditPage:
    """A page of entries and the cursor for the next one (None at the end)."""

    entries: list[dict[str, Any]]
    next_cursor: int | None


@dataclass(frozen=True, slots=True)
class AuditService:
    """The security staff's and providers' view of the ledger; reading it is audited too.

    Reads run on a snapshot (a read-only unit of work), so a long verification never holds up
    the appends of other requests; the check and the record of the read are short writes.
    """

    uow: UnitOfWorkFactory
    guard: Guard

    def entries(self, ctx: RequestContext, query: AuditQuery) -> AuditPage:
        """Entries matching ``query``: all for auditors, own datasets' for providers."""
        with self.uow() as uow:
            self.guard.require(uow, ctx, "audit.read", AUDIT_LOG)
        with self.uow(read_only=True) as uow:
            if not ctx.principal.has_role(Role.AUDITOR):
                own = [d.id for d in uow.datasets.all() if d.owner_org == ctx.principal.org]
                wanted = query.dataset_ids
                query = replace(query, dataset_ids=[d for d in own if wanted is None
                                                    or d in wanted])
            page = uow.audit.entries(replace(query, limit=query.limit + 1))
        self._record(ctx, "audit.read")
        more = len(page) > query.limit
        page = page[: query.limit]
        return AuditPage(page, page[-1]["entry"]["seq"] if more and page else None)

    def verify(self, ctx: RequestContext) -> Verification:
        """Recompute every leaf hash, the chain and the Merkle root; name the first bad entry."""
        with self.uow() as uow:
            self.guard.require(uow, ctx, "audit.verify", AUDIT_LOG)
        with self.uow(read_only=True) as uow:
            size, head_hash = uow.audit.head()
            result = verify_chain(uow.audit.stored(), head_size=size, head_hash=head_hash)
        self._record(ctx, "audit.verify")
        return result

    def _record(self, ctx: RequestContext, action: str) -> None:
        with self.uow() as uow:
            self.guard.record(uow, ctx, action)
            uow.commit()
