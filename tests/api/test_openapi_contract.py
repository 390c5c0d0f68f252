"""What the OpenAPI document promises, the API holds to (issue 18, item 6)."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.conftest import World, assert_problem, auth


@pytest.fixture
def spec(client: TestClient) -> dict[str, Any]:
    """The served OpenAPI document."""
    document: dict[str, Any] = client.get("/openapi.json").json()
    return document


def _query_param(spec: dict[str, Any], path: str, name: str) -> dict[str, Any]:
    params = spec["paths"][path]["get"]["parameters"]
    found: dict[str, Any] = next(p for p in params if p["name"] == name)
    return found


def test_a_body_that_is_not_utf8_is_a_declared_422_problem(world: World,
                                                            spec: dict[str, Any]) -> None:
    r = world.client.post("/v1/orgs", content=b'{"id": "\xff\xfe", "name": "x"}',
                          headers={**auth(world.admin), "Content-Type": "application/json"})
    assert_problem(r, 422, "invalid-input")
    assert "422" in spec["paths"]["/v1/orgs"]["post"]["responses"]


@pytest.mark.parametrize("value", ["1700000000", "1700000000.5", "2026-01-01",
                                   "2026-01-01T00:00:00", "tomorrow"])
def test_since_and_until_take_only_rfc3339_date_times(world: World, value: str) -> None:
    for name in ("since", "until"):
        r = world.client.get("/v1/audit/entries", params={name: value},
                             headers=auth(world.auditor))
        assert_problem(r, 422, "invalid-input")


def test_since_and_until_take_date_times_with_an_offset(world: World) -> None:
    r = world.client.get("/v1/audit/entries", headers=auth(world.auditor), params={
        "since": "2026-01-01T00:00:00Z", "until": "2099-01-01T08:00:00.5+08:00"})
    assert r.status_code == 200, r.text


def test_an_undeclared_query_parameter_is_refused_not_ignored(world: World) -> None:
    r = world.client.get("/v1/audit/entries", params={"dataset": "x"},
                         headers=auth(world.auditor))
    assert_problem(r, 422, "invalid-input")


def test_mappings_with_key_patterns_are_closed_in_the_schema(spec: dict[str, Any]) -> None:
    schemas = spec["components"]["schemas"]
    assert schemas["ContractIn"]["properties"]["fields"]["additionalProperties"] is False
    sources = schemas["AggregateIn"]["properties"]["sources"]["anyOf"][0]
    assert sources["additionalProperties"] is False


def test_a_sql_source_names_exactly_one_of_table_and_query_in_the_schema(
        spec: dict[str, Any]) -> None:
    one_of = spec["components"]["schemas"]["SqlSourceIn"]["oneOf"]
    assert sorted(tuple(branch["required"]) for branch in one_of) == [("query",), ("table",)]


def test_the_bounds_of_a_consistency_proof_are_declared(spec: dict[str, Any]) -> None:
    old = _query_param(spec, "/v1/audit/consistency", "old")["schema"]
    assert (old["minimum"], old["maximum"]) == (1, 2**53)


def test_the_import_path_advertises_only_post(world: World) -> None:
    r = world.client.options("/v1/datasets/import", headers=auth(world.grid))
    assert_problem(r, 405, "method-not-allowed")
    assert r.headers["allow"] == "POST"
    r = world.client.get("/v1/datasets/import", headers=auth(world.grid))
    assert_problem(r, 405, "method-not-allowed")
    assert r.headers["allow"] == "POST"
    # A path that only a parameter names keeps every method of its routes.
    r = world.client.put(f"/v1/datasets/{world.dataset['id']}", headers=auth(world.grid))
    assert_problem(r, 405, "method-not-allowed")
    assert "GET" in r.headers["allow"]


def test_a_crosscheck_of_an_unknown_indicator_is_a_declared_404(world: World,
                                                                 spec: dict[str, Any]) -> None:
    assert "404" in spec["paths"]["/v1/queries/crosscheck"]["post"]["responses"]
