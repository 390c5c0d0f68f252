"""Benchmark: what exact and ordered sums cost against DuckDB summing the same column as DOUBLE.

Run: .venv/bin/python -m tests.bench.exact [--rows 1000000] [--repeat 3]

One in-memory table (``--rows`` rows, 50,000 enterprises, 10 towns, values of mixed
magnitudes; the same numbers as a DOUBLE column and as DECIMAL(38, 2)) and, from one run,
medians over the repeats of, grouped by town:

- ``SUM(x)`` over the DOUBLE column: the baseline (order-dependent in its last digits);
- ``fsum(x ORDER BY x)``: what a number without a declared scale now costs;
- ``SUM(d)`` over DECIMAL(38, 2): what a number with ``"scale": 2`` costs (exact);

and the whole planned cell query (``plan_aggregate``: per enterprise, every margin, the cell
statistics) for a sum by town of the undeclared field against the same SQL with its ordered
sums replaced by plain ones, and of the scaled field. Ratios are against the baseline of the
same run. Nothing is written to disk.
"""

from __future__ import annotations

import argparse
import re
import statistics
import time
from collections.abc import Callable

import duckdb
import numpy as np
import pyarrow as pa

from broker.disclosure.plan import SOURCE, plan_aggregate
from broker.domain.datasets import (
    ATOM_COLUMN,
    ENTITY_INDEX_COLUMN,
    DatasetSchema,
    FieldRole,
    FieldSpec,
    FieldType,
)
from broker.domain.queries import AggregateSpec, Dimension, Measure, MeasureFn

ENTERPRISES = 50_000


def _cents(cents: np.ndarray) -> pa.Array:
    """Whole cents as DECIMAL(38, 2): the unscaled 128-bit integers, little-endian (all
    positive here, so the high words are zero)."""
    words = np.stack([cents.astype("<i8"), np.zeros(len(cents), "<i8")], axis=1)
    return pa.Array.from_buffers(pa.decimal128(38, 2), len(cents),
                                 [None, pa.py_buffer(words.tobytes())])


def _table(rows: int) -> pa.Table:
    rng = np.random.default_rng(19)
    cents = np.where(rng.random(rows) < 0.5, rng.integers(1, 100, rows),
                     rng.integers(1, 10**11, rows))
    entity = rng.integers(0, ENTERPRISES, rows)
    return pa.table({
        "e": pa.array([f"E{i}" for i in range(ENTERPRISES)])
        .take(pa.array(entity)),
        "town": pa.array([f"T{i}" for i in range(10)]).take(pa.array(entity % 10)),
        "x": pa.array(cents / 100.0),
        "d": _cents(cents),
        ENTITY_INDEX_COLUMN: pa.array(entity, pa.uint32()),
        ATOM_COLUMN: pa.array(np.arange(rows), pa.int64()),
    })


def _median(run: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    """Print the timings and ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    table = _table(args.rows)
    db = duckdb.connect(":memory:", config={"threads": 2})
    db.register(SOURCE, table)

    def query(sql: str, params: tuple[object, ...] = ()) -> Callable[[], object]:
        return lambda: db.execute(sql, list(params)).fetchall()

    grouped = "SELECT town, {} FROM src GROUP BY town"
    base = _median(query(grouped.format("SUM(x)")), args.repeat)
    print(f"rows {args.rows:,}, 2 threads, medians of {args.repeat}")
    print(f"column  SUM(x) DOUBLE            {base * 1000:8.1f} ms  1.00")
    for label, expression in (("fsum(x ORDER BY x)      ", "fsum(x ORDER BY x)"),
                              ("SUM(d) DECIMAL(38, 2)   ", "SUM(d)")):
        took = _median(query(grouped.format(expression)), args.repeat)
        print(f"column  {label} {took * 1000:8.1f} ms  {took / base:.2f}")
    schema = DatasetSchema.of("e", [
        FieldSpec("e", FieldType.STRING, FieldRole.ENTITY),
        FieldSpec("town", FieldType.STRING, FieldRole.DIMENSION),
        FieldSpec("x", FieldType.NUMBER, FieldRole.MEASURE),
        FieldSpec("d", FieldType.NUMBER, FieldRole.MEASURE, scale=2)])
    plans = {name: plan_aggregate(AggregateSpec(
        "c", "p", (Dimension("town"),), (Measure(MeasureFn.COUNT), Measure(MeasureFn.SUM, name))),
        schema) for name in ("x", "d")}
    plain = re.sub(r"fsum\((.+?) ORDER BY \1\)", r"SUM(\1)", plans["x"].sql)
    base = _median(query(plain, plans["x"].params), args.repeat)
    print(f"plan    plain SUM over DOUBLE     {base * 1000:8.1f} ms  1.00")
    for label, name in (("ordered fsum, no scale  ", "x"), ("exact DECIMAL, scale 2  ", "d")):
        took = _median(query(plans[name].sql, plans[name].params), args.repeat)
        print(f"plan    {label} {took * 1000:8.1f} ms  {took / base:.2f}")


if __name__ == "__main__":
    main()
