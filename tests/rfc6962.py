"""RFC 6962 section 2.1 (RFC 9162 section 2.1) by its recursive definitions, with only hashlib.

The reference that the ``audit`` package's trees and proofs, and the proofs the broker serves,
are held to in tests. It is deliberately naive (every proof rehashes whole subtrees) and shares
no code with what it checks.
"""

from __future__ import annotations

import hashlib


def sha256(data: bytes) -> bytes:
    """SHA-256 of ``data``."""
    return hashlib.sha256(data).digest()


def leaf_hash(data: bytes) -> bytes:
    """MTH({d}) = SHA-256(0x00 || d)."""
    return sha256(b"\x00" + data)


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 || left || right)."""
    return sha256(b"\x01" + left + right)


def largest_power_below(n: int) -> int:
    """The largest power of two strictly below ``n`` (n > 1), where the tree splits."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def mth(leaves: list[bytes]) -> bytes:
    """MTH(D[n]), the Merkle tree hash of leaf hashes ``leaves``."""
    if not leaves:
        return sha256(b"")
    if len(leaves) == 1:
        return leaves[0]
    k = largest_power_below(len(leaves))
    return node_hash(mth(leaves[:k]), mth(leaves[k:]))


def audit_path(m: int, leaves: list[bytes]) -> list[bytes]:
    """PATH(m, D[n]), the audit path (inclusion proof) of leaf ``m``."""
    if len(leaves) <= 1:
        return []
    k = largest_power_below(len(leaves))
    if m < k:
        return [*audit_path(m, leaves[:k]), mth(leaves[k:])]
    return [*audit_path(m - k, leaves[k:]), mth(leaves[:k])]


def subproof(m: int, leaves: list[bytes], whole: bool) -> list[bytes]:
    """SUBPROOF(m, D[n], b), with ``whole`` as b: PROOF(m, D[n]) is SUBPROOF(m, D[n], true)."""
    n = len(leaves)
    if m == n:
        return [] if whole else [mth(leaves)]
    k = largest_power_below(n)
    if m <= k:
        return [*subproof(m, leaves[:k], whole), mth(leaves[k:])]
    return [*subproof(m - k, leaves[k:], False), mth(leaves[:k])]
