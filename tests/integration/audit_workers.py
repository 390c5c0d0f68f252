"""Writer processes for the audit concurrency and crash tests.

Run as ``python -m tests.integration.audit_workers MODE URL WRITER ...``; each append is its own
unit of work, committed on its own, exactly as a request's entry is. Both modes print
``ack <seq> <leaf_hash>`` for an append only after ``uow.commit()`` returned.

- ``concurrent URL WRITER COUNT DIR``: connect, touch ``DIR/ready-WRITER``, wait for ``DIR/go``
  (the start line all writers wait at), append ``COUNT`` entries.
- ``crash URL WRITER LIMIT SECONDS``: append until killed (or LIMIT appends or SECONDS passed,
  so it stops by itself), flushing each ack at once.
"""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from audit.entry import AuditEvent
from broker.store.db import make_engine, read_only
from broker.store.uow import SqlUnitOfWork

START_WAIT_SECONDS = 120.0


def clock() -> datetime:
    """The ledger's clock: now, in UTC."""
    return datetime.now(UTC)


def event(writer: str, i: int) -> AuditEvent:
    """The ``i``-th event of ``writer``; its request id is ``<writer>-<i>``."""
    return AuditEvent(
        actor={"iss": "test", "sub": writer, "org": "econ", "roles": ["consumer"]},
        action="query.aggregate", request_id=f"{writer}-{i}", allowed=True,
        policy_revision="0123456789abcdef", dataset_id="d", version=1, contract_id="c",
        purpose="energy-planning", query_fp="f" * 64, fields=("town", "kwh"),
        disclosure={"k": 5, "cells_published": 40, "cells_suppressed": 3,
                    "result_digest": "a" * 64},
    )


def concurrent(url: str, writer: str, count: int, directory: Path) -> None:
    """Wait at the start line, then append ``count`` entries; acks are printed at exit."""
    engine = make_engine(url)
    with engine.connect():  # open the connection (and the driver) before the start
        pass
    (directory / f"ready-{writer}").touch()
    go = directory / "go"
    deadline = time.monotonic() + START_WAIT_SECONDS
    while not go.exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"{writer}: no start signal in {START_WAIT_SECONDS} s")
        time.sleep(0.002)
    acks = []
    for i in range(count):
        with SqlUnitOfWork(engine, clock) as uow:
            receipt = uow.audit.append(event(writer, i))
            uow.commit()
        acks.append(f"ack {receipt.seq} {receipt.leaf_hash}\n")
    engine.dispose()
    sys.stdout.write("".join(acks))
    sys.stdout.flush()


def crash(url: str, writer: str, limit: int, seconds: float) -> None:
    """Append until killed, acknowledging each committed entry at once."""
    engine = make_engine(url)
    deadline = time.monotonic() + seconds
    for i in range(limit):
        if time.monotonic() > deadline:
            break
        with SqlUnitOfWork(engine, clock) as uow:
            receipt = uow.audit.append(event(writer, i))
            uow.commit()
        sys.stdout.write(f"ack {receipt.seq} {receipt.leaf_hash}\n")
        sys.stdout.flush()
    engine.dispose()


def stored_rows(url: str) -> list[tuple[int, str, str, str]]:
    """Every stored entry as (seq, body, leaf_hash, prev_hash), read with plain SQL."""
    engine = make_engine(url)
    try:
        with read_only(engine).connect() as conn:
            rows = conn.exec_driver_sql(
                "SELECT seq, body, leaf_hash, prev_hash FROM audit_entries ORDER BY seq").all()
    finally:
        engine.dispose()
    return [(int(seq), str(body), str(leaf), str(prev)) for seq, body, leaf, prev in rows]


def main(argv: list[str]) -> None:
    """Dispatch on the mode named first."""
    mode, url, writer, *rest = argv
    if mode == "concurrent":
        concurrent(url, writer, int(rest[0]), Path(rest[1]))
    elif mode == "crash":
        crash(url, writer, int(rest[0]), float(rest[1]))
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
