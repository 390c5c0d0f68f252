"""Database engine set-up: SQLite (embedded default) or PostgreSQL, same tables."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlmodel import Session, SQLModel, select

from audit.entry import GENESIS_HASH
from broker.store.tables import AuditHeadRow


def _configure_sqlite(engine: Engine) -> None:
    """WAL, durable commits, foreign keys, and write-locking transactions.

    A transaction starts with ``BEGIN IMMEDIATE`` so it holds SQLite's write lock from its
    first statement: a read-then-write transaction can then never fail on lock upgrade, and
    audit appends are serialised exactly as PostgreSQL's ``SELECT ... FOR UPDATE`` does.
    Read-only units (see :func:`read_only`) start a deferred ``BEGIN`` instead and read a
    WAL snapshot without blocking writers.
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        reading = connection.get_execution_options().get(READ_ONLY, False)
        connection.exec_driver_sql("BEGIN" if reading else "BEGIN IMMEDIATE")


READ_ONLY = "broker_read_only"


def read_only(engine: Engine) -> Engine:
    """The same pool, for transactions that only read (a snapshot on SQLite, READ ONLY on
    PostgreSQL)."""
    return engine.execution_options(**{READ_ONLY: True, "postgresql_readonly": True})


def make_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite files get their directory created and are tuned."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30}, pool_pre_ping=True
        )
        _configure_sqlite(engine)
        return engine
    return create_engine(url, pool_pre_ping=True)


def create_schema(engine: Engine) -> None:
    """Create missing tables and the audit head row."""
    SQLModel.metadata.create_all(engine)
    with Session(engine) as session:
        if session.exec(select(AuditHeadRow).where(AuditHeadRow.id == 1)).first() is None:
            session.add(AuditHeadRow(id=1, size=0, head_hash=GENESIS_HASH))
            session.commit()
