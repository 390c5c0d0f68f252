"""RFC 6962 Merkle tree hash, proofs and frontier against the reference vectors of
transparency-dev/merkle, a naive RFC 9162 reference (``tests.rfc6962``), and mutated proofs."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from audit import merkle
from tests.rfc6962 import audit_path, leaf_hash, mth, subproof

LEAVES = [b"", b"\x00", b"\x10", b"\x20\x21", b"\x30\x31", b"\x40\x41\x42\x43",
          bytes(range(0x50, 0x58)), bytes(range(0x60, 0x70))]
ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]


def test_empty_tree_root_is_hash_of_nothing() -> None:
    assert merkle.root([]) == hashlib.sha256(b"").digest()


@pytest.mark.parametrize("size", range(1, 9))
def test_roots_match_rfc6962_reference_vectors(size: int) -> None:
    assert merkle.root(leaf_hash(x) for x in LEAVES[:size]).hex() == ROOTS[size - 1]


@given(st.lists(st.binary(max_size=8), min_size=1, max_size=70))
def test_frontier_root_equals_the_recursive_definition(data: list[bytes]) -> None:
    leaves = [leaf_hash(d) for d in data]
    assert merkle.root(leaves) == mth(leaves)


# --- published proof vectors ------------------------------------------------------------------
#
# Copied verbatim from github.com/transparency-dev/merkle:
#   proof/verify_test.go (commit 02194e9afb6c1d95b5381350007963aa70fff472): the tables
#     ``inclusionProofs`` ({leaf, size, proof}; ``leaf`` is 1-based there, the Go test verifies
#     leaf index ``leaf - 1``) and ``consistencyProofs`` ({size1, size2, proof}), plus
#     ``sha256SomeHash``; the ``roots`` there are ROOTS above and its ``leaves`` are LEAVES.
#   testonly/constants.go: ``NodeHashes`` (every perfect subtree of the 8 leaves, by level)
#     and ``CompactTrees`` (the frontier of each size, as indices into ``NodeHashes``).
# Later versions of the repository moved these probes to testdata/*.json.

SOME_HASH = bytes.fromhex("abacaba000000000000000000000000000000000000000000060061e00123456")

NODE_HASHES = [
    [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
        "0298d122906dcfc10892cb53a73992fc5b9f493ea4c9badb27b791b4127a7fe7",
        "07506a85fd9dd2f120eb694f86011e5bb4662e5c415a62917033d4a9624487e7",
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        "4271a26be0d8a84f0bd54c8c302e7cb3a3b5d1fa6780a40bcce2873477dab658",
        "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
        "46f6ffadd3d06a09ff3c5860d2755c8b9819db7df44251788c7d8e3180de8eb1",
    ],
    [
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
        "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
    ],
    [
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
    ],
    ["5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"],
]

# CompactTrees(): the (level, index) of NodeHashes making the frontier of sizes 0..8.
COMPACT_TREES: list[list[merkle.Node]] = [
    [], [(0, 0)], [(1, 0)], [(1, 0), (0, 2)], [(2, 0)], [(2, 0), (0, 4)], [(2, 0), (1, 2)],
    [(2, 0), (1, 2), (0, 6)], [(3, 0)],
]

# inclusionProofs, without its first row {0, 0, nil} (no leaf; see test_go_invalid_vectors).
INCLUSION_PROOFS: list[tuple[int, int, list[str]]] = [
    (1, 1, []),
    (1, 8, [
        "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
    ]),
    (6, 8, [
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    ]),
    (3, 3, [
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    ]),
    (2, 5, [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
    ]),
]

CONSISTENCY_PROOFS: list[tuple[int, int, list[str]]] = [
    (1, 1, []),
    (1, 8, [
        "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
    ]),
    (6, 8, [
        "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
        "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    ]),
    (2, 5, [
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
    ]),
    (6, 7, [
        "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
        "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    ]),
]

LEAF_HASHES = [leaf_hash(x) for x in LEAVES]
# Root of each size 0..8, as bytes.
ROOT_HASHES = [merkle.EMPTY_ROOT, *(bytes.fromhex(r) for r in ROOTS)]


def _store(leaves: Sequence[bytes]) -> dict[merkle.Node, bytes]:
    """Every perfect node of the tree, as a store appending leaf by leaf would keep them."""
    store: dict[merkle.Node, bytes] = {(0, i): leaf for i, leaf in enumerate(leaves)}
    frontier = merkle.Frontier()
    for leaf in leaves:
        for level, index, digest in frontier.add(leaf):
            assert (level, index) not in store
            store[level, index] = digest
    return store


STORE = _store(LEAF_HASHES)


def _fetch(store: dict[merkle.Node, bytes], ranges: list[tuple[int, int]]) -> list[bytes]:
    """The proof from exactly the nodes ``nodes_for`` names, as the store would fetch them."""
    return merkle.proof_hashes(ranges, {n: store[n] for n in merkle.nodes_for(ranges)})


def _inclusion(store: dict[merkle.Node, bytes], index: int, size: int) -> list[bytes]:
    return _fetch(store, merkle.inclusion_ranges(index, size))


def _consistency(store: dict[merkle.Node, bytes], old: int, new: int) -> list[bytes]:
    return _fetch(store, merkle.consistency_ranges(old, new))


def test_stored_perfect_nodes_are_the_published_node_hashes() -> None:
    published = {(level, index): bytes.fromhex(h)
                 for level, row in enumerate(NODE_HASHES) for index, h in enumerate(row)}
    assert published == STORE


@pytest.mark.parametrize("size", range(9))
def test_frontier_is_the_published_compact_tree(size: int) -> None:
    frontier = merkle.Frontier()
    for leaf in LEAF_HASHES[:size]:
        frontier.add(leaf)
    packed = b"".join(STORE[node] for node in COMPACT_TREES[size])
    assert frontier.to_bytes() == packed
    assert merkle.Frontier.from_bytes(size, packed).root() == ROOT_HASHES[size]


@pytest.mark.parametrize(("leaf", "size", "proof"), INCLUSION_PROOFS)
def test_inclusion_proof_equals_the_published_vector(leaf: int, size: int,
                                                     proof: list[str]) -> None:
    index = leaf - 1
    assert [p.hex() for p in _inclusion(STORE, index, size)] == proof
    hashes = [bytes.fromhex(p) for p in proof]
    assert merkle.verify_inclusion(index, size, LEAF_HASHES[index], hashes, ROOT_HASHES[size])
    assert merkle.root_from_inclusion(index, size, LEAF_HASHES[index], hashes) \
        == ROOT_HASHES[size]


@pytest.mark.parametrize(("old", "new", "proof"), CONSISTENCY_PROOFS)
def test_consistency_proof_equals_the_published_vector(old: int, new: int,
                                                       proof: list[str]) -> None:
    assert [p.hex() for p in _consistency(STORE, old, new)] == proof
    hashes = [bytes.fromhex(p) for p in proof]
    assert merkle.verify_consistency(old, new, ROOT_HASHES[old], ROOT_HASHES[new], hashes)


def test_every_inclusion_and_consistency_proof_of_the_8_leaves_verifies() -> None:
    for size in range(1, 9):
        for index in range(size):
            proof = _inclusion(STORE, index, size)
            assert merkle.verify_inclusion(index, size, LEAF_HASHES[index], proof,
                                           ROOT_HASHES[size])
        for old in range(size + 1):
            proof = _consistency(STORE, old, size)
            assert merkle.verify_consistency(old, size, ROOT_HASHES[old], ROOT_HASHES[size],
                                             proof)


# --- mutated proofs ---------------------------------------------------------------------------


def _flip(digest: bytes, bit: int) -> bytes:
    out = bytearray(digest)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def _proof_mutations(proof: list[bytes], extras: Sequence[bytes]) -> list[tuple[str, list[bytes]]]:
    """Every proof that differs from ``proof``: an extra hash anywhere, a missing hash, one
    flipped bit, two hashes swapped, a malformed (31/33-byte) hash."""
    out: list[tuple[str, list[bytes]]] = []
    for extra in extras:
        for pos in range(len(proof) + 1):
            out.append((f"{extra.hex()[:8]} inserted at {pos}",
                        [*proof[:pos], extra, *proof[pos:]]))
    for pos in range(len(proof)):
        out.append((f"missing [{pos}]", proof[:pos] + proof[pos + 1:]))
        out.extend((f"bit {bit} of [{pos}] flipped",
                    [*proof[:pos], _flip(proof[pos], bit), *proof[pos + 1:]]) for bit in range(256))
        out.append((f"[{pos}] 31 bytes", [*proof[:pos], proof[pos][:31], *proof[pos + 1:]]))
        out.append((f"[{pos}] 33 bytes", [*proof[:pos], proof[pos] + b"\x00", *proof[pos + 1:]]))
        for other in range(pos + 1, len(proof)):
            swapped = list(proof)
            swapped[pos], swapped[other] = swapped[other], swapped[pos]
            out.append((f"[{pos}] and [{other}] swapped", swapped))
    return out


def _accepted(probes: list[tuple[str, Callable[[], bool]]]) -> list[str]:
    return [desc for desc, check in probes if check()]


# A claim the verifier cannot tell apart from the genuine one: the same proof for a size one
# off makes exactly the same sequence of hash operations (the last proof hash stands for a
# subtree of 4 leaves or of 3, say, and a hash does not say how many leaves it covers), so the
# published root comes out again; e.g. leaf 0 with proof [h1, h23, h4567] "in a tree of 7".
# Every RFC 9162 verifier (and transparency-dev's, whose own probes mutate the size by *2 and
# /2, never by 1) accepts these. The claim is harmless: it pairs a size with the root of
# another size, which no honest tree head does; against the real root of the mutated size it
# is rejected, which the tests below assert too.
INCLUSION_SIZE_ALIASES = {(0, 8, 7), (5, 8, 7), (1, 5, 6)}  # (index, size, size accepted)
CONSISTENCY_SIZE_ALIASES = {(1, 8, 7), (6, 8, 7), (2, 5, 6), (6, 7, 8)}  # (old, new, new ok)


@pytest.mark.parametrize(("leaf", "size", "proof"), INCLUSION_PROOFS)
def test_mutated_inclusion_proofs_are_rejected(leaf: int, size: int, proof: list[str]) -> None:
    index, hashes = leaf - 1, [bytes.fromhex(p) for p in proof]
    good_leaf, good_root = LEAF_HASHES[index], ROOT_HASHES[size]

    def probe(i: int, s: int, leaf_hash: bytes, proof_: list[bytes],
              root: bytes) -> Callable[[], bool]:
        return lambda: merkle.verify_inclusion(i, s, leaf_hash, proof_, root)

    probes: list[tuple[str, Callable[[], bool]]] = []
    aliases: list[int] = []
    for i, s in {(index - 1, size), (index + 1, size), (index ^ 2, size), (index, size - 1),
                 (index, size + 1), (index, size * 2), (index, size // 2)} - {(index, size)}:
        desc = f"index {i}, size {s}"
        if i == index and (index, size, s) in INCLUSION_SIZE_ALIASES:
            aliases.append(s)  # see INCLUSION_SIZE_ALIASES
        else:
            probes.append((desc, probe(i, s, good_leaf, hashes, good_root)))
        if 1 <= s <= 8:  # the claim against the genuine root of the mutated size
            probes.append((f"{desc}, its own root", probe(i, s, good_leaf, hashes, ROOT_HASHES[s])))
    for n, root in enumerate(ROOT_HASHES):
        if n != size:
            probes.append((f"root of size {n}", probe(index, size, good_leaf, hashes, root)))
    probes += [(f"root bit {b} flipped", probe(index, size, good_leaf, hashes, _flip(good_root, b)))
               for b in range(256)]
    probes += [("some root", probe(index, size, good_leaf, hashes, SOME_HASH)),
               ("31-byte root", probe(index, size, good_leaf, hashes, good_root[:31]))]
    for n, other in enumerate([*LEAF_HASHES, leaf_hash(b"other"), LEAVES[index].ljust(32, b"\x00"),
                               good_root, SOME_HASH]):
        if other != good_leaf:
            probes.append((f"leaf #{n}", probe(index, size, other, hashes, good_root)))
    probes += [("leaf bit 0 flipped", probe(index, size, _flip(good_leaf, 0), hashes, good_root)),
               ("31-byte leaf", probe(index, size, good_leaf[:31], hashes, good_root)),
               ("33-byte leaf", probe(index, size, good_leaf + b"\x00", hashes, good_root))]
    for desc, bad in _proof_mutations(hashes, [good_root, good_leaf, SOME_HASH, *hashes]):
        probes.append((desc, probe(index, size, good_leaf, bad, good_root)))

    assert merkle.verify_inclusion(index, size, good_leaf, hashes, good_root)
    assert _accepted(probes) == []
    assert [s for s in aliases
            if not merkle.verify_inclusion(index, s, good_leaf, hashes, good_root)] == []


@pytest.mark.parametrize(("old", "new", "proof"), CONSISTENCY_PROOFS)
def test_mutated_consistency_proofs_are_rejected(old: int, new: int, proof: list[str]) -> None:
    hashes = [bytes.fromhex(p) for p in proof]
    old_root, new_root = ROOT_HASHES[old], ROOT_HASHES[new]

    def probe(o: int, n: int, r1: bytes, r2: bytes, proof_: list[bytes]) -> Callable[[], bool]:
        return lambda: merkle.verify_consistency(o, n, r1, r2, proof_)

    probes: list[tuple[str, Callable[[], bool]]] = []
    still_valid: list[tuple[int, int]] = []
    for o, n in {(old - 1, new), (old + 1, new), (old ^ 2, new), (old, new - 1),
                 (old, new + 1), (old, new * 2), (old, new // 2)} - {(old, new)}:
        desc = f"sizes {o} -> {n}"
        if o == old and (old, new, n) in CONSISTENCY_SIZE_ALIASES:
            still_valid.append((o, n))  # see CONSISTENCY_SIZE_ALIASES
        elif o == 0 and not hashes and n >= 0:
            # Not a different claim: the empty tree is a prefix of every tree, with an empty
            # proof and whatever roots (RFC 9162 2.1.4; transparency-dev agrees: {0, 1} passes).
            still_valid.append((o, n))
        else:
            probes.append((desc, probe(o, n, old_root, new_root, hashes)))
        if 1 <= o < n <= 8:
            probes.append((f"{desc}, their own roots",
                           probe(o, n, ROOT_HASHES[o], ROOT_HASHES[n], hashes)))
    wrong_roots = [*ROOT_HASHES, SOME_HASH, b"WrongRoot", old_root[:31]]
    probes += [(f"old root #{k}", probe(old, new, r, new_root, hashes))
               for k, r in enumerate(wrong_roots) if r != old_root]
    probes += [(f"new root #{k}", probe(old, new, old_root, r, hashes))
               for k, r in enumerate(wrong_roots) if r != new_root]
    probes += [(f"old root bit {b} flipped", probe(old, new, _flip(old_root, b), new_root, hashes))
               for b in range(0, 256, 7)]
    probes += [(f"new root bit {b} flipped", probe(old, new, old_root, _flip(new_root, b), hashes))
               for b in range(0, 256, 7)]
    if old_root != new_root:  # swapping equal roots (old == new) changes nothing
        probes.append(("roots swapped", probe(old, new, new_root, old_root, hashes)))
    if hashes:  # an empty proof is the genuine one for (1, 1)
        probes.append(("empty proof", probe(old, new, old_root, new_root, [])))
    for desc, bad in _proof_mutations(hashes, [old_root, new_root, SOME_HASH, *hashes]):
        probes.append((desc, probe(old, new, old_root, new_root, bad)))

    assert merkle.verify_consistency(old, new, old_root, new_root, hashes)
    assert _accepted(probes) == []
    assert [(o, n) for o, n in still_valid
            if not merkle.verify_consistency(o, n, old_root, new_root, hashes)] == []


def test_the_size_aliases_are_exactly_the_accepted_off_by_one_sizes() -> None:
    """The exceptions above are all there is, and none holds against the mutated size's root."""
    found_inclusion, found_consistency = set(), set()
    for leaf, size, proof in INCLUSION_PROOFS:
        hashes = [bytes.fromhex(p) for p in proof]
        for s in (size - 1, size + 1):
            if merkle.verify_inclusion(leaf - 1, s, LEAF_HASHES[leaf - 1], hashes,
                                       ROOT_HASHES[size]):
                found_inclusion.add((leaf - 1, size, s))
    for old, new, proof in CONSISTENCY_PROOFS:
        hashes = [bytes.fromhex(p) for p in proof]
        for n in (new - 1, new + 1):
            if hashes and merkle.verify_consistency(old, n, ROOT_HASHES[old], ROOT_HASHES[new],
                                                    hashes):
                found_consistency.add((old, new, n))
    assert found_inclusion == INCLUSION_SIZE_ALIASES
    assert found_consistency == CONSISTENCY_SIZE_ALIASES


