"""Cost of the release audit at county scale: 3,000 enterprises x 36 months, 20,000 cells
already published, through the query service.

A department asks varied tables (towns, industries, divisions, size bands, by month, quarter
or year, over year ranges and groups of towns, sums with or without counts) until at least
``--published`` cells are out; then it asks ``--measured`` more. For each of those the script
times the release audit (exact and interval checks, ``broker.disclosure.linking.link``) and,
beside it, DuckDB's plain GROUP BY of the same query over the same rows in memory. It prints
the medians and 90th percentiles, the share of the audit in the query, the cells withheld as
``linked``, and the process's peak memory. The data stays sealed on disk; the temporary
directory is removed at the end.

    .venv/bin/python -m tests.bench.release_cost [--enterprises 3000] [--published 20000]
"""

from __future__ import annotations

import argparse
import random
import resource
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

import broker.services.queries as queries_module
from broker.app import build_container
from broker.demo.county import TOWNS, generate_county
from broker.domain.principals import Role
from broker.domain.queries import (
    AggregateSpec,
    CellStatus,
    Dimension,
    Filter,
    FilterOp,
    Measure,
    MeasureFn,
)
from broker.settings import Settings
from contracts.model import FieldForm
from tests.bench.release_utility import (
    KWH,
    OUT,
    SIZE_BANDS,
    TAX,
    _ctx,
    dataset_contract,
    registered,
)

DIMS = ["town", "industry", "division", "size"]
LEVELS = ["month", "quarter", "year"]


def _frame(enterprises: int) -> pd.DataFrame:
    county = generate_county(enterprises=enterprises, months=36)
    firms = county.enterprises[["uscc", "town", "industry", "employees"]]
    return county.monthly.merge(firms, on="uscc")[
        ["uscc", "town", "industry", "employees", "month", KWH, OUT, TAX]]


def _dimension(name: str) -> Dimension:
    if name == "division":
        return Dimension("industry", level="division")
    if name == "size":
        return Dimension("employees", bins=SIZE_BANDS)
    return Dimension(name)


def _random_query(rng: random.Random, months: list[str]) -> dict[str, Any]:
    dims = rng.sample(DIMS, rng.choice([1, 1, 2]))
    if "industry" in dims and "division" in dims:
        dims.remove("division")
    level = rng.choice([*LEVELS, None])
    first = rng.randrange(0, len(months), 12)
    last = min(len(months) - 1, first + rng.choice([11, 23, 35]))
    towns = rng.sample(list(TOWNS), rng.randint(3, len(TOWNS))) if rng.random() < 0.4 else None
    measure = rng.choice([KWH, OUT])
    return {"dims": dims, "level": level, "months": (months[first], months[last]),
            "towns": towns, "measure": measure, "count": rng.random() < 0.5}


def _spec(contract_id: str, q: dict[str, Any]) -> AggregateSpec:
    group = [_dimension(d) for d in q["dims"]]
    if q["level"] is not None:
        group.append(Dimension("month", level=q["level"]))
    filters = [Filter("month", FilterOp.RANGE, list(q["months"]))]
    if q["towns"] is not None:
        filters.append(Filter("town", FilterOp.IN, list(q["towns"])))
    measures = [Measure(MeasureFn.SUM, q["measure"])]
    if q["count"]:
        measures.append(Measure(MeasureFn.COUNT))
    return AggregateSpec(contract_id, "energy-planning", tuple(group), tuple(measures),
                         tuple(filters), totals=True)


def _duckdb_seconds(con: duckdb.DuckDBPyConnection, q: dict[str, Any]) -> float:
    """DuckDB's own GROUP BY of the same cells (no margins) over the rows in memory."""
    keys = []
    for d in q["dims"]:
        keys.append({"division": "substr(industry, 1, 3)",
                     "size": "CASE WHEN employees < 10 THEN 0 WHEN employees < 50 THEN 1 "
                             "WHEN employees < 200 THEN 2 ELSE 3 END"}.get(d, d))
    if q["level"] is not None:
        keys.append(f"date_trunc('{q['level']}', CAST(month AS DATE))")
    where = "CAST(month AS DATE) BETWEEN CAST(? AS DATE) AND CAST(? AS DATE)"
    params: list[Any] = list(q["months"])
    if q["towns"] is not None:
        where += " AND town IN (" + ",".join("?" * len(q["towns"])) + ")"
        params += list(q["towns"])
    select = ", ".join(keys) or "1"
    # the names come from this script's fixed lists, the values are parameters
    sql = (f"SELECT {select}, sum({q['measure']}), count(DISTINCT uscc) FROM frame "  # noqa: S608
           f"WHERE {where} GROUP BY {select}")
    t = time.perf_counter()
    con.execute(sql, params).fetchall()
    return time.perf_counter() - t


