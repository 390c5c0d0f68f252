"""Consented slices and dataset versions over HTTP."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd

from tests.conftest import (
    ENERGY,
    World,
    assert_problem,
    auth,
    csv_bytes,
    released,
)

CONSENT = {"given_by": "Board of Grid Co.", "given_at": "2026-01-05T08:00:00+08:00",
           "scope": "Town-level electricity statistics for energy planning",
           "reference": "Resolution 2026-03"}


def _slice(world: World, **body: Any) -> Any:
    payload = {"name": "town-a", "fields": ["town", "kwh"],
               "predicate": [{"field": "town", "op": "eq", "value": "A"}], "consent": CONSENT,
               **body}
    return world.client.post(f"/v1/datasets/{world.dataset['id']}/slices",
                             headers=auth(world.grid), json=payload)


def _counts(world: World, cid: str, **body: Any) -> dict[str, Any]:
    r = world.query(contract_id=cid, group_by=["town"],
                    measures=[{"fn": "count"}, {"fn": "sum", "field": "kwh"}], **body)
    return {c[0]["town"]: c[1] for c in released(r)}


def test_a_contract_over_a_slice_sees_only_its_rows_and_fields(world: World) -> None:
    r = _slice(world)
    assert r.status_code == 201, r.text
    item = r.json()
    assert item["consent"]["given_by"] == "Board of Grid Co."
    assert item["fields"] == ["town", "kwh"]
    cid = world.contract_for(world.dataset["id"], slice_id=item["id"],
                             fields={"town": "clear", "kwh": "aggregate"})
    # Town A holds six firms; town B (two firms, one of them huge) is outside the slice.
    assert _counts(world, cid) == {"A": {"count": 6, "sum_kwh": 85.0}}
    assert _counts(world, world.contract["id"])["A"] == {"count": 6, "sum_kwh": 85.0}
    # A filter asking for B gets nothing: the predicate is added, not replaced.
    r = world.query(contract_id=cid, group_by=["town"], measures=[{"fn": "count"}],
                    filters=[{"field": "town", "op": "eq", "value": "B"}])
    assert released(r) == [] or all(c[1] is None for c in released(r))
    # Totals come from the slice only.
    r = world.query(contract_id=cid, measures=[{"fn": "count"}])
    assert [c[1] for c in released(r)] == [{"count": 6}]


def test_fields_outside_the_slice_cannot_be_contracted(world: World) -> None:
    item = _slice(world).json()
    r = world.client.post("/v1/contracts", headers=auth(world.grid), json={
        **_terms(world), "slice_id": item["id"], "fields": {"town": "clear", "name": "clear"}})
    assert assert_problem(r, 422, "invalid-input")["fields"] == ["name"]


def _terms(world: World) -> dict[str, Any]:
    now = datetime.now(UTC)
    return {"dataset_id": world.dataset["id"], "consumer_org": "econ",
            "purposes": ["energy-planning"], "fields": {"town": "clear"}, "k_min": 3,
            "valid_until": (now + timedelta(days=1)).isoformat()}


def test_slices_are_validated(world: World) -> None:
    for body, status, slug in (
        ({"fields": ["nope"]}, 422, "invalid-input"),
        ({"fields": ["uscc"]}, 422, "invalid-input"),
        ({"predicate": [{"field": "nope", "op": "eq", "value": 1}]}, 422, "invalid-input"),
        ({"predicate": [{"field": "kwh", "op": "range", "value": "x"}]}, 422, "invalid-input"),
        ({"name": "../x"}, 422, "invalid-input"),
        ({"consent": {**CONSENT, "given_at": "2999-01-01T00:00:00Z"}}, 422, "invalid-input"),
        ({"consent": {**CONSENT, "extra": 1}}, 422, "invalid-input"),
        ({"consent": {k: v for k, v in CONSENT.items() if k != "given_by"}}, 422,
         "invalid-input"),
    ):
        assert_problem(_slice(world, **body), status, slug)
    assert _slice(world).status_code == 201
    assert_problem(_slice(world), 409, "conflict")


def test_only_the_owner_publishes_and_consumers_see_only_their_slices(world: World) -> None:
    did = world.dataset["id"]
    for token in (world.econ, world.other_provider, world.auditor):
        r = world.client.post(f"/v1/datasets/{did}/slices", headers=auth(token), json={
            "name": "x", "fields": ["town"], "consent": CONSENT})
        assert r.status_code in (403, 404), r.text
    one = _slice(world).json()
    _slice(world, name="other")
    assert len(world.client.get(f"/v1/datasets/{did}/slices", headers=auth(world.grid)).json()) \
        == 2
    assert world.client.get(f"/v1/datasets/{did}/slices", headers=auth(world.econ)).json() == []
    world.contract_for(did, slice_id=one["id"], fields={"town": "clear", "kwh": "aggregate"})
    seen = world.client.get(f"/v1/datasets/{did}/slices", headers=auth(world.econ)).json()
    assert [s["id"] for s in seen] == [one["id"]]


def _new_version(world: World, frame: pd.DataFrame) -> Any:
    return world.client.post(f"/v1/datasets/{world.dataset['id']}/versions",
                             headers=auth(world.grid),
                             files={"file": ("v.csv", csv_bytes(frame), "text/csv")})


def test_new_versions_are_followed_unless_pinned(world: World) -> None:
    pinned = world.contract_for(world.dataset["id"], dataset_version=1)
    before = _counts(world, world.contract["id"])
    doubled = ENERGY.assign(kwh=ENERGY["kwh"] * 2)
    r = _new_version(world, doubled)
    assert r.status_code == 201, r.text
    assert r.json()["version"] == 2
    assert r.json()["sha256"] == hashlib.sha256(csv_bytes(doubled)).hexdigest()
    after = _counts(world, world.contract["id"])
    assert after["A"]["sum_kwh"] == 2 * before["A"]["sum_kwh"]
    assert _counts(world, pinned) == before
    versions = world.client.get(f"/v1/datasets/{world.dataset['id']}/versions",
                                headers=auth(world.grid)).json()
    assert [v["version"] for v in versions] == [1, 2]
    entries = world.client.get("/v1/audit/entries", headers=auth(world.auditor), params={
        "action": "dataset.version"}).json()["entries"]
    assert [e["entry"]["resource"]["version"] for e in entries] == [2]
    # The same data again is not a new version; a version needs the declared schema.
    assert_problem(_new_version(world, doubled), 409, "conflict")
    assert_problem(_new_version(world, doubled.drop(columns=["kwh"])), 422, "bad-dataset")
    assert_problem(world.client.post("/v1/contracts", headers=auth(world.grid), json={
        **_terms(world), "dataset_version": 3}), 422, "invalid-input")


def test_only_the_owner_adds_versions(world: World) -> None:
    for token in (world.econ, world.other_provider, world.auditor):
        r = world.client.post(f"/v1/datasets/{world.dataset['id']}/versions",
                              headers=auth(token),
                              files={"file": ("v.csv", csv_bytes(ENERGY), "text/csv")})
        assert r.status_code in (403, 404), r.text


def test_odrl_export_over_http_expands_as_json_ld(world: World) -> None:
    from tests.unit.test_odrl import _expand

    item = _slice(world).json()
    cid = world.contract_for(world.dataset["id"], slice_id=item["id"],
                             fields={"town": "clear", "kwh": "aggregate"})
    r = world.client.get(f"/v1/contracts/{cid}/odrl", headers=auth(world.econ))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/ld+json")
    document = r.json()
    assert document["@type"] == "Agreement"
    assert document["uid"].endswith(f"/contracts/{cid}")
    expanded, dropped = _expand(document)
    assert dropped == []
    assert expanded
    for token in (world.env, world.other_provider):
        assert_problem(world.client.get(f"/v1/contracts/{cid}/odrl", headers=auth(token)),
                       404, "not-found")
