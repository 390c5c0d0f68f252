"""Proof documents: what the API and CLI hand out, and the offline check anyone can run.

An inclusion document shows that one entry (a consumer's receipt: seq and leaf hash) is in the
tree a signed checkpoint commits to; a consistency document shows that the tree of an older,
trusted checkpoint is a prefix of a newer signed one. Checking needs only the log's public key.
"""

from __future__ import annotations

import binascii
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from audit import merkle
from audit.checkpoint import Checkpoint, CheckpointError, NoteVerifier
from audit.entry import encode, leaf_hash

MAX_PROOF_HASHES = 64


class ProofError(ValueError):
    """A proof document that does not prove what it claims."""


@dataclass(frozen=True, slots=True)
class InclusionProof:
    """Entry ``seq`` (with leaf hash ``leaf_hash``) is leaf ``seq - 1`` of the tree of
    ``tree_size`` entries that the signed ``checkpoint`` commits to; ``proof`` holds the hex
    sibling hashes from the leaf up."""

    seq: int
    leaf_hash: str
    entry: dict[str, Any] | None
    tree_size: int
    proof: tuple[str, ...]
    checkpoint: str

    @property
    def leaf_index(self) -> int:
        """The entry's position among the leaves (``seq - 1``)."""
        return self.seq - 1

    def as_json(self) -> dict[str, Any]:
        """The inclusion document, as ``broker audit proof`` prints it and the check reads it."""
        return {
            "type": "inclusion",
            "seq": self.seq,
            "leaf_index": self.leaf_index,
            "leaf_hash": self.leaf_hash,
            "entry": self.entry,
            "tree_size": self.tree_size,
            "proof": list(self.proof),
            "checkpoint": self.checkpoint,
        }


@dataclass(frozen=True, slots=True)
class ConsistencyProof:
    """The tree of ``old_size`` entries (root ``old_root``, hex) is a prefix of the tree of
    ``new_size`` entries that the signed ``checkpoint`` commits to."""

    old_size: int
    old_root: str
    new_size: int
    new_root: str
    proof: tuple[str, ...]
    checkpoint: str

    def as_json(self) -> dict[str, Any]:
        """The consistency document, as ``broker audit consistency`` prints it."""
        return {
            "type": "consistency",
            "old_size": self.old_size,
            "old_root": self.old_root,
            "new_size": self.new_size,
            "new_root": self.new_root,
            "proof": list(self.proof),
            "checkpoint": self.checkpoint,
        }


NodeFetcher = Callable[[set[merkle.Node]], Mapping[merkle.Node, bytes]]


def prove_inclusion(*, seq: int, leaf: str, entry: Mapping[str, Any] | None, size: int,
                    root: bytes, note: str, fetch: NodeFetcher) -> InclusionProof:
    """The inclusion proof, built from stored nodes and checked before it is handed out."""
    ranges = merkle.inclusion_ranges(seq - 1, size)
    hashes = merkle.proof_hashes(ranges, fetch(merkle.nodes_for(ranges)))
    if not merkle.verify_inclusion(seq - 1, size, bytes.fromhex(leaf), hashes, root):
        raise ProofError(f"the stored tree does not prove entry {seq}: it is damaged")
    return InclusionProof(seq=seq, leaf_hash=leaf,
                          entry=dict(entry) if entry is not None else None, tree_size=size,
                          proof=tuple(h.hex() for h in hashes), checkpoint=note)


def prove_consistency(*, old: int, size: int, root: bytes, note: str,
                      fetch: NodeFetcher) -> ConsistencyProof:
    """The consistency proof, built from stored nodes and checked before it is handed out."""
    if not 1 <= old <= size:
        raise ValueError("old must be between 1 and the checkpoint's size")
    ranges = merkle.consistency_ranges(old, size)
    nodes = fetch(merkle.nodes_for(ranges) | set(merkle.perfect_cover(0, old)))
    hashes = merkle.proof_hashes(ranges, nodes)
    old_root = merkle.range_hash(0, old, nodes)
    if not merkle.verify_consistency(old, size, old_root, root, hashes):
        raise ProofError(f"the stored tree does not prove {old}..{size}: it is damaged")
    return ConsistencyProof(old_size=old, old_root=old_root.hex(), new_size=size,
                            new_root=root.hex(), proof=tuple(h.hex() for h in hashes),
                            checkpoint=note)


@dataclass(frozen=True, slots=True)
class Checked:
    """What a document proved, in words, and the checkpoint it rests on."""

    summary: str
    checkpoint: Checkpoint


