"""Benchmark: throughput of ``broker serve`` with 1 and 2 workers on PostgreSQL, same load.

Run: .venv/bin/python -m tests.bench.workers [--clients 8] [--seconds 20] [--postgres URL]

A throwaway PostgreSQL server (tests/postgres.py) unless ``--postgres`` names one. For each
worker count, a fresh database and data directory get the demo county (four providers, 3,000
enterprises, 12 months) and a contract with a large daily quota; then ``--clients`` threads,
each an analyst of its own with its own connections, send a varied load for ``--seconds``:

- 40% aggregate queries with a random town filter and grouping (mostly new computations, each
  protected, audited against everything released and entered in the release ledger);
- 20% a repeat of an earlier query (the answer cache);
- 20% dry runs (``/v1/policy/explain``);
- 10% audit log pages as the auditor; 10% the dataset catalogue.

Then the same clients send only reads for ``--seconds`` (the last three kinds, no release).
Printed: requests per second and latency percentiles for each worker count and mix, and the
ratios. Every release holds the audit head lock (one row, shared by all processes) while its
release audit runs, so releases are serialised whatever the number of workers; reads are not.
The raw baseline in the same run: DuckDB answering the same aggregations (GROUP BY over the
same rows, held in memory, never written) from 1 and from 2 processes, the most a broker that
did nothing but run the engine could reach on this machine. The load generator shares the
machine's cores with the servers, as the figures say.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import shutil
import statistics
import tempfile
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from broker.cli.token import minter
from broker.demo.county import generate_county, grid_slice
from broker.demo.story import ACTORS, Broker, set_up
from broker.settings import Settings
from tests.bench.migrate import _databases
from tests.postgres import start_server
from tests.server import broker_server

SECRET = "bench-secret-that-is-long-enough-for-hmac-0123456789"
TOWNS: list[str] = sorted(grid_slice(generate_county()).frame["town"].unique())


def _prepare(base: str, settings: Settings) -> tuple[str, dict[str, str]]:
    """The demo county, and a contract with room for the load; (contract id, tokens)."""
    with httpx.Client(base_url=base, timeout=300) as client:
        broker = Broker(client, minter(settings, ttl=7200))
        result = set_up(broker)
        now = datetime.now(UTC)
        terms = {"dataset_id": result.datasets["electricity"]["id"],
                 "consumer_org": "economic-bureau", "purposes": ["energy-planning"],
                 "fields": {"town": "clear", "industry": "clear", "month": "clear",
                            "electricity_kwh": "aggregate"},
                 "k_min": 5, "max_queries_per_day": 1_000_000,
                 "valid_from": (now - timedelta(minutes=1)).isoformat(),
                 "valid_until": (now + timedelta(days=1)).isoformat()}
        offered = broker.call("grid", "POST", "/v1/contracts", expect=201, json=terms).json()
        for path in (f"/v1/contracts/{offered['id']}/accept",):
            broker.call("econ", "POST", path, expect=200)
        return offered["id"], broker.tokens


def _query(contract: str, rng: random.Random) -> dict[str, Any]:
    towns = rng.sample(TOWNS, rng.randint(2, len(TOWNS)))
    return {"contract_id": contract, "purpose": "energy-planning",
            "group_by": rng.choice([[], ["month"], ["industry"]]),
            "measures": [{"fn": "count"}, {"fn": "sum", "field": "electricity_kwh"}],
            "filters": [{"field": "town", "op": "in", "value": towns}]}


def _load(base: str, contract: str, tokens: dict[str, str], settings: Settings,
          clients: int, seconds: float, *, reads: bool = False
          ) -> tuple[int, list[float], Counter[int]]:
    mint = minter(settings, ttl=7200)
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def client(n: int) -> None:
        rng = random.Random(n)
        sub, org, roles = ACTORS["econ"]
        token = mint(f"bench{n}-{sub}", org, roles)
        auditor = tokens["auditor"]
        asked: list[dict[str, Any]] = []
        with httpx.Client(base_url=base, timeout=120) as http:
            while time.monotonic() < stop:
                # reads only: dry runs, audit pages and the catalogue, no release
                roll = 0.6 + 0.4 * rng.random() if reads else rng.random()
                request: tuple[str, str, str, dict[str, Any] | None]
                if roll < 0.4 or (roll < 0.6 and not asked):
                    body = _query(contract, rng)
                    asked.append(body)
                    request = ("POST", "/v1/queries/aggregate", token, body)
                elif roll < 0.6:
                    request = ("POST", "/v1/queries/aggregate", token, rng.choice(asked))
                elif roll < 0.8:
                    request = ("POST", "/v1/policy/explain", token, _query(contract, rng))
                elif roll < 0.9:
                    request = ("GET", "/v1/audit/entries?limit=50", auditor, None)
                else:
                    request = ("GET", "/v1/datasets", token, None)
                method, path, bearer, payload = request
                started = time.perf_counter()
                r = http.request(method, path, json=payload,
                                 headers={"Authorization": f"Bearer {bearer}"})
                elapsed = time.perf_counter() - started
                with lock:
                    latencies.append(elapsed)
                    statuses[r.status_code] += 1

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return len(latencies), latencies, statuses


def _raw_worker(queries: list[tuple[str, list[str]]], seconds: float, out: Any) -> None:
    import duckdb
    import pyarrow as pa

    frame = grid_slice(generate_county()).frame
    grid = pa.Table.from_pandas(frame)  # noqa: F841  (scanned by name below)
    conn = duckdb.connect()
    conn.execute("SET threads = 1")
    done, stop = 0, time.monotonic() + seconds
    while time.monotonic() < stop:
        sql, towns = queries[done % len(queries)]
        conn.execute(sql, [towns]).fetchall()
        done += 1
    out.put(done)


def _raw(processes: int, seconds: float) -> float:
    rng = random.Random(7)
    queries: list[tuple[str, list[str]]] = []
    for _ in range(50):
        towns = rng.sample(TOWNS, rng.randint(2, len(TOWNS)))
        group = rng.choice(["", "month", "industry"])
        by = f"{group}, " if group else ""
        grouping = f"GROUP BY {group}" if group else ""
        queries.append((f"SELECT {by}COUNT(DISTINCT uscc), SUM(electricity_kwh) FROM "  # noqa: S608
                        f"(SELECT * FROM grid WHERE list_contains(?, town)) {grouping}", towns))
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_raw_worker, args=(queries, seconds, out))
             for _ in range(processes)]
    for p in procs:
        p.start()
    total: int = sum(out.get(timeout=seconds + 120) for _ in procs)
    for p in procs:
        p.join()
    return total / seconds


def _percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] * 1000


def main() -> None:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--postgres", help="a PostgreSQL URL whose server may host scratch "
                                           "databases (default: start a throwaway server)")
    args = parser.parse_args()
    server = None if args.postgres else start_server()
    admin = args.postgres or (server.url() if server else "")
    workdir = Path(tempfile.mkdtemp(prefix="broker-bench-workers-"))
    results: dict[tuple[int, str], float] = {}
    try:
        for workers in (1, 2):
            with _databases(admin, f"bench_workers_{workers}_{os.getpid()}") as (url,):
                data = workdir / f"data{workers}"
                env = {"BROKER_DATA_DIR": str(data), "BROKER_DATABASE_URL": url,
                       "BROKER_JWT_SECRET": SECRET, "BROKER_RATE_LIMIT": "100000/minute",
                       "BROKER_MAX_CONCURRENT_PER_ORG": "64"}
                settings = Settings(data_dir=data, database_url=url,
                                    jwt_secret=SECRET)  # type: ignore[arg-type]
                with broker_server(workdir, env, args=["--workers", str(workers)],
                                   log_name=f"server{workers}.log") as base:
                    contract, tokens = _prepare(base, settings)
                    for mix in ("varied", "reads"):
                        count, latencies, statuses = _load(
                            base, contract, tokens, settings, args.clients, args.seconds,
                            reads=mix == "reads")
                        rate = count / args.seconds
                        results[(workers, mix)] = rate
                        print(f"{workers} worker(s), {mix:6}: {rate:7.1f} req/s  p50 "
                              f"{_percentile(latencies, 50):6.1f} ms  p95 "
                              f"{_percentile(latencies, 95):6.1f} ms  p99 "
                              f"{_percentile(latencies, 99):6.1f} ms  statuses "
                              f"{json.dumps(dict(sorted(statuses.items())))}")
        for mix in ("varied", "reads"):
            print(f"2 workers / 1 worker, {mix}: {results[(2, mix)] / results[(1, mix)]:.2f}x "
                  f"({os.cpu_count()} cores, load generator included)")
        raw1, raw2 = _raw(1, args.seconds / 2), _raw(2, args.seconds / 2)
        print(f"raw DuckDB, same aggregations in memory: 1 process {raw1:7.1f} q/s, "
              f"2 processes {raw2:7.1f} q/s ({raw2 / raw1:.2f}x)")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
