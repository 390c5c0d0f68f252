"""The HTTP benchmark's queries: distinct, valid under its contract, and its DuckDB baseline
computes the very cells the broker's plan computes (so its ratio compares the same queries)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from broker.api.schemas.queries import AggregateIn
from broker.demo.county import generate_county, grid_slice
from broker.disclosure.plan import plan_aggregate
from broker.domain.datasets import DatasetSchema, FieldRole, FieldSpec, FieldType
from tests.bench.http import KWH, body, draw_queries, plain_group_by
from tests.unit.tables import released, run_table

COUNTY = generate_county(enterprises=150)
GRID = grid_slice(COUNTY)
SCHEMA = DatasetSchema.of("uscc", [
    FieldSpec(f["name"], FieldType(f["type"]), FieldRole(f["role"]),
              hierarchy=f.get("hierarchy"), codes=tuple(f["codes"]) if "codes" in f else None)
    for f in GRID.meta["fields"]
])
MONTHS = sorted(str(m) for m in COUNTY.monthly["month"].unique())


def test_the_benchmark_queries_are_distinct_and_plan_under_the_schema() -> None:
    shapes = draw_queries(60, MONTHS, seed=16)
    bodies = [body(str(uuid.uuid4()), q) for q in shapes]
    assert len({json.dumps({**b, "contract_id": ""}, sort_keys=True) for b in bodies}) == 60
    for b in bodies:
        plan_aggregate(AggregateIn.model_validate(b).to_domain(), SCHEMA)


@pytest.mark.parametrize("q", draw_queries(6, MONTHS, seed=16))
def test_the_duckdb_baseline_computes_the_cells_of_the_broker_plan(
        q: dict[str, object], tmp_path: Path) -> None:
    spec = AggregateIn.model_validate(body(str(uuid.uuid4()), q)).to_domain()
    plan, table = run_table(GRID.frame, spec, SCHEMA, tmp_path)
    broker = {key: values for key, values in released(plan, table, margins=False).items()
              if values[f"sum_{KWH}"] is not None}
    frame = GRID.frame.assign(month=pd.to_datetime(GRID.frame["month"]).dt.date)
    con = duckdb.connect()
    con.register("grid", frame)
    sql, params = plain_group_by(q)
    rows = con.execute(sql, params).fetchall()
    con.close()
    names = spec.dimensions
    plain = {tuple(sorted(zip(names, row[:len(names)], strict=True))): row[len(names):]
             for row in rows}
    assert plain.keys() == broker.keys()
    for key, figures in plain.items():
        assert figures[0] == pytest.approx(broker[key][f"sum_{KWH}"])
        if q["count"]:
            assert figures[1] == broker[key]["count"]
