"""Field-flow policy over HTTP: the denials the issue names, the generalize and pseudonymize
verdicts carried out, the explain dry run, and both engines (embedded and an OPA server)
failing closed with an audited 503."""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from fastapi.testclient import TestClient

from broker.app import create_app
from broker.policy.bundle import PolicySources
from broker.settings import Settings
from policies import POLICY_DIR
from tests.conftest import Mint, World, assert_problem, auth, upload
from tests.fake_opa import FakeOpa, running_fake_opa


def _entries(world: World, **params: Any) -> list[dict[str, Any]]:
    r = world.client.get("/v1/audit/entries", headers=auth(world.auditor),
                         params={"limit": 500, **params})
    assert r.status_code == 200, r.text
    return [e["entry"] for e in r.json()["entries"]]



# ------------------------------------------------------------ the denials of "Done when"


def test_each_denial_of_the_issue_has_its_reason_over_http_and_on_the_record(
        legacy_world: World) -> None:
    world = legacy_world
    denied: dict[str, list[str]] = {}
    # An identifier in clear (the world's contract lists `name` as clear).
    r = world.query(group_by=["name"])
    denied["identifier"] = assert_problem(r, 403, "policy-denied")["reasons"]
    # A purpose outside the contract.
    r = world.query(purpose="tax-analysis")
    denied["purpose"] = assert_problem(r, 403, "policy-denied")["reasons"]
    # A field the contract does not list.
    r = world.query(measures=[{"fn": "sum", "field": "revenue"}])
    denied["unlisted"] = assert_problem(r, 403, "policy-denied")["reasons"]
    # Past the daily quota.
    one = world.contract_for(world.dataset["id"], max_queries_per_day=1)
    assert world.query(contract_id=one).status_code == 200
    r = world.query(contract_id=one)
    denied["quota"] = assert_problem(r, 403, "policy-denied")["reasons"]
    # After valid_until.
    short = world.contract_for(world.dataset["id"], valid_until=(
        datetime.now(UTC) + timedelta(seconds=2)).isoformat())
    assert world.query(contract_id=short).status_code == 200
    time.sleep(2.1)
    r = world.query(contract_id=short)
    denied["expired"] = assert_problem(r, 403, "policy-denied")["reasons"]

    assert denied == {
        "identifier": ["identifier-never-in-clear"],
        "purpose": ["purpose-not-in-contract"],
        "unlisted": ["field-not-in-contract"],
        "quota": ["daily-quota-exhausted"],
        "expired": ["contract-expired"],
    }
    refusals = [e for e in _entries(world, action="query.aggregate")
                if not e["decision"]["allowed"]]
    assert [e["decision"]["reasons"] for e in refusals] == list(denied.values())
    revision = PolicySources.load(POLICY_DIR).revision
    assert {e["decision"]["policy_revision"] for e in refusals} == {revision}


# ------------------------------------------------------------------- generalize


DAYS = pd.DataFrame({
    "uscc": [f"D{i:02d}" for i in range(12)],
    "town": ["A"] * 6 + ["B"] * 6,
    "day": [date(2025, 1 + (i % 6), 3 + i).isoformat() for i in range(12)],
    "kwh": [100.0 + i for i in range(12)],
})
DAYS_META: dict[str, Any] = {
    "name": "daily", "entity_field": "uscc",
    "fields": [
        {"name": "uscc", "type": "string", "role": "entity", "sensitivity": "L2"},
        {"name": "town", "type": "string", "role": "dimension"},
        {"name": "day", "type": "date", "role": "dimension"},
        {"name": "kwh", "type": "number", "role": "measure", "sensitivity": "L2"},
    ],
}


@pytest.fixture
def days(world: World) -> str:
    r = upload(world.client, world.grid, DAYS, DAYS_META)
    assert r.status_code == 201, r.text
    return world.contract_for(r.json()["id"],
                     fields={"town": "clear", "day": "generalize", "kwh": "aggregate"})


