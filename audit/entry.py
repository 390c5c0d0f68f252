"""Audit entries: the shape of DESIGN.md section 6, canonical bytes and leaf hashes.

Each entry is encoded as RFC 8785 canonical JSON so that any party can recompute its bytes and
hash from the parsed object. The leaf hash is SHA-256(0x00 || bytes), the RFC 6962 leaf hash, so
the same hashes feed both the ``prev_hash`` chain and the Merkle tree.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import rfc8785

ENTRY_VERSION = 1
GENESIS_HASH = "0" * 64
LEAF_PREFIX = b"\x00"


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """What a use case asks the ledger to record; seq, ts and prev_hash are added on append.

    Only identifiers, codes and digests go here: never a row value.
    """

    actor: dict[str, Any]
    action: str
    request_id: str
    allowed: bool
    reasons: tuple[str, ...] = ()
    policy_revision: str | None = None
    dataset_id: str | None = None
    version: int | None = None
    contract_id: str | None = None
    purpose: str | None = None
    query_fp: str | None = None
    disclosure: dict[str, Any] | None = field(default=None)


def format_ts(ts: datetime) -> str:
    """UTC timestamp with microseconds, as entries carry it."""
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def build_entry(event: AuditEvent, *, seq: int, ts: datetime, prev_hash: str) -> dict[str, Any]:
    """The full entry object for ``event`` at position ``seq``."""
    return {
        "v": ENTRY_VERSION,
        "seq": seq,
        "ts": format_ts(ts),
        "actor": event.actor,
        "action": event.action,
        "resource": {
            "dataset_id": event.dataset_id,
            "version": event.version,
            "contract_id": event.contract_id,
        },
        "purpose": event.purpose,
        "request_id": event.request_id,
        "query_fp": event.query_fp,
        "decision": {
            "allowed": event.allowed,
            "reasons": list(event.reasons),
            "policy_revision": event.policy_revision,
        },
        "disclosure": event.disclosure,
        "prev_hash": prev_hash,
    }


def encode(entry: dict[str, Any]) -> bytes:
    """RFC 8785 canonical bytes of an entry."""
    return bytes(rfc8785.dumps(entry))


def leaf_hash(data: bytes) -> str:
    """RFC 6962 leaf hash of canonical entry bytes, hex."""
    return hashlib.sha256(LEAF_PREFIX + data).hexdigest()
