"""SQL unit of work: one session, every repository, explicit commit."""

from __future__ import annotations

import threading
from typing import Self

from sqlalchemy import Engine, event
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import SessionTransaction
from sqlmodel import Session

from broker.domain.errors import Unavailable
from broker.domain.ports import Clock
from broker.store.audit import AppendObserver, SqlAuditLog
from broker.store.db import read_only as read_only_engine
from broker.store.group_commit import SYNCER, WalSyncer
from broker.store.repositories import (
    SqlContractRepository,
    SqlDatasetRepository,
    SqlIndicatorRepository,
    SqlOrgRepository,
    SqlReleaseLedger,
    SqlSliceRepository,
)

#: Threads of one process queue for SQLite's single writer here, in order, instead of in
#: SQLite's busy handler, which sleeps in growing steps (up to 100 ms) between attempts.
#: Other processes still meet at SQLite's own lock (busy_timeout).
_WRITERS: dict[int, threading.Lock] = {}
_WRITERS_GUARD = threading.Lock()
WRITER_WAIT_SECONDS = 30.0


def _writer_lock(engine: Engine) -> threading.Lock | None:
    if engine.dialect.name != "sqlite":
        return None
    with _WRITERS_GUARD:
        return _WRITERS.setdefault(id(engine.pool), threading.Lock())


class _UnitSession(Session):
    """A unit of work's session: a transaction begun after a commit takes the writer lock."""

    unit: SqlUnitOfWork


@event.listens_for(_UnitSession, "after_transaction_create")
def _relock(session: _UnitSession, transaction: SessionTransaction) -> None:
    # Fires before the new transaction takes a connection (and so before BEGIN IMMEDIATE).
    if transaction.parent is None:
        session.unit._begin()


class SqlUnitOfWork:
    """A transaction; leaving the block without ``commit`` rolls everything back.

    On a SQLite file, ``commit`` is a group commit (see ``broker.store.group_commit``): it
    commits, hands the writer lock to the next writer at once, and returns only when an fsync
    of the write-ahead log that began after its commit has completed. A unit that goes on after
    a commit takes the writer lock again with its next transaction. A unit that read after its
    last commit (every read-only unit) waits, when it is left without an error, until every
    commit made in this process so far is durable, so it never answers from a commit that
    could still be lost.
    """

    session: Session
    orgs: SqlOrgRepository
    datasets: SqlDatasetRepository
    contracts: SqlContractRepository
    audit: SqlAuditLog
    releases: SqlReleaseLedger
    slices: SqlSliceRepository
    indicators: SqlIndicatorRepository

    def __init__(self, engine: Engine, clock: Clock, *, read_only: bool = False,
                 observer: AppendObserver | None = None) -> None:
        self.engine = read_only_engine(engine) if read_only else engine
        self.clock = clock
        self.observer = observer
        self._writer = None if read_only else _writer_lock(engine)
        self._holding = False
        self._syncer: WalSyncer | None = None
        self._read_since_commit = False

    def _begin(self) -> None:
        """A transaction is starting: hold the writer lock (a writer) and note it may read."""
        self._read_since_commit = True
        self._hold_writer()

    def _hold_writer(self) -> None:
        """Take this process's SQLite writer lock unless this unit holds it already."""
        if self._writer is None or self._holding:
            return
        if not self._writer.acquire(timeout=WRITER_WAIT_SECONDS):
            raise Unavailable("The store is busy; nothing was released.")
        self._holding = True

    def _release_writer(self) -> None:
        if self._holding:
            self._holding = False
            self._writer.release()  # type: ignore[union-attr]

    def __enter__(self) -> Self:
        session = _UnitSession(self.engine, expire_on_commit=False)
        session.unit = self
        self.session = session
        try:
            # begin now: the writer lock (see _relock), then on SQLite its write lock
            self._syncer = self.session.connection().info.get(SYNCER)
        except OperationalError as exc:
            self._close()
            raise Unavailable("The store is unavailable; nothing was released.") from exc
        except BaseException:
            self._close()
            raise
        self.orgs = SqlOrgRepository(self.session)
        self.datasets = SqlDatasetRepository(self.session)
        self.contracts = SqlContractRepository(self.session)
        self.audit = SqlAuditLog(self.session, self.clock)
        self.releases = SqlReleaseLedger(self.session)
        self.slices = SqlSliceRepository(self.session)
        self.indicators = SqlIndicatorRepository(self.session)
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.session.rollback()
        finally:
            self._close()
        if exc[0] is None and self._read_since_commit and self._syncer is not None:
            self._syncer.settle()  # it may answer from what it read: from durable commits only

    def _close(self) -> None:
        try:
            self.session.close()
        finally:
            self._release_writer()

    def rollback(self) -> None:
        """Discard everything staged in this unit; it can go on with a fresh transaction."""
        self.session.rollback()
        self.audit.appended.clear()

    def commit(self) -> None:
        """Make everything done in this unit durable; a store failure is Unavailable (503)."""
        syncer = self._syncer
        ticket = syncer.committing() if syncer is not None else 0
        try:
            self.session.commit()
        except OperationalError as exc:
            raise Unavailable("The store could not commit; nothing was released.") from exc
        finally:
            if syncer is not None:
                syncer.committed(ticket)
        self._read_since_commit = False
        self._release_writer()  # the next writer's transaction runs while we wait for the disk
        if syncer is not None:
            syncer.wait(ticket)
        appended, self.audit.appended = self.audit.appended, []
        if self.observer is not None:  # only entries that are now durable are reported
            for event, seconds in appended:
                self.observer(event, seconds)


class SqlUnitOfWorkFactory:
    """Opens SQL units of work on one engine."""

    def __init__(self, engine: Engine, clock: Clock,
                 observer: AppendObserver | None = None) -> None:
        self.engine = engine
        self.clock = clock
        self.observer = observer  # told of every committed audit append (metrics)

    def __call__(self, *, read_only: bool = False) -> SqlUnitOfWork:
        return SqlUnitOfWork(self.engine, self.clock, read_only=read_only,
                             observer=self.observer)
