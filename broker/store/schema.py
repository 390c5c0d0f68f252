"""The database schema's version: Alembic migrations, applied by ``broker db upgrade``.

The server applies migrations itself only to an empty database (a new broker). A database
that holds anything is upgraded by the operator, on purpose, with ``broker db upgrade``
(taking a backup first): the server refuses to start on one that is behind the code, or ahead
of it, with a message naming what to do. A database made by release 0.1.0 (the last without
migrations) has no ``alembic_version`` table; ``upgrade`` recognises its schema exactly (tables,
columns and the append-only triggers) and stamps it at the baseline before going on, and
refuses anything else.

Migrations run inside one transaction (SQLite and PostgreSQL both have transactional DDL), so
an upgrade is applied whole or not at all. On PostgreSQL they hold an advisory lock, so
workers and a migration job starting together apply them once.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine, inspect, text

MIGRATIONS = Path(__file__).with_name("migrations")
#: The revision that is release 0.1.0's schema, as that release's own code created it.
BASELINE = "0001"
_LOCK = 6962  # the advisory lock every schema change takes on PostgreSQL


class SchemaMismatch(RuntimeError):
    """The database is not at the code's schema; the message says what to do."""


@dataclass(frozen=True)
class SchemaState:
    """Where a database stands against the code."""

    current: str | None  # its revision; None when unversioned (empty, or 0.1.0)
    head: str
    empty: bool

    @property
    def at_head(self) -> bool:
        return self.current == self.head


def _config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def _scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(_config())


def head() -> str:
    """The revision this code expects."""
    heads = _scripts().get_heads()
    if len(heads) != 1:  # a packaging mistake: refuse rather than guess
        raise SchemaMismatch(f"the migrations have {len(heads)} heads: {', '.join(heads)}")
    return heads[0]


def _tables(connection: Connection) -> set[str]:
    return set(inspect(connection).get_table_names()) - {"alembic_version"}


def state(engine: Engine) -> SchemaState:
    """Read the database's revision (without changing anything)."""
    with engine.connect() as connection:
        current = MigrationContext.configure(connection).get_current_revision()
        empty = not _tables(connection)
    return SchemaState(current=current, head=head(), empty=empty)


def _describe(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=True)


def check(engine: Engine) -> None:
    """Refuse (``SchemaMismatch``) unless the database is at the code's revision."""
    found = state(engine)
    if found.at_head:
        with engine.connect() as connection:
            _check_triggers(connection)
        return
    where = _describe(engine)
    if found.current is None:
        raise SchemaMismatch(
            f"{where} was made by an earlier broker (release 0.1.0 or older) and has not been "
            "upgraded: back it up (broker backup), then run `broker db upgrade`.")
    known = {script.revision for script in _scripts().walk_revisions()}
    if found.current not in known:
        raise SchemaMismatch(
            f"{where} is at schema revision {found.current}, which this broker does not know: "
            "it was upgraded by a newer broker. Run that release (or newer) instead.")
    raise SchemaMismatch(
        f"{where} is at schema revision {found.current}, behind this broker's {found.head}: "
        "back it up (broker backup), then run `broker db upgrade`.")


def prepare(engine: Engine) -> None:
    """At start: give an empty database the whole schema, and refuse any other database that
    is not at the code's revision (``SchemaMismatch``)."""
    if state(engine).empty:
        upgrade(engine, only_if_empty=True)
    check(engine)


def upgrade(engine: Engine, *, only_if_empty: bool = False) -> tuple[str | None, str]:
    """Apply every migration the database lacks, in one transaction; (from, to) revisions.

    An unversioned database that holds tables must be exactly release 0.1.0's schema: it is
    stamped at the baseline, then upgraded. With ``only_if_empty``, a database that gained
    tables meanwhile (another process created them) is left to ``check``.
    """
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK})
        current = MigrationContext.configure(connection).get_current_revision()
        tables = _tables(connection)
        if only_if_empty and (current is not None or tables):
            return current, current or ""
        config = _config(connection)
        if current is None and tables:
            _check_baseline(connection)
            command.stamp(config, BASELINE)
        command.upgrade(config, "head")
        _check_triggers(connection)  # else the whole upgrade is rolled back
        after = MigrationContext.configure(connection).get_current_revision()
    return current, after or ""


def _normal(sql: str) -> str:
    return " ".join(sql.split())