def test_a_generalize_field_flows_only_at_a_coarser_level(world: World, days: str) -> None:
    r = world.query(contract_id=days, group_by=[{"field": "day", "level": "year"}],
                    measures=[{"fn": "count"}, {"fn": "sum", "field": "kwh"}])
    assert r.status_code == 200, r.text
    assert r.json()["policy"]["fields"] == {"day": "generalize", "kwh": "aggregate"}
    assert [c["key"] for c in r.json()["cells"]] == [{"day": "2025"}]
    for group_by in (["day"], [{"field": "day", "level": "day"}]):
        r = world.query(contract_id=days, group_by=group_by)
        body = assert_problem(r, 403, "policy-denied")
        assert body["reasons"] == ["generalization-required"]
        assert body["fields"] == {"day": ["generalization-required"]}


def test_a_date_filter_on_a_generalize_field_must_follow_period_bounds(
        world: World, days: str) -> None:
    half_year = {"field": "day", "op": "range", "value": ["2025-01-01", "2025-06-30"]}
    r = world.query(contract_id=days, group_by=["town"], filters=[half_year])
    assert r.status_code == 200, r.text
    assert r.json()["policy"]["fields"]["day"] == "generalize"
    for value in (["2025-01-02", None], [None, "2025-03-30"], ["2025-03-01", "2025-03-01"]):
        r = world.query(contract_id=days, group_by=["town"],
                        filters=[{"field": "day", "op": "range", "value": value}])
        assert assert_problem(r, 403, "policy-denied")["reasons"] == ["generalization-required"]


# ----------------------------------------------------------------- pseudonymize


def test_pseudonymized_keys_are_stable_per_contract_and_unlinkable_across(
        world: World) -> None:
    fields = {"town": "pseudonymize", "kwh": "aggregate"}
    copy = world.energy_copy()  # the world's dataset lets towns out in clear
    econ = world.contract_for(copy, fields=fields)
    body: dict[str, Any] = {"group_by": ["town"],
                            "measures": [{"fn": "count"}, {"fn": "sum", "field": "kwh"}]}
    first = world.query(contract_id=econ, **body)
    assert first.status_code == 200, first.text
    assert first.json()["policy"]["fields"]["town"] == "pseudonymize"
    keys = [c["key"]["town"] for c in first.json()["cells"]]
    # Town B has 2 firms (< k): under a pseudonym its key is not shown at all, since one
    # pseudonym per firm would count the firms of any cell.
    assert len(keys) == 1
    assert all(k.startswith("ps_") and len(k) == 23 for k in keys)
    assert keys == sorted(keys)  # ordered by pseudonym, not by the hidden names
    assert not {"A", "B"} & set(keys)
    # The same contract asking again (the stored answer) gets the same pseudonyms.
    again = world.query(contract_id=econ, **body)
    assert [c["key"]["town"] for c in again.json()["cells"]] == keys
    # Another consumer's contract over the same data gets unrelated ones.
    env = world.contract_for(copy, consumer="env", fields=fields)
    other = world.client.post("/v1/queries/aggregate", headers=auth(world.env), json={
        "contract_id": env, "purpose": "energy-planning", **body})
    assert other.status_code == 200, other.text
    assert not {c["key"]["town"] for c in other.json()["cells"]} & set(keys)
    # Published figures are the same as in clear (the same data, another dataset): only the
    # keys are hidden.
    clear = world.query(**body)
    assert sorted(c["values"]["count"] for c in clear.json()["cells"]
                  if c["status"] == "published") == sorted(
        c["values"]["count"] for c in first.json()["cells"] if c["status"] == "published")


def test_a_pseudonymized_field_cannot_be_filtered_on(world: World) -> None:
    cid = world.contract_for(world.energy_copy(),
                             fields={"town": "pseudonymize", "kwh": "aggregate"})
    r = world.query(contract_id=cid, filters=[{"field": "town", "op": "eq", "value": "A"}])
    assert assert_problem(r, 403, "policy-denied")["reasons"] == ["filter-on-pseudonymized-field"]


# ---------------------------------------------------------------------- explain


