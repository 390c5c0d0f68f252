"""Dependencies fail closed: no policy engine or no audit log means 503 and nothing released."""

from __future__ import annotations

import sqlite3
from typing import Any

from broker.settings import Settings
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
