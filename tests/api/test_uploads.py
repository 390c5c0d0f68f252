"""Streaming uploads: limits hold while the body arrives, parts are exact, nothing is left over.

Some tests drive the ASGI app directly with a ``receive`` that counts what the app asked for,
because a TestClient hands over the whole body whatever the app does: only that way can a test
see that the broker stopped reading (or never started).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from fastapi.testclient import TestClient
from starlette.types import Message

from broker.app import Container
from broker.domain.datasets import DatasetSchema
from broker.services.uploads import FRAMING_LIMIT, META_LIMIT, MULTIPART_OVERHEAD
from broker.settings import Settings
from connectors.delimited import read_csv
from tests.conftest import ENERGY, ENERGY_META, Mint, assert_problem, auth, csv_bytes

BOUNDARY = "test-boundary-7d3f"
CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}"
META = json.dumps(ENERGY_META).encode()


def part(name: str, content: bytes, filename: str | None = None) -> bytes:
    """One multipart part with its opening boundary."""
    disposition = f'form-data; name="{name}"' + (
        f'; filename="{filename}"' if filename is not None else "")
    return (f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n\r\n".encode()
            + content + b"\r\n")


def multipart(*parts: bytes) -> bytes:
    """A whole multipart/form-data body."""
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


@dataclass
class Providers:
    """A broker with the grid and water companies registered, and tokens."""

    client: TestClient
    settings: Settings
    grid: str
    water: str
    econ: str

    def post(self, body: bytes, token: str | None = None, path: str = "/v1/datasets",
             **headers: str) -> Any:
        """POST a raw body (multipart unless a content type is given)."""
        return self.client.post(path, content=body, headers={
            **auth(token or self.grid), "Content-Type": CONTENT_TYPE, **headers})

    def upload(self, frame: pd.DataFrame = ENERGY, name: str = "energy") -> dict[str, Any]:
        """Register ``frame`` as grid; the answer."""
        r = self.post(multipart(part("meta", json.dumps({**ENERGY_META, "name": name}).encode()),
                                part("file", csv_bytes(frame), "energy.csv")))
        assert r.status_code == 201, r.text
        answer: dict[str, Any] = r.json()
        return answer

    def scratch_files(self) -> list[Path]:
        """Whatever is in the uploads directory."""
        root = self.settings.uploads_dir
        return sorted(root.iterdir()) if root.exists() else []

    def dataset_rows(self) -> int:
        """Rows of the datasets table."""
        with sqlite3.connect(self.settings.data_dir / "broker.db") as conn:
            return int(conn.execute("SELECT count(*) FROM datasets").fetchone()[0])

    def audited_actions(self) -> list[str]:
        """The action of every audit entry, in order."""
        with sqlite3.connect(self.settings.data_dir / "broker.db") as conn:
            bodies = [r[0] for r in conn.execute("SELECT body FROM audit_entries ORDER BY seq")]
        return [json.loads(b)["action"] for b in bodies]

    def assert_nothing_kept(self, datasets: int = 0) -> None:
        """No scratch file, ``datasets`` rows, and no registration audited beyond those."""
        assert self.scratch_files() == []
        assert self.dataset_rows() == datasets
        assert self.audited_actions().count("dataset.register") == datasets


@pytest.fixture
def providers(client: TestClient, settings: Settings, mint: Mint) -> Providers:
    """The grid and water companies, registered; a consumer token for econ."""
    admin = mint("broker-ops", "admin")
    for org in ("grid", "water", "econ"):
        r = client.post("/v1/orgs", headers=auth(admin), json={
            "id": org, "name": org.title(), "kind": "department" if org == "econ" else
            "enterprise"})
        assert r.status_code == 201, r.text
    return Providers(client, settings, mint("grid", "provider"), mint("water", "provider"),
                     mint("econ", "consumer"))


@dataclass
class Exchange:
    """What an app did with a request driven at the ASGI level."""

    status: int = 0
    body: bytes = b""
    reads: int = 0
    messages: list[Message] = field(default_factory=list)

    def json(self) -> Any:
        """The answer's body as JSON."""
        return json.loads(self.body)


