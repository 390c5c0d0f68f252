"""Cross-source aggregates over HTTP: providers' data joined by enterprise inside the broker."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from tests.conftest import Mint, assert_problem, auth, upload

FIRMS = [f"F{i:02d}" for i in range(24)]
TOWNS = {f: "AB"[i % 2] for i, f in enumerate(FIRMS)}


def _grid() -> pd.DataFrame:
    """Monthly electricity of every firm but F23: twelve rows each."""
    rng = np.random.default_rng(7)
    rows = [{"uscc": f, "town": TOWNS[f], "month": m, "kwh": float(rng.integers(50, 150))}
            for f in FIRMS[:-1] for m in range(1, 13)]
    return pd.DataFrame(rows)


def _tax() -> pd.DataFrame:
    """One yearly tax row for every firm but F22."""
    rng = np.random.default_rng(8)
    return pd.DataFrame([{"code": f, "industry": "x" if i < 12 else "y",
                          "tax": float(rng.integers(100, 200))}
                         for i, f in enumerate(FIRMS) if f != "F22"])


def _land() -> pd.DataFrame:
    """Land in mu of every firm but F21."""
    return pd.DataFrame([{"uscc": f, "mu": float(10 + i)} for i, f in enumerate(FIRMS)
                         if f != "F21"])


GRID_META = {"name": "grid-monthly", "entity_field": "uscc", "fields": [
    {"name": "uscc", "type": "string", "role": "entity"},
    {"name": "town", "type": "string", "role": "dimension"},
    {"name": "month", "type": "integer", "role": "dimension"},
    {"name": "kwh", "type": "number", "role": "measure"}]}
TAX_META = {"name": "tax-yearly", "entity_field": "code", "fields": [
    {"name": "code", "type": "string", "role": "entity"},
    {"name": "industry", "type": "string", "role": "dimension"},
    {"name": "tax", "type": "number", "role": "measure"}]}
LAND_META = {"name": "land-register", "entity_field": "uscc", "fields": [
    {"name": "uscc", "type": "string", "role": "entity"},
    {"name": "mu", "type": "number", "role": "measure"}]}


class County:
    """Three providers (grid company, tax bureau, natural resources bureau), each with one
    dataset and a linkable contract with the economic bureau."""

    def __init__(self, client: TestClient, mint: Mint) -> None:
        self.client = client
        self.admin = mint("broker-ops", "admin")
        self.tokens = {org: mint(org, "provider") for org in ("grid", "tax", "nrb")}
        self.econ = mint("econ", "consumer")
        self.env = mint("env", "consumer")
        self.auditor = mint("audit-office", "auditor")
        for org, kind in [("grid", "enterprise"), ("tax", "department"), ("nrb", "department"),
                          ("econ", "department"), ("env", "department"),
                          ("audit-office", "auditor")]:
            r = client.post("/v1/orgs", headers=auth(self.admin),
                            json={"id": org, "name": org, "kind": kind})
            assert r.status_code == 201, r.text
        self.datasets = {}
        for org, frame, meta in [("grid", _grid(), GRID_META), ("tax", _tax(), TAX_META),
                                 ("nrb", _land(), LAND_META)]:
            r = upload(client, self.tokens[org], frame, meta)
            assert r.status_code == 201, r.text
            self.datasets[org] = r.json()["id"]
        self.contracts = {
            "grid": self.contract("grid", {"town": "clear", "month": "clear", "kwh": "aggregate"}),
            "tax": self.contract("tax", {"industry": "clear", "tax": "aggregate"}),
            "nrb": self.contract("nrb", {"mu": "aggregate"}),
        }

    def contract(self, org: str, fields: dict[str, str], *, consumer: str = "econ",
                 linkable: bool = True, **terms: Any) -> str:
        now = datetime.now(UTC)
        body = {"dataset_id": self.datasets[org], "consumer_org": consumer,
                "purposes": ["industrial-policy"], "fields": fields, "k_min": 3,
                "valid_from": (now - timedelta(minutes=5)).isoformat(),
                "valid_until": (now + timedelta(days=30)).isoformat(),
                "max_queries_per_day": 100, "linkable": linkable, **terms}
        r = self.client.post("/v1/contracts", headers=auth(self.tokens[org]), json=body)
        assert r.status_code == 201, r.text
        cid: str = r.json()["id"]
        token = self.econ if consumer == "econ" else self.env
        r = self.client.post(f"/v1/contracts/{cid}/accept", headers=auth(token))
        assert r.status_code == 200, r.text
        return cid

    def query(self, token: str | None = None, path: str = "/v1/queries/aggregate",
              **body: Any) -> Any:
        payload = {"sources": {"g": self.contracts["grid"], "t": self.contracts["tax"],
                               "l": self.contracts["nrb"]},
                   "purpose": "industrial-policy", "measures": [{"fn": "count"}], **body}
        return self.client.post(path, headers=auth(token or self.econ), json=payload)


@pytest.fixture
def county(client: TestClient, mint: Mint) -> County:
    return County(client, mint)


def _cells(response: Any) -> dict[str, dict[str, Any]]:
    assert response.status_code == 200, response.text
    return {repr(sorted(c["key"].items())): c for c in response.json()["cells"]}


def test_tax_per_mu_by_town_is_computed_over_firms_in_every_source(county: County) -> None:
    r = county.query(group_by=["g.town"], totals=True, measures=[
        {"fn": "count"}, {"fn": "sum", "field": "t.tax"},
        {"fn": "ratio", "numerator": "t.tax", "denominator": "l.mu"},
        {"fn": "sum", "field": "g.kwh", "as": "kwh"}])
    cells = _cells(r)
    grid, tax, land = _grid(), _tax(), _land()
    both = set(grid.uscc) & set(tax.code) & set(land.uscc)
    assert both == set(FIRMS) - {"F21", "F22", "F23"}
    for town in "AB":
        firms = {f for f in both if TOWNS[f] == town}
        cell = cells[repr([("g.town", town)])]
        assert cell["status"] == "published", cell
        values = cell["values"]
        assert values["count"] == len(firms)
        t = tax[tax.code.isin(firms)].tax.sum()
        assert math.isclose(values["sum_t.tax"], t)
        assert math.isclose(values["ratio_t.tax_l.mu"], t / land[land.uscc.isin(firms)].mu.sum())
        # twelve monthly rows of a firm are summed, never multiplied by its one tax row
        assert math.isclose(values["kwh"], grid[grid.uscc.isin(firms)].kwh.sum())
    total = cells["[]"]
    assert total["values"]["count"] == len(both)


def test_a_cell_is_small_by_the_joined_enterprises(county: County) -> None:
    # Every grid firm is in town A or B with 11-12 firms; industry x has 12 tax firms; but
    # only firms in every source count.
    r = county.query(group_by=["g.town", "t.industry"], measures=[{"fn": "count"}])
    for cell in r.json()["cells"]:
        if cell["status"] == "published":
            assert cell["values"]["count"] >= 3


def test_a_contract_without_linkable_refuses_the_join_and_the_refusal_is_audited(
        county: County) -> None:
    plain = county.contract("nrb", {"mu": "aggregate"}, linkable=False)
    r = county.query(sources={"g": county.contracts["grid"], "l": plain})
    body = assert_problem(r, 403, "policy-denied")
    assert body["reasons"] == ["contract-not-linkable"]
    entries = county.client.get("/v1/audit/entries", headers=auth(county.auditor),
                                params={"action": "query.aggregate"}).json()["entries"]
    last = entries[-1]["entry"]
    assert last["decision"] == {"allowed": False, "reasons": ["contract-not-linkable"],
                                "policy_revision": last["decision"]["policy_revision"]}
    assert {s["alias"] for s in last["resource"]["sources"]} == {"g", "l"}


@pytest.mark.parametrize("change", ["revoke", "suspend", "other-consumer", "other-purpose"])
def test_a_source_not_in_force_for_the_caller_refuses_everything(county: County,
                                                                 change: str) -> None:
    cid = county.contract("nrb", {"mu": "aggregate"},
                          consumer="env" if change == "other-consumer" else "econ",
                          purposes=["land-efficiency"] if change == "other-purpose"
                          else ["industrial-policy"])
    if change in ("revoke", "suspend"):
        r = county.client.post(f"/v1/contracts/{cid}/{change}",
                               headers=auth(county.tokens["nrb"]))
        assert r.status_code == 200, r.text
    r = county.query(sources={"g": county.contracts["grid"], "l": cid},
                     measures=[{"fn": "sum", "field": "l.mu"}])
    body = assert_problem(r, 403, "policy-denied")
    assert body["reasons"], body
    assert "values" not in r.text


@pytest.mark.parametrize(("body", "why"), [
    ({"group_by": ["town"]}, "alias.field"),
    ({"group_by": ["x.town"]}, "alias.field"),
    ({"measures": [{"fn": "sum", "field": "kwh"}]}, "alias.field"),
    ({"filters": [{"field": "q.town", "op": "eq", "value": "A"}]}, "alias.field"),
    ({"sources": {"g": "00000000-0000-4000-8000-000000000001"}}, "sources"),
    ({"sources": {f"s{i}": f"00000000-0000-4000-8000-00000000000{i}" for i in range(5)}},
     "sources"),
    ({"sources": {"G": "00000000-0000-4000-8000-000000000001",
                  "l": "00000000-0000-4000-8000-000000000002"}}, "sources"),
    ({"contract_id": "00000000-0000-4000-8000-000000000001"}, "contract_id"),
])
def test_malformed_cross_source_queries_are_422(county: County, body: dict[str, Any],
                                               why: str) -> None:
    r = county.query(**body)
    problem = assert_problem(r, 422, "invalid-input")
    assert why in r.text, problem


def test_a_dataset_joined_with_itself_is_refused(county: County) -> None:
    again = county.contract("grid", {"town": "clear", "kwh": "aggregate"})
    r = county.query(sources={"a": county.contracts["grid"], "b": again},
                     measures=[{"fn": "sum", "field": "a.kwh"}])
    assert assert_problem(r, 403, "policy-denied")["reasons"] == ["sources-not-distinct"]


def test_differencing_a_joined_total_against_a_single_source_total_gets_nothing_exact(
        county: County) -> None:
    # All tax firms but F22 ... and F21 is missing from land: the tax total over the firms
    # in both tax and land differs from the tax bureau's own total by F21's tax alone.
    single = county.contract("tax", {"industry": "clear", "tax": "aggregate"})
    r = county.client.post("/v1/queries/aggregate", headers=auth(county.econ), json={
        "contract_id": single, "purpose": "industrial-policy",
        "measures": [{"fn": "sum", "field": "tax"}]})
    [whole] = r.json()["cells"]
    assert whole["status"] == "published", r.text
    r = county.query(sources={"t": county.contracts["tax"], "l": county.contracts["nrb"]},
                     measures=[{"fn": "sum", "field": "t.tax"}])
    [joined] = r.json()["cells"]
    assert joined["status"] == "suppressed", r.text
    assert joined["reason"] in ("differencing", "linked")
    assert joined["values"] is None


def test_each_provider_sees_the_joined_use_with_the_other_sources_named(
        county: County) -> None:
    r = county.query(group_by=["g.town"], measures=[{"fn": "sum", "field": "t.tax"}])
    seq = r.json()["receipt"]["seq"]
    for org in ("grid", "tax", "nrb"):
        page = county.client.get("/v1/audit/accesses",
                                 headers=auth(county.tokens[org])).json()
        [use] = [a for a in page["accesses"] if a["seq"] == seq]
        named = {(s["alias"], s["provider_org"], s["dataset_id"]) for s in use["sources"]}
        assert named == {("g", "grid", county.datasets["grid"]),
                         ("t", "tax", county.datasets["tax"]),
                         ("l", "nrb", county.datasets["nrb"])}
        assert use["who"]["org"] == "econ"
        proof = county.client.get(f"/v1/audit/entries/{seq}/proof",
                                  headers=auth(county.tokens[org]))
        assert proof.status_code == 200, proof.text
    # a provider not among the sources sees nothing of it
    other = county.client.post("/v1/orgs", headers=auth(county.admin),
                               json={"id": "water", "name": "water", "kind": "enterprise"})
    assert other.status_code == 201


def test_every_source_contract_counts_the_joined_query_against_its_quota(
        county: County) -> None:
    small = county.contract("nrb", {"mu": "aggregate"}, max_queries_per_day=2)
    for _ in range(2):
        r = county.query(sources={"g": county.contracts["grid"], "l": small},
                         group_by=["g.town"], measures=[{"fn": "count"}])
        assert r.status_code == 200, r.text
    r = county.query(sources={"g": county.contracts["grid"], "l": small},
                     group_by=["g.town"], measures=[{"fn": "count"}])
    assert "daily-quota-exhausted" in assert_problem(r, 403, "policy-denied")["reasons"]


def test_explain_gives_verdicts_per_alias_field_and_the_strictest_k(county: County) -> None:
    strict = county.contract("nrb", {"mu": "aggregate"}, k_min=7)
    r = county.query(path="/v1/policy/explain",
                     sources={"g": county.contracts["grid"], "l": strict},
                     group_by=["g.town"], measures=[{"fn": "sum", "field": "l.mu"}])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["allow"] is True
    assert body["fields"] == {"g.town": "clear", "l.mu": "aggregate"}
    assert body["disclosure"]["k_min"] == 7
    assert body["predicted"]["published"] >= 1


SELF_META = {"name": "self-reported", "entity_field": "uscc", "fields": [
    {"name": "uscc", "type": "string", "role": "entity"},
    {"name": "kwh_reported", "type": "number", "role": "measure"}]}
#: Firms whose self-reported electricity is 30% above the grid's: four in each town (a
#: cross-check cell publishes only when at least k firms disagree and k agree).
MISREPORTING = {"F01", "F03", "F05", "F07", "F02", "F04", "F06", "F08"}


def _self_reported() -> pd.DataFrame:
    """The firms' own yearly figures: within 3-6% of the grid's (meters and rounding), 30%
    above it for the misreporting firms; F00 reports nothing."""
    grid = _grid().groupby("uscc").kwh.sum()
    rng = np.random.default_rng(9)
    return pd.DataFrame([{"uscc": f, "kwh_reported": round(float(v) * (
        1.3 if f in MISREPORTING else 1 + rng.choice([-1, 1]) * rng.uniform(0.03, 0.06)), 2)}
                         for f, v in grid.items() if f != "F00"])


@pytest.fixture
def checked(county: County) -> County:
    """The county with enterprises' self-reported electricity and the indicator."""
    county.tokens["assoc"] = county.tokens["grid"]
    r = upload(county.client, county.tokens["grid"], _self_reported(), SELF_META)
    assert r.status_code == 201, r.text
    county.datasets["self"] = r.json()["id"]
    county.tokens["self"] = county.tokens["grid"]
    county.contracts["self"] = county.contract("self", {"kwh_reported": "aggregate"})
    r = county.client.post("/v1/indicators", headers=auth(county.admin), json={
        "id": "electricity-use", "name": "用电量", "unit": "kWh",
        "definition": "Electricity consumed in the year",
        "source": {"dataset_id": county.datasets["grid"], "field": "kwh"},
        "checks": [{"dataset_id": county.datasets["self"], "field": "kwh_reported"}]})
    assert r.status_code == 201, r.text
    return county


