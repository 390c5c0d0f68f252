"""The audit ledger under 16 writer processes, on SQLite and PostgreSQL, and its backstops.

Each writer is its own OS process (``tests.integration.audit_workers``) and commits each append
on its own; all wait at a start line, so they contend for the head from the first append. The
log must come out gapless, fork-free and verifiable against checkpoints signed while it grew.
The backstops are shown directly in SQL: the append-only triggers refuse UPDATE and DELETE, and
the unique constraints refuse an entry at a used position or chained to a used predecessor.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError, IntegrityError

from audit import merkle
from audit.checkpoint import NoteSigner
from audit.entry import GENESIS_HASH, AuditEvent, build_entry, encode, leaf_hash
from audit.verify import Fault
from broker.cli.audit_offline import verify_database
from broker.services.checkpoints import Checkpointer, DirectorySink
from broker.store.db import create_schema, make_engine
from broker.store.uow import SqlUnitOfWork, SqlUnitOfWorkFactory
from tests.integration.audit_workers import clock, event, stored_rows
from tests.postgres import DATABASES, empty_database

ROOT = Path(__file__).resolve().parents[2]
WRITERS = 16
APPENDS = 200
READY_TIMEOUT = 90.0  # 16 interpreters importing the project on 2 cores
RUN_TIMEOUT = 120.0
ORIGIN = "broker.test/audit"


@pytest.fixture(params=DATABASES)
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty ledger (schema, triggers, head row) on a SQLite file or a PostgreSQL database."""
    url = empty_database(request, tmp_path / "audit.db")
    engine = make_engine(url)
    create_schema(engine)
    engine.dispose()
    return url


def _spawn_writers(url: str, directory: Path) -> list[subprocess.Popen[bytes]]:
    procs = []
    for w in range(WRITERS):
        writer = f"w{w:02d}"
        with open(directory / f"{writer}.out", "wb") as out, \
                open(directory / f"{writer}.err", "wb") as err:
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "tests.integration.audit_workers", "concurrent", url,
                 writer, str(APPENDS), str(directory)],
                stdout=out, stderr=err, cwd=ROOT, env=os.environ.copy()))
    return procs


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def _errors(directory: Path, procs: list[subprocess.Popen[bytes]]) -> str:
    return "\n".join(
        f"w{w:02d} exit {proc.returncode}: "
        f"{(directory / f'w{w:02d}.err').read_text(errors='replace')[-1500:]}"
        for w, proc in enumerate(procs) if proc.returncode != 0)


