"""RFC 6962 Merkle tree hash over leaf hashes.

MTH({}) = SHA-256(); MTH of one leaf is its leaf hash; otherwise split at the largest power of
two below n and hash SHA-256(0x01 || left || right). Computed bottom-up with a stack of perfect
subtrees (the "frontier"), so memory is O(log n).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

NODE_PREFIX = b"\x01"


def node_hash(left: bytes, right: bytes) -> bytes:
    """Interior node hash."""
    return hashlib.sha256(NODE_PREFIX + left + right).digest()


def root(leaves: Iterable[bytes]) -> bytes:
    """Merkle tree hash of the leaf hashes, in order."""
    frontier: list[tuple[int, bytes]] = []  # (subtree size, hash), sizes strictly decreasing
    for leaf in leaves:
        size, digest = 1, leaf
        while frontier and frontier[-1][0] == size:
            left_size, left = frontier.pop()
            size, digest = left_size + size, node_hash(left, digest)
        frontier.append((size, digest))
    if not frontier:
        return hashlib.sha256(b"").digest()
    _, acc = frontier.pop()
    while frontier:
        _, left = frontier.pop()
        acc = node_hash(left, acc)
    return acc
