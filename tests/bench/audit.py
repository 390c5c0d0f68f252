"""Benchmark: durable audit appends per second, verification speed and proof sizes.

Run: .venv/bin/python -m tests.bench.audit [--appends N] [--writers W] [--entries N]
     [--postgres URL]

Appends: each is its own unit of work and commit, exactly as a request's entry is: lock the
head row, write the entry and the Merkle nodes it completes, move the head, commit, and return
only once the commit is on disk. On SQLite that is a group commit (WAL, synchronous=NORMAL,
then one fsync of the WAL covering every commit written by then; see
``broker.store.group_commit``); the fsyncs per append show how many commits shared one.
Writers are threads of one process sharing its engine, as the server's request threads do
(1, then ``--writers``), then 4 processes with an engine each. The raw figures
are sqlite3 committing one bare row per transaction (WAL, synchronous=FULL, BEGIN IMMEDIATE)
on the same disk, from 1 and from ``--writers`` threads with a connection each.

With ``--postgres URL`` (a server whose fsync is on), the same appends run in a scratch
database created on that server and dropped at the end, against raw psycopg one-row
transactions (INSERT, COMMIT) from the same number of threads.

Verification: ``verify_log`` over a log of ``--entries`` entries, from memory, from an export
file and from the database, against the raw cost of hashing the same bytes once; the deep
check in one process and on every core.
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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from multiprocessing.process import BaseProcess
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.engine import make_url

from audit import merkle
from audit.checkpoint import Checkpoint, NoteSigner
from audit.entry import GENESIS_HASH, AuditEvent, build_entry, encode, leaf_hash
from audit.verify import PARALLEL_MIN_ENTRIES, Chunk, SignedCheckpoint, export_chunks, verify_log
from broker.store.db import create_schema, make_engine
from broker.store.group_commit import SYNCER
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


def _writer(url: str, writer: int, count: int, start: float, engine: Engine | None = None
            ) -> None:
    """Append ``count`` entries, one unit of work each, on ``engine`` (the process's own one,
    shared by its threads as the server's request threads share it) or a new one."""
    own = engine is None
    engine = make_engine(url) if engine is None else engine
    while time.time() < start:
        time.sleep(0.001)
    for i in range(count):
        with SqlUnitOfWork(engine, _clock) as uow:
            uow.audit.append(_event(writer, i))
            uow.commit()
    if own:
        engine.dispose()


def _appends(url: str, writers: int, per_writer: int, *, processes: bool = False) -> float:
    """Appends per second of ``writers`` threads (or processes) appending ``per_writer`` each,
    all starting at once."""
    spawn: Callable[..., threading.Thread | BaseProcess]
    engine = None
    if processes:
        spawn = multiprocessing.get_context("spawn").Process
        start = time.time() + 3.0  # every process imported and connected before the clock starts
    else:
        spawn, start, engine = threading.Thread, time.time() + 0.2, make_engine(url)
    workers = [spawn(target=_writer, args=(url, w, per_writer, start, engine))
               for w in range(writers)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    rate = writers * per_writer / (time.time() - start)
    if engine is not None:
        engine.dispose()
    return rate


def _body() -> str:
    return encode(build_entry(_event(0, 0), seq=1, ts=_clock(), prev_hash=GENESIS_HASH)).decode()


def _raw_sqlite(path: Path, count: int, writers: int = 1) -> float:
    """Bare one-row commits per second (WAL, synchronous=FULL) from ``writers`` threads with a
    connection each."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE IF NOT EXISTS t (seq INTEGER PRIMARY KEY, body TEXT)")
    conn.close()
    body = _body()

    def write(each: int, start: float) -> None:
        conn = sqlite3.connect(path, isolation_level=None, timeout=30, check_same_thread=False)
        conn.execute("PRAGMA synchronous=FULL")
        while time.time() < start:
            time.sleep(0.001)
        for _ in range(each):
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO t (body) VALUES (?)", (body,))
            conn.execute("COMMIT")
        conn.close()

    return _threads(write, writers, count // writers)


def _raw_postgres(url: str, count: int, writers: int) -> float:
    """Bare one-row transactions per second from ``writers`` threads with a connection each."""
    import psycopg

    conninfo = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS raw_rows (seq BIGSERIAL PRIMARY KEY, body TEXT)")
    body = _body()

    def write(each: int, start: float) -> None:
        with psycopg.connect(conninfo) as conn:
            while time.time() < start:
                time.sleep(0.001)
            for _ in range(each):
                conn.execute("INSERT INTO raw_rows (body) VALUES (%s)", (body,))
                conn.commit()

    return _threads(write, writers, count // writers)


def _threads(work: Callable[[int, float], None], writers: int, each: int) -> float:
    start = time.time() + 0.2
    threads = [threading.Thread(target=work, args=(each, start)) for _ in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return writers * each / (time.time() - start)


@contextmanager
def _scratch_postgres(url: str) -> Iterator[str]:
    """A new database on the server of ``url``, dropped (with everything in it) at the end."""
    import psycopg

    server = make_url(url)
    name = f"broker_audit_bench_{os.getpid()}"
    admin = server.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _fsyncs(url: str) -> int:
    """WAL fsyncs the group commit of ``url``'s SQLite file has run so far in this process."""
    engine = make_engine(url)
    with engine.connect() as conn:
        syncer = conn.info.get(SYNCER)
    engine.dispose()
    return syncer.fsyncs if syncer is not None else 0


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


def _load_db(url: str, bodies: list[bytes], leaves: list[bytes], *, schema: bool = True
             ) -> None:
    """Write a log straight into the tables (entries, nodes, head), as appends would leave it
    (into a new database, or with ``schema=False`` into the tables already there)."""
    from sqlalchemy import insert, update

    from broker.store.tables import AuditEntryRow, AuditHeadRow, AuditNodeRow

    engine = make_engine(url)
    if schema:
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
    w = args.writers
    raw1 = _raw_sqlite(workdir / "raw.db", args.appends)
    raw_w = _raw_sqlite(workdir / "raw.db", args.appends, w)
    print(f"{'raw sqlite3: 1 bare row per commit, 1 writer':44} {raw1:9,.0f} /s")
    print(f"{f'raw sqlite3: same, {w} threads':44} {raw_w:9,.0f} /s")
    url = f"sqlite:///{workdir / 'audit.db'}"
    create_schema(make_engine(url))
    synced = _fsyncs(url)
    for writers in (1, w):
        rate = _appends(url, writers, args.appends // writers)
        now = _fsyncs(url)
        per = (now - synced) / (writers * (args.appends // writers))
        synced = now
        print(f"{f'sqlite: durable appends, {writers} thread(s)':44} {rate:9,.0f} /s"
              f"  ({rate / raw1:.2f}x raw 1 writer, {rate / raw_w:.2f}x raw {w} threads;"
              f" {per:.2f} fsyncs/append)")
    procs = _appends(url, 4, args.appends // 4, processes=True)
    print(f"{'sqlite: durable appends, 4 processes':44} {procs:9,.0f} /s")
    if args.postgres:
        with _scratch_postgres(args.postgres) as pg:
            raw_pg = _raw_postgres(pg, args.appends, w)
            create_schema(make_engine(pg))
            many = _appends(pg, w, args.appends // w)
            procs = _appends(pg, 4, args.appends // 4, processes=True)
        print(f"{f'raw psycopg: 1 bare row per commit, {w} thr.':44} {raw_pg:9,.0f} /s")
        print(f"{f'postgresql: durable appends, {w} threads':44} {many:9,.0f} /s"
              f"  ({many / raw_pg:.2f}x raw)")
        print(f"{'postgresql: durable appends, 4 processes':44} {procs:9,.0f} /s")

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
    deep = min(n, 40_000)
    deep_one = _rate(deep, lambda: verify_log([Chunk(bodies[:deep])], deep=True, parallel=False))
    print(f"{'verify --deep (re-encode RFC 8785), 1 core':44} {deep_one:9,.0f} entries/s")
    verify_log([Chunk(bodies[:PARALLEL_MIN_ENTRIES])], deep=True)  # start the workers
    deep_all = _rate(deep, lambda: verify_log([Chunk(bodies[:deep])], deep=True))
    print(f"{f'verify --deep, {os.cpu_count()} cores (workers warm)':44} {deep_all:9,.0f} entries/s"
          f"  ({deep_all / deep_one:.2f}x)")
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
