"""The release audit over HTTP: 'linked' cells, the dry run's prediction, and that nothing a
dry run computes is recorded."""

from __future__ import annotations

from typing import Any

import pandas as pd

from tests.conftest import World, auth, released

TOWNS = pd.DataFrame({"uscc": [f"E{i}" for i in range(10)],
                      "town": ["A"] * 5 + ["B"] * 4 + ["C"],      # E9 is alone in town C
                      "kwh": [100.0, 101, 102, 103, 104, 105, 106, 107, 108, 137]})
SUM = [{"fn": "sum", "field": "kwh"}, {"fn": "count"}]


def _towns(world: World) -> str:
    did = world.add_dataset(TOWNS, [{"name": "town", "type": "string", "role": "dimension"},
                                    {"name": "kwh", "type": "number", "role": "measure"}])
    return world.contract_for(did, fields={"town": "clear", "kwh": "aggregate"})


def _total(*towns: str, contract: str) -> dict[str, Any]:
    return {"contract_id": contract, "purpose": "energy-planning", "measures": SUM,
            "filters": [{"field": "town", "op": "in", "value": list(towns)}]}


def test_the_third_query_of_a_tracker_is_predicted_and_withheld_as_linked(world: World) -> None:
    cid = _towns(world)
    for towns in (("A", "C"), ("A", "B")):
        assert released(world.client.post("/v1/queries/aggregate", headers=auth(world.econ),
                                           json=_total(*towns, contract=cid)))[0][1] is not None
    third = _total("B", contract=cid)
    dry = world.client.post("/v1/policy/explain", headers=auth(world.econ), json=third)
    assert dry.status_code == 200, dry.text
    assert dry.json()["predicted"] == {"published": 0, "suppressed": {"linked": 1}}
    # the dry run recorded nothing: asking it again predicts the same
    again = world.client.post("/v1/policy/explain", headers=auth(world.econ), json=third)
    assert again.json()["predicted"] == dry.json()["predicted"]
    r = world.client.post("/v1/queries/aggregate", headers=auth(world.econ), json=third)
    assert released(r) == [({}, None, "linked")]
    assert r.json()["suppressed"] == {"linked": 1}


def test_a_second_department_cannot_finish_the_tracker_either(world: World) -> None:
    cid = _towns(world)
    assert released(world.client.post("/v1/queries/aggregate", headers=auth(world.econ),
                                       json=_total("A", "C", contract=cid)))[0][1] is not None
    assert released(world.client.post("/v1/queries/aggregate", headers=auth(world.econ),
                                       json=_total("A", "B", contract=cid)))[0][1] is not None
    did = world.client.get(f"/v1/contracts/{cid}", headers=auth(world.econ)).json()["dataset_id"]
    env = world.contract_for(did, consumer="env", fields={"town": "clear", "kwh": "aggregate"})
    r = world.client.post("/v1/queries/aggregate", headers=auth(world.env),
                          json=_total("B", contract=env))
    assert released(r) == [({}, None, "linked")]


def _narrowing_county() -> pd.DataFrame:
    """L: one big firm alone in its town; W: ten small firms, one of them the only TEX firm
    there; P1-P3: twelve firms each."""
    rows = [("L0", "L", "PV", 10_000.0)]
    rows += [(f"W{i}", "W", ind, 200.0)
             for i, ind in enumerate(["TEX"] + ["PV"] * 3 + ["AUTO"] * 3 + ["HOME"] * 3)]
    rows += [(f"{t}{i}", t, ["PV", "AUTO", "HOME"][i % 3], 1000.0)
             for t in ("P1", "P2", "P3") for i in range(12)]
    return pd.DataFrame(rows, columns=["uscc", "town", "industry", "kwh"])


def test_a_later_table_may_not_narrow_a_withheld_total_inside_its_protection_interval(
        world: World) -> None:
    """By town, L (10,000 kWh, one firm) is withheld and W (2,000) is its complement: the
    attacker knows L + W = 12,000. By industry within W, TEX (one firm) and one complement
    are withheld and the margin W is linked; publishing the other two industries (1,200)
    would bound L to at most 10,800, inside its protection interval [9,000, 11,000]: one of
    them is withheld as linked."""
    did = world.add_dataset(_narrowing_county(), [
        {"name": "town", "type": "string", "role": "dimension"},
        {"name": "industry", "type": "string", "role": "dimension"},
        {"name": "kwh", "type": "number", "role": "measure"}])
    cid = world.contract_for(did, fields={"town": "clear", "industry": "clear",
                                          "kwh": "aggregate"})
    measures = [{"fn": "sum", "field": "kwh"}]
    first = released(world.client.post("/v1/queries/aggregate", headers=auth(world.econ), json={
        "contract_id": cid, "purpose": "energy-planning", "measures": measures,
        "group_by": ["town"], "totals": True}))
    withheld = {key.get("town"): reason for key, values, reason in first if values is None}
    assert withheld == {"L": "min-entities", "W": "complementary"}
    body = {"contract_id": cid, "purpose": "energy-planning", "measures": measures,
            "group_by": ["industry"], "totals": True,
            "filters": [{"field": "town", "op": "eq", "value": "W"}]}
    dry = world.client.post("/v1/policy/explain", headers=auth(world.econ), json=body)
    second = released(world.client.post("/v1/queries/aggregate", headers=auth(world.econ),
                                         json=body))
    # L = 12,000 - W, and W is at least what is published of it: that may not exceed 1,000
    shown = sum(values["sum_kwh"] for _, values, _ in second if values is not None)
    assert shown <= 1_000
    reasons = [reason for _, values, reason in second if values is None]
    assert "linked" in reasons
    assert "min-entities" in reasons
    predicted = dry.json()["predicted"]
    assert predicted["published"] == len(second) - len(reasons)
    assert sum(predicted["suppressed"].values()) == len(reasons)
