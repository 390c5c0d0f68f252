"""Hash chain: canonical entries, and every kind of tampering is named at the right seq."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from audit.entry import GENESIS_HASH, AuditEvent, build_entry, encode, leaf_hash
from audit.verify import StoredEntry, indexed_columns, verify_chain


def _chain(n: int) -> list[StoredEntry]:
    entries, prev = [], GENESIS_HASH
    for seq in range(1, n + 1):
        event = AuditEvent(actor={"iss": "i", "sub": f"u{seq}", "org": "o", "roles": ["auditor"]},
                           action="audit.read", request_id=f"r{seq}", allowed=seq % 3 != 0,
                           reasons=() if seq % 3 else ("role-not-permitted",))
        entry = build_entry(event, seq=seq, ts=datetime(2026, 1, 1, tzinfo=UTC), prev_hash=prev)
        body = encode(entry)
        digest = leaf_hash(body)
        entries.append(StoredEntry(seq, body, digest, prev, indexed_columns(entry)))
        prev = digest
    return entries


def test_canonical_bytes_are_rfc8785() -> None:
    body = _chain(1)[0].body
    assert body == encode(json.loads(body))


def test_intact_chain_verifies() -> None:
    chain = _chain(10)
    result = verify_chain(chain, head_size=10, head_hash=chain[-1].leaf_hash)
    assert result.valid
    assert result.size == 10


def test_edited_body_is_named() -> None:
    chain = _chain(10)
    chain[6] = replace(chain[6], body=chain[6].body.replace(b'"u7"', b'"u8"'))
    result = verify_chain(chain)
    assert (result.valid, result.first_bad_seq, result.reason) == (
        False, 7, "leaf-hash-mismatch")
    assert result.size == 6


def test_edited_body_with_recomputed_leaf_hash_breaks_the_next_link() -> None:
    chain = _chain(10)
    body = chain[6].body.replace(b'"r7"', b'"r8"')  # request_id: not an indexed column
    chain[6] = replace(chain[6], body=body, leaf_hash=leaf_hash(body))
    result = verify_chain(chain)
    assert (result.first_bad_seq, result.reason) == (8, "prev-hash-mismatch")


def test_deleted_entry_is_a_gap() -> None:
    chain = _chain(10)
    del chain[3]
    assert (verify_chain(chain).first_bad_seq, verify_chain(chain).reason) == (4, "seq-gap")


def test_reordered_entries_are_detected() -> None:
    chain = _chain(10)
    chain[4], chain[5] = chain[5], chain[4]
    result = verify_chain(chain)
    assert not result.valid
    assert result.first_bad_seq == 5


def test_truncated_tail_disagrees_with_the_head() -> None:
    chain = _chain(10)
    result = verify_chain(chain[:8], head_size=10, head_hash=chain[-1].leaf_hash)
    assert (result.valid, result.first_bad_seq, result.reason) == (False, 9, "head-mismatch")


def test_edited_filter_column_is_detected() -> None:
    chain = _chain(5)
    chain[2] = replace(chain[2], columns={**chain[2].columns, "actor_org": "someone-else"})
    assert (verify_chain(chain).first_bad_seq, verify_chain(chain).reason) == (3,
                                                                               "index-mismatch")


def test_non_canonical_body_is_detected() -> None:
    chain = _chain(3)
    pretty = json.dumps(json.loads(chain[1].body), indent=1).encode()
    chain[1] = replace(chain[1], body=pretty, leaf_hash=leaf_hash(pretty))
    assert verify_chain(chain).reason == "entry-not-canonical"


@settings(max_examples=200)
@given(st.data())
def test_any_byte_flip_is_detected_at_its_entry(data: st.DataObject) -> None:
    chain = _chain(6)
    victim = data.draw(st.integers(0, 5))
    body = bytearray(chain[victim].body)
    position = data.draw(st.integers(0, len(body) - 1))
    body[position] ^= data.draw(st.integers(1, 255))
    chain[victim] = replace(chain[victim], body=bytes(body))
    result = verify_chain(chain)
    assert not result.valid
    assert result.first_bad_seq == victim + 1
