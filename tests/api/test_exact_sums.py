"""Identical data answers identically, bit for bit: the same rows as UTF-8 CSV, GBK CSV,
Parquet or xlsx, in any row order, give the same cells, values, statuses and reasons (issue 19).

The values are chosen to expose float non-associativity: many 0.1s and 0.01s beside values of
a million and more, so that a sum taken in another order differs in its last digits.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import openpyxl
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from broker.app import create_app
from broker.domain.uscc import make_uscc
from broker.settings import Settings
from tests.conftest import SECRET, Mint, assert_problem, auth, contract_terms

TOWNS = ["许村镇", "长安镇", "周王庙镇"]


def _rows() -> pd.DataFrame:
    """36 enterprises, 12 per town, one to eight rows each, of mixed magnitudes."""
    rng = np.random.default_rng(19)
    firms = [make_uscc("330481", f"{n:08d}") for n in range(1, 37)]
    kwh_values = [0.1, 0.2, 0.3, 0.01, 1234567.89, 98765.43, 7.77, 18978516.12, 0.07]
    out_values = [0.1, 1e-7, 1234567.891234, 3.3333333, 100000000.1, 0.3, 2.5e-3, 7e12]
    rows: dict[str, list[Any]] = {"统一社会信用代码": [], "乡镇": [], "用电量": [], "产值": [],
                                  "员工": []}
    for n, firm in enumerate(firms):
        for _ in range(int(rng.integers(1, 9))):
            rows["统一社会信用代码"].append(firm)
            rows["乡镇"].append(TOWNS[n % 3])
            rows["用电量"].append(float(rng.choice(kwh_values)))
            rows["产值"].append(float(rng.choice(out_values)))
            rows["员工"].append(int(rng.integers(1, 10**15)))
    return pd.DataFrame(rows)


DATA = _rows()


def _meta(name: str, *, scaled: bool) -> dict[str, Any]:
    kwh: dict[str, Any] = {"name": "用电量", "type": "number", "role": "measure",
                           "sensitivity": "L2"}
    if scaled:
        kwh["scale"] = 2
    return {"name": name, "entity_field": "统一社会信用代码", "fields": [
        {"name": "统一社会信用代码", "type": "string", "role": "entity", "sensitivity": "L2"},
        {"name": "乡镇", "type": "string", "role": "dimension"},
        kwh,
        {"name": "产值", "type": "number", "role": "measure"},
        {"name": "员工", "type": "integer", "role": "measure"},
    ]}


QUERIES: list[dict[str, Any]] = [
    {"purpose": "energy-planning", "group_by": ["乡镇"], "totals": True,
     "measures": [{"fn": "count"}, {"fn": "sum", "field": "用电量"},
                  {"fn": "mean", "field": "用电量"}, {"fn": "sum", "field": "产值"},
                  {"fn": "mean", "field": "产值"}, {"fn": "sum", "field": "员工"},
                  {"fn": "mean", "field": "员工"},
                  {"fn": "ratio", "numerator": "产值", "denominator": "用电量"}]},
    {"purpose": "energy-planning", "group_by": [], "totals": True,
     "measures": [{"fn": "sum", "field": "用电量"}, {"fn": "sum", "field": "产值"}]},
]


def _uploads(frame: pd.DataFrame) -> dict[str, bytes]:
    shuffled = [frame.sample(frac=1, random_state=seed).reset_index(drop=True)
                for seed in (1, 2, 3)]
    parquet = io.BytesIO()
    shuffled[2].to_parquet(parquet, index=False)
    return {
        "utf8.csv": frame.to_csv(index=False).encode("utf-8"),
        "gbk.csv": frame.to_csv(index=False, sep=";").encode("gbk"),
        "data.parquet": (lambda b: b.getvalue())(_parquet(frame)),
        "shuffled-1.csv": shuffled[0].to_csv(index=False).encode("utf-8"),
        "shuffled-2-gbk.csv": shuffled[1].to_csv(index=False, sep=";").encode("gbk"),
        "shuffled.parquet": parquet.getvalue(),
        "book.xlsx": _xlsx(shuffled[0]),
    }


def _xlsx(frame: pd.DataFrame) -> bytes:
    book = openpyxl.Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.append(list(frame.columns))
    for row in frame.itertuples(index=False):
        sheet.append([v.item() if hasattr(v, "item") else v for v in row])
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()


def _parquet(frame: pd.DataFrame) -> io.BytesIO:
    out = io.BytesIO()
    frame.to_parquet(out, index=False)
    return out


def _answers(c: TestClient, mint: Mint, *, scaled: bool) -> dict[str, list[Any]]:
    admin, grid = mint("broker-ops", "admin"), mint("grid", "provider")
    econ = mint("econ", "consumer")
    for org, kind in (("grid", "enterprise"), ("econ", "department")):
        c.post("/v1/orgs", headers=auth(admin), json={"id": org, "name": org, "kind": kind})
    answers: dict[str, list[Any]] = {}
    for i, (name, content) in enumerate(_uploads(DATA).items()):
        r = c.post("/v1/datasets", headers=auth(grid), files={"file": (name, content)},
                   data={"meta": json.dumps(_meta(f"energy-{i}", scaled=scaled))})
        assert r.status_code == 201, (name, r.text)
        r = c.post("/v1/contracts", headers=auth(grid), json=contract_terms(
            r.json()["id"], fields={"乡镇": "clear", "用电量": "aggregate", "产值": "aggregate",
                                    "员工": "aggregate"}))
        assert r.status_code == 201, r.text
        cid = r.json()["id"]
        assert c.post(f"/v1/contracts/{cid}/accept", headers=auth(econ)).status_code == 200
        answers[name] = []
        for query in QUERIES:
            r = c.post("/v1/queries/aggregate", headers=auth(econ),
                       json={"contract_id": cid, **query})
            assert r.status_code == 200, r.text
            body = r.json()
            # the JSON text itself: values compared bit for bit, as a client reads them
            answers[name].append(json.dumps([body["cells"], body["suppressed"]],
                                            ensure_ascii=False))
    return answers


@pytest.mark.parametrize("scaled", [False, True], ids=["undeclared-scale", "scale-2"])
def test_same_rows_in_any_format_and_order_answer_bit_for_bit_alike(
        client: TestClient, mint: Mint, scaled: bool) -> None:
    answers = _answers(client, mint, scaled=scaled)
    expected = answers["utf8.csv"]
    first = json.loads(expected[0])[0]
    assert any(cell["status"] == "published" for cell in first)
    for name, got in answers.items():
        assert got == expected, name


def test_a_declared_scale_publishes_the_exact_decimal_sum(client: TestClient,
                                                          mint: Mint) -> None:
    answers = _answers(client, mint, scaled=True)
    cells = json.loads(answers["utf8.csv"][1])[0]
    (total,) = [c for c in cells if c["status"] == "published"]
    exact = sum(DATA["用电量"].map(lambda v: round(v * 100)).tolist()) / 100
    assert total["values"]["sum_用电量"] == exact


def _orgs(c: TestClient, mint: Mint) -> str:
    admin, grid = mint("broker-ops", "admin"), mint("grid", "provider")
    c.post("/v1/orgs", headers=auth(admin), json={"id": "grid", "name": "g", "kind": "enterprise"})
    return grid


def test_a_declared_scale_is_shown_with_the_field(client: TestClient, mint: Mint) -> None:
    grid = _orgs(client, mint)
    r = client.post("/v1/datasets", headers=auth(grid),
                    files={"file": ("d.csv", DATA.to_csv(index=False).encode())},
                    data={"meta": json.dumps(_meta("energy", scaled=True))})
    assert r.status_code == 201, r.text
    fields = client.get(f"/v1/datasets/{r.json()['id']}", headers=auth(grid)).json()["fields"]
    assert {f["name"]: f.get("scale") for f in fields}["用电量"] == 2


@pytest.mark.parametrize("scale", [10, -1, "2", 1.5])
def test_a_scale_outside_0_to_9_is_refused(client: TestClient, mint: Mint, scale: Any) -> None:
    grid = _orgs(client, mint)
    meta = _meta("energy", scaled=True)
    meta["fields"][2]["scale"] = scale
    r = client.post("/v1/datasets", headers=auth(grid),
                    files={"file": ("d.csv", DATA.to_csv(index=False).encode())},
                    data={"meta": json.dumps(meta)})
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")


@pytest.mark.parametrize("name", ["d.csv", "d.parquet"])
def test_values_the_scale_cannot_hold_refuse_the_upload_naming_column_and_count(
        client: TestClient, mint: Mint, name: str) -> None:
    grid = _orgs(client, mint)
    frame = DATA.copy()
    frame.loc[[3, 10, 11], "用电量"] = [0.125, 98765.4321, 7.001]
    frame.loc[20, "用电量"] = 5e18
    content = frame.to_csv(index=False).encode() if name.endswith(".csv") \
        else _parquet(frame).getvalue()
    r = client.post("/v1/datasets", headers=auth(grid), files={"file": (name, content)},
                    data={"meta": json.dumps(_meta("energy", scaled=True))})
    body = assert_problem(r, 422, "bad-dataset")
    issues = {p["issue"]: p for p in body["problems"]}
    assert issues["too-many-decimals"] == {"column": "用电量", "issue": "too-many-decimals",
                                           "rows": [4, 11, 12], "count": 3}
    assert issues["too-large"]["count"] == 1
    assert not any(v in r.text for v in ("0.125", "98765.4", "7.001", "5e+18", "50000000"))
    assert client.get("/v1/datasets", headers=auth(grid)).json() == []


def test_register_numbering_does_not_change_the_answer(client: TestClient, mint: Mint,
                                                       tmp_path: Path) -> None:
    """Another broker that met the enterprises in another order (its county register numbers
    them otherwise, and every row's atom differs) answers alike."""
    first = _answers(client, mint, scaled=True)["utf8.csv"]
    settings = Settings(data_dir=tmp_path / "other", jwt_secret=SecretStr(SECRET))
    reordered = DATA.sample(frac=1, random_state=7).reset_index(drop=True)
    with TestClient(create_app(settings)) as other:
        grid, econ = _orgs(other, mint), mint("econ", "consumer")
        admin = mint("broker-ops", "admin")
        other.post("/v1/orgs", headers=auth(admin),
                   json={"id": "econ", "name": "econ", "kind": "department"})
        r = other.post("/v1/datasets", headers=auth(grid),
                       files={"file": ("r.csv", reordered.to_csv(index=False).encode())},
                       data={"meta": json.dumps(_meta("energy", scaled=True))})
        assert r.status_code == 201, r.text
        r = other.post("/v1/contracts", headers=auth(grid), json=contract_terms(
            r.json()["id"], fields={"乡镇": "clear", "用电量": "aggregate", "产值": "aggregate",
                                    "员工": "aggregate"}))
        cid = r.json()["id"]
        assert other.post(f"/v1/contracts/{cid}/accept", headers=auth(econ)).status_code == 200
        answers = []
        for query in QUERIES:
            r = other.post("/v1/queries/aggregate", headers=auth(econ),
                           json={"contract_id": cid, **query})
            assert r.status_code == 200, r.text
            answers.append(json.dumps([r.json()["cells"], r.json()["suppressed"]],
                                      ensure_ascii=False))
    assert answers == first


def test_a_scaled_field_serves_versions_bins_and_range_filters(client: TestClient,
                                                              mint: Mint) -> None:
    """A new version conforms to the same decimals; bins and ranges compare decimals with the
    request's numbers."""
    grid, econ = _orgs(client, mint), mint("econ", "consumer")
    client.post("/v1/orgs", headers=auth(mint("broker-ops", "admin")),
                json={"id": "econ", "name": "econ", "kind": "department"})
    meta = _meta("energy", scaled=True)
    meta["fields"].append({"name": "面积", "type": "number", "role": "dimension", "scale": 1,
                           "bins": [0, 5, 10.5, 20]})
    frame = DATA.assign(面积=[float(i % 40) / 2 for i in range(len(DATA))])
    r = client.post("/v1/datasets", headers=auth(grid),
                    files={"file": ("d.csv", frame.to_csv(index=False).encode())},
                    data={"meta": json.dumps(meta)})
    assert r.status_code == 201, r.text
    did = r.json()["id"]
    r = client.post("/v1/contracts", headers=auth(grid), json=contract_terms(did, fields={
        "乡镇": "clear", "用电量": "aggregate", "产值": "aggregate", "员工": "aggregate",
        "面积": "clear"}))
    cid = r.json()["id"]
    assert client.post(f"/v1/contracts/{cid}/accept", headers=auth(econ)).status_code == 200

    def total(**body: Any) -> Any:
        r = client.post("/v1/queries/aggregate", headers=auth(econ), json={
            "contract_id": cid, "purpose": "energy-planning", "group_by": [], "totals": True,
            "measures": [{"fn": "sum", "field": "用电量"}], **body})
        assert r.status_code == 200, r.text
        return r.json()["cells"]

    exact = sum(round(v * 100) for v in DATA["用电量"]) / 100
    assert total()[0]["values"]["sum_用电量"] == exact
    ranged = total(filters=[{"field": "面积", "op": "range", "value": [0, 9.5]}])
    in_range = frame["面积"] <= 9.5
    assert ranged[0]["values"]["sum_用电量"] == \
        sum(round(v * 100) for v in frame.loc[in_range, "用电量"]) / 100
    r = client.post("/v1/queries/aggregate", headers=auth(econ), json={
        "contract_id": cid, "purpose": "energy-planning", "totals": False,
        "group_by": [{"field": "面积", "bins": [0, 10.5, 20]}],
        "measures": [{"fn": "count"}]})
    assert r.status_code == 200, r.text
    assert [c["values"]["count"] for c in r.json()["cells"] if c["status"] == "published"]
    doubled = frame.assign(用电量=frame["用电量"] * 2)
    r = client.post(f"/v1/datasets/{did}/versions", headers=auth(grid),
                    files={"file": ("v.parquet", _parquet(doubled).getvalue())})
    assert r.status_code == 201, r.text
    assert total()[0]["values"]["sum_用电量"] == round(2 * exact, 2)
