"""Alembic migrations on SQLite and PostgreSQL: the migrated schema is the code's, the start-up
check refuses a database behind or ahead of the code, and ``broker db upgrade`` upgrades an
unversioned release 0.1.0 database but refuses anything else, changing nothing.

(A database made by release 0.1.0's own code is upgraded in test_upgrade_release.py.)
"""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, inspect, text
from sqlalchemy.exc import DBAPIError
from sqlmodel import SQLModel
from typer.testing import CliRunner

from broker.cli import app as cli
from broker.store import schema
from broker.store.db import create_schema, make_engine
from tests.migrated import as_release_0_1_0

runner = CliRunner()


def _revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def test_migrations_make_the_code_schema(engine: Engine) -> None:
    create_schema(engine)
    assert _revision(engine) == schema.head()
    with engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
    assert diffs == []
    with engine.connect() as conn:  # generated columns are computed by the database
        conn.execute(text("INSERT INTO audit_entries (seq, body, leaf_hash, prev_hash) VALUES "
                          "(1, '{\"action\": \"x.y\", \"decision\": {\"allowed\": true}}', "
                          "'a', 'b')"))
        assert conn.execute(text("SELECT action, allowed FROM audit_entries")).one() == (
            "x.y", True)
        conn.rollback()


@pytest.mark.parametrize("statement", [
    "UPDATE audit_entries SET body = '{}'", "DELETE FROM audit_entries",
    "DELETE FROM audit_head", "UPDATE audit_head SET size = -1"])
def test_migrated_audit_tables_are_append_only(engine: Engine, statement: str) -> None:
    create_schema(engine)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO audit_entries (seq, body, leaf_hash, prev_hash) "
                          "VALUES (1, '{}', 'a', 'b')"))
    with pytest.raises(DBAPIError, match=r"append-only|audit head"), engine.begin() as conn:
        conn.execute(text(statement))


def test_unversioned_release_database_is_refused_then_upgraded(engine: Engine, url: str,
                                                               monkeypatch: pytest.MonkeyPatch
                                                               ) -> None:
    as_release_0_1_0(engine)
    with pytest.raises(schema.SchemaMismatch, match="broker db upgrade"):
        create_schema(engine)
    monkeypatch.setenv("BROKER_DATABASE_URL", url)
    status = runner.invoke(cli, ["db", "status"])
    assert status.exit_code == 3, status.output
    assert "unversioned" in status.output
    result = runner.invoke(cli, ["db", "upgrade"])
    assert result.exit_code == 0, result.output
    assert f"release 0.1.0 (unversioned) -> {schema.head()}" in result.output
    assert _revision(engine) == schema.head()
    create_schema(engine)  # the server now starts
    again = runner.invoke(cli, ["db", "upgrade"])
    assert again.exit_code == 0
    assert "nothing to do" in again.output
    assert runner.invoke(cli, ["db", "status"]).exit_code == 0


def test_database_behind_is_refused_naming_the_command(engine: Engine) -> None:
    with engine.begin() as conn:
        from alembic import command

        command.upgrade(schema._config(conn), schema.BASELINE)
    with pytest.raises(schema.SchemaMismatch, match=r"behind .*broker db upgrade"):
        create_schema(engine)
    before, after = schema.upgrade(engine)
    assert (before, after) == (schema.BASELINE, schema.head())
    if engine.dialect.name == "postgresql":  # the ledger ids were widened
        columns = {c["name"]: c["type"] for c in inspect(engine).get_columns("release_forms")}
        assert str(columns["id"]) == "BIGINT"
        assert str(columns["audit_seq"]) == "BIGINT"


def test_database_ahead_is_refused(engine: Engine) -> None:
    create_schema(engine)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = 'ffff'"))
    with pytest.raises(schema.SchemaMismatch, match="newer broker"):
        create_schema(engine)


def test_unversioned_database_that_is_not_the_release_is_refused_unchanged(
        engine: Engine) -> None:
    as_release_0_1_0(engine)
    with engine.begin() as conn:  # an older broker: no release ledger, fewer columns
        conn.execute(text("DROP TABLE release_forms"))
        conn.execute(text("DROP TRIGGER audit_nodes_append_only ON audit_nodes"
                          if engine.dialect.name == "postgresql"
                          else "DROP TRIGGER audit_nodes_no_update"))
    with pytest.raises(schema.SchemaMismatch, match="older broker") as refused:
        schema.upgrade(engine)
    assert "release_forms is missing" in str(refused.value)
    assert "trigger audit_nodes_" in str(refused.value)
    assert _revision(engine) is None  # nothing was stamped or created
    assert "release_forms" not in inspect(engine).get_table_names()


def test_serve_refuses_a_database_behind_the_code(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path / 'broker.db'}"
    engine = make_engine(url)
    as_release_0_1_0(engine)
    engine.dispose()
    monkeypatch.setenv("BROKER_DATA_DIR", str(tmp_path))
    result = runner.invoke(cli, ["serve", "--port", "1"])
    assert result.exit_code == 3
    assert "broker db upgrade" in result.output


def test_serve_refuses_several_workers_on_sqlite(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BROKER_DATA_DIR", str(tmp_path))
    result = runner.invoke(cli, ["serve", "--workers", "2", "--port", "1"])
    assert result.exit_code == 2
    assert "PostgreSQL" in result.output
    assert not (tmp_path / "broker.db").exists()
