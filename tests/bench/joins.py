"""Benchmark: a cross-source aggregate against DuckDB joining the same data in plaintext.

Run: .venv/bin/python -m tests.bench.joins [--rows 1000000] [--repeat 5]

Three providers' monthly panels of about ``--rows`` rows each (the grid company's electricity,
the tax bureau's output and tax, the environment bureau's CO2), generated from one synthetic
county and stored sealed as the broker stores them, each under a linkable contract. One query
joins the three by enterprise, grouped by town and industry (the grid's), with a count, a
ratio (tax over electricity) and a sum (CO2). Timed in one run, alternating, medians of
``--repeat`` after one untimed warm-up each:

- the broker's whole path: the decision over the three contracts (twice), planning, the scans
  of the sealed versions (decrypted in memory), the joined statement, reading the cells,
  primary rules and complementary suppression, the release audit against each source's
  history, the audit append committed. Each repeat renames a measure so nothing is reused.
- DuckDB doing the same join and group-by on plaintext Parquet files of the same rows, as an
  analyst would write it: each source summed per (enterprise[, town, industry]), joined on the
  enterprise, grouped by town and industry. The issue's target is the broker within 1.3x.
- DuckDB running the broker's own joined statement (every margin, contributor statistics,
  member lists and row ids for the release audit) on the same plaintext files: the engine's
  share of the difference.

The plaintext files live in a private directory inside the run's data directory, removed with
it in a ``finally``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb

from broker.app import build_container
from broker.demo.county import County, generate_county, grid_slice, tax_slice
from broker.disclosure.plan import source_relation
from broker.domain.datasets import Dataset, DatasetSchema, FieldRole, FieldSpec, FieldType
from broker.domain.organisations import OrgKind
from broker.domain.principals import Role
from broker.domain.queries import Dimension, JoinedSpec, Measure, MeasureFn
from broker.services.joins import JoinedQueries
from broker.settings import Settings
from connectors.crypto import open_sealed
from connectors.storage import KEY_FILE, ParquetStorage
from contracts.model import Dominance, FieldForm, Terms
from tests.bench.aggregate import RecordingEngine, _ctx

MONTHS = 120
PURPOSE = "industrial-policy"


def _emissions(county: County) -> tuple[Any, dict[str, Any]]:
    frame = county.monthly[["uscc", "month", "co2_t"]]
    meta = {"name": "co2", "entity_field": "uscc", "fields": [
        {"name": "uscc", "type": "string", "role": "entity"},
        {"name": "month", "type": "date", "role": "dimension"},
        {"name": "co2_t", "type": "number", "role": "measure"}]}
    return frame, meta


def prepare(workdir: Path, rows: int) -> dict[str, Any]:
    """Three sealed datasets of about ``rows`` rows each, three linkable contracts."""
    container = build_container(Settings(data_dir=workdir))
    admin = _ctx("broker-ops", Role.ADMIN)
    for org, kind in [("grid", OrgKind.ENTERPRISE), ("tax", OrgKind.DEPARTMENT),
                      ("env", OrgKind.DEPARTMENT), ("econ", OrgKind.DEPARTMENT)]:
        container.orgs.register(admin, org_id=org, name=org, kind=kind)
    county = generate_county(enterprises=max(rows // MONTHS, 100), months=MONTHS)
    grid, tax = grid_slice(county), tax_slice(county)
    co2_frame, co2_meta = _emissions(county)
    sources = {"g": ("grid", grid.frame, grid.meta,
                     {"town": "clear", "industry": "clear", "electricity_kwh": "aggregate"}),
               "t": ("tax", tax.frame, tax.meta, {"tax_paid": "aggregate"}),
               "e": ("env", co2_frame, co2_meta, {"co2_t": "aggregate"})}
    now = datetime.now(UTC)
    out: dict[str, Any] = {"contracts": {}, "locations": {}, "rows": len(grid.frame)}
    for alias, (org, frame, meta, forms) in sources.items():
        fields = [FieldSpec(f["name"], FieldType(f["type"]), FieldRole(f["role"]),
                            hierarchy=f.get("hierarchy"),
                            codes=tuple(f["codes"]) if "codes" in f else None)
                  for f in meta["fields"]]
        dataset = Dataset(id=str(uuid.uuid4()), owner_org=org, name=meta["name"],
                          schema=DatasetSchema.of("uscc", fields), version=1,
                          rows=len(frame), sha256="0" * 64, created_at=now)
        # Stored directly, sealed: the upload path has its own benchmark.
        location = container.datasets.storage.write(dataset.id, 1, frame, "uscc")
        with container.datasets.uow() as uow:
            uow.datasets.add(dataset, path=location)
            uow.commit()
        contract = container.contracts.offer(_ctx(org, Role.PROVIDER), Terms(
            dataset_id=dataset.id, purposes=(PURPOSE,),
            fields={name: FieldForm(form) for name, form in forms.items()}, k_min=5,
            dominance=Dominance(), valid_from=now - timedelta(minutes=1),
            valid_until=now + timedelta(days=1), max_queries_per_day=10_000, linkable=True),
            consumer_org="econ").contract
        container.contracts.accept(_ctx("econ", Role.CONSUMER), contract.id)
        out["contracts"][alias] = contract.id
        out["locations"][alias] = location
    container.query_engine.close()
    container.engine.dispose()
    return out


#: The same join and group-by, as an analyst would write it over the three plaintext files.
PLAIN_JOIN = """
WITH g AS (SELECT uscc, town, industry, SUM(electricity_kwh) AS kwh FROM g_rows
           GROUP BY uscc, town, industry),
     t AS (SELECT uscc, SUM(tax_paid) AS tax FROM t_rows GROUP BY uscc),
     e AS (SELECT uscc, SUM(co2_t) AS co2 FROM e_rows GROUP BY uscc)
