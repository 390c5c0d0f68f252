"""Benchmark: ``broker db upgrade`` of a release 0.1.0 database holding a large audit log.

Run: .venv/bin/python -m tests.bench.migrate [--entries N] [--forms F] [--postgres URL]

For SQLite and PostgreSQL (a throwaway server from tests/postgres.py unless ``--postgres``
names one), a database in release 0.1.0's form (the baseline revision's tables, no version
table) is filled straight through the tables with ``--entries`` audit entries (a valid log)
and ``--forms`` release-ledger rows. Timed, as the operator runs it (a new process, start-up
included): ``broker db upgrade`` (the shape check, the stamp, then every migration since).
The raw baseline, in the same run, on an identical copy: the same schema changes as bare
statements through the driver (PostgreSQL: the ALTERs of revision 0002; SQLite: creating and
filling the version table, all that is left to do there). The log is verified afterwards.
Everything lives under one scratch directory / scratch databases, removed at the end.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
from sqlalchemy import insert
from sqlalchemy.engine import make_url

from audit.verify import verify_log
from broker.store import schema
from broker.store.db import make_engine
from broker.store.tables import ReleaseFormRow
from broker.store.uow import SqlUnitOfWork
from tests.bench.audit import _clock, _load_db, _log
from tests.migrated import as_release_0_1_0
from tests.postgres import start_server


def _release_0_1_0(url: str, entries: int, forms: int) -> None:
    engine = make_engine(url)
    as_release_0_1_0(engine)
    engine.dispose()
    bodies, leaves = _log(entries)
    _load_db(url, bodies, leaves, schema=False)
    engine = make_engine(url)
    rows = [{"dataset_id": f"d{i % 50}", "quantity": f"sum:x:{i}", "kind": "exact",
             "atoms": os.urandom(64), "numbers": None, "audit_seq": 1 + i % entries}
            for i in range(forms)]
    with engine.begin() as conn:
        conn.execute(insert(ReleaseFormRow.__table__), rows)  # type: ignore[attr-defined]
    engine.dispose()


def _upgrade(url: str, workdir: Path) -> float:
    env = {**os.environ, "BROKER_DATABASE_URL": url, "BROKER_DATA_DIR": str(workdir)}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "broker", "db", "upgrade"], env=env,
                          capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"broker db upgrade failed: {done.stderr}")
    return elapsed


def _verified(url: str, entries: int) -> None:
    engine = make_engine(url)
    with SqlUnitOfWork(engine, _clock) as uow:
        result = verify_log(uow.audit.chunks(), head=uow.audit.head())
    engine.dispose()
    if not (result.valid and result.size == entries):
        raise SystemExit(f"the upgraded log does not verify: {result}")


@contextmanager
def _databases(admin: str, *names: str) -> Iterator[list[str]]:
    server = make_url(admin)
    plain = server.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(plain, autocommit=True) as conn:
        for name in names:
            conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield [server.set(database=n).render_as_string(hide_password=False) for n in names]
    finally:
        with psycopg.connect(plain, autocommit=True) as conn:
            for name in names:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _line(name: str, seconds: float, base: float) -> None:
    print(f"{name:52} {seconds:8.2f} s   raw {base:6.2f} s   ({seconds / base:5.1f}x)")


def _sqlite(workdir: Path, entries: int, forms: int) -> None:
    db = workdir / "broker.db"
    _release_0_1_0(f"sqlite:///{db}", entries, forms)
    raw = workdir / "raw.db"
    shutil.copy(db, raw)
    start = time.perf_counter()
    conn = sqlite3.connect(raw)
    with conn:
        conn.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL, "
                     "CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num))")
        conn.execute("INSERT INTO alembic_version VALUES (?)", (schema.head(),))
    conn.close()
    base = time.perf_counter() - start
    seconds = _upgrade(f"sqlite:///{db}", workdir)
    _verified(f"sqlite:///{db}", entries)
    _line(f"sqlite: broker db upgrade, {entries:,} entries", seconds, base)


def _postgres(admin: str, workdir: Path, entries: int, forms: int) -> None:
    with _databases(admin, f"bench_migrate_{os.getpid()}", f"bench_raw_{os.getpid()}") as (
            url, raw):
        _release_0_1_0(url, entries, forms)
        _release_0_1_0(raw, entries, forms)
        plain = make_url(raw).set(drivername="postgresql").render_as_string(
            hide_password=False)
        start = time.perf_counter()
        with psycopg.connect(plain) as conn:
            for table, column in (("release_forms", "id"), ("release_forms", "audit_seq"),
                                  ("released_sets", "id"), ("released_sets", "audit_seq"),
                                  ("release_cache", "audit_seq"), ("dataset_versions", "rows")):
                conn.execute(f"ALTER TABLE {table} ALTER COLUMN {column} TYPE BIGINT")
            conn.execute("ALTER SEQUENCE release_forms_id_seq AS bigint")
            conn.execute("ALTER SEQUENCE released_sets_id_seq AS bigint")
            conn.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY)")
            conn.execute("INSERT INTO alembic_version VALUES (%s)", (schema.head(),))
        base = time.perf_counter() - start
        seconds = _upgrade(url, workdir)
        _verified(url, entries)
    _line(f"postgresql: broker db upgrade, {entries:,} entries", seconds, base)


def main() -> None:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--forms", type=int, default=100_000)
    parser.add_argument("--postgres", help="a PostgreSQL URL whose server may host scratch "
                                           "databases (default: start a throwaway server)")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="broker-bench-migrate-"))
    try:
        print(f"release 0.1.0 database: {args.entries:,} audit entries, "
              f"{args.forms:,} ledger rows; upgrade to {schema.head()}")
        _sqlite(workdir, args.entries, args.forms)
        if args.postgres:
            _postgres(args.postgres, workdir, args.entries, args.forms)
        else:
            server = start_server()
            try:
                _postgres(server.url(), workdir, args.entries, args.forms)
            finally:
                server.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
