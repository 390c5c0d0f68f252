"""Benchmark: a CSV upload through the broker against DuckDB's own CSV-to-Parquet copy.

Run: .venv/bin/python -m tests.bench.upload [--rows 1000000] [--repeat 3] [--gbk]

The grid company's monthly electricity of the synthetic county (``broker.demo.county``: uscc,
town, industry, month, electricity_kwh; about 50 bytes a row) is written as a UTF-8 CSV in a
temporary directory; with ``--gbk`` the towns get their Chinese names and the broker is given
the same data in GBK. Then, from one run, medians over the repeats of:

- DuckDB alone: ``COPY (SELECT * FROM read_csv(file)) TO 'x.parquet'`` with its own type
  detection and two threads: parse, type and write Parquet, no checks (always of the UTF-8
  file: DuckDB reads GBK only with an extension fetched from the network);
- the broker: ``DatasetService.register`` of the same file, what ``broker datasets import``
  ends in once the upload is spooled (the meta as the demo declares it: code lists, the
  hierarchy, the USCC entity field): encoding and delimiter detection, parsing, every check,
  the content hash, the entity and atom indexes, sealing and the audited registration.

Both write their Parquet inside the temporary directory (DuckDB's is plaintext), and the whole
directory is deleted at the end, whatever happens.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import duckdb

from broker.app import build_container
from broker.demo.county import generate_county, grid_slice
from broker.domain.datasets import FieldRole, FieldSpec, FieldType
from broker.domain.organisations import OrgKind
from broker.domain.principals import Principal, RequestContext, Role
from broker.services.datasets import FileData
from broker.settings import Settings

MONTHS = 120
#: The county's towns by their Chinese names (Haining's towns and subdistricts).
CHINESE_TOWNS = {
    "Xiashi": "硖石街道", "Chang'an": "长安镇", "Xucun": "许村镇", "Zhouwangmiao": "周王庙镇",
    "Yanguan": "盐官镇", "Dingqiao": "丁桥镇", "Huangwan": "黄湾镇", "Yuanhua": "袁花镇",
    "Haizhou": "海洲街道", "Jianshan": "尖山新区",
}


def _ctx(org: str, role: Role) -> RequestContext:
    return RequestContext(Principal("bench", f"u@{org}", org, frozenset({role})), "bench")


def main() -> None:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--gbk", action="store_true", help="write the CSV in GBK")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="broker-upload-bench-"))
    try:
        data = grid_slice(generate_county(enterprises=max(args.rows // MONTHS, 100),
                                          months=MONTHS))
        frame, meta = data.frame, data.meta
        if args.gbk:
            frame = frame.assign(town=frame["town"].map(CHINESE_TOWNS))
            meta = {**meta, "fields": [{**f, "codes": list(CHINESE_TOWNS.values())}
                                       if f["name"] == "town" else f for f in meta["fields"]]}
        plain = tmp / "upload.csv"
        frame.to_csv(plain, index=False, encoding="utf-8")
        csv = plain
        if args.gbk:
            csv = tmp / "upload-gbk.csv"
            frame.to_csv(csv, index=False, encoding="gbk")
        encoding = "gbk" if args.gbk else "utf-8"
        size = csv.stat().st_size
        fields = [FieldSpec(f["name"], FieldType(f["type"]), FieldRole(f["role"]),
                            hierarchy=f.get("hierarchy"),
                            codes=tuple(f["codes"]) if "codes" in f else None)
                  for f in meta["fields"]]
        container = build_container(Settings(data_dir=tmp / "data"))
        admin, grid = _ctx("broker-ops", Role.ADMIN), _ctx("grid", Role.PROVIDER)
        container.orgs.register(admin, org_id="grid", name="Grid", kind=OrgKind.ENTERPRISE)
        duck, broker = [], []
        for i in range(args.repeat):
            out = tmp / f"duckdb-{i}.parquet"  # plaintext: inside tmp, removed below
            t = time.perf_counter()
            con = duckdb.connect(config={"threads": 2})
            # Both paths are this run's own, under mkdtemp.
            con.execute(f"COPY (SELECT * FROM read_csv('{plain}')) TO '{out}' (FORMAT parquet)")  # noqa: S608
            con.close()
            duck.append(time.perf_counter() - t)
            out.unlink()
            t = time.perf_counter()
            view = container.datasets.register(grid, name=f"grid-{i}", entity_field="uscc",
                                               fields=fields, data=FileData(csv, "csv"))
            broker.append(time.perf_counter() - t)
            assert view.dataset.rows == len(frame)
        container.engine.dispose()
        d, b = statistics.median(duck), statistics.median(broker)
        print(f"{len(frame):,} rows, {size / 1e6:.1f} MB {encoding} CSV, "
              f"{args.repeat} repeats, medians")
        print(f"  DuckDB CSV -> Parquet: {d:6.2f} s  ({len(frame) / d / 1e3:,.0f}k rows/s)")
        print(f"  broker register:       {b:6.2f} s  ({len(frame) / b / 1e3:,.0f}k rows/s)")
        print(f"  broker speed / DuckDB's: {d / b:.2f}x")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
