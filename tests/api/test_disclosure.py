"""Disclosure control over HTTP: the four attacks of issue 3 on a county-shaped dataset, across
colluding departments, with generalisation levels, code lists and the remainder row."""

from __future__ import annotations

from typing import Any

import pandas as pd
import pytest

from tests.conftest import World, assert_problem, auth, contract_terms, upload

TOWNS = ["Xiashi", "Chang'an", "Jianshan"]
#: Xiashi: eleven small textile firms and a photovoltaic giant with 90% of the town's output.
#: Chang'an: nine firms, one of them the lone pv firm. Jianshan is in the code list but empty.
FIRMS = pd.DataFrame({
    "uscc": [f"X{i:02d}" for i in range(12)] + [f"C{i:02d}" for i in range(9)],
    "town": ["Xiashi"] * 12 + ["Chang'an"] * 9,
    "industry": ["C3825"] + ["C1713"] * 11 + ["C3825"] + ["C1713"] * 4 + ["C3670"] * 4,
    "output": [9000.0] + [90.0] * 11 + [300.0] + [100.0, 110.0, 120.0, 130.0] * 2,
})
META: dict[str, Any] = {
    "name": "county-output",
    "entity_field": "uscc",
    "fields": [
        {"name": "uscc", "type": "string", "role": "entity", "sensitivity": "L2"},
        {"name": "town", "type": "string", "role": "dimension", "codes": TOWNS},
        {"name": "industry", "type": "string", "role": "dimension", "hierarchy": "gbt4754",
         "codes": ["C3825", "C1713", "C3670", "C3856"]},
        {"name": "output", "type": "number", "role": "measure", "sensitivity": "L2",
         "bins": [10, 100, 1000, 10000]},
    ],
}
#: Output in clear, so that it may also be cut into its declared bins as a dimension.
FIELDS = {"town": "clear", "industry": "clear", "output": "clear"}


def _contract(world: World, consumer: str, token: str, dataset_id: str, k_min: int = 3) -> str:
    terms = contract_terms(dataset_id, consumer_org=consumer, fields=FIELDS, k_min=k_min)
    offered = world.client.post("/v1/contracts", headers=auth(world.grid), json=terms)
    assert offered.status_code == 201, offered.text
    cid: str = offered.json()["id"]
    accepted = world.client.post(f"/v1/contracts/{cid}/accept", headers=auth(token))
    assert accepted.status_code == 200, accepted.text
    return cid


@pytest.fixture
def county(world: World) -> dict[str, str]:
    """The county dataset offered to both departments: econ and env."""
    r = upload(world.client, world.grid, FIRMS, META)
    assert r.status_code == 201, r.text
    return {"econ": _contract(world, "econ", world.econ, r.json()["id"]),
            "env": _contract(world, "env", world.env, r.json()["id"])}


def _ask(world: World, token: str, contract: str, **body: Any) -> dict[str, Any]:
    r = world.client.post("/v1/queries/aggregate", headers=auth(token), json={
        "contract_id": contract, "purpose": "energy-planning",
        "measures": [{"fn": "count"}, {"fn": "sum", "field": "output"}], **body})
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


def _by(answer: dict[str, Any], dim: str) -> dict[str, dict[str, Any]]:
    return {c["key"].get(dim, "*"): c for c in answer["cells"]}


def test_the_giant_is_not_published_even_among_twelve(world: World,
                                                     county: dict[str, str]) -> None:
    cells = _by(_ask(world, world.econ, county["econ"], group_by=["town"], totals=True), "town")
    assert cells["Xiashi"]["reason"] == "dominance"
    # Chang'an alone would give Xiashi as total minus Chang'an: one of them must go too.
    assert "complementary" in {cells["Chang'an"].get("reason"), cells["*"].get("reason")}


def test_a_suppressed_cell_is_not_total_minus_the_published(world: World,
                                                             county: dict[str, str]) -> None:
    answer = _ask(world, world.econ, county["econ"], group_by=["town", "industry"], totals=True)
    published = {(c["key"].get("town"), c["key"].get("industry")): c["values"]
                 for c in answer["cells"] if c["status"] == "published"}
    suppressed = [c for c in answer["cells"] if c["status"] == "suppressed"]
    assert suppressed
    for cell in suppressed:
        town, industry = cell["key"].get("town"), cell["key"].get("industry")
        if town is None or industry is None:
            continue
        row = [published.get((town, i)) for i in META["fields"][2]["codes"]]
        total = published.get((town, None))
        # Never: the row total published together with every other cell of the row.
        others = [v for i, v in zip(META["fields"][2]["codes"], row, strict=True)
                  if i != industry]
        assert total is None or any(v is None for v in others), cell


def test_colluding_departments_cannot_difference_out_one_firm(
    world: World, county: dict[str, str]
) -> None:
    # econ learns Chang'an's total (nine firms); env asks Chang'an without photovoltaics,
    # which removes exactly one firm. Different departments, different contracts: one ledger.
    whole = _ask(world, world.econ, county["econ"],
                 filters=[{"field": "town", "op": "eq", "value": "Chang'an"}])
    assert whole["cells"][0]["status"] == "published"
    minus_one = _ask(world, world.env, county["env"], filters=[
        {"field": "town", "op": "eq", "value": "Chang'an"},
        {"field": "industry", "op": "in", "value": ["C1713", "C3670"]}])
    assert minus_one["cells"][0]["reason"] == "differencing"
    assert minus_one["cells"][0]["values"] is None


