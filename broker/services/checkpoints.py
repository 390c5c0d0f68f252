"""Signing checkpoints of the audit tree and publishing them where the database cannot reach.

A checkpoint is signed every ``checkpoint_every_entries`` entries or ``checkpoint_every_seconds``
seconds (whichever comes first, while there are new entries), on demand when a proof needs one,
and once more at shutdown. Each is stored in the database and handed to every configured sink:
a directory the database does not own (one file per checkpoint), stdout, or syslog. Several
broker processes may run checkpointers on one database: a checkpoint of a size already stored is
not stored again, and the same key signs the same tree identically (Ed25519 is deterministic).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import sys
import syslog
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Protocol, TextIO

from audit import merkle
from audit.checkpoint import Checkpoint, CheckpointError, NoteSigner
from broker.domain.errors import Unavailable
from broker.domain.ports import Lease, StoredCheckpoint, UnitOfWork, UnitOfWorkFactory

log = logging.getLogger(__name__)


class CheckpointSink(Protocol):
    """Somewhere a signed checkpoint is copied to, outside the database."""

    def publish(self, size: int, note: str) -> None: ...


class DirectorySink:
    """One file per checkpoint (``<size>.checkpoint``) plus ``latest``, written atomically."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def publish(self, size: int, note: str) -> None:
        """Write the note durably, never over another note of the same size, then move
        ``latest`` to it if it is the largest so far.

        A different note for a size already published is evidence of two histories: it is
        kept beside the first (``<size>.conflict-<digest>.checkpoint``), never in its place,
        so that verification reports the fork.

        Several processes (workers, pods on one volume) publish here: each does so under an
        exclusive ``flock`` of ``.lock``, or one signing a smaller tree could read ``latest``
        before another moved it further, then move it back.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        with self._exclusive():
            self._publish(size, note)

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        fd = os.open(self.directory / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _publish(self, size: int, note: str) -> None:
        path = self.directory / f"{size:020d}.checkpoint"
        try:
            existing = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            existing = None
        if existing is not None and existing != note:
            digest = hashlib.sha256(note.encode()).hexdigest()[:16]
            self._write(self.directory / f"{size:020d}.conflict-{digest}.checkpoint", note)
            log.error("checkpoint %d differs from the one already published: kept both", size)
            return
        if existing is None:
            self._write(path, note)
        latest = self.directory / "latest"
        try:
            current = int(latest.read_text(encoding="utf-8").split("\n")[1])
        except (OSError, ValueError, IndexError):
            current = -1
        if size > current:
            self._write(latest, note)

    def latest_note(self) -> str | None:
        """The largest checkpoint published here, if any."""
        try:
            return (self.directory / "latest").read_text(encoding="utf-8")
        except OSError:
            return None

    def _write(self, path: Path, note: str) -> None:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(note)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def notes_for(self, sizes: Sequence[int]) -> list[tuple[str, str]]:
        """The checkpoint files of the given tree sizes (a conflicting copy too) as (note,
        source): what an auditor compares a page of the database's checkpoints with, without
        reading every file of a long-lived directory."""
        if not self.directory.is_dir():
            return []
        found: list[tuple[str, str]] = []
        for size in sizes:
            for path in sorted(self.directory.glob(f"{size:020d}.*checkpoint")):
                if path.is_file() and re.fullmatch(
                        rf"{size:020d}\.(conflict-[0-9a-f]+\.)?checkpoint", path.name):
                    found.append((path.read_text(encoding="utf-8"), str(path)))
        return found

    def notes(self) -> list[tuple[str, str]]:
        """Every checkpoint file as (note, source), for verification."""
        if not self.directory.is_dir():
            return []
        files = [*sorted(self.directory.glob("*.checkpoint")), self.directory / "latest"]
        return [(p.read_text(encoding="utf-8"), str(p)) for p in files if p.is_file()]


class StreamSink:
    """One JSON line per checkpoint on stdout (for a log shipper), or on ``stream``."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream

    def publish(self, size: int, note: str) -> None:
        """Print ``{"audit_checkpoint": note, "size": size}``."""
        stream = self.stream or sys.stdout
        stream.write(json.dumps({"audit_checkpoint": note, "size": size}) + "\n")
        stream.flush()


class SyslogSink:
    """One syslog message (facility AUTH, so it lands with the security logs) per checkpoint."""

    def publish(self, size: int, note: str) -> None:
        """Send the note as one JSON line."""
        syslog.openlog("broker-audit", 0, syslog.LOG_AUTH)
        syslog.syslog(syslog.LOG_NOTICE, json.dumps({"audit_checkpoint": note, "size": size}))


class _Always:
    def held(self) -> bool:
        return True

    def release(self) -> None:
        pass


