"""The ``broker`` command: tokens, audit export and offline verification, policy test/bundle."""

from __future__ import annotations

import json
import re
import shutil
import tarfile
from pathlib import Path

import jwt
import pytest
from sqlalchemy import create_engine
from typer.testing import CliRunner

from audit.verify import EXIT_CODES, Fault
from broker.cli import app
from broker.demo import tamper
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
    # longer than BROKER_JWT_MAX_TTL_SECONDS (default a day): refused, not minted
    long = runner.invoke(app, ["token", "--sub", "a", "--org", "econ", "--role", "consumer",
                               "--ttl", "86401"])
    assert long.exit_code != 0
    assert long.stdout.strip() == ""


def _env(settings: Settings) -> dict[str, str]:
    return {"BROKER_DATA_DIR": str(settings.data_dir)}


def test_export_then_verify_offline_and_a_tampered_line_is_named(
    world: World, settings: Settings, tmp_path: Path
) -> None:
    world.query(group_by=["town"])
    env = _env(settings)
    assert runner.invoke(app, ["audit", "checkpoint"], env=env).exit_code == 0
    key = tmp_path / "log.vkey"
    key.write_text(runner.invoke(app, ["audit", "key"], env=env).stdout)
    export = tmp_path / "audit.jsonl"
    assert runner.invoke(app, ["audit", "export", "--output", str(export)], env=env
                         ).exit_code == 0
    lines = export.read_bytes().splitlines()
    header = json.loads(lines[0])
    assert header["format"] == "broker-audit-export/1"
    assert header["key"] == key.read_text().strip()
    assert json.loads(lines[1])["checkpoint"].startswith(f"{settings.audit_origin}\n9\n")
    entries = lines[2:]
    assert [json.loads(e)["seq"] for e in entries] == list(range(1, 10))
    ok = runner.invoke(app, ["audit", "verify", "--export", str(export), "--pubkey", str(key)])
    assert ok.exit_code == 0, ok.output
    assert "valid: 9 entries" in ok.stdout
    assert "1 signed checkpoint(s) matched" in ok.stdout
    entry = json.loads(entries[6])
    lines[8] = entries[6].replace(entry["request_id"].encode(), b"forged-request-id")
    export.write_bytes(b"\n".join(lines) + b"\n")
    broken = runner.invoke(app, ["audit", "verify", "--export", str(export), "--pubkey",
                                 str(key), "--json"])
    assert broken.exit_code == EXIT_CODES[Fault.BAD_ENTRY]
    assert json.loads(broken.stdout)["first_bad_seq"] == 7


def test_verify_needs_a_key_and_names_the_changed_entry(
    world: World, settings: Settings, tmp_path: Path
) -> None:
    env = _env(settings)
    other = tmp_path / "other"
    nokey = runner.invoke(app, ["audit", "verify", "--db", settings.db_url],
                          env={"BROKER_DATA_DIR": str(other)})
    assert nokey.exit_code == 1
    assert "--pubkey" in nokey.output
    assert runner.invoke(app, ["audit", "verify"], env=env).exit_code == 0
    engine = create_engine(settings.db_url)
    with engine.begin() as conn:
        tamper.disarm(conn)
        tamper.flip_byte(conn, 2)
    engine.dispose()
    result = runner.invoke(app, ["audit", "verify"], env=env)
    assert result.exit_code == EXIT_CODES[Fault.BAD_ENTRY]
    assert "bad-entry at entry 2" in result.stdout


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