def test_go_invalid_vectors() -> None:
    """The cases transparency-dev's verify_test.go expects to fail (or pass) without a proof."""
    # inclusionProofs[0] = {0, 0, nil}: leaf "0" of an empty tree, index -1.
    assert not merkle.verify_inclusion(-1, 0, LEAF_HASHES[0], [], merkle.EMPTY_ROOT)
    # TestVerifyInclusion: empty proof with index >= size, or with a wrong leaf or root.
    for index, size in [(0, 0), (0, 1), (1, 0), (2, 1)]:
        assert not merkle.verify_inclusion(index, size, SOME_HASH, [], b"")
        assert not merkle.verify_inclusion(index, size, b"", [], merkle.EMPTY_ROOT)
        assert not merkle.verify_inclusion(index, size, SOME_HASH, [], merkle.EMPTY_ROOT)
    # TestVerifyInclusionSingleEntry: a one-leaf tree's root is its leaf, the proof is empty.
    one = leaf_hash(b"data")
    assert merkle.verify_inclusion(0, 1, one, [], one)
    assert not merkle.verify_inclusion(0, 1, b"", [], one)
    assert not merkle.verify_inclusion(0, 1, one, [], b"")
    assert not merkle.verify_inclusion(0, 1, b"", [], b"")
    # TestVerifyConsistency.
    r1, r2, empty = b"don't care 1", b"don't care 2", merkle.EMPTY_ROOT
    cases = [
        (0, 0, r1, r2, [], False), (1, 1, r1, r2, [], False),
        (0, 0, r1, r1, [], True), (0, 1, r1, r2, [], True), (1, 1, r2, r2, [], True),
        (1, 0, r1, r2, [], False), (2, 1, r1, r2, [], False),
        (1, 2, r1, r2, [], False),
        (0, 0, empty, r2, [], False), (1, 1, empty, r2, [], False),
        (0, 0, empty, empty, [empty], False), (0, 1, empty, empty, [empty], False),
        (1, 1, empty, empty, [empty], False),
    ]
    for old, new, root1, root2, proof, ok in cases:
        assert merkle.verify_consistency(old, new, root1, root2, proof) is ok, (old, new)


