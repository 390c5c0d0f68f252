"""SQL sources (SQLite, PostgreSQL): a snapshot of a table or of one read-only query.

Reading never writes, whatever the caller asks: SQLite is opened read-only (a ``mode=ro`` file
URI, then ``PRAGMA query_only``), PostgreSQL runs in a ``READ ONLY`` transaction (and with
``default_transaction_read_only`` for the session) under a ``statement_timeout``. Those are
the guards; the checks on the text of a query (one statement, beginning with SELECT or WITH)
only turn the obvious mistakes into clear answers. A table name is looked up by SQLAlchemy's
reflection and quoted by it: it is never formatted into SQL, so a name holding quotes or
semicolons is a name that does not exist, not SQL. A table snapshot reads only the declared
fields (data minimisation: undeclared columns never leave the source); a query's columns must
match the declaration exactly, as a file's must.

Values become the text a CSV of the same data holds (``connectors.conform.RENDERERS``) and are
conformed as the CSV path conforms them. Errors name no value and no credential: driver
messages (which can quote values, the statement or the server's address) are replaced by the
SQLSTATE or the SQLite error name, and never chained.
"""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pandas as pd
from sqlalchemy import (
    URL,
    Connection,
    Engine,
    MetaData,
    Table,
    create_engine,
    inspect,
    make_url,
    select,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.pool import NullPool
from sqlalchemy.sql import Executable, text

from broker.domain.datasets import DatasetSchema
from broker.domain.errors import BadDataset, InvalidInput, Unavailable
from connectors.conform import conform, numbered_problem, render_cell, text_frame

#: How long one statement may run (PostgreSQL), or the whole read may run (SQLite).
STATEMENT_TIMEOUT_S = 300
#: How long connecting may take.
CONNECT_TIMEOUT_S = 10
#: Rows fetched at a time.
BATCH = 10_000

_SQLITE = {"sqlite", "sqlite+pysqlite"}
_POSTGRES = {"postgresql", "postgresql+psycopg"}

# PostgreSQL: cannot write in a read-only transaction; statement cancelled (the timeout).
_READ_ONLY_SQLSTATE = "25006"
_CANCELLED_SQLSTATE = "57014"


def read_sql(
    url: str,
    schema: DatasetSchema,
    *,
    table: str | None = None,
    query: str | None = None,
    max_rows: int = 5_000_000,
) -> pd.DataFrame:
    """Snapshot ``table`` (or ``schema.table``) or the rows of one read-only ``query`` at
    ``url``, at most ``max_rows`` of them; conform them to ``schema``."""
    if (table is None) == (query is None):
        raise InvalidInput("Give exactly one of a table and a query.")
    checked = check_query(query) if query is not None else None
    with _connection(url) as conn:
        try:
            # A query goes to the driver as written (SQLAlchemy's text() would read ':name'
            # in a string literal as a parameter); a table is a SELECT SQLAlchemy builds.
            statement = (checked if checked is not None
                         else _table_select(conn, table or "", schema))
            header, columns = _fetch(conn, statement, max_rows, set(schema.names))
        except sa_exc.NoSuchTableError:
            raise BadDataset("The source has no such table.",
                             [{"column": None, "issue": "table-missing"}]) from None
        except sa_exc.StatementError as exc:
            raise _statement_failed(exc) from None
    return conform(text_frame(header, columns), schema)


# --- connecting --------------------------------------------------------------------------


@contextmanager
def _connection(url: str) -> Iterator[Connection]:
    """A connection inside a read-only transaction, rolled back and closed at the end."""
    engine, prepare = _engine(url)
    try:
        try:
            conn = engine.connect()
        except (sa_exc.DBAPIError, OSError) as exc:
            raise Unavailable("The SQL source could not be reached.",
                              **_driver_code(exc)) from None
        with conn:
            try:
                prepare(conn)
            except sa_exc.DBAPIError as exc:
                raise Unavailable("The SQL source refused a read-only session.",
                                  **_driver_code(exc)) from None
            yield conn  # closing the connection rolls its transaction back
    finally:
        engine.dispose()


def _engine(url: str) -> tuple[Engine, Callable[[Connection], None]]:
    try:
        parsed = make_url(url)
    except (sa_exc.ArgumentError, ValueError):
        raise InvalidInput("The SQL source is not a valid database URL.") from None
    if parsed.drivername in _SQLITE:
        return _sqlite_engine(parsed), _no_preparation
    if parsed.drivername in _POSTGRES:
        return _postgres_engine(parsed), _postgres_read_only
    raise InvalidInput("SQL sources are SQLite files or PostgreSQL databases.")


def _no_preparation(conn: Connection) -> None:
    """SQLite is read-only from the moment it is opened."""


def _sqlite_engine(url: URL) -> Engine:
    database = url.database or ""
    if database in ("", ":memory:") or database.startswith("file:"):
        raise InvalidInput("A SQLite source names a database file.")
    # Our own URI, so nothing in the configured URL (mode=rw, ...) can make it writable.
    uri = f"file:{quote(str(Path(database).resolve()))}?mode=ro"
    deadline = time.monotonic() + STATEMENT_TIMEOUT_S

    def connect() -> sqlite3.Connection:
        raw = sqlite3.connect(uri, uri=True, timeout=CONNECT_TIMEOUT_S,
                              check_same_thread=False)
        raw.execute("PRAGMA query_only = ON")
        # SQLite has no statement timeout: abort the statement running past the deadline.
        raw.set_progress_handler(lambda: int(time.monotonic() > deadline), 100_000)
        return raw

    return create_engine("sqlite+pysqlite://", creator=connect, poolclass=NullPool)


def _postgres_engine(url: URL) -> Engine:
    timeout_ms = STATEMENT_TIMEOUT_S * 1000
    return create_engine(
        url.set(drivername="postgresql+psycopg"),
        poolclass=NullPool,
        connect_args={
            "connect_timeout": CONNECT_TIMEOUT_S,
            "options": f"-c default_transaction_read_only=on -c statement_timeout={timeout_ms}",
        },
    )


def _postgres_read_only(conn: Connection) -> None:
    """Make the transaction read-only (its first statement) and bound each statement."""
    conn.exec_driver_sql("SET TRANSACTION READ ONLY")
    conn.execute(text("SELECT set_config('statement_timeout', :ms, true)"),
                 {"ms": str(STATEMENT_TIMEOUT_S * 1000)})


# --- what to read ------------------------------------------------------------------------


def _table_select(conn: Connection, name: str, schema: DatasetSchema) -> Executable:
    """SELECT the declared fields of the reflected table ``name`` (``schema.table`` allowed:
    split at the first dot)."""
    owner, _, bare = name.partition(".") if "." in name else (None, "", name)
    if not bare or (owner is not None and owner not in inspect(conn).get_schema_names()):
        raise sa_exc.NoSuchTableError(name)
    reflected = Table(bare, MetaData(), schema=owner or None, autoload_with=conn)
    present = [reflected.c[n] for n in schema.names if n in reflected.c]
    if not present:
        raise BadDataset("The table has none of the declared fields.",
                         [{"column": None, "issue": "header-missing"}])
    return select(*present)


_SPACE_OR_COMMENT = re.compile(r"(?:\s+|--[^\n]*(?:\n|$)|/\*.*?\*/)*", re.DOTALL)
_FIRST_WORD = re.compile(r"(select|with)\b", re.IGNORECASE)
# Tokens in which a ';' ends nothing: strings, quoted names, comments, PostgreSQL's dollar
# quotes. An E'...' string's backslash escape is read as ending the string early; at worst
# that refuses a query, it never lets one past the read-only guards.
_OPAQUE = re.compile(
    r"""'(?:[^']|'')*'|"(?:[^"]|"")*"|`[^`]*`|\[[^\]]*\]|--[^\n]*|/\*.*?\*/"""
    r"""|(\$(?:[A-Za-z_][A-Za-z0-9_]*)?\$).*?\1""",
    re.DOTALL,
)


def check_query(query: str) -> str:
    """``query`` without a trailing ';', when it is one statement beginning with SELECT or
    WITH (after any comments); BadDataset otherwise."""
    start = _SPACE_OR_COMMENT.match(query)
    if not _FIRST_WORD.match(query, start.end() if start else 0):
        raise BadDataset("A query must be one SELECT (or WITH ... SELECT) statement.",
                         [{"column": None, "issue": "not-a-select"}])
    # The query with every opaque token blanked out, character for character.
    code = _OPAQUE.sub(lambda m: " " * len(m.group()), query)
    if "'" in code or '"' in code or "/*" in code:
        raise BadDataset("The query has an unterminated string, quoted name or comment.",
                         [{"column": None, "issue": "malformed-query"}])
    last = code.rstrip()
    end = len(last) - 1 if last.endswith(";") else len(query)  # a final ';' is dropped
    if ";" in code[:end]:
        raise BadDataset("A query must be one statement.",
                         [{"column": None, "issue": "several-statements"}])
    return query[:end]


# --- reading -----------------------------------------------------------------------------


def _fetch(conn: Connection, statement: Executable | str, max_rows: int, declared: set[str]
           ) -> tuple[list[str], list[list[str | None]]]:
    """Header and columns of text; BadDataset past ``max_rows`` or on a value that is not
    tabular data (bytes, arrays, JSON). Rows are streamed (a server-side cursor on
    PostgreSQL), so no more than ``max_rows`` + 1 of them are ever fetched."""
    streaming = conn.execution_options(yield_per=BATCH)
    if isinstance(statement, str):
        if conn.dialect.paramstyle in ("format", "pyformat"):
            statement = statement.replace("%", "%%")  # psycopg reads '%' as a placeholder
        result = streaming.exec_driver_sql(statement)
    else:
        result = streaming.execute(statement)
    keys = result.keys()  # the result's column names (a RMKeyView, not a dict)
    header = [str(k) for k in keys]
    columns: list[list[str | None]] = [[] for _ in header]
    unsupported: dict[int, list[int]] = {}
    rows = 0
    for partition in result.partitions(BATCH):
        for row in partition:
            rows += 1
            if rows > max_rows:
                result.close()
                raise BadDataset(f"The source holds more than {max_rows} rows.",
                                 [{"column": None, "issue": "too-many-rows"}])
            for i, value in enumerate(row):
                try:
                    columns[i].append(render_cell(value))
                except TypeError:
                    unsupported.setdefault(i, []).append(rows)
                    columns[i].append(None)
    if unsupported:
        raise BadDataset(
            "Some columns hold values that are not text, numbers, booleans or dates.",
            [numbered_problem(header[i] if header[i] in declared else None, "unsupported-value",
                              numbers) for i, numbers in unsupported.items()])
    return header, columns


def _driver_code(exc: BaseException) -> dict[str, Any]:
    """What may be said of a driver error: its SQLSTATE or SQLite error name, nothing else."""
    orig = getattr(exc, "orig", None)
    sqlstate = getattr(orig, "sqlstate", None)
    if isinstance(sqlstate, str):
        return {"sqlstate": sqlstate}
    name = getattr(orig, "sqlite_errorname", None)
    return {"sqlite_error": name} if isinstance(name, str) else {}


def _statement_failed(exc: sa_exc.StatementError) -> BadDataset:
    code = _driver_code(exc)
    sqlstate, sqlite_error = code.get("sqlstate"), code.get("sqlite_error", "")
    if sqlstate == _READ_ONLY_SQLSTATE or sqlite_error.startswith("SQLITE_READONLY"):
        issue, detail = "write-refused", "The source is read-only: the query tried to write."
    elif sqlstate == _CANCELLED_SQLSTATE or sqlite_error == "SQLITE_INTERRUPT":
        issue, detail = "query-timeout", "The query ran past its time limit."
    else:
        issue, detail = "query-failed", "The query failed on the source."
    return BadDataset(detail, [{"column": None, "issue": issue, **code}])