def test_rows_are_not_enterprises(world: World) -> None:
    # Four firms, one of them with thirty monthly rows: 33 rows, but 4 enterprises < 5.
    frame = pd.DataFrame({"uscc": ["BIG"] * 30 + ["S1", "S2", "S3"], "town": "Xiashi",
                          "industry": "C1713", "output": [0.1] * 30 + [3.0] * 3})
    r = upload(world.client, world.grid, frame, {**META, "name": "monthly"})
    cid = _contract(world, "econ", world.econ, r.json()["id"], k_min=5)
    answer = _ask(world, world.econ, cid, group_by=["town"])
    assert answer["k"] == 5
    assert _by(answer, "town")["Xiashi"]["reason"] == "min-entities"


def test_an_identical_repeat_gets_the_identical_answer(world: World,
                                                       county: dict[str, str]) -> None:
    body = {"group_by": ["town", "industry"], "totals": True}
    first = _ask(world, world.econ, county["econ"], **body)
    again = _ask(world, world.econ, county["econ"], **body)
    other = _ask(world, world.env, county["env"], **body)
    assert first["cells"] == again["cells"] == other["cells"]
    assert first["receipt"]["seq"] < again["receipt"]["seq"] < other["receipt"]["seq"]


def test_code_lists_make_empty_and_small_cells_look_alike(world: World,
                                                          county: dict[str, str]) -> None:
    cells = _by(_ask(world, world.econ, county["econ"], group_by=["town"]), "town")
    assert list(cells) == TOWNS  # Jianshan has no firm, and is there all the same
    assert cells["Jianshan"] == {"key": {"town": "Jianshan"}, "values": None,
                                 "status": "suppressed", "reason": "min-entities"}


def test_generalised_levels_and_bins(world: World, county: dict[str, str]) -> None:
    answer = _ask(world, world.econ, county["econ"],
                  group_by=[{"field": "industry", "level": "section"}],
                  measures=[{"fn": "count"}])
    assert [c["key"] for c in answer["cells"]] == [{"industry": "C"}]
    assert answer["cells"][0]["values"] == {"count": 21}
    binned = _ask(world, world.econ, county["econ"], measures=[{"fn": "count"}],
                  group_by=[{"field": "output", "bins": [100, 1000]}])
    assert [c["key"]["output"] for c in binned["cells"]] == ["<100", "[100,1000)", ">=1000"]
    # Edges off the declared grid could single out one value ([90, 90.5) holds 11 firms
    # with exactly 90): the policy refuses them for a measure.
    r = world.client.post("/v1/queries/aggregate", headers=auth(world.econ), json={
        "contract_id": county["econ"], "purpose": "energy-planning",
        "measures": [{"fn": "count"}], "group_by": [{"field": "output", "bins": [90, 90.5]}]})
    assert r.status_code == 403, r.text
    assert r.json()["reasons"] == ["measure-dimension-requires-bins"]


@pytest.mark.parametrize("dimension", [
    {"field": "town", "level": "year"},               # a string without a hierarchy
    {"field": "industry", "level": "month"},          # not a level of GB/T 4754
    {"field": "output", "bins": [5, 1]},              # edges must rise
    {"field": "output", "bins": []},
    {"field": "town", "bins": [1, 2]},                # bins need a number
    {"field": "industry", "level": "division", "bins": [1]},
    {"field": "industry", "level": "division", "extra": 1},
])
def test_bad_dimensions_are_problems(world: World, county: dict[str, str],
                                     dimension: dict[str, Any]) -> None:
    r = world.client.post("/v1/queries/aggregate", headers=auth(world.econ), json={
        "contract_id": county["econ"], "purpose": "energy-planning",
        "measures": [{"fn": "count"}], "group_by": [dimension]})
    # Edges off the declared grid are refused by policy (403) before the planner looks.
    assert r.status_code in (400, 403, 422), r.text
    assert r.headers["content-type"].startswith("application/problem+json")


def test_values_outside_the_code_list_are_refused_at_upload(world: World) -> None:
    frame = FIRMS.assign(town=["Xiashi"] * 20 + ["Atlantis"])
    r = upload(world.client, world.grid, frame, {**META, "name": "bad-codes"})
    body = assert_problem(r, 422, "bad-dataset")
    assert "Atlantis" not in r.text
    assert {"column": "town", "issue": "not-in-codes", "rows": [21], "count": 1} in (
        body["problems"] if "problems" in body else body.get("errors", []))


def test_the_remainder_pools_what_was_withheld(world: World, county: dict[str, str]) -> None:
    answer = _ask(world, world.econ, county["econ"], group_by=["town", "industry"],
                  remainder=True)
    rest = answer["remainder"]
    # The withheld cells include the pv giant: pooled, it still dominates (or the grand
    # total is withheld, which the remainder would otherwise give away).
    assert rest["status"] == "suppressed"
    assert rest["reason"] in ("dominance", "complementary")
    assert rest["values"] is None


def test_a_complement_cannot_be_asked_for_on_its_own(world: World,
                                                    county: dict[str, str]) -> None:
    table = _ask(world, world.econ, county["econ"], group_by=["town"], totals=True)
    complements = [c["key"]["town"] for c in table["cells"]
                   if c.get("reason") == "complementary" and "town" in c["key"]]
    assert complements, table["cells"]
    for town in complements:  # by another department, too
        alone = _ask(world, world.env, county["env"],
                     filters=[{"field": "town", "op": "eq", "value": town}])
        assert alone["cells"][0]["status"] == "suppressed", town