def _crosscheck(county: County, **body: Any) -> Any:
    payload = {"sources": {"g": county.contracts["grid"], "s": county.contracts["self"]},
               "purpose": "industrial-policy", "indicator": "electricity-use",
               "tolerance_pct": 10, **body}
    return county.client.post("/v1/queries/crosscheck", headers=auth(county.econ),
                              json=payload)


def test_the_indicator_catalogue_is_kept_by_the_operator(checked: County) -> None:
    c = checked.client
    listed = c.get("/v1/indicators", headers=auth(checked.econ)).json()
    assert [i["id"] for i in listed] == ["electricity-use"]
    assert listed[0]["source"] == {"dataset_id": checked.datasets["grid"], "field": "kwh"}
    body = {"id": "land", "name": "land", "unit": "mu", "definition": "d",
            "source": {"dataset_id": checked.datasets["nrb"], "field": "mu"},
            "checks": [{"dataset_id": checked.datasets["grid"], "field": "kwh"}]}
    assert_problem(c.post("/v1/indicators", headers=auth(checked.econ), json=body),
                   403, "policy-denied")
    again = {**body, "id": "electricity-use"}
    assert_problem(c.post("/v1/indicators", headers=auth(checked.admin), json=again),
                   409, "conflict")
    for bad in ({**body, "source": {"dataset_id": checked.datasets["nrb"], "field": "uscc"}},
                {**body, "checks": [{"dataset_id": "00000000-0000-4000-8000-000000000009",
                                     "field": "kwh"}]},
                {**body, "checks": [{"dataset_id": checked.datasets["nrb"], "field": "mu"}]},
                {**body, "id": "Bad Id"}):
        r = c.post("/v1/indicators", headers=auth(checked.admin), json=bad)
        assert_problem(r, 422, "invalid-input")
    assert [i["id"] for i in c.get("/v1/indicators", headers=auth(checked.econ)).json()] == [
        "electricity-use"]


