"""Request ids and the broker's own metrics, through the real app and its ``/metrics``."""

from __future__ import annotations

import io
import json
import logging
import logging.config
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from broker.app import create_app
from broker.observability.logs import REQUEST_ID
from broker.observability.metrics import MAX_REASONS, BrokerMetrics
from broker.settings import Settings
from tests.conftest import SECRET, Mint, World, assert_problem, auth, released
from tests.logcapture import captured_log


def samples(client: TestClient) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of ``/metrics``: (name, labels) -> value."""
    r = client.get("/metrics")
    assert r.status_code == 200
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(r.text) for s in family.samples}


def value(found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str,
          **labels: str) -> float | None:
    """One sample's value, or None if absent."""
    return found.get((name, frozenset(labels.items())))


def test_a_client_request_id_never_becomes_the_request_id(client: TestClient) -> None:
    rid = "gw-7f3a.2026:abc_DEF"
    r = client.get("/v1/datasets", headers={"X-Request-ID": rid})
    body = assert_problem(r, 401, "unauthenticated")
    own = r.headers["x-request-id"]
    assert str(uuid.UUID(own)) == own  # the broker's own id, fresh
    assert body["request_id"] == own


@pytest.mark.parametrize("sent", ["x" * 129, "has space", "new\nline", "<script>", "-lead",
                                  "é-accent", ""])
def test_a_malformed_request_id_is_replaced_by_a_fresh_one(client: TestClient,
                                                           sent: str) -> None:
    r = client.get("/v1/nowhere", headers={"X-Request-ID": sent.encode()})
    body = assert_problem(r, 404, "not-found")
    rid = r.headers["x-request-id"]
    assert rid != sent
    assert str(uuid.UUID(rid)) == rid
    assert body["request_id"] == rid


def test_two_request_ids_are_replaced_by_a_fresh_one(client: TestClient) -> None:
    r = client.get("/healthz", headers=[("X-Request-ID", "aaa"), ("X-Request-ID", "bbb")])
    assert str(uuid.UUID(r.headers["x-request-id"])) == r.headers["x-request-id"]


def test_every_response_gets_an_id_and_no_two_are_alike(client: TestClient) -> None:
    ids = {client.get("/healthz").headers["x-request-id"] for _ in range(5)}
    assert len(ids) == 5


