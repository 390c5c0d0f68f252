"""SQL unit of work: one session, every repository, explicit commit."""

from __future__ import annotations

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
    SqlOrgRepository,
)


class SqlUnitOfWork:
    """A transaction; leaving the block without ``commit`` rolls everything back."""

    session: Session
    orgs: SqlOrgRepository
    datasets: SqlDatasetRepository
    contracts: SqlContractRepository
    audit: SqlAuditLog

    def __init__(self, engine: Engine, clock: Clock, *, read_only: bool = False) -> None:
        self.engine = read_only_engine(engine) if read_only else engine
        self.clock = clock

    def __enter__(self) -> Self:
        self.session = Session(self.engine, expire_on_commit=False)
        try:
            self.session.connection()  # begin now (on SQLite: take the write lock)
        except OperationalError as exc:
            self.session.close()
            raise Unavailable("The store is unavailable; nothing was released.") from exc
        self.orgs = SqlOrgRepository(self.session)
        self.datasets = SqlDatasetRepository(self.session)
        self.contracts = SqlContractRepository(self.session)
        self.audit = SqlAuditLog(self.session, self.clock)
        return self

    def __exit__(self, *exc: object) -> None:
        self.session.rollback()
        self.session.close()

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
