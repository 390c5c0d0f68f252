"""Offline access to a database's audit log: verification and export (no server needed)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

from audit.verify import Verification, verify_chain
from broker.store.db import make_engine
from broker.store.uow import SqlUnitOfWork


def _clock() -> datetime:
    return datetime.now(UTC)


def verify_database(url: str) -> Verification:
    """Recompute every entry of the audit log stored at ``url``."""
    engine = make_engine(url)
    try:
        with SqlUnitOfWork(engine, _clock, read_only=True) as uow:
            size, head_hash = uow.audit.head()
            return verify_chain(uow.audit.stored(), head_size=size, head_hash=head_hash)
    finally:
        engine.dispose()


def export_database(url: str) -> Iterator[bytes]:
    """The canonical bytes of every entry, in seq order, read from one snapshot."""
    engine = make_engine(url)
    try:
        with SqlUnitOfWork(engine, _clock, read_only=True) as uow:
            for stored in uow.audit.stored():
                yield stored.body
    finally:
        engine.dispose()
