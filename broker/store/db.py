"""Database engine set-up: SQLite (embedded default) or PostgreSQL, same tables."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from broker.store.group_commit import SYNCER, syncer_for
from broker.store.schema import prepare


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
    return create_engine(url, pool_pre_ping=True, connect_args=server_connect_args(url))


def server_connect_args(url: str) -> dict[str, Any]:
    """Connection arguments for a database server: each connection says which broker process
    holds it (``application_name``, seen in ``pg_stat_activity``), so an operator can tell the
    workers' connections apart; an explicit one in the URL wins."""
    if make_url(url).get_backend_name() == "postgresql" and "application_name" not in url:
        return {"application_name": f"broker-{os.getpid()}"}
    return {}


def create_schema(engine: Engine) -> None:
    """At start: an empty database gets the whole schema (the migrations, with the append-only
    triggers and the audit head row); any other must already be at the code's revision
    (``broker.store.schema.SchemaMismatch`` otherwise, naming ``broker db upgrade``)."""
    prepare(engine)
    flush(engine)


def flush(engine: Engine) -> None:
    """Make every commit made through ``engine`` so far durable: for writes outside a unit of
    work, whose commits do not wait for the group fsync themselves (a no-op unless it applies).
    """
    with engine.connect() as conn:
        syncer = conn.info.get(SYNCER)
    if syncer is not None:
        syncer.flush()
