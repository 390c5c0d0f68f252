"""Benchmark: the full aggregate pipeline against DuckDB running the broker's own SQL.

Run: .venv/bin/python -m tests.bench.aggregate [--rows 1000000 10000000] [--repeat R]

For each size, the synthetic county (ten years of monthly rows) is generated and stored sealed,
as the broker stores it, in a temporary data directory; a second process, whose peak memory is
reported, then times in one run:

- the broker's whole query path: policy decision twice, planning, the scan of the sealed
  version (decrypted in memory), the entity-level lattice of margins, primary rules,
  complementary suppression, the differencing guard and the release audit against a history
  that grows with every repeat, the audit append committed; and, inside it (means per
  query), the time its DuckDB statement took (the engine's share), reading the result into
  cells, protecting them, the release audit, and the rest;
- raw DuckDB doing the same work: the very statement the broker ran (captured from the query
  engine, with its bound parameters) over the same rows in plaintext, (a) as a DuckDB table
  in memory and (b) read by DuckDB's own Parquet reader from a plaintext file (the issue's
  target: the broker within 1.2x of it). That file is written into a private temporary
  directory inside the run's data directory and removed, with the directory, in a
  ``finally``;
- the cost of encryption at rest: parsing the plaintext Parquet bytes from memory, against
  reading the sealed version (key file unwrapped, whole file decrypted and authenticated,
  Parquet parsed from memory), and the decryption alone;

medians over ``--repeat`` runs, each as a ratio against the raw engine; the broker and the raw
runs alternate within each repeat, after one untimed warm-up each. Each repeat renames the
measure so that no answer comes from the cache of identical repeats: every run does all the
work (the statement is the same; DuckDB has no result cache). Every directory the script makes
is removed before it exits.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

import broker.services.queries as queries_module
from broker.app import build_container
from broker.demo.county import generate_county, grid_slice
from broker.disclosure.plan import SOURCE
from broker.domain.datasets import Dataset, DatasetSchema, FieldRole, FieldSpec, FieldType
from broker.domain.organisations import OrgKind
from broker.domain.ports import QueryEngine
from broker.domain.principals import Principal, RequestContext, Role
from broker.domain.queries import AggregateSpec, Dimension, Measure, MeasureFn
from broker.settings import Settings
from connectors.crypto import open_sealed
from connectors.storage import KEY_FILE, ParquetStorage
from contracts.model import Dominance, FieldForm, Terms

MONTHS = 120
#: Steps of the query service timed on their own (the names it calls them by).
STEPS = ("read_table", "protect", "link")


def _ctx(org: str, role: Role) -> RequestContext:
    return RequestContext(Principal("bench", f"u@{org}", org, frozenset({role})), "bench")


@dataclass
class RecordingEngine:
    """The broker's query engine, recording each statement it runs and the time it took."""

    inner: QueryEngine
    statements: list[tuple[str, tuple[Any, ...]]] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)

    def run(self, relations: Mapping[str, pa.Table | ds.Dataset], sql: str,
            params: Sequence[Any]) -> pa.Table:
        """Run through the real engine; keep the statement and its time."""
        t = time.perf_counter()
        try:
            return self.inner.run(relations, sql, params)
        finally:
            self.seconds.append(time.perf_counter() - t)
            self.statements.append((sql, tuple(params)))


def _timed(name: str, spent: dict[str, list[float]]) -> None:
    """Replace the query service's ``name`` with a wrapper adding its time to ``spent``."""
    inner = vars(queries_module)[name]
    spent[name] = []

    def timed(*args: Any, **kwargs: Any) -> Any:
        t = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            spent[name].append(time.perf_counter() - t)

    vars(queries_module)[name] = timed


