"""Every error is application/problem+json; bodies reject unknown fields and oversize input."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.conftest import World, assert_problem, auth


def test_unknown_route_is_404_problem(client: TestClient) -> None:
    assert_problem(client.get("/v1/nothing-here"), 404, "not-found")


def test_wrong_method_is_405_problem(client: TestClient) -> None:
    assert_problem(client.delete("/v1/orgs"), 405, "method-not-allowed")


def test_unknown_body_field_is_rejected(world: World) -> None:
    r = world.client.post("/v1/orgs", headers=auth(world.admin),
                          json={"id": "newco", "name": "N", "kind": "enterprise", "is_admin": True})
    body = assert_problem(r, 422, "invalid-input")
    assert any(e["loc"][-1] == "is_admin" for e in body["errors"])


def test_validation_errors_do_not_echo_submitted_values(world: World) -> None:
    secret_value = "SECRET-VALUE-1234567"
    r = world.query(group_by=[secret_value])
    assert_problem(r, 422, "invalid-input")
    assert secret_value not in r.text


def test_malformed_json_is_422_problem(world: World) -> None:
    r = world.client.post("/v1/queries/aggregate", content=b"{not json",
                          headers={**auth(world.econ), "Content-Type": "application/json"})
    assert_problem(r, 422, "invalid-input")


def test_oversize_json_body_is_413_problem(world: World) -> None:
    r = world.client.post("/v1/queries/aggregate", content=b"[" + b"1," * 600_000 + b"1]",
                          headers={**auth(world.econ), "Content-Type": "application/json"})
    assert_problem(r, 413, "payload-too-large")


def test_bad_path_id_is_422_problem(world: World) -> None:
    r = world.client.get("/v1/contracts/../../etc/passwd", headers=auth(world.econ))
    assert r.headers["content-type"].startswith("application/problem+json")
    r = world.client.get("/v1/contracts/not-a-uuid", headers=auth(world.econ))
    assert_problem(r, 422, "invalid-input")


def test_health_ready_metrics_and_docs(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json()["status"] == "ready"
    assert client.get("/docs").status_code == 200
    client.get("/healthz")
    assert "broker_requests_total" in client.get("/metrics").text


def test_invented_methods_share_one_metrics_label(client: TestClient) -> None:
    for i in range(3):
        assert_problem(client.request(f"INVENTED{i}", "/healthz"), 405, "method-not-allowed")
    text = client.get("/metrics").text
    assert "INVENTED" not in text
    assert 'method="OTHER",route="/healthz",status="405"} 3.0' in text


def test_every_response_carries_a_request_id(client: TestClient) -> None:
    r = client.get("/healthz")
    assert len(r.headers["x-request-id"]) == 36


def test_wrong_json_types_are_not_coerced(world: World) -> None:
    r = world.query(totals=0)
    assert_problem(r, 422, "invalid-input")
    r = world.client.post("/v1/orgs", headers=auth(world.admin),
                          json={"id": "newco", "name": "N", "kind": "enterprise", "uscc": 5})
    assert_problem(r, 422, "invalid-input")


def test_405_lists_every_method_the_path_serves(client: TestClient) -> None:
    r = client.delete("/v1/orgs")
    assert_problem(r, 405, "method-not-allowed")
    assert r.headers["allow"] == "GET, POST"
