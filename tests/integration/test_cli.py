"""The ``broker`` command: tokens, audit export and offline verification, policy test/bundle."""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import tarfile
from pathlib import Path

import jwt
import pytest
from typer.testing import CliRunner

from broker.cli import EXIT_CHAIN_BROKEN, app
from broker.settings import Settings
from policies import POLICY_DIR
from tests.conftest import World

runner = CliRunner()


def test_token_prints_the_token_alone_and_it_is_valid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BROKER_DATA_DIR", str(tmp_path / "var"))
    monkeypatch.delenv("BROKER_JWT_SECRET", raising=False)
    result = runner.invoke(app, ["token", "--sub", "a@econ", "--org", "econ",
                                 "--role", "consumer", "--role", "auditor", "--ttl", "60"])
    assert result.exit_code == 0, result.output
    token = result.stdout.strip()
    assert "\n" not in token
    secret = (tmp_path / "var" / "keys" / "jwt-secret").read_text().strip()
    claims = jwt.decode(token, secret, algorithms=["HS256"], audience="broker")
    assert claims["roles"] == ["auditor", "consumer"]
    assert claims["exp"] - claims["iat"] == 60
    bad = runner.invoke(app, ["token", "--sub", "a", "--org", "econ", "--role", "root"])
    assert bad.exit_code != 0


def test_export_then_verify_offline_and_a_tampered_line_is_named(
    world: World, settings: Settings, tmp_path: Path
) -> None:
    world.query(group_by=["town"])
    url = settings.db_url
    export = tmp_path / "audit.jsonl"
    assert runner.invoke(app, ["audit", "export", "--db", url, "--output", str(export)]
                         ).exit_code == 0
    lines = export.read_bytes().splitlines()
    assert len(lines) == 9
    ok = runner.invoke(app, ["audit", "verify", "--export", str(export)])
    assert ok.exit_code == 0
    assert "valid: 9 entries" in ok.stdout
    entry = json.loads(lines[6])
    lines[6] = lines[6].replace(entry["request_id"].encode(), b"forged-request-id")
    export.write_bytes(b"\n".join(lines) + b"\n")
    broken = runner.invoke(app, ["audit", "verify", "--export", str(export)])
    assert broken.exit_code == EXIT_CHAIN_BROKEN
    assert "seq 8" in broken.stdout  # the next entry no longer links to the changed one


def test_verify_a_database_names_the_changed_entry(world: World, settings: Settings) -> None:
    assert runner.invoke(app, ["audit", "verify", "--db", settings.db_url]).exit_code == 0
    with sqlite3.connect(settings.data_dir / "broker.db") as conn:
        body = conn.execute("SELECT body FROM audit_entries WHERE seq = 2").fetchone()[0]
        conn.execute("UPDATE audit_entries SET body = ? WHERE seq = 2",
                     (body.replace('"v":1', '"v":2'),))
    result = runner.invoke(app, ["audit", "verify", "--db", settings.db_url])
    assert result.exit_code == EXIT_CHAIN_BROKEN
    assert "seq 2" in result.stdout


def test_policy_test_runs_the_rego_tests_and_every_decision_case() -> None:
    result = runner.invoke(app, ["policy", "test"])
    assert result.exit_code == 0, result.output
    assert re.search(r"Rego unit tests \(OPA Go engine\): [1-9]\d* passed, 0 failed",
                     result.stdout)
    assert re.search(r"decision cases on regopy, opa-go: [1-9]\d* passed, 0 failed",
                     result.stdout)


def test_policy_test_fails_on_a_policy_that_breaks_a_case(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    """Lower the L4 floor in a copy of the policies: the Rego tests and cases must catch it."""
    copy = tmp_path / "policies"
    shutil.copytree(POLICY_DIR, copy)
    data = json.loads((copy / "data.json").read_text())
    data["config"]["k_floor"]["L4"] = 4
    (copy / "data.json").write_text(json.dumps(data))
    monkeypatch.setenv("BROKER_POLICY_DIR", str(copy))
    result = runner.invoke(app, ["policy", "test"])
    assert result.exit_code == 1, result.output
    assert "FAIL" in result.stdout


def test_policy_bundle_has_a_manifest_with_the_revision(tmp_path: Path) -> None:
    target = tmp_path / "bundle.tar.gz"
    result = runner.invoke(app, ["policy", "bundle", "--output", str(target)])
    assert result.exit_code == 0, result.output
    with tarfile.open(target) as tar:
        names = set(tar.getnames())
        manifest = json.loads(tar.extractfile(".manifest").read())  # type: ignore[union-attr]
    assert {"broker/authz.rego", "broker/flow.rego", "data.json", ".manifest"} <= names
    assert manifest["roots"] == ["broker", "config", "policy"]
    assert manifest["revision"] in result.stdout
