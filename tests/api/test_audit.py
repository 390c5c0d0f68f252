"""The audit log over HTTP: views per role, pagination, verification and tamper detection."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Connection, create_engine, text

from broker.demo import tamper
from broker.settings import Settings
from tests.conftest import ENERGY, ENERGY_META, Mint, World, assert_problem, auth, upload


def test_auditor_verifies_a_valid_chain(world: World) -> None:
    world.query(group_by=["town"])
    r = world.client.get("/v1/audit/verify", headers=auth(world.auditor))
    body = r.json()
    # 5 orgs, 1 upload, offer, accept, 1 query = 9 entries before the verify itself
    assert body["valid"] is True
    assert body["size"] == 9
    assert len(body["root"]) == 64
    assert "first_bad_seq" not in body or body["first_bad_seq"] is None


def _tamper(settings: Settings, attack: Callable[[Connection], object]) -> None:
    engine = create_engine(settings.db_url)
    with engine.begin() as conn:
        tamper.disarm(conn)
        attack(conn)
    engine.dispose()


def test_one_changed_byte_is_reported_with_its_seq(world: World, settings: Settings) -> None:
    world.query(group_by=["town"])
    _tamper(settings, lambda c: tamper.flip_byte(c, 4))
    r = world.client.get("/v1/audit/verify", headers=auth(world.auditor)).json()
    assert (r["valid"], r["kind"], r["first_bad_seq"]) == (False, "bad-entry", 4)


def test_a_deleted_entry_is_reported_as_a_gap(world: World, settings: Settings) -> None:
    _tamper(settings, lambda c: tamper.delete_entry(c, 3))
    r = world.client.get("/v1/audit/verify", headers=auth(world.auditor)).json()
    assert (r["valid"], r["kind"], r["first_bad_seq"], r["reason"]) == (
        False, "gap", 3, "seq-gap")


def test_a_truncated_tail_is_reported(world: World, settings: Settings) -> None:
    with sqlite3.connect(settings.data_dir / "broker.db") as conn:
        last = conn.execute("SELECT max(seq) FROM audit_entries").fetchone()[0]
    _tamper(settings, lambda c: c.execute(text("DELETE FROM audit_entries WHERE seq = :s"),
                                          {"s": last}))
    r = world.client.get("/v1/audit/verify", headers=auth(world.auditor)).json()
    assert (r["valid"], r["kind"], r["first_bad_seq"], r["reason"]) == (
        False, "rollback", last, "log-shorter-than-head")


def test_the_tables_refuse_update_and_delete(world: World, settings: Settings) -> None:
    with sqlite3.connect(settings.data_dir / "broker.db") as conn:
        for sql in ("UPDATE audit_entries SET body = body WHERE seq = 1",
                    "DELETE FROM audit_entries WHERE seq = 1",
                    "DELETE FROM audit_head", "UPDATE audit_head SET size = 0"):
            with pytest.raises(sqlite3.IntegrityError):
                conn.execute(sql)


def test_only_auditors_verify(world: World) -> None:
    for token in (world.grid, world.econ):
        r = world.client.get("/v1/audit/verify", headers=auth(token))
        assert_problem(r, 403, "policy-denied")


def test_consumers_cannot_read_the_log(world: World) -> None:
    assert_problem(world.client.get("/v1/audit/entries", headers=auth(world.econ)), 403,
                   "policy-denied")


def test_provider_sees_every_use_of_its_own_data_only(
    world: World, client: TestClient, mint: Mint
) -> None:
    other = mint("water", "provider")
    upload(client, other, ENERGY, {**ENERGY_META, "name": "water-energy"})
    world.query(group_by=["town"])
    world.query(token=world.env)
    grid_view = client.get("/v1/audit/entries", headers=auth(world.grid),
                           params={"action": "query.aggregate"}).json()["entries"]
    assert [(e["entry"]["actor"]["org"], e["entry"]["decision"]["allowed"])
            for e in grid_view] == [("econ", True), ("env", False)]
    water_view = client.get("/v1/audit/entries", headers=auth(other)).json()["entries"]
    assert {e["entry"]["resource"]["dataset_id"] for e in water_view} != {
        world.dataset["id"]}
    assert all(e["entry"]["resource"]["dataset_id"] != world.dataset["id"] for e in water_view)


def test_auditor_filters_and_pages(world: World) -> None:
    for _ in range(3):
        world.query()
    c = world.client
    seen: list[int] = []
    cursor = None
    while True:
        params: dict[str, str | int] = {"limit": 2, "action": "query.aggregate"}
        if cursor:
            params["cursor"] = cursor
        page = c.get("/v1/audit/entries", headers=auth(world.auditor), params=params).json()
        seen += [e["entry"]["seq"] for e in page["entries"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == 3
    assert seen == sorted(seen)
    denied = c.get("/v1/audit/entries", headers=auth(world.auditor),
                   params={"allowed": "false"}).json()["entries"]
    assert all(not e["entry"]["decision"]["allowed"] for e in denied)
    by_org = c.get("/v1/audit/entries", headers=auth(world.auditor),
                   params={"org": "econ"}).json()["entries"]
    assert by_org
    assert all(e["entry"]["actor"]["org"] == "econ" for e in by_org)
    r = c.get("/v1/audit/entries", headers=auth(world.auditor), params={"since": "yesterday"})
    assert_problem(r, 422, "invalid-input")


def test_entries_have_the_design_shape(world: World) -> None:
    world.query(group_by=["town"])
    entries = world.client.get("/v1/audit/entries", headers=auth(world.auditor),
                               params={"action": "query.aggregate"}).json()["entries"]
    entry = entries[-1]["entry"]
    assert set(entry) == {"v", "seq", "ts", "actor", "action", "resource", "purpose",
                          "request_id", "query_fp", "decision", "disclosure", "prev_hash"}
    assert set(entry["actor"]) == {"iss", "sub", "org", "roles"}
    assert set(entry["resource"]) == {"dataset_id", "version", "contract_id", "fields"}
    assert entry["resource"]["fields"] == ["town"]  # grouped by town, counted
    assert set(entry["decision"]) == {"allowed", "reasons", "policy_revision"}
    assert set(entry["disclosure"]) == {"k", "cells_published", "cells_suppressed",
                                        "result_digest"}
    assert entry["ts"].endswith("Z")
    assert len(entry["query_fp"]) == 64
