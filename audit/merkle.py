"""RFC 6962 / RFC 9162 Merkle tree: roots, the frontier, inclusion and consistency proofs.

MTH({}) = SHA-256(); MTH of one leaf is its leaf hash; otherwise split at the largest power of
two below n and hash SHA-256(0x01 || left || right).

Positions: a *perfect node* ``(level, index)`` is the root of the aligned perfect subtree over
leaves ``[index * 2**level, (index + 1) * 2**level)``; level 0 is the leaf hashes themselves.
A store that keeps every perfect node can answer any proof with O(log n) look-ups: the proof
functions here say which nodes they need (``*_nodes``) and then compute from them, so the store
fetches them in one round trip.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence

NODE_PREFIX = b"\x01"
HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()

Node = tuple[int, int]  # (level, index)


def node_hash(left: bytes, right: bytes) -> bytes:
    """Interior node hash."""
    return hashlib.sha256(NODE_PREFIX + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two strictly below ``n`` (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


class Frontier:
    """The right edge of a growing tree: one perfect subtree hash per set bit of the size.

    It is all an appender needs to keep (in the head row) to add a leaf and know the root in
    O(log n), and ``add`` says which perfect nodes each new leaf completes, for storage.
    """

    def __init__(self, size: int = 0, hashes: Sequence[bytes] = ()) -> None:
        if size < 0:
            raise ValueError("a tree has a non-negative size")
        sizes = [1 << b for b in reversed(range(size.bit_length())) if size >> b & 1]
        if len(sizes) != len(hashes) or any(len(h) != HASH_SIZE for h in hashes):
            raise ValueError("a frontier needs one 32-byte hash per set bit of its size")
        self._nodes: list[tuple[int, bytes]] = list(zip(sizes, hashes, strict=True))
        self.size = size

    @classmethod
    def from_bytes(cls, size: int, packed: bytes) -> Frontier:
        """The frontier stored as the concatenation of its hashes."""
        if len(packed) % HASH_SIZE:
            raise ValueError("a packed frontier is a whole number of 32-byte hashes")
        return cls(size, [packed[i:i + HASH_SIZE] for i in range(0, len(packed), HASH_SIZE)])

    def to_bytes(self) -> bytes:
        """The hashes, left to right, concatenated."""
        return b"".join(h for _, h in self._nodes)

    def add(self, leaf: bytes) -> list[tuple[int, int, bytes]]:
        """Append one leaf hash; return the perfect nodes of level >= 1 it completes."""
        if len(leaf) != HASH_SIZE:
            raise ValueError("a leaf hash is 32 bytes")
        start = self.size
        size, digest = 1, leaf
        completed: list[tuple[int, int, bytes]] = []
        while self._nodes and self._nodes[-1][0] == size:
            left_size, left = self._nodes.pop()
            size, digest = left_size + size, node_hash(left, digest)
            level = size.bit_length() - 1
            completed.append((level, start >> level, digest))
        self._nodes.append((size, digest))
        self.size += 1
        return completed

    def add_perfect(self, level: int, digest: bytes) -> None:
        """Append a whole aligned perfect subtree of ``2**level`` leaves at once."""
        size = 1 << level
        if len(digest) != HASH_SIZE:
            raise ValueError("a subtree hash is 32 bytes")
        if self.size % size:
            raise ValueError("a perfect subtree must start at a multiple of its size")
        while self._nodes and self._nodes[-1][0] == size:
            left_size, left = self._nodes.pop()
            size, digest = left_size + size, node_hash(left, digest)
        self._nodes.append((size, digest))
        self.size += 1 << level

    def root(self) -> bytes:
        """Merkle tree hash of the leaves added so far."""
        if not self._nodes:
            return EMPTY_ROOT
        acc = self._nodes[-1][1]
        for _, left in reversed(self._nodes[:-1]):
            acc = node_hash(left, acc)
        return acc

    def copy(self) -> Frontier:
        """An independent frontier at the same position."""
        twin = Frontier()
        twin._nodes = list(self._nodes)
        twin.size = self.size
        return twin


def root(leaves: Iterable[bytes]) -> bytes:
    """Merkle tree hash of the leaf hashes, in order."""
    frontier = Frontier()
    for leaf in leaves:
        frontier.add(leaf)
    return frontier.root()


# --- proofs from stored perfect nodes ---------------------------------------------------------


def perfect_cover(start: int, end: int) -> list[Node]:
    """The perfect nodes whose hashes make MTH(D[start:end]), left to right.

    ``start`` must be aligned as RFC 6962 subtrees are: a multiple of the largest power of two
    not above ``end - start``.
    """
    nodes: list[Node] = []
    while start < end:
        n = end - start
        size = n if n & (n - 1) == 0 else _split(n)
        level = size.bit_length() - 1
        if start % size:
            raise ValueError(f"[{start}, {end}) is not an RFC 6962 subtree")
        nodes.append((level, start >> level))
        start += size
    return nodes


def range_hash(start: int, end: int, nodes: Mapping[Node, bytes]) -> bytes:
    """MTH(D[start:end]) from the perfect nodes named by :func:`perfect_cover`."""
    n = end - start
    if n <= 0:
        raise ValueError("an empty range has no subtree hash")
    if n & (n - 1) == 0:
        if start % n:
            raise ValueError(f"[{start}, {end}) is not an RFC 6962 subtree")
        level = n.bit_length() - 1
        return nodes[(level, start >> level)]
    k = _split(n)
    return node_hash(range_hash(start, start + k, nodes), range_hash(start + k, end, nodes))


def inclusion_ranges(index: int, size: int) -> list[tuple[int, int]]:
    """The subtrees whose hashes form the inclusion proof of leaf ``index`` in ``size`` leaves,
    in proof order (RFC 9162 section 2.1.3.1)."""
    if not 0 <= index < size:
        raise ValueError("the leaf index must be below the tree size")
    ranges: list[tuple[int, int]] = []
    start, end = 0, size
    while end - start > 1:
        k = _split(end - start)
        if index < start + k:
            ranges.append((start + k, end))
            end = start + k
        else:
            ranges.append((start, start + k))
            start += k
    ranges.reverse()
    return ranges


def consistency_ranges(old: int, new: int) -> list[tuple[int, int]]:
    """The subtrees whose hashes form the consistency proof from ``old`` to ``new`` leaves
    (RFC 9162 section 2.1.4.1); empty when ``old`` is 0 or equals ``new``."""
    if not 0 <= old <= new:
        raise ValueError("a consistency proof needs 0 <= old <= new")
    if old in (0, new):
        return []
    ranges: list[tuple[int, int]] = []
    start, end, whole = 0, new, True
    m = old
    while m != end - start:
        k = _split(end - start)
        if m <= k:
            ranges.append((start + k, end))
            end = start + k
        else:
            ranges.append((start, start + k))
            start += k
            m -= k
            whole = False
    if not whole:
        ranges.append((start, end))
    ranges.reverse()
    return ranges


def nodes_for(ranges: Iterable[tuple[int, int]]) -> set[Node]:
    """Every perfect node the given subtree hashes need."""
    return {node for a, b in ranges for node in perfect_cover(a, b)}


def proof_hashes(ranges: Iterable[tuple[int, int]], nodes: Mapping[Node, bytes]) -> list[bytes]:
    """The proof: one subtree hash per range."""
    return [range_hash(a, b, nodes) for a, b in ranges]


# --- proof verification (RFC 9162 sections 2.1.3.2 and 2.1.4.2) ------------------------------


def root_from_inclusion(index: int, size: int, leaf: bytes, proof: Sequence[bytes]) -> bytes:
    """The root that ``proof`` implies for ``leaf`` at ``index``; ValueError if malformed."""
    if not 0 <= index < size:
        raise ValueError("the leaf index must be below the tree size")
    if any(len(p) != HASH_SIZE for p in proof) or len(leaf) != HASH_SIZE:
        raise ValueError("proof hashes are 32 bytes")
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            raise ValueError("the proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise ValueError("the proof is shorter than the tree is deep")
    return r


def verify_inclusion(index: int, size: int, leaf: bytes, proof: Sequence[bytes],
                     root_hash: bytes) -> bool:
    """Whether ``proof`` shows ``leaf`` at ``index`` in the tree of ``size`` with ``root_hash``."""
    try:
        return root_from_inclusion(index, size, leaf, proof) == root_hash
    except ValueError:
        return False


def verify_consistency(old: int, new: int, old_root: bytes, new_root: bytes,
                       proof: Sequence[bytes]) -> bool:
    """Whether ``proof`` shows the tree of ``old`` leaves is a prefix of the one of ``new``."""
    if not 0 <= old <= new or any(len(p) != HASH_SIZE for p in proof):
        return False
    if old == new:
        return not proof and old_root == new_root
    if old == 0:
        return not proof
    path = list(proof)
    if old & (old - 1) == 0:
        path.insert(0, old_root)
    if not path:
        return False
    fn, sn = old - 1, new - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            while not fn & 1 and fn:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and fr == old_root and sr == new_root
