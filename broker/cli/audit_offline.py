"""Offline access to a database's audit log (no server needed): verify, export, prove."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

from audit.checkpoint import NoteVerifier
from audit.proofs import ConsistencyProof, InclusionProof, prove_consistency, prove_inclusion
from audit.verify import Verification, export_checkpoint_line, export_header
from broker.domain.ports import utc_now
from broker.services.audit import verify_store
from broker.store.db import make_engine
from broker.store.uow import SqlUnitOfWork


@contextmanager
def reading(url: str) -> Iterator[SqlUnitOfWork]:
    """A read-only unit of work (one snapshot) on the database at ``url``."""
    engine = make_engine(url)
    try:
        with SqlUnitOfWork(engine, utc_now, read_only=True) as uow:
            yield uow
    finally:
        engine.dispose()


def verify_database(url: str, verifier: NoteVerifier, *, outside: Sequence[tuple[str, str]] = (),
                    trusted: Sequence[tuple[str, str]] = (), deep: bool = False) -> Verification:
    """Verify the audit log stored at ``url`` against its checkpoints and the given ones."""
    with reading(url) as uow:
        return verify_store(uow, verifier, list(outside), trusted=trusted, deep=deep)


class UnsignedTail(LookupError):
    """The log has entries no signed checkpoint covers, and the export may not leave them
    unproven."""

    def __init__(self, signed: int, size: int) -> None:
        super().__init__(f"entries {signed + 1}..{size} ({size - signed}) are after the last "
                         f"signed checkpoint ({signed} entries)")
        self.signed = signed
        self.size = size


@dataclass
class Exported:
    """What an export holds: ``size`` entries, the last ``size - signed`` of them unproven."""

    size: int = 0
    signed: int = 0


def export_database(url: str, origin: str, vkey: str, *,
                    tail: Literal["refuse", "omit", "include"] = "refuse",
                    into: Exported | None = None) -> Iterator[bytes]:
    """An export, read from one snapshot: a header line, every signed checkpoint, then every
    entry's canonical bytes, one per line.

    Entries after the snapshot's latest signed checkpoint are the tail: ``omit`` leaves them
    out (the export is the prefix that checkpoint signs: sign one first and entries appended
    meanwhile are all that is left out), ``include`` writes them unproven, ``refuse`` raises
    :class:`UnsignedTail` before anything is yielded. ``into`` is told what was exported.
    """
    with reading(url) as uow:
        size = uow.audit.head().size
        latest = uow.audit.latest_checkpoint()
        signed = min(latest.size if latest else 0, size)
        if size > signed and tail == "refuse":
            raise UnsignedTail(signed, size)
        through = size if tail == "include" else signed
        if into is not None:
            into.size, into.signed = through, signed
        yield export_header(origin, vkey)
        for stored in uow.audit.checkpoints():
            if stored.size <= through:
                yield export_checkpoint_line(stored.note)
        for chunk in uow.audit.chunks(through=through):
            yield from chunk.bodies


def database_inclusion(url: str, seq: int, size: int | None) -> InclusionProof:
    """The inclusion proof of entry ``seq`` against the checkpoint of ``size`` (or the latest)."""
    with reading(url) as uow:
        found = uow.audit.entry(seq)
        if found is None:
            raise LookupError(f"there is no audit entry {seq}")
        stored = uow.audit.checkpoint(size) if size else uow.audit.latest_checkpoint()
        if stored is None or stored.size < seq:
            raise LookupError(f"no signed checkpoint covers entry {seq} "
                              "(run broker audit checkpoint)")
        return prove_inclusion(seq=seq, leaf=found[1], entry=found[0], size=stored.size,
                               root=bytes.fromhex(stored.root), note=stored.note,
                               fetch=uow.audit.nodes)


def database_consistency(url: str, old: int, new: int | None) -> ConsistencyProof:
    """The consistency proof from ``old`` entries to the checkpoint of ``new`` (or latest)."""
    with reading(url) as uow:
        stored = uow.audit.checkpoint(new) if new else uow.audit.latest_checkpoint()
        if stored is None:
            raise LookupError("no signed checkpoint of that size")
        return prove_consistency(old=old, size=stored.size, root=bytes.fromhex(stored.root),
                                 note=stored.note, fetch=uow.audit.nodes)
