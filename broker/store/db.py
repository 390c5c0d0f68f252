"""Database engine set-up: SQLite (embedded default) or PostgreSQL, same tables."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, inspect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlmodel import Session, SQLModel, select

from audit.entry import GENESIS_HASH
from broker.store.group_commit import SYNCER, syncer_for
from broker.store.tables import AuditHeadRow


def _configure_sqlite(engine: Engine) -> None:
    """WAL, durable commits, foreign keys, and write-locking transactions.

    A database file in WAL mode runs ``synchronous=NORMAL`` and its connections carry the
    file's :class:`~broker.store.group_commit.WalSyncer` (``connection.info[SYNCER]``): a unit
    of work's commit returns only after an fsync of the WAL that covers it (group commit, see
    ``broker.store.group_commit``). Anything else (``:memory:``, a URI database, a file where
    WAL could not be set) keeps ``synchronous=FULL``, an fsync inside every commit.

    A transaction starts with ``BEGIN IMMEDIATE`` so it holds SQLite's write lock from its
    first statement: a read-then-write transaction can then never fail on lock upgrade, and
    audit appends are serialised exactly as PostgreSQL's ``SELECT ... FOR UPDATE`` does.
    Read-only units (see :func:`read_only`) start a deferred ``BEGIN`` instead and read a
    WAL snapshot without blocking writers.
    """

    uri = bool(engine.url.query.get("uri"))

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, record: Any) -> None:
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
        cursor = dbapi_connection.cursor()
        mode = cursor.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        files = {name: file for _, name, file in cursor.execute("PRAGMA database_list")}
        if str(mode).lower() == "wal" and files.get("main") and not uri:
            record.info[SYNCER] = syncer_for(files["main"])
            cursor.execute("PRAGMA synchronous=NORMAL")
        else:
            cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        statement = ("BEGIN" if connection.get_execution_options().get(READ_ONLY, False)
                     else "BEGIN IMMEDIATE")
        try:  # straight to the driver: every unit of work starts here
            connection.connection.driver_connection.execute(statement)
        except sqlite3.Error as exc:  # busy past the timeout, I/O error: as SQLAlchemy says it
            raise OperationalError(statement, None, exc) from exc


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
            url, connect_args={"check_same_thread": False, "timeout": 30}
        )
        _configure_sqlite(engine)
        return engine
    return create_engine(url, pool_pre_ping=True)


APPEND_ONLY = ("audit_entries", "audit_nodes", "audit_checkpoints")

_SQLITE_TRIGGERS = [
    *(f"""CREATE TRIGGER IF NOT EXISTS {table}_no_{op.lower()} BEFORE {op} ON {table}
        BEGIN SELECT RAISE(ABORT, '{table} is append-only'); END"""
      for table in APPEND_ONLY for op in ("UPDATE", "DELETE")),
    """CREATE TRIGGER IF NOT EXISTS audit_head_no_delete BEFORE DELETE ON audit_head
        BEGIN SELECT RAISE(ABORT, 'the audit head cannot be deleted'); END""",
    """CREATE TRIGGER IF NOT EXISTS audit_head_forward BEFORE UPDATE ON audit_head
        WHEN NEW.size < OLD.size OR NEW.id != OLD.id
        BEGIN SELECT RAISE(ABORT, 'the audit head only moves forward'); END""",
]

# Run through the driver with parameters, so a literal % is written %%.
_POSTGRESQL_TRIGGERS = [
    """CREATE OR REPLACE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION '%% is append-only', TG_TABLE_NAME; END $$""",
    """CREATE OR REPLACE FUNCTION audit_head_forward() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
          IF TG_OP <> 'UPDATE' OR NEW.size < OLD.size OR NEW.id <> OLD.id THEN
            RAISE EXCEPTION 'the audit head only moves forward';
          END IF;
          RETURN NEW;
        END $$""",
    *(f"""CREATE OR REPLACE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table}
        FOR EACH ROW EXECUTE FUNCTION audit_append_only()""" for table in APPEND_ONLY),
    *(f"""CREATE OR REPLACE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table}
        FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only()"""
      for table in (*APPEND_ONLY, "audit_head")),
    """CREATE OR REPLACE TRIGGER audit_head_forward BEFORE UPDATE OR DELETE ON audit_head
        FOR EACH ROW EXECUTE FUNCTION audit_head_forward()""",
]


class SchemaOutdated(RuntimeError):
    """The database was made by an older broker, without columns this one needs."""


#: A column each schema change added, with what it brought; a database without it is older.
_MARKERS = (
    ("audit_head", "frontier", "the audit Merkle tree"),
    ("contracts", "provider_signature", "signed contracts and consented slices"),
)


def _check_schema(engine: Engine) -> None:
    inspector = inspect(engine)
    tables = set(inspector.get_table_names())
    for table, column, feature in _MARKERS:
        if table in tables and column not in {c["name"] for c in inspector.get_columns(table)}:
            raise SchemaOutdated(
                f"{engine.url.render_as_string(hide_password=True)} was created by an older "
                f"broker without {feature}; export its audit log, then start on a new "
                "database (for the embedded default: move ./var aside)."
            )


def create_schema(engine: Engine) -> None:
    """Create missing tables, the append-only triggers and the audit head row."""
    _check_schema(engine)
    SQLModel.metadata.create_all(engine)
    triggers = _POSTGRESQL_TRIGGERS if engine.dialect.name == "postgresql" else _SQLITE_TRIGGERS
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.exec_driver_sql("SELECT pg_advisory_xact_lock(6962)")  # one creator at a time
        for ddl in triggers:
            conn.exec_driver_sql(ddl)
    with Session(engine) as session:
        if session.exec(select(AuditHeadRow).where(AuditHeadRow.id == 1)).first() is None:
            session.add(AuditHeadRow(id=1, size=0, head_hash=GENESIS_HASH, frontier=""))
            session.commit()
    flush(engine)


def flush(engine: Engine) -> None:
    """Make every commit made through ``engine`` so far durable: for writes outside a unit of
    work, whose commits do not wait for the group fsync themselves (a no-op unless it applies).
    """
    with engine.connect() as conn:
        syncer = conn.info.get(SYNCER)
    if syncer is not None:
        syncer.flush()
