"""Logs, traces and metrics of real ``broker serve`` processes on loopback.

The traces go to a real OTLP/HTTP receiver in this process (``POST /v1/traces``, decoded with
opentelemetry-proto); two servers share one ``PROMETHEUS_MULTIPROC_DIR`` as two workers do.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.parser import text_string_to_metric_families

from broker.api.auth import mint_token
from broker.settings import Settings
from tests.conftest import SECRET, csv_bytes
from tests.server import broker_server

pytestmark = pytest.mark.e2e

#: Values that exist only in the uploaded rows and the consumer's filter: none may reach a
#: log line or a span.
FIRMS = [f"ZQ7SECRET{i:02d}" for i in range(1, 9)]
TOWNS = ["Qorvantown", "Pexalburg"]
NAMES = [f"Firm Xyzzy{i}" for i in range(1, 9)]
KWH = [123457.891, 223457.891, 323457.891, 423457.891, 523457.891, 623457.891, 7234.5678,
       8234.5678]
FILTER_VALUE = "Qsecretfilterq"
BAD_CELL = "Notanumber77q"
ROWS = pd.DataFrame({"uscc": FIRMS, "town": [TOWNS[0]] * 6 + [TOWNS[1]] * 2,
                     "name": NAMES, "kwh": KWH})
META: dict[str, Any] = {
    "name": "energy",
    "entity_field": "uscc",
    "fields": [
        {"name": "uscc", "type": "string", "role": "entity", "sensitivity": "L2"},
        {"name": "town", "type": "string", "role": "dimension"},
        {"name": "name", "type": "string", "role": "identifier", "sensitivity": "L2"},
        {"name": "kwh", "type": "number", "role": "measure", "sensitivity": "L2"},
    ],
}


class _Receiver(BaseHTTPRequestHandler):
    """An OTLP/HTTP traces endpoint: decodes each export and keeps its spans."""

    spans: list[Span]
    lock: threading.Lock

    def do_POST(self) -> None:
        """Accept ``/v1/traces`` in protobuf; anything else is a 404."""
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        if self.path != "/v1/traces":
            self.send_response(404)
            self.end_headers()
            return
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        with self.lock:
            for resource in request.resource_spans:
                for scope in resource.scope_spans:
                    self.spans.extend(scope.spans)
        answer = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[Span], threading.Lock]]:
    """A loopback OTLP/HTTP receiver: its base URL, the spans it got, their lock."""
    spans: list[Span] = []
    lock = threading.Lock()
    handler = type("Receiver", (_Receiver,), {"spans": spans, "lock": lock})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", spans, lock
    finally:
        server.shutdown()
        server.server_close()


def _mint(org: str, role: str) -> str:
    settings = Settings()
    return mint_token(key=SECRET, issuer=settings.jwt_issuer, audience=settings.jwt_audience,
                      sub=f"user@{org}", org=org, roles=[role])


def _auth(token: str, request_id: str | None = None) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {token}"}
    if request_id:
        headers["X-Request-ID"] = request_id
    return headers


def _text(value: AnyValue) -> str:
    return str(getattr(value, value.WhichOneof("value") or "string_value"))


def _run_the_story(base: str) -> dict[str, Any]:
    """Orgs, an upload, a contract, queries (one with a filter), a bad upload and an audit
    read with a filter in the query string; what the checks need."""
    admin, grid = _mint("broker-ops", "admin"), _mint("grid", "provider")
    econ, auditor = _mint("econ", "consumer"), _mint("audit-office", "auditor")
    with httpx.Client(base_url=base, timeout=60) as client:
        for org, kind in [("grid", "enterprise"), ("econ", "department"),
                          ("audit-office", "auditor")]:
            r = client.post("/v1/orgs", headers=_auth(admin),
                            json={"id": org, "name": org.title(), "kind": kind})
            assert r.status_code == 201, r.text
        r = client.post("/v1/datasets", headers=_auth(grid),
                        files={"file": ("data.csv", csv_bytes(ROWS), "text/csv")},
                        data={"meta": json.dumps(META)})
        assert r.status_code == 201, r.text
        dataset = r.json()["id"]
        bad = ROWS.astype({"kwh": object})
        bad.loc[3, "kwh"] = BAD_CELL
        r = client.post("/v1/datasets", headers=_auth(grid),
                        files={"file": ("bad.csv", csv_bytes(bad), "text/csv")},
                        data={"meta": json.dumps({**META, "name": "energy-bad"})})
        assert r.status_code == 422, r.text
        r = client.post("/v1/contracts", headers=_auth(grid), json={
            "dataset_id": dataset, "consumer_org": "econ", "purposes": ["energy-planning"],
            "fields": {"town": "clear", "kwh": "aggregate"}, "k_min": 3,
            "valid_from": "2020-01-01T00:00:00Z", "valid_until": "2099-01-01T00:00:00Z",
            "max_queries_per_day": 100})
        assert r.status_code == 201, r.text
        contract = r.json()["id"]
        r = client.post(f"/v1/contracts/{contract}/accept", headers=_auth(econ))
        assert r.status_code == 200, r.text
        query = {"contract_id": contract, "purpose": "energy-planning", "group_by": ["town"],
                 "measures": [{"fn": "count"}, {"fn": "sum", "field": "kwh"}],
                 "filters": [{"field": "town", "op": "in", "value": [*TOWNS, FILTER_VALUE]}]}
        r = client.post("/v1/queries/aggregate", headers=_auth(econ, "e2e-query-1"),
                        json=query)
        assert r.status_code == 200, r.text
        assert r.headers["x-request-id"] != "e2e-query-1"  # the broker's own id
        answer = r.json()
        r = client.post("/v1/queries/aggregate", headers=_auth(econ),
                        json={**query, "purpose": "tax-audit"})
        assert r.status_code == 403, r.text
        r = client.get("/v1/audit/entries", headers=_auth(auditor),
                       params={"actor": FILTER_VALUE})
        assert r.status_code in (200, 422), r.text
    return {"dataset": dataset, "answer": answer, "tokens": [admin, grid, econ, auditor]}


def test_logs_are_json_lines_with_request_ids_and_traces_arrive_without_values(
        tmp_path: Path, receiver: tuple[str, list[Span], threading.Lock]) -> None:
    endpoint, spans, lock = receiver
    env = {"BROKER_DATA_DIR": str(tmp_path / "var"), "BROKER_JWT_SECRET": SECRET,
           "BROKER_OTLP_ENDPOINT": endpoint, "BROKER_LOG_LEVEL": "debug",
           "OTEL_BSP_SCHEDULE_DELAY": "100"}
    with broker_server(tmp_path, env, unset=("BROKER_LOG_FORMAT",)) as base:
        story = _run_the_story(base)
        # the batch processor sends within a tenth of a second; wait for the engine's span
        for _ in range(100):
            with lock:
                if any(s.name == "broker.engine.run" for s in spans):
                    break
            threading.Event().wait(0.1)
    # the server has stopped: its log is complete, its spans flushed at shutdown
    log = (tmp_path / "server.log").read_text()
    lines = [json.loads(line) for line in log.splitlines() if line.strip()]
    assert lines
    assert all({"time", "level", "logger", "message", "request_id"} <= set(x) for x in lines)
    query_lines = [x for x in lines if x.get("client_request_id") == "e2e-query-1"]
    assert [(x["logger"], x["method"], x["path"], x["status"]) for x in query_lines
            if x["logger"] == "uvicorn.access"] == [
        ("uvicorn.access", "POST", "/v1/queries/aggregate", 200)]
    audit_read = [x for x in lines if x.get("path") == "/v1/audit/entries"]
    assert len(audit_read) == 1
    secrets = [*FIRMS, *TOWNS, *NAMES, *(str(v) for v in KWH), FILTER_VALUE, BAD_CELL,
               *story["tokens"]]
    assert [s for s in secrets if s in log] == []
    assert SECRET not in log

    with lock:
        got = list(spans)
    engine = [s for s in got if s.name == "broker.engine.run"]
    assert len(engine) == 1
    run = engine[0]
    attributes = {a.key: _text(a.value) for a in run.attributes}
    assert attributes["broker.dataset.id"] == story["dataset"]
    assert attributes["broker.engine"] == "DuckDBEngine"
    assert int(attributes["broker.result.rows"]) >= 1
    trace = {s.span_id: s for s in got if s.trace_id == run.trace_id}
    chain = [run]
    while chain[-1].parent_span_id:
        chain.append(trace[chain[-1].parent_span_id])  # every ancestor arrived
    root = chain[-1]
    assert root.kind == Span.SpanKind.SPAN_KIND_SERVER
    assert root.name == "POST /v1/queries/aggregate"
    assert len(chain) >= 2
    statements = [s for s in trace.values() if s.kind == Span.SpanKind.SPAN_KIND_CLIENT
                  and any(a.key == "db.system" or a.key == "db.system.name"
                          for a in s.attributes)]
    assert statements  # the store's statements, in the same trace
    assert all(s.parent_span_id in trace for s in statements)
    assert not any(s.name in ("GET /healthz", "GET /readyz") for s in got)
    every_value = " ".join(f"{s.name} " + " ".join(f"{a.key}={_text(a.value)}"
                                                   for a in s.attributes) for s in got)
    assert [s for s in secrets if s in every_value] == []


def _scrape(base: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = httpx.get(f"{base}/metrics", timeout=10).text
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_two_processes_on_one_multiprocess_directory_report_the_sum(tmp_path: Path) -> None:
    prom = tmp_path / "prom"
    prom.mkdir()
    env = {"BROKER_DATA_DIR": str(tmp_path / "var"), "BROKER_JWT_SECRET": SECRET,
           "PROMETHEUS_MULTIPROC_DIR": str(prom)}
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    admin = _mint("broker-ops", "admin")
    with broker_server(tmp_path / "a", env) as first, broker_server(tmp_path / "b", env) as second:
        for base, n, org in ((first, 3, "grid"), (second, 2, "econ")):
            for _ in range(n):
                assert httpx.get(f"{base}/v1/datasets").status_code == 401
            r = httpx.post(f"{base}/v1/orgs", headers=_auth(admin),
                           json={"id": org, "name": org.title(), "kind": "department"})
            assert r.status_code == 201, r.text
            r = httpx.post(f"{base}/v1/orgs", headers=_auth(_mint("nobody", "consumer")),
                           json={"id": f"{org}-x", "name": "X", "kind": "department"})
            assert r.status_code == 403, r.text
        seen = [_scrape(first), _scrape(second)]
    assert len(list(prom.glob("*.db"))) >= 2  # each process wrote its own files
    unauthenticated = ("broker_requests_total", frozenset(
        {("method", "GET"), ("route", "/v1/datasets"), ("status", "401")}))
    for found in seen:
        assert found[unauthenticated] == 5
        denials = {dict(labels)["reason"]: v for (name, labels), v in found.items()
                   if name == "broker_denials_total"}
        assert denials  # the same refusal in each process, counted twice
        assert set(denials.values()) == {2}, denials
        assert found[("broker_audit_append_seconds_count", frozenset())] >= 4
    assert seen[0][("broker_audit_append_seconds_count", frozenset())] == seen[1][
        ("broker_audit_append_seconds_count", frozenset())]


def test_every_worker_of_broker_serve_workers_reports_the_sum_of_all(
        tmp_path: Path, postgres_url: str) -> None:
    """``broker serve --workers 2`` on PostgreSQL: requests spread over fresh connections land
    on both workers; every scrape, whichever worker answers it, counts all of them, and
    carries the checkpoint lag."""
    prom = tmp_path / "prom"
    prom.mkdir()
    env = {"BROKER_DATA_DIR": str(tmp_path / "var"), "BROKER_JWT_SECRET": SECRET,
           "BROKER_DATABASE_URL": postgres_url, "PROMETHEUS_MULTIPROC_DIR": str(prom)}
    batch = 40
    read = MmapedDict.read_all_values_from_file

    def per_worker() -> dict[str, float]:
        return {path.stem: sum(v for k, v, _, _ in read(str(path))  # type: ignore[no-untyped-call]
                               if '"/v1/datasets"' in k and '"401"' in k)
                for path in prom.glob("counter_*.db")}

    sent = 0
    with broker_server(tmp_path, env, args=["--workers", "2"]) as base:

        def unauthenticated() -> None:
            for _ in range(batch // 8):
                with httpx.Client(base_url=base, timeout=30) as fresh:
                    assert fresh.get("/v1/datasets").status_code == 401

        # The kernel hands connections to whichever worker accepts first: on a busy machine
        # one worker may take a whole batch, so send batches until both have served some.
        for _ in range(10):
            threads = [threading.Thread(target=unauthenticated) for _ in range(8)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            sent += batch
            if sum(1 for count in per_worker().values() if count) == 2:
                break
        scrapes = []
        for _ in range(10):
            for _ in range(50):  # the checkpointer's first look may take half a second
                found = _scrape(base)
                if ("broker_audit_checkpoint_lag_entries", frozenset()) in found:
                    break
                threading.Event().wait(0.1)
            scrapes.append(found)
    per_worker_counts = per_worker()
    served = [count for count in per_worker_counts.values() if count]
    assert len(served) == 2, per_worker_counts  # both workers served some of the requests
    assert sum(served) == sent
    key = ("broker_requests_total", frozenset(
        {("method", "GET"), ("route", "/v1/datasets"), ("status", "401")}))
    assert [found[key] for found in scrapes] == [sent] * len(scrapes)
    assert all(("broker_audit_checkpoint_lag_entries", frozenset()) in found
               for found in scrapes)