def test_malformed_arguments() -> None:
    leaf, root, proof = LEAF_HASHES[1], ROOT_HASHES[8], _inclusion(STORE, 1, 8)
    for bad in (-1, 8, 9):
        assert not merkle.verify_inclusion(bad, 8, leaf, proof, root)
        with pytest.raises(ValueError, match="below the tree size"):
            merkle.root_from_inclusion(bad, 8, leaf, proof)
        with pytest.raises(ValueError, match="below the tree size"):
            merkle.inclusion_ranges(bad, 8)
    for bad_size in (-1, 0, 1):
        assert not merkle.verify_inclusion(1, bad_size, leaf, proof, root)
    for short in (leaf[:31], leaf + b"\x00"):
        with pytest.raises(ValueError, match="32 bytes"):
            merkle.root_from_inclusion(1, 8, short, proof)
        with pytest.raises(ValueError, match="32 bytes"):
            merkle.root_from_inclusion(1, 8, leaf, [*proof[:2], short])
    with pytest.raises(ValueError, match="longer"):
        merkle.root_from_inclusion(1, 8, leaf, [*proof, SOME_HASH])
    with pytest.raises(ValueError, match="shorter"):
        merkle.root_from_inclusion(1, 8, leaf, proof[:2])

    consistency = _consistency(STORE, 6, 8)
    for old, new in [(-1, 8), (6, -1), (-2, -1), (9, 8), (8, 6), (1, 0)]:
        assert not merkle.verify_consistency(old, new, ROOT_HASHES[6], ROOT_HASHES[8],
                                             consistency)
        with pytest.raises(ValueError, match="0 <= old <= new"):
            merkle.consistency_ranges(old, new)
    assert merkle.consistency_ranges(0, 5) == merkle.consistency_ranges(5, 5) == []

    with pytest.raises(ValueError, match="one 32-byte hash per set bit"):
        merkle.Frontier(3, [SOME_HASH])
    with pytest.raises(ValueError, match="one 32-byte hash per set bit"):
        merkle.Frontier(1, [SOME_HASH[:31]])
    with pytest.raises(ValueError, match="whole number"):
        merkle.Frontier.from_bytes(1, SOME_HASH + b"\x00")
    with pytest.raises(ValueError, match="one 32-byte hash per set bit"):
        merkle.Frontier.from_bytes(3, SOME_HASH)