def _hashes(doc: Mapping[str, Any]) -> list[bytes]:
    proof = doc.get("proof")
    if not isinstance(proof, list) or len(proof) > MAX_PROOF_HASHES:
        raise ProofError("proof must be a list of hex hashes")
    try:
        hashes = [bytes.fromhex(h) for h in proof if isinstance(h, str)]
    except ValueError as exc:
        raise ProofError("proof hashes must be hex") from exc
    if len(hashes) != len(proof) or any(len(h) != 32 for h in hashes):
        raise ProofError("proof hashes must be 32-byte hex")
    return hashes


def _int(doc: Mapping[str, Any], key: str) -> int:
    value = doc.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ProofError(f"{key} must be a non-negative integer")
    return value


def _hex32(value: Any, what: str) -> bytes:
    try:
        raw = binascii.unhexlify(value) if isinstance(value, str) else b""
    except binascii.Error as exc:
        raise ProofError(f"{what} must be a hex SHA-256 hash") from exc
    if len(raw) != 32:
        raise ProofError(f"{what} must be a hex SHA-256 hash")
    return raw


def check_document(doc: Mapping[str, Any], verifier: NoteVerifier, *, origin: str | None = None,
                   receipt: Mapping[str, Any] | None = None,
                   trusted: Checkpoint | None = None) -> Checked:
    """Check a proof document offline; ProofError says what does not hold.

    ``receipt`` (``{seq, leaf_hash}`` from a query answer) must then be what the inclusion
    document proves; ``trusted`` (a checkpoint the caller already holds) must be the old end of
    a consistency document.
    """
    note = doc.get("checkpoint")
    if not isinstance(note, str):
        raise ProofError("the document carries no signed checkpoint")
    try:
        checkpoint = verifier.checkpoint(note, origin)
    except CheckpointError as exc:
        raise ProofError(f"checkpoint: {exc}") from exc
    kind = doc.get("type")
    if kind == "inclusion":
        return _check_inclusion(doc, checkpoint, receipt)
    if kind == "consistency":
        return _check_consistency(doc, checkpoint, trusted)
    raise ProofError("type must be inclusion or consistency")


def _check_inclusion(doc: Mapping[str, Any], checkpoint: Checkpoint,
                     receipt: Mapping[str, Any] | None) -> Checked:
    seq, size = _int(doc, "seq"), _int(doc, "tree_size")
    if seq < 1 or _int(doc, "leaf_index") != seq - 1:
        raise ProofError("leaf_index must be seq - 1")
    leaf = _hex32(doc.get("leaf_hash"), "leaf_hash")
    if size != checkpoint.size:
        raise ProofError("tree_size is not the signed checkpoint's size")
    entry = doc.get("entry")
    if entry is not None:
        if not isinstance(entry, dict) or entry.get("seq") != seq:
            raise ProofError("the entry is not entry seq")
        if bytes.fromhex(leaf_hash(encode(entry))) != leaf:
            raise ProofError("the entry does not hash to leaf_hash")
    if receipt is not None and (receipt.get("seq") != seq
                                or receipt.get("leaf_hash") != leaf.hex()):
        raise ProofError("the document is not about this receipt")
    if not merkle.verify_inclusion(seq - 1, size, leaf, _hashes(doc), checkpoint.root):
        raise ProofError("the inclusion proof does not lead to the checkpoint's root")
    return Checked(f"entry {seq} (leaf {leaf.hex()}) is in the log {checkpoint.origin} of "
                   f"{size} entries, signed checkpoint verified", checkpoint)


def _check_consistency(doc: Mapping[str, Any], checkpoint: Checkpoint,
                       trusted: Checkpoint | None) -> Checked:
    old, new = _int(doc, "old_size"), _int(doc, "new_size")
    old_root = _hex32(doc.get("old_root"), "old_root")
    if new != checkpoint.size or _hex32(doc.get("new_root"), "new_root") != checkpoint.root:
        raise ProofError("new_size/new_root are not the signed checkpoint's")
    if trusted is not None and (trusted.size != old or trusted.root != old_root):
        raise ProofError("the old end is not the checkpoint you trust")
    if not merkle.verify_consistency(old, new, old_root, checkpoint.root, _hashes(doc)):
        raise ProofError("the consistency proof does not hold: the log was rewritten")
    return Checked(f"the log of {old} entries (root {old_root.hex()}) is a prefix of the "
                   f"signed log of {new} entries", checkpoint)