def test_sixteen_writer_processes_append_gapless_without_forks(
        ledger_url: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    url = ledger_url
    run = tmp_path / "run"
    run.mkdir()
    engine = make_engine(url)
    request.addfinalizer(engine.dispose)
    signer = NoteSigner(ORIGIN, Ed25519PrivateKey.generate())
    sink = DirectorySink(tmp_path / "checkpoints")
    checkpointer = Checkpointer(SqlUnitOfWorkFactory(engine, clock), signer, [sink],
                                every_entries=1000, every_seconds=3600)
    began = time.perf_counter()
    procs = _spawn_writers(url, run)
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while len(list(run.glob("ready-*"))) < WRITERS:
            crashed = [p for p in procs if p.poll() is not None]
            assert not crashed, f"a writer died before the start:\n{_errors(run, procs)}"
            assert time.monotonic() < deadline, "the writers were not ready in time"
            time.sleep(0.01)
        ready = time.perf_counter()
        (run / "go").touch()
        # Sign checkpoints while the log grows: each must match the final tree's prefix.
        signed_sizes = set()
        deadline = time.monotonic() + RUN_TIMEOUT
        while any(p.poll() is None for p in procs):
            assert time.monotonic() < deadline, "the writers did not finish in time"
            stored = checkpointer.checkpoint()
            if stored is not None:
                signed_sizes.add(stored.size)
            time.sleep(0.2)
        appended = time.perf_counter()
    finally:
        _stop(procs)
    assert all(p.returncode == 0 for p in procs), _errors(run, procs)

    rows = stored_rows(url)
    # Exactly 3200 entries at seq 1..3200: no duplicate, no gap.
    assert len(rows) == WRITERS * APPENDS
    assert [seq for seq, *_ in rows] == list(range(1, WRITERS * APPENDS + 1))
    # One chain from the genesis hash: each entry's bytes hash to its leaf hash, say its own
    # position, and chain to the entry before; no two entries share a predecessor (no fork).
    previous = GENESIS_HASH
    for seq, body, leaf, prev in rows:
        entry = json.loads(body)
        assert leaf_hash(body.encode()) == leaf, seq
        assert entry["seq"] == seq
        assert entry["prev_hash"] == prev == previous, seq
        previous = leaf
    assert len({prev for *_, prev in rows}) == len(rows)
    # Each writer's 200 request ids exactly once.
    writers = [json.loads(body)["actor"]["sub"] for _, body, _, _ in rows]
    request_ids = Counter(json.loads(body)["request_id"] for _, body, _, _ in rows)
    assert request_ids == Counter(f"w{w:02d}-{i}" for w in range(WRITERS) for i in range(APPENDS))
    # Every receipt a writer was handed names the entry stored at that seq.
    by_seq = {seq: (leaf, json.loads(body)["actor"]["sub"]) for seq, body, leaf, _ in rows}
    for w in range(WRITERS):
        acks = (run / f"w{w:02d}.out").read_text().split("\n")[:-1]
        assert len(acks) == APPENDS
        for ack in acks:
            word, acked, leaf = ack.split(" ")
            assert word == "ack"
            assert by_seq[int(acked)] == (leaf, f"w{w:02d}")
    # The writers really raced: their entries interleave. Run one after another, 16 writers
    # would switch 15 times and no writer's first..last stretch would overlap another's. (On
    # SQLite one process often keeps the lock for a long run, so the bounds are loose.)
    switches = sum(a != b for a, b in itertools.pairwise(writers))
    spans = {w: (writers.index(w), len(writers) - writers[::-1].index(w)) for w in set(writers)}
    overlapping = sum(any(start < spans[o][1] and spans[o][0] < end for o in spans if o != w)
                      for w, (start, end) in spans.items())
    assert switches >= 2 * WRITERS, switches
    assert overlapping >= WRITERS // 2, overlapping

    # Sign the final tree; every checkpoint (stored and copied outside) matches the log.
    final = checkpointer.checkpoint()
    assert final is not None
    assert final.size == WRITERS * APPENDS
    signed_sizes.add(final.size)
    assert len(signed_sizes) >= 2, "no checkpoint was signed while the writers ran"
    assert final.root == merkle.root(bytes.fromhex(leaf) for _, _, leaf, _ in rows).hex()
    result = verify_database(url, signer.verifier, outside=sink.notes())
    assert result.valid, result
    assert result.size == WRITERS * APPENDS
    assert result.root == final.root
    assert result.checkpoints == len(signed_sizes)
    assert result.latest_checkpoint == WRITERS * APPENDS
    # The same log against a key that signed none of its checkpoints does not verify.
    stranger = NoteSigner(ORIGIN, Ed25519PrivateKey.generate()).verifier
    refused = verify_database(url, stranger)
    assert not refused.valid
    assert refused.fault is Fault.BAD_CHECKPOINT
    print(f"\n{engine.dialect.name}: {WRITERS} writers ready in {ready - began:.1f} s, "  # noqa: T201
          f"{WRITERS * APPENDS} appends in {appended - ready:.1f} s, "
          f"{switches} writer switches, {overlapping} overlapping writers, "
          f"{len(signed_sizes)} checkpoints")


# -- backstops ---------------------------------------------------------------------------------

def _seed(engine: Engine, count: int) -> None:
    for i in range(count):
        with SqlUnitOfWork(engine, clock) as uow:
            uow.audit.append(event("seed", i))
            uow.commit()


TAMPERING = {
    "update-entry-body": "UPDATE audit_entries SET body = "
                         "replace(body, '\"allowed\":true', '\"allowed\":false') WHERE seq = 2",
    "update-entry-prev-hash": "UPDATE audit_entries SET prev_hash = leaf_hash WHERE seq = 3",
    "delete-last-entry": "DELETE FROM audit_entries WHERE seq = 4",
    "delete-all-entries": "DELETE FROM audit_entries",
    "update-nodes": "UPDATE audit_nodes SET hash = '" + "0" * 64 + "'",
    "delete-nodes": "DELETE FROM audit_nodes",
}


@pytest.mark.parametrize("statement", TAMPERING.values(), ids=TAMPERING.keys())
def test_update_and_delete_of_the_ledger_are_refused(ledger_url: str, statement: str) -> None:
    engine = make_engine(ledger_url)
    _seed(engine, 4)
    before = stored_rows(ledger_url)
    with pytest.raises(DBAPIError, match="is append-only"), engine.begin() as conn:
        conn.exec_driver_sql(statement)
    engine.dispose()
    assert stored_rows(ledger_url) == before
    assert verify_database(ledger_url, NoteSigner(
        ORIGIN, Ed25519PrivateKey.generate()).verifier).valid


def _insert(engine: Engine, seq: int, prev_hash: str, request_id: str) -> str:
    """INSERT an entry as a writer that skipped the head lock would; its leaf hash."""
    racer = AuditEvent(actor={"sub": "racer"}, action="audit.read", request_id=request_id,
                       allowed=True)
    body = encode(build_entry(racer, seq=seq, ts=clock(), prev_hash=prev_hash))
    digest = leaf_hash(body)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO audit_entries (seq, body, leaf_hash, prev_hash) "
                          "VALUES (:seq, :body, :leaf, :prev)"),
                     {"seq": seq, "body": body.decode(), "leaf": digest, "prev": prev_hash})
    return digest


def test_a_racing_insert_at_a_used_position_or_predecessor_is_refused(ledger_url: str) -> None:
    engine = make_engine(ledger_url)
    _seed(engine, 3)
    rows = stored_rows(ledger_url)
    last_seq, _, last_leaf, last_prev = rows[-1]
    # A writer that read a stale head (size 2) writes entry 3 after entry 2: both taken.
    with pytest.raises(IntegrityError):
        _insert(engine, last_seq, last_prev, "stale")
    # A new position chained to a predecessor entry 3 already chains to: a fork.
    with pytest.raises(IntegrityError, match="prev_hash"):
        _insert(engine, last_seq + 1, last_prev, "fork")
    # A used position with an unused predecessor.
    with pytest.raises(IntegrityError, match=r"seq|pkey"):
        _insert(engine, last_seq, last_leaf, "overwrite")
    assert stored_rows(ledger_url) == rows
    # Control: the same INSERT at the free position after the real head is accepted, so the
    # refusals above came from the duplicates (it lands beyond the head row, which the
    # verifier then reports).
    _insert(engine, last_seq + 1, last_leaf, "next")
    engine.dispose()
    assert len(stored_rows(ledger_url)) == last_seq + 1
    verifier = NoteSigner(ORIGIN, Ed25519PrivateKey.generate()).verifier
    beyond = verify_database(ledger_url, verifier)
    assert not beyond.valid
    assert (beyond.fault, beyond.first_bad_seq) == (Fault.BAD_ENTRY, last_seq + 1)
