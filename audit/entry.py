"""Audit entries: the shape of DESIGN.md section 6, canonical bytes and leaf hashes.

Each entry is encoded as RFC 8785 canonical JSON so that any party can recompute its bytes and
hash from the parsed object. The leaf hash is SHA-256(0x00 || bytes), the RFC 6962 leaf hash, so
the same hashes feed both the ``prev_hash`` chain and the Merkle tree.
"""

from __future__ import annotations

import hashlib
import json
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
    fields: tuple[str, ...] | None = None
    disclosure: dict[str, Any] | None = field(default=None)
    #: A cross-source query's sources: ``{alias, dataset_id, version, contract_id}`` each.
    sources: tuple[dict[str, Any], ...] | None = None


def format_ts(ts: datetime) -> str:
    """UTC timestamp with microseconds, as entries carry it."""
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def build_entry(event: AuditEvent, *, seq: int, ts: datetime, prev_hash: str) -> dict[str, Any]:
    """The full entry object for ``event`` at position ``seq``; a cross-source query's
    resource also names its ``sources`` (absent otherwise, so other entries keep their
    shape)."""
    resource: dict[str, Any] = {
        "dataset_id": event.dataset_id,
        "version": event.version,
        "contract_id": event.contract_id,
        "fields": list(event.fields) if event.fields is not None else None,
    }
    if event.sources is not None:
        resource["sources"] = [dict(source) for source in event.sources]
    return {
        "v": ENTRY_VERSION,
        "seq": seq,
        "ts": format_ts(ts),
        "actor": event.actor,
        "action": event.action,
        "resource": resource,
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


_COMPACT = json.JSONEncoder(ensure_ascii=False, sort_keys=True, separators=(",", ":"),
                            allow_nan=False)


_SCALARS = (str, bool)


def _plain(value: Any) -> bool:
    """Whether ``value`` holds only what RFC 8785 and sorted compact ``json`` write alike:
    strings, safe integers, booleans, null, lists, and objects whose keys are in the Basic
    Multilingual Plane (there UTF-16 order, which RFC 8785 sorts by, is code point order)."""
    if value is None or type(value) in _SCALARS:
        return True
    if isinstance(value, int):
        return -(2**53) < value < 2**53
    if isinstance(value, list):
        return all(map(_plain, value))
    if isinstance(value, dict):
        return all(isinstance(k, str) and max(k, default="\0") < "\U00010000"
                   for k in value) and all(map(_plain, value.values()))
    return False


def encode(entry: dict[str, Any]) -> bytes:
    """RFC 8785 canonical bytes of an entry.

    Entries hold only strings, integers, booleans, null, lists and objects; for those the
    standard library's sorted compact JSON is byte-for-byte RFC 8785 (a property test checks it
    against the ``rfc8785`` package) and five times faster. Anything else (a float, a key
    outside the BMP) goes through ``rfc8785``.
    """
    if _plain(entry):
        return _COMPACT.encode(entry).encode("utf-8")
    return bytes(rfc8785.dumps(entry))


def leaf_hash(data: bytes) -> str:
    """RFC 6962 leaf hash of canonical entry bytes, hex."""
    return hashlib.sha256(LEAF_PREFIX + data).hexdigest()
