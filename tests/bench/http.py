"""Benchmark: varied aggregate queries over real HTTP on loopback, 1 client then N in flight.

Run: .venv/bin/python -m tests.bench.http [--requests 120] [--in-flight 8 16] [--max-seconds 120]

Loads the demo county (the grid company's monthly electricity, 3,000 enterprises x 12 months)
through the API and offers the economic bureau a contract on it. A seeded list of distinct
queries is drawn, all valid under that contract: one or two of town, industry and industry
division, optionally by month or quarter, over a month range and sometimes a group of towns,
the electricity sum with or without the count of firms. No two are the same, so the cache of
identical repeats never answers: every request plans, scans, protects, audits the release and
commits.

Each phase (1 client, then each ``--in-flight`` level, every client a thread with its own
connection taking the next query from the list) runs on a fresh data directory with a fresh
server (uvicorn via ``serve_in_thread``) after the same warm-up queries, and sends the same
queries: each starts from the same history of releases and does the same work, so the phases
differ only in concurrency. Printed per phase: queries/s, p50 and p99 latency; against the
single client: the throughput ratio and p99(N) / p50(1). Beside them, raw DuckDB's plain GROUP
BY of the same queries (the cells only: no margins, no protection) over the same rows, the
stored version decrypted into memory in this process, and the ratio of the broker's single-
client p50 to DuckDB's p50. Every data directory is removed when its phase ends.
"""

from __future__ import annotations

import argparse
import json
import queue
import random
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import duckdb
import httpx
import pyarrow as pa

import broker.services.queries as queries_module
from broker.api.auth import mint_token
from broker.app import create_app
from broker.cli.serving import serve_in_thread
from broker.demo.county import TOWNS, County, generate_county
from broker.demo.story import Broker, set_up
from broker.services.queries import QueryService
from broker.settings import Settings
from broker.store.keys import jwt_secret