# --- properties over random trees, against the naive reference --------------------------------


def _leaves(n: int, seed: int) -> list[bytes]:
    return [leaf_hash(seed.to_bytes(4, "big") + i.to_bytes(4, "big")) for i in range(n)]


def _roots(leaves: list[bytes]) -> list[bytes]:
    """The root of every prefix, sizes 0..n."""
    frontier, roots = merkle.Frontier(), [merkle.EMPTY_ROOT]
    for leaf in leaves:
        frontier.add(leaf)
        roots.append(frontier.root())
    return roots


def _frontier_of(leaves: list[bytes]) -> merkle.Frontier:
    frontier = merkle.Frontier()
    for leaf in leaves:
        frontier.add(leaf)
    return frontier


def _complete_in(size: int, ranges: list[tuple[int, int]]) -> bool:
    """Whether every node the proof needs is complete in a tree of ``size`` leaves."""
    return all((index + 1) << level <= size for level, index in merkle.nodes_for(ranges))


@given(st.integers(1, 300), st.integers(0, 2**32 - 1), st.data())
def test_proofs_from_stored_nodes_equal_the_rfc9162_definition(n: int, seed: int,
                                                               data: st.DataObject) -> None:
    leaves = _leaves(n, seed)
    store, roots = _store(leaves), _roots(leaves)
    assert roots[n] == mth(leaves)

    size = data.draw(st.integers(1, n), label="size")
    index = data.draw(st.integers(0, size - 1), label="index")
    ranges = merkle.inclusion_ranges(index, size)
    assert _complete_in(size, ranges)
    proof = _fetch(store, ranges)
    assert proof == audit_path(index, leaves[:size])
    assert merkle.verify_inclusion(index, size, leaves[index], proof, roots[size])
    assert merkle.root_from_inclusion(index, size, leaves[index], proof) == roots[size]
    # The same proof for another position or size, against that tree's real root: rejected.
    other_size = data.draw(st.integers(index + 1, n), label="other size")
    if other_size != size:
        assert not merkle.verify_inclusion(index, other_size, leaves[index], proof,
                                           roots[other_size])
    other_index = data.draw(st.integers(0, size - 1), label="other index")
    if other_index != index:
        assert not merkle.verify_inclusion(other_index, size, leaves[index], proof, roots[size])

    new = data.draw(st.integers(0, n), label="new")
    old = data.draw(st.integers(0, new), label="old")
    ranges = merkle.consistency_ranges(old, new)
    assert _complete_in(new, ranges)
    proof = _fetch(store, ranges)
    assert proof == (subproof(old, leaves[:new], True) if 0 < old < new else [])
    assert merkle.verify_consistency(old, new, roots[old], roots[new], proof)
    if proof:
        other_new = data.draw(st.integers(1, n), label="other new")
        other_old = data.draw(st.integers(0, other_new), label="other old")
        if (other_old, other_new) != (old, new):
            assert not merkle.verify_consistency(other_old, other_new, roots[other_old],
                                                 roots[other_new], proof)