SELECT town, industry, COUNT(*) AS firms, SUM(tax) / SUM(kwh) AS tax_per_kwh,
       SUM(co2) AS co2
FROM g JOIN t USING (uscc) JOIN e USING (uscc)
GROUP BY town, industry
"""


def _run(con: duckdb.DuckDBPyConnection, sql: str, params: Sequence[Any] = ()) -> float:
    cursor = con.cursor()
    try:
        t = time.perf_counter()
        cursor.sql(sql, params=list(params)).to_arrow_table()
        return time.perf_counter() - t
    finally:
        cursor.close()


def measure(workdir: Path, ids: dict[str, Any], repeat: int) -> dict[str, float]:
    """Time the broker, the plain join and the broker's statement, alternating."""
    container = build_container(Settings(data_dir=workdir))
    recorder = RecordingEngine(container.query_engine)
    joins = JoinedQueries(replace(container.queries, engine=recorder))
    econ = _ctx("econ", Role.CONSUMER)

    def query(alias: str) -> tuple[float, int, dict[str, int]]:
        spec = JoinedSpec(
            sources=tuple(sorted(ids["contracts"].items())), purpose=PURPOSE,
            group_by=(Dimension("g.town"), Dimension("g.industry")),
            measures=(Measure(MeasureFn.COUNT),
                      Measure(MeasureFn.RATIO, numerator="t.tax_paid",
                              denominator="g.electricity_kwh", alias=alias),
                      Measure(MeasureFn.SUM, "e.co2_t")))
        t = time.perf_counter()
        release = joins.aggregate(econ, spec)
        return time.perf_counter() - t, len(release.cells), release.suppressed

    query("warm_up")
    sql, params = recorder.statements[0]
    recorder.seconds.clear()
    storage = container.datasets.storage
    assert isinstance(storage, ParquetStorage)
    scratch = Path(tempfile.mkdtemp(prefix="plain-", dir=workdir))
    con = duckdb.connect(":memory:", config={"threads": container.query_engine.threads})
    pipeline: list[float] = []
    plain: list[float] = []
    own: list[float] = []
    cells, suppressed = 0, dict[str, int]()
    try:
        for alias, location in ids["locations"].items():
            sealed = storage.resolve(location)
            key = storage.keyring.read_key_file(sealed.with_suffix(KEY_FILE), location)
            path = scratch / f"{alias}.parquet"
            path.write_bytes(open_sealed(key, sealed.read_bytes(), location))
            literal = str(path).replace("'", "''")
            for name in (f"{alias}_rows", source_relation(alias)):
                con.execute(f"CREATE VIEW {name} AS "  # noqa: S608 - constants, not input
                            f"SELECT * FROM read_parquet('{literal}')")
        _run(con, PLAIN_JOIN)
        _run(con, sql, params)
        for i in range(repeat):
            seconds, cells, suppressed = query(f"tax_per_kwh_{i}")
            pipeline.append(seconds)
            plain.append(_run(con, PLAIN_JOIN))
            own.append(_run(con, sql, params))
    finally:
        con.close()
        shutil.rmtree(scratch, ignore_errors=True)
        container.query_engine.close()
        container.engine.dispose()
    return {"pipeline_ms": statistics.median(pipeline) * 1e3,
            "engine_ms": statistics.median(recorder.seconds) * 1e3,
            "plain_ms": statistics.median(plain) * 1e3,
            "own_sql_ms": statistics.median(own) * 1e3,
            "cells": cells, "suppressed": suppressed}  # type: ignore[dict-item]


def main() -> None:
    """Print the figures for each size."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    load = os.getloadavg()[0]
    print(f"# medians of {args.repeat}; three sources of about ROWS rows each, joined by "
          "enterprise, grouped by town and industry")
    print(f"{'rows/source':>12} {'broker':>10} {'its engine':>11} {'plain join':>11}"
          f" {'own SQL':>10} {'vs plain':>9} {'own/plain':>10} {'cells':>6}  suppressed")
    for rows in args.rows:
        workdir = Path(tempfile.mkdtemp(prefix="broker-bench-joins-"))
        try:
            ids = prepare(workdir, rows)
            r = measure(workdir, ids, args.repeat)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        print(f"{ids['rows']:>12,} {r['pipeline_ms']:>7.0f} ms {r['engine_ms']:>8.0f} ms"
              f" {r['plain_ms']:>8.0f} ms {r['own_sql_ms']:>7.0f} ms"
              f" {r['pipeline_ms'] / r['plain_ms']:>8.2f}x"
              f" {r['own_sql_ms'] / r['plain_ms']:>9.2f}x {r['cells']:>6}  {r['suppressed']}",
              flush=True)
    print(f"# load average (1 min) {load:.1f} at the start, {os.getloadavg()[0]:.1f} at the "
          "end")


if __name__ == "__main__":
    main()
