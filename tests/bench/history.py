"""Benchmark: the cost of one query as the history of releases grows, over real HTTP.

Run: .venv/bin/python -m tests.bench.history [--releases 10000] [--at 100 1000 3000 10000]
     [--window 40] [--max-minutes 30]

The demo county's electricity (3,000 enterprises x 12 months) is loaded through the API and the
economic bureau gets a contract on it, as in ``tests.bench.http``. One client then sends
distinct varied queries (``tests.bench.http.draw_queries``: no answer comes from the cache of
identical repeats) one after another, each a full release: policy decision, scan, protection,
the release audit against everything published before, the audit entry, the ledgers, the
commit. When the history reaches each ``--at`` size, the next ``--window`` queries are timed,
and beside them DuckDB's plain GROUP BY of the same queries over the same rows in memory; the
script prints both medians and their ratio (the issue-16 target is at most 10x, and flat as
the history grows), the median release audit inside the broker's figure, and how many cells
the audit withheld as ``linked``. It stops early once ``--max-minutes`` have passed, printing
what it reached. The data directory is removed at the end.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import duckdb

from broker.demo.county import generate_county
from tests.bench.http import (
    Served,
    body,
    draw_queries,
    duckdb_seconds,
    served_county,
    timing_steps,
)


def main() -> None:
    """Grow the history and time windows of queries at each size."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--releases", type=int, default=10_000)
    parser.add_argument("--at", type=int, nargs="+", default=[100, 1000, 3000, 10_000])
    parser.add_argument("--window", type=int, default=40)
    parser.add_argument("--max-minutes", type=float, default=30.0)
    parser.add_argument("--enterprises", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=17)
    args = parser.parse_args()
    county = generate_county(enterprises=args.enterprises)
    months = sorted(str(m) for m in county.monthly["month"].unique())
    shapes = draw_queries(args.releases + args.window * len(args.at), months, args.seed)
    with served_county(county, timeout=300) as served:
        _run(served, county.monthly.shape[0], shapes, args)


def _run(served: Served, rows: int, shapes: list[dict[str, Any]],
         args: argparse.Namespace) -> None:
    deadline = time.perf_counter() + args.max_minutes * 60
    con = duckdb.connect(":memory:", config={"threads": 2})
    con.register("grid_arrow", served.rows())
    con.execute("CREATE TABLE grid AS SELECT * FROM grid_arrow")  # in memory only
    con.unregister("grid_arrow")

    def ask(q: dict[str, Any]) -> tuple[float, int]:
        t = time.perf_counter()
        response = served.client.post("/v1/queries/aggregate",
                                      json=body(served.contract, q), headers=served.headers)
        response.raise_for_status()
        spent = time.perf_counter() - t
        return spent, sum(c.get("reason") == "linked" for c in response.json()["cells"])

    print(f"# {rows:,} rows; one client; distinct varied queries; windows of {args.window}")
    print(f"{'history':>8} {'broker p50 ms':>14} {'audit p50 ms':>13} {'DuckDB p50 ms':>14}"
          f" {'ratio':>7} {'linked':>7} {'elapsed s':>10}")
    started, sent, position = time.perf_counter(), 0, 0
    for size in sorted(args.at):
        while sent < size and time.perf_counter() < deadline:
            ask(shapes[position])
            sent, position = sent + 1, position + 1
        if sent < size:
            print(f"# stopped after {args.max_minutes:g} minutes at {sent:,} releases")
            break
        window = shapes[position:position + args.window]
        position += len(window)
        with timing_steps() as spent:
            timed = [ask(q) for q in window]
        sent += len(window)
        broker_p50 = statistics.median(t for t, _ in timed)
        raw_p50 = statistics.median(duckdb_seconds(con, q) for q in window)
        audit_p50 = statistics.median(spent["link"] or [0.0])
        print(f"{size:>8,} {broker_p50 * 1e3:>14.1f} {audit_p50 * 1e3:>13.1f}"
              f" {raw_p50 * 1e3:>14.2f} {broker_p50 / raw_p50:>6.1f}x"
              f" {sum(n for _, n in timed):>7} {time.perf_counter() - started:>10.0f}",
              flush=True)
    con.close()


if __name__ == "__main__":
    main()
