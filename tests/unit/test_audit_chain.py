"""Verification of a log: canonical entries, and every kind of damage named at the right seq."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from audit import merkle
from audit.checkpoint import Checkpoint, NoteSigner
from audit.entry import GENESIS_HASH, AuditEvent, build_entry, encode, leaf_hash
from audit.verify import Chunk, Fault, Head, SignedCheckpoint, Verification, verify_log

SIGNER = NoteSigner("test.example/log", Ed25519PrivateKey.generate())


def _chain(n: int) -> list[bytes]:
    bodies, prev = [], GENESIS_HASH
    for seq in range(1, n + 1):
        event = AuditEvent(actor={"iss": "i", "sub": f"u{seq}", "org": "o", "roles": ["auditor"]},
                           action="audit.read", request_id=f"r{seq}", allowed=seq % 3 != 0,
                           reasons=() if seq % 3 else ("role-not-permitted",))
        body = encode(build_entry(event, seq=seq, ts=datetime(2026, 1, 1, tzinfo=UTC),
                                  prev_hash=prev))
        bodies.append(body)
        prev = leaf_hash(body)
    return bodies


def _stored(bodies: list[bytes]) -> Chunk:
    """The chunk as a database returns it: columns beside the bodies."""
    prevs = [GENESIS_HASH] + [leaf_hash(b) for b in bodies[:-1]]
    return Chunk(list(bodies), list(range(1, len(bodies) + 1)),
                 [leaf_hash(b) for b in bodies], prevs)


def _signed(bodies: list[bytes], size: int, source: str = "test") -> SignedCheckpoint:
    root = merkle.root(bytes.fromhex(leaf_hash(b)) for b in bodies[:size])
    checkpoint = Checkpoint(SIGNER.name, size, root)
    return SignedCheckpoint(checkpoint, SIGNER.checkpoint(checkpoint), source)


def _head(bodies: list[bytes]) -> Head:
    frontier = merkle.Frontier()
    for b in bodies:
        frontier.add(bytes.fromhex(leaf_hash(b)))
    return Head(len(bodies), leaf_hash(bodies[-1]) if bodies else GENESIS_HASH,
                frontier.to_bytes())


def _verify(chunks: list[Chunk], **kw: object) -> Verification:
    return verify_log(chunks, **kw)  # type: ignore[arg-type]


def _named(result: Verification) -> tuple[Fault | None, int | None]:
    return result.fault, result.first_bad_seq


def test_canonical_bytes_are_rfc8785() -> None:
    body = _chain(1)[0]
    assert body == encode(json.loads(body))


def test_intact_log_verifies_with_its_checkpoints_and_head() -> None:
    bodies = _chain(10)
    result = _verify([_stored(bodies)], checkpoints=[_signed(bodies, 4), _signed(bodies, 10)],
                     head=_head(bodies), deep=True)
    assert result.valid
    assert (result.size, result.checkpoints, result.latest_checkpoint) == (10, 2, 10)
    assert result.root == merkle.root(bytes.fromhex(leaf_hash(b)) for b in bodies).hex()


@pytest.mark.parametrize("split", [1, 3, 7])
def test_chunk_boundaries_do_not_matter(split: int) -> None:
    bodies = _chain(9)
    parts = [Chunk(bodies[i:i + split]) for i in range(0, 9, split)]
    assert _verify(parts, checkpoints=[_signed(bodies, 5), _signed(bodies, 9)]).valid


def test_edited_body_is_named_by_its_stored_leaf_hash() -> None:
    bodies = _chain(10)
    chunk = _stored(bodies)
    chunk.bodies[6] = bodies[6].replace(b'"u7"', b'"u8"')
    result = _verify([chunk])
    assert (result.fault, result.first_bad_seq, result.reason) == (
        Fault.BAD_ENTRY, 7, "leaf-hash-mismatch")
    assert result.size == 6


def test_edited_body_with_recomputed_leaf_hash_is_still_named() -> None:
    bodies = _chain(10)
    chunk = _stored(bodies)
    chunk.bodies[6] = bodies[6].replace(b'"r7"', b'"r8"')
    chunk.leaf_hashes[6] = leaf_hash(chunk.bodies[6])  # type: ignore[index]
    result = _verify([chunk])
    assert (result.fault, result.first_bad_seq, result.reason) == (
        Fault.BAD_ENTRY, 7, "prev-hash-mismatch")


def test_deleted_entry_is_a_gap() -> None:
    bodies = _chain(10)
    del bodies[3]
    assert _named(_verify([Chunk(bodies)])) == (Fault.GAP, 4)


def test_reordered_entries_are_a_reorder() -> None:
    bodies = _chain(10)
    bodies[4], bodies[5] = bodies[5], bodies[4]
    assert _named(_verify([Chunk(bodies)])) == (Fault.REORDER, 5)
    stored = _stored(_chain(10))
    stored.bodies[4], stored.bodies[5] = stored.bodies[5], stored.bodies[4]
    for column in (stored.leaf_hashes, stored.prev_hashes):
        assert column is not None
        column[4], column[5] = column[5], column[4]
    assert _named(_verify([stored])) == (Fault.REORDER, 5)


def test_truncated_tail_is_a_rollback_against_head_or_checkpoint() -> None:
    bodies = _chain(10)
    assert _named(_verify([Chunk(bodies[:8])], head=_head(bodies))) == (Fault.ROLLBACK, 9)
    assert _named(_verify([Chunk(bodies[:8])], head=_head(bodies[:8]),
                          checkpoints=[_signed(bodies, 10)])) == (Fault.ROLLBACK, 9)


def test_a_full_rewrite_is_a_fork_between_the_last_good_and_first_bad_checkpoint() -> None:
    bodies = _chain(12)
    checkpoints = [_signed(bodies, 4), _signed(bodies, 8), _signed(bodies, 12)]
    forged, prev = [], GENESIS_HASH
    for number, body in enumerate(bodies, start=1):
        entry = json.loads(body)
        if number == 6:
            entry["purpose"] = "rewritten"
        entry["prev_hash"] = prev
        forged.append(encode(entry))
        prev = leaf_hash(forged[-1])
    result = _verify([_stored(forged)], checkpoints=checkpoints, head=_head(forged))
    assert (result.fault, result.first_bad_seq, result.reason) == (
        Fault.FORK, 5, "checkpoint-root-mismatch")
    assert result.checkpoints == 1


def test_two_signed_checkpoints_of_one_size_that_disagree_are_a_fork() -> None:
    bodies = _chain(6)
    other = _chain(7)[1:]  # another history of the same length
    result = _verify([Chunk(bodies)], checkpoints=[_signed(bodies, 6, "a"),
                                                    _signed(other, 6, "b")])
    assert (result.fault, result.reason) == (Fault.FORK, "conflicting-checkpoints")


def test_head_frontier_that_is_not_the_logs_is_a_fork() -> None:
    bodies = _chain(5)
    head = _head(bodies)
    head.frontier = _head(_chain(6)[1:]).frontier
    assert _verify([Chunk(bodies)], head=head).fault is Fault.FORK


def test_entries_beyond_the_head_are_named() -> None:
    bodies = _chain(5)
    assert _named(_verify([Chunk(bodies)], head=_head(bodies[:3]))) == (Fault.BAD_ENTRY, 4)


def test_non_canonical_body_is_found_by_the_deep_check() -> None:
    bodies = _chain(3)
    entry = json.loads(bodies[1])
    unsorted = json.dumps({"v": entry.pop("v"), "seq": entry.pop("seq"), "ts": entry.pop("ts"),
                           **entry},
                          separators=(",", ":")).encode()
    entry3 = json.loads(bodies[2])
    entry3["prev_hash"] = leaf_hash(unsorted)
    bodies[1], bodies[2] = unsorted, encode(entry3)
    assert _verify([Chunk(bodies)]).valid  # the hashes hold: only the deep check sees it
    result = _verify([Chunk(bodies)], deep=True)
    assert (result.fault, result.first_bad_seq, result.reason) == (
        Fault.BAD_ENTRY, 2, "entry-not-canonical")


def test_a_body_whose_seq_cannot_be_read_is_a_bad_entry() -> None:
    bodies = _chain(3)
    pretty = json.dumps(json.loads(bodies[1]), indent=1).encode()
    entry3 = json.loads(bodies[2])
    entry3["prev_hash"] = leaf_hash(pretty)
    bodies[1], bodies[2] = pretty, encode(entry3)
    for deep in (False, True):
        result = _verify([Chunk(bodies)], deep=deep)
        assert (result.fault, result.first_bad_seq, result.size) == (Fault.BAD_ENTRY, 2, 1)


@settings(max_examples=300)
@given(st.data())
def test_any_byte_flip_in_an_export_is_named_at_its_entry(data: st.DataObject) -> None:
    bodies = _chain(6)
    head = _head(bodies)
    victim = data.draw(st.integers(0, 5))
    body = bytearray(bodies[victim])
    position = data.draw(st.integers(0, len(body) - 1))
    body[position] ^= data.draw(st.integers(1, 255))
    bodies[victim] = bytes(body)
    result = _verify([Chunk(bodies)], head=head)
    assert not result.valid
    assert (result.fault, result.first_bad_seq) == (Fault.BAD_ENTRY, victim + 1)
