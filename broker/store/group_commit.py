"""Group commit for SQLite: many writers' commits made durable by one fsync of the WAL.

With ``synchronous=FULL`` every SQLite commit fsyncs the write-ahead log while it still holds
the write lock, so commits are serialised on the disk's flush latency. Here connections run
``synchronous=NORMAL`` in WAL mode instead: a commit appends its frames (the commit frame
last) to the ``-wal`` file with ``write()`` and returns without syncing. The unit of work then
releases its writer lock at once, so the next writer's transaction proceeds, and waits in this
database's :class:`WalSyncer` until an fsync of the WAL that *began after its commit returned*
has completed. One waiting thread (the leader) runs that fsync; every commit that returned
before the leader started is covered by it, however many there were. Only then does
``commit()`` return, so a request is still answered only after its entry is on disk.

Why this is as durable as ``synchronous=FULL`` for every commit that returned:

- A WAL commit is a sequence of frames appended to one file, ending in a commit frame whose
  checksum chains over every earlier frame. After a crash SQLite replays frames from the WAL
  header up to the last valid commit frame. ``fsync`` of the file makes every byte written to
  it before the call durable, whichever process wrote it; a commit's frames were written
  before its ``commit()`` returned, hence before the leader's fsync began, so all of them and
  all frames before them (every earlier commit) are on disk when the fsync completes.
- ``synchronous=NORMAL`` still syncs whenever SQLite itself needs order on disk: the WAL
  before a checkpoint copies pages into the database, the database after it, and a new WAL
  header when the log restarts. So frames overwritten by a restart belong to commits already
  checkpointed into the synced database file.
- SQLite deletes the ``-wal`` file only when the last connection closes, and only after a
  checkpoint that copied everything into the database and synced it. A WAL that is missing
  when the leader opens it therefore holds nothing unsynced. The file is opened by the name
  SQLite itself reports (``PRAGMA database_list`` plus ``-wal``) each time, so a WAL that was
  deleted and created again is never missed; SQLite keeps no POSIX locks on the ``-wal`` file
  (only on the database and ``-shm``), so opening and closing it here releases none of them.

A failed fsync is final: Linux may drop the dirty pages it could not write and report the
error only once, so a later fsync that succeeds proves nothing about them (PostgreSQL panics
for the same reason). The syncer then refuses every later commit with ``Unavailable``; the
broker must be restarted, and SQLite recovers from what reached the disk.

Readers can see a commit before it is durable. In-process read-only units therefore wait,
before their answer leaves, until every commit reserved so far is covered (:meth:`settle`);
a reader in another process is not ordered this way (see README).
"""

from __future__ import annotations

import os
import threading

from broker.domain.errors import Unavailable

#: Key of a pooled connection's ``info`` under which its database's syncer is kept.
SYNCER = "broker_wal_syncer"

_SYNCERS: dict[str, WalSyncer] = {}
_SYNCERS_GUARD = threading.Lock()


def syncer_for(database: str) -> WalSyncer:
    """The one syncer of the SQLite database file ``database`` (as SQLite names it)."""
    with _SYNCERS_GUARD:
        found = _SYNCERS.get(database)
        if found is None:
            found = _SYNCERS[database] = WalSyncer(database + "-wal")
        return found


class WalSyncer:
    """Coalesces the fsyncs of one database's WAL: a leader syncs for every waiting commit.

    Commits are numbered (tickets) in the order they are reserved. ``covered`` is the highest
    ticket such that every commit up to it returned before an fsync that has completed.
    """

    def __init__(self, wal_path: str) -> None:
        self.wal_path = wal_path
        self._cond = threading.Condition(threading.Lock())
        self._reserved = 0
        self._in_flight: set[int] = set()
        self._covered = 0
        self._leading = False
        self._failure: OSError | None = None
        self.fsyncs = 0  # completed fsyncs, for tests and benchmarks

    def committing(self) -> int:
        """A ticket for a commit about to be issued; pair it with :meth:`committed`."""
        with self._cond:
            self._reserved += 1
            self._in_flight.add(self._reserved)
            return self._reserved

    def committed(self, ticket: int) -> None:
        """The commit of ``ticket`` has returned from SQLite (or failed): its frames are written."""
        with self._cond:
            self._in_flight.discard(ticket)

    def flush(self) -> None:
        """Make everything written to the WAL by now durable, whoever committed it."""
        ticket = self.committing()
        self.committed(ticket)
        self.wait(ticket)

    def settle(self) -> None:
        """Wait until every commit reserved so far in this process is durable."""
        with self._cond:
            ticket = self._reserved
        self.wait(ticket)

    def wait(self, ticket: int) -> None:
        """Return once an fsync begun after commit ``ticket`` returned has completed.

        Raises Unavailable (fail closed) if any fsync of this WAL has failed.
        """
        with self._cond:
            while self._covered < ticket:
                if self._failure is not None:
                    raise Unavailable("The store could not make its log durable; nothing was "
                                      "released.") from self._failure
                if self._leading:
                    self._cond.wait()
                    continue
                self._lead()

    def _lead(self) -> None:
        """Fsync for every commit written by now (called and returning with the lock held)."""
        self._leading = True
        upto = min(self._in_flight) - 1 if self._in_flight else self._reserved
        synced = False
        error: OSError | None = None
        self._cond.release()
        try:
            self._fsync()
            synced = True
        except OSError as exc:
            error = exc
        finally:  # even on KeyboardInterrupt: hand the lead on, wake the waiters
            self._cond.acquire()
            self._leading = False
            if synced:
                self.fsyncs += 1
                self._covered = max(self._covered, upto)
            elif error is not None:
                self._failure = error
            self._cond.notify_all()

    def _fsync(self) -> None:
        try:
            fd = os.open(self.wal_path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return  # checkpointed into the synced database file and removed (see above)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