@given(st.integers(0, 300), st.integers(0, 2**32 - 1), st.data())
def test_frontier_survives_packing_and_keeps_growing(n: int, seed: int,
                                                     data: st.DataObject) -> None:
    leaves = _leaves(n, seed)
    store, roots = _store(leaves), _roots(leaves)
    cut = data.draw(st.integers(0, n), label="cut")
    frontier = merkle.Frontier()
    for leaf in leaves[:cut]:
        frontier.add(leaf)
    packed = frontier.to_bytes()
    assert len(packed) == 32 * cut.bit_count()
    revived = merkle.Frontier.from_bytes(cut, packed)
    assert revived.size == cut
    assert revived.root() == frontier.root() == roots[cut]
    snapshot = revived.copy()
    for i, leaf in enumerate(leaves[cut:], start=cut):
        completed = revived.add(leaf)
        assert completed == frontier.add(leaf)
        assert all(store[level, index] == digest for level, index, digest in completed)
        assert {(level, index) for level, index, _ in completed} == {
            (level, i >> level) for level in range(1, (i + 1).bit_length())
            if (i + 1) % (1 << level) == 0}
        assert revived.root() == roots[i + 1]
    assert revived.size == frontier.size == n
    assert snapshot.size == cut  # the copy is independent
    assert snapshot.root() == roots[cut]
    assert merkle.Frontier.from_bytes(n, revived.to_bytes()).root() == roots[n]


