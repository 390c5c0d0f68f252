"""Benchmark: the full aggregate pipeline against raw DuckDB doing the same group-by.

Run: .venv/bin/python -m tests.bench.aggregate [--rows 1000000 10000000] [--repeat R]

For each size, the synthetic county (ten years of monthly rows) is generated and stored in one
process (sealed, as the broker stores it, and a plaintext Parquet copy of the same table
outside the data directory); a second process, whose peak memory is reported, then times from
one run:

- raw DuckDB: the query's plain GROUP BY (town, industry, year; distinct enterprises and the
  kWh sum) straight over the plaintext Parquet copy (what the broker did before encryption at
  rest);
- the cost of encryption at rest on the same table: reading the plaintext Parquet file into
  Arrow, against reading the sealed version (key file unwrapped, whole file decrypted and
  authenticated, Parquet parsed from memory), and the decryption alone;
- the broker's whole query path: policy decision twice, planning, the entity-level scan with
  every margin, primary rules, complementary suppression, the differencing guard against a
  ledger that grows with every repeat, the audit append committed;

and their ratio (medians). Each repeat renames the measure so that no answer comes from the
cache of identical repeats: every run does all the work.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pyarrow.parquet as pq

from broker.app import build_container
from broker.demo.county import generate_county, grid_slice
from broker.domain.datasets import Dataset, DatasetSchema, FieldRole, FieldSpec, FieldType
from broker.domain.organisations import OrgKind
from broker.domain.principals import Principal, RequestContext, Role
from broker.domain.queries import AggregateSpec, Dimension, Measure, MeasureFn
from broker.settings import Settings
from connectors.crypto import open_sealed
from connectors.storage import KEY_FILE, ParquetStorage
from contracts.model import Dominance, FieldForm, Terms

MONTHS = 120


def _ctx(org: str, role: Role) -> RequestContext:
    return RequestContext(Principal("bench", f"u@{org}", org, frozenset({role})), "bench")


def prepare(workdir: Path, rows: int) -> dict[str, str]:
    """Generate the county with about ``rows`` monthly rows and register it; ids for the run."""
    container = build_container(Settings(data_dir=workdir))
    admin, grid, econ = (_ctx("operator", Role.ADMIN), _ctx("grid", Role.PROVIDER),
                         _ctx("econ", Role.CONSUMER))
    container.orgs.register(admin, org_id="grid", name="Grid", kind=OrgKind.ENTERPRISE)
    container.orgs.register(admin, org_id="econ", name="Econ", kind=OrgKind.DEPARTMENT)
    data = grid_slice(generate_county(enterprises=max(rows // MONTHS, 100), months=MONTHS))
    fields = [FieldSpec(f["name"], FieldType(f["type"]), FieldRole(f["role"]),
                        hierarchy=f.get("hierarchy"),
                        codes=tuple(f["codes"]) if "codes" in f else None)
              for f in data.meta["fields"]]
    schema = DatasetSchema.of("uscc", fields)
    # Stored directly (the upload path is measured by the CSV benchmark in tests/bench/http.py
    # and by the suite): ten million rows of CSV would measure pandas, not this pipeline.
    dataset = Dataset(id=str(uuid.uuid4()), owner_org="grid", name="grid", schema=schema,
                      version=1, rows=len(data.frame), sha256="0" * 64,
                      created_at=datetime.now(UTC))
    storage = container.datasets.storage
    location = storage.write(dataset.id, 1, data.frame, "uscc")
    plain = workdir.with_name(workdir.name + "-plain.parquet")  # outside the data directory
    pq.write_table(storage.read(location), plain)
    with container.datasets.uow() as uow:
        uow.datasets.add(dataset, path=location)
        uow.commit()
    now = datetime.now(UTC)
    contract = container.contracts.offer(grid, Terms(
        dataset_id=dataset.id, purposes=("energy-planning",),
        fields={"town": FieldForm.CLEAR, "industry": FieldForm.CLEAR, "month": FieldForm.CLEAR,
                "electricity_kwh": FieldForm.AGGREGATE},
        k_min=5, dominance=Dominance(), valid_from=now - timedelta(minutes=1),
        valid_until=now + timedelta(days=1), max_queries_per_day=10_000),
        consumer_org="econ").contract
    container.contracts.accept(econ, contract.id)
    container.engine.dispose()
    return {"contract": contract.id, "parquet": str(plain), "location": location,
            "rows": str(dataset.rows)}


def measure(workdir: Path, ids: dict[str, str], repeat: int) -> dict[str, float]:
    """Time raw DuckDB and the broker on the prepared data; this process's peak memory."""
    container = build_container(Settings(data_dir=workdir))
    econ = _ctx("econ", Role.CONSUMER)
    raw_sql = ("SELECT town, industry, strftime(month, '%Y') AS year, COUNT(DISTINCT uscc), "
               "SUM(electricity_kwh) FROM read_parquet(?) GROUP BY ALL")
    raw, pipeline, cells, suppressed = [], [], 0, {}
    for i in range(repeat):
        t = time.perf_counter()
        con = duckdb.connect(config={"threads": 2})
        raw_cells = con.execute(raw_sql, [ids["parquet"]]).fetchall()
        con.close()
        raw.append(time.perf_counter() - t)
        spec = AggregateSpec(
            ids["contract"], "energy-planning",
            (Dimension("town"), Dimension("industry"), Dimension("month", level="year")),
            (Measure(MeasureFn.COUNT), Measure(MeasureFn.SUM, "electricity_kwh", alias=f"kwh{i}")),
        )
        t = time.perf_counter()
        release = container.queries.aggregate(econ, spec)
        pipeline.append(time.perf_counter() - t)
        cells, suppressed = len(release.cells), release.suppressed
    assert cells >= len(raw_cells)  # the broker's grid also has the empty combinations
    peak = _peak_mib()  # before the read figures below, which materialise whole tables
    storage = container.datasets.storage  # the cost of encryption at rest, read by read
    assert isinstance(storage, ParquetStorage)
    sealed_path = storage.resolve(ids["location"])
    read_plain, read_sealed, decrypt = [], [], []
    for _ in range(repeat):
        t = time.perf_counter()
        pq.read_table(ids["parquet"])
        read_plain.append(time.perf_counter() - t)
        t = time.perf_counter()
        storage.read(ids["location"])
        read_sealed.append(time.perf_counter() - t)
        t = time.perf_counter()
        key = storage.keyring.read_key_file(sealed_path.with_suffix(KEY_FILE), ids["location"])
        open_sealed(key, sealed_path.read_bytes(), ids["location"])
        decrypt.append(time.perf_counter() - t)
    container.engine.dispose()
    return {
        "raw_ms": statistics.median(raw) * 1e3,
        "pipeline_ms": statistics.median(pipeline) * 1e3,
        "read_plain_ms": statistics.median(read_plain) * 1e3,
        "read_sealed_ms": statistics.median(read_sealed) * 1e3,
        "decrypt_ms": statistics.median(decrypt) * 1e3,
        "file_mib": sealed_path.stat().st_size / 2**20,
        "cells": cells,
        "suppressed": suppressed,  # type: ignore[dict-item]
        "peak_mib": peak,
    }


