"""``broker datasets import`` against a real ``broker serve`` process on loopback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from broker.api.auth import mint_token
from broker.cli import app
from broker.cli.serving import free_port
from broker.settings import Settings
from tests.conftest import ENERGY, ENERGY_META, SECRET, auth, csv_bytes
from tests.server import broker_server

#: Small, so that a refused upload is quick; the server reads it from the environment.
UPLOAD_LIMIT = 300_000


@dataclass
class Server:
    """A running broker, its settings and a provider's token."""

    base: str
    settings: Settings
    tmp: Path
    grid: str

    def mint(self, org: str, *roles: str) -> str:
        """A token the server accepts."""
        return mint_token(key=SECRET, issuer=self.settings.jwt_issuer,
                          audience=self.settings.jwt_audience, sub=f"cli@{org}", org=org,
                          roles=roles)

    def write(self, name: str, content: bytes) -> Path:
        """A file in the test's directory."""
        path = self.tmp / name
        path.write_bytes(content)
        return path

    def cli(self, *args: str, token: str | None = None, **env: str
            ) -> subprocess.CompletedProcess[str]:
        """Run ``broker datasets import ARGS`` against this server, as a user would."""
        environ = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
        environ |= {"BROKER_URL": self.base, **env}
        if token is not None:
            environ["BROKER_TOKEN"] = token
        return subprocess.run(
            [sys.executable, "-m", "broker", "datasets", "import", *args],
            env=environ, capture_output=True, text=True, timeout=120, check=False,
        )

    def get(self, path: str) -> Any:
        """GET as grid; the JSON answer."""
        r = httpx.get(f"{self.base}{path}", headers=auth(self.grid), timeout=30)
        assert r.status_code == 200, r.text
        return r.json()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    """``broker serve`` on a free loopback port, with the grid company registered."""
    settings = Settings(data_dir=tmp_path / "var")
    env = {"BROKER_DATA_DIR": str(settings.data_dir), "BROKER_JWT_SECRET": SECRET,
           "BROKER_MAX_UPLOAD_BYTES": str(UPLOAD_LIMIT)}
    with broker_server(tmp_path, env) as base:
        server = Server(base, settings, tmp_path, "")
        server.grid = server.mint("grid", "provider")
        r = httpx.post(f"{base}/v1/orgs", headers=auth(server.mint("broker-ops", "admin")),
                       json={"id": "grid", "name": "Grid", "kind": "enterprise"}, timeout=30)
        assert r.status_code == 201, r.text
        yield server


@pytest.mark.e2e
def test_import_registers_a_dataset_and_then_new_versions(server: Server) -> None:
    data = server.write("energy.csv", csv_bytes(ENERGY))
    meta = server.write("energy.json", json.dumps(ENERGY_META).encode())
    done = server.cli(str(data), "--meta", str(meta), "--token", server.grid, "--quiet")
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    first = json.loads(done.stdout)
    assert (first["version"], first["rows"], len(first["sha256"])) == (1, len(ENERGY), 64)

    # Without --quiet but not on a terminal: no bar, the answer alone on stdout.
    doubled = server.write("energy-2.csv", csv_bytes(ENERGY.assign(kwh=ENERGY["kwh"] * 2)))
    done = server.cli(str(doubled), "--dataset", first["id"], token=server.grid)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    second = json.loads(done.stdout)
    assert (second["id"], second["version"]) == (first["id"], 2)

    # On a terminal (rich told so) the bar goes to stderr and stdout stays pure JSON.
    tripled = server.write("energy-3.csv", csv_bytes(ENERGY.assign(kwh=ENERGY["kwh"] * 3)))
    done = server.cli(str(tripled), "--dataset", first["id"], token=server.grid,
                      TTY_COMPATIBLE="1", COLUMNS="120")
    assert done.returncode == 0, done.stderr
    assert "energy-3.csv" in done.stderr
    assert json.loads(done.stdout)["version"] == 3

    # A SQL snapshot goes to the JSON route; this broker has no source of that name.
    done = server.cli("--source", "no-such-source", "--query", "SELECT 1", "--dataset",
                      first["id"], token=server.grid)
    assert done.returncode == 1
    assert "No SQL source of this name is configured" in done.stderr

    assert [d["id"] for d in server.get("/v1/datasets")] == [first["id"]]
    versions = server.get(f"/v1/datasets/{first['id']}/versions")
    assert [(v["version"], v["sha256"]) for v in versions][:2] == [
        (1, first["sha256"]), (2, second["sha256"])]
    assert len(versions) == 3
    assert list(server.settings.uploads_dir.iterdir()) == []


