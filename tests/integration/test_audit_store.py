"""The SQL audit log under concurrent writers: gapless, no forks, a valid chain."""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest

from audit.entry import AuditEvent
from audit.verify import verify_log
from broker.store.db import create_schema, make_engine
from broker.store.uow import SqlUnitOfWork


def _clock() -> datetime:
    return datetime.now(UTC)


def _append(url: str, writer: int, count: int) -> None:
    engine = make_engine(url)
    for i in range(count):
        with SqlUnitOfWork(engine, _clock) as uow:
            uow.audit.append(AuditEvent(actor={"sub": f"w{writer}"}, action="audit.read",
                                        request_id=f"{writer}-{i}", allowed=True))
            uow.commit()
    engine.dispose()


def _verify(url: str) -> tuple[bool, int]:
    engine = make_engine(url)
    with SqlUnitOfWork(engine, _clock) as uow:
        result = verify_log(uow.audit.chunks(), head=uow.audit.head())
    engine.dispose()
    return result.valid, result.size


@pytest.fixture
def url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    create_schema(make_engine(url))
    return url


def test_threads_append_gapless_without_forks(url: str) -> None:
    threads = [threading.Thread(target=_append, args=(url, w, 40)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert _verify(url) == (True, 320)


def test_processes_append_gapless_without_forks(url: str, tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_append, args=(url, w, 40)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert all(p.exitcode == 0 for p in procs)
    assert _verify(url) == (True, 160)
    with sqlite3.connect(tmp_path / "audit.db") as conn:
        seqs = [r[0] for r in conn.execute("SELECT seq FROM audit_entries ORDER BY seq")]
    assert seqs == list(range(1, 161))


def test_uncommitted_append_leaves_nothing(url: str) -> None:
    engine = make_engine(url)
    with SqlUnitOfWork(engine, _clock) as uow:
        uow.audit.append(AuditEvent(actor={}, action="audit.read", request_id="r", allowed=True))
    assert _verify(url) == (True, 0)


def test_a_read_only_unit_reads_a_snapshot_and_blocks_no_append(url: str) -> None:
    engine = make_engine(url)
    _append(url, 0, 3)
    with SqlUnitOfWork(engine, _clock, read_only=True) as reader:
        assert reader.audit.head().size == 3
        writer = threading.Thread(target=_append, args=(url, 1, 2))
        writer.start()
        writer.join(timeout=10)
        assert not writer.is_alive()  # the append committed while the snapshot was open
        assert reader.audit.head().size == 3  # and the snapshot did not move
        assert sum(len(c.bodies) for c in reader.audit.chunks()) == 3
    assert _verify(url) == (True, 5)


def test_only_committed_appends_are_reported_to_the_observer(url: str) -> None:
    seen: list[str] = []
    engine = make_engine(url)

    def event(n: int) -> AuditEvent:
        return AuditEvent(actor={"sub": "w"}, action="audit.read", request_id=f"r{n}",
                          allowed=True)

    with SqlUnitOfWork(engine, _clock, observer=lambda e, _s: seen.append(e.request_id)) as uow:
        uow.audit.append(event(1))
        uow.rollback()  # never durable: not counted
        uow.audit.append(event(2))
        assert seen == []  # appended, not yet committed
        uow.commit()
    with SqlUnitOfWork(engine, _clock, observer=lambda e, _s: seen.append(e.request_id)) as uow:
        uow.audit.append(event(3))  # the unit ends without a commit
    engine.dispose()
    assert seen == ["r2"]
