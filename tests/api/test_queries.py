"""Aggregate queries: entity-level counting, k_min suppression, policy denials, all audited."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime, timedelta
from typing import Any

from broker.settings import Settings
from tests.conftest import ENERGY, World, assert_problem, auth, contract_terms


def _cells(response: Any) -> dict[str, dict[str, Any]]:
    assert response.status_code == 200, response.text
    return {c["key"].get("town", "*"): c for c in response.json()["cells"]}


def _audit(settings: Settings) -> list[tuple[int, str, int, str]]:
    with sqlite3.connect(settings.data_dir / "broker.db") as conn:
        return conn.execute(
            "SELECT seq, action, allowed, body FROM audit_entries ORDER BY seq").fetchall()


def test_cells_count_enterprises_not_rows_and_small_cells_are_suppressed(world: World) -> None:
    r = world.query(group_by=["town"], measures=[
        {"fn": "count"}, {"fn": "sum", "field": "kwh"}, {"fn": "mean", "field": "kwh"}])
    cells = _cells(r)
    # Town A: 6 enterprises, E1 with three rows: 60 + 5*5 = 85 kWh over 8 rows.
    assert cells["A"] == {"key": {"town": "A"}, "status": "published", "reason": None,
                          "values": {"count": 6, "sum_kwh": 85.0, "mean_kwh": 85.0 / 8}}
    # Town B has 2 enterprises < k_min 3: no values and no count.
    assert cells["B"] == {"key": {"town": "B"}, "values": None, "status": "suppressed",
                          "reason": "min-entities"}
    body = r.json()
    assert body["suppressed"] == {"min-entities": 1}
    assert body["k"] == 3
    assert body["policy"]["fields"] == {"town": "clear", "kwh": "aggregate"}
    assert body["receipt"]["seq"] > 0
    assert len(body["receipt"]["leaf_hash"]) == 64


def test_release_is_audited_before_the_answer_with_its_receipt(
    world: World, settings: Settings
) -> None:
    # With the kWh sum the grand total is dominated by E7, so it (not town A) protects B.
    r = world.query(group_by=["town"], measures=[{"fn": "count"}, {"fn": "sum", "field": "kwh"}])
    receipt = r.json()["receipt"]
    seq, action, allowed, body = _audit(settings)[-1]
    assert (seq, action, allowed) == (receipt["seq"], "query.aggregate", 1)
    assert '"cells_published":1' in body
    assert '"cells_suppressed":1' in body
    assert r.json()["query_id"] in body


def test_ratio_and_alias(world: World) -> None:
    # Town A only: the county-wide kWh total is dominated by E7.
    r = world.query(measures=[{"fn": "ratio", "numerator": "kwh", "denominator": "kwh",
                               "as": "one"}],
                    filters=[{"field": "town", "op": "eq", "value": "A"}])
    assert r.json()["cells"] == [{"key": {}, "values": {"one": 1.0}, "status": "published",
                                  "reason": None}]


def test_filters_are_bound_not_pasted(world: World) -> None:
    r = world.query(group_by=["town"], filters=[
        {"field": "town", "op": "in", "value": ["A", "x' OR '1'='1"]}])
    assert set(_cells(r)) == {"A"}
    r = world.query(filters=[{"field": "town", "op": "eq", "value": "A'; DROP TABLE src; --"}])
    assert r.json()["cells"] == [{"key": {}, "values": None, "status": "suppressed",
                                  "reason": "min-entities"}]


def test_filter_value_of_wrong_type_is_422(world: World) -> None:
    r = world.query(filters=[{"field": "town", "op": "eq", "value": 5}])
    assert_problem(r, 422, "invalid-input")


def test_department_without_contract_is_403_with_reasons_and_audited(
    world: World, settings: Settings
) -> None:
    r = world.query(token=world.env, group_by=["town"])
    body = assert_problem(r, 403, "policy-denied")
    assert body["reasons"] == ["no-active-contract"]
    _seq, action, allowed, entry = _audit(settings)[-1]
    assert action == "query.aggregate"
    assert allowed == 0
    assert '"no-active-contract"' in entry
    assert '"analyst' not in entry


def test_unknown_contract_looks_like_anothers(world: World) -> None:
    r = world.query(contract_id="00000000-0000-4000-8000-000000000000")
    assert assert_problem(r, 403, "policy-denied")["reasons"] == ["no-active-contract"]


def test_identifier_entity_and_unlisted_fields_are_denied(legacy_world: World) -> None:
    world = legacy_world
    r = world.query(group_by=["name"])
    body = assert_problem(r, 403, "policy-denied")
    assert body["reasons"] == ["identifier-never-in-clear"]
    assert body["fields"] == {"name": ["identifier-never-in-clear"]}
    r = world.query(group_by=["uscc"])
    assert "entity-field-not-usable" in assert_problem(r, 403, "policy-denied")["reasons"]
    r = world.query(measures=[{"fn": "sum", "field": "secret"}])
    assert assert_problem(r, 403, "policy-denied")["reasons"] == ["field-not-in-contract"]
    r = world.query(group_by=["kwh"])
    assert set(assert_problem(r, 403, "policy-denied")["reasons"]) == {
        "field-aggregate-only", "measure-dimension-requires-bins"}


def test_purpose_outside_contract_or_catalogue_is_denied(world: World) -> None:
    r = world.query(purpose="tax-analysis")
    assert assert_problem(r, 403, "policy-denied")["reasons"] == ["purpose-not-in-contract"]
    r = world.query(purpose="marketing")
    assert set(assert_problem(r, 403, "policy-denied")["reasons"]) == {
        "purpose-not-in-contract", "purpose-unknown"}


def test_revocation_takes_effect_on_the_next_query(world: World) -> None:
    assert world.query().status_code == 200
    world.client.post(f"/v1/contracts/{world.contract['id']}/revoke", headers=auth(world.grid))
    r = world.query()
    assert assert_problem(r, 403, "policy-denied")["reasons"] == ["contract-not-active"]


def test_daily_quota_is_enforced(world: World) -> None:
    terms = contract_terms(world.dataset["id"], max_queries_per_day=2)
    c = world.client.post("/v1/contracts", headers=auth(world.grid), json=terms).json()
    world.client.post(f"/v1/contracts/{c['id']}/accept", headers=auth(world.econ))
    assert world.query(contract_id=c["id"]).status_code == 200
    assert world.query(contract_id=c["id"]).status_code == 200
    r = world.query(contract_id=c["id"])
    assert assert_problem(r, 403, "policy-denied")["reasons"] == ["daily-quota-exhausted"]


def test_contract_not_yet_valid_is_denied(world: World) -> None:
    now = datetime.now(UTC)
    terms = contract_terms(world.dataset["id"], valid_from=(now + timedelta(days=1)).isoformat(),
                           valid_until=(now + timedelta(days=2)).isoformat())
    c = world.client.post("/v1/contracts", headers=auth(world.grid), json=terms).json()
    world.client.post(f"/v1/contracts/{c['id']}/accept", headers=auth(world.econ))
    r = world.query(contract_id=c["id"])
    assert assert_problem(r, 403, "policy-denied")["reasons"] == ["contract-not-yet-valid"]


def test_provider_and_auditor_cannot_query(world: World) -> None:
    for token in (world.grid, world.auditor):
        r = world.query(token=token)
        assert "role-not-permitted" in assert_problem(r, 403, "policy-denied")["reasons"]


def test_only_consumers_explain(world: World) -> None:
    for token in (world.grid, world.auditor):
        r = world.client.post("/v1/policy/explain", headers=auth(token), json={
            "contract_id": world.contract["id"], "purpose": "energy-planning",
            "measures": [{"fn": "count"}]})
        assert assert_problem(r, 403, "policy-denied")["reasons"] == ["role-not-permitted"]


def test_explain_is_a_dry_run_that_is_audited(legacy_world: World, settings: Settings) -> None:
    world = legacy_world
    before = len(_audit(settings))
    r = world.client.post("/v1/policy/explain", headers=auth(world.econ), json={
        "contract_id": world.contract["id"], "purpose": "energy-planning",
        "group_by": ["name", "town"], "measures": [{"fn": "sum", "field": "kwh"}]})
    assert r.status_code == 200
    body = r.json()
    assert body["allow"] is False
    assert body["k"] == 3
    assert body["fields"] == {"name": "deny", "town": "clear", "kwh": "aggregate"}
    assert "cells" not in body
    entries = _audit(settings)
    assert len(entries) == before + 1
    assert entries[-1][1] == "policy.explain"


def test_no_row_value_reaches_the_audit_log(world: World, settings: Settings) -> None:
    world.query(group_by=["town"], measures=[{"fn": "sum", "field": "kwh"}])
    world.query(token=world.env, group_by=["town"])
    world.query(group_by=["name"])
    row_values = {str(v) for v in ENERGY.to_numpy().ravel()} | {
        json.dumps(float(v)) for v in ENERGY["kwh"]} | {"85", "85.0", "1007", "1007.0"}

    def leaves(node: Any) -> list[str]:
        if isinstance(node, dict):
            return [x for v in node.values() for x in leaves(v)]
        if isinstance(node, list):
            return [x for v in node for x in leaves(v)]
        return [json.dumps(node) if not isinstance(node, str) else node]

    for *_, body in _audit(settings):
        found = row_values & set(leaves(json.loads(body)))
        assert not found, found
