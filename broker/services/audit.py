"""Use cases: reading, proving and verifying the audit log."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import PurePath
from typing import Any, Generic, Literal, TypeVar

from audit.checkpoint import CheckpointError, NoteVerifier
from audit.proofs import (
    ConsistencyProof,
    InclusionProof,
    ProofError,
    prove_consistency,
    prove_inclusion,
)
from audit.verify import Verification, verify_with_notes
from broker.domain.errors import InvalidInput, NotFound, Unavailable
from broker.domain.ports import AuditQuery, StoredCheckpoint, UnitOfWork, UnitOfWorkFactory
from broker.domain.principals import RequestContext, Role
from broker.services.checkpoints import Checkpointer
from broker.services.guard import Guard

log = logging.getLogger(__name__)

AUDIT_LOG = {"kind": "audit-log"}

Proof = TypeVar("Proof", InclusionProof, ConsistencyProof)
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """Part of a listing and the cursor to ask for the rest with (None at the end): a seq for
    entries and accesses, a size for checkpoints."""

    items: tuple[T, ...]
    next_cursor: int | None

    @classmethod
    def cut(cls, found: Sequence[T], limit: int, cursor: Callable[[T], int]) -> Page[T]:
        """The first ``limit`` of ``found``, which was asked for one more so as to tell whether
        the listing goes on; the cursor is that of the last item kept."""
        items = tuple(found[:limit])
        return cls(items, cursor(items[-1]) if len(found) > limit and items else None)


@dataclass(frozen=True, slots=True)
class AuditItem:
    """One ledger entry and its leaf hash.

    The entry stays the JSON object that was stored and hashed, key for key, so that a reader
    can recompute ``leaf_hash`` from it (DESIGN.md section 6).
    """

    entry: dict[str, Any]
    leaf_hash: str

    @property
    def seq(self) -> int:
        """The entry's position in the log."""
        return int(self.entry["seq"])

    @classmethod
    def from_stored(cls, stored: Mapping[str, Any]) -> AuditItem:
        """An item as the store reads it out: ``{"entry": {...}, "leaf_hash": "..."}``."""
        return cls(entry=stored["entry"], leaf_hash=stored["leaf_hash"])


@dataclass(frozen=True, slots=True)
class Who:
    """Who acted: the token's subject and organisation."""

    sub: str | None
    org: str | None


@dataclass(frozen=True, slots=True)
class Access:
    """One entry about a dataset as a provider reads it: who, when, what for, under which
    contract, which fields, and what the broker decided."""

    seq: int
    ts: str
    action: str
    who: Who
    purpose: str | None
    dataset_id: str | None
    version: int | None
    contract_id: str | None
    fields: tuple[str, ...] | None
    allowed: bool
    reasons: tuple[str, ...]
    disclosure: dict[str, Any] | None
    leaf_hash: str
    #: A cross-source query's sources, each with its provider (``provider_org``).
    sources: tuple[dict[str, Any], ...] | None = None

    @classmethod
    def of(cls, item: AuditItem, owners: Mapping[str, str] | None = None) -> Access:
        """The access an entry records; ``owners`` names the provider of each dataset."""
        entry = item.entry
        actor = entry.get("actor") or {}
        resource = entry.get("resource") or {}
        decision = entry.get("decision") or {}
        fields = resource.get("fields")
        return cls(
            seq=entry["seq"],
            ts=entry["ts"],
            action=entry["action"],
            who=Who(sub=actor.get("sub"), org=actor.get("org")),
            purpose=entry.get("purpose"),
            dataset_id=resource.get("dataset_id"),
            version=resource.get("version"),
            contract_id=resource.get("contract_id"),
            fields=tuple(fields) if fields is not None else None,
            allowed=decision["allowed"],
            reasons=tuple(decision["reasons"]),
            disclosure=entry.get("disclosure"),
            leaf_hash=item.leaf_hash,
            sources=tuple({**source, "provider_org": (owners or {}).get(source.get("dataset_id"))}
                          for source in resource["sources"])
            if isinstance(resource.get("sources"), list) else None,
        )