def main() -> None:
    """Publish the history, then time the audit of further queries."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--enterprises", type=int, default=3000)
    parser.add_argument("--published", type=int, default=20_000)
    parser.add_argument("--measured", type=int, default=40)
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="broker-cost-"))
    try:
        _run(workdir, _frame(args.enterprises), args)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _timed(spent: list[float]) -> Callable[..., Any]:
    inner = vars(queries_module)["link"]  # the name the query service calls

    def link(*a: Any, **kw: Any) -> Any:
        t = time.perf_counter()
        try:
            return inner(*a, **kw)
        finally:
            spent.append(time.perf_counter() - t)
    return link


def _run(workdir: Path, frame: pd.DataFrame, args: argparse.Namespace) -> None:
    container = build_container(Settings(data_dir=workdir))
    registered(container)
    econ = _ctx("econ", Role.CONSUMER)
    contract_id = dataset_contract(container, frame, month=FieldForm.CLEAR,
                                   queries_per_day=100_000)
    spent: list[float] = []
    vars(queries_module)["link"] = _timed(spent)
    con = duckdb.connect()
    con.register("frame", frame)
    months = sorted(frame["month"].astype(str).unique())
    rng = random.Random(args.seed)
    published = asked = 0
    started = time.perf_counter()
    while published < args.published:
        release = container.queries.aggregate(econ, _spec(contract_id,
                                                          _random_query(rng, months)))
        published += sum(c.status is CellStatus.PUBLISHED for c in release.cells)
        asked += 1
        if asked % 10 == 0:
            recent = spent[-10:]
            print(f"  history: {asked} queries, {published:,} cells published, "
                  f"{time.perf_counter() - started:.0f} s; audit of the last ten: "
                  f"median {statistics.median(recent) * 1000:.0f} ms, "
                  f"max {max(recent) * 1000:.0f} ms", flush=True)
    print(f"{len(frame):,} rows ({args.enterprises:,} enterprises x 36 months); "
          f"history: {published:,} cells published by {asked} queries in "
          f"{time.perf_counter() - started:.0f} s")
    spent.clear()
    audit, total, raw, linked, cells = [], [], [], 0, 0
    for _ in range(args.measured):
        q = _random_query(rng, months)
        t = time.perf_counter()
        release = container.queries.aggregate(econ, _spec(contract_id, q))
        total.append(time.perf_counter() - t)
        audit.append(spent[-1] if spent else 0.0)
        spent.clear()
        raw.append(_duckdb_seconds(con, q))
        linked += release.suppressed.get("linked", 0)
        cells += len(release.cells)

    def ms(xs: list[float], p: float) -> float:
        return statistics.quantiles(xs, n=100)[int(p) - 1] * 1000 if p != 50 else \
            statistics.median(xs) * 1000

    print(f"{'':>24} {'p50 ms':>8} {'p90 ms':>8}")
    for name, xs in (("release audit", audit), ("whole query", total),
                     ("DuckDB GROUP BY", raw)):
        print(f"{name:>24} {ms(xs, 50):8.1f} {ms(xs, 90):8.1f}")
    print(f"audit / DuckDB (p50): {statistics.median(audit) / statistics.median(raw):.1f}x; "
          f"audit share of the query (p50): "
          f"{statistics.median([a / t for a, t in zip(audit, total, strict=True)]):.0%}")
    print(f"measured queries: {cells:,} cells, {linked} withheld as linked")
    print(f"peak memory of the process: "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    container.query_engine.close()
    container.engine.dispose()


if __name__ == "__main__":
    main()