def test_explain_gives_verdicts_k_quota_and_thresholds_and_releases_nothing(
        legacy_world: World) -> None:
    world = legacy_world
    cid = world.contract_for(world.energy_copy(), max_queries_per_day=7,
                    fields={"town": "pseudonymize", "kwh": "aggregate", "name": "clear"},
                    dominance={"n": 3, "k": 70})
    query = {"contract_id": cid, "purpose": "energy-planning", "group_by": ["town"],
             "measures": [{"fn": "sum", "field": "kwh"}]}
    r = world.client.post("/v1/policy/explain", headers=auth(world.econ), json=query)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body == {
        "allow": True, "reasons": [], "fields": {"town": "pseudonymize", "kwh": "aggregate"},
        "field_reasons": {}, "k": 3, "quota_remaining": 7,
        "disclosure": {"k_min": 3, "dominance_n": 3, "dominance_k": 70.0, "p_percent": 0.0,
                       "protection_percent": 10.0},
        "policy_revision": PolicySources.load(POLICY_DIR).revision,
        # town A: one firm holds 60 of 85 kWh, over (3, 70%); town B's two firms are not
        # even shown under a pseudonym
        "predicted": {"published": 0, "suppressed": {"dominance": 1}},
    }
    denied = world.client.post("/v1/policy/explain", headers=auth(world.econ),
                               json={**query, "group_by": ["name"]})
    assert denied.status_code == 200
    assert denied.json()["allow"] is False
    assert denied.json()["field_reasons"] == {"name": ["identifier-never-in-clear"]}
    assert denied.json()["disclosure"] is None
    # A dry run spends no quota and releases nothing, but is on the record.
    assert world.client.post("/v1/policy/explain", headers=auth(world.econ),
                             json=query).json()["quota_remaining"] == 7
    entries = _entries(world, action="policy.explain")
    assert [e["decision"]["allowed"] for e in entries] == [True, False, True]
    assert all(e["disclosure"] is None or not e["disclosure"].get("cells_published")
               for e in entries)


# ------------------------------------------------------------------ failing closed


@pytest.fixture
def opa() -> Iterator[tuple[str, FakeOpa]]:
    with running_fake_opa() as served:
        yield served


def _opa_world(settings: Settings, mint: Mint, url: str, **extra: Any) -> Iterator[World]:
    opa_settings = settings.model_copy(update={
        "policy_engine": "opa", "opa_url": url, "opa_push_policies": True, **extra})
    with TestClient(create_app(opa_settings)) as client:
        yield World(client, mint)


def test_the_opa_engine_serves_the_same_story_and_fails_closed(
        settings: Settings, mint: Mint, opa: tuple[str, FakeOpa]) -> None:
    url, state = opa
    for world in _opa_world(settings, mint, url, policy_timeout_seconds=0.5):
        r = world.query(group_by=["town"])
        assert r.status_code == 200, r.text
        assert r.json()["policy"]["revision"] == PolicySources.load(POLICY_DIR).revision
        assert state.requests > 10  # every decision went over HTTP

        assert world.client.get("/readyz").json()["status"] == "ready"
        state.fail_status = 500
        # A decision the cache holds for this policy revision needs no engine; each query
        # below has a shape (its measures) the cache has not seen, so it must ask the engine.
        assert world.query(group_by=["town"]).status_code == 200
        assert_problem(world.query(group_by=["town"], measures=[{"fn": "sum", "field": "kwh"}]),
                       503, "unavailable")
        assert_problem(world.client.get("/readyz"), 503, "unavailable")  # past the cache
        state.fail_status = None
        state.delay = 1.0
        assert_problem(world.query(group_by=["town"], totals=True,
                                   measures=[{"fn": "mean", "field": "kwh"}]),
                       503, "unavailable")
        state.delay = 0.0
        state.put_data("/policy", {"revision": "0000000000000000"})  # a stale bundle
        assert_problem(world.query(group_by=["town"], remainder=True,
                                   measures=[{"fn": "count"}, {"fn": "sum", "field": "kwh"}]),
                       503, "unavailable")
        state.put_data("/policy", {"revision": PolicySources.load(POLICY_DIR).revision})

        refused = [e for e in _entries(world, action="query.aggregate")
                   if not e["decision"]["allowed"]]
        assert [e["decision"]["reasons"] for e in refused] == [
            ["policy-engine-unavailable"]] * 3
        recovered = world.query(group_by=["town"])
        assert recovered.status_code == 200, recovered.text  # and it recovers