def source_datasets(entry: Mapping[str, Any]) -> list[str]:
    """The datasets an entry is about: its dataset, or a cross-source query's sources'."""
    resource = entry.get("resource") or {}
    named = [resource.get("dataset_id")]
    if isinstance(resource.get("sources"), list):
        named += [source.get("dataset_id") for source in resource["sources"]
                  if isinstance(source, dict)]
    return [d for d in named if isinstance(d, str)]


@dataclass(frozen=True, slots=True)
class Denials:
    """Denied entries of a time window counted per day (``YYYY-MM-DD``, UTC): by reason and by
    the acting organisation. An entry with several reasons counts once under each.

    At most ``cap`` entries are counted, the oldest of the window first; ``truncated`` says
    the window held more."""

    since: str
    until: str | None
    cap: int
    entries: int
    truncated: bool
    by_reason: dict[tuple[str, str], int]
    by_org: dict[tuple[str, str], int]

    @property
    def days(self) -> list[str]:
        """The days with at least one denial, in order."""
        return sorted({day for day, _ in self.by_reason} | {day for day, _ in self.by_org})


def count_denials(items: Sequence[AuditItem], *, since: str, until: str | None, cap: int
                  ) -> Denials:
    """Count the denied entries among ``items`` (the first ``cap`` of them) per day, by reason
    and by organisation; ``items`` may hold one more than ``cap`` to tell a truncated
    window."""
    by_reason: dict[tuple[str, str], int] = {}
    by_org: dict[tuple[str, str], int] = {}
    kept = items[:cap]
    for item in kept:
        entry = item.entry
        decision = entry.get("decision") or {}
        if decision.get("allowed", True):
            continue
        day = str(entry["ts"])[:10]
        for reason in decision.get("reasons") or ("unspecified",):
            by_reason[(day, str(reason))] = by_reason.get((day, str(reason)), 0) + 1
        org = str((entry.get("actor") or {}).get("org") or "-")
        by_org[(day, org)] = by_org.get((day, org), 0) + 1
    return Denials(since=since, until=until, cap=cap, entries=len(kept),
                   truncated=len(items) > cap, by_reason=by_reason, by_org=by_org)


@dataclass(frozen=True, slots=True)
class OutsideCopy:
    """A checkpoint as published outside the database: the file it is in (its name only), the
    tree size and root (hex) it commits to, or None for each when its signature does not
    verify against the log's key."""

    name: str
    size: int | None
    root: str | None

    @property
    def verifies(self) -> bool:
        """Whether the copy is a checkpoint signed by the log's key."""
        return self.size is not None


@dataclass(frozen=True, slots=True)
class CheckpointKey:
    """The public key that signs checkpoints, in the forms verifiers read: the log's origin
    (key name), the key id (hex), the C2SP verifier key string and PEM."""

    origin: str
    key_id: str
    vkey: str
    public_key_pem: str
    algorithm: Literal["Ed25519"] = "Ed25519"


