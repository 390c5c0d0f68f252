"""Dataset upload: checked against the declared schema, all or nothing; catalogue visibility."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pandas as pd
from fastapi.testclient import TestClient

from broker.settings import Settings
from tests.conftest import (
    ENERGY,
    ENERGY_META,
    Mint,
    World,
    assert_problem,
    auth,
    contract_terms,
    upload,
)


def _stored_files(settings: Settings) -> list[Path]:
    root = settings.data_dir
    files = [p for p in root.rglob("*") if p.is_file()
             and (p.name.endswith((".parquet.enc", ".parquet.key")) or p.suffix == ".upload")]
    # A dataset's entity and atom indexes live beside its versions, never without one; the
    # county entity register (identifiers only, kept for good) is not a dataset's.
    files = [p for p in files if not p.name.startswith("register.")]
    indexes = [p for p in files if p.name.startswith(("entities.", "atoms."))]
    assert all(any(q.parent == p.parent for q in files if q.name.startswith("v"))
               for p in indexes)
    return [p for p in files if not p.name.startswith(("entities.", "atoms."))
            and not p.name.endswith(".key")]


def _dataset_rows(settings: Settings) -> int:
    with sqlite3.connect(settings.data_dir / "broker.db") as conn:
        return int(conn.execute("SELECT count(*) FROM datasets").fetchone()[0])


def test_upload_answers_201_with_id_version_rows_and_sha256(world: World) -> None:
    d = world.dataset
    assert d["version"] == 1
    assert d["rows"] == len(ENERGY)
    assert len(d["sha256"]) == 64
    assert d["owner_org"] == "grid"
    assert [f["name"] for f in d["fields"]] == ["uscc", "town", "name", "kwh"]


def test_wrong_type_is_refused_naming_column_and_rows_not_values(
    world: World, settings: Settings
) -> None:
    bad = ENERGY.copy()
    bad["kwh"] = bad["kwh"].astype(object)
    bad.loc[3, "kwh"] = "SECRET-NOT-A-NUMBER"
    before = _dataset_rows(settings)
    r = upload(world.client, world.grid, bad, {**ENERGY_META, "name": "energy-bad"})
    body = assert_problem(r, 422, "bad-dataset")
    assert body["problems"] == [{"column": "kwh", "issue": "not-number", "rows": [4], "count": 1}]
    assert "SECRET" not in r.text
    assert _dataset_rows(settings) == before
    assert len(_stored_files(settings)) == 1  # only the world's own dataset


def test_missing_entity_value_is_refused(world: World) -> None:
    bad = ENERGY.copy()
    bad.loc[2, "uscc"] = None
    r = upload(world.client, world.grid, bad, {**ENERGY_META, "name": "energy-bad"})
    body = assert_problem(r, 422, "bad-dataset")
    assert body["problems"][0]["issue"] == "entity-missing"
    assert body["problems"][0]["rows"] == [3]


def test_columns_must_match_the_declaration(world: World) -> None:
    extra = ENERGY.assign(secret_column=1)
    r = upload(world.client, world.grid, extra, {**ENERGY_META, "name": "energy-extra"})
    body = assert_problem(r, 422, "bad-dataset")
    assert {"column": None, "position": 5, "issue": "undeclared"} in body["problems"]
    assert "secret_column" not in r.text
    missing = ENERGY.drop(columns=["town"])
    r = upload(world.client, world.grid, missing, {**ENERGY_META, "name": "energy-missing"})
    assert {"column": "town", "issue": "missing"} in assert_problem(r, 422, "bad-dataset")[
        "problems"]


def test_junk_binary_file_is_refused_and_nothing_kept(world: World, settings: Settings) -> None:
    r = world.client.post(
        "/v1/datasets", headers=auth(world.grid),
        files={"file": ("junk.csv", bytes(range(256)) * 100, "text/csv")},
        data={"meta": '{"name": "junk", "entity_field": "uscc", "fields": '
                      '[{"name": "uscc", "type": "string", "role": "entity"}]}'},
    )
    assert_problem(r, 422, "bad-dataset")
    assert len(_stored_files(settings)) == 1


def test_ragged_csv_is_refused(world: World) -> None:
    content = b"uscc,town,name,kwh\nE1,A,F,1\nE2,A,F,1,EXTRA,EXTRA\n"
    r = world.client.post("/v1/datasets", headers=auth(world.grid),
                          files={"file": ("r.csv", content, "text/csv")},
                          data={"meta": '{"name": "ragged", "entity_field": "uscc", "fields": ['
                                        '{"name":"uscc","type":"string","role":"entity"},'
                                        '{"name":"town","type":"string","role":"dimension"},'
                                        '{"name":"name","type":"string","role":"identifier"},'
                                        '{"name":"kwh","type":"number","role":"measure"}]}'})
    assert_problem(r, 422, "bad-dataset")


def test_file_over_the_limit_is_413_and_nothing_kept(world: World, settings: Settings) -> None:
    big = b"uscc,town,name,kwh\n" + b"E1,A,F,1\n" * 400_000  # ~3.6 MB > 2 MB limit
    r = world.client.post("/v1/datasets", headers=auth(world.grid),
                          files={"file": ("big.csv", big, "text/csv")},
                          data={"meta": '{"name": "big", "entity_field": "uscc", "fields": []}'})
    assert_problem(r, 413, "payload-too-large")
    assert len(_stored_files(settings)) == 1


def test_meta_with_unknown_fields_or_bad_names_is_422(world: World) -> None:
    meta = {**ENERGY_META, "name": "x", "owner_org": "econ"}
    assert_problem(upload(world.client, world.grid, ENERGY, meta), 422, "invalid-input")
    meta = {**ENERGY_META, "name": "x",
            "fields": [*ENERGY_META["fields"][:-1],
                       {"name": 'kwh"; DROP TABLE x; --', "type": "number", "role": "measure"}]}
    assert_problem(upload(world.client, world.grid, ENERGY, meta), 422, "invalid-input")


def test_entity_field_must_be_the_one_entity_role(world: World) -> None:
    meta = {**ENERGY_META, "name": "x", "entity_field": "town"}
    assert_problem(upload(world.client, world.grid, ENERGY, meta), 422, "invalid-input")


def test_duplicate_name_for_the_same_owner_is_409(world: World, settings: Settings) -> None:
    r = upload(world.client, world.grid, ENERGY, ENERGY_META)
    assert_problem(r, 409, "conflict")
    assert len(_stored_files(settings)) == 1


def test_only_providers_of_registered_orgs_upload(world: World, mint: Mint) -> None:
    r = upload(world.client, world.econ, ENERGY, {**ENERGY_META, "name": "e2"})
    assert assert_problem(r, 403, "policy-denied")["reasons"] == ["role-not-permitted"]
    r = upload(world.client, mint("ghost-org", "provider"), ENERGY, {**ENERGY_META, "name": "e2"})
    assert "org-not-registered" in assert_problem(r, 403, "policy-denied")["reasons"]


def test_catalogue_visibility(world: World, mint: Mint) -> None:
    c, did = world.client, world.dataset["id"]
    assert [d["id"] for d in c.get("/v1/datasets", headers=auth(world.grid)).json()] == [did]
    assert c.get("/v1/datasets", headers=auth(world.other_provider)).json() == []
    assert_problem(c.get(f"/v1/datasets/{did}", headers=auth(world.other_provider)), 404,
                   "not-found")
    assert c.get("/v1/datasets", headers=auth(world.env)).json() == []
    assert_problem(c.get(f"/v1/datasets/{did}", headers=auth(world.env)), 404, "not-found")
    seen = c.get(f"/v1/datasets/{did}", headers=auth(world.econ)).json()
    assert {f["name"] for f in seen["fields"]} == {"town", "kwh", "name"}  # contracted only
    assert len(c.get(f"/v1/datasets/{did}", headers=auth(world.auditor)).json()["fields"]) == 4


def test_upload_of_the_county_slice_round_trips_types(client: TestClient, mint: Mint) -> None:
    from broker.demo.county import generate_county, grid_slice

    admin, grid = mint("broker-ops", "admin"), mint("grid-company", "provider")
    client.post("/v1/orgs", headers=auth(admin),
                json={"id": "grid-company", "name": "Grid", "kind": "enterprise"})
    data = grid_slice(generate_county(enterprises=200))
    r = upload(client, grid, data.frame, data.meta)
    assert r.status_code == 201, r.text
    assert r.json()["rows"] == len(data.frame)
    assert pd.api.types.is_float_dtype(data.frame["electricity_kwh"])


def test_chinese_names_and_an_excel_bom_are_accepted(world: World) -> None:
    frame = pd.DataFrame({"统一社会信用代码": [f"E{i}" for i in range(1, 12)],
                          "乡镇": ["甲"] * 6 + ["乙"] + ["丙"] * 4,
                          "用电量": [1.5, 2.5, 4.0, 2.0, 1.0, 1.0, 3.5, 1.0, 1.0, 1.0, 1.0]})
    meta = {"name": "用电数据-2025", "entity_field": "统一社会信用代码", "fields": [
        {"name": "统一社会信用代码", "type": "string", "role": "entity"},
        {"name": "乡镇", "type": "string", "role": "dimension"},
        {"name": "用电量", "type": "number", "role": "measure"}]}
    content = "\ufeff".encode() + frame.to_csv(index=False).encode()
    r = world.client.post("/v1/datasets", headers=auth(world.grid),
                          files={"file": ("用电.csv", content, "text/csv")},
                          data={"meta": json.dumps(meta, ensure_ascii=False)})
    assert r.status_code == 201, r.text
    assert [f["name"] for f in r.json()["fields"]] == ["统一社会信用代码", "乡镇", "用电量"]
    terms = contract_terms(r.json()["id"], fields={"乡镇": "clear", "用电量": "aggregate"})
    contract = world.client.post("/v1/contracts", headers=auth(world.grid), json=terms).json()
    world.client.post(f"/v1/contracts/{contract['id']}/accept", headers=auth(world.econ))
    answer = world.query(contract_id=contract["id"], group_by=["乡镇"],
                         measures=[{"fn": "sum", "field": "用电量"}]).json()
    cells = {c["key"]["乡镇"]: c for c in answer["cells"]}
    assert cells["甲"]["values"] == {"sum_用电量": 12.0}
    assert cells["乙"]["reason"] == "min-entities"
    assert cells["丙"]["reason"] == "complementary"  # else 乙 = total - 甲 - 丙


def test_names_with_quotes_spaces_or_separators_are_refused(world: World) -> None:
    for bad in ('kwh"', "k wh", "kwh;", "kwh\n", "1kwh", "a.b"):
        meta = {**ENERGY_META, "name": "x",
                "fields": [*ENERGY_META["fields"][:-1],
                           {"name": bad, "type": "number", "role": "measure"}]}
        assert_problem(upload(world.client, world.grid, ENERGY, meta), 422, "invalid-input")