KWH = "electricity_kwh"
DIMS = ("town", "industry", "division")
WARM_UP = 5


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def draw_queries(count: int, months: list[str], seed: int) -> list[dict[str, Any]]:
    """``count`` distinct query shapes: dimensions, month level and range, towns, count."""
    rng = random.Random(seed)
    seen: set[str] = set()
    out: list[dict[str, Any]] = []
    while len(out) < count:
        dims = rng.sample(DIMS, rng.choice([1, 1, 2]))
        if "industry" in dims and "division" in dims:
            dims.remove("division")
        level = rng.choice([None, None, "month", "quarter"])
        first = rng.randrange(len(months))
        last = rng.randrange(first, len(months))
        towns = (sorted(rng.sample(list(TOWNS), rng.randint(3, len(TOWNS) - 1)))
                 if rng.random() < 0.4 else None)
        q = {"dims": dims, "level": level, "months": [months[first], months[last]],
             "towns": towns, "count": rng.random() < 0.5}
        key = json.dumps(q, sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append(q)
    return out


def body(contract_id: str, q: dict[str, Any]) -> dict[str, Any]:
    """The request body of query shape ``q``."""
    group: list[Any] = [{"field": "industry", "level": "division"} if d == "division" else d
                        for d in q["dims"]]
    if q["level"] is not None:
        group.append({"field": "month", "level": q["level"]})
    filters: list[dict[str, Any]] = [{"field": "month", "op": "range", "value": q["months"]}]
    if q["towns"] is not None:
        filters.append({"field": "town", "op": "in", "value": q["towns"]})
    measures: list[dict[str, Any]] = [{"fn": "sum", "field": KWH}]
    if q["count"]:
        measures.append({"fn": "count"})
    return {"contract_id": contract_id, "purpose": "energy-planning", "group_by": group,
            "measures": measures, "filters": filters}


def plain_group_by(q: dict[str, Any]) -> tuple[str, list[Any]]:
    """DuckDB's plain GROUP BY of query shape ``q`` over the table ``grid``: the same cells
    (no margins, no protection), keys computed as the broker computes them; the key columns
    first, then the sum and, if asked, the count of distinct enterprises."""
    keys = ["substr(industry, 1, 3)" if d == "division" else d for d in q["dims"]]
    if q["level"] == "month":
        keys.append("strftime(month, '%Y-%m')")
    elif q["level"] == "quarter":
        keys.append("strftime(month, '%Y') || '-Q' || CAST(quarter(month) AS VARCHAR)")
    where = "month BETWEEN CAST(? AS DATE) AND CAST(? AS DATE)"
    params: list[Any] = list(q["months"])
    if q["towns"] is not None:
        where += " AND town IN (" + ", ".join("?" * len(q["towns"])) + ")"
        params += q["towns"]
    select = ", ".join(keys)
    count = ", count(DISTINCT uscc)" if q["count"] else ""
    # names come from this script's fixed lists; values are parameters
    return (f"SELECT {select}, sum({KWH}){count} FROM grid "  # noqa: S608
            f"WHERE {where} GROUP BY {select}"), params


def duckdb_seconds(con: duckdb.DuckDBPyConnection, q: dict[str, Any]) -> float:
    """Seconds for DuckDB's plain GROUP BY of ``q`` over the rows in memory, to an Arrow
    result, called as the broker's engine calls it (a cursor, bound parameters)."""
    sql, params = plain_group_by(q)
    cursor = con.cursor()
    try:
        t = time.perf_counter()
        cursor.sql(sql, params=params).to_arrow_table()
        return time.perf_counter() - t
    finally:
        cursor.close()


@contextmanager
def timing_steps() -> Iterator[dict[str, list[float]]]:
    """Seconds per call, in the server (same process), of the release commit (the audit head
    lock taken, the decision again, the release audit, the append and the commit: with one
    client, the critical section) and of the release audit (``link``) inside it."""
    spent: dict[str, list[float]] = {"commit": [], "link": []}

    def timed(inner: Callable[..., Any], into: list[float]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                into.append(time.perf_counter() - t)
        return wrapper

    commit = QueryService._commit_release
    link = vars(queries_module)["link"]
    QueryService._commit_release = timed(commit, spent["commit"])  # type: ignore[method-assign]
    vars(queries_module)["link"] = timed(link, spent["link"])
    try:
        yield spent
    finally:
        QueryService._commit_release = commit  # type: ignore[method-assign]
        vars(queries_module)["link"] = link


@dataclass(frozen=True, slots=True)
class Phase:
    """One concurrency level's figures."""

    in_flight: int
    latencies: list[float]
    wall: float
    withheld: int
    cells: int
    commit: float  # mean seconds per query in the release commit (lock wait included)
    link: float  # mean seconds per query in the release audit

    @property
    def rate(self) -> float:
        """Queries answered per second."""
        return len(self.latencies) / self.wall


@dataclass(frozen=True, slots=True)
class Served:
    """The demo county served on loopback, with the economic bureau's contract on it."""

    base: str
    client: httpx.Client
    contract: str
    headers: dict[str, str]
    rows: Callable[[], pa.Table]  # the electricity rows, decrypted in memory only
    mint: Callable[[str, str, list[str]], str]  # (sub, org, roles) -> a token


@contextmanager
def served_county(county: County, *, timeout: float = 120,
                  **overrides: Any) -> Iterator[Served]:
    """A fresh broker on a throw-away data directory (removed at the end) with ``county``
    loaded through the API and the bureau's contract on its electricity offered and accepted.

    The per-principal limits are off unless ``overrides`` (settings) set them: every client
    here is the same principal, and these benchmarks measure the query path, not the limiter
    (``tests.bench.limits`` does)."""
    workdir = Path(tempfile.mkdtemp(prefix="broker-http-bench-"))
    try:
        settings = Settings(data_dir=workdir, **{"rate_limit": "",
                                                 "max_concurrent_per_principal": 1024,
                                                 **overrides})
        app = create_app(settings)
        with serve_in_thread(app) as base, httpx.Client(base_url=base,
                                                        timeout=timeout) as client:
            secret = jwt_secret(settings)

            def mint(sub: str, org: str, roles: list[str]) -> str:
                return mint_token(key=secret, issuer=settings.jwt_issuer,
                                  audience=settings.jwt_audience, sub=sub, org=org, roles=roles)

            broker = Broker(client, mint)
            story = set_up(broker, county)
            dataset = story.datasets["electricity"]["id"]
            terms = {"dataset_id": dataset, "consumer_org": "economic-bureau",
                     "purposes": ["energy-planning"],
                     "fields": {"town": "clear", "industry": "clear", "month": "clear",
                                KWH: "aggregate"},
                     "k_min": 5, "max_queries_per_day": 1_000_000,
                     "valid_until": "2100-01-01T00:00:00Z"}
            contract = broker.call("grid", "POST", "/v1/contracts", expect=201,
                                   json=terms).json()["id"]
            broker.call("econ", "POST", f"/v1/contracts/{contract}/accept", expect=200)
            container = app.state.container

            def rows() -> pa.Table:
                with container.datasets.uow() as uow:
                    location = uow.datasets.version_path(dataset, 1)
                return container.datasets.storage.read(location)

            yield Served(base, client, contract,
                         {"Authorization": f"Bearer {broker.tokens['econ']}"}, rows, mint)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def run_phase(county: County, shapes: list[dict[str, Any]], warm_up: list[dict[str, Any]],
              in_flight: int, max_seconds: float) -> tuple[Phase, pa.Table]:
    """A fresh broker, the warm-up queries, then ``shapes`` with ``in_flight`` clients; the
    figures and the electricity rows decrypted from the store."""
    with served_county(county) as served:
        for q in warm_up:
            served.client.post("/v1/queries/aggregate", json=body(served.contract, q),
                               headers=served.headers).raise_for_status()
        with timing_steps() as spent:
            sent = _send(served.base, served.headers,
                         [body(served.contract, q) for q in shapes], in_flight, max_seconds)
        phase = replace(sent, commit=statistics.fmean(spent["commit"]),
                        link=statistics.fmean(spent["link"] or [0.0]))
        return phase, served.rows()


def _send(base: str, headers: dict[str, str], bodies: list[dict[str, Any]], in_flight: int,
          max_seconds: float) -> Phase:
    """Send ``bodies`` with ``in_flight`` clients, each taking the next; stop taking new ones
    after ``max_seconds``."""
    todo: queue.Queue[dict[str, Any]] = queue.Queue()
    for b in bodies:
        todo.put(b)
    latencies: list[float] = []
    counts = [0, 0]
    lock = threading.Lock()
    failures: list[BaseException] = []
    deadline = time.perf_counter() + max_seconds

    def client() -> None:
        with httpx.Client(base_url=base, timeout=120) as own:
            while time.perf_counter() < deadline:
                try:
                    b = todo.get_nowait()
                except queue.Empty:
                    return
                t = time.perf_counter()
                try:
                    response = own.post("/v1/queries/aggregate", json=b, headers=headers)
                    response.raise_for_status()
                except BaseException as exc:
                    failures.append(exc)
                    return
                spent = time.perf_counter() - t
                cells = response.json()["cells"]
                with lock:
                    latencies.append(spent)
                    counts[0] += sum(c["status"] != "published" for c in cells)
                    counts[1] += len(cells)

    threads = [threading.Thread(target=client) for _ in range(in_flight)]
    start = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - start
    if failures:
        raise failures[0]
    return Phase(in_flight, latencies, wall, counts[0], counts[1], 0.0, 0.0)


def main() -> None:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=120, help="timed queries per phase")
    parser.add_argument("--in-flight", type=int, nargs="+", default=[8],
                        help="concurrency levels after the single client (e.g. 8 16)")
    parser.add_argument("--enterprises", type=int, default=3000)
    parser.add_argument("--max-seconds", type=float, default=120,
                        help="per phase: stop sending new queries after this long")
    parser.add_argument("--seed", type=int, default=16)
    args = parser.parse_args()
    county = generate_county(enterprises=args.enterprises)
    months = sorted(str(m) for m in county.monthly["month"].unique())
    drawn = draw_queries(args.requests + WARM_UP, months, args.seed)
    warm_up, shapes = drawn[:WARM_UP], drawn[WARM_UP:]

    phases: list[Phase] = []
    rows: pa.Table | None = None
    for in_flight in [1, *args.in_flight]:
        phase, rows = run_phase(county, shapes, warm_up, in_flight, args.max_seconds)
        phases.append(phase)
    assert rows is not None

    con = duckdb.connect(":memory:", config={"threads": 2})
    con.register("grid_arrow", rows)
    con.execute("CREATE TABLE grid AS SELECT * FROM grid_arrow")  # DuckDB's own, in memory
    con.unregister("grid_arrow")
    for q in warm_up:
        duckdb_seconds(con, q)
    raw = [duckdb_seconds(con, q) for q in shapes]
    con.close()

    one = phases[0]
    p50_one = _percentile(one.latencies, 0.5)
    raw_p50 = statistics.median(raw)
    print(f"# {rows.num_rows:,} rows; {len(shapes)} distinct queries per phase, each phase on a "
          f"fresh broker after the same {WARM_UP} warm-up queries")
    print(f"{'clients':>8} {'queries':>8} {'queries/s':>10} {'p50 ms':>8} {'p99 ms':>8}"
          f" {'x 1-client q/s':>15} {'p99 / p50(1)':>13} {'commit ms':>10} {'link ms':>8}"
          f" {'withheld':>10}")
    for p in phases:
        print(f"{p.in_flight:>8} {len(p.latencies):>8} {p.rate:>10.1f}"
              f" {_percentile(p.latencies, 0.5) * 1e3:>8.1f}"
              f" {_percentile(p.latencies, 0.99) * 1e3:>8.1f}"
              f" {p.rate / one.rate:>14.2f}x {_percentile(p.latencies, 0.99) / p50_one:>12.2f}x"
              f" {p.commit * 1e3:>10.1f} {p.link * 1e3:>8.1f} {p.withheld:>5}/{p.cells}")
    print(f"commit = mean time per query in the release commit, under the audit head lock (with"
          f" N clients, waiting for it included): with one client {one.commit * 1e3:.0f} ms of"
          f" a {statistics.fmean(one.latencies) * 1e3:.0f} ms mean query, so at most"
          f" {1 / one.commit:.1f} queries/s however many are in flight; link = the release"
          " audit, inside it")
    print(f"DuckDB plain GROUP BY of the same queries, same rows in memory: p50 "
          f"{raw_p50 * 1e3:.2f} ms, p99 {_percentile(raw, 0.99) * 1e3:.2f} ms; "
          f"broker p50 (1 client) / DuckDB p50: {p50_one / raw_p50:.1f}x")
    print("targets (issue 16): 8 in flight >= 1.6x the 1-client q/s; p99(8) <= 4x p50(1); "
          "per query <= 10x DuckDB")


if __name__ == "__main__":
    main()
