"""Offline verification of a database's audit chain (no server needed)."""

from __future__ import annotations

from datetime import UTC, datetime

from audit.verify import Verification, verify_chain
from broker.store.db import make_engine
from broker.store.uow import SqlUnitOfWork


def verify_database(url: str) -> Verification:
    """Recompute every entry of the audit log stored at ``url``."""
    engine = make_engine(url)
    try:
        with SqlUnitOfWork(engine, lambda: datetime.now(UTC), read_only=True) as uow:
            size, head_hash = uow.audit.head()
            return verify_chain(uow.audit.stored(), head_size=size, head_hash=head_hash)
    finally:
        engine.dispose()
