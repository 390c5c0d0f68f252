"""The same data from every source answers the same queries: UTF-8 CSV, GBK CSV, xlsx,
Parquet, and tables in SQLite and PostgreSQL snapshotted through configured SQL sources."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openpyxl
import pandas as pd
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from pydantic import SecretStr

from broker.app import create_app
from broker.domain.uscc import make_uscc
from broker.settings import Settings
from tests.conftest import SECRET, Mint, assert_problem, auth, contract_terms

#: A small economy with Chinese headers and values, valid USCCs and a few missing measures.
FIRMS = [make_uscc("330481", f"{n:08d}") for n in range(1, 13)]
DATA = pd.DataFrame({
    "统一社会信用代码": [*FIRMS, FIRMS[0], FIRMS[1]],
    "乡镇": ["许村镇"] * 7 + ["长安镇"] * 5 + ["许村镇", "许村镇"],
    "用电量": [10.5, 20.25, 30.0, 5.0, 5.5, 6.0, 7.0, 1000.0, 7.5, 8.0, 9.0, None, 1.0, 2.0],
    "员工": [10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 110, 120, 10, 20],
})
META = {"name": "energy", "entity_field": "统一社会信用代码", "fields": [
    {"name": "统一社会信用代码", "type": "string", "role": "entity", "sensitivity": "L2"},
    {"name": "乡镇", "type": "string", "role": "dimension"},
    {"name": "用电量", "type": "number", "role": "measure", "sensitivity": "L2"},
    {"name": "员工", "type": "integer", "role": "measure"},
]}
QUERY = {"purpose": "energy-planning", "group_by": ["乡镇"], "totals": True,
         "measures": [{"fn": "count"}, {"fn": "sum", "field": "用电量"},
                      {"fn": "mean", "field": "员工"}]}


def _csv(encoding: str, sep: str = ",") -> bytes:
    return DATA.to_csv(index=False, sep=sep).encode(encoding)


def _xlsx() -> bytes:
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.append(list(DATA.columns))
    for row in DATA.itertuples(index=False):
        sheet.append([None if pd.isna(v) else v.item() if hasattr(v, "item") else v
                      for v in row])
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()


def _parquet() -> bytes:
    out = io.BytesIO()
    DATA.astype({"员工": "int64"}).to_parquet(out, index=False)
    return out.getvalue()


@pytest.fixture
def sqlite_source(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'erp.db'}"
    engine = sa.create_engine(url)
    DATA.to_sql("电力", engine, index=False)
    engine.dispose()
    return url


@pytest.fixture
def sources(sqlite_source: str, postgres_url: str) -> dict[str, str]:
    engine = sa.create_engine(postgres_url)
    DATA.to_sql("energy_2025", engine, index=False)
    engine.dispose()
    return {"erp": sqlite_source, "warehouse": postgres_url}


@pytest.fixture
def client_with_sources(tmp_path: Path, sources: dict[str, str]) -> Iterator[TestClient]:
    settings = Settings(data_dir=tmp_path / "var", jwt_secret=SecretStr(SECRET),
                        sql_sources=sources)
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture
def mint_tokens(mint: Mint) -> Mint:
    return mint


def _answer(c: TestClient, grid: str, econ: str, did: str) -> list[dict[str, Any]]:
    r = c.post("/v1/contracts", headers=auth(grid), json=contract_terms(
        did, fields={"乡镇": "clear", "用电量": "aggregate", "员工": "aggregate"}))
    assert r.status_code == 201, r.text
    cid = r.json()["id"]
    assert c.post(f"/v1/contracts/{cid}/accept", headers=auth(econ)).status_code == 200
    r = c.post("/v1/queries/aggregate", headers=auth(econ), json={"contract_id": cid, **QUERY})
    assert r.status_code == 200, r.text
    cells: list[dict[str, Any]] = r.json()["cells"]
    return cells


def test_every_source_answers_like_the_utf8_csv(client_with_sources: TestClient,
                                                 mint: Mint) -> None:
    c = client_with_sources
    admin, grid = mint("broker-ops", "admin"), mint("grid", "provider")
    econ = mint("econ", "consumer")
    for org, kind in (("grid", "enterprise"), ("econ", "department")):
        assert c.post("/v1/orgs", headers=auth(admin),
                      json={"id": org, "name": org, "kind": kind}).status_code == 201
    uploads = {
        "utf8.csv": _csv("utf-8"), "bom.csv": _csv("utf-8-sig"), "gbk.csv": _csv("gbk", ";"),
        "gb18030.csv": _csv("gb18030", "\t"), "book.xlsx": _xlsx(), "data.parquet": _parquet(),
    }
    answers: dict[str, list[dict[str, Any]]] = {}
    for i, (name, content) in enumerate(uploads.items()):
        r = c.post("/v1/datasets", headers=auth(grid), files={"file": (name, content)},
                   data={"meta": json.dumps({**META, "name": f"energy-{i}"})})
        assert r.status_code == 201, (name, r.text)
        assert r.json()["rows"] == len(DATA)
        answers[name] = _answer(c, grid, econ, r.json()["id"])
    imports: list[tuple[str, dict[str, str]]] = [
        ("erp", {"table": "电力"}), ("warehouse", {"table": "energy_2025"}),
        ("warehouse", {"query": 'SELECT * FROM energy_2025 WHERE "员工" > 0'})]
    for source, spec in imports:
        body: dict[str, Any] = {**META, "name": f"{source}-{len(answers)}",
                                "source": {"name": source, **spec}}
        r = c.post("/v1/datasets/import", headers=auth(grid), json=body)
        assert r.status_code == 201, (source, r.text)
        answers[f"{source}:{spec}"] = _answer(c, grid, econ, r.json()["id"])
    expected = answers["utf8.csv"]
    assert any(cell["status"] == "published" for cell in expected)
    for name, cells in answers.items():
        assert cells == expected, name


def test_sql_sources_are_named_by_the_operator_never_by_url(client_with_sources: TestClient,
                                                            mint: Mint, tmp_path: Path) -> None:
    c = client_with_sources
    admin, grid = mint("broker-ops", "admin"), mint("grid", "provider")
    c.post("/v1/orgs", headers=auth(admin), json={"id": "grid", "name": "g",
                                                 "kind": "enterprise"})
    own_db = f"sqlite:///{tmp_path / 'var' / 'broker.db'}"
    for source in ({"name": own_db, "table": "orgs"}, {"name": "nope", "table": "orgs"}):
        r = c.post("/v1/datasets/import", headers=auth(grid),
                   json={**META, "source": source})
        assert r.status_code == 422, r.text
        assert "broker.db" not in r.text
    r = c.post("/v1/datasets/import", headers=auth(grid), json={
        **META, "source": {"name": "warehouse", "query": "DELETE FROM energy_2025"}})
    assert_problem(r, 422, "bad-dataset")
