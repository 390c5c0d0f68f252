"""Contract lifecycle and object-level access."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest

from broker.api.schemas.contracts import ContractOut
from broker.services.provider_inputs import ContractIn
from contracts.model import Terms
from tests.conftest import World, assert_problem, auth, contract_terms


def test_every_term_is_offered_and_shown_under_its_own_name() -> None:
    terms = {term.name for term in dataclasses.fields(Terms)}
    assert terms <= set(ContractIn.model_fields)
    assert terms <= set(ContractOut.model_fields)


def test_an_offer_comes_back_with_the_terms_it_was_made_with(world: World) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    body = contract_terms(world.dataset["id"], k_min=7, dominance={"n": 3, "k": 80.5, "p": 5.0},
                          dataset_version=1, result_retention_days=14,
                          valid_from=now.isoformat(),
                          valid_until=(now + timedelta(days=9)).isoformat())
    r = world.client.post("/v1/contracts", headers=auth(world.grid), json=body)
    assert r.status_code == 201
    got = r.json()
    for name, value in body.items():
        if name in ("valid_from", "valid_until"):
            assert datetime.fromisoformat(got[name]) == datetime.fromisoformat(value)
        else:
            assert got[name] == value, name


def test_offer_accept_revoke_lifecycle(world: World) -> None:
    c, cid = world.client, world.contract["id"]
    assert world.contract["status"] == "offered"
    got = c.get(f"/v1/contracts/{cid}", headers=auth(world.econ)).json()
    assert got["status"] == "active"
    assert got["accepted_at"]
    revoked = c.post(f"/v1/contracts/{cid}/revoke", headers=auth(world.grid))
    assert revoked.status_code == 200
    assert revoked.json()["status"] == "revoked"
    assert_problem(c.post(f"/v1/contracts/{cid}/accept", headers=auth(world.econ)), 409,
                   "conflict")
    assert_problem(c.post(f"/v1/contracts/{cid}/revoke", headers=auth(world.grid)), 409,
                   "conflict")


def test_other_orgs_get_404_never_content(world: World) -> None:
    c, cid = world.client, world.contract["id"]
    for token in (world.env, world.other_provider):
        r = c.get(f"/v1/contracts/{cid}", headers=auth(token))
        assert_problem(r, 404, "not-found")
        assert "econ" not in r.text
        assert_problem(c.post(f"/v1/contracts/{cid}/accept", headers=auth(token)), 404,
                       "not-found")
        assert_problem(c.post(f"/v1/contracts/{cid}/revoke", headers=auth(token)), 404,
                       "not-found")
    assert c.get("/v1/contracts", headers=auth(world.env)).json() == []


def test_parties_cannot_take_each_others_steps(world: World) -> None:
    c = world.client
    offered = c.post("/v1/contracts", headers=auth(world.grid),
                     json=contract_terms(world.dataset["id"])).json()
    r = c.post(f"/v1/contracts/{offered['id']}/accept", headers=auth(world.grid))
    assert assert_problem(r, 403, "policy-denied")["reasons"] == ["role-not-permitted"]
    r = c.post(f"/v1/contracts/{offered['id']}/revoke", headers=auth(world.econ))
    assert assert_problem(r, 403, "policy-denied")["reasons"] == ["role-not-permitted"]


def test_auditor_reads_all_contracts_but_cannot_change_them(world: World) -> None:
    c, cid = world.client, world.contract["id"]
    assert [x["id"] for x in c.get("/v1/contracts", headers=auth(world.auditor)).json()] == [cid]
    r = c.post(f"/v1/contracts/{cid}/revoke", headers=auth(world.auditor))
    assert_problem(r, 403, "policy-denied")


def test_only_the_owner_offers_its_dataset(world: World) -> None:
    r = world.client.post("/v1/contracts", headers=auth(world.other_provider),
                          json=contract_terms(world.dataset["id"]))
    assert_problem(r, 404, "not-found")


def test_offer_validation(world: World) -> None:
    c, did = world.client, world.dataset["id"]
    r = c.post("/v1/contracts", headers=auth(world.grid),
               json=contract_terms(did, fields={"nope": "clear"}))
    assert assert_problem(r, 422, "invalid-input")["fields"] == ["nope"]
    r = c.post("/v1/contracts", headers=auth(world.grid),
               json=contract_terms(did, consumer_org="nobody"))
    assert_problem(r, 422, "invalid-input")
    past = datetime.now(UTC) - timedelta(days=1)
    r = c.post("/v1/contracts", headers=auth(world.grid),
               json=contract_terms(did, valid_until=past.isoformat(),
                                   valid_from=(past + timedelta(hours=1)).isoformat()))
    assert_problem(r, 422, "invalid-input")
    r = c.post("/v1/contracts", headers=auth(world.grid),
               json=contract_terms(did, k_min=1))
    assert_problem(r, 422, "invalid-input")
    r = c.post("/v1/contracts", headers=auth(world.grid),
               json=contract_terms(did, fields={"kwh": "everything"}))
    assert_problem(r, 422, "invalid-input")


def test_expired_offer_cannot_be_accepted(world: World) -> None:
    now = datetime.now(UTC)
    terms = contract_terms(world.dataset["id"], valid_from=(now - timedelta(days=2)).isoformat(),
                           valid_until=(now - timedelta(days=1)).isoformat())
    offered = world.client.post("/v1/contracts", headers=auth(world.grid), json=terms).json()
    assert offered["status"] == "expired"
    r = world.client.post(f"/v1/contracts/{offered['id']}/accept", headers=auth(world.econ))
    assert_problem(r, 409, "conflict")


@pytest.mark.parametrize("form", ["clear", "generalize", "aggregate"])
def test_the_entity_field_is_offered_only_pseudonymized(world: World, form: str) -> None:
    # Issue 18, finding 5: terms letting the entity out in clear were signed by both parties
    # although every query under them is then denied.
    before = len(world.client.get("/v1/contracts", headers=auth(world.grid)).json())
    r = world.client.post("/v1/contracts", headers=auth(world.grid), json=contract_terms(
        world.dataset["id"], fields={"town": "clear", "uscc": form}))
    body = assert_problem(r, 422, "invalid-input")
    assert body["fields"] == ["uscc"]
    assert len(world.client.get("/v1/contracts", headers=auth(world.grid)).json()) == before
    ok = world.client.post("/v1/contracts", headers=auth(world.grid), json=contract_terms(
        world.dataset["id"], fields={"town": "clear", "uscc": "pseudonymize"}))
    assert ok.status_code == 201, ok.text


# ----------------------------------------- forms every query would refuse (issue 18)


def test_an_identifier_in_clear_is_refused_at_offer(world: World) -> None:
    r = world.client.post("/v1/contracts", headers=auth(world.grid), json=contract_terms(
        world.energy_copy(), fields={"town": "clear", "name": "clear", "kwh": "aggregate"}))
    body = assert_problem(r, 422, "invalid-input")
    assert body["fields"] == ["name"]
    assert body["reasons"] == ["identifier-never-in-clear"]
    assert "pseudonymized" in body["detail"]


def test_the_entity_field_in_clear_is_refused_at_offer(world: World) -> None:
    r = world.client.post("/v1/contracts", headers=auth(world.grid), json=contract_terms(
        world.energy_copy(), fields={"uscc": "clear", "kwh": "aggregate"}))
    body = assert_problem(r, 422, "invalid-input")
    assert body["fields"] == ["uscc"]
    assert body["reasons"] == ["entity-field-pseudonymized-only"]


def test_identifiers_and_the_entity_may_be_offered_pseudonymized(world: World) -> None:
    r = world.client.post("/v1/contracts", headers=auth(world.grid), json=contract_terms(
        world.energy_copy(), fields={"uscc": "pseudonymize", "name": "pseudonymize",
                                     "kwh": "aggregate"}))
    assert r.status_code == 201, r.text
