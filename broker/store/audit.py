"""The audit ledger on SQL: serialised, gapless appends; the Merkle tree; checkpoints; reads."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from sqlalchemy import Connection, and_, func, insert, or_
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlmodel import Session, col, select

from audit import merkle
from audit.entry import AuditEvent, build_entry, encode, format_ts, leaf_hash
from audit.verify import Chunk, Head
from broker.domain.errors import Unavailable
from broker.domain.ports import AuditQuery, Clock, StoredCheckpoint
from broker.domain.queries import Receipt
from broker.store.tables import (
    SOURCE_CONTRACT_COLUMNS,
    SOURCE_DATASET_COLUMNS,
    AuditCheckpointRow,
    AuditEntryRow,
    AuditHeadRow,
    AuditNodeRow,
)

_HEAD = AuditHeadRow.__table__  # type: ignore[attr-defined]
_ENTRIES = AuditEntryRow.__table__  # type: ignore[attr-defined]
_NODES = AuditNodeRow.__table__  # type: ignore[attr-defined]
_CHECKPOINTS = AuditCheckpointRow.__table__  # type: ignore[attr-defined]


_QMARK = {
    "head": "SELECT size, head_hash, frontier FROM audit_head WHERE id = 1",
    "head_for_update": "SELECT size, head_hash, frontier FROM audit_head WHERE id = 1 FOR UPDATE",
    "entry": "INSERT INTO audit_entries (seq, body, leaf_hash, prev_hash) VALUES (?, ?, ?, ?)",
    "node": "INSERT INTO audit_nodes (level, idx, hash) VALUES (?, ?, ?)",
    "move": "UPDATE audit_head SET size = ?, head_hash = ?, frontier = ? WHERE id = 1 AND size = ?",
}
_SQL = {False: _QMARK, True: {k: v.replace("?", "%s") for k, v in _QMARK.items()}}

#: Told of every entry appended, with the seconds the append took (the metrics).
AppendObserver = Callable[[AuditEvent, float], None]


class SqlAuditLog:
    """Append-only ledger in ``audit_entries``, serialised on the ``audit_head`` row."""

    def __init__(self, session: Session, clock: Clock) -> None:
        self.session = session
        self.clock = clock
        #: Entries appended in the open transaction, with how long each append took (the
        #: wait for the head lock included): the unit of work reports them once committed.
        self.appended: list[tuple[AuditEvent, float]] = []

    @property
    def _conn(self) -> Connection:
        return self.session.connection()

    # -- appending ---------------------------------------------------------------------------

    def append(self, event: AuditEvent) -> Receipt:
        """Lock the head row, write the next entry and its tree nodes, move the head.

        The commit is the caller's: the entry is durable together with whatever the unit of work
        released, or not at all. On PostgreSQL the ``FOR UPDATE`` row lock serialises writers; on
        SQLite the transaction already holds the write lock (``BEGIN IMMEDIATE``). The entry is
        noted in ``appended`` with the time the append took.
        """
        start = time.perf_counter()
        try:
            receipt = self._append(event)
        except (OperationalError, IntegrityError) as exc:
            # locked past the timeout, disk full, server gone, or a racing writer (backstop)
            raise Unavailable("The audit log could not be written; nothing was released.") from exc
        self.appended.append((event, time.perf_counter() - start))
        return receipt

    def lock(self) -> None:
        """Take the head lock now, so what follows sees every committed append."""
        self._head(for_update=True)

    def _head(self, *, for_update: bool) -> Any:
        stmt = select(_HEAD.c.size, _HEAD.c.head_hash, _HEAD.c.frontier).where(_HEAD.c.id == 1)
        if for_update:
            stmt = stmt.with_for_update()
        return self._conn.execute(stmt).one()

    def _append(self, event: AuditEvent) -> Receipt:
        # Straight to the driver's cursor, inside the unit's transaction: an append is the
        # hottest write path, and statement handling cost as much as the commit's fsync.
        conn = self._conn
        sql = _SQL[conn.dialect.paramstyle in ("format", "pyformat")]
        cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.execute(sql["head_for_update" if conn.dialect.name == "postgresql"
                               else "head"])
            size, head_hash, packed = cursor.fetchone()  # type: ignore[misc]
            frontier = merkle.Frontier.from_bytes(size, bytes.fromhex(packed))
            seq = size + 1
            body = encode(build_entry(event, seq=seq, ts=self.clock(), prev_hash=head_hash))
            digest = leaf_hash(body)
            completed = frontier.add(bytes.fromhex(digest))
            cursor.execute(sql["entry"], (seq, body.decode("utf-8"), digest, head_hash))
            if completed:
                cursor.executemany(sql["node"], [(level, idx, h.hex())
                                                 for level, idx, h in completed])
            cursor.execute(sql["move"], (seq, digest, frontier.to_bytes().hex(), size))
            if cursor.rowcount != 1:
                raise Unavailable("The audit head moved under this append; nothing was "
                                  "released.")
        except conn.dialect.loaded_dbapi.Error as exc:
            # the driver's own errors, as SQLAlchemy would have wrapped them
            kind = IntegrityError if isinstance(
                exc, conn.dialect.loaded_dbapi.IntegrityError) else OperationalError
            raise kind(sql["entry"], None, exc) from exc
        finally:
            cursor.close()
        return Receipt(seq=seq, leaf_hash=digest)

    # -- reading -----------------------------------------------------------------------------

    def count_released(self, contract_id: str, actions: tuple[str, ...], since: str) -> int:
        """How many allowed entries of ``actions`` a contract has had since ``since`` (ISO ts),
        as its source or as one of a cross-source query's."""
        # Only the contract's columns are indexable here (the others wrapped in coalesce), so
        # the planner reads the contract's entries by index, not every entry of the action.
        stmt = select(func.count()).where(
            or_(col(AuditEntryRow.contract_id) == contract_id,
                *(_ENTRIES.c[name] == contract_id for name in SOURCE_CONTRACT_COLUMNS)),
            func.coalesce(AuditEntryRow.action, "").in_(actions),
            col(AuditEntryRow.allowed).is_(True),
            func.coalesce(AuditEntryRow.ts, "") >= since,
        )
        return int(self.session.exec(stmt).one())

    def entries(self, query: AuditQuery) -> list[dict[str, Any]]:
        """Entries matching ``query`` in seq order, each with its leaf hash."""
        stmt = select(AuditEntryRow.body, AuditEntryRow.leaf_hash).where(
            col(AuditEntryRow.seq) > query.after_seq)
        if query.actor is not None:
            stmt = stmt.where(AuditEntryRow.actor_sub == query.actor)
        if query.org is not None:
            stmt = stmt.where(AuditEntryRow.actor_org == query.org)
        if query.dataset_ids is not None:
            ids = list(query.dataset_ids)
            stmt = stmt.where(or_(col(AuditEntryRow.dataset_id).in_(ids),
                                  *(_ENTRIES.c[name].in_(ids)
                                    for name in SOURCE_DATASET_COLUMNS)))
        if query.about_datasets:
            stmt = stmt.where(or_(col(AuditEntryRow.dataset_id).is_not(None),
                                  *(_ENTRIES.c[name].is_not(None)
                                    for name in SOURCE_DATASET_COLUMNS)))
        if query.contract_id is not None:
            stmt = stmt.where(or_(col(AuditEntryRow.contract_id) == query.contract_id,
                                  *(_ENTRIES.c[name] == query.contract_id
                                    for name in SOURCE_CONTRACT_COLUMNS)))
        if query.action is not None:
            stmt = stmt.where(AuditEntryRow.action == query.action)
        if query.since is not None:
            stmt = stmt.where(col(AuditEntryRow.ts) >= query.since)
        if query.until is not None:
            stmt = stmt.where(col(AuditEntryRow.ts) < query.until)
        if query.allowed is not None:
            stmt = stmt.where(col(AuditEntryRow.allowed).is_(query.allowed))
        stmt = stmt.order_by(col(AuditEntryRow.seq)).limit(query.limit)
        return [{"entry": json.loads(body), "leaf_hash": digest}
                for body, digest in self.session.exec(stmt).all()]

    def entry(self, seq: int) -> tuple[dict[str, Any], str] | None:
        """One entry and its leaf hash."""
        row = self.session.exec(select(AuditEntryRow.body, AuditEntryRow.leaf_hash).where(
            AuditEntryRow.seq == seq)).first()
        return (json.loads(row[0]), row[1]) if row else None

    def chunks(self, size: int = 65536, *, through: int | None = None) -> Iterator[Chunk]:
        """Every stored entry (up to seq ``through``) in seq order, in chunks, read straight
        from the driver."""
        stmt = select(_ENTRIES.c.seq, _ENTRIES.c.body, _ENTRIES.c.leaf_hash, _ENTRIES.c.prev_hash)
        if through is not None:
            stmt = stmt.where(_ENTRIES.c.seq <= through)
        result = self._conn.execution_options(stream_results=True, yield_per=size).execute(
            stmt.order_by(_ENTRIES.c.seq))
        for rows in result.partitions(size):
            seqs, bodies, leaves, prevs = zip(*rows, strict=True)
            yield Chunk(list(map(str.encode, bodies)), list(seqs), list(leaves), list(prevs))

    def all_nodes(self, size: int = 65536) -> Iterator[tuple[int, int, str]]:
        """Every stored perfect node, by level and index."""
        result = self._conn.execution_options(stream_results=True, yield_per=size).execute(
            select(_NODES.c.level, _NODES.c.idx, _NODES.c.hash)
            .order_by(_NODES.c.level, _NODES.c.idx))
        for rows in result.partitions(size):
            yield from rows

    def head(self) -> Head:
        """What the head row claims."""
        size, head_hash, packed = self._head(for_update=False)
        return Head(size, head_hash, bytes.fromhex(packed))

    def frontier(self) -> merkle.Frontier:
        """The tree as of the head row (take :meth:`lock` first for a stable answer)."""
        size, _, packed = self._head(for_update=False)
        return merkle.Frontier.from_bytes(size, bytes.fromhex(packed))

    def nodes(self, wanted: Iterable[merkle.Node]) -> dict[merkle.Node, bytes]:
        """The stored perfect-subtree hashes asked for (level 0 from the entries)."""
        wanted = set(wanted)
        found: dict[merkle.Node, bytes] = {}
        leaves = sorted(idx + 1 for level, idx in wanted if level == 0)
        inner = sorted((level, idx) for level, idx in wanted if level > 0)
        if leaves:
            rows = self._conn.execute(select(_ENTRIES.c.seq, _ENTRIES.c.leaf_hash).where(
                _ENTRIES.c.seq.in_(leaves)))
            found |= {(0, seq - 1): bytes.fromhex(h) for seq, h in rows}
        if inner:
            by_level: dict[int, list[int]] = {}
            for level, idx in inner:
                by_level.setdefault(level, []).append(idx)
            # one indexed look-up per level (a row-value IN list is a table scan on SQLite)
            stmt = select(_NODES.c.level, _NODES.c.idx, _NODES.c.hash).where(
                or_(*(and_(_NODES.c.level == level, _NODES.c.idx.in_(idxs))
                      for level, idxs in by_level.items())))
            node_rows: Any = self._conn.execute(stmt)
            found |= {(level, idx): bytes.fromhex(h) for level, idx, h in node_rows}
        missing = wanted - found.keys()
        if missing:
            raise Unavailable("The audit tree is missing nodes; no proof can be given.")
        return found

    # -- checkpoints -------------------------------------------------------------------------

    def add_checkpoint(self, size: int, root: bytes, note: str) -> bool:
        """Store a signed checkpoint; False if one of that size is already stored."""
        exists = self._conn.execute(select(_CHECKPOINTS.c.size).where(
            _CHECKPOINTS.c.size == size)).first()
        if exists:
            return False
        self._conn.execute(insert(_CHECKPOINTS), {"size": size, "root": root.hex(),
                                                  "ts": format_ts(self.clock()), "note": note})
        return True

    def checkpoints(self, after_size: int = -1, limit: int | None = None,
                    newest_first: bool = False) -> list[StoredCheckpoint]:
        """Stored checkpoints by size."""
        stmt = select(_CHECKPOINTS.c.size, _CHECKPOINTS.c.root, _CHECKPOINTS.c.ts,
                      _CHECKPOINTS.c.note)
        if newest_first:
            stmt = stmt.order_by(_CHECKPOINTS.c.size.desc())
            if after_size >= 0:
                stmt = stmt.where(_CHECKPOINTS.c.size < after_size)
        else:
            stmt = stmt.where(_CHECKPOINTS.c.size > after_size).order_by(_CHECKPOINTS.c.size)
        if limit is not None:
            stmt = stmt.limit(limit)
        return [StoredCheckpoint(*row) for row in self._conn.execute(stmt)]

    def checkpoint(self, size: int) -> StoredCheckpoint | None:
        """The checkpoint of exactly ``size`` entries."""
        row = self._conn.execute(select(_CHECKPOINTS.c.size, _CHECKPOINTS.c.root,
                                        _CHECKPOINTS.c.ts, _CHECKPOINTS.c.note).where(
            _CHECKPOINTS.c.size == size)).first()
        return StoredCheckpoint(*row) if row else None

    def latest_checkpoint(self) -> StoredCheckpoint | None:
        """The checkpoint of the most entries."""
        found = self.checkpoints(newest_first=True, limit=1)
        return found[0] if found else None