def test_the_embedded_engine_times_out_closed(settings: Settings, mint: Mint,
                                               tmp_path: Path) -> None:
    """A flow policy that computes for about a second, under a 0.2 s deadline."""
    slow = tmp_path / "policies"
    shutil.copytree(POLICY_DIR, slow)
    flow = slow / "broker" / "flow.rego"
    text = flow.read_text().replace(
        '\t"revision": data.policy.revision,\n}',
        '\t"revision": data.policy.revision,\n\t"slow": slow,\n}')
    flow.write_text(text + "\nslow := count([x | some x in numbers.range(1, 120000); "
                    "x % 7 == 0])\n")
    slow_settings = settings.model_copy(update={"policy_dir": slow,
                                                "policy_timeout_seconds": 0.2})
    with TestClient(create_app(slow_settings)) as client:
        world = World(client, mint)
        r = world.query(group_by=["town"])
        assert_problem(r, 503, "unavailable")
        # The abandoned evaluation holds the engine until it ends: meanwhile every decision,
        # reading the log included, is refused too.
        deadline = time.monotonic() + 30
        while (r := client.get("/v1/audit/entries", headers=auth(world.auditor))
               ).status_code == 503 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert r.status_code == 200, r.text
        refused = [e for e in _entries(world, action="query.aggregate")
                   if not e["decision"]["allowed"]]
        assert [e["decision"]["reasons"] for e in refused] == [["policy-engine-unavailable"]]


def test_the_decision_cache_is_on_the_metrics_page(world: World) -> None:
    world.query(group_by=["town"])
    text = world.client.get("/metrics").text
    hits = re.search(r'^broker_policy_cache_hits_total\{engine="regopy"\} (\d+)', text, re.M)
    misses = re.search(r'^broker_policy_cache_misses_total\{engine="regopy"\} (\d+)', text,
                       re.M)
    assert hits
    assert misses
    assert int(hits.group(1)) > 0  # authz decisions repeat within a query and across calls
    assert int(misses.group(1)) > 0


EMPLOYEES = pd.DataFrame({"uscc": [f"E{i:02d}" for i in range(12)],
                          "employees": [5, 7, 7, 9, 12, 15, 30, 45, 60, 80, 120, 400]})


def _employees(world: World, bins: list[Any] | None) -> Any:
    field: dict[str, Any] = {"name": "employees", "type": "integer", "role": "dimension"}
    if bins is not None:
        field["bins"] = bins
    return upload(world.client, world.grid, EMPLOYEES, {
        "name": "staff", "entity_field": "uscc",
        "fields": [{"name": "uscc", "type": "string", "role": "entity"}, field]})


def test_a_generalize_number_is_grouped_only_on_its_declared_bin_edges(world: World) -> None:
    r = _employees(world, [10, 50, 100])
    assert r.status_code == 201, r.text
    catalogue = world.client.get(f"/v1/datasets/{r.json()['id']}", headers=auth(world.grid))
    assert catalogue.json()["fields"][1]["bins"] == [10.0, 50.0, 100.0]
    cid = world.contract_for(r.json()["id"], fields={"employees": "generalize"})
    coarser = world.query(contract_id=cid, group_by=[{"field": "employees", "bins": [50]}])
    assert coarser.status_code == 200, coarser.text
    assert [c["key"]["employees"] for c in coarser.json()["cells"]] == ["<50", ">=50"]
    for edges in ([7, 8], [10, 50, 75], [49.5]):
        r2 = world.query(contract_id=cid, group_by=[{"field": "employees", "bins": edges}])
        assert assert_problem(r2, 403, "policy-denied")["reasons"] == [
            "generalization-required"]


@pytest.mark.parametrize("bins", [[], [5, 1], [1, 1], [1.0, float("inf")]])
def test_declared_bins_must_be_finite_and_rising(world: World, bins: list[Any]) -> None:
    r = _employees(world, bins)
    assert r.status_code == 422, r.text


def test_only_numbers_declare_bins(world: World) -> None:
    r = upload(world.client, world.grid, EMPLOYEES.assign(town="A"), {
        "name": "staff", "entity_field": "uscc",
        "fields": [{"name": "uscc", "type": "string", "role": "entity"},
                   {"name": "employees", "type": "integer", "role": "dimension"},
                   {"name": "town", "type": "string", "role": "dimension", "bins": [1]}]})
    assert assert_problem(r, 422, "invalid-input")["fields"] == ["town"]