def test_a_cross_check_counts_disagreement_per_town_and_names_no_enterprise(
        checked: County) -> None:
    r = _crosscheck(checked, group_by=["g.town"], totals=True)
    cells = _cells(r)
    grid = _grid().groupby("uscc").agg(kwh=("kwh", "sum"), town=("town", "first"))
    reported = _self_reported().set_index("uscc").kwh_reported
    for town in "AB":
        firms = [f for f in reported.index if grid.loc[f, "town"] == town]
        cell = cells[repr([("g.town", town)])]
        values = cell["values"]
        assert cell["status"] == "published", cell
        assert values["compared"] == len(firms)
        assert values["disagree"] == len(MISREPORTING & set(firms))
        diff = sum(abs(grid.loc[f, "kwh"] - reported[f]) for f in firms)
        assert math.isclose(values["abs_diff_sum"], diff)
        assert set(cell["key"]) == {"g.town"}
    assert not any(f in r.text for f in FIRMS)
    entry = checked.client.get(f"/v1/audit/entries/{r.json()['receipt']['seq']}/proof",
                               headers=auth(checked.auditor))
    assert entry.status_code == 200
    last = checked.client.get("/v1/audit/entries", headers=auth(checked.auditor),
                              params={"action": "query.crosscheck"}).json()["entries"][-1]
    assert {s["alias"] for s in last["entry"]["resource"]["sources"]} == {"g", "s"}


