"""Recompute the chain from stored entries and name the first one that does not hold."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from audit import merkle
from audit.entry import GENESIS_HASH, encode, leaf_hash


@dataclass(frozen=True, slots=True)
class StoredEntry:
    """One row as the store holds it: the canonical body plus columns derived from it."""

    seq: int
    body: bytes
    leaf_hash: str
    prev_hash: str
    columns: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Verification:
    """Outcome of a verification run."""

    valid: bool
    size: int
    root: str
    first_bad_seq: int | None = None
    reason: str | None = None

    def as_json(self) -> dict[str, Any]:
        """The ``GET /v1/audit/verify`` answer."""
        out: dict[str, Any] = {"valid": self.valid, "size": self.size, "root": self.root}
        if not self.valid:
            out["first_bad_seq"] = self.first_bad_seq
            out["reason"] = self.reason
        return out


def indexed_columns(entry: Mapping[str, Any]) -> dict[str, Any]:
    """The filterable columns a store keeps beside the body; verification re-derives them."""
    resource = entry.get("resource") or {}
    actor = entry.get("actor") or {}
    decision = entry.get("decision") or {}
    return {
        "ts": entry.get("ts"),
        "action": entry.get("action"),
        "actor_sub": actor.get("sub"),
        "actor_org": actor.get("org"),
        "dataset_id": resource.get("dataset_id"),
        "contract_id": resource.get("contract_id"),
        "allowed": decision.get("allowed"),
    }


def _check(stored: StoredEntry, expected_seq: int, prev: str) -> str | None:
    """The reason ``stored`` breaks the chain at ``expected_seq``, or None."""
    if stored.seq != expected_seq:
        return "seq-gap"
    try:
        entry = json.loads(stored.body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return "entry-unparseable"
    if not isinstance(entry, dict):
        return "entry-unparseable"
    try:
        canonical = encode(entry)
    except Exception:
        return "entry-unparseable"
    if canonical != stored.body:
        return "entry-not-canonical"
    if leaf_hash(stored.body) != stored.leaf_hash:
        return "leaf-hash-mismatch"
    if entry.get("seq") != stored.seq:
        return "seq-mismatch"
    if entry.get("prev_hash") != prev or stored.prev_hash != prev:
        return "prev-hash-mismatch"
    if indexed_columns(entry) != dict(stored.columns):
        return "index-mismatch"
    return None


def verify_chain(
    entries: Iterable[StoredEntry],
    *,
    head_size: int | None = None,
    head_hash: str | None = None,
) -> Verification:
    """Walk the entries in seq order from 1 and report the first broken link.

    ``head_size``/``head_hash`` are what the store's head row claims; a shorter chain than the
    head (a deleted tail) or a different last hash is reported as ``head-mismatch``.
    """
    prev = GENESIS_HASH
    tree = merkle.Frontier()  # O(log n) memory however long the log
    for stored in entries:
        expected = tree.size + 1
        reason = _check(stored, expected, prev)
        if reason is not None:
            bad = expected if reason == "seq-gap" else stored.seq
            return Verification(False, tree.size, tree.root().hex(), bad, reason)
        tree.add(bytes.fromhex(stored.leaf_hash))
        prev = stored.leaf_hash
    size = tree.size
    root = tree.root().hex()
    if head_size is not None and (head_size != size or (head_hash or GENESIS_HASH) != prev):
        return Verification(False, size, root, min(head_size, size) + 1, "head-mismatch")
    return Verification(True, size, root)


def entries_from_export(lines: Iterable[bytes]) -> Iterator[StoredEntry]:
    """Stored entries rebuilt from an export (one canonical entry per line).

    An export carries only the bodies; hashes and columns are derived from them, so every check
    but the stored-column ones applies: canonical form, seq, chain and root.
    """
    for number, raw in enumerate(lines, start=1):
        body = raw.rstrip(b"\n")
        try:
            entry = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError):
            entry = None
        if not isinstance(entry, dict):
            yield StoredEntry(number, body, leaf_hash(body), "", {})
            continue
        seq = entry.get("seq")
        yield StoredEntry(
            seq if isinstance(seq, int) else number,
            body,
            leaf_hash(body),
            str(entry.get("prev_hash", "")),
            indexed_columns(entry),
        )