def _triggers(connection: Connection) -> frozenset[tuple[str, ...]]:
    """Every trigger of the database as what it does: on SQLite its table and its normalised
    CREATE TRIGGER text; on PostgreSQL its table, timing and events (``tgtype``), whether it
    is enabled, whether a WHEN clause limits it, and its function's name and body."""
    if connection.dialect.name == "postgresql":
        rows = connection.execute(text("""
            SELECT c.relname, t.tgname, t.tgtype::text, t.tgenabled::text,
                   (t.tgqual IS NOT NULL)::text, p.proname, p.prosrc
            FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
            JOIN pg_proc p ON p.oid = t.tgfoid
            WHERE NOT t.tgisinternal AND pg_table_is_visible(c.oid)"""))
        return frozenset((*(str(v) for v in r[:6]), _normal(str(r[6]))) for r in rows)
    rows = connection.execute(text(
        "SELECT tbl_name, name, sql FROM sqlite_master WHERE type = 'trigger'"))
    return frozenset((str(r[0]), str(r[1]), _normal(str(r[2]))) for r in rows)


def _baseline_module() -> Any:
    script = _scripts().get_revision(BASELINE)
    if script is None:  # a packaging mistake: refuse rather than guess
        raise SchemaMismatch(f"the baseline migration {BASELINE} is missing")
    return script.module


def sqlite_trigger_ddl() -> list[str]:
    """The statements that make SQLite's audit tables append-only (the baseline's)."""
    return list(_baseline_module().SQLITE_TRIGGERS)


@functools.cache
def _expected_triggers(dialect: str) -> frozenset[tuple[str, ...]]:
    """The triggers the migrations make (the baseline's: no later revision changes them)."""
    if dialect != "postgresql":
        scratch = create_engine("sqlite://")
        with scratch.begin() as connection:
            command.upgrade(_config(connection), "head")
            found = _triggers(connection)
        scratch.dispose()
        return found
    module = _baseline_module()
    bodies = {}
    for ddl in module.POSTGRESQL_TRIGGERS[:2]:
        name = ddl.split("FUNCTION", 1)[1].split("(", 1)[0].strip()
        bodies[name] = _normal(ddl.split("$$")[1].replace("%%", "%"))
    row, before, delete, update, truncate = 1, 2, 8, 16, 32
    append_only = tuple(module.APPEND_ONLY)
    triggers = {(t, f"{t}_append_only", str(row | before | delete | update), "O", "false",
                 "audit_append_only") for t in append_only}
    triggers |= {(t, f"{t}_no_truncate", str(before | truncate), "O", "false",
                  "audit_append_only") for t in (*append_only, "audit_head")}
    triggers.add(("audit_head", "audit_head_forward", str(row | before | delete | update),
                  "O", "false", "audit_head_forward"))
    return frozenset((*t, bodies[t[5]]) for t in triggers)


def _changed_triggers(connection: Connection) -> list[str]:
    """The names of the triggers that are not exactly the ones that make the audit log
    append-only: one dropped, disabled, limited by a WHEN clause, replaced under its name by
    one that does nothing, or joined by one the code did not make (which could drop new audit
    entries) all leave the log unprotected."""
    found, want = _triggers(connection), _expected_triggers(connection.dialect.name)
    return sorted({t[1] for t in want - found} | {t[1] for t in found - want})


def _check_triggers(connection: Connection) -> None:
    """Refuse a database whose audit triggers are changed (``_changed_triggers``)."""
    names = _changed_triggers(connection)
    if not names:
        return
    raise SchemaMismatch(
        f"{_describe(connection.engine)} does not have the triggers that keep the audit log "
        f"append-only (trigger {', '.join(names[:6])} missing, changed or unknown): its audit "
        "log cannot be trusted. Restore it from a backup (broker restore) or investigate "
        "before serving from it.")


def _columns(connection: Connection) -> dict[str, frozenset[str]]:
    inspector = inspect(connection)
    return {t: frozenset(c["name"] for c in inspector.get_columns(t))
            for t in _tables(connection)}


@functools.cache
def _baseline() -> dict[str, frozenset[str]]:
    """Release 0.1.0's tables and columns as the baseline revision makes them (in a scratch
    SQLite database: the table set is the same on both kinds)."""
    scratch = create_engine("sqlite://")
    with scratch.begin() as connection:
        command.upgrade(_config(connection), BASELINE)
        columns = _columns(connection)
    scratch.dispose()
    return columns


def _check_baseline(connection: Connection) -> None:
    """Refuse an unversioned database that is not exactly release 0.1.0's schema."""
    found, want = _columns(connection), _baseline()
    problems = [f"table {t} is missing" for t in sorted(set(want) - set(found))]
    problems += [f"table {t} lacks {', '.join(sorted(want[t] - found[t]))}"
                 for t in sorted(set(want) & set(found)) if want[t] - found[t]]
    triggers = _changed_triggers(connection)
    if triggers:
        problems.append(f"trigger {', '.join(triggers[:6])} missing, changed or unknown")
    if problems:
        raise SchemaMismatch(
            f"{_describe(connection.engine)} has no schema version and is not release 0.1.0's "
            f"schema ({'; '.join(problems[:5])}): it was made by an older broker, which no "
            "migration starts from. Export its audit log (broker audit export), then start on "
            "a new database.")
