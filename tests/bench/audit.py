"""Benchmark: durable audit appends per second, verification speed and proof sizes.

Run: .venv/bin/python -m tests.bench.audit [--appends N] [--writers W] [--entries N]
     [--postgres URL]

Appends: each is its own committed transaction (SQLite WAL, synchronous=FULL: fsync per
commit), exactly as a request's entry is: lock the head row, write the entry and the Merkle
nodes it completes, move the head. Writers are threads of one process, then separate
processes. The raw figure is sqlite3 committing one bare row per transaction on the same disk.

Verification: ``verify_log`` over a log of ``--entries`` entries, from memory, from an export
file and from the database, against the raw cost of hashing the same bytes once.
"""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing
import os
import shutil
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from multiprocessing.process import BaseProcess
from pathlib import Path

from audit import merkle
from audit.checkpoint import Checkpoint, NoteSigner
from audit.entry import GENESIS_HASH, AuditEvent, build_entry, encode, leaf_hash
from audit.verify import Chunk, SignedCheckpoint, export_chunks, verify_log
from broker.store.db import create_schema, make_engine
from broker.store.uow import SqlUnitOfWork


def _clock() -> datetime:
    return datetime.now(UTC)


def _event(writer: int, i: int) -> AuditEvent:
    return AuditEvent(
        actor={"iss": "bench", "sub": f"w{writer}", "org": "econ", "roles": ["consumer"]},
        action="query.aggregate", request_id=f"{writer:02d}-{i:08d}-0123456789abcdef",
        allowed=True, policy_revision="0123456789abcdef",
        dataset_id="5b0c8a42-1f0e-4c1b-9a55-3f4f2c9d7e01", version=1,
        contract_id="a8e1c1d2-7b4f-4a2e-8d3c-1e2f3a4b5c6d", purpose="energy-planning",
        query_fp="f" * 64, fields=("kwh", "month", "town"),
        disclosure={"k": 5, "cells_published": 40, "cells_suppressed": 3,
                    "result_digest": "a" * 64},
    )


def _writer(url: str, writer: int, count: int, start: float) -> None:
    engine = make_engine(url)
    while time.time() < start:
        time.sleep(0.001)
    for i in range(count):
        with SqlUnitOfWork(engine, _clock) as uow:
            uow.audit.append(_event(writer, i))
            uow.commit()
    engine.dispose()


def _appends(url: str, writers: int, per_writer: int, *, processes: bool = False) -> float:
    """Appends per second of ``writers`` threads (or processes) appending ``per_writer`` each,
    all starting at once."""
    spawn: Callable[..., threading.Thread | BaseProcess]
    if processes:
        spawn = multiprocessing.get_context("spawn").Process
        start = time.time() + 3.0  # every process imported and connected before the clock starts
    else:
        spawn, start = threading.Thread, time.time() + 0.2
    workers = [spawn(target=_writer, args=(url, w, per_writer, start)) for w in range(writers)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return writers * per_writer / (time.time() - start)


def _raw_sqlite(path: Path, count: int) -> float:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE t (seq INTEGER PRIMARY KEY, body TEXT)")
    body = encode(build_entry(_event(0, 0), seq=1, ts=_clock(), prev_hash=GENESIS_HASH)).decode()
    start = time.perf_counter()
    for _ in range(count):
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO t (body) VALUES (?)", (body,))
        conn.execute("COMMIT")
    rate = count / (time.perf_counter() - start)
    conn.close()
    return rate


def _log(n: int) -> tuple[list[bytes], list[bytes]]:
    """A well-formed log of ``n`` entries, built in memory."""
    bodies, leaves, prev = [], [], GENESIS_HASH
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    for seq in range(1, n + 1):
        body = encode(build_entry(_event(seq % 16, seq), seq=seq,
                                  ts=t0 + timedelta(milliseconds=seq), prev_hash=prev))
        prev = leaf_hash(body)
        bodies.append(body)
        leaves.append(bytes.fromhex(prev))
    return bodies, leaves


def _checkpoints(leaves: list[bytes], every: int, signer: NoteSigner) -> list[SignedCheckpoint]:
    out, frontier = [], merkle.Frontier()
    for i, leaf in enumerate(leaves, start=1):
        frontier.add(leaf)
        if i % every == 0 or i == len(leaves):
            cp = Checkpoint(signer.name, i, frontier.root())
            out.append(SignedCheckpoint(cp, signer.checkpoint(cp), "bench"))
    return out


def _rate(n: int, fn: object) -> float:
    start = time.perf_counter()
    result = fn()  # type: ignore[operator]
    elapsed = time.perf_counter() - start
    assert getattr(result, "valid", True), result
    return n / elapsed


def _load_db(url: str, bodies: list[bytes], leaves: list[bytes]) -> None:
    """Write a log straight into the tables (entries, nodes, head), as appends would leave it."""
    from sqlalchemy import insert, update

    from broker.store.tables import AuditEntryRow, AuditHeadRow, AuditNodeRow

    engine = make_engine(url)
    create_schema(engine)
    frontier = merkle.Frontier()
    nodes: list[dict[str, object]] = []
    rows = []
    prev = GENESIS_HASH
    for seq, (body, leaf) in enumerate(zip(bodies, leaves, strict=True), start=1):
        nodes += [{"level": lv, "idx": i, "hash": h.hex()} for lv, i, h in frontier.add(leaf)]
        rows.append({"seq": seq, "body": body.decode(), "leaf_hash": leaf.hex(),
                     "prev_hash": prev})
        prev = leaf.hex()
    with engine.begin() as conn:
        conn.execute(insert(AuditEntryRow.__table__), rows)  # type: ignore[attr-defined]
        conn.execute(insert(AuditNodeRow.__table__), nodes)  # type: ignore[attr-defined]
        conn.execute(update(AuditHeadRow.__table__).values(  # type: ignore[attr-defined]
            size=len(bodies), head_hash=prev, frontier=frontier.to_bytes().hex()))
    engine.dispose()


def main() -> None:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--appends", type=int, default=2000)
    parser.add_argument("--writers", type=int, default=8)
    parser.add_argument("--entries", type=int, default=200_000)
    parser.add_argument("--postgres", help="also measure appends on this PostgreSQL URL")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="broker-audit-bench-"))
    try:
        _run(workdir, args)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)  # databases and the export: leave nothing


