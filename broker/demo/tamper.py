"""What a database insider can do to the audit tables: the attacks the demo and tests make.

Each function acts on a real database (SQLite file or PostgreSQL) the way an administrator
with full write access would: it first disarms the append-only triggers, then edits rows with
plain SQL. ``rewrite`` is the strongest: it changes one entry and recomputes every later hash,
the tree nodes and the head, so the tables are self-consistent; only signed checkpoints (which
need the key the insider does not hold) can expose it.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Connection, text

from audit import merkle
from audit.entry import GENESIS_HASH, encode, leaf_hash

AUDIT_TABLES = ("audit_entries", "audit_nodes", "audit_checkpoints", "audit_head")


def disarm(conn: Connection) -> None:
    """Drop (SQLite) or disable (PostgreSQL) the triggers that refuse UPDATE and DELETE."""
    if conn.dialect.name == "postgresql":
        for table in AUDIT_TABLES:
            conn.execute(text(f"ALTER TABLE {table} DISABLE TRIGGER USER"))
        return
    names = conn.execute(text(
        "SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name LIKE 'audit_%'"))
    for (name,) in list(names):
        conn.execute(text(f'DROP TRIGGER "{name}"'))


def rearm(conn: Connection) -> None:
    """Put the triggers ``disarm`` took away back exactly as they were, as a careful insider
    does when done: the database then passes the broker's start-up check again, and only the
    log's hashes and its signed checkpoints can tell what was changed."""
    from broker.store.schema import sqlite_trigger_ddl

    if conn.dialect.name == "postgresql":
        for table in AUDIT_TABLES:
            conn.execute(text(f"ALTER TABLE {table} ENABLE TRIGGER USER"))
        return
    for ddl in sqlite_trigger_ddl():
        conn.exec_driver_sql(ddl)


def _body(conn: Connection, seq: int) -> str:
    return str(conn.execute(text("SELECT body FROM audit_entries WHERE seq = :s"),
                            {"s": seq}).scalar_one())


def flip_byte(conn: Connection, seq: int) -> None:
    """Change one character of entry ``seq``'s timestamp (the body stays valid JSON)."""
    body = _body(conn, seq)
    at = body.index('"ts":"') + len('"ts":"2026-01-01T00:00:00.00000')
    forged = body[:at] + ("1" if body[at] != "1" else "2") + body[at + 1:]
    conn.execute(text("UPDATE audit_entries SET body = :b WHERE seq = :s"),
                 {"b": forged, "s": seq})


def delete_entry(conn: Connection, seq: int) -> None:
    """Remove one entry from the middle."""
    conn.execute(text("DELETE FROM audit_entries WHERE seq = :s"), {"s": seq})


def swap_entries(conn: Connection, a: int, b: int) -> None:
    """Exchange the contents of two positions (body and hashes move together)."""
    rows = {seq: conn.execute(text(
        "SELECT body, leaf_hash, prev_hash FROM audit_entries WHERE seq = :s"), {"s": seq}).one()
        for seq in (a, b)}
    conn.execute(text("UPDATE audit_entries SET leaf_hash = 'x', prev_hash = 'x' WHERE seq = :s"),
                 {"s": a})
    for target, source in ((b, a), (a, b)):
        body, leaf, prev = rows[source]
        conn.execute(text("UPDATE audit_entries SET body = :b, leaf_hash = :l, prev_hash = :p "
                          "WHERE seq = :s"), {"b": body, "l": leaf, "p": prev, "s": target})


def _set_head(conn: Connection, size: int) -> None:
    """Rebuild the nodes and the head from the entries left (what a careful insider does)."""
    conn.execute(text("DELETE FROM audit_nodes"))
    frontier = merkle.Frontier()
    nodes: list[dict[str, Any]] = []
    last = GENESIS_HASH
    for (digest,) in conn.execute(text(
            "SELECT leaf_hash FROM audit_entries WHERE seq <= :n ORDER BY seq"), {"n": size}):
        completed = frontier.add(bytes.fromhex(digest))
        nodes += [{"l": lv, "i": i, "h": h.hex()} for lv, i, h in completed]
        last = digest
    if nodes:
        conn.execute(text("INSERT INTO audit_nodes (level, idx, hash) VALUES (:l, :i, :h)"), nodes)
    conn.execute(text("UPDATE audit_head SET size = :n, head_hash = :h, frontier = :f "
                      "WHERE id = 1"), {"n": size, "h": last, "f": frontier.to_bytes().hex()})


def truncate(conn: Connection, keep: int, *, drop_checkpoints: bool = True) -> None:
    """Delete every entry after ``keep``, move the head back and (by default) delete the
    database's checkpoints that would give it away."""
    conn.execute(text("DELETE FROM audit_entries WHERE seq > :k"), {"k": keep})
    if drop_checkpoints:
        conn.execute(text("DELETE FROM audit_checkpoints WHERE size > :k"), {"k": keep})
    _set_head(conn, keep)


def rewrite(conn: Connection, seq: int, *, drop_checkpoints: bool = True) -> None:
    """Change entry ``seq``'s purpose and recompute every later hash, the nodes and the head."""
    size = int(conn.execute(text("SELECT max(seq) FROM audit_entries")).scalar_one())
    rows = list(conn.execute(text(
        "SELECT seq, body FROM audit_entries WHERE seq >= :s ORDER BY seq"), {"s": seq}))
    prev = str(conn.execute(text("SELECT prev_hash FROM audit_entries WHERE seq = :s"),
                            {"s": seq}).scalar_one())
    # unique hash columns: park every rewritten row first
    conn.execute(text("UPDATE audit_entries SET leaf_hash = 'old-' || seq, "
                      "prev_hash = 'old-p-' || seq WHERE seq >= :s"), {"s": seq})
    for number, raw in rows:
        entry = json.loads(raw)
        if number == seq:
            entry["purpose"] = "rewritten-by-insider"
        entry["prev_hash"] = prev
        body = encode(entry)
        digest = leaf_hash(body)
        conn.execute(text("UPDATE audit_entries SET body = :b, leaf_hash = :l, prev_hash = :p "
                          "WHERE seq = :s"),
                     {"b": body.decode(), "l": digest, "p": prev, "s": number})
        prev = digest
    if drop_checkpoints:
        conn.execute(text("DELETE FROM audit_checkpoints WHERE size >= :s"), {"s": seq})
    _set_head(conn, size)
