"""Attacks on the field-flow policy over HTTP, by someone who did not write it.

Each test states the safe behaviour. A test marked ``xfail(strict=True)`` documents an attack
that succeeds today (a real leak); every other test is a defence that held and stays as a
regression test. Goals attacked: identifiers, pseudonymize-form and generalize-form fields
getting out in clear, k floors, pseudonym mappings, disagreement between what the policy
judged and what the engine ran, quota and validity edges, and failing open.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pandas as pd
import pytest

from broker.policy.cache import CachedPolicyEngine
from broker.policy.conformance import canonical
from broker.policy.golib import GoPolicyEngine
from policies import POLICY_DIR
from tests.conftest import World, assert_problem, auth, contract_terms, released, upload

OTHER_UUID = "00000000-0000-4000-8000-000000000000"


# --------------------------------------------------------------------------------- helpers





def _explain(world: World, token: str | None = None, **body: Any) -> Any:
    payload = {"contract_id": world.contract["id"], "purpose": "energy-planning",
               "measures": [{"fn": "count"}], **body}
    return world.client.post("/v1/policy/explain", headers=auth(token or world.econ),
                             json=payload)


def _raw(world: World, text: str) -> Any:
    """POST a hand-written JSON text (duplicate keys and all)."""
    return world.client.post("/v1/queries/aggregate", content=text.encode(),
                             headers={**auth(world.econ), "Content-Type": "application/json"})


def _refused(r: Any) -> bool:
    return r.status_code in (403, 422)


#: The world's contract lists the identifier `name` as clear; every spelling must be refused.
IDENTIFIER_SPELLINGS: list[dict[str, Any]] = [
    {"group_by": ["name"]},
    {"group_by": [{"field": "name"}]},
    {"group_by": [{"field": "name", "level": None}]},
    {"group_by": [{"field": "name", "level": "day"}]},
    {"group_by": [{"field": "name", "level": "class"}]},
    {"group_by": [{"field": "name", "level": "group"}]},
    {"group_by": [{"field": "name", "level": "month"}]},
    {"group_by": [{"field": "name", "bins": [1.0]}]},
    {"group_by": [{"field": "name", "level": "year", "bins": [1.0]}]},
    {"filters": [{"field": "name", "op": "eq", "value": "Firm 7"}]},
    {"filters": [{"field": "name", "op": "in", "value": ["Firm 7", "Firm 8"]}]},
    {"filters": [{"field": "name", "op": "range", "value": ["Firm 7", None]}]},
    {"measures": [{"fn": "count", "field": "name"}]},
    {"measures": [{"fn": "sum", "field": "kwh", "numerator": "name"}]},
    {"measures": [{"fn": "ratio", "numerator": "name", "denominator": "kwh", "as": "town"}]},
    {"measures": [{"fn": "mean", "field": "name", "as": "count"}]},
    {"group_by": ["town"], "totals": True, "remainder": True,
     "filters": [{"field": "name", "op": "eq", "value": "Firm 1"}]},
]


# ------------------------------------------------ identifiers and field names (defeated)


@pytest.mark.parametrize("body", IDENTIFIER_SPELLINGS)
def test_an_identifier_never_flows_whatever_the_spelling_of_its_use(
        legacy_world: World, body: dict[str, Any]) -> None:
    world = legacy_world
    r = world.query(**body)
    assert _refused(r), r.text
    assert "Firm" not in r.text
    if r.status_code == 403:
        assert "identifier-never-in-clear" in r.json()["reasons"]
    e = _explain(world, **body)
    assert e.status_code == 422 or e.json()["allow"] is False, e.text


@pytest.mark.parametrize("name", [
    "Name", "NAME", "name ", " name", "name\n", "n\u0430me", "\uff4e\uff41\uff4d\uff45",
    "name\u200b", "na\u0301me", "x" * 64, "", "name;--", "#entity", "Uscc", "USCC",
])
def test_lookalike_field_names_are_never_the_field(world: World, name: str) -> None:
    """Case, spaces, Cyrillic/full-width look-alikes, zero-width and combining characters,
    overlong names: refused as unknown or malformed, never answered as `name` or `uscc`."""
    for body in ({"group_by": [name]}, {"filters": [{"field": name, "op": "eq", "value": "x"}]},
                 {"measures": [{"fn": "sum", "field": name}]}):
        r = world.query(**body)
        assert _refused(r), r.text
        if r.status_code == 403:
            assert r.json()["reasons"] == ["field-not-in-contract"]


def test_duplicate_keys_are_judged_and_run_as_the_same_last_value(legacy_world: World) -> None:
    world = legacy_world
    cid, q = world.contract["id"], '"purpose":"energy-planning","measures":[{"fn":"count"}]'
    r = _raw(world, f'{{"contract_id":"{cid}",{q},"group_by":[{{"field":"town","field":"name"}}]}}')
    assert r.json()["reasons"] == ["identifier-never-in-clear"]
    r = _raw(world, f'{{"contract_id":"{cid}",{q},"group_by":["name"],"group_by":["town"]}}')
    assert r.status_code == 200
    assert "Firm" not in r.text
    r = _raw(world, f'{{"contract_id":"{cid}",{q},"filters":[{{"field":"town","op":"eq",'
                    f'"value":"A","field":"name"}}]}}')
    assert _refused(r)
    assert "Firm" not in r.text


def test_a_contract_field_missing_from_the_dataset_is_refused_at_offer(world: World) -> None:
    r = world.client.post("/v1/contracts", headers=auth(world.grid), json=contract_terms(
        world.dataset["id"], fields={"Town": "clear", "ghost": "clear", "kwh": "aggregate"}))
    assert r.status_code == 422
    assert r.json()["fields"] == ["Town", "ghost"]


# ------------------------------------------- case-colliding field names (SUCCEEDED)


CASE_FRAME = pd.DataFrame({
    "uscc": [f"E{i}" for i in range(8)],
    "Name": [f"Secret Firm {i}" for i in range(8)],   # identifier, not in the contract
    "name": ["product line"] * 8,                      # dimension, contracted clear
    "town": ["A"] * 4 + ["B"] * 4,
    "KWH": [float(100 + i) for i in range(8)],         # L4 sensitive, not in the contract
    "kwh": [1.0] * 8,                                  # L1 measure, contracted aggregate
})
CASE_FIELDS: list[dict[str, Any]] = [
    {"name": "Name", "type": "string", "role": "identifier", "sensitivity": "L3"},
    {"name": "name", "type": "string", "role": "dimension"},
    {"name": "town", "type": "string", "role": "dimension"},
    {"name": "KWH", "type": "number", "role": "sensitive", "sensitivity": "L4"},
    {"name": "kwh", "type": "number", "role": "measure", "sensitivity": "L1"},
]


#: "town" in full-width letters: NFKC folds it to "town".
WIDE_TOWN = "\uff54\uff4f\uff57\uff4e"


@pytest.mark.parametrize(("fields", "clash"), [
    (CASE_FIELDS, ["KWH", "Name", "kwh", "name"]),
    ([{"name": "USCC", "type": "string", "role": "dimension"}], ["USCC", "uscc"]),
    ([{"name": WIDE_TOWN, "type": "string", "role": "dimension"},  # full-width letters
      {"name": "town", "type": "string", "role": "dimension"}], ["town", WIDE_TOWN]),
])
def test_field_names_that_collide_in_the_engine_are_refused_at_upload(
        world: World, fields: list[dict[str, Any]], clash: list[str]) -> None:
    """Found by this suite: DuckDB matches column names regardless of case, so grouping by a
    contracted `name` read the uncontracted identifier `Name`, and `mean(kwh)` the L4 `KWH`.
    Names equal after case folding and NFKC are now refused, naming both."""
    meta = {"name": "casey", "entity_field": "uscc",
            "fields": [{"name": "uscc", "type": "string", "role": "entity"}, *fields]}
    frame = pd.DataFrame({"uscc": [f"E{i}" for i in range(8)],
                          **{f["name"]: ["x"] * 8 for f in fields}})
    before = world.client.get("/v1/datasets", headers=auth(world.grid)).json()
    r = upload(world.client, world.grid, frame, meta)
    body = assert_problem(r, 422, "invalid-input")
    assert sorted(body["fields"]) == sorted(clash)
    assert world.client.get("/v1/datasets", headers=auth(world.grid)).json() == before


def test_the_entity_field_is_never_a_key_or_filter(world: World) -> None:
    cid = world.contract_for(world.dataset["id"], fields={"uscc": "pseudonymize",
                                                        "kwh": "aggregate"})
    for body in ({"group_by": ["uscc"]}, {"group_by": [{"field": "uscc", "level": "class"}]},
                 {"filters": [{"field": "uscc", "op": "eq", "value": "E7"}]}):
        r = world.query(contract_id=cid, **body)
        assert r.status_code == 403, r.text
        assert "E7" not in r.text


# -------------------------------------------------------------- generalize (defeated)


DAYS = pd.DataFrame({
    "uscc": [f"D{i:02d}" for i in range(12)],
    "town": ["A"] * 6 + ["B"] * 6,
    "day": [date(2025, 1 + (i % 6), 3 + i).isoformat() for i in range(12)],
    "emp": [7, 7, 7, 7, 9, 9, 9, 3, 3, 3, 3, 5],
    "kwh": [100.0 + i for i in range(12)],
})
DAY_FIELDS: list[dict[str, Any]] = [
    {"name": "town", "type": "string", "role": "dimension"},
    {"name": "day", "type": "date", "role": "dimension"},
    {"name": "emp", "type": "integer", "role": "dimension"},
    {"name": "kwh", "type": "number", "role": "measure", "sensitivity": "L2"},
]


@pytest.fixture
def days(world: World) -> str:
    did = world.add_dataset(DAYS, DAY_FIELDS, name="daily")
    return world.contract_for(did, fields={"town": "clear", "day": "generalize",
                                         "emp": "generalize", "kwh": "clear"})


@pytest.mark.parametrize("body", [
    {"group_by": ["day"]},
    {"group_by": [{"field": "day", "level": "day"}]},
    {"group_by": [{"field": "day", "level": "class"}]},
    {"group_by": [{"field": "day", "level": "group"}]},
    {"group_by": [{"field": "day", "bins": [1.0, 2.0]}]},
    {"group_by": [{"field": "day", "level": "month", "bins": [1.0]}]},
    {"group_by": ["emp"]},
    {"group_by": [{"field": "emp", "level": "year"}]},
    {"filters": [{"field": "day", "op": "eq", "value": "2025-01-03"}]},
    {"filters": [{"field": "day", "op": "in", "value": ["2025-01-01", "2025-01-31"]}]},
    {"filters": [{"field": "day", "op": "range", "value": ["2025-01-02", "2025-12-31"]}]},
    {"filters": [{"field": "day", "op": "range", "value": ["2025-01-01", "2025-01-30"]}]},
    {"filters": [{"field": "day", "op": "range", "value": ["2025-03-01", "2025-03-01"]}]},
    {"filters": [{"field": "day", "op": "range", "value": ["2025-W02-1", "2025-12-31"]}]},
    {"filters": [{"field": "day", "op": "range", "value": ["20250102", None]}]},
    {"filters": [{"field": "day", "op": "range", "value": ["2025-01-01", 5]}]},
    {"filters": [{"field": "day", "op": "range", "value": [None, None]}]},
    {"filters": [{"field": "emp", "op": "eq", "value": 7}]},
    {"filters": [{"field": "emp", "op": "range", "value": [7, 7]}]},
    {"group_by": [{"field": "day", "level": "year"}],
     "filters": [{"field": "day", "op": "range", "value": ["2025-01-01", "2025-01-03"]}]},
])
def test_a_generalize_field_never_flows_at_its_stored_precision(
        world: World, days: str, body: dict[str, Any]) -> None:
    r = world.query(contract_id=days, **body)
    assert _refused(r), r.text
    assert "2025-01-03" not in r.text


def test_period_aligned_generalize_filters_reveal_no_day(world: World, days: str) -> None:
    for value in (["2025-01-01", "2025-06-30"], ["2025-01-01", None], [None, "2025-03-31"],
                  ["20250101", "20250131"], ["2025-W01-3", "2025-12-31"]):
        r = world.query(contract_id=days, group_by=["town"],
                        filters=[{"field": "day", "op": "range", "value": value}])
        assert r.status_code == 200, (value, r.text)
        assert r.json()["policy"]["fields"]["day"] == "generalize"


def test_degenerate_bins_do_not_group_a_measure_by_its_exact_value(world: World) -> None:
    cid = world.contract_for(world.dataset["id"], fields={"town": "clear", "kwh": "clear"})
    r = world.query(contract_id=cid, group_by=[{"field": "kwh", "bins": [5, 5.000001]}],
                    measures=[{"fn": "count"}, {"fn": "sum", "field": "kwh"}])
    # Found by this suite: {"kwh": "[5,5.000001)"} -> {"count": 5, "sum_kwh": 25.0} told
    # that five firms have kwh == 5 exactly. Bins off the provider's declared grid are now
    # "free-bins", which a measure may not be grouped by.
    assert r.status_code == 403, r.text
    assert r.json()["reasons"] == ["measure-dimension-requires-bins"]


def test_unit_bins_do_not_ungeneralize_an_integer(world: World, days: str) -> None:
    # Found by this suite: [7, 8) released the exact value 7 under a generalize form. Only
    # declared edges generalise a number now.
    r = world.query(contract_id=days, group_by=[{"field": "emp", "bins": [7, 8]}])
    assert r.status_code == 403, r.text
    assert r.json()["reasons"] == ["generalization-required"]


def test_a_generalize_industry_code_never_flows_at_its_stored_precision(world: World) -> None:
    """Found by this suite: codes stored at group precision (C382) went out in clear under
    level "group". A GB/T 4754 field now holds 4-digit classes only; coarser codes are
    refused at upload, naming the column and rows, not the values."""
    frame = pd.DataFrame({"uscc": [f"E{i}" for i in range(12)],
                          "ind": ["C382"] * 6 + ["C381"] * 6})
    meta = {"name": "industry", "entity_field": "uscc", "fields": [
        {"name": "uscc", "type": "string", "role": "entity"},
        {"name": "ind", "type": "string", "role": "dimension", "hierarchy": "gbt4754"}]}
    r = upload(world.client, world.grid, frame, meta)
    assert r.status_code == 422, r.text
    assert "ind" in r.text
    assert "C382" not in r.text
    assert "C381" not in r.text


# ------------------------------------------------------------------------ pseudonyms


@pytest.fixture
def pseudo(world: World) -> str:
    # Its own copy of the data: the world's dataset lets towns and names out in clear.
    return world.contract_for(world.energy_copy(),
                     fields={"town": "pseudonymize", "name": "pseudonymize", "kwh": "aggregate"})


def test_a_pseudonymized_field_is_never_filtered_measured_or_shown(
        world: World, pseudo: str) -> None:
    for flt in ({"field": "town", "op": "eq", "value": "B"},
                {"field": "town", "op": "in", "value": ["A"]},
                {"field": "name", "op": "eq", "value": "Firm 7"}):
        r = world.query(contract_id=pseudo, group_by=["town"], filters=[flt])
        assert r.status_code == 403, r.text
    r = world.query(contract_id=pseudo, measures=[{"fn": "sum", "field": "town"}])
    assert r.status_code == 403
    # The clear answer to the same data (the world's copy) is computed first: nothing of it
    # reaches this contract's answer.
    assert world.query(group_by=["town"]).status_code == 200
    r = world.query(contract_id=pseudo, group_by=["town"], totals=True)
    keys = [k["town"] for k, _, _ in released(r) if "town" in k]
    assert len(keys) == 1  # town B (2 firms) is not even shown: its pseudonym would count it
    assert all(k.startswith("ps_") for k in keys)
    assert keys == sorted(keys)
    assert '"A"' not in r.text
    assert '"B"' not in r.text


def test_a_pseudonymized_identifier_cannot_count_a_suppressed_cell(world: World) -> None:
    cid = world.contract_for(world.energy_copy(),
                    fields={"town": "clear", "name": "pseudonymize", "kwh": "aggregate"})
    by_town = released(world.query(contract_id=cid, group_by=["town"]))
    assert ({"town": "B"}, None, "min-entities") in by_town  # town B's count is withheld ...
    r = world.query(contract_id=cid, group_by=["name"],
                    filters=[{"field": "town", "op": "eq", "value": "B"}])
    # ... and came back as the number of (suppressed) pseudonym cells: 2. Found by this suite;
    # now a pseudonym whose own margin has fewer than k firms is not shown at all.
    assert r.status_code == 403 or not any("name" in k for k, _, _ in released(r)), r.text


def test_bins_on_a_pseudonymized_number_do_not_reveal_which_bin_is_which(world: World) -> None:
    frame = pd.DataFrame({"uscc": [f"E{i}" for i in range(12)], "emp": list(range(1, 13))})
    did = world.add_dataset(frame, [{"name": "emp", "type": "integer", "role": "dimension"}])
    cid = world.contract_for(did, fields={"emp": "pseudonymize"})
    one = world.query(contract_id=cid, group_by=[{"field": "emp", "bins": [4]}])
    two = world.query(contract_id=cid, group_by=[{"field": "emp", "bins": [4, 8]}])
    if _refused(one) or _refused(two):
        return
    shared = {k["emp"] for k, _, _ in released(one)} & {k["emp"] for k, _, _ in released(two)}
    assert not shared, f"'<4' is {shared}, count {[v for k, v, _ in released(one)]}"


def test_pseudonyms_are_stable_per_contract_and_unlinkable_across(world: World,
                                                                  pseudo: str) -> None:
    fields = {"town": "pseudonymize", "kwh": "aggregate"}
    dataset_id = world.client.get(f"/v1/contracts/{pseudo}",
                                  headers=auth(world.econ)).json()["dataset_id"]
    env = world.contract_for(dataset_id, consumer="env", fields=fields)
    body: dict[str, Any] = {"purpose": "energy-planning", "group_by": ["town"],
                            "measures": [{"fn": "count"}]}
    mine = {k["town"] for k, _, _ in released(world.query(contract_id=pseudo, **body))}
    again = {k["town"] for k, _, _ in released(world.query(contract_id=pseudo, **body))}
    theirs = world.client.post("/v1/queries/aggregate", headers=auth(world.env),
                               json={"contract_id": env, **body})
    assert mine == again
    assert not mine & {k["town"] for k, _, _ in released(theirs)}


# --------------------------------------------------------------------- k floors


def test_an_l4_measure_is_held_to_its_floor_and_only_summed(world: World) -> None:
    frame = pd.DataFrame({"uscc": [f"E{i}" for i in range(14)], "town": ["A"] * 7 + ["B"] * 7,
                          "profit": [float(100 + i) for i in range(14)],
                          "secret": ["x", "y"] * 7})
    did = world.add_dataset(frame, [
        {"name": "town", "type": "string", "role": "dimension"},
        {"name": "profit", "type": "number", "role": "sensitive", "sensitivity": "L4"},
        {"name": "secret", "type": "string", "role": "dimension", "sensitivity": "L4"}])
    cid = world.contract_for(did, k_min=3, fields={"town": "clear", "profit": "aggregate",
                                                 "secret": "clear"})
    r = world.query(contract_id=cid, group_by=["town"],
                    measures=[{"fn": "sum", "field": "profit", "as": "count"}])
    assert r.json()["k"] == 10
    assert all(v is None for _, v, _ in released(r))  # 7 firms per town < 10
    for m in ({"fn": "mean", "field": "profit"},
              {"fn": "ratio", "numerator": "profit", "denominator": "profit"}):
        r = world.query(contract_id=cid, group_by=["town"], measures=[m])
        assert r.json()["reasons"] == ["statistic-not-allowed-for-sensitivity"]
    # An L4 dimension touched only by a filter still raises k.
    r = world.query(contract_id=cid, group_by=["town"],
                    filters=[{"field": "secret", "op": "eq", "value": "x"}])
    assert r.json()["k"] == 10
    assert _explain(world, contract_id=cid, group_by=["secret"]).json()["k"] == 10


# ----------------------------------------------------------- quota and validity


def test_concurrent_queries_never_pass_the_daily_quota(world: World) -> None:
    cid = world.contract_for(world.dataset["id"], max_queries_per_day=2)
    statuses: list[int] = []

    def ask(i: int) -> None:
        alias = f"m{i % 3}"  # some identical repeats (the cached path), some fresh
        r = world.query(contract_id=cid, group_by=["town"],
                        measures=[{"fn": "sum", "field": "kwh", "as": alias}])
        statuses.append(r.status_code)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(statuses) == [200, 200] + [403] * 6
    e = _explain(world, contract_id=cid)
    assert e.json()["quota_remaining"] == 0
    assert "daily-quota-exhausted" in e.json()["reasons"]


def test_sub_second_validity_bounds_are_never_widened(world: World) -> None:
    now = datetime.now(UTC)
    later = world.contract_for(world.dataset["id"],
                      valid_from=(now + timedelta(seconds=0.6)).isoformat())
    assert world.query(contract_id=later).json()["reasons"] == ["contract-not-yet-valid"]
    until = now + timedelta(seconds=1.3, microseconds=999)
    short = world.contract_for(world.dataset["id"], valid_until=until.isoformat())
    time.sleep(max(0.0, (until - datetime.now(UTC)).total_seconds()) + 0.02)
    assert world.query(contract_id=short).json()["reasons"] == ["contract-expired"]
    assert _explain(world, contract_id=short).json()["allow"] is False


# ----------------------------------------------------------------- explain probing


def test_explain_treats_a_foreign_contract_as_a_missing_one(world: World) -> None:
    env = world.contract_for(world.dataset["id"], consumer="env")
    foreign = _explain(world, contract_id=env, group_by=["town"]).json()
    missing = _explain(world, contract_id=OTHER_UUID, group_by=["town"]).json()
    assert foreign == missing
    assert foreign["reasons"] == ["no-active-contract"]
    assert foreign["disclosure"] is None
    assert foreign["quota_remaining"] == 0
    # A dry run under one's own contract spends no quota.
    before = _explain(world).json()["quota_remaining"]
    for _ in range(3):
        _explain(world, group_by=["town"])
    assert _explain(world).json()["quota_remaining"] == before


# --------------------------------------------------------------- failing open


@pytest.mark.parametrize("text", [
    '{"contract_id":"%s","purpose":"energy-planning","measures":[{"fn":"count"}],'
    '"group_by":[{"field":"name","level":"Year"}]}',
    '{"contract_id":"%s","purpose":"energy-planning","measures":[{"fn":"max","field":"kwh"}]}',
    '{"contract_id":"%s","purpose":"energy-planning","measures":[{"fn":"count"}],'
    '"group_by":[{"field":null}]}',
    '{"contract_id":"%s","purpose":"energy-planning","measures":[{"fn":"count"}],'
    '"filters":[{"field":"name","op":"like","value":"Firm%%"}]}',
    '{"contract_id":"%s","purpose":"energy-planning","measures":[{"fn":"count"}],'
    '"group_by":[["name"]]}',
    '{"contract_id":"%s","purpose":"energy-planning","measures":{"fn":"count"}}',
    '{"contract_id":"%s","purpose":"energy-planning","measures":[{"fn":"count"}],'
    '"group_by":"name"}',
    '{"contract_id":"%s","purpose":"energy-planning","measures":[{"fn":"count"}],'
    '"filters":[{"field":"town","op":"in","value":[]}]}',
    '{"contract_id":"%s","purpose":"Energy-Planning","measures":[{"fn":"count"}]}',
    '{"contract_id":"%s","purpose":null,"measures":[{"fn":"count"}]}',
    '{"contract_id":"%s","measures":[{"fn":"count"}],"group_by":["name"]}',
    '{"contract_id":"%s","purpose":"energy-planning","measures":[{"fn":"count"}],'
    '"totals":1,"group_by":["name"]}',
])
def test_malformed_bodies_fail_closed(world: World, text: str) -> None:
    r = _raw(world, text % world.contract["id"])
    assert _refused(r), r.text
    assert "Firm" not in r.text


# ------------------------------------------------------------- engine agreement


class _Recorder:
    """Delegates to an engine and keeps every flow input it was asked about."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.name = "recorder"
        self.inputs: list[tuple[str, dict[str, Any]]] = []

    @property
    def revision(self) -> str:
        revision: str = self.engine.revision
        return revision

    def evaluate(self, entrypoint: str, input: Mapping[str, Any]) -> Any:
        if entrypoint in ("broker/flow/decision", "broker/flow/terms"):
            self.inputs.append((entrypoint, json.loads(json.dumps(input))))
        return self.engine.evaluate(entrypoint, input)


def test_regopy_and_opa_agree_on_every_attack_decision(
        world: World, days: str, monkeypatch: pytest.MonkeyPatch) -> None:
    cached = world.client.app.state.container.policies.engine  # type: ignore[attr-defined]
    assert isinstance(cached, CachedPolicyEngine)
    recorder = _Recorder(cached.engine)
    monkeypatch.setattr(cached, "engine", recorder)
    cached.clear()
    for body in IDENTIFIER_SPELLINGS[:9]:
        world.query(**body)
    for value in (["2025-01-01", "2025-01-31"], ["2025-01-02", None], ["2025-W01-3", None]):
        world.query(contract_id=days, filters=[{"field": "day", "op": "range", "value": value}])
    world.query(contract_id=days, group_by=[{"field": "emp", "bins": [7, 8]}])
    world.query(contract_id=OTHER_UUID, group_by=["town"])
    assert len(recorder.inputs) >= 10
    go = GoPolicyEngine(POLICY_DIR)
    try:
        for entrypoint, document in recorder.inputs:
            ours = recorder.engine.evaluate(entrypoint, document)
            theirs = go.evaluate(entrypoint, document)
            assert canonical(ours) == canonical(theirs), document
    finally:
        go.close()