def _run(workdir: Path, args: argparse.Namespace) -> None:
    """Appends, verification and proofs, every file under ``workdir``."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    print(f"# {os.cpu_count()} CPUs; scratch {workdir} (removed at the end)")

    # -- appends ----------------------------------------------------------------------------
    raw = _raw_sqlite(workdir / "raw.db", args.appends)
    print(f"{'raw sqlite3: 1 bare row per commit':44} {raw:9,.0f} /s")
    targets = [("sqlite", f"sqlite:///{workdir / 'audit.db'}")]
    if args.postgres:
        targets.append(("postgresql", args.postgres))
    for name, url in targets:
        create_schema(make_engine(url))
        one = _appends(url, 1, args.appends)
        many = _appends(url, args.writers, args.appends // args.writers)
        procs = _appends(url, 4, args.appends // 4, processes=True)
        print(f"{name + ': durable appends, 1 writer':44} {one:9,.0f} /s"
              + (f"  ({one / raw:.2f}x raw)" if name == "sqlite" else ""))
        print(f"{name + f': durable appends, {args.writers} threads':44} {many:9,.0f} /s")
        print(f"{name + ': durable appends, 4 processes':44} {procs:9,.0f} /s")

    # -- verification -----------------------------------------------------------------------
    n = args.entries
    bodies, leaves = _log(n)
    signer = NoteSigner("bench.invalid/log", Ed25519PrivateKey.generate())
    checkpoints = _checkpoints(leaves, 1000, signer)
    size = sum(map(len, bodies)) / n
    print(f"# verification over {n:,} entries ({size:.0f} bytes each), "
          f"{len(checkpoints)} signed checkpoints")
    hashing = _rate(n, lambda: [hashlib.sha256(b"\x00" + b).digest() for b in bodies])
    print(f"{'raw: SHA-256 of every entry once':44} {hashing:9,.0f} entries/s")
    chunks = [Chunk(bodies[i:i + 65536]) for i in range(0, n, 65536)]
    mem = _rate(n, lambda: verify_log(chunks, checkpoints=checkpoints))
    print(f"{'verify in memory (leaf, chain, roots)':44} {mem:9,.0f} entries/s"
          f"  ({mem / hashing:.2f}x raw hashing)")
    export = workdir / "export.jsonl"
    export.write_bytes(b"".join(b + b"\n" for b in bodies))

    def from_file() -> object:
        with open(export, "rb") as fh:
            return verify_log(export_chunks(fh), checkpoints=checkpoints)

    print(f"{'verify an export file':44} {_rate(n, from_file):9,.0f} entries/s")
    deep = min(n, 20_000)
    deep_rate = _rate(deep, lambda: verify_log([Chunk(bodies[:deep])], deep=True))
    print(f"{'verify --deep (re-encode RFC 8785)':44} {deep_rate:9,.0f} entries/s")
    db_url = f"sqlite:///{workdir / 'verify.db'}"
    _load_db(db_url, bodies, leaves)
    engine = make_engine(db_url)

    def from_db() -> object:
        with SqlUnitOfWork(engine, _clock, read_only=True) as uow:
            return verify_log(uow.audit.chunks(), checkpoints=checkpoints,
                              head=uow.audit.head())

    print(f"{'verify from the SQLite database':44} {_rate(n, from_db):9,.0f} entries/s")

    # -- proofs -----------------------------------------------------------------------------
    with SqlUnitOfWork(engine, _clock, read_only=True) as uow:
        start = time.perf_counter()
        for seq in range(1, n + 1, max(1, n // 500)):
            ranges = merkle.inclusion_ranges(seq - 1, n)
            merkle.proof_hashes(ranges, uow.audit.nodes(merkle.nodes_for(ranges)))
        per = (time.perf_counter() - start) / len(range(1, n + 1, max(1, n // 500)))
    engine.dispose()
    print(f"{'inclusion proof from the database':44} {per * 1e6:9,.0f} us each")
    for tree in (1_000, 1_000_000, 1_000_000_000):
        inclusion = len(merkle.inclusion_ranges(tree // 3, tree))
        consistency = len(merkle.consistency_ranges(tree // 3, tree))
        print(f"  tree of {tree:>13,}: inclusion proof {inclusion:2} hashes ({inclusion * 32:4} B),"
              f" consistency proof {consistency:2} hashes ({consistency * 32:4} B)")


if __name__ == "__main__":
    main()