@given(st.integers(0, 300), st.integers(0, 2**32 - 1), st.data())
def test_add_perfect_of_aligned_subtrees_equals_adding_leaves(n: int, seed: int,
                                                              data: st.DataObject) -> None:
    leaves = _leaves(n, seed)
    store, roots = _store(leaves), _roots(leaves)
    frontier, pos = merkle.Frontier(), 0
    while pos < n:
        levels = [lv for lv in range(n.bit_length())
                  if pos % (1 << lv) == 0 and pos + (1 << lv) <= n]
        level = data.draw(st.sampled_from(levels), label=f"level at {pos}")
        frontier.add_perfect(level, store[level, pos >> level])
        pos += 1 << level
        assert frontier.size == pos
        assert frontier.root() == roots[pos]
    assert frontier.to_bytes() == _frontier_of(leaves).to_bytes()
    # Leaves added after whole subtrees complete the same nodes as in a leaf-by-leaf frontier.
    extra = leaf_hash(b"one more")
    assert frontier.add(extra) == _frontier_of(leaves).add(extra)


def test_add_perfect_with_the_published_node_hashes() -> None:
    frontier = merkle.Frontier()
    frontier.add_perfect(2, STORE[2, 0])
    assert frontier.root() == ROOT_HASHES[4]
    frontier.add_perfect(1, STORE[1, 2])
    assert frontier.root() == ROOT_HASHES[6]
    frontier.add(LEAF_HASHES[6])
    assert frontier.root() == ROOT_HASHES[7]
    frontier.add_perfect(0, LEAF_HASHES[7])
    assert frontier.root() == ROOT_HASHES[8]
    assert frontier.to_bytes() == STORE[3, 0]
    whole = merkle.Frontier()
    whole.add_perfect(3, STORE[3, 0])
    assert whole.size == 8
    assert whole.root() == ROOT_HASHES[8]


@pytest.mark.parametrize(("size", "level"),
                         [(1, 1), (2, 2), (3, 1), (3, 2), (6, 2), (4, 3), (12, 3), (10, 2)])
def test_add_perfect_misaligned_raises(size: int, level: int) -> None:
    frontier = _frontier_of(_leaves(size, 7))
    before = (frontier.size, frontier.to_bytes())
    with pytest.raises(ValueError, match="multiple of its size"):
        frontier.add_perfect(level, SOME_HASH)
    assert (frontier.size, frontier.to_bytes()) == before