def drive(
    client: TestClient,
    path: str,
    token: str,
    chunks: Sequence[bytes],
    *,
    headers: Sequence[tuple[bytes, bytes]] = (),
    disconnect: bool = False,
) -> Exchange:
    """POST ``chunks`` to the running app, one ``receive`` each, counting the reads; with
    ``disconnect`` the client goes away after the last chunk."""
    exchange = Exchange()
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
        "root_path": "", "client": ("127.0.0.1", 50000), "server": ("testserver", 80),
        "headers": [(b"host", b"testserver"), (b"authorization", f"Bearer {token}".encode()),
                    (b"content-type", CONTENT_TYPE.encode()), *headers],
    }
    pending: Iterator[bytes] = iter(chunks)

    async def receive() -> Message:
        exchange.reads += 1
        chunk = next(pending, None)
        if chunk is None:
            return {"type": "http.disconnect"}
        last = exchange.reads == len(chunks)
        return {"type": "http.request", "body": chunk, "more_body": disconnect or not last}

    async def send(message: Message) -> None:
        exchange.messages.append(message)
        if message["type"] == "http.response.start":
            exchange.status = message["status"]
        elif message["type"] == "http.response.body":
            exchange.body += message.get("body", b"")

    async def run() -> None:
        await client.app(scope, receive, send)

    assert client.portal is not None
    client.portal.call(run)
    return exchange


def blocks(body: bytes, size: int = 64 * 1024) -> list[bytes]:
    """``body`` cut into chunks as a server would receive them."""
    return [body[i:i + size] for i in range(0, len(body), size)]


