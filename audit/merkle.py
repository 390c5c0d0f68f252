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


class Frontier:
    """The right edge of a growing tree: one perfect subtree hash per set bit of the size."""

    def __init__(self) -> None:
        self._nodes: list[tuple[int, bytes]] = []  # (subtree size, hash), sizes decreasing
        self.size = 0

    def add(self, leaf: bytes) -> None:
        """Append one leaf hash."""
        size, digest = 1, leaf
        while self._nodes and self._nodes[-1][0] == size:
            left_size, left = self._nodes.pop()
            size, digest = left_size + size, node_hash(left, digest)
        self._nodes.append((size, digest))
        self.size += 1

    def root(self) -> bytes:
        """Merkle tree hash of the leaves added so far."""
        if not self._nodes:
            return hashlib.sha256(b"").digest()
        acc = self._nodes[-1][1]
        for _, left in reversed(self._nodes[:-1]):
            acc = node_hash(left, acc)
        return acc


def root(leaves: Iterable[bytes]) -> bytes:
    """Merkle tree hash of the leaf hashes, in order."""
    frontier = Frontier()
    for leaf in leaves:
        frontier.add(leaf)
    return frontier.root()
