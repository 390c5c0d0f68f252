"""Organisations: registration by the operator, the directory for registered organisations."""

from __future__ import annotations

from broker.domain.uscc import make_uscc
from tests.conftest import Mint, World, assert_problem, auth


def test_operator_registers_an_org_with_a_valid_uscc(world: World) -> None:
    uscc = make_uscc("330481", "12345678")
    r = world.client.post("/v1/orgs", headers=auth(world.admin),
                          json={"id": "new-co", "name": "New Co", "kind": "enterprise",
                                "uscc": uscc})
    assert r.status_code == 201
    assert r.json()["uscc"] == uscc


def test_a_uscc_with_a_wrong_check_character_is_refused(world: World) -> None:
    uscc = make_uscc("330481", "12345678")
    wrong = uscc[:-1] + ("0" if uscc[-1] != "0" else "1")
    r = world.client.post("/v1/orgs", headers=auth(world.admin),
                          json={"id": "new-co", "name": "New Co", "kind": "enterprise",
                                "uscc": wrong})
    assert_problem(r, 422, "invalid-input")


def test_a_duplicate_org_is_a_conflict(world: World) -> None:
    r = world.client.post("/v1/orgs", headers=auth(world.admin),
                          json={"id": "grid", "name": "Again", "kind": "enterprise"})
    assert_problem(r, 409, "conflict")


def test_non_admins_are_refused_before_their_input_is_judged(world: World) -> None:
    r = world.client.post("/v1/orgs", headers=auth(world.grid),
                          json={"id": "x", "name": "X", "kind": "enterprise"})
    # "x" is too short for an org id, but a provider may not register orgs at all.
    assert_problem(r, 422, "invalid-input")  # the API schema rejects the shape first
    r = world.client.post("/v1/orgs", headers=auth(world.grid),
                          json={"id": "valid-id", "name": "X", "kind": "enterprise"})
    assert assert_problem(r, 403, "policy-denied")["reasons"] == ["role-not-permitted"]


def test_the_directory_is_for_the_operator_and_registered_orgs(world: World, mint: Mint) -> None:
    ids = [o["id"] for o in world.client.get("/v1/orgs", headers=auth(world.econ)).json()]
    assert ids == sorted(["grid", "water", "econ", "env", "audit-office"])
    assert len(world.client.get("/v1/orgs", headers=auth(world.admin)).json()) == 5
    r = world.client.get("/v1/orgs", headers=auth(mint("ghost", "consumer")))
    assert "org-not-registered" in assert_problem(r, 403, "policy-denied")["reasons"]