def test_a_cross_check_of_two_named_fields_needs_no_indicator(checked: County) -> None:
    r = _crosscheck(checked, indicator=None, left="g.kwh", right="s.kwh_reported",
                    group_by=["g.town"])
    by_indicator = _crosscheck(checked, group_by=["g.town"])
    assert [c["values"] for c in r.json()["cells"]] == [
        c["values"] for c in by_indicator.json()["cells"]]


def test_a_cell_where_every_enterprise_disagrees_is_withheld(checked: County) -> None:
    # (its agreeing firms, none, are fewer than k)
    r = _crosscheck(checked, tolerance_pct=0, group_by=["g.town"],
                    filters=[{"field": "g.month", "op": "in", "value": [1, 2, 3]}])
    for cell in r.json()["cells"]:
        # with three months against a whole year, every firm disagrees
        assert cell["status"] == "suppressed", cell
        assert cell["values"] is None


def test_a_cross_check_whose_sources_hold_no_indicator_pair_is_refused(
        checked: County) -> None:
    r = _crosscheck(checked, sources={"g": checked.contracts["grid"],
                                      "t": checked.contracts["tax"]})
    assert_problem(r, 422, "invalid-input")
    r = _crosscheck(checked, indicator="no-such-indicator")
    assert_problem(r, 404, "not-found")