class Checkpointer:
    """Signs and publishes checkpoints; ``start`` runs the periodic thread.

    With several broker processes on one database, only the holder of ``lease`` signs
    periodically (any process still signs on demand, when a proof or an export needs a
    checkpoint: signing the same tree twice gives the same note, stored once).
    """

    def __init__(self, uow: UnitOfWorkFactory, signer: NoteSigner, sinks: list[CheckpointSink],
                 *, every_entries: int, every_seconds: float, lease: Lease | None = None
                 ) -> None:
        self.uow = uow
        self.lease: Lease = lease or _Always()
        #: Whether this process is the periodic signer (as of the last round).
        self.leader = False
        self.signer = signer
        self.sinks = sinks
        self.every_entries = every_entries
        self.every_seconds = every_seconds
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._last_signed = time.monotonic()
        self.failures = 0
        self._lag: tuple[int, float | None] | None = None

    def checkpoint(self) -> StoredCheckpoint | None:
        """Sign the tree as it is now (unless that size is signed already) and publish it."""
        with self._lock, self.uow() as uow:
            uow.audit.lock()
            tree = uow.audit.frontier()
            if tree.size == 0:
                return None
            stored = uow.audit.checkpoint(tree.size)
            if stored is not None:
                return stored
            self._check_extends(uow, tree.size)
            note = self.signer.checkpoint(Checkpoint(self.signer.name, tree.size, tree.root()))
            uow.audit.add_checkpoint(tree.size, tree.root(), note)
            stored = uow.audit.checkpoint(tree.size)
            uow.commit()
        self._publish(tree.size, note)
        return stored

    def _check_extends(self, uow: UnitOfWork, size: int) -> None:
        """Refuse to sign a tree that does not extend every checkpoint already signed.

        The database's latest checkpoint and the copies published outside are compared with
        the tree the stored nodes give at their size: after a truncation or a rewrite the
        broker must not sign (and so bless, or overwrite the evidence of) the altered log.
        """
        published: list[tuple[int, bytes, str]] = []
        latest = uow.audit.latest_checkpoint()
        if latest is not None:
            published.append((latest.size, bytes.fromhex(latest.root), "the database"))
        for sink in self.sinks:
            note = sink.latest_note() if isinstance(sink, DirectorySink) else None
            if note is None:
                continue
            try:
                checkpoint = self.signer.verifier.checkpoint(note)
            except CheckpointError as exc:
                log.error("the published latest checkpoint in %s does not verify",
                          type(sink).__name__)
                raise Unavailable("The published checkpoint does not verify; not signing.") from exc
            published.append((checkpoint.size, checkpoint.root, "outside"))
        for old, root, where in published:
            cover = merkle.perfect_cover(0, old) if 0 < old <= size else None
            if cover is None or merkle.range_hash(0, old, uow.audit.nodes(cover)) != root:
                log.error("refusing to sign: the log is not an extension of the checkpoint of "
                          "size %d kept in %s; run broker audit verify", old, where)
                self.failures += 1
                raise Unavailable("The audit log does not extend its signed checkpoints; "
                                  "nothing is signed. Run broker audit verify.")

    def covering(self, seq: int) -> StoredCheckpoint:
        """The latest checkpoint, signing a new one first if none yet covers entry ``seq``."""
        with self.uow(read_only=True) as uow:
            latest = uow.audit.latest_checkpoint()
        if latest is None or latest.size < seq:
            latest = self.checkpoint()
        if latest is None or latest.size < seq:
            raise Unavailable("No checkpoint covers this entry yet.")
        return latest

    def _publish(self, size: int, note: str) -> None:
        for sink in self.sinks:
            try:
                sink.publish(size, note)
            except OSError as exc:  # the database copy stands; say the outside one is missing
                self.failures += 1
                log.error("checkpoint %d not copied to %s: %s", size, type(sink).__name__,
                          type(exc).__name__)

    def due(self) -> bool:
        """Whether there are entries no checkpoint covers, and enough of them or old enough."""
        with self.uow(read_only=True) as uow:
            size = uow.audit.head().size
            latest = uow.audit.latest_checkpoint()
        covered = latest.size if latest else 0
        self._lag = (max(0, size - covered),
                     datetime.fromisoformat(latest.ts).timestamp() if latest else None)
        if size <= covered:
            return False
        if size - covered >= self.every_entries:
            return True
        return time.monotonic() - self._last_signed >= self.every_seconds

    def lag(self) -> tuple[int, float | None] | None:
        """As of the thread's last look (every half second, in every process, the periodic
        signer or not): the entries no signed checkpoint covers, and when the latest was
        signed (epoch seconds; None before the first). None before the first look."""
        return self._lag

    def start(self) -> None:
        """Run the periodic checkpointer on a daemon thread."""
        self._last_signed = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="audit-checkpointer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        poll = min(0.5, self.every_seconds)
        while not self._stop.wait(poll):
            try:
                leader = self.lease.held()
                if leader and not self.leader:  # took over: count the interval from now
                    self._last_signed = time.monotonic()
                self.leader = leader
                due = self.due()  # every process looks: the lag it reports (the metrics)
                if leader and due:
                    self.checkpoint()
                    self._last_signed = time.monotonic()
            except Exception as exc:  # keep running; the next round tries again
                self.failures += 1
                log.error("checkpointer round failed: %s", type(exc).__name__)

    def stop(self) -> None:
        """Stop the thread and sign a last checkpoint of whatever is not yet covered."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        try:
            self.checkpoint()
        except Exception as exc:
            log.error("final checkpoint failed: %s", type(exc).__name__)
        finally:
            self.leader = False
            self.lease.release()


def make_sinks(kinds: Sequence[str], directory: Path) -> list[CheckpointSink]:
    """The sinks named in settings."""
    sinks: list[CheckpointSink] = []
    for kind in kinds:
        if kind == "dir":
            sinks.append(DirectorySink(directory))
        elif kind == "stdout":
            sinks.append(StreamSink())
        elif kind == "syslog":
            sinks.append(SyslogSink())
    return sinks
