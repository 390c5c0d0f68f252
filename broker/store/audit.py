"""The audit ledger on SQL: serialised, gapless appends and ordered reads."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from sqlalchemy import func
from sqlalchemy.exc import OperationalError
from sqlmodel import Session, col, select

from audit.entry import AuditEvent, build_entry, encode, leaf_hash
from audit.verify import StoredEntry, indexed_columns
from broker.domain.errors import Unavailable
from broker.domain.ports import AuditQuery, Clock
from broker.domain.queries import Receipt
from broker.store.tables import AuditEntryRow, AuditHeadRow


class SqlAuditLog:
    """Append-only ledger in the ``audit_entries`` table, serialised on ``audit_head``."""

    def __init__(self, session: Session, clock: Clock) -> None:
        self.session = session
        self.clock = clock

    def append(self, event: AuditEvent) -> Receipt:
        """Lock the head row, write the next entry and move the head; commit is the caller's.

        On PostgreSQL the ``FOR UPDATE`` row lock serialises writers; on SQLite the transaction
        already holds the database write lock (``BEGIN IMMEDIATE``, see ``store.db``).
        """
        try:
            return self._append(event)
        except OperationalError as exc:  # locked past the timeout, disk full, server gone
            raise Unavailable("The audit log could not be written; nothing was released.") from exc

    def lock(self) -> None:
        """Take the head lock now, so what follows sees every committed append."""
        self._head(for_update=True)

    def _head(self, *, for_update: bool) -> AuditHeadRow:
        stmt = select(AuditHeadRow).where(AuditHeadRow.id == 1)
        if for_update:
            stmt = stmt.with_for_update()
        return self.session.exec(stmt.execution_options(populate_existing=True)).one()

    def _append(self, event: AuditEvent) -> Receipt:
        head = self._head(for_update=True)
        seq = head.size + 1
        entry = build_entry(event, seq=seq, ts=self.clock(), prev_hash=head.head_hash)
        body = encode(entry)
        digest = leaf_hash(body)
        self.session.add(
            AuditEntryRow(
                seq=seq,
                body=body.decode("utf-8"),
                leaf_hash=digest,
                prev_hash=head.head_hash,
                **indexed_columns(entry),
            )
        )
        head.size = seq
        head.head_hash = digest
        self.session.add(head)
        self.session.flush()
        return Receipt(seq=seq, leaf_hash=digest)

    def count_released(self, contract_id: str, action: str, since: str) -> int:
        """How many allowed ``action`` entries a contract has had since ``since`` (ISO ts)."""
        stmt = select(func.count()).where(
            AuditEntryRow.contract_id == contract_id,
            AuditEntryRow.action == action,
            col(AuditEntryRow.allowed).is_(True),
            AuditEntryRow.ts >= since,
        )
        return int(self.session.exec(stmt).one())

    def entries(self, query: AuditQuery) -> list[dict[str, Any]]:
        """Entries matching ``query`` in seq order, each with its leaf hash."""
        stmt = select(AuditEntryRow).where(AuditEntryRow.seq > query.after_seq)
        if query.actor is not None:
            stmt = stmt.where(AuditEntryRow.actor_sub == query.actor)
        if query.org is not None:
            stmt = stmt.where(AuditEntryRow.actor_org == query.org)
        if query.dataset_ids is not None:
            stmt = stmt.where(col(AuditEntryRow.dataset_id).in_(list(query.dataset_ids)))
        if query.action is not None:
            stmt = stmt.where(AuditEntryRow.action == query.action)
        if query.since is not None:
            stmt = stmt.where(AuditEntryRow.ts >= query.since)
        if query.until is not None:
            stmt = stmt.where(AuditEntryRow.ts < query.until)
        if query.allowed is not None:
            stmt = stmt.where(col(AuditEntryRow.allowed).is_(query.allowed))
        stmt = stmt.order_by(col(AuditEntryRow.seq)).limit(query.limit)
        rows = self.session.exec(stmt).all()
        return [{"entry": json.loads(r.body), "leaf_hash": r.leaf_hash} for r in rows]

    def stored(self) -> Iterator[StoredEntry]:
        """Every stored entry in seq order, as verification needs it."""
        stmt = select(AuditEntryRow).order_by(col(AuditEntryRow.seq)).execution_options(
            yield_per=2000
        )
        for row in self.session.exec(stmt):
            yield StoredEntry(
                seq=row.seq,
                body=row.body.encode("utf-8"),
                leaf_hash=row.leaf_hash,
                prev_hash=row.prev_hash,
                columns={
                    "ts": row.ts,
                    "action": row.action,
                    "actor_sub": row.actor_sub,
                    "actor_org": row.actor_org,
                    "dataset_id": row.dataset_id,
                    "contract_id": row.contract_id,
                    "allowed": row.allowed,
                },
            )

    def head(self) -> tuple[int, str]:
        """The head row's size and last hash."""
        head = self._head(for_update=False)
        return head.size, head.head_hash