def prepare(workdir: Path, rows: int) -> dict[str, str]:
    """Generate the county with about ``rows`` monthly rows and register it; ids for the run."""
    container = build_container(Settings(data_dir=workdir))
    admin, grid, econ = (_ctx("broker-ops", Role.ADMIN), _ctx("grid", Role.PROVIDER),
                         _ctx("econ", Role.CONSUMER))
    container.orgs.register(admin, org_id="grid", name="Grid", kind=OrgKind.ENTERPRISE)
    container.orgs.register(admin, org_id="econ", name="Econ", kind=OrgKind.DEPARTMENT)
    data = grid_slice(generate_county(enterprises=max(rows // MONTHS, 100), months=MONTHS))
    fields = [FieldSpec(f["name"], FieldType(f["type"]), FieldRole(f["role"]),
                        hierarchy=f.get("hierarchy"),
                        codes=tuple(f["codes"]) if "codes" in f else None)
              for f in data.meta["fields"]]
    schema = DatasetSchema.of("uscc", fields)
    # Stored directly, sealed (the upload path has its own figures): ten million rows of CSV
    # would measure the CSV reader, not this pipeline.
    dataset = Dataset(id=str(uuid.uuid4()), owner_org="grid", name="grid", schema=schema,
                      version=1, rows=len(data.frame), sha256="0" * 64,
                      created_at=datetime.now(UTC))
    location = container.datasets.storage.write(dataset.id, 1, data.frame, "uscc")
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
    container.query_engine.close()
    container.engine.dispose()
    return {"contract": contract.id, "location": location, "rows": str(dataset.rows)}


def _median_ms(xs: list[float]) -> float:
    return statistics.median(xs) * 1e3


def _run_raw(con: duckdb.DuckDBPyConnection, sql: str, params: Sequence[Any]) -> float:
    """Seconds for DuckDB to run ``sql`` to an Arrow result, as the broker's engine does."""
    cursor = con.cursor()
    try:
        t = time.perf_counter()
        cursor.sql(sql, params=list(params)).to_arrow_table()
        return time.perf_counter() - t
    finally:
        cursor.close()


def measure(workdir: Path, ids: dict[str, str], repeat: int) -> dict[str, float]:
    """Time the broker and raw DuckDB on the statement it runs, interleaved repeat by repeat
    (so a change in the machine's load touches both); this process's peak memory."""
    container = build_container(Settings(data_dir=workdir))
    recorder = RecordingEngine(container.query_engine)
    queries = replace(container.queries, engine=recorder)
    econ = _ctx("econ", Role.CONSUMER)

    def query(alias: str) -> tuple[float, int, dict[str, int]]:
        spec = AggregateSpec(
            ids["contract"], "energy-planning",
            (Dimension("town"), Dimension("industry"), Dimension("month", level="year")),
            (Measure(MeasureFn.COUNT), Measure(MeasureFn.SUM, "electricity_kwh", alias=alias)),
        )
        t = time.perf_counter()
        release = queries.aggregate(econ, spec)
        return time.perf_counter() - t, len(release.cells), release.suppressed

    query("warm-up")  # untimed: the statement it runs, and the peak memory of one query
    sql, params = recorder.statements[0]
    recorder.seconds.clear()
    peak = _peak_mib()  # before the baselines below, which hold the plaintext in memory
    spent: dict[str, list[float]] = {}
    for name in STEPS:
        _timed(name, spent)

    storage = container.datasets.storage
    assert isinstance(storage, ParquetStorage)
    sealed_path = storage.resolve(ids["location"])
    key = storage.keyring.read_key_file(sealed_path.with_suffix(KEY_FILE), ids["location"])
    plain = open_sealed(key, sealed_path.read_bytes(), ids["location"])  # in memory only
    strings = [f.name for f in pq.read_schema(pa.BufferReader(plain))
               if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)]

    def read_plain_bytes() -> pa.Table:  # the storage's read, minus the key and decryption
        return pq.read_table(pa.BufferReader(plain), read_dictionary=strings)

    threads = container.query_engine.threads
    in_table = duckdb.connect(":memory:", config={"threads": threads})
    from_file = duckdb.connect(":memory:", config={"threads": threads})
    # DuckDB's own Parquet reader needs a file: plaintext, so in a private directory that is
    # removed with everything in it however this block ends (and inside the run's data
    # directory, which the parent removes even if this process dies).
    scratch = Path(tempfile.mkdtemp(prefix="plain-", dir=workdir))
    pipeline: list[float] = []
    raw_table: list[float] = []
    raw_parquet: list[float] = []
    read_plain: list[float] = []
    read_sealed: list[float] = []
    decrypt: list[float] = []
    cells, suppressed = 0, dict[str, int]()
    try:
        in_table.register("rows_arrow", read_plain_bytes())
        # DuckDB's own table, under the name the plan reads (a constant, not input)
        in_table.execute(f"CREATE TABLE {SOURCE} AS SELECT * FROM rows_arrow")  # noqa: S608
        in_table.unregister("rows_arrow")
        path = scratch / "v.parquet"
        path.write_bytes(plain)
        literal = str(path).replace("'", "''")  # a view's definition takes no parameter
        from_file.execute(
            f"CREATE VIEW {SOURCE} AS SELECT * FROM read_parquet('{literal}')")  # noqa: S608
        for con in (in_table, from_file):
            _run_raw(con, sql, params)  # warm-up, untimed
        read_plain_bytes()
        for i in range(repeat):
            seconds, cells, suppressed = query(f"kwh{i}")
            pipeline.append(seconds)
            raw_table.append(_run_raw(in_table, sql, params))
            raw_parquet.append(_run_raw(from_file, sql, params))
            t = time.perf_counter()
            read_plain_bytes()
            read_plain.append(time.perf_counter() - t)
            t = time.perf_counter()
            storage.read(ids["location"])
            read_sealed.append(time.perf_counter() - t)
            t = time.perf_counter()
            key = storage.keyring.read_key_file(sealed_path.with_suffix(KEY_FILE),
                                                ids["location"])
            open_sealed(key, sealed_path.read_bytes(), ids["location"])
            decrypt.append(time.perf_counter() - t)
    finally:
        in_table.close()
        from_file.close()
        shutil.rmtree(scratch, ignore_errors=True)
    if set(recorder.statements) != {(sql, params)} or len(recorder.seconds) != repeat:
        raise RuntimeError("expected one engine statement per query, the same each time")
    container.query_engine.close()
    container.engine.dispose()
    return {
        "pipeline_ms": _median_ms(pipeline),
        "engine_ms": _median_ms(recorder.seconds),
        # means for the breakdown, which medians would not add up to
        "pipeline_mean_ms": statistics.fmean(pipeline) * 1e3,
        "engine_mean_ms": statistics.fmean(recorder.seconds) * 1e3,
        **{f"{name}_ms": sum(spent[name]) / repeat * 1e3 for name in STEPS},
        "raw_table_ms": _median_ms(raw_table),
        "raw_parquet_ms": _median_ms(raw_parquet),
        "read_plain_ms": _median_ms(read_plain),
        "read_sealed_ms": _median_ms(read_sealed),
        "decrypt_ms": _median_ms(decrypt),
        "file_mib": sealed_path.stat().st_size / 2**20,
        "cells": cells,
        "suppressed": suppressed,  # type: ignore[dict-item]
        "peak_mib": peak,
        "sql_chars": len(sql),
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
    load = os.getloadavg()[0]
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--measure", nargs=2, metavar=("DIR", "IDS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:  # the child process
        print(json.dumps(measure(Path(args.measure[0]), json.loads(args.measure[1]),
                                 args.repeat)))
        return
    print(f"# medians of {args.repeat}; raw = DuckDB running the broker's own statement on the "
          "same rows in plaintext, (table) in memory, (parquet) from a plaintext file")
    print(f"{'rows':>12} {'broker':>10} {'engine':>10} {'raw table':>10}"
          f" {'raw parquet':>12} {'vs table':>9} {'vs parquet':>11} {'engine/parquet':>15}"
          f" {'peak RSS':>9} {'cells':>6}  suppressed")
    sizes = []
    for rows in args.rows:
        workdir = Path(tempfile.mkdtemp(prefix="broker-bench-"))
        try:
            ids = prepare(workdir, rows)
            out = subprocess.run(
                [sys.executable, "-m", "tests.bench.aggregate", "--repeat", str(args.repeat),
                 "--measure", str(workdir), json.dumps(ids)],
                check=True, stdout=subprocess.PIPE, text=True,
            ).stdout
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        r = json.loads(out.strip().splitlines()[-1])
        print(f"{int(ids['rows']):>12,} {r['pipeline_ms']:>7.0f} ms {r['engine_ms']:>7.0f} ms"
              f" {r['raw_table_ms']:>7.0f} ms {r['raw_parquet_ms']:>9.0f} ms"
              f" {r['pipeline_ms'] / r['raw_table_ms']:>8.2f}x"
              f" {r['pipeline_ms'] / r['raw_parquet_ms']:>10.2f}x"
              f" {r['engine_ms'] / r['raw_parquet_ms']:>14.2f}x"
              f" {r['peak_mib']:>5.0f} MiB {r['cells']:>6}  {r['suppressed']}", flush=True)
        other = (r["pipeline_mean_ms"] - r["engine_mean_ms"]
                 - sum(r[f"{n}_ms"] for n in STEPS))
        print(f"{'':>12} broker's time, mean per query: {r['pipeline_mean_ms']:.0f} ms, of it "
              f"engine {r['engine_mean_ms']:.0f} ms, "
              + ", ".join(f"{n} {r[f'{n}_ms']:.0f} ms" for n in STEPS)
              + f", the rest (policy, ledger, audit append, commit) {other:.0f} ms", flush=True)
        sizes.append((int(ids["rows"]), r))
    print(f"\n{'rows':>12} {'file':>10} {'plain read':>12} {'sealed read':>12} {'decrypt':>10}"
          f" {'sealed/plain':>13}")
    for rows, r in sizes:
        print(f"{rows:>12,} {r['file_mib']:>6.1f} MiB {r['read_plain_ms']:>9.1f} ms"
              f" {r['read_sealed_ms']:>9.1f} ms {r['decrypt_ms']:>7.1f} ms"
              f" {r['read_sealed_ms'] / r['read_plain_ms']:>12.2f}x")
    print(f"# load average (1 min) {load:.1f} at the start, {os.getloadavg()[0]:.1f} at the end,"
          f" on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
