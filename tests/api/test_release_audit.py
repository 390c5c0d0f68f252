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