def big_csv(size: int) -> bytes:
    """A CSV of the energy columns, about ``size`` bytes long."""
    row = b"E1,A,Firm 1,1.0\n"
    return b"uscc,town,name,kwh\n" + row * (size // len(row) + 1)


# ----------------------------------------------------------------------------- limits


def test_a_file_over_the_limit_is_cut_off_with_413_and_nothing_is_kept(
    providers: Providers, settings: Settings
) -> None:
    body = multipart(part("meta", META), part("file", big_csv(2 * settings.max_upload_bytes),
                                              "energy.csv"))
    chunks = blocks(body)
    answer = drive(providers.client, "/v1/datasets", providers.grid, chunks)
    assert answer.status == 413
    assert answer.json()["type"] == "payload-too-large"
    # Refused at the first block over the limit: about half of the body was never read.
    assert answer.reads <= settings.max_upload_bytes // (64 * 1024) + 3 < len(chunks)
    providers.assert_nothing_kept()


def test_a_lying_content_length_does_not_get_past_the_count(
    providers: Providers, settings: Settings
) -> None:
    body = multipart(part("meta", META), part("file", big_csv(settings.max_upload_bytes + 1),
                                              "energy.csv"))
    r = providers.post(body, **{"Content-Length": "1000"})
    assert_problem(r, 413, "payload-too-large")
    providers.assert_nothing_kept()


def test_a_content_length_over_the_limit_is_refused_before_the_body_is_read(
    providers: Providers, settings: Settings
) -> None:
    claimed = settings.max_upload_bytes + MULTIPART_OVERHEAD + 1
    answer = drive(providers.client, "/v1/datasets", providers.grid, [b"x" * 1000],
                   headers=[(b"content-length", str(claimed).encode())])
    assert (answer.status, answer.reads) == (413, 0)
    assert answer.json()["type"] == "payload-too-large"
    providers.assert_nothing_kept()


def test_a_version_upload_gets_no_room_for_a_meta_part(
    providers: Providers, settings: Settings
) -> None:
    did = providers.upload()["id"]
    claimed = settings.max_upload_bytes + FRAMING_LIMIT + 1  # the middleware would let it in
    answer = drive(providers.client, f"/v1/datasets/{did}/versions", providers.grid,
                   [b"x" * 1000], headers=[(b"content-length", str(claimed).encode())])
    assert (answer.status, answer.reads) == (413, 0)
    assert providers.scratch_files() == []


def test_a_meta_part_over_its_limit_is_413(providers: Providers) -> None:
    meta = json.dumps({**ENERGY_META, "padding": " " * META_LIMIT}).encode()
    r = providers.post(multipart(part("meta", meta), part("file", csv_bytes(ENERGY), "e.csv")))
    assert "'meta' part" in assert_problem(r, 413, "payload-too-large")["detail"]
    providers.assert_nothing_kept()


def test_the_body_is_not_read_before_the_caller_is_authorised(providers: Providers) -> None:
    body = multipart(part("meta", META), part("file", csv_bytes(ENERGY), "energy.csv"))
    answer = drive(providers.client, "/v1/datasets", providers.econ, blocks(body))
    assert (answer.status, answer.reads) == (403, 0)
    assert answer.json()["reasons"] == ["role-not-permitted"]
    did = providers.upload()["id"]
    # Someone else's dataset: refused as if absent (404), still before any byte is read.
    answer = drive(providers.client, f"/v1/datasets/{did}/versions", providers.econ,
                   blocks(body))
    assert (answer.status, answer.reads) == (404, 0)
    assert providers.scratch_files() == []


def test_a_bad_meta_part_sent_first_is_refused_before_the_file_is_read(
    providers: Providers, settings: Settings
) -> None:
    meta = json.dumps({**ENERGY_META, "owner_org": "econ"}).encode()
    body = multipart(part("meta", meta), part("file", big_csv(settings.max_upload_bytes // 2),
                                              "energy.csv"))
    chunks = blocks(body)
    answer = drive(providers.client, "/v1/datasets", providers.grid, chunks)
    assert answer.status == 422
    assert answer.json()["errors"][0]["loc"] == ["owner_org"]
    assert answer.reads == 1 < len(chunks)
    providers.assert_nothing_kept()


def test_a_client_that_goes_away_mid_upload_leaves_no_scratch_file(
    providers: Providers,
) -> None:
    body = multipart(part("meta", META), part("file", big_csv(1_000_000), "energy.csv"))
    chunks = blocks(body)[:5]  # the file part is open and partly on disk
    answer = drive(providers.client, "/v1/datasets", providers.grid, chunks, disconnect=True)
    assert answer.reads == len(chunks) + 1
    providers.assert_nothing_kept()


# ------------------------------------------------------------------------------ parts


def test_an_upload_streams_to_a_dataset_and_leaves_no_scratch_file(
    providers: Providers,
) -> None:
    answer = providers.upload()
    assert (answer["version"], answer["rows"], len(answer["sha256"])) == (1, len(ENERGY), 64)
    assert providers.scratch_files() == []
    assert providers.audited_actions().count("dataset.register") == 1


def test_the_file_may_come_before_the_meta_part(providers: Providers) -> None:
    r = providers.post(multipart(part("file", csv_bytes(ENERGY), "ENERGY.CSV"),
                                 part("meta", META)))
    assert r.status_code == 201, r.text
    assert providers.scratch_files() == []


def test_a_meta_part_sent_as_a_file_is_read_like_a_field(providers: Providers) -> None:
    r = providers.post(multipart(part("meta", META, "meta.json"),  # curl -F meta=@meta.json
                                 part("file", csv_bytes(ENERGY), "energy.csv")))
    assert r.status_code == 201, r.text


def test_two_file_parts_are_422(providers: Providers) -> None:
    r = providers.post(multipart(part("meta", META), part("file", csv_bytes(ENERGY), "a.csv"),
                                 part("file", csv_bytes(ENERGY), "b.csv")))
    assert "two 'file' parts" in assert_problem(r, 422, "invalid-input")["detail"]
    providers.assert_nothing_kept()


def test_two_meta_parts_are_422(providers: Providers) -> None:
    r = providers.post(multipart(part("meta", META), part("meta", META),
                                 part("file", csv_bytes(ENERGY), "a.csv")))
    assert_problem(r, 422, "invalid-input")
    providers.assert_nothing_kept()


@pytest.mark.parametrize("parts", [
    pytest.param((part("file", csv_bytes(ENERGY), "energy.csv"),), id="no-meta"),
    pytest.param((part("meta", META),), id="no-file"),
    pytest.param((), id="no-parts"),
])
def test_a_missing_part_is_422(providers: Providers, parts: tuple[bytes, ...]) -> None:
    r = providers.post(multipart(*parts))
    detail = assert_problem(r, 422, "invalid-input")["detail"]
    assert "one 'file' part and one 'meta' part" in detail
    providers.assert_nothing_kept()


def test_an_unknown_part_is_422_and_its_name_is_not_echoed(providers: Providers) -> None:
    r = providers.post(multipart(part("meta", META), part("owner_org_SECRET", b"econ"),
                                 part("file", csv_bytes(ENERGY), "energy.csv")))
    assert_problem(r, 422, "invalid-input")
    assert "SECRET" not in r.text
    providers.assert_nothing_kept()


def test_a_file_part_without_a_readable_suffix_is_422_naming_the_formats(
    providers: Providers,
) -> None:
    for filename in ("energy.exe", "energy", None):
        r = providers.post(multipart(part("meta", META), part("file", b"x", filename)))
        body = assert_problem(r, 422, "invalid-input")
        assert "csv" in body["formats"]
    providers.assert_nothing_kept()


@pytest.mark.parametrize("content_type", [
    "application/json", "application/x-www-form-urlencoded", "text/csv", "multipart/mixed",
])
def test_another_content_type_is_415(providers: Providers, content_type: str) -> None:
    r = providers.post(b'{"name": "energy"}', **{"Content-Type": content_type})
    assert_problem(r, 415, "unsupported-media-type")
    providers.assert_nothing_kept()


@pytest.mark.parametrize("body", [
    pytest.param(multipart(part("meta", META))[:-10], id="no-closing-boundary"),
    pytest.param(b"this is not multipart at all", id="garbage"),
    pytest.param(part("meta", META) + part("file", csv_bytes(ENERGY), "e.csv"),
                 id="truncated-after-the-file"),
])
def test_a_malformed_or_truncated_body_is_422(providers: Providers, body: bytes) -> None:
    assert_problem(providers.post(body), 422, "invalid-input")
    providers.assert_nothing_kept()


def test_a_multipart_type_without_a_boundary_is_422(providers: Providers) -> None:
    r = providers.post(multipart(part("meta", META)), **{"Content-Type": "multipart/form-data"})
    assert_problem(r, 422, "invalid-input")


# --------------------------------------------------------------------------- versions


def test_a_version_upload_creates_version_2(providers: Providers) -> None:
    first = providers.upload()
    doubled = ENERGY.assign(kwh=ENERGY["kwh"] * 2)
    r = providers.post(multipart(part("file", csv_bytes(doubled), "energy-2.csv")),
                       path=f"/v1/datasets/{first['id']}/versions")
    assert r.status_code == 201, r.text
    second = r.json()
    assert (second["id"], second["version"], second["rows"]) == (first["id"], 2, len(ENERGY))
    assert second["sha256"] != first["sha256"]
    r = providers.client.get(f"/v1/datasets/{first['id']}/versions",
                             headers=auth(providers.grid))
    assert r.status_code == 200, r.text
    assert [(v["version"], v["sha256"]) for v in r.json()] == [
        (1, first["sha256"]), (2, second["sha256"])]
    assert providers.scratch_files() == []


def test_a_version_upload_takes_only_a_file_part(providers: Providers) -> None:
    did = providers.upload()["id"]
    r = providers.post(multipart(part("meta", META), part("file", csv_bytes(ENERGY), "e.csv")),
                       path=f"/v1/datasets/{did}/versions")
    assert "one 'file' part" in assert_problem(r, 422, "invalid-input")["detail"]
    assert providers.scratch_files() == []


def test_only_the_owner_adds_versions(providers: Providers) -> None:
    did = providers.upload()["id"]
    r = providers.post(multipart(part("file", csv_bytes(ENERGY), "e.csv")),
                       token=providers.water, path=f"/v1/datasets/{did}/versions")
    assert r.status_code in (403, 404), r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert providers.scratch_files() == []
    versions = providers.client.get(f"/v1/datasets/{did}/versions",
                                    headers=auth(providers.grid)).json()
    assert [v["version"] for v in versions] == [1]


# ------------------------------------------------------------------------ SQL imports


@dataclass
class FakeSqlReader:
    """Answers every snapshot with the energy table, conformed as a CSV upload would be."""

    directory: Path
    calls: list[tuple[str, str | None, str | None]] = field(default_factory=list)

    def __call__(self, url: str, schema: DatasetSchema, *, table: str | None = None,
                 query: str | None = None) -> pd.DataFrame:
        self.calls.append((url, table, query))
        path = self.directory / f"snapshot-{len(self.calls)}.csv"
        path.write_bytes(csv_bytes(ENERGY if len(self.calls) == 1 else
                                   ENERGY.assign(kwh=ENERGY["kwh"] + 1)))
        return read_csv(path, schema)


@pytest.fixture
def sql_reader(providers: Providers, tmp_path: Path) -> FakeSqlReader:
    """The broker's dataset service with one SQL source, ``grid-db``, read by a fake."""
    reader = FakeSqlReader(tmp_path)
    app: Any = providers.client.app
    container: Container = app.state.container
    app.state.container = replace(container, datasets=replace(
        container.datasets, sql_reader=reader, sql_sources={"grid-db": "sqlite:///grid.db"}))
    return reader


def test_a_dataset_and_a_version_are_imported_from_a_sql_source(
    providers: Providers, sql_reader: FakeSqlReader
) -> None:
    r = providers.client.post("/v1/datasets/import", headers=auth(providers.grid), json={
        **ENERGY_META, "source": {"name": "grid-db", "table": "energy"}})
    assert r.status_code == 201, r.text
    first = r.json()
    assert (first["version"], first["rows"]) == (1, len(ENERGY))
    r = providers.client.post(f"/v1/datasets/{first['id']}/versions/import",
                              headers=auth(providers.grid),
                              json={"source": {"name": "grid-db", "query": "SELECT * FROM e"}})
    assert r.status_code == 201, r.text
    assert r.json()["version"] == 2
    assert sql_reader.calls == [("sqlite:///grid.db", "energy", None),
                                ("sqlite:///grid.db", None, "SELECT * FROM e")]


@pytest.mark.parametrize("source", [
    {"name": "grid-db"},
    {"name": "grid-db", "table": "energy", "query": "SELECT 1"},
    {"name": "grid-db", "table": ""},
    {"name": "grid-db", "table": "energy", "url": "sqlite:///var/broker.db"},
    {"name": "sqlite:///var/broker.db", "table": "energy"},
    {"name": "grid-db", "query": "x" * 70_000},
])
def test_a_sql_source_needs_a_name_and_exactly_one_table_or_query(
    providers: Providers, source: dict[str, str]
) -> None:
    r = providers.client.post("/v1/datasets/import", headers=auth(providers.grid),
                              json={**ENERGY_META, "source": source})
    assert_problem(r, 422, "invalid-input")
    assert providers.dataset_rows() == 0


# ---------------------------------------------------------------------------- OpenAPI


def test_the_openapi_upload_bodies_are_multipart_and_name_every_readable_format(
    providers: Providers,
) -> None:
    spec = providers.client.get("/openapi.json").json()
    app: Any = providers.client.app
    formats = app.state.container.datasets.formats()
    for path, parts in (("/v1/datasets", ["file", "meta"]),
                        ("/v1/datasets/{dataset_id}/versions", ["file"])):
        schema = spec["paths"][path]["post"]["requestBody"]["content"]["multipart/form-data"][
            "schema"]
        assert schema["required"] == parts
        assert all(f"`.{f}`" in schema["properties"]["file"]["description"] for f in formats)