def _peak_mib() -> float:
    """This process's peak resident memory. VmHWM belongs to the address space, which exec
    replaces; ru_maxrss would carry over the generating parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    """Run the benchmark at each size and print its figures."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--measure", nargs=2, metavar=("DIR", "IDS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:  # the child process
        print(json.dumps(measure(Path(args.measure[0]), json.loads(args.measure[1]),
                                 args.repeat)))
        return
    print(f"{'rows':>12} {'raw DuckDB':>12} {'broker':>12} {'ratio':>7} {'peak RSS':>10}"
          f" {'cells':>6}  suppressed")
    sizes = []
    for rows in args.rows:
        workdir = Path(tempfile.mkdtemp(prefix="broker-bench-"))
        ids = prepare(workdir, rows)
        out = subprocess.run(
            [sys.executable, "-m", "tests.bench.aggregate", "--repeat", str(args.repeat),
             "--measure", str(workdir), json.dumps(ids)],
            check=True, capture_output=True, text=True,
        ).stdout
        r = json.loads(out.strip().splitlines()[-1])
        print(f"{int(ids['rows']):>12,} {r['raw_ms']:>9.0f} ms {r['pipeline_ms']:>9.0f} ms"
              f" {r['pipeline_ms'] / r['raw_ms']:>6.2f}x {r['peak_mib']:>6.0f} MiB"
              f" {r['cells']:>6}  {r['suppressed']}")
        sizes.append((int(ids["rows"]), r))
    print(f"\n{'rows':>12} {'file':>10} {'plain read':>12} {'sealed read':>12} {'decrypt':>10}"
          f" {'overhead':>9}")
    for rows, r in sizes:
        print(f"{rows:>12,} {r['file_mib']:>6.1f} MiB {r['read_plain_ms']:>9.1f} ms"
              f" {r['read_sealed_ms']:>9.1f} ms {r['decrypt_ms']:>7.1f} ms"
              f" {r['read_sealed_ms'] - r['read_plain_ms']:>+6.1f} ms")


if __name__ == "__main__":
    main()
