"""SQL unit of work: one session, every repository, explicit commit."""

from __future__ import annotations

import threading
from typing import Self

from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError
from sqlmodel import Session

from broker.domain.errors import Unavailable
from broker.domain.ports import Clock
from broker.store.audit import SqlAuditLog
from broker.store.db import read_only as read_only_engine
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


class SqlUnitOfWork:
    """A transaction; leaving the block without ``commit`` rolls everything back."""

    session: Session
    orgs: SqlOrgRepository
    datasets: SqlDatasetRepository
    contracts: SqlContractRepository
    audit: SqlAuditLog
    releases: SqlReleaseLedger
    slices: SqlSliceRepository
    indicators: SqlIndicatorRepository

    def __init__(self, engine: Engine, clock: Clock, *, read_only: bool = False) -> None:
        self.engine = read_only_engine(engine) if read_only else engine
        self.clock = clock
        self._writer = None if read_only else _writer_lock(engine)

    def __enter__(self) -> Self:
        if self._writer is not None and not self._writer.acquire(timeout=WRITER_WAIT_SECONDS):
            raise Unavailable("The store is busy; nothing was released.")
        self.session = Session(self.engine, expire_on_commit=False)
        try:
            self.session.connection()  # begin now (on SQLite: take the write lock)
        except OperationalError as exc:
            self._close()
            raise Unavailable("The store is unavailable; nothing was released.") from exc
        self.orgs = SqlOrgRepository(self.session)
        self.datasets = SqlDatasetRepository(self.session)
        self.contracts = SqlContractRepository(self.session)
        self.audit = SqlAuditLog(self.session, self.clock)
        self.releases = SqlReleaseLedger(self.session)
        self.slices = SqlSliceRepository(self.session)
        self.indicators = SqlIndicatorRepository(self.session)
        return self

    def __exit__(self, *exc: object) -> None:
        self.session.rollback()
        self._close()

    def _close(self) -> None:
        self.session.close()
        if self._writer is not None:
            self._writer.release()

    def rollback(self) -> None:
        """Discard everything staged in this unit; it can go on with a fresh transaction."""
        self.session.rollback()

    def commit(self) -> None:
        """Make everything done in this unit durable; a store failure is Unavailable (503)."""
        try:
            self.session.commit()
        except OperationalError as exc:
            raise Unavailable("The store could not commit; nothing was released.") from exc


class SqlUnitOfWorkFactory:
    """Opens SQL units of work on one engine."""

    def __init__(self, engine: Engine, clock: Clock) -> None:
        self.engine = engine
        self.clock = clock

    def __call__(self, *, read_only: bool = False) -> SqlUnitOfWork:
        return SqlUnitOfWork(self.engine, self.clock, read_only=read_only)
