"""Several broker processes on one PostgreSQL database.

``broker serve --workers 2`` under concurrent load: the daily quota is exact, the audit log is
gapless and verifies, and one worker (the holder of the signer lease) signs checkpoints
periodically; when that worker dies, another takes the lease and checkpoints continue.

Two separate ``broker serve`` processes on one database (so that each request's process is
known): a tracker split across them is still caught, by the release audit state they share
through the database.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
from sqlalchemy import create_engine, text

from broker.store.leases import SIGNER
from tests.conftest import SECRET, Mint, World, auth, released
from tests.server import broker_server

pytestmark = pytest.mark.e2e

QUOTA = 30


@pytest.fixture
def env(tmp_path: Path, postgres_url: str) -> dict[str, str]:
    return {"BROKER_DATA_DIR": str(tmp_path / "data"), "BROKER_JWT_SECRET": SECRET,
            "BROKER_DATABASE_URL": postgres_url, "BROKER_CHECKPOINT_EVERY_SECONDS": "1",
            "BROKER_MAX_UPLOAD_BYTES": "2000000"}


def _sql(url: str, statement: str, **params: Any) -> list[Any]:
    engine = create_engine(url)
    with engine.connect() as conn:
        rows = list(conn.execute(text(statement), params))
    engine.dispose()
    return rows


def _signers(url: str) -> list[str]:
    """The application names of the connections holding the signer lease."""
    return [r[0] for r in _sql(url, """
        SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
        WHERE l.locktype = 'advisory' AND l.objid = :key AND l.granted""", key=SIGNER)]


def _wait(check: Callable[[], Any], seconds: float, what: str) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"not within {seconds} s: {what}")


def _covered(url: str) -> bool:
    size = _sql(url, "SELECT size FROM audit_head")[0][0]
    signed = _sql(url, "SELECT COALESCE(MAX(size), 0) FROM audit_checkpoints")[0][0]
    return bool(size > 0 and signed == size)


def test_two_workers_keep_the_quota_exact_the_log_gapless_and_one_signer(
        tmp_path: Path, env: dict[str, str], postgres_url: str, mint: Mint) -> None:
    with broker_server(tmp_path, env, args=["--workers", "2"]) as base, \
            httpx.Client(base_url=base, timeout=60) as client:
        world = World(client, mint)  # type: ignore[arg-type]
        contract = world.contract_for(world.dataset["id"], max_queries_per_day=QUOTA)
        statuses: Counter[int] = Counter()
        reasons: Counter[str] = Counter()
        lock = threading.Lock()

        def analyst(n: int) -> None:
            # each analyst on its own connections, so the kernel spreads them over workers
            token = mint("econ", "consumer", sub=f"analyst{n}@econ")
            for i in range(6):
                with httpx.Client(base_url=base, timeout=60) as own:
                    r = own.post("/v1/queries/aggregate", headers=auth(token), json={
                        "contract_id": contract, "purpose": "energy-planning",
                        "group_by": [["town"], []][i % 2],
                        "measures": [{"fn": "count"}, {"fn": "sum", "field": "kwh"}]})
                with lock:
                    statuses[r.status_code] += 1
                    if r.status_code == 403:
                        reasons.update(r.json().get("reasons", []))

        threads = [threading.Thread(target=analyst, args=(n,)) for n in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert statuses == {200: QUOTA, 403: 72 - QUOTA}, statuses
        assert reasons == {"daily-quota-exhausted": 72 - QUOTA}, reasons

        # exactly QUOTA releases were audited for the contract, in a gapless log that verifies
        released_count = _sql(postgres_url, """
            SELECT COUNT(*) FROM audit_entries WHERE contract_id = :contract
            AND action = 'query.aggregate' AND allowed""", contract=contract)[0][0]
        assert released_count == QUOTA
        count, low, high = _sql(postgres_url,
                                "SELECT COUNT(*), MIN(seq), MAX(seq) FROM audit_entries")[0]
        assert (low, high) == (1, count)
        verify = client.get("/v1/audit/verify", headers=auth(world.auditor))
        assert verify.status_code == 200, verify.text
        assert verify.json()["valid"] is True

        # one worker holds the signer lease, and it keeps the log covered
        (leader,) = _wait(lambda: _signers(postgres_url), 10, "a worker takes the lease")
        _wait(lambda: _covered(postgres_url), 15, "a checkpoint covers the log")
        assert not list((tmp_path / "data" / "checkpoints").glob("*conflict*"))

        # the signer dies: another worker takes the lease and signs what comes next
        os.kill(int(leader.removeprefix("broker-")), signal.SIGKILL)
        successor = _wait(lambda: [n for n in _signers(postgres_url) if n != leader], 20,
                          "another worker takes the lease")
        assert len(successor) == 1
        r = client.get("/v1/audit/entries", headers=auth(world.auditor))
        assert r.status_code == 200
        _wait(lambda: _covered(postgres_url), 15, "the new signer covers the new entries")


TOWNS = pd.DataFrame({"uscc": [f"E{i}" for i in range(10)],
                      "town": ["A"] * 5 + ["B"] * 4 + ["C"],  # E9 is alone in town C
                      "kwh": [100.0, 101, 102, 103, 104, 105, 106, 107, 108, 137]})


def _total(contract: str, *towns: str) -> dict[str, Any]:
    return {"contract_id": contract, "purpose": "energy-planning",
            "measures": [{"fn": "sum", "field": "kwh"}, {"fn": "count"}],
            "filters": [{"field": "town", "op": "in", "value": list(towns)}]}


def test_a_tracker_split_across_processes_is_caught(tmp_path: Path, env: dict[str, str],
                                                     mint: Mint) -> None:
    with ExitStack() as stack:
        first = stack.enter_context(broker_server(tmp_path, env, log_name="first.log"))
        second = stack.enter_context(broker_server(tmp_path, env, log_name="second.log"))
        one = stack.enter_context(httpx.Client(base_url=first, timeout=60))
        two = stack.enter_context(httpx.Client(base_url=second, timeout=60))
        world = World(one, mint)  # type: ignore[arg-type]
        did = world.add_dataset(TOWNS, [
            {"name": "town", "type": "string", "role": "dimension"},
            {"name": "kwh", "type": "number", "role": "measure"}])
        econ = world.contract_for(did, fields={"town": "clear", "kwh": "aggregate"})
        env_contract = world.contract_for(did, consumer="env",
                                          fields={"town": "clear", "kwh": "aggregate"})
        for client, towns in ((one, ("A", "C")), (two, ("A", "B"))):
            r = client.post("/v1/queries/aggregate", headers=auth(world.econ),
                            json=_total(econ, *towns))
            assert released(r)[0][1] is not None, r.text
        # B alone would give E9 (alone in C) by difference: withheld on either process, and
        # to the other department too
        for client, token, contract in ((two, world.econ, econ), (one, world.econ, econ),
                                        (two, world.env, env_contract)):
            r = client.post("/v1/queries/aggregate", headers=auth(token),
                            json=_total(contract, "B"))
            assert released(r) == [({}, None, "linked")], r.text


def test_the_daily_quota_is_exact_across_two_processes(tmp_path: Path, env: dict[str, str],
                                                        postgres_url: str, mint: Mint) -> None:
    """Each analyst's requests alternate between two processes (routing known, unlike the
    kernel's choice of worker): together they release exactly the quota."""
    with ExitStack() as stack:
        bases = [stack.enter_context(broker_server(tmp_path, env, log_name=f"p{n}.log"))
                 for n in (1, 2)]
        with httpx.Client(base_url=bases[0], timeout=60) as one:
            world = World(one, mint)  # type: ignore[arg-type]
            contract = world.contract_for(world.dataset["id"], max_queries_per_day=QUOTA)
        served: Counter[tuple[int, int]] = Counter()
        lock = threading.Lock()

        def analyst(n: int) -> None:
            token = mint("econ", "consumer", sub=f"analyst{n}@econ")
            for i in range(6):
                process = (n + i) % 2
                with httpx.Client(base_url=bases[process], timeout=60) as own:
                    r = own.post("/v1/queries/aggregate", headers=auth(token), json={
                        "contract_id": contract, "purpose": "energy-planning",
                        "group_by": [["town"], []][i % 2],
                        "measures": [{"fn": "count"}, {"fn": "sum", "field": "kwh"}]})
                with lock:
                    served[(process, r.status_code)] += 1

        threads = [threading.Thread(target=analyst, args=(n,)) for n in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert sum(v for (_, status), v in served.items() if status == 200) == QUOTA, served
    assert sum(v for (_, status), v in served.items() if status == 403) == 72 - QUOTA, served
    assert served[(0, 200)] > 0, served  # both processes released
    assert served[(1, 200)] > 0, served
    assert _sql(postgres_url, """SELECT COUNT(*) FROM audit_entries
                                 WHERE contract_id = :contract AND allowed
                                 AND action = 'query.aggregate'""",
                contract=contract)[0][0] == QUOTA
