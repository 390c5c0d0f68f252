"""Leases: one process of several does a job (the periodic checkpoint signer).

On PostgreSQL a lease is a session advisory lock held on a connection of its own: the server
releases it the moment that connection ends (the worker exited, crashed or lost the network),
and another worker's next try takes it over. SQLite serves one process, which always holds it.
"""

from __future__ import annotations

import contextlib
import logging
import os

from sqlalchemy import Connection, Engine, NullPool, create_engine, text
from sqlalchemy.exc import DBAPIError

from broker.store.db import server_connect_args

log = logging.getLogger(__name__)

#: The advisory lock key of the checkpoint signer's lease.
SIGNER = 6963


class LocalLease:
    """The only process: it always holds the lease."""

    def held(self) -> bool:
        """Always."""
        return True

    def release(self) -> None:
        """Nothing to release."""


class AdvisoryLease:
    """A PostgreSQL session advisory lock on a dedicated connection (not from the pool).

    The connection stays open between tries whether or not the lock was had: a worker that
    does not hold the lease asks again on it every round (twice a second) instead of opening a
    new server session each time.
    """

    def __init__(self, engine: Engine, key: int) -> None:
        url = engine.url.render_as_string(hide_password=False)
        self._engine = create_engine(url, poolclass=NullPool,
                                     connect_args=server_connect_args(url))
        self._key = key
        self._conn: Connection | None = None
        self._holding = False

    def held(self) -> bool:
        """Whether this process holds the lease now, taking it if it is free. A held lease is
        checked alive (its connection still answers) every time."""
        if self._conn is not None:
            try:
                if self._holding:
                    self._conn.execute(text("SELECT 1"))
                    return True
                return self._try(self._conn)
            except DBAPIError:
                if self._holding:
                    log.warning("lost the lease %d (its connection ended)", self._key)
                self._drop()
        try:
            self._conn = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        except DBAPIError:
            return False
        try:
            return self._try(self._conn)
        except DBAPIError:
            self._drop()
            return False

    def _try(self, conn: Connection) -> bool:
        got = bool(conn.execute(text("SELECT pg_try_advisory_lock(:key)"),
                                {"key": self._key}).scalar())
        if got:
            self._holding = True
            log.info("process %d took the lease %d", os.getpid(), self._key)
        return got

    def release(self) -> None:
        """Give the lease up (closing its connection releases the lock)."""
        self._drop()
        self._engine.dispose()

    def _drop(self) -> None:
        conn, self._conn, self._holding = self._conn, None, False
        if conn is not None:
            with contextlib.suppress(DBAPIError):
                conn.close()


def lease_for(engine: Engine, key: int) -> LocalLease | AdvisoryLease:
    """The lease ``key`` on ``engine``'s database."""
    if engine.dialect.name == "postgresql":
        return AdvisoryLease(engine, key)
    return LocalLease()
