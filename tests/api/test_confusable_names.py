"""Names that look alike (UTS #39 skeletons) or mix scripts are refused in their scope."""

from __future__ import annotations

from typing import Any

import pandas as pd

from tests.conftest import ENERGY, ENERGY_META, World, assert_problem, auth, upload

#: "town" with a Cyrillic o (U+043E): mixed scripts.
CYRILLIC_TOWN = "t\u043ewn"
#: "cop" in Cyrillic letters only: one script, but it looks like the Latin word.
CYRILLIC_COP = "\u0441\u043e\u0440"


def _meta(name: str, *fields: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "entity_field": "uscc",
            "fields": [{"name": "uscc", "type": "string", "role": "entity"}, *fields]}


def _frame(*names: str) -> pd.DataFrame:
    return pd.DataFrame({"uscc": [f"E{i}" for i in range(4)], **{n: ["x"] * 4 for n in names}})


def test_field_names_that_look_alike_are_refused_naming_both(world: World) -> None:
    before = world.client.get("/v1/datasets", headers=auth(world.grid)).json()
    r = upload(world.client, world.grid, _frame("cop", CYRILLIC_COP), _meta(
        "lookalike", {"name": "cop", "type": "string", "role": "dimension"},
        {"name": CYRILLIC_COP, "type": "string", "role": "dimension"}))
    body = assert_problem(r, 422, "invalid-input")
    assert body["reasons"] == ["confusable-names"]
    assert body["fields"] == sorted(["cop", CYRILLIC_COP])
    assert body["groups"] == [sorted(["cop", CYRILLIC_COP])]
    assert "'\\u0441\\u043e\\u0440'" in body["detail"]  # escaped, so the difference shows
    assert world.client.get("/v1/datasets", headers=auth(world.grid)).json() == before


def test_a_field_name_that_mixes_latin_and_cyrillic_is_refused(world: World) -> None:
    r = upload(world.client, world.grid, _frame(CYRILLIC_TOWN), _meta(
        "mixed", {"name": CYRILLIC_TOWN, "type": "string", "role": "dimension"}))
    body = assert_problem(r, 422, "invalid-input")
    assert body["reasons"] == ["mixed-script"]
    assert body["fields"] == [CYRILLIC_TOWN]


def test_latin_with_han_and_names_of_one_other_script_are_fine(world: World) -> None:
    names = ("GDP增速", "产值_2024", "город")
    r = upload(world.client, world.grid, _frame(*names), _meta(
        "mixed-fine", *({"name": n, "type": "string", "role": "dimension"} for n in names)))
    assert r.status_code == 201, r.text


def test_a_dataset_name_like_one_of_the_owners_is_refused(world: World) -> None:
    lookalike = "\u0435nergy"  # Cyrillic e, then Latin: mixed, and like "energy"
    r = upload(world.client, world.grid, ENERGY, {**ENERGY_META, "name": lookalike})
    assert assert_problem(r, 422, "invalid-input")["reasons"] == ["mixed-script"]
    r = upload(world.client, world.grid, ENERGY, {**ENERGY_META, "name": "ENERGY"})
    body = assert_problem(r, 422, "invalid-input")
    assert body["reasons"] == ["confusable-names"]
    assert body["names"] == ["ENERGY", "energy"]
    r = upload(world.client, world.grid, ENERGY, {**ENERGY_META, "name": "energ\u0443"})
    assert assert_problem(r, 422, "invalid-input")["reasons"] == ["mixed-script"]
    r = upload(world.client, world.grid, ENERGY, {**ENERGY_META, "name": "rnain"})
    assert r.status_code == 201, r.text
    r = upload(world.client, world.grid, ENERGY, {**ENERGY_META, "name": "main"})
    assert assert_problem(r, 422, "invalid-input")["names"] == ["main", "rnain"]


def test_another_owner_may_use_a_lookalike_dataset_name(world: World) -> None:
    r = upload(world.client, world.other_provider, ENERGY, {**ENERGY_META, "name": "ENERGY"})
    assert r.status_code == 201, r.text


def test_an_organisation_name_like_a_registered_one_is_refused(world: World) -> None:
    r = world.client.post("/v1/orgs", headers=auth(world.admin),
                          json={"id": "grid-2", "name": "Gr\u0456d", "kind": "enterprise"})
    assert assert_problem(r, 422, "invalid-input")["reasons"] == ["mixed-script"]
    r = world.client.post("/v1/orgs", headers=auth(world.admin),
                          json={"id": "grid-2", "name": "GRID", "kind": "enterprise"})
    body = assert_problem(r, 422, "invalid-input")
    assert body["reasons"] == ["confusable-names"]
    assert body["names"] == ["GRID", "Grid"]
    r = world.client.post("/v1/orgs", headers=auth(world.admin),
                          json={"id": "grid-2", "name": "国家电网 State Grid",
                                "kind": "enterprise"})
    assert r.status_code == 201, r.text
