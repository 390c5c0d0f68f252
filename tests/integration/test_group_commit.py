"""Group commit on SQLite files: one fsync of the WAL covers many commits, none returns early.

Real database files in ``tmp_path``; ``os.fsync`` is wrapped (the real one still runs) only to
see when the syncer flushes the log and how far the log had grown by then.
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import text

from audit.entry import AuditEvent
from audit.verify import verify_log
from broker.domain.errors import Unavailable
from broker.store import group_commit
from broker.store.db import create_schema, make_engine
from broker.store.uow import SqlUnitOfWork


def _clock() -> datetime:
    return datetime.now(UTC)


def _event(writer: int, i: int) -> AuditEvent:
    return AuditEvent(actor={"sub": f"w{writer}"}, action="audit.read",
                      request_id=f"{writer}-{i}", allowed=True)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "audit.db"
    create_schema(make_engine(f"sqlite:///{path}"))
    return path


def _fsyncs(monkeypatch: pytest.MonkeyPatch, fail: Callable[[], bool] = lambda: False
            ) -> list[tuple[int, int]]:
    """Wrap os.fsync: record (inode, size) of each file as its fsync starts; the real fsync
    runs unless ``fail()`` says to raise EIO instead."""
    calls: list[tuple[int, int]] = []
    real = os.fsync

    def counting(fd: int) -> None:
        st = os.fstat(fd)
        if fail():
            raise OSError(errno.EIO, "injected I/O error")
        calls.append((st.st_ino, st.st_size))
        real(fd)

    monkeypatch.setattr(os, "fsync", counting)
    return calls


def _wal(db: Path) -> os.stat_result:
    return os.stat(f"{db}-wal")


def test_file_databases_commit_with_normal_sync_and_a_syncer(db: Path) -> None:
    engine = make_engine(f"sqlite:///{db}")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
        assert isinstance(conn.info[group_commit.SYNCER], group_commit.WalSyncer)
    memory = make_engine("sqlite://")
    with memory.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
        assert group_commit.SYNCER not in conn.info


def test_commit_returns_only_after_an_fsync_of_the_wal_that_covers_it(
        db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = make_engine(f"sqlite:///{db}")
    calls = _fsyncs(monkeypatch)
    for i in range(5):
        before = len(calls)
        with SqlUnitOfWork(engine, _clock) as uow:
            uow.audit.append(_event(0, i))
            uow.commit()
            wal = _wal(db)
            # an fsync of this very WAL file ran during commit(), when it already held
            # every byte this commit wrote
            assert any(ino == wal.st_ino and size >= wal.st_size
                       for ino, size in calls[before:])


def test_concurrent_writers_share_fsyncs_and_leave_a_gapless_valid_log(
        db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = make_engine(f"sqlite:///{db}")
    calls = _fsyncs(monkeypatch)
    writers, each = 8, 25
    errors: list[BaseException] = []

    def write(w: int) -> None:
        try:
            for i in range(each):
                with SqlUnitOfWork(engine, _clock) as uow:
                    uow.audit.append(_event(w, i))
                    uow.commit()
        except BaseException as exc:  # reported by the test thread below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with SqlUnitOfWork(engine, _clock, read_only=True) as uow:
        result = verify_log(uow.audit.chunks(), head=uow.audit.head())
    assert (result.valid, result.size) == (True, writers * each)
    assert 0 < len(calls) <= writers * each


def test_a_failed_fsync_fails_the_commit_and_every_later_one(
        db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = make_engine(f"sqlite:///{db}")
    _fsyncs(monkeypatch, fail=lambda: True)
    answered: list[int] = []

    def serve(i: int) -> None:
        with SqlUnitOfWork(engine, _clock) as uow:
            uow.audit.append(_event(0, i))
            uow.commit()
            answered.append(i)  # the answer, given only after the commit returned

    with pytest.raises(Unavailable):
        serve(0)
    assert answered == []
    monkeypatch.undo()  # the disk "recovers", but what it dropped is unknown: stay closed
    with pytest.raises(Unavailable):
        serve(1)
    assert answered == []

    def read() -> None:
        with SqlUnitOfWork(engine, _clock, read_only=True) as uow:
            uow.audit.head()

    with pytest.raises(Unavailable):
        read()


def test_the_writer_lock_is_handed_on_at_commit_and_taken_again_by_a_later_transaction(
        db: Path) -> None:
    engine = make_engine(f"sqlite:///{db}")
    seen: list[bool] = []

    def try_writer() -> None:
        with SqlUnitOfWork(engine, _clock) as other:
            other.audit.append(_event(1, 0))
            other.commit()
        seen.append(True)

    with SqlUnitOfWork(engine, _clock) as uow:
        uow.audit.append(_event(0, 0))
        uow.commit()
        lock = uow._writer
        assert lock is not None
        assert not lock.locked()  # released at commit
        uow.session.execute(text("SELECT 1"))  # a new transaction takes it back
        assert lock.locked()
        other = threading.Thread(target=try_writer)
        other.start()
        other.join(timeout=0.3)
        assert seen == []  # it waits for this unit
    other.join(timeout=10)
    assert seen == [True]
    assert not lock.locked()


def test_a_unit_that_fails_after_commit_releases_the_writer_lock_once(db: Path) -> None:
    engine = make_engine(f"sqlite:///{db}")
    uow = SqlUnitOfWork(engine, _clock)

    def fail_after_commit() -> None:
        with uow:
            uow.audit.append(_event(0, 0))
            uow.commit()
            raise RuntimeError("after the commit")

    with pytest.raises(RuntimeError, match="after the commit"):
        fail_after_commit()
    lock = uow._writer
    assert lock is not None
    assert not lock.locked()
    with SqlUnitOfWork(engine, _clock) as again:  # not left held, not released twice
        assert again.audit.append(_event(0, 1)).seq == 2
        again.commit()
    assert not lock.locked()
