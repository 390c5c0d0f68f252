"""Dependencies fail closed: no policy engine or no audit log means 503 and nothing released."""

from __future__ import annotations

import sqlite3
from typing import Any

import duckdb
import pytest

from broker.settings import Settings
from connectors.engine import DuckDBEngine
from tests.conftest import World, assert_problem, auth


class BrokenEngine:
    """A policy engine whose every evaluation fails, as a crashed OPA would."""

    revision = "broken"

    def evaluate(self, entrypoint: str, input: Any) -> Any:  # noqa: ARG002
        raise RuntimeError("engine down")


def _break_policy_engine(world: World) -> None:
    container = world.client.app.state.container  # type: ignore[attr-defined]
    object.__setattr__(container.policies, "engine", BrokenEngine())


def _last_entry(settings: Settings) -> tuple[str, int, str]:
    with sqlite3.connect(settings.data_dir / "broker.db") as conn:
        row = conn.execute("SELECT action, allowed, body FROM audit_entries "
                           "ORDER BY seq DESC LIMIT 1").fetchone()
    return row[0], row[1], row[2]


def test_policy_engine_failure_is_503_and_the_refusal_is_audited(
    world: World, settings: Settings
) -> None:
    _break_policy_engine(world)
    r = world.query(group_by=["town"])
    body = assert_problem(r, 503, "unavailable")
    assert "cells" not in body
    action, allowed, entry = _last_entry(settings)
    assert (action, allowed) == ("query.aggregate", 0)
    assert "policy-engine-unavailable" in entry
    r = world.client.post(f"/v1/contracts/{world.contract['id']}/revoke",
                          headers=auth(world.grid))
    assert_problem(r, 503, "unavailable")


def test_audit_log_that_cannot_be_written_means_no_answer(
    world: World, settings: Settings
) -> None:
    # Another writer holds the database's write lock past the store's busy timeout.
    container = world.client.app.state.container  # type: ignore[attr-defined]
    container.engine.dispose()
    with sqlite3.connect(settings.data_dir / "broker.db", timeout=1) as locker:
        locker.execute("BEGIN IMMEDIATE")
        from sqlalchemy import event

        @event.listens_for(container.engine, "connect")
        def _short_timeout(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.execute("PRAGMA busy_timeout=200")

        r = world.query(group_by=["town"])
        locker.rollback()
    body = assert_problem(r, 503, "unavailable")
    assert "cells" not in body


def test_a_query_the_planner_rejects_after_the_policy_allowed_it_is_audited(
    world: World, settings: Settings
) -> None:
    r = world.query(measures=[{"fn": "count"}, {"fn": "count"}])
    assert_problem(r, 422, "invalid-input")
    action, allowed, entry = _last_entry(settings)
    assert (action, allowed) == ("query.aggregate", 0)
    assert '"invalid-input"' in entry


def test_an_engine_failure_after_the_allow_is_audited_and_releases_nothing(
    world: World, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(*_: Any) -> None:
        raise duckdb.IOException("simulated engine failure")

    monkeypatch.setattr(DuckDBEngine, "run", fail)
    r = world.query(group_by=["town"])
    assert_problem(r, 500, "internal-error")
    action, allowed, entry = _last_entry(settings)
    assert (action, allowed) == ("query.aggregate", 0)
    assert '"engine-failed"' in entry


class FailingReleaseLog:
    """Wraps the real audit log; the append that would record a release fails."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def append(self, event: Any) -> Any:
        if event.action == "query.aggregate" and event.allowed:
            from broker.domain.errors import Unavailable

            raise Unavailable("The audit log could not be written; nothing was released.")
        return self.inner.append(event)


def test_no_cells_are_served_when_the_release_cannot_be_audited(
    world: World, settings: Settings
) -> None:
    queries = world.client.app.state.container.queries  # type: ignore[attr-defined]
    real = queries.uow

    class FailingUnitOfWork:
        """The real unit of work, with an audit log that cannot record releases."""

        def __init__(self, *, read_only: bool = False) -> None:
            self.inner = real(read_only=read_only)

        def __enter__(self) -> Any:
            self.inner.__enter__()
            self.audit = FailingReleaseLog(self.inner.audit)
            return self

        def __exit__(self, *exc: object) -> None:
            self.inner.__exit__(*exc)

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

    failing_uow = FailingUnitOfWork
    object.__setattr__(queries, "uow", failing_uow)
    before = _last_entry(settings)
    r = world.query(group_by=["town"])
    body = assert_problem(r, 503, "unavailable")
    assert set(body) == {"type", "title", "status", "detail", "instance", "request_id"}
    assert _last_entry(settings) == before  # nothing half-written