@pytest.fixture
def json_log(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    """The root logger in the JSON format, into a buffer."""
    with captured_log(monkeypatch, "json") as stream:
        yield stream


def test_lines_logged_while_a_request_is_handled_name_its_id_and_no_exception_message(
        settings: Settings, json_log: io.StringIO) -> None:
    """A route's worker thread and the error middleware on the event loop both log under the
    request's id; an exception is logged as its type and frames, never its message."""
    app = create_app(settings)
    route_log = logging.getLogger("broker.api.routes.example")

    def explode() -> None:
        route_log.info("handling it")
        try:
            raise ValueError("row value 4242.42 of Secret Firm")
        except ValueError:
            route_log.exception("it failed")
        raise RuntimeError("another value 9191.91")

    app.add_api_route("/example", explode)
    with TestClient(app, raise_server_exceptions=False) as client:
        r = client.get("/example", headers={"X-Request-ID": "trace-me-1"})
    assert_problem(r, 500, "internal-error")
    lines = [json.loads(line) for line in json_log.getvalue().splitlines()]
    ours = [line for line in lines if line.get("client_request_id") == "trace-me-1"]
    assert len({line["request_id"] for line in ours}) == 1  # one request, the broker's id
    assert [(line["logger"], line["message"]) for line in ours[:2]] == [
        ("broker.api.routes.example", "handling it"),
        ("broker.api.routes.example", "it failed")]
    assert "ValueError" in ours[1]["exc_info"]
    assert any(line["logger"] == "broker.api" and "RuntimeError" in line["message"]
               for line in ours)
    assert {"time", "level", "logger", "message"} <= set(ours[0])
    text = json_log.getvalue()
    assert "4242.42" not in text
    assert "Secret Firm" not in text
    assert "9191.91" not in text
    assert REQUEST_ID.get() is None  # nothing leaks out of the request


def test_metrics_count_queries_withheld_cells_denials_and_audit_appends(world: World) -> None:
    before = samples(world.client)
    assert value(before, "broker_queries_total", kind="aggregate", outcome="allowed") is None
    answer = world.query(group_by=["town"])
    cells = released(answer)
    withheld = answer.json()["suppressed"]
    assert withheld  # town B has 2 firms, under k = 3
    denied = world.query(purpose="tax-audit")
    assert denied.status_code == 403
    assert "purpose-not-in-contract" in denied.json()["reasons"]
    invalid = world.query(group_by="town")  # not a list
    assert_problem(invalid, 422, "invalid-input")
    explained = world.client.post("/v1/policy/explain", headers=auth(world.econ),
                                  json={"contract_id": world.contract["id"],
                                        "purpose": "energy-planning",
                                        "measures": [{"fn": "count"}], "group_by": ["town"]})
    assert explained.status_code == 200, explained.text

    found = samples(world.client)
    assert value(found, "broker_queries_total", kind="aggregate", outcome="allowed") == 1
    assert value(found, "broker_queries_total", kind="aggregate", outcome="denied") == 1
    assert value(found, "broker_queries_total", kind="aggregate", outcome="invalid") == 1
    assert value(found, "broker_queries_total", kind="explain", outcome="allowed") == 1
    for reason, count in withheld.items():
        assert value(found, "broker_cells_withheld_total", reason=reason) == count
    assert sum(1 for _, _, reason in cells if reason) == sum(withheld.values())
    assert value(found, "broker_denials_total", reason="purpose-not-in-contract") == 1
    assert value(found, "broker_denials_total", reason="invalid-input") is None  # not a denial
    # Every entry of the log was appended by this app, and each was timed once.
    size = world.client.get("/v1/audit/verify", headers=auth(world.auditor)).json()["size"]
    assert value(found, "broker_audit_append_seconds_count") == size
    assert value(found, "broker_audit_append_seconds_bucket", le="+Inf") == size
    assert (value(found, "broker_audit_append_seconds_sum") or 0) > 0


def _lag(client: TestClient, want: float) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Scrape until the checkpointer's view (it looks every half second) shows ``want``."""
    deadline = time.monotonic() + 10
    while True:
        found = samples(client)
        if value(found, "broker_audit_checkpoint_lag_entries") == want:
            return found
        assert time.monotonic() < deadline, value(found, "broker_audit_checkpoint_lag_entries")
        time.sleep(0.1)


def test_checkpoint_lag_counts_uncovered_entries_until_a_checkpoint_is_signed(
        world: World) -> None:
    size = world.client.get("/v1/audit/verify", headers=auth(world.auditor)).json()["size"]
    # No checkpoint yet (one a minute, or per 1000 entries); the verification's own access
    # entry came after the tree it verified.
    found = _lag(world.client, size + 1)
    assert value(found, "broker_audit_checkpoint_age_seconds") is None
    # A proof needs a checkpoint covering its entry: one is signed now.
    r = world.client.get(f"/v1/audit/entries/{size}/proof", headers=auth(world.auditor))
    assert r.status_code == 200, r.text
    found = _lag(world.client, 1)  # the proof's own access entry came after it
    age = value(found, "broker_audit_checkpoint_age_seconds")
    assert age is not None
    assert 0 <= age < 60
    world.query(group_by=["town"])
    _lag(world.client, 2)  # nor is the release entry


@pytest.fixture
def limited(tmp_path: Path) -> Iterator[TestClient]:
    """A broker that lets each principal make three requests a minute."""
    settings = Settings(data_dir=tmp_path / "var", jwt_secret=SecretStr(SECRET),
                        rate_limit="3/minute")
    with TestClient(create_app(settings)) as c:
        yield c


def test_limit_refusals_are_counted_as_denials_once_each(limited: TestClient,
                                                         mint: Mint) -> None:
    admin = mint("broker-ops", "admin")
    codes = [limited.get("/v1/orgs", headers=auth(admin)).status_code for _ in range(6)]
    assert codes == [200] * 3 + [429] * 3
    found = samples(limited)
    assert value(found, "broker_denials_total", reason="rate-limited") == 3
    assert value(found, "broker_requests_limited_total", reason="rate-limited") == 3


def test_reason_labels_are_slugs_and_bounded() -> None:
    metrics = BrokerMetrics()
    assert metrics.reason_label("dominance") == "dominance"
    assert metrics.reason_label("Field name=secret value") == "other"
    assert metrics.reason_label("x" * 65) == "other"
    for i in range(MAX_REASONS):
        metrics.reason_label(f"reason-{i}")
    assert metrics.reason_label("one-too-many") == "other"
    assert metrics.reason_label("dominance") == "dominance"  # seen before the cap
