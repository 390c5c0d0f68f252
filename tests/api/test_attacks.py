"""Attacks through the HTTP API by someone who did not write the defences.

Each test states the secure behaviour; a failing test is a defence that does not hold.
Properties attacked: object-level access, disclosure control, injection, hostile input,
forged tokens and the completeness and integrity of the audit log.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
import logging
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import pandas as pd
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi.testclient import TestClient

from broker.settings import Settings
from tests.conftest import (
    ENERGY,
    ENERGY_META,
    SECRET,
    Mint,
    World,
    assert_problem,
    auth,
    contract_terms,
    csv_bytes,
    token_claims,
    upload,
)

#: Values that exist only inside the uploaded rows of ENERGY: never in any answer but a cell.
ROW_SECRETS = ("Firm 1", "Firm 7", "E1\"", "E7\"", "\"E1", "\"E7", "1000.0", "1092", "1007")
ZERO_UUID = "00000000-0000-4000-8000-000000000000"


# --------------------------------------------------------------------------------- helpers


_IDS_AND_DIGESTS = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|[0-9a-f]{16,}"
    r"|\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z?")


def _scrub(text: str) -> str:
    """``text`` without UUIDs, hex digests and timestamps, whose digits could match a number
    (a timestamp's microseconds .109241 contain the row value 1092)."""
    return _IDS_AND_DIGESTS.sub("", text)


def _without_ids(response: Any) -> str:
    """The response text, scrubbed of ids and digests."""
    return _scrub(str(response.text))



def _lenient(world: World) -> TestClient:
    """A client on the same running app that returns 500s instead of raising them."""
    return TestClient(world.client.app, raise_server_exceptions=False)


def _entries(world: World, token: str | None = None, **params: Any) -> list[dict[str, Any]]:
    """Every audit entry visible to ``token`` (the auditor by default), all pages."""
    out: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        query: dict[str, Any] = {"limit": 1000, **params}
        if cursor:
            query["cursor"] = cursor
        r = world.client.get("/v1/audit/entries", headers=auth(token or world.auditor),
                             params=query)
        assert r.status_code == 200, r.text
        page = r.json()
        out += [e["entry"] for e in page["entries"]]
        cursor = page["next_cursor"]
        if cursor is None:
            return out


def _verify(world: World) -> dict[str, Any]:
    r = world.client.get("/v1/audit/verify", headers=auth(world.auditor))
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _raw_token(header: dict[str, Any], claims: dict[str, Any], key: bytes | None) -> str:
    """A JWT assembled by hand (any header), HMAC-SHA256 signed with ``key`` or unsigned."""
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    sig = "" if key is None else _b64(
        hmac.new(key, signing_input.encode(), hashlib.sha256).digest())
    return f"{signing_input}.{sig}"


def _raw_query(contract_id: str, tail: str = "") -> str:
    """A query body as raw JSON text, with ``tail`` (", key: value" pairs) spliced in."""
    return (f'{{"contract_id": "{contract_id}", "purpose": "energy-planning", '
            f'"measures": [{{"fn": "count"}}]{tail}}}')


def _problem_json(response: Any) -> dict[str, Any]:
    """The response is some RFC 9457 problem (any 4xx) with a slug; never a 5xx."""
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert isinstance(body["type"], str)
    assert body["type"]
    assert " " not in body["type"]
    assert body["status"] == response.status_code
    return body


def _offer(world: World, **overrides: Any) -> dict[str, Any]:
    r = world.client.post("/v1/contracts", headers=auth(world.grid),
                          json=contract_terms(world.dataset["id"], **overrides))
    assert r.status_code == 201, r.text
    contract: dict[str, Any] = r.json()
    return contract


def _accept(world: World, contract_id: str, token: str | None = None) -> None:
    r = world.client.post(f"/v1/contracts/{contract_id}/accept",
                          headers=auth(token or world.econ))
    assert r.status_code == 200, r.text


#: A second, balanced dataset: town A has 10 firms in three sectors (one firm alone in "pv");
#: town C has 3 firms of which only one reported electricity.
FIRMS = pd.DataFrame({
    "uscc": [f"F{i:02d}" for i in range(1, 11)] + ["G1", "G2", "G3"],
    "town": ["A"] * 10 + ["C"] * 3,
    "sector": ["pv"] + ["textile"] * 5 + ["auto"] * 4 + ["pv", "pv", "pv"],
    "kwh": [123.0, 100.0, 101.0, 102.0, 103.0, 104.0, 105.0, 106.0, 107.0, 108.0,
            500.0, None, None],
})
FIRMS_META: dict[str, Any] = {
    "name": "firms",
    "entity_field": "uscc",
    "fields": [
        {"name": "uscc", "type": "string", "role": "entity", "sensitivity": "L2"},
        {"name": "town", "type": "string", "role": "dimension"},
        {"name": "sector", "type": "string", "role": "dimension"},
        {"name": "kwh", "type": "number", "role": "measure", "sensitivity": "L2"},
    ],
}


def _firms_contract(world: World, frame: pd.DataFrame = FIRMS,
                    meta: dict[str, Any] | None = None,
                    fields: dict[str, str] | None = None) -> str:
    """Upload ``frame`` as grid, offer it to econ and accept; the active contract id."""
    meta = meta or FIRMS_META
    r = upload(world.client, world.grid, frame, meta)
    assert r.status_code == 201, r.text
    terms = contract_terms(r.json()["id"],
                           fields=fields or {"town": "clear", "sector": "clear",
                                             "kwh": "aggregate"})
    c = world.client.post("/v1/contracts", headers=auth(world.grid), json=terms)
    assert c.status_code == 201, c.text
    _accept(world, c.json()["id"])
    contract_id: str = c.json()["id"]
    return contract_id


def _cells(response: Any, dim: str = "town") -> dict[str, dict[str, Any]]:
    assert response.status_code == 200, response.text
    return {c["key"].get(dim, "*"): c for c in response.json()["cells"]}


# ------------------------------------------------------------------ 1. object-level access


def test_a_foreign_provider_gets_404_for_every_dataset_and_contract_route(world: World) -> None:
    c, did, cid = world.client, world.dataset["id"], world.contract["id"]
    water = auth(world.other_provider)
    for r in (c.get(f"/v1/datasets/{did}", headers=water),
              c.get(f"/v1/contracts/{cid}", headers=water),
              c.post(f"/v1/contracts/{cid}/accept", headers=water),
              c.post(f"/v1/contracts/{cid}/revoke", headers=water),
              c.post("/v1/contracts", headers=water, json=contract_terms(did))):
        assert_problem(r, 404, "not-found")
        assert "energy" not in r.text
        assert "econ" not in r.text
        assert "kwh" not in r.text
    assert c.get("/v1/datasets", headers=water).json() == []
    assert c.get("/v1/contracts", headers=water).json() == []


def test_a_missing_and_a_hidden_object_answer_byte_identical_problems(world: World) -> None:
    c = world.client
    for collection, hidden_id in (("datasets", world.dataset["id"]),
                                  ("contracts", world.contract["id"])):
        hidden = c.get(f"/v1/{collection}/{hidden_id}", headers=auth(world.env)).json()
        missing = c.get(f"/v1/{collection}/{ZERO_UUID}", headers=auth(world.env)).json()
        for body in (hidden, missing):
            body.pop("instance")
            body.pop("request_id")
        assert hidden == missing


def test_a_consumer_sees_only_the_contracted_fields_never_the_entity_field(world: World) -> None:
    seen = world.client.get("/v1/datasets", headers=auth(world.econ)).json()
    assert len(seen) == 1
    assert {f["name"] for f in seen[0]["fields"]} == {"town", "kwh", "name"}
    for row_value in ROW_SECRETS:
        assert row_value not in json.dumps(seen)


def test_a_revoked_offer_hides_the_dataset_from_that_consumer_again(world: World) -> None:
    c = world.client
    offer = _offer(world, consumer_org="env")
    assert len(c.get("/v1/datasets", headers=auth(world.env)).json()) == 1
    c.post(f"/v1/contracts/{offer['id']}/revoke", headers=auth(world.grid))
    assert c.get("/v1/datasets", headers=auth(world.env)).json() == []
    assert_problem(c.get(f"/v1/datasets/{world.dataset['id']}", headers=auth(world.env)), 404,
                   "not-found")


def test_an_expired_offer_grants_no_view_of_the_dataset(world: World) -> None:
    now = datetime.now(UTC)
    offer = _offer(world, consumer_org="env", valid_from=(now - timedelta(days=2)).isoformat(),
                   valid_until=(now - timedelta(days=1)).isoformat())
    assert offer["status"] == "expired"
    # An offer that can no longer be accepted must not keep the catalogue entry visible.
    assert world.client.get("/v1/datasets", headers=auth(world.env)).json() == []
    r = world.client.get(f"/v1/datasets/{world.dataset['id']}", headers=auth(world.env))
    assert_problem(r, 404, "not-found")


def test_a_consumer_cannot_query_under_another_consumers_active_contract(world: World) -> None:
    r = world.query(token=world.env, group_by=["town"],
                    measures=[{"fn": "sum", "field": "kwh"}])
    body = assert_problem(r, 403, "policy-denied")
    assert body["reasons"] == ["no-active-contract"]
    assert "cells" not in body
    for row_value in ROW_SECRETS:
        assert row_value not in _without_ids(r)


def test_a_consumer_cannot_query_under_an_offer_it_has_not_accepted(world: World) -> None:
    offer = _offer(world)
    r = world.query(contract_id=offer["id"])
    assert assert_problem(r, 403, "policy-denied")["reasons"] == ["contract-not-active"]


def test_a_consumer_cannot_query_once_the_contract_window_has_closed(world: World) -> None:
    now = datetime.now(UTC)
    short = _offer(world, valid_until=(now + timedelta(seconds=2)).isoformat())
    _accept(world, short["id"])
    assert world.query(contract_id=short["id"]).status_code == 200
    time.sleep(2.2)
    r = world.query(contract_id=short["id"])
    assert "contract-expired" in assert_problem(r, 403, "policy-denied")["reasons"]


def test_the_provider_cannot_query_its_own_contract_even_with_a_consumer_role(
    world: World, mint: Mint
) -> None:
    both = mint("grid", "provider", "consumer")
    r = world.query(token=both)
    assert "role-not-allowed-for-org" in assert_problem(r, 403, "policy-denied")["reasons"]


def test_an_auditor_gets_no_cells_from_query_or_explain_and_no_rows_anywhere(
    world: World,
) -> None:
    c = world.client
    r = world.query(token=world.auditor, group_by=["town"])
    assert "role-not-permitted" in assert_problem(r, 403, "policy-denied")["reasons"]
    r = c.post("/v1/policy/explain", headers=auth(world.auditor),
               json={"contract_id": world.contract["id"], "purpose": "energy-planning",
                     "group_by": ["town"], "measures": [{"fn": "sum", "field": "kwh"}]})
    if r.status_code == 200:
        assert r.json()["allow"] is False
        assert "cells" not in r.json()
    texts = [c.get("/v1/datasets", headers=auth(world.auditor)).text,
             c.get("/v1/contracts", headers=auth(world.auditor)).text,
             c.get("/v1/audit/entries", headers=auth(world.auditor)).text]
    for text in texts:
        for row_value in ROW_SECRETS:
            assert row_value not in _scrub(text)
    r = c.post("/v1/queries/extract", headers=auth(world.auditor),
               json={"contract_id": world.contract["id"], "purpose": "energy-planning"})
    assert r.status_code in (403, 404, 405, 422)
    assert "Firm" not in r.text


def test_an_admin_can_read_the_catalogue_but_never_query_data(world: World) -> None:
    r = world.query(token=world.admin, group_by=["town"])
    assert "role-not-permitted" in assert_problem(r, 403, "policy-denied")["reasons"]
    assert_problem(world.client.get("/v1/audit/verify", headers=auth(world.admin)), 403,
                   "policy-denied")


def test_a_foreign_provider_cannot_read_anothers_audit_trail_by_filtering_for_it(
    world: World,
) -> None:
    world.query(group_by=["town"])
    water = world.other_provider
    assert _entries(world, water, dataset_id=world.dataset["id"]) == []
    assert _entries(world, water, org="econ") == []
    assert _entries(world, water, actor="user@econ") == []
    assert _entries(world, water, action="query.aggregate") == []


def test_an_unregistered_consumer_or_provider_gets_nothing(world: World, mint: Mint) -> None:
    ghost_consumer, ghost_provider = mint("ghost", "consumer"), mint("ghost", "provider")
    for path in ("/v1/datasets", "/v1/contracts"):
        r = world.client.get(path, headers=auth(ghost_consumer))
        assert "org-not-registered" in assert_problem(r, 403, "policy-denied")["reasons"]
    r = world.query(token=ghost_consumer)
    assert "org-not-registered" in assert_problem(r, 403, "policy-denied")["reasons"]
    r = world.client.post("/v1/contracts", headers=auth(ghost_provider),
                          json=contract_terms(world.dataset["id"], consumer_org="ghost"))
    assert r.status_code in (403, 404)
    r = world.client.get("/v1/audit/entries", headers=auth(ghost_provider))
    assert "org-not-registered" in assert_problem(r, 403, "policy-denied")["reasons"]


# --------------------------------------------------------------------------- 2. privacy


def test_no_suppressed_cell_ever_carries_values_or_a_count(world: World) -> None:
    shapes: list[dict[str, Any]] = [
        {"group_by": ["town"]},
        {"group_by": ["town"], "totals": True},
        {"group_by": ["town"], "measures": [{"fn": "count", "as": "n"},
                                             {"fn": "sum", "field": "kwh"},
                                             {"fn": "mean", "field": "kwh"}]},
        {"filters": [{"field": "town", "op": "eq", "value": "B"}]},
        {"filters": [{"field": "town", "op": "in", "value": ["B", "Z"]}], "totals": True},
    ]
    for shape in shapes:
        r = world.query(**shape)
        assert r.status_code == 200, r.text
        body = r.json()
        for cell in body["cells"]:
            assert cell["status"] in ("published", "suppressed")
            if cell["status"] == "suppressed":
                assert cell["values"] is None
                assert set(cell) <= {"key", "values", "status", "reason"}
                assert cell["reason"] in ("min-entities", "dominance", "complementary",
                                          "differencing")
            else:
                count = cell["values"].get("count", cell["values"].get("n"))
                assert count is None or count >= body["k"]


def test_a_published_cell_always_has_at_least_k_min_enterprises_not_rows(world: World) -> None:
    # E1 has three rows: town A has 8 rows but 6 firms; a filter leaving E1 + E2 has 4 rows.
    r = world.query(filters=[{"field": "town", "op": "eq", "value": "A"}],
                    group_by=["town"])
    assert _cells(r)["A"]["values"] == {"count": 6}
    tight = contract_terms(world.dataset["id"], k_min=7)
    c = world.client.post("/v1/contracts", headers=auth(world.grid), json=tight).json()
    _accept(world, c["id"])
    r = world.query(contract_id=c["id"], group_by=["town"], totals=True)
    cells = _cells(r)
    assert cells["A"]["status"] == "suppressed"  # 8 rows, only 6 firms < 7
    assert cells["A"]["reason"] == "min-entities"
    # The grand total minus the other towns would give A back: it is withheld with it.
    published = [c for c in r.json()["cells"] if c["status"] == "published"]
    assert cells["*"]["status"] == "suppressed" or len(published) == 0


def test_a_highly_sensitive_measure_cannot_be_released_under_a_low_k_min(world: World) -> None:
    meta = {**FIRMS_META, "name": "secret-kwh", "fields": [
        *FIRMS_META["fields"][:3],
        {"name": "kwh", "type": "number", "role": "measure", "sensitivity": "L4"}]}
    cid = _firms_contract(world, FIRMS, meta)  # k_min 3 < the L4 floor of 10
    # The policy raises k to the L4 floor: no sector has 10 firms, so nothing is published,
    # where the same contract on L2 figures publishes the 5 textile firms' total.
    by_sector: dict[str, Any] = {"measures": [{"fn": "sum", "field": "kwh"}],
                                 "group_by": ["sector"]}
    r = world.query(contract_id=cid, **by_sector)
    assert r.status_code == 200, r.text
    assert r.json()["k"] == 10
    assert {c["status"] for c in r.json()["cells"]} == {"suppressed"}
    assert {c["reason"] for c in r.json()["cells"]} == {"min-entities"}
    plain = _firms_contract(world, FIRMS, {**FIRMS_META, "name": "plain-kwh"})
    r = world.query(contract_id=plain, **by_sector)
    assert r.json()["k"] == 3
    assert _cells(r, "sector")["textile"]["status"] == "published"
    r = world.query(contract_id=cid, measures=[{"fn": "count"}], group_by=["town"])
    assert r.status_code == 200, r.text  # not touching the L4 field is fine


def test_a_dominant_enterprise_does_not_get_its_total_published(world: World) -> None:
    # E7 alone is 1000 of the 1092 kWh (92 %): the default (2, 85 %) dominance rule bites.
    r = world.query(measures=[{"fn": "sum", "field": "kwh"}])
    assert r.status_code == 200, r.text
    (cell,) = r.json()["cells"]
    assert cell["status"] == "suppressed", cell
    assert cell["reason"] == "dominance"
    assert cell["values"] is None


def test_a_suppressed_cell_cannot_be_recovered_from_its_published_margin(world: World) -> None:
    # B (2 firms) is suppressed; if A and the grand total are both published, B = total - A.
    r = world.query(group_by=["town"], totals=True, measures=[{"fn": "count"}])
    cells = _cells(r)
    assert cells["B"]["status"] == "suppressed"
    recoverable = (cells["A"]["status"] == "published"
                   and cells["*"]["status"] == "published")
    assert not recoverable, (
        f"B's count = {cells['*']['values']['count']} - {cells['A']['values']['count']}")


def test_a_suppressed_count_cannot_be_recovered_by_a_follow_up_total_query(
    world: World,
) -> None:
    # With the kWh sum, the dominated grand total (not A) is what protects B, so A is out.
    first = _cells(world.query(group_by=["town"],
                               measures=[{"fn": "count"}, {"fn": "sum", "field": "kwh"}]))
    assert first["B"]["status"] == "suppressed"
    assert first["A"]["status"] == "published"
    second = world.query()  # the grand total count: A's six firms plus B's two
    assert second.status_code in (200, 403), second.text
    if second.status_code == 200:
        (total,) = second.json()["cells"]
        assert total["status"] == "suppressed", (
            "differencing: B's count = total - A = "
            f"{total['values']['count']} - {first['A']['values']['count']}")
        assert total["reason"] == "differencing"


def test_two_overlapping_filters_cannot_isolate_a_single_enterprise(world: World) -> None:
    cid = _firms_contract(world)
    measures = [{"fn": "sum", "field": "kwh"}]
    whole = world.query(contract_id=cid, measures=measures,
                        filters=[{"field": "town", "op": "eq", "value": "A"}])
    minus_one = world.query(contract_id=cid, measures=measures, filters=[
        {"field": "town", "op": "eq", "value": "A"},
        {"field": "sector", "op": "in", "value": ["textile", "auto"]}])
    released = []
    for r in (whole, minus_one):
        assert r.status_code in (200, 403), r.text
        if r.status_code == 200:
            (cell,) = r.json()["cells"]
            released.append(cell["values"]["sum_kwh"] if cell["values"] else None)
        else:
            released.append(None)
    assert None in released, f"the lone pv firm's kWh = {released[0]} - {released[1]}"
    assert minus_one.json()["cells"][0]["reason"] == "differencing"


def test_missing_measure_values_do_not_let_one_enterprise_stand_for_k(world: World) -> None:
    cid = _firms_contract(world)
    r = world.query(contract_id=cid, group_by=["town"],
                    measures=[{"fn": "count"}, {"fn": "sum", "field": "kwh"},
                              {"fn": "mean", "field": "kwh"}])
    town_c = _cells(r)["C"]
    # Three firms in C, but only G1 reported kWh: its exact value must not be released.
    released = town_c["values"] or {}
    assert released.get("sum_kwh") != 500.0, town_c
    assert released.get("mean_kwh") != 500.0, town_c


def test_fields_named_like_the_planners_internal_aliases_still_aggregate(world: World) -> None:
    frame = FIRMS.rename(columns={"town": "g0", "sector": "e"})
    meta = {**FIRMS_META, "name": "aliases", "fields": [
        {"name": "uscc", "type": "string", "role": "entity", "sensitivity": "L2"},
        {"name": "g0", "type": "string", "role": "dimension"},
        {"name": "e", "type": "string", "role": "dimension"},
        {"name": "kwh", "type": "number", "role": "measure", "sensitivity": "L2"},
    ]}
    cid = _firms_contract(world, frame, meta,
                          fields={"g0": "clear", "e": "clear", "kwh": "aggregate"})
    r = _lenient(world).post("/v1/queries/aggregate", headers=auth(world.econ), json={
        "contract_id": cid, "purpose": "energy-planning", "group_by": ["e"],
        "measures": [{"fn": "count"}]})
    assert r.status_code == 200, r.text
    counts = {c["key"]["e"]: (c["values"] or {}).get("count") for c in r.json()["cells"]}
    assert counts == {"pv": 4, "textile": 5, "auto": 4}


def test_a_headerless_csv_does_not_echo_its_first_row_in_the_problem(world: World) -> None:
    content = csv_bytes(ENERGY).split(b"\n", 1)[1]  # drop the header line
    r = world.client.post("/v1/datasets", headers=auth(world.grid),
                          files={"file": ("noheader.csv", content, "text/csv")},
                          data={"meta": json.dumps({**ENERGY_META, "name": "noheader"})})
    _problem_json(r)
    for row_value in ("E1", "Firm 1", "10.0"):
        assert row_value not in _without_ids(r), r.text


def test_row_values_never_reach_problem_bodies_on_bad_uploads(world: World) -> None:
    bad = ENERGY.copy().astype(object)
    bad.loc[0, "kwh"] = "TOPSECRET-KWH"
    bad.loc[1, "uscc"] = "   "
    r = upload(world.client, world.grid, bad, {**ENERGY_META, "name": "leak-test"})
    assert_problem(r, 422, "bad-dataset")
    for row_value in ("TOPSECRET", "Firm 1", "Firm 2", "E2", "\"E1", "1000"):
        assert row_value not in _without_ids(r)
    ragged = b"uscc,town,name,kwh\nE1,A,Firm 1,1\nE2,A,SECRETNAME,1,EXTRA\n"
    r = world.client.post("/v1/datasets", headers=auth(world.grid),
                          files={"file": ("r.csv", ragged, "text/csv")},
                          data={"meta": json.dumps({**ENERGY_META, "name": "ragged"})})
    assert_problem(r, 422, "bad-dataset")
    assert "SECRETNAME" not in r.text
    assert "EXTRA" not in r.text


def test_no_row_value_reaches_the_audit_entries_or_the_logs(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    lenient = _lenient(world)
    world.query(group_by=["town"], measures=[{"fn": "sum", "field": "kwh"},
                                              {"fn": "mean", "field": "kwh"}], totals=True)
    world.query(filters=[{"field": "town", "op": "eq", "value": "B"}])
    world.query(token=world.env, group_by=["town"])
    world.query(group_by=["name"])
    world.query(filters=[{"field": "uscc", "op": "in", "value": ["E1", "E7"]}])
    world.query(filters=[{"field": "name", "op": "eq", "value": "Firm 7"}])
    lenient.post("/v1/queries/aggregate", headers=auth(world.econ), json={
        "contract_id": world.contract["id"], "purpose": "energy-planning",
        "measures": [{"fn": "count"}], "filters": [{"field": "town", "op": "eq",
                                                    "value": 10**30}]})
    bad = ENERGY.copy().astype(object)
    bad.loc[6, "kwh"] = "not-a-number"
    upload(world.client, world.grid, bad, {**ENERGY_META, "name": "bad-rows"})
    text = _scrub(json.dumps(_entries(world)) + "\n" + caplog.text)
    for row_value in ("Firm 1", "Firm 7", "\"E1\"", "\"E7\"", "1000.0", "not-a-number"):
        assert row_value not in text


# ------------------------------------------------------------------------- 3. injection


@pytest.mark.parametrize(
    "body",
    [
        {"group_by": ['town" FROM src; --']},
        {"group_by": ["town) UNION SELECT uscc, 1, 1 FROM src --"]},
        {"measures": [{"fn": "sum", "field": 'kwh") FROM src; --'}]},
        {"measures": [{"fn": "sum", "field": "kwh", "as": 'x" FROM src; --'}]},
        {"measures": [{"fn": "sum", "field": "kwh", "as": "Sum KWH"}]},
        {"measures": [{"fn": "count(*) --"}]},
        {"filters": [{"field": "town OR 1=1", "op": "eq", "value": "A"}]},
        {"filters": [{"field": "town", "op": "= 'A' OR 1=1 --", "value": "A"}]},
        {"purpose": "energy-planning' OR '1'='1"},
        {"contract_id": "' OR 1=1 --"},
    ],
)
def test_sql_in_query_names_is_rejected_as_invalid_input(
    world: World, body: dict[str, Any]
) -> None:
    r = world.query(**body)
    assert_problem(r, 422, "invalid-input")
    assert "Firm" not in r.text


def test_sql_in_filter_values_is_only_ever_compared_as_data(world: World) -> None:
    payloads = ["A' OR '1'='1", "A\" OR \"1\"=\"1", "A'; DROP TABLE src; --", "A\\",
                "') UNION SELECT uscc FROM src --", "%", "_", "*"]
    r = world.query(group_by=["town"], filters=[{"field": "town", "op": "in",
                                                 "value": payloads}])
    assert r.status_code == 200, r.text
    assert r.json()["cells"] == []
    r = world.query(filters=[{"field": "town", "op": "eq", "value": "%"}])
    assert r.json()["cells"][0]["status"] == "suppressed"
    assert world.query(group_by=["town"]).status_code == 200  # still intact


def test_sql_and_paths_in_dataset_metadata_are_rejected_and_nothing_is_stored(
    world: World, settings: Settings
) -> None:
    metas = [
        {**ENERGY_META, "name": "../../etc/passwd"},
        {**ENERGY_META, "name": "x'; DROP TABLE datasets; --"},
        {**ENERGY_META, "name": ".hidden"},
        {**ENERGY_META, "name": "a/b"},
        {**ENERGY_META, "entity_field": 'uscc"--'},
        {**ENERGY_META, "name": "x", "fields": [
            {"name": "uscc", "type": "string", "role": "entity"},
            {"name": "town", "type": "string); DROP TABLE x; --", "role": "dimension"}]},
        {**ENERGY_META, "name": "x", "fields": [
            {"name": "uscc", "type": "string", "role": "entity"},
            {"name": "town", "type": "string", "role": "admin"}]},
    ]
    for meta in metas:
        _problem_json(upload(world.client, world.grid, ENERGY, meta))
    r = world.client.post("/v1/datasets", headers=auth(world.grid),
                          files={"file": ("x.csv", csv_bytes(ENERGY), "text/csv")},
                          data={"meta": "{'name': 'python-literal'}"})
    _problem_json(r)
    names = [d["name"] for d in world.client.get("/v1/datasets", headers=auth(world.grid)).json()]
    assert names == ["energy"]
    parquet = sorted(p.name for p in settings.datasets_dir.rglob("*.parquet.enc"))
    assert parquet == ["atoms.parquet.enc", "entities.parquet.enc", "register.parquet.enc",
                       "v1.parquet.enc"]  # the first dataset's and the county register


def test_sql_in_org_ids_names_and_contract_terms_is_inert(world: World) -> None:
    c = world.client
    for org_id in ["x'; DROP TABLE orgs; --", "../admin", "GRID", "grid\n", "a", "-x"]:
        r = c.post("/v1/orgs", headers=auth(world.admin),
                   json={"id": org_id, "name": "X", "kind": "enterprise"})
        _problem_json(r)
    odd_name = "Robert'); DROP TABLE orgs; -- é"
    r = c.post("/v1/orgs", headers=auth(world.admin),
               json={"id": "bobby", "name": odd_name, "kind": "enterprise"})
    assert r.status_code == 201, r.text
    listed = {o["id"]: o["name"] for o in c.get("/v1/orgs", headers=auth(world.env)).json()}
    assert listed["bobby"] == odd_name
    assert {"grid", "econ", "env", "water", "audit-office"} <= set(listed)
    did = world.dataset["id"]
    for terms in (contract_terms(did, consumer_org="econ' OR '1'='1"),
                  contract_terms(did, purposes=["energy-planning'--"]),
                  contract_terms(did, fields={'kwh" FROM src --': "aggregate"}),
                  {**contract_terms(did), "dataset_id": f"{did}' OR '1'='1"}):
        _problem_json(c.post("/v1/contracts", headers=auth(world.grid), json=terms))


def test_sql_in_audit_filters_matches_nothing(world: World) -> None:
    for params in ({"actor": "x' OR '1'='1"}, {"org": "econ' OR 1=1 --"},
                   {"actor": "%"}, {"org": "*"}):
        assert _entries(world, **params) == []
    _problem_json(world.client.get("/v1/audit/entries", headers=auth(world.auditor),
                                   params={"action": "query.aggregate' OR 1=1"}))
    _problem_json(world.client.get("/v1/audit/entries", headers=auth(world.auditor),
                                   params={"cursor": "1 OR 1=1"}))
    _problem_json(world.client.get("/v1/audit/entries", headers=auth(world.auditor),
                                   params={"dataset_id": "x' OR 1=1"}))


@pytest.mark.parametrize(
    "filename",
    ["../../../../evil.csv", "..\\..\\..\\evil.csv", "/tmp/evil.csv", "....//....//evil.csv",
     "%2e%2e%2fevil.csv"],
)
def test_a_path_in_the_upload_filename_never_escapes_the_data_directory(
    world: World, settings: Settings, tmp_path: Path, filename: str
) -> None:
    r = world.client.post("/v1/datasets", headers=auth(world.grid),
                          files={"file": (filename, csv_bytes(ENERGY), "text/csv")},
                          data={"meta": json.dumps({**ENERGY_META, "name": "trav"})})
    assert r.status_code in (201, 422), r.text
    assert not any(p.name.startswith("evil") for p in tmp_path.parent.rglob("evil*"))
    assert not Path("/tmp/evil.csv").exists()
    if settings.uploads_dir.exists():
        assert list(settings.uploads_dir.iterdir()) == []
    stored = [p.resolve() for p in settings.data_dir.rglob("*") if p.is_file()]
    assert all(p.is_relative_to(settings.data_dir.resolve()) for p in stored)


def test_path_tricks_in_url_ids_are_problems_not_files(world: World) -> None:
    c = world.client
    for path in ("/v1/datasets/..%2F..%2Fbroker.db", "/v1/datasets/%00",
                 "/v1/contracts/..%2fkeys", "/v1/datasets/" + "a" * 5000,
                 f"/v1/datasets/{world.dataset['id'].upper()}x"):
        r = c.get(path, headers=auth(world.grid))
        _problem_json(r)
        assert "SQLite" not in r.text


# ------------------------------------------------------------------------ 4. bad input


@pytest.mark.parametrize(
    "raw",
    [
        b'{"contract_id": "%s", "purpose": "energy-planning", "measures": [{"fn": "count"}],'
        b' "filters": [{"field": "town", "op": "eq", "value": NaN}]}',
        b'{"contract_id": "%s", "purpose": "energy-planning", "measures": [{"fn": "count"}],'
        b' "filters": [{"field": "town", "op": "in", "value": [Infinity, -Infinity]}]}',
        b'{"contract_id": "%s", "purpose": "energy-planning", "measures": [{"fn": "count"}],'
        b' "filters": [{"field": "town", "op": "eq", "value": 100000000000000000000000}]}',
        b'{"contract_id": "%s", "purpose": "energy-planning", "measures": [{"fn": "count"}],'
        b' "filters": [{"field": "town", "op": "eq", "value": "\\ud800"}]}',
    ],
    ids=["nan", "infinity", "huge-int", "lone-surrogate"],
)
@pytest.mark.parametrize("who", ["owner", "stranger", "explain"])
def test_non_finite_huge_or_invalid_json_scalars_are_422_and_still_audited(
    world: World, raw: bytes, who: str
) -> None:
    token = world.env if who == "stranger" else world.econ
    path = "/v1/policy/explain" if who == "explain" else "/v1/queries/aggregate"
    before = _verify(world)["size"]
    r = _lenient(world).post(path, content=raw.replace(b"%s", world.contract["id"].encode()),
                             headers={**auth(token), "Content-Type": "application/json"})
    body = _problem_json(r)
    assert body["type"] in ("invalid-input", "policy-denied"), body
    if body["type"] == "policy-denied":  # a denial must be on the record
        assert _verify(world)["size"] > before
    assert _verify(world)["valid"] is True


def test_a_huge_integer_filter_on_a_numeric_field_is_answered_or_refused_never_a_500(
    world: World,
) -> None:
    clear = _offer(world, fields={"town": "clear", "kwh": "clear"})
    _accept(world, clear["id"])
    before = _verify(world)["size"]
    for value in ([2**53 + 1, None], [None, 10**30], [-(10**30), 10**30]):
        r = _lenient(world).post("/v1/queries/aggregate", headers=auth(world.econ), json={
            "contract_id": clear["id"], "purpose": "energy-planning",
            "measures": [{"fn": "count"}],
            "filters": [{"field": "kwh", "op": "range", "value": value}]})
        assert r.status_code in (200, 403, 422), (r.status_code, r.text)
        if r.status_code == 403:  # a threshold on a firm's own figure is refused by policy
            assert r.json()["reasons"] == ["filter-on-measure"]
    # Every attempt that reached the engine left an entry, and the chain still verifies.
    assert _verify(world)["size"] > before
    assert _verify(world)["valid"] is True


def test_nan_and_infinity_in_contract_terms_are_refused(world: World) -> None:
    base = json.dumps(contract_terms(world.dataset["id"]))
    for patch in ('"k_min": NaN', '"max_queries_per_day": Infinity',
                  '"dominance": {"n": 2, "k": NaN}', '"dominance": {"n": 2, "k": Infinity}'):
        raw = base[:-1] + ", " + patch + "}"
        r = _lenient(world).post("/v1/contracts", content=raw.encode(),
                                 headers={**auth(world.grid), "Content-Type": "application/json"})
        _problem_json(r)
    assert len(world.client.get("/v1/contracts", headers=auth(world.grid)).json()) == 1


def test_a_giant_in_list_is_refused_and_a_maximal_one_is_answered(world: World) -> None:
    values = [f"T{i}" for i in range(1001)]
    r = world.query(filters=[{"field": "town", "op": "in", "value": values}])
    assert_problem(r, 422, "invalid-input")
    r = world.query(filters=[{"field": "town", "op": "in", "value": [*values[:999], "A"]}],
                    group_by=["town"])
    assert r.status_code == 200, r.text
    r = world.query(filters=[{"field": "town", "op": "in", "value": []}])
    assert_problem(r, 422, "invalid-input")
    r = world.query(filters=[{"field": "town", "op": "in", "value": [["A"]]}])
    assert_problem(r, 422, "invalid-input")


def test_deeply_nested_json_is_a_problem_not_a_crash(world: World) -> None:
    for depth in (64, 5_000, 200_000):
        nested = "[" * depth + "]" * depth
        raw = _raw_query(world.contract["id"],
                         f', "filters": [{{"field": "town", "op": "in", "value": {nested}}}]')
        r = _lenient(world).post("/v1/queries/aggregate", content=raw.encode(),
                                 headers={**auth(world.econ),
                                          "Content-Type": "application/json"})
        _problem_json(r)
    meta = {**ENERGY_META, "name": "deep", "extra": json.loads("[" * 500 + "]" * 500)}
    _problem_json(upload(world.client, world.grid, ENERGY, meta))


@pytest.mark.parametrize(
    "body",
    [
        {"contract_id": None},
        {"measures": []},
        {"measures": [{"fn": "count"}] * 17},
        {"measures": [{"fn": "median", "field": "kwh"}]},
        {"measures": [{"fn": "count", "field": "kwh"}]},
        {"measures": [{"fn": "sum"}]},
        {"measures": [{"fn": "ratio", "numerator": "kwh"}]},
        {"measures": [{"fn": "count"}, {"fn": "count"}]},
        {"measures": [{"fn": "count", "extra": 1}]},
        {"group_by": "town"},
        {"group_by": ["town", "town"]},
        {"group_by": ["a", "b", "c", "d", "e"]},
        {"group_by": [{"$ne": 1}]},
        {"filters": [{"field": "town", "op": "eq"}]},
        {"filters": [{"field": "town", "op": "like", "value": "%"}]},
        {"filters": [{"field": "town", "op": "range", "value": ["A", "Z"]}]},
        {"filters": [{"field": "town", "op": "eq", "value": {"$gt": ""}}]},
        {"filters": [{"field": "town", "op": "eq", "value": "x" * 201}]},
        {"filters": [{"field": "town", "op": "eq", "value": "A", "negate": True}]},
        {"filters": [{"field": "town", "op": "eq", "value": "A"}] * 17},
        {"totals": "maybe"},
        {"k_min": 1},
        {"purpose": "ENERGY-PLANNING"},
        {"purpose": "energy\u2010planning"},
        {"purpose": "énergie"},
    ],
)
def test_malformed_query_bodies_are_422_problems(world: World, body: dict[str, Any]) -> None:
    r = _lenient(world).post("/v1/queries/aggregate", headers=auth(world.econ), json={
        "contract_id": world.contract["id"], "purpose": "energy-planning",
        "measures": [{"fn": "count"}], **body})
    body_out = _problem_json(r)
    assert body_out["type"] in ("invalid-input", "policy-denied")


def test_non_json_and_wrongly_typed_bodies_are_problems(world: World) -> None:
    c = _lenient(world)
    cases: list[tuple[bytes, str]] = [
        (b"", "application/json"),
        (b"null", "application/json"),
        (b"[]", "application/json"),
        (b'"string"', "application/json"),
        (b"\xff\xfe\x00{", "application/json"),
        (b"contract_id=x", "application/x-www-form-urlencoded"),
        (b"<xml/>", "application/xml"),
        (json.dumps({"contract_id": world.contract["id"]}).encode(), "text/plain"),
    ]
    for raw, ctype in cases:
        r = c.post("/v1/queries/aggregate", content=raw,
                   headers={**auth(world.econ), "Content-Type": ctype})
        _problem_json(r)


def test_duplicate_json_keys_cannot_smuggle_a_second_contract(world: World) -> None:
    # Two contract_id keys: whichever one wins, the answer and its audit entry must agree.
    raw = _raw_query(world.contract["id"], f', "contract_id": "{ZERO_UUID}"')
    r = world.client.post("/v1/queries/aggregate", content=raw.encode(),
                          headers={**auth(world.econ), "Content-Type": "application/json"})
    last = _entries(world, action="query.aggregate")[-1]
    if r.status_code == 200:
        assert last["resource"]["contract_id"] == world.contract["id"]
        assert last["decision"]["allowed"] is True
    else:
        _problem_json(r)
        assert last["decision"]["allowed"] is False
    raw = _raw_query(world.contract["id"], ', "purpose": "marketing"')
    r = world.client.post("/v1/queries/aggregate", content=raw.encode(),
                          headers={**auth(world.econ), "Content-Type": "application/json"})
    _problem_json(r)
    meta = json.dumps(ENERGY_META)[:-1] + ', "entity_field": "town"}'
    r = world.client.post("/v1/datasets", headers=auth(world.grid),
                          files={"file": ("d.csv", csv_bytes(ENERGY), "text/csv")},
                          data={"meta": meta.replace('"energy"', '"dupe"')})
    _problem_json(r)


def test_unknown_fields_anywhere_in_a_body_are_refused(world: World) -> None:
    c, did = world.client, world.dataset["id"]
    r = c.post("/v1/contracts", headers=auth(world.grid),
               json={**contract_terms(did), "provider_org": "water"})
    assert_problem(r, 422, "invalid-input")
    r = c.post("/v1/contracts", headers=auth(world.grid),
               json={**contract_terms(did), "status": "active"})
    assert_problem(r, 422, "invalid-input")
    r = c.post("/v1/contracts", headers=auth(world.grid),
               json=contract_terms(did, dominance={"n": 2, "k": 85, "off": True}))
    assert_problem(r, 422, "invalid-input")
    meta = {**ENERGY_META, "name": "x", "fields": [
        {**f, "pii": False} for f in ENERGY_META["fields"]]}
    assert_problem(upload(c, world.grid, ENERGY, meta), 422, "invalid-input")
    assert len(c.get("/v1/contracts", headers=auth(world.grid)).json()) == 1


def test_an_oversize_chunked_body_without_length_is_413(world: World) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"contract_id": "' + world.contract["id"].encode() + b'", "pad": "'
        for _ in range(40):
            yield b"x" * 65536
        yield b'"}'

    r = _lenient(world).post("/v1/queries/aggregate", content=chunks(),
                             headers={**auth(world.econ), "Content-Type": "application/json"})
    assert_problem(r, 413, "payload-too-large")


def test_a_lying_content_length_is_a_problem(world: World) -> None:
    r = _lenient(world).post("/v1/queries/aggregate", content=b"{}",
                             headers={**auth(world.econ), "Content-Type": "application/json",
                                      "Content-Length": "-1"})
    _problem_json(r)


def test_weird_unicode_in_data_is_stored_and_queried_safely(world: World) -> None:
    towns = ["\u202eA", "A\u0000", "\U0001f600", "A\u0301", "\u00c1",
             "\uff54\uff4f\uff57\uff4e", "\ufeffA", "A"]
    frame = pd.DataFrame({"uscc": [f"U{i}" for i in range(len(towns))], "town": towns,
                          "name": [f"N{i}" for i in range(len(towns))],
                          "kwh": [1.0] * len(towns)})
    r = upload(world.client, world.grid, frame, {**ENERGY_META, "name": "unicode"})
    assert r.status_code in (201, 422), r.text
    if r.status_code == 422:
        _problem_json(r)
        return
    terms = contract_terms(r.json()["id"], fields={"town": "clear", "kwh": "aggregate"})
    cid = world.client.post("/v1/contracts", headers=auth(world.grid), json=terms).json()["id"]
    _accept(world, cid)
    r = _lenient(world).post("/v1/queries/aggregate", headers=auth(world.econ), json={
        "contract_id": cid, "purpose": "energy-planning", "group_by": ["town"],
        "measures": [{"fn": "count"}], "totals": True})
    assert r.status_code == 200, r.text
    assert all(c["status"] == "suppressed" for c in r.json()["cells"] if c["key"])
    assert _verify(world)["valid"] is True


def test_a_utf8_bom_csv_is_accepted_with_its_first_column_intact(world: World) -> None:
    content = b"\xef\xbb\xbf" + csv_bytes(ENERGY)
    r = world.client.post("/v1/datasets", headers=auth(world.grid),
                          files={"file": ("bom.csv", content, "text/csv")},
                          data={"meta": json.dumps({**ENERGY_META, "name": "bom"})})
    assert r.status_code == 201, r.text


def test_a_failed_upload_or_offer_leaves_nothing_half_stored(
    world: World, settings: Settings
) -> None:
    c = world.client
    before_ds = c.get("/v1/datasets", headers=auth(world.auditor)).json()
    before_size = _verify(world)["size"]
    bad = ENERGY.copy().astype(object)
    bad.loc[4, "kwh"] = "oops"
    assert upload(c, world.grid, bad, {**ENERGY_META, "name": "half"}).status_code == 422
    assert upload(c, world.grid, ENERGY, ENERGY_META).status_code == 409
    r = c.post("/v1/contracts", headers=auth(world.grid),
               json=contract_terms(world.dataset["id"], fields={"nope": "clear"}))
    assert r.status_code == 422
    assert c.get("/v1/datasets", headers=auth(world.auditor)).json() == before_ds
    assert len(c.get("/v1/contracts", headers=auth(world.auditor)).json()) == 1
    parquet = sorted(p.name for p in settings.datasets_dir.rglob("*")
                     if p.is_file() and p.name != ".register.lock")
    assert parquet == ["atoms.parquet.enc", "atoms.parquet.key", "entities.parquet.enc",
                       "entities.parquet.key", "register.parquet.enc", "register.parquet.key",
                       "v1.parquet.enc", "v1.parquet.key"]  # the first dataset's, the register
    if settings.uploads_dir.exists():
        assert list(settings.uploads_dir.iterdir()) == []
    # Name is free again after the refused upload.
    assert upload(c, world.grid, ENERGY, {**ENERGY_META, "name": "half"}).status_code == 201
    assert _verify(world)["size"] > before_size


# ------------------------------------------------------------------------- 5. token attacks


def _get(client: TestClient, token: str) -> Any:
    return client.get("/v1/contracts", headers=auth(token))


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
def test_unsigned_tokens_in_every_spelling_of_none_are_401(
    client: TestClient, settings: Settings, alg: str
) -> None:
    token = _raw_token({"alg": alg, "typ": "JWT"}, token_claims(settings), None)
    assert_problem(_get(client, token), 401, "unauthenticated")


def test_a_valid_signature_under_a_lying_header_is_401(
    client: TestClient, settings: Settings
) -> None:
    claims = token_claims(settings)
    for header in ({"alg": "HS384"}, {"alg": "RS256"}, {"alg": "ES256"}, {"alg": "none"},
                   {"alg": "HS256", "crit": ["exp"]}, {}):
        token = _raw_token(header, claims, SECRET.encode())
        assert_problem(_get(client, token), 401, "unauthenticated")


def test_rs256_and_public_key_confusion_tokens_are_401(
    client: TestClient, settings: Settings
) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = jwt.encode(token_claims(settings), key, algorithm="RS256")
    assert_problem(_get(client, token), 401, "unauthenticated")
    pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    confused = _raw_token({"alg": "HS256", "typ": "JWT"}, token_claims(settings), pem)
    assert_problem(_get(client, confused), 401, "unauthenticated")
    for weak in (b"", b"secret", b"broker", b"broker-dev"):
        assert_problem(_get(client, _raw_token({"alg": "HS256"}, token_claims(settings), weak)),
                       401, "unauthenticated")


def test_signature_stripping_and_payload_swapping_are_401(
    client: TestClient, settings: Settings, mint: Mint
) -> None:
    good = mint("econ", "consumer")
    head, _payload, sig = good.split(".")
    admin_payload = _b64(json.dumps(token_claims(settings, roles=["admin", "auditor"])).encode())
    for token in (f"{head}.{_payload}.", f"{head}.{_payload}", f"{head}.{admin_payload}.{sig}",
                  f"{head}.{_payload}.{sig}x", f"{head}.{_payload}.{sig}.{sig}",
                  good + " " + good, f"{head}..{sig}"):
        assert_problem(_get(client, token), 401, "unauthenticated")


@pytest.mark.parametrize(
    "overrides",
    [
        {"exp": int(time.time()) - 120},
        {"iat": None},
        {"iss": None},
        {"aud": None},
        {"aud": ["someone-else"]},
        {"aud": "broker "},
        {"iss": "broker-dev "},
        {"nbf": int(time.time()) + 3600},
        {"iat": int(time.time()) + 86_400},
        {"org": None},
        {"org": 42},
        {"org": ["econ"]},
        {"org": "econ\n"},
        {"org": "ECON"},
        {"org": "econ/../grid"},
        {"sub": ""},
        {"sub": 7},
        {"sub": "x" * 300},
        {"roles": None},
        {"roles": "consumer"},
        {"roles": "consumer,admin"},
        {"roles": ["Consumer"]},
        {"roles": ["consumer", 1]},
        {"roles": [["consumer"]]},
        {"roles": {"consumer": True}},
        {"roles": ["consumer", "root"]},
    ],
    ids=lambda o: "-".join(f"{k}={v!r}"[:40] for k, v in o.items()),
)
def test_tokens_with_bad_or_missing_claims_are_401(
    client: TestClient, settings: Settings, overrides: dict[str, Any]
) -> None:
    token = jwt.encode(token_claims(settings, **overrides), SECRET, algorithm="HS256")
    r = _get(client, token)
    assert_problem(r, 401, "unauthenticated")
    assert "mallory" not in r.text


def test_a_token_for_a_registered_org_but_the_wrong_role_changes_nothing(
    world: World, mint: Mint
) -> None:
    c, cid = world.client, world.contract["id"]
    forged_consumer = mint("econ", "provider")
    r = c.post(f"/v1/contracts/{cid}/revoke", headers=auth(forged_consumer))
    assert r.status_code in (403, 404)
    r = world.query(token=forged_consumer)
    assert "role-not-permitted" in assert_problem(r, 403, "policy-denied")["reasons"]
    assert c.get(f"/v1/contracts/{cid}", headers=auth(world.econ)).json()["status"] == "active"


# --------------------------------------------------------------------------------- 6. audit


def test_every_query_attempt_allowed_or_denied_is_one_audit_entry(world: World) -> None:
    before = len(_entries(world, action="query.aggregate"))
    attempts = [
        world.query(group_by=["town"]),
        world.query(token=world.env),
        world.query(token=world.auditor),
        world.query(token=world.grid),
        world.query(contract_id=ZERO_UUID),
        world.query(purpose="marketing"),
        world.query(group_by=["name"]),
        world.query(group_by=["uscc"]),
    ]
    after = _entries(world, action="query.aggregate")[before:]
    assert len(after) == len(attempts)
    assert [e["decision"]["allowed"] for e in after] == [r.status_code == 200 for r in attempts]
    assert {e["request_id"] for e in after} == {r.headers["x-request-id"] for r in attempts}
    for entry in after:
        if not entry["decision"]["allowed"]:
            assert entry["decision"]["reasons"]


def test_a_strangers_attempt_to_accept_or_revoke_a_contract_is_audited(world: World) -> None:
    cid = world.contract["id"]
    before = {e["seq"] for e in _entries(world)}
    for token in (world.env, world.other_provider):
        for step in ("accept", "revoke"):
            r = world.client.post(f"/v1/contracts/{cid}/{step}", headers=auth(token))
            assert_problem(r, 404, "not-found")
    new = [e for e in _entries(world) if e["seq"] not in before
           and e["action"] in ("contract.accept", "contract.revoke")]
    denied = [(e["actor"]["org"], e["action"]) for e in new if not e["decision"]["allowed"]]
    assert sorted(denied) == [("env", "contract.accept"), ("env", "contract.revoke"),
                              ("water", "contract.accept"), ("water", "contract.revoke")]
    # ... and the provider whose contract was attacked can see the attempts.
    grid_view = _entries(world, world.grid, allowed="false")
    assert {e["actor"]["org"] for e in grid_view} >= {"env", "water"}


def test_an_attempt_to_offer_someone_elses_dataset_is_audited(world: World) -> None:
    r = world.client.post("/v1/contracts", headers=auth(world.other_provider),
                          json=contract_terms(world.dataset["id"], consumer_org="water"))
    assert_problem(r, 404, "not-found")
    denied = _entries(world, action="contract.offer", allowed="false")
    assert [e["actor"]["org"] for e in denied] == ["water"]


def test_a_denied_contract_step_by_a_party_is_audited(world: World) -> None:
    offer = _offer(world)
    c = world.client
    assert c.post(f"/v1/contracts/{offer['id']}/accept", headers=auth(world.grid)).status_code \
        == 403
    assert c.post(f"/v1/contracts/{offer['id']}/revoke", headers=auth(world.econ)).status_code \
        == 403
    denied = [(e["actor"]["org"], e["action"]) for e in _entries(world, allowed="false")]
    assert ("grid", "contract.accept") in denied
    assert ("econ", "contract.revoke") in denied


def test_the_audit_log_verifies_after_a_barrage_of_attacks(
    world: World, settings: Settings, mint: Mint
) -> None:
    lenient = _lenient(world)
    cid = world.contract["id"]
    world.query(group_by=["town"], totals=True)
    world.query(token=world.env)
    world.query(group_by=['town"; --'])
    world.query(filters=[{"field": "town", "op": "in", "value": ["A"] * 1000}])
    for token in (world.env, world.other_provider, world.auditor):
        lenient.post(f"/v1/contracts/{cid}/revoke", headers=auth(token))
        lenient.post(f"/v1/contracts/{cid}/accept", headers=auth(token))
    nan_filter = ', "filters": [{"field": "town", "op": "eq", "value": NaN}]'
    lenient.post("/v1/policy/explain", content=_raw_query(cid, nan_filter).encode(),
        headers={**auth(world.econ), "Content-Type": "application/json"})
    lenient.post("/v1/queries/aggregate", headers={**auth(world.econ),
                                                   "Content-Type": "application/json"},
                 content=b"[" * 10_000 + b"]" * 10_000)
    upload(world.client, world.grid, ENERGY, ENERGY_META)
    upload(world.client, mint("ghost", "provider"), ENERGY, {**ENERGY_META, "name": "g"})
    lenient.get("/v1/audit/entries", headers=auth(world.econ))
    lenient.get("/v1/audit/verify", headers=auth(world.grid))
    lenient.get("/v1/audit/entries", headers=auth(world.auditor),
                params={"cursor": "999999999999999999"})
    world.client.post(f"/v1/contracts/{cid}/revoke", headers=auth(world.grid))
    world.query()
    result = _verify(world)
    assert result["valid"] is True, result
    assert result.get("first_bad_seq") is None
    entries = _entries(world)
    assert [e["seq"] for e in entries] == list(range(1, len(entries) + 1))
    for prev, entry in itertools.pairwise(entries):
        assert entry["prev_hash"] != prev["prev_hash"]
    assert result["size"] >= len(entries) - 1


def test_auditors_and_providers_read_entries_but_only_auditors_verify_and_nobody_writes(
    world: World,
) -> None:
    c = world.client
    for method in ("post", "put", "patch", "delete"):
        r = getattr(c, method)("/v1/audit/entries", headers=auth(world.auditor))
        assert_problem(r, 405, "method-not-allowed")
    assert_problem(c.get("/v1/audit/verify", headers=auth(world.grid)), 403, "policy-denied")
    assert_problem(c.get("/v1/audit/entries", headers=auth(world.env)), 403, "policy-denied")
    _entries(world)
    reads = [(e["actor"]["org"], e["decision"]["allowed"])
             for e in _entries(world, action="audit.read")]
    assert ("env", False) in reads
    assert ("audit-office", True) in reads
    denied = _entries(world, action="audit.verify", allowed="false")
    assert [e["actor"]["org"] for e in denied] == ["grid"]