@dataclass(frozen=True, slots=True)
class AuditService:
    """The security staff's, providers' and consumers' view of the ledger.

    Reads run on a snapshot (a read-only unit of work), so a long verification never holds up
    the appends of other requests; the check and the record of the read are short writes.
    """

    uow: UnitOfWorkFactory
    guard: Guard
    checkpointer: Checkpointer
    verifier: NoteVerifier
    outside_notes: Callable[[], list[tuple[str, str]]]
    #: The outside copies of the checkpoints of the given sizes (as ``outside_notes`` gives
    #: them), read without reading every copy; none when checkpoints are not kept in files.
    outside_notes_for: Callable[[Sequence[int]], list[tuple[str, str]]] = (
        lambda _sizes: [])

    # -- entries -----------------------------------------------------------------------------

    def entries(self, ctx: RequestContext, query: AuditQuery) -> Page[AuditItem]:
        """Entries matching ``query``: all for auditors, own datasets' for providers."""
        with self.uow() as uow:
            self.guard.require(uow, ctx, "audit.read", AUDIT_LOG)
        with self.uow(read_only=True) as uow:
            if not ctx.principal.has_role(Role.AUDITOR):
                own = [d.id for d in uow.datasets.all() if d.owner_org == ctx.principal.org]
                wanted = query.dataset_ids
                query = replace(query, dataset_ids=[d for d in own if wanted is None
                                                    or d in wanted])
            found = uow.audit.entries(replace(query, limit=query.limit + 1))
        self._record(ctx, "audit.read")
        return Page.cut([AuditItem.from_stored(e) for e in found], query.limit,
                        lambda item: item.seq)

    def denials(self, ctx: RequestContext, *, since: str, until: str | None = None,
                cap: int = 5000) -> Denials:
        """Denied entries from ``since`` (to ``until``) counted per day by reason and by
        organisation, at most ``cap`` of them: the whole log's for auditors, those about
        their own datasets for providers (as :meth:`entries` reads them)."""
        with self.uow() as uow:
            self.guard.require(uow, ctx, "audit.read", AUDIT_LOG)
        query = AuditQuery(since=since, until=until, allowed=False, limit=cap + 1)
        with self.uow(read_only=True) as uow:
            if not ctx.principal.has_role(Role.AUDITOR):
                query = replace(query, dataset_ids=[
                    d.id for d in uow.datasets.all() if d.owner_org == ctx.principal.org])
            found = uow.audit.entries(query)
        self._record(ctx, "audit.read")
        return count_denials([AuditItem.from_stored(e) for e in found], since=since,
                             until=until, cap=cap)

    def accesses(self, ctx: RequestContext, query: AuditQuery) -> Page[Access]:
        """The providers' view: entries about datasets (their own, unless an auditor asks),
        each as who, when, purpose, contract, fields and decision."""
        page = self.entries(ctx, replace(query, about_datasets=True))
        named = {d for item in page.items for d in source_datasets(item.entry)}
        with self.uow(read_only=True) as uow:
            owners = {d: dataset.owner_org for d in named
                      if (dataset := uow.datasets.get(d)) is not None}
        return Page(tuple(Access.of(e, owners) for e in page.items), page.next_cursor)

    # -- checkpoints and proofs --------------------------------------------------------------

    def key(self) -> CheckpointKey:
        """The public key that signs checkpoints, in the forms verifiers read."""
        return CheckpointKey(origin=self.verifier.name, key_id=self.verifier.key_id.hex(),
                             vkey=self.verifier.vkey, public_key_pem=self.verifier.pem)

    def checkpoints(self, ctx: RequestContext, *, before: int | None,
                    limit: int) -> Page[StoredCheckpoint]:
        """Signed checkpoints, newest first, and the cursor for older ones."""
        with self.uow() as uow:
            self.guard.require(uow, ctx, "audit.checkpoints", AUDIT_LOG)
        with self.uow(read_only=True) as uow:
            found = uow.audit.checkpoints(-1 if before is None else before, limit + 1,
                                          newest_first=True)
        self._record(ctx, "audit.checkpoints")
        return Page.cut(found, limit, lambda checkpoint: checkpoint.size)

    def outside_copies(self, ctx: RequestContext, sizes: Sequence[int]) -> list[OutsideCopy]:
        """The copies published outside the database (the checkpoint directory) of the
        checkpoints of ``sizes``, each checked against the log's key; auditors compare them
        with the database's."""
        with self.uow() as uow:
            self.guard.require(uow, ctx, "audit.checkpoints", AUDIT_LOG)
        copies = []
        for note, source in self.outside_notes_for(sizes):
            try:
                checkpoint = self.verifier.checkpoint(note)
            except CheckpointError:
                copies.append(OutsideCopy(name=PurePath(source).name, size=None, root=None))
                continue
            copies.append(OutsideCopy(name=PurePath(source).name, size=checkpoint.size,
                                      root=checkpoint.root.hex()))
        return copies

    def proof(self, ctx: RequestContext, seq: int, size: int | None) -> InclusionProof:
        """The inclusion proof of entry ``seq`` against a signed checkpoint.

        Auditors may ask for any entry, providers for entries about their datasets, consumers
        for their organisation's own entries (their receipts). Without ``size`` the proof is
        against the latest checkpoint; one is signed now if none covers the entry yet.
        """
        with self.uow(read_only=True) as uow:
            found = uow.audit.entry(seq)
            owner = None
            if found is not None:
                # A cross-source entry is about every source's data: any of their providers.
                owners = [dataset.owner_org for d in source_datasets(found[0])
                          if (dataset := uow.datasets.get(d)) is not None]
                owner = (ctx.principal.org if ctx.principal.org in owners
                         else next(iter(owners), None))
        resource = {"kind": "audit-entry", "owner_org": owner,
                    "actor_org": (found[0].get("actor") or {}).get("org") if found else None}
        with self.uow() as uow:
            self.guard.require(uow, ctx, "audit.proof", resource)
        if found is None:
            raise NotFound(f"There is no audit entry {seq}.")
        entry, leaf = found
        stored = self._checkpoint_for(seq, size)
        with self.uow(read_only=True) as uow:
            proof = _damaged_is_unavailable(lambda: prove_inclusion(
                seq=seq, leaf=leaf, entry=entry, size=stored.size,
                root=bytes.fromhex(stored.root), note=stored.note, fetch=uow.audit.nodes))
        self._record(ctx, "audit.proof")
        return proof

    def consistency(self, ctx: RequestContext, old: int, new: int | None) -> ConsistencyProof:
        """The consistency proof from the tree of ``old`` entries to a signed checkpoint."""
        with self.uow() as uow:
            self.guard.require(uow, ctx, "audit.checkpoints", AUDIT_LOG)
        with self.uow(read_only=True) as uow:
            stored = uow.audit.checkpoint(new) if new is not None else (
                uow.audit.latest_checkpoint())
            if stored is None:
                raise NotFound("There is no signed checkpoint of that size.")
            if not 1 <= old <= stored.size:
                raise InvalidInput("old must be between 1 and the checkpoint's size.")
            proof = _damaged_is_unavailable(lambda: prove_consistency(
                old=old, size=stored.size, root=bytes.fromhex(stored.root), note=stored.note,
                fetch=uow.audit.nodes))
        self._record(ctx, "audit.consistency")
        return proof

    def _checkpoint_for(self, seq: int, size: int | None) -> StoredCheckpoint:
        if size is None:
            return self.checkpointer.covering(seq)
        with self.uow(read_only=True) as uow:
            stored = uow.audit.checkpoint(size)
        if stored is None:
            raise NotFound("There is no signed checkpoint of that size.")
        if stored.size < seq:
            raise InvalidInput("That checkpoint was signed before the entry was written.")
        return stored

    # -- verification ------------------------------------------------------------------------

    def verify(self, ctx: RequestContext) -> Verification:
        """Recompute every leaf, the chain and the root at every signed checkpoint (stored and
        copied outside the database); name the first fault."""
        with self.uow() as uow:
            self.guard.require(uow, ctx, "audit.verify", AUDIT_LOG)
        with self.uow(read_only=True) as uow:
            result = verify_store(uow, self.verifier, self.outside_notes())
        self._record(ctx, "audit.verify")
        return result

    def record_refusal(self, ctx: RequestContext, action: str, reasons: tuple[str, ...]) -> None:
        """Put a refusal made before any use case ran (a rate limit) on the record."""
        with self.uow() as uow:
            self.guard.deny(uow, ctx, action, reasons)

    def _record(self, ctx: RequestContext, action: str) -> None:
        with self.uow() as uow:
            self.guard.record(uow, ctx, action)
            uow.commit()


def _damaged_is_unavailable(build: Callable[[], Proof]) -> Proof:
    try:
        return build()
    except ProofError as exc:
        log.error("audit proof refused: %s", exc)
        raise Unavailable("The audit tree is damaged; run broker audit verify.") from exc


def verify_store(uow: UnitOfWork, verifier: NoteVerifier, outside: list[tuple[str, str]],
                 *, trusted: Sequence[tuple[str, str]] = (), deep: bool = False) -> Verification:
    """Verify the log in ``uow`` against its own checkpoints, the ``outside`` copies and any
    ``trusted`` ones, all checked against ``verifier``'s key."""
    inside = [(c.note, f"database checkpoint {c.size}") for c in uow.audit.checkpoints()]
    return verify_with_notes(uow.audit.chunks(), [*trusted, *outside, *inside], verifier,
                             head=uow.audit.head(), deep=deep, nodes=uow.audit.all_nodes())