@pytest.mark.e2e
def test_a_refused_import_exits_non_zero_with_the_problem_on_stderr(server: Server) -> None:
    meta = server.write("energy.json", json.dumps(ENERGY_META).encode())
    bad = ENERGY.astype(object)
    bad.loc[3, "kwh"] = "not-a-number"
    done = server.cli(str(server.write("bad.csv", csv_bytes(bad))), "--meta", str(meta),
                      "--quiet", token=server.grid)
    assert done.returncode == 1
    assert done.stdout == ""
    assert "Dataset rejected (422)" in done.stderr
    assert '"column": "kwh"' in done.stderr
    assert "not-a-number" not in done.stderr

    # Refused by its Content-Length before a byte is read, then one the broker cuts off while
    # streaming it (its length leaves room for a 'meta' part, but the file is over the limit).
    for rows, detail in ((200_000, "The request body is larger than"),
                         (60_000, "The file is larger than 300000 bytes")):
        big = server.write("big.csv", b"uscc,town,name,kwh\n" + b"E1,A,Firm 1,1.0\n" * rows)
        done = server.cli(str(big), "--meta", str(meta), "--quiet", token=server.grid)
        assert done.returncode == 1, done.stderr
        assert "Payload too large (413)" in done.stderr
        assert detail in done.stderr

    done = server.cli("--source", "no-such-source", "--table", "energy", "--meta", str(meta),
                      token=server.grid)
    assert done.returncode == 1
    assert "No SQL source of this name is configured" in done.stderr

    done = server.cli(str(server.write("e.csv", csv_bytes(ENERGY))), "--meta", str(meta),
                      token=server.mint("econ", "consumer"))
    assert done.returncode == 1
    assert "Denied by policy (403)" in done.stderr

    assert server.get("/v1/datasets") == []
    assert list(server.settings.uploads_dir.iterdir()) == []


@pytest.mark.parametrize("args", [
    pytest.param(["--meta", "m.json"], id="neither-file-nor-source"),
    pytest.param(["e.csv", "--source", "db", "--table", "t", "--meta", "m.json"], id="both"),
    pytest.param(["e.csv"], id="neither-meta-nor-dataset"),
    pytest.param(["e.csv", "--meta", "m.json", "--dataset", "0" * 32], id="meta-and-dataset"),
    pytest.param(["e.csv", "--dataset", "../../v1/orgs"], id="dataset-not-an-id"),
    pytest.param(["e.csv", "--meta", "m.json", "--table", "t"], id="table-without-source"),
    pytest.param(["--source", "db", "--meta", "m.json"], id="source-without-table-or-query"),
])
def test_wrong_usage_exits_2_before_any_request(
    args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "e.csv").write_bytes(csv_bytes(ENERGY))
    (tmp_path / "m.json").write_text(json.dumps(ENERGY_META))
    # Nothing listens on this port: a request would exit 3, not 2.
    env = {"BROKER_TOKEN": "t", "BROKER_URL": f"http://127.0.0.1:{free_port()}"}
    result = CliRunner().invoke(app, ["datasets", "import", *args], env=env)
    assert result.exit_code == 2, result.output


def test_no_token_is_a_usage_error_and_no_broker_is_exit_3(tmp_path: Path) -> None:
    data = tmp_path / "e.csv"
    data.write_bytes(csv_bytes(ENERGY))
    meta = tmp_path / "m.json"
    meta.write_text(json.dumps(ENERGY_META))
    url = f"http://127.0.0.1:{free_port()}"
    runner = CliRunner()
    args = ["datasets", "import", str(data), "--meta", str(meta), "--url", url]
    assert runner.invoke(app, args, env={"BROKER_TOKEN": ""}).exit_code == 2
    result = runner.invoke(app, [*args, "--token", "t"])
    assert result.exit_code == 3
    assert "no answer from the broker" in result.output
