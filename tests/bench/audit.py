"""Benchmark: durable audit appends per second (one and several writers) and verification speed.

Run: .venv/bin/python -m tests.bench.audit [--appends N] [--writers W]

Each append is its own committed transaction on SQLite (WAL, synchronous=FULL), exactly as a
request's entry is; writers are threads of one process sharing the engine's pool.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from audit.entry import AuditEvent
from audit.verify import verify_chain
from broker.store.db import create_schema, make_engine
from broker.store.uow import SqlUnitOfWork


def _clock() -> datetime:
    return datetime.now(UTC)


def _event(writer: int, i: int) -> AuditEvent:
    return AuditEvent(
        actor={"iss": "bench", "sub": f"w{writer}", "org": "econ", "roles": ["consumer"]},
        action="query.aggregate", request_id=f"{writer}-{i}", allowed=True,
        policy_revision="0123456789abcdef", dataset_id="d", version=1, contract_id="c",
        purpose="energy-planning", query_fp="f" * 64,
        disclosure={"k": 5, "cells_published": 40, "cells_suppressed": 3,
                    "result_digest": "a" * 64},
    )


def _writer(engine: object, writer: int, count: int) -> None:
    for i in range(count):
        with SqlUnitOfWork(engine, _clock) as uow:  # type: ignore[arg-type]
            uow.audit.append(_event(writer, i))
            uow.commit()


def _run(url: str, writers: int, per_writer: int) -> float:
    engine = make_engine(url)
    threads = [threading.Thread(target=_writer, args=(engine, w, per_writer))
               for w in range(writers)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    engine.dispose()
    return writers * per_writer / elapsed


def main() -> None:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--appends", type=int, default=2000)
    parser.add_argument("--writers", type=int, default=8)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="broker-audit-bench-"))
    url = f"sqlite:///{workdir / 'audit.db'}"
    create_schema(make_engine(url))

    one = _run(url, 1, args.appends)
    many = _run(url, args.writers, args.appends // args.writers)

    engine = make_engine(url)
    with SqlUnitOfWork(engine, _clock) as uow:
        size, head = uow.audit.head()
        stored = list(uow.audit.stored())
    start = time.perf_counter()
    result = verify_chain(stored, head_size=size, head_hash=head)
    verify_s = time.perf_counter() - start
    assert result.valid
    print(f"durable appends, 1 writer        {one:>10,.0f} /s")
    print(f"durable appends, {args.writers} writers       {many:>10,.0f} /s")
    print(f"verification (in memory)         {size / verify_s:>10,.0f} entries/s "
          f"({size:,} entries)")


if __name__ == "__main__":
    main()
