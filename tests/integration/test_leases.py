"""The checkpoint signer's lease on PostgreSQL: one holder among processes, taken over when the
holder goes, and asked for on one server session per process (not a new one every round)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, text

from broker.store.db import make_engine
from broker.store.leases import AdvisoryLease, lease_for

KEY = 6999


@pytest.fixture
def engine(postgres_url: str) -> Iterator[Engine]:
    engine = make_engine(postgres_url)
    yield engine
    engine.dispose()


def _sessions(engine: Engine) -> set[int]:
    """The server sessions this process opened (connections name their process)."""
    with engine.connect() as conn:
        rows = conn.execute(text(
            "SELECT pid FROM pg_stat_activity WHERE application_name = :name "
            "AND pid <> pg_backend_pid()"), {"name": f"broker-{os.getpid()}"})
        return {int(r[0]) for r in rows}


def test_one_holder_and_the_other_keeps_one_session_while_it_waits(engine: Engine) -> None:
    first, second = lease_for(engine, KEY), lease_for(engine, KEY)
    assert isinstance(first, AdvisoryLease)
    try:
        assert first.held() is True
        assert second.held() is False
        sessions = _sessions(engine)
        assert len(sessions) == 2  # the waiting one kept its session
        for _ in range(5):
            assert first.held() is True
            assert second.held() is False
        assert _sessions(engine) == sessions
    finally:
        first.release()
        second.release()
    assert _sessions(engine) == set()


def test_the_lease_passes_on_when_its_holder_releases_it_or_its_session_ends(
        engine: Engine) -> None:
    first, second = lease_for(engine, KEY), lease_for(engine, KEY)
    try:
        assert first.held() is True
        assert second.held() is False
        first.release()
        assert second.held() is True
        assert first.held() is False
        # the holder's session is ended from outside (a network cut, an operator)
        (holder,) = _sessions(engine) - {_pid_of_waiting(engine)}
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": holder})
        assert first.held() is True  # free again: the waiting process takes it
        assert second.held() is False  # the old holder sees it lost it, and waits
    finally:
        first.release()
        second.release()


def _pid_of_waiting(engine: Engine) -> int:
    """The session of the lease that does not hold the lock (it has no advisory lock)."""
    with engine.connect() as conn:
        rows = conn.execute(text(
            "SELECT a.pid FROM pg_stat_activity a WHERE a.application_name = :name "
            "AND a.pid <> pg_backend_pid() AND NOT EXISTS (SELECT 1 FROM pg_locks l "
            "WHERE l.pid = a.pid AND l.locktype = 'advisory' AND l.objid = :key)"),
            {"name": f"broker-{os.getpid()}", "key": KEY})
        (pid,) = [int(r[0]) for r in rows]
    return pid