def test_a_malformed_cross_source_query_is_audited_as_refused(county: County) -> None:
    before = county.client.get("/v1/audit/entries", headers=auth(county.auditor),
                               params={"action": "query.aggregate"}).json()["entries"]
    r = county.query(group_by=["zz.town"])
    assert_problem(r, 422, "invalid-input")
    after = county.client.get("/v1/audit/entries", headers=auth(county.auditor),
                              params={"action": "query.aggregate"}).json()["entries"]
    assert len(after) == len(before) + 1
    last = after[-1]["entry"]
    assert last["decision"]["allowed"] is False
    assert last["decision"]["reasons"] == ["invalid-input"]
    assert last["actor"]["org"] == "econ"


def test_a_joined_total_a_few_firms_short_of_a_single_source_one_is_differencing(
        county: County) -> None:
    # Land lacks F21 and tax lacks F22: the tax total over tax x land is two firms short of
    # the tax bureau's own total (k = 3), so their tax together would be the difference.
    single = county.contract("tax", {"industry": "clear", "tax": "aggregate"})
    r = county.client.post("/v1/queries/aggregate", headers=auth(county.econ), json={
        "contract_id": single, "purpose": "industrial-policy",
        "measures": [{"fn": "sum", "field": "tax"}]})
    assert r.json()["cells"][0]["status"] == "published", r.text
    both = county.query(sources={"g": county.contracts["grid"], "t": county.contracts["tax"],
                                 "l": county.contracts["nrb"]},
                        measures=[{"fn": "sum", "field": "t.tax"}])
    [cell] = both.json()["cells"]
    assert cell["status"] == "suppressed", both.text
    assert cell["reason"] in ("differencing", "linked")
    # and the other way round: the joined total first, then a single-source one two firms off
    grid_alone = county.contract("grid", {"town": "clear", "kwh": "aggregate"})
    joined = county.query(sources={"g": county.contracts["grid"], "l": county.contracts["nrb"],
                                   "t": county.contracts["tax"]},
                          measures=[{"fn": "sum", "field": "g.kwh"}])
    assert joined.json()["cells"][0]["status"] == "published", joined.text
    r = county.client.post("/v1/queries/aggregate", headers=auth(county.econ), json={
        "contract_id": grid_alone, "purpose": "industrial-policy",
        "measures": [{"fn": "sum", "field": "kwh"}]})
    [alone] = r.json()["cells"]
    assert alone["status"] == "suppressed", r.text
    assert alone["reason"] == "differencing"
