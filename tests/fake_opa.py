"""TEST FIXTURE, not a product: a loopback HTTP server speaking the part of OPA's REST API the
``opa`` adapter uses, answering with the real OPA Go engine.

No ``opa`` executable can be installed on the machines this suite runs on, so the REST adapter
is tested against this server instead: real HTTP on 127.0.0.1, real JSON bodies, decisions by
OPA's own Go ``rego`` package (opa-golib-python-bindings). It implements

- ``GET /health``: 200 ``{}``
- ``GET /v1/policies``: the uploaded module ids
- ``PUT /v1/policies/{id}``: upload a module (400 with OPA's error shape when it does not compile)
- ``PUT /v1/data/{path}``: replace a data document
- ``POST /v1/data/{path}``: evaluate ``data.<path>`` with ``{"input": ...}``; ``{"result": v}``,
  or ``{}`` when undefined, as OPA answers

and three faults a test can switch on: a delay before every answer, a status code returned
instead of any answer, and a forced revision document (a server running other policies).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opa_bindings import OpaEngine, OpaError, OpaUndefinedError


class FakeOpa:
    """State of the fake server: modules, data, the engine built from them, and faults."""

    def __init__(self) -> None:
        self.modules: dict[str, str] = {}
        self.data: dict[str, Any] = {}
        self.delay = 0.0
        self.fail_status: int | None = None
        self.requests = 0
        self._lock = threading.Lock()
        self._engine: Any = OpaEngine()

    def put_policy(self, policy_id: str, text: str) -> None:
        """Compile with the new module, and keep it only if everything still compiles."""
        with self._lock:
            modules = {**self.modules, policy_id: text}
            self._engine = self._build(modules, self.data)
            self.modules = modules

    def put_data(self, path: str, value: Any) -> None:
        """Replace the document at ``path`` (slash separated; empty for the root)."""
        with self._lock:
            data = json.loads(json.dumps(self.data))
            parts = [p for p in path.split("/") if p]
            if not parts:
                data = value
            else:
                node = data
                for part in parts[:-1]:
                    node = node.setdefault(part, {})
                node[parts[-1]] = value
            self._engine = self._build(self.modules, data)
            self.data = data

    def evaluate(self, path: str, input: Any) -> dict[str, Any]:
        """OPA's answer to ``POST /v1/data/{path}``."""
        with self._lock:
            engine = self._engine
        try:
            return {"result": engine.eval_document(path.strip("/").replace("/", "."), input)}
        except OpaUndefinedError:
            return {}

    @staticmethod
    def _build(modules: dict[str, str], data: dict[str, Any]) -> Any:
        engine = OpaEngine()
        for name, text in modules.items():
            engine.add_policy(name, text)
        engine.add_data(data)
        return engine


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the suite's output is for the suite."""

    def _reply(self, status: int, body: Any | None) -> None:
        payload = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        if body is not None:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _fault(self) -> bool:
        opa = self.server.opa
        opa.requests += 1
        if opa.delay:
            time.sleep(opa.delay)
        if opa.fail_status is not None:
            self._reply(opa.fail_status, {"code": "internal_error", "message": "injected"})
            return True
        return False

    def do_GET(self) -> None:
        if self._fault():
            return
        if self.path.startswith("/health"):
            self._reply(200, {})
        elif self.path.rstrip("/") == "/v1/policies":
            self._reply(200, {"result": [{"id": i} for i in sorted(self.server.opa.modules)]})
        else:
            self._reply(404, {"code": "resource_not_found", "message": self.path})

    def do_PUT(self) -> None:
        if self._fault():
            return
        body = self._body()
        try:
            if self.path.startswith("/v1/policies/"):
                self.server.opa.put_policy(self.path.removeprefix("/v1/policies/"),
                                           body.decode())
                self._reply(200, {})
            elif self.path.startswith("/v1/data"):
                self.server.opa.put_data(self.path.removeprefix("/v1/data"), json.loads(body))
                self._reply(204, None)
            else:
                self._reply(404, {"code": "resource_not_found", "message": self.path})
        except OpaError as exc:
            self._reply(400, {"code": "invalid_parameter", "message": str(exc), "errors": []})

    def do_POST(self) -> None:
        if self._fault():
            return
        if not self.path.startswith("/v1/data/"):
            self._reply(404, {"code": "resource_not_found", "message": self.path})
            return
        try:
            document = json.loads(self._body() or b"{}")
            answer = self.server.opa.evaluate(self.path.removeprefix("/v1/data/").split("?")[0],
                                              document.get("input"))
        except (OpaError, ValueError) as exc:
            self._reply(500, {"code": "internal_error", "message": str(exc)})
            return
        self._reply(200, answer)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, opa: FakeOpa) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.opa = opa


@contextmanager
def running_fake_opa() -> Iterator[tuple[str, FakeOpa]]:
    """Serve a fresh FakeOpa on an ephemeral loopback port; yields its URL and state."""
    opa = FakeOpa()
    server = _Server(opa)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", opa
    finally:
        server.shutdown()
        server.server_close()
