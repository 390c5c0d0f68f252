"""Benchmark: the full aggregate pipeline against raw DuckDB doing the same group-by.

Run: .venv/bin/python -m tests.bench.aggregate [--enterprises N] [--repeat R]

Prints, from one run: rows, upload (CSV parse + schema check + Parquet write), raw DuckDB
group-by over the same Parquet file, and the broker's whole query path (policy decision twice,
planning, DuckDB, frequency rule, audit append committed), with the ratio of the two medians.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb

from broker.api.deps import build_container
from broker.demo.county import generate_county, grid_slice
from broker.domain.datasets import FieldRole, FieldSpec, FieldType, Sensitivity
from broker.domain.organisations import OrgKind
from broker.domain.principals import Principal, RequestContext, Role
from broker.domain.queries import AggregateSpec, Measure, MeasureFn
from broker.services.contracts import ContractOffer
from broker.settings import Settings
from contracts.model import Dominance, FieldForm


def _ctx(org: str, role: Role) -> RequestContext:
    return RequestContext(Principal("bench", f"u@{org}", org, frozenset({role})), "bench")


def main() -> None:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--enterprises", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="broker-bench-"))
    container = build_container(Settings(data_dir=workdir))
    admin, grid, econ = (_ctx("operator", Role.ADMIN), _ctx("grid", Role.PROVIDER),
                         _ctx("econ", Role.CONSUMER))
    container.orgs.register(admin, org_id="grid", name="Grid", kind=OrgKind.ENTERPRISE)
    container.orgs.register(admin, org_id="econ", name="Econ", kind=OrgKind.DEPARTMENT)

    data = grid_slice(generate_county(enterprises=args.enterprises))
    csv = workdir / "grid.csv"
    data.frame.to_csv(csv, index=False)
    fields = [FieldSpec(f["name"], FieldType(f["type"]), FieldRole(f["role"]),
                        Sensitivity(f["sensitivity"])) for f in data.meta["fields"]]
    start = time.perf_counter()
    dataset = container.datasets.register(grid, name="grid", entity_field="uscc", fields=fields,
                                          file=csv, file_format="csv").dataset
    upload_s = time.perf_counter() - start

    now = datetime.now(UTC)
    contract = container.contracts.offer(grid, ContractOffer(
        dataset_id=dataset.id, consumer_org="econ", purposes=("energy-planning",),
        fields={"town": FieldForm.CLEAR, "industry": FieldForm.CLEAR, "month": FieldForm.CLEAR,
                "electricity_kwh": FieldForm.AGGREGATE},
        k_min=5, dominance=Dominance(), valid_from=now - timedelta(minutes=1),
        valid_until=now + timedelta(days=1), max_queries_per_day=10_000)).contract
    container.contracts.accept(econ, contract.id)
    spec = AggregateSpec(contract.id, "energy-planning", ("town", "industry", "month"),
                         (Measure(MeasureFn.COUNT), Measure(MeasureFn.SUM, "electricity_kwh")))

    parquet = next((workdir / "datasets").rglob("*.parquet"))
    raw_sql = ("SELECT town, industry, month, COUNT(DISTINCT uscc), SUM(electricity_kwh) "
               "FROM read_parquet(?) GROUP BY town, industry, month")
    raw, pipeline = [], []
    for _ in range(args.repeat):
        t = time.perf_counter()
        con = duckdb.connect(config={"threads": 2})
        cells = con.execute(raw_sql, [str(parquet)]).fetchall()
        con.close()
        raw.append(time.perf_counter() - t)
        t = time.perf_counter()
        release = container.queries.aggregate(econ, spec)
        pipeline.append(time.perf_counter() - t)
    assert len(release.cells) == len(cells)
    raw_ms, pipe_ms = statistics.median(raw) * 1e3, statistics.median(pipeline) * 1e3
    print(f"rows                         {dataset.rows:>12,}")
    print(f"upload (parse, check, store) {upload_s:>12.2f} s")
    print(f"cells                        {len(release.cells):>12,} "
          f"({release.cells_suppressed} suppressed)")
    print(f"raw DuckDB group-by          {raw_ms:>12.1f} ms (median of {args.repeat})")
    print(f"broker pipeline              {pipe_ms:>12.1f} ms (median of {args.repeat})")
    print(f"pipeline / raw               {pipe_ms / raw_ms:>12.2f} x")
    container.engine.dispose()


if __name__ == "__main__":
    main()
