"""A writer killed with SIGKILL mid-load loses no acknowledged entry and leaves a valid log.

The writer (``tests.integration.audit_workers crash``) appends in a loop, each append committed
on its own, and prints ``ack <seq> <leaf_hash>`` only after ``uow.commit()`` returned. The test
kills it while it keeps writing, then opens the database as a restarted broker would: every
acknowledged entry is there with the hash it was acknowledged with, at most one committed
entry went unacknowledged, the head row matches the entries, and appending goes on (first by a
second writer that is killed the same way, then by the test, after signing a checkpoint).
"""

from __future__ import annotations

import os
import queue
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from audit.checkpoint import NoteSigner
from audit.entry import leaf_hash
from broker.cli.audit_offline import verify_database
from broker.services.checkpoints import Checkpointer, DirectorySink
from broker.store.db import create_schema, make_engine
from broker.store.uow import SqlUnitOfWork, SqlUnitOfWorkFactory
from tests.integration.audit_workers import clock, event, stored_rows

ROOT = Path(__file__).resolve().parents[2]
KILL_AFTER = 300  # acknowledgements before each kill
CYCLES = 3  # writers killed one after another on the same database
ACK_TIMEOUT = 60.0
WRITER_SECONDS = 90.0  # the writer stops by itself after this long even if never killed
ACK = re.compile(r"ack ([1-9][0-9]*) ([0-9a-f]{64})\n")
ORIGIN = "broker.test/audit"


def _read(stream: IO[str], lines: queue.Queue[str | None]) -> None:
    for line in stream:
        lines.put(line)
    lines.put(None)


def _kill_mid_load(url: str, writer: str, stderr: Path) -> list[tuple[int, str]]:
    """Start a writer, SIGKILL it after KILL_AFTER acks (with jitter); every ack it printed."""
    with open(stderr, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.integration.audit_workers", "crash", url, writer,
             "1000000", str(WRITER_SECONDS)],
            stdout=subprocess.PIPE, stderr=err, cwd=ROOT, env=os.environ.copy(), text=True)
    assert proc.stdout is not None
    lines: queue.Queue[str | None] = queue.Queue()
    reader = threading.Thread(target=_read, args=(proc.stdout, lines), daemon=True)
    reader.start()
    seen: list[str] = []
    try:
        deadline = time.monotonic() + ACK_TIMEOUT
        while len(seen) < KILL_AFTER:
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"only {len(seen)} acks in {ACK_TIMEOUT} s: "
                            f"{stderr.read_text(errors='replace')[-2000:]}")
            if line is None:
                pytest.fail(f"the writer stopped after {len(seen)} acks: "
                            f"{stderr.read_text(errors='replace')[-2000:]}")
            seen.append(line)
        time.sleep(random.uniform(0, 0.02))  # land the kill anywhere in an append
        assert proc.poll() is None, "the writer had stopped before the kill"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    reader.join(timeout=10)
    while (line := lines.get_nowait()) is not None:
        seen.append(line)
    acks = []
    for i, line in enumerate(seen):
        match = ACK.fullmatch(line)
        if match is None:  # only the very last line can be cut by the kill
            assert i == len(seen) - 1, line
            assert not line.endswith("\n"), line
            continue
        acks.append((int(match.group(1)), match.group(2)))
    return acks


def _crash_cycle(url: str, writer: str, tmp_path: Path, before: int) -> tuple[int, int]:
    """Kill a writer on a log of ``before`` entries mid-load; check what survived.

    Every ack is stored as acknowledged, at most one committed entry went unacknowledged, and
    the log (head row included) verifies. Returns (acks, entries now stored).
    """
    acks = _kill_mid_load(url, writer, tmp_path / f"{writer}.err")
    if url.startswith("postgresql"):
        _wait_for_backends_to_end(url)
    else:  # killed holding the database open: its write-ahead log is left for the next opener
        assert Path(url.removeprefix("sqlite:///") + "-wal").exists()
    assert len(acks) >= KILL_AFTER
    assert [seq for seq, _ in acks] == list(range(before + 1, before + len(acks) + 1))
    rows = stored_rows(url)
    stored = {seq: (leaf, body) for seq, body, leaf, _ in rows}
    for seq, leaf in acks:
        assert seq in stored, f"acknowledged entry {seq} was lost"
        assert stored[seq][0] == leaf, f"entry {seq} is not the one acknowledged"
        assert leaf_hash(stored[seq][1].encode()) == leaf
    # The writer acknowledges right after each commit: at most one commit went unacknowledged.
    assert before + len(acks) <= len(rows) <= before + len(acks) + 1
    result = verify_database(url, NoteSigner(ORIGIN, Ed25519PrivateKey.generate()).verifier)
    assert result.valid, result
    assert result.size == len(rows)
    return len(acks), len(rows)


def _crash_and_go_on(url: str, tmp_path: Path) -> str:
    """On a new log at ``url``: CYCLES writers, each killed mid-load on the log the last one
    left; then a checkpoint and one more append, all verifying. A summary for the log, with
    the time it took."""
    engine = make_engine(url)
    create_schema(engine)
    engine.dispose()
    began = time.perf_counter()
    size = 0
    summary = []
    for cycle in range(CYCLES):
        acked, stored = _crash_cycle(url, f"crasher{cycle}", tmp_path, size)
        summary.append(f"{acked} acks/{stored - size} stored")
        size = stored
    signer = NoteSigner(ORIGIN, Ed25519PrivateKey.generate())
    engine = make_engine(url)
    sink = DirectorySink(tmp_path / "checkpoints")
    checkpointer = Checkpointer(SqlUnitOfWorkFactory(engine, clock), signer, [sink],
                                every_entries=1000, every_seconds=3600)
    signed = checkpointer.checkpoint()
    assert signed is not None
    assert signed.size == size
    with SqlUnitOfWork(engine, clock) as uow:
        receipt = uow.audit.append(event("after-crash", 0))
        uow.commit()
    engine.dispose()
    assert receipt.seq == size + 1
    after = verify_database(url, signer.verifier, outside=sink.notes())
    assert after.valid, after
    assert (after.size, after.checkpoints) == (size + 1, 1)
    assert stored_rows(url)[-1][2] == receipt.leaf_hash
    return f"{', '.join(summary)}, {time.perf_counter() - began:.1f} s"


def _wait_for_backends_to_end(url: str) -> None:
    """Wait until the server has noticed the killed client (its transaction ended)."""
    engine = make_engine(url)
    deadline = time.monotonic() + 10
    try:
        while True:
            with engine.connect() as conn:
                others = conn.exec_driver_sql(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND pid <> pg_backend_pid()").scalar_one()
            if others == 0:
                return
            assert time.monotonic() < deadline, "the killed writer's session is still open"
            time.sleep(0.05)
    finally:
        engine.dispose()


@pytest.mark.parametrize("run", [1, 2, 3])
def test_sqlite_writer_killed_mid_load_loses_no_acknowledged_entry(
        tmp_path: Path, run: int) -> None:
    summary = _crash_and_go_on(f"sqlite:///{tmp_path / 'audit.db'}", tmp_path)
    print(f"\nsqlite run {run}: {summary}")  # noqa: T201


def test_postgresql_writer_killed_mid_load_loses_no_acknowledged_entry(
        postgres_url: str, tmp_path: Path) -> None:
    summary = _crash_and_go_on(postgres_url, tmp_path)
    print(f"\npostgresql: {summary}")  # noqa: T201
