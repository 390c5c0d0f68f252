"""Attacks on issue 19's operations features, by a hostile party and by a careless operator:
migrations and the start-up schema check, backup and restore, exact numbers, and several
workers on one PostgreSQL database.

Every test runs the real components (``broker`` CLI in process or as a server process,
SQLite files, the PostgreSQL of tests/postgres.py) and asserts the safe behaviour.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openpyxl
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.testclient import TestClient
from sqlalchemy import Engine, create_engine, text
from typer.testing import CliRunner, Result

from broker.api.auth import mint_token
from broker.app import create_app
from broker.cli import app
from broker.cli.serving import free_port
from broker.demo.county import generate_county
from broker.demo.story import Broker, set_up
from broker.domain.uscc import make_uscc
from broker.settings import Settings
from broker.store import schema
from broker.store.backup import CHECKPOINT_PUBKEY, DB_SQLITE, MANIFEST, sign_manifest
from broker.store.db import create_schema, make_engine
from broker.store.keys import jwt_secret
from broker.store.leases import SIGNER
from connectors.crypto import Keyring, SealError
from connectors.storage import ParquetStorage
from tests.conftest import SECRET, Mint, World, auth, contract_terms, released
from tests.migrated import as_release_0_1_0
from tests.server import broker_server

runner = CliRunner()


def cli(env: dict[str, str], *args: str) -> Result:
    """``broker ARGS`` in this process with ``env`` as the broker's settings."""
    return runner.invoke(app, list(args), env={"BROKER_JWT_SECRET": None, **env})


# -- migrations and the start-up check -----------------------------------------------------


#: Ways to take the audit log's protection away while keeping every trigger's name.
SQLITE_TAMPERS = {
    "dropped": ["DROP TRIGGER audit_entries_no_delete"],
    "no-op with the same name": [
        "DROP TRIGGER audit_entries_no_delete",
        "CREATE TRIGGER audit_entries_no_delete BEFORE DELETE ON audit_entries "
        "BEGIN SELECT 1; END"],
    "never fires": [
        "DROP TRIGGER audit_entries_no_update",
        "CREATE TRIGGER audit_entries_no_update BEFORE UPDATE ON audit_entries WHEN 0 "
        "BEGIN SELECT RAISE(ABORT, 'audit_entries is append-only'); END"],
    "an extra trigger that drops new entries": [
        "CREATE TRIGGER audit_entries_sink BEFORE INSERT ON audit_entries "
        "BEGIN SELECT RAISE(IGNORE); END"],
}
POSTGRESQL_TAMPERS = {
    "dropped": ["DROP TRIGGER audit_entries_append_only ON audit_entries"],
    "no-op function with the same name": [
        "CREATE OR REPLACE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql "
        "AS $$ BEGIN RETURN OLD; END $$"],
    "disabled": ["ALTER TABLE audit_entries DISABLE TRIGGER audit_entries_append_only"],
    "never fires": [
        "DROP TRIGGER audit_head_forward ON audit_head",
        "CREATE TRIGGER audit_head_forward BEFORE UPDATE OR DELETE ON audit_head "
        "FOR EACH ROW WHEN (false) EXECUTE FUNCTION audit_head_forward()"],
    "an extra trigger that drops new entries": [
        "CREATE FUNCTION sink() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; "
        "END $$",
        "CREATE TRIGGER audit_entries_sink BEFORE INSERT ON audit_entries "
        "FOR EACH ROW EXECUTE FUNCTION sink()"],
}


def _tampers(engine: Engine) -> dict[str, list[str]]:
    return POSTGRESQL_TAMPERS if engine.dialect.name == "postgresql" else SQLITE_TAMPERS


#: (database kind, tamper) pairs, for the ``url`` fixture's indirect parameter.
TAMPERS = [("sqlite", t) for t in SQLITE_TAMPERS] + [
    ("postgresql", t) for t in POSTGRESQL_TAMPERS]


def _tamper(engine: Engine, statements: list[str]) -> None:
    with engine.begin() as conn:
        for statement in statements:
            conn.exec_driver_sql(statement)


def _serve_outcome(tmp_path: Path, env: dict[str, str]) -> tuple[int | None, str]:
    """Start ``broker serve`` and return (its exit code, its output) once it exits, or (None,
    output) once it answers /readyz (it started: then it is stopped)."""
    port = free_port()
    log_path = tmp_path / f"serve-{port}.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "broker", "serve", "--host", "127.0.0.1", "--port",
             str(port)], env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 60
            while proc.poll() is None and time.monotonic() < deadline:
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                        return None, log_path.read_text()
                except httpx.TransportError:
                    pass
                time.sleep(0.1)
            if proc.poll() is None:
                raise AssertionError("broker serve neither started nor exited within 60 s")
            return proc.returncode, log_path.read_text()
        finally:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=30)


@pytest.mark.parametrize(("url", "tamper"), TAMPERS, indirect=["url"])
def test_start_up_refuses_a_database_at_head_whose_audit_triggers_were_tampered(
        engine: Engine, tamper: str) -> None:
    """A database at the code's revision, with the append-only protection of the audit log
    dropped, neutered under the same name, or undercut by an extra trigger: the start-up
    check (what ``broker serve`` and the app run) refuses it."""
    create_schema(engine)
    _tamper(engine, _tampers(engine)[tamper])
    with pytest.raises(schema.SchemaMismatch, match="trigger"):
        create_schema(engine)


def test_db_upgrade_of_a_current_database_with_a_dropped_trigger_is_refused(
        engine: Engine, url: str) -> None:
    """``broker db upgrade`` (the migration job) on a database at head whose audit trigger
    was dropped: not "nothing to do" (exit 0, then every worker refusing to start), but a
    refusal naming the trigger."""
    create_schema(engine)
    _tamper(engine, _tampers(engine)["dropped"])
    result = cli({"BROKER_DATABASE_URL": url}, "db", "upgrade")
    assert result.exit_code == 4, result.output
    assert "trigger" in result.output


def test_broker_serve_never_starts_on_a_database_without_its_audit_triggers(
        tmp_path: Path) -> None:
    """The real server process, on a SQLite database at head whose audit tables lost their
    triggers: it exits (3, naming the problem) instead of serving."""
    db = tmp_path / "broker.db"
    engine = make_engine(f"sqlite:///{db}")
    create_schema(engine)
    _tamper(engine, [f"DROP TRIGGER {t}_no_{op}" for t in
                     ("audit_entries", "audit_nodes", "audit_checkpoints")
                     for op in ("update", "delete")])
    engine.dispose()
    code, output = _serve_outcome(tmp_path, {"BROKER_DATA_DIR": str(tmp_path / "data"),
                                             "BROKER_DATABASE_URL": f"sqlite:///{db}"})
    assert code == 3, output
    assert "trigger" in output


@pytest.mark.parametrize(("url", "tamper"), TAMPERS, indirect=["url"])
def test_upgrade_refuses_an_unversioned_database_with_tampered_triggers(
        engine: Engine, url: str, tamper: str) -> None:
    """A database that looks like release 0.1.0's but whose append-only triggers were
    replaced (same names): ``broker db upgrade`` must not stamp it as the baseline."""
    as_release_0_1_0(engine)
    _tamper(engine, _tampers(engine)[tamper])
    result = cli({"BROKER_DATABASE_URL": url}, "db", "upgrade")
    assert result.exit_code == 4, result.output
    with engine.connect() as conn:
        assert "alembic_version" not in {r[0] for r in conn.execute(text(
            "SELECT table_name FROM information_schema.tables") if engine.dialect.name ==
            "postgresql" else text("SELECT name FROM sqlite_master WHERE type='table'"))}


@pytest.mark.parametrize("revision", ["9999", "x');DROP TABLE audit_head;--",
                                      "ffffffffffff"])
def test_a_database_stamped_at_a_fake_revision_is_refused_and_left_alone(
        engine: Engine, url: str, revision: str) -> None:
    create_schema(engine)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = :r"), {"r": revision})
    with pytest.raises(schema.SchemaMismatch, match="does not know"):
        create_schema(engine)
    result = cli({"BROKER_DATABASE_URL": url}, "db", "upgrade")
    assert result.exit_code != 0, result.output
    status = cli({"BROKER_DATABASE_URL": url}, "db", "status")
    assert status.exit_code == 3, status.output
    with engine.connect() as conn:  # nothing dropped, the fake revision kept for the operator
        assert conn.execute(text("SELECT count(*) FROM audit_head")).scalar() == 1
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == revision


def test_two_concurrent_upgrades_of_a_release_0_1_0_database_apply_once(
        engine: Engine, url: str) -> None:
    """Two ``broker db upgrade`` processes at once (a migration job and an operator): both
    end well or one refuses cleanly; the database is at head with its triggers, once."""
    as_release_0_1_0(engine)
    env = {**os.environ, "BROKER_DATABASE_URL": url, "BROKER_JWT_SECRET": "x" * 64}
    procs = [subprocess.Popen([sys.executable, "-m", "broker", "db", "upgrade"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    codes = [p.returncode for p in procs]
    assert 0 in codes, outputs
    assert all(c == 0 or "locked" in o for c, o in zip(codes, outputs, strict=True)), outputs
    create_schema(engine)  # the start-up check passes: head, and the triggers are whole
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM alembic_version")).scalar() == 1
        assert conn.execute(text("SELECT count(*) FROM audit_head")).scalar() == 1


def test_upgrade_of_a_read_only_database_file_fails_and_changes_nothing(
        tmp_path: Path) -> None:
    """A careless operator runs ``broker db upgrade`` on a database file (and directory) it
    cannot write: it fails, and the file is as it was, with no journal left beside it. (As
    root, run without the capabilities that let root write read-only files.)"""
    db = tmp_path / "ro" / "broker.db"
    db.parent.mkdir()
    engine = make_engine(f"sqlite:///{db}")
    as_release_0_1_0(engine)
    engine.dispose()
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    db.chmod(0o444)
    db.parent.chmod(0o555)
    drop = ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner"] \
        if os.geteuid() == 0 else []
    try:
        done = subprocess.run(
            [*drop, sys.executable, "-m", "broker", "db", "upgrade"],
            env={**os.environ, "BROKER_DATABASE_URL": f"sqlite:///{db}",
                 "BROKER_DATA_DIR": str(db.parent)},
            capture_output=True, text=True, timeout=120, check=False, cwd=db.parent)
        assert done.returncode != 0, done.stdout + done.stderr
        assert "Traceback" not in done.stderr, done.stderr
        assert hashlib.sha256(db.read_bytes()).hexdigest() == before
        assert sorted(p.name for p in db.parent.iterdir()) == ["broker.db"]
    finally:
        db.parent.chmod(0o700)
        db.chmod(0o600)


# -- backup and restore --------------------------------------------------------------------

#: Exit codes of broker backup / broker restore (see their --help).
FAILED, REFUSED, MISMATCH = 1, 10, 11


def _minter(settings: Settings) -> Any:
    secret = jwt_secret(settings)

    def mint(sub: str, org: str, roles: list[str]) -> str:
        return mint_token(key=secret, issuer=settings.jwt_issuer,
                          audience=settings.jwt_audience, sub=sub, org=org, roles=roles)

    return mint


@dataclass(frozen=True)
class Backups:
    """Two backups of one broker (an earlier and a later one, with their key copy) and a
    backup of another broker with its own key copy; the brokers' data directories."""

    root: Path
    earlier: Path
    later: Path
    keys: Path
    other: Path
    other_keys: Path
    data: Path
    uscc: list[str]


@pytest.fixture(scope="module")
def backups(tmp_path_factory: pytest.TempPathFactory) -> Backups:
    root = tmp_path_factory.mktemp("backups")
    settings = Settings(data_dir=root / "a", checkpoint_every_seconds=0.2)
    county = generate_county(enterprises=120)
    with TestClient(create_app(settings)) as client:
        broker = Broker(client, _minter(settings))
        result = set_up(broker, county)
        time.sleep(0.5)  # a signed checkpoint covers the set-up
        env = {"BROKER_DATA_DIR": str(settings.data_dir)}
        made = cli(env, "backup", str(root / "earlier"))
        assert made.exit_code == 0, made.output
        for _ in range(3):  # the log grows past the earlier backup, and is signed again
            broker.call("econ", "POST", "/v1/queries/aggregate", expect=200, json={
                "contract_id": result.contracts["electricity"]["id"],
                "purpose": "energy-planning", "group_by": ["town"],
                "measures": [{"fn": "count"}]})
        time.sleep(0.5)
    made = cli(env, "backup", str(root / "later"), "--keys", str(root / "keys"))
    assert made.exit_code == 0, made.output
    other = Settings(data_dir=root / "o")
    with TestClient(create_app(other)) as client:
        set_up(Broker(client, _minter(other)), generate_county(enterprises=60))
    made = cli({"BROKER_DATA_DIR": str(other.data_dir)}, "backup", str(root / "other"),
               "--keys", str(root / "other-keys"))
    assert made.exit_code == 0, made.output
    return Backups(root, root / "earlier", root / "later", root / "keys", root / "other",
                   root / "other-keys", settings.data_dir,
                   [str(u) for u in county.enterprises["uscc"]])


def _copy(source: Path, tmp_path: Path, name: str | None = None) -> Path:
    target = tmp_path / (name or source.name)
    shutil.copytree(source, target, symlinks=True)
    return target


def _manifest(backup: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((backup / MANIFEST).read_text(encoding="utf-8"))
    return doc


def _rewrite(backup: Path, doc: dict[str, Any], *, sign_with: Path | None = None) -> None:
    """Write ``doc`` as the manifest: unsigned, or signed with the key at ``sign_with``."""
    body = {k: v for k, v in doc.items() if k != "signature"}
    if sign_with is not None:
        body = sign_manifest(body, sign_with)
    (backup / MANIFEST).write_text(json.dumps(body), encoding="utf-8")


def _refresh(backup: Path, doc: dict[str, Any], name: str) -> None:
    """Make the manifest's entry of ``name`` match the file now there."""
    data = (backup / name).read_bytes()
    for entry in doc["files"]:
        if entry["path"] == name:
            entry["size"], entry["sha256"] = len(data), hashlib.sha256(data).hexdigest()


def _attacker_key(tmp_path: Path) -> Path:
    """A checkpoint key of the attacker's own (PEM), with its public half beside it."""
    key = Ed25519PrivateKey.generate()
    path = tmp_path / "attacker-ed25519.pem"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.with_suffix(".pub").write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return path


def _nothing_restored(target: Path) -> None:
    assert not target.exists(), sorted(p.name for p in target.rglob("*"))
    assert not [p for p in target.parent.iterdir() if ".partial-" in p.name]


@pytest.mark.parametrize("path", ["../outside", "datasets/../../outside", "/tmp/outside",
                                  "checkpoints/..\\..\\outside", "datasets/./x",
                                  "checkpoints//x", ""])
def test_a_manifest_naming_a_path_outside_the_backup_is_refused(
        backups: Backups, tmp_path: Path, path: str) -> None:
    """Without a key copy the manifest's signature is optional: a crafted, unsigned one that
    lists a path leaving the backup (or a non-canonical one) is refused before anything is
    written, on either side of the backup directory."""
    backup = _copy(backups.earlier, tmp_path)
    doc = _manifest(backup)
    doc["files"].append({"path": path, "size": 1, "sha256": "0" * 64})
    _rewrite(backup, doc)
    target = tmp_path / "b"
    result = cli({"BROKER_DATA_DIR": str(target)}, "restore", str(backup), "--without-key")
    assert result.exit_code in (FAILED, MISMATCH), result.output
    assert "nothing was restored" in result.output
    _nothing_restored(target)
    assert not (tmp_path / "outside").exists()


@pytest.mark.parametrize("link", ["file", "directory"])
def test_a_symlink_in_a_backup_is_refused(backups: Backups, tmp_path: Path,
                                          link: str) -> None:
    """A checkpoint replaced by a symlink to a file of the same bytes outside the backup, or
    the checkpoints directory by a symlink to a copy of it: refused (a restore reads only
    plain files of the backup)."""
    backup = _copy(backups.later, tmp_path)
    checkpoint = next((backup / "checkpoints").glob("*.checkpoint"))
    if link == "file":
        outside = tmp_path / "elsewhere"
        outside.write_bytes(checkpoint.read_bytes())
        checkpoint.unlink()
        checkpoint.symlink_to(outside)
    else:
        shutil.move(backup / "checkpoints", tmp_path / "elsewhere")
        (backup / "checkpoints").symlink_to(tmp_path / "elsewhere")
    target = tmp_path / "b"
    result = cli({"BROKER_DATA_DIR": str(target)}, "restore", str(backup), "--keys",
                 str(backups.keys))
    assert result.exit_code == MISMATCH, result.output
    assert "not a plain file" in result.output
    _nothing_restored(target)


def test_a_backup_of_another_broker_is_refused_with_this_brokers_keys(
        backups: Backups, tmp_path: Path) -> None:
    """Backups swapped between two brokers: the key copy's checkpoint key did not sign the
    other broker's manifest."""
    target = tmp_path / "b"
    result = cli({"BROKER_DATA_DIR": str(target)}, "restore", str(backups.other), "--keys",
                 str(backups.keys))
    assert result.exit_code == MISMATCH, result.output
    assert "signature" in result.output
    _nothing_restored(target)


def _swap_database(backup: Path, source: Path) -> dict[str, Any]:
    """Put ``source``'s database into ``backup`` and describe it in the manifest (whose
    audit size and root are made the swapped database's too)."""
    shutil.copyfile(source / DB_SQLITE, backup / DB_SQLITE)
    doc = _manifest(backup)
    _refresh(backup, doc, DB_SQLITE)
    doc["audit"] = _manifest(source)["audit"]
    return doc


def test_a_rolled_back_database_resigned_with_another_key_is_refused_with_the_key_copy(
        backups: Backups, tmp_path: Path) -> None:
    """The earlier backup's database (a shorter audit log) put into the later backup, the
    manifest re-signed with the attacker's key and the backup's public key replaced by its:
    the key copy's checkpoint key is the anchor, so the restore is refused."""
    backup = _copy(backups.later, tmp_path)
    doc = _swap_database(backup, backups.earlier)
    attacker = _attacker_key(tmp_path)
    shutil.copyfile(attacker.with_suffix(".pub"), backup / CHECKPOINT_PUBKEY)
    _refresh(backup, doc, CHECKPOINT_PUBKEY)
    _rewrite(backup, doc, sign_with=attacker)
    target = tmp_path / "b"
    result = cli({"BROKER_DATA_DIR": str(target)}, "restore", str(backup), "--keys",
                 str(backups.keys))
    assert result.exit_code == MISMATCH, result.output
    _nothing_restored(target)


def test_a_rolled_back_database_with_its_signature_dropped_is_refused_without_keys(
        backups: Backups, tmp_path: Path) -> None:
    """The same rollback, its manifest simply left unsigned, restored without the key copy:
    a backup that holds a checkpoint public key was made by a broker that signs every
    manifest, so an unsigned one is a changed one. Refused, nothing restored."""
    backup = _copy(backups.later, tmp_path)
    doc = _swap_database(backup, backups.earlier)
    _rewrite(backup, doc)
    target = tmp_path / "b"
    result = cli({"BROKER_DATA_DIR": str(target)}, "restore", str(backup), "--without-key")
    assert result.exit_code == MISMATCH, result.output
    _nothing_restored(target)


def test_a_resigned_backup_is_refused_by_the_checkpoint_key_already_in_place(
        backups: Backups, tmp_path: Path) -> None:
    """An operator whose secrets live outside the data directory (BROKER_MASTER_KEY_FILE,
    BROKER_CHECKPOINT_KEY_FILE) restores without a key copy: the checkpoint key in place is
    the anchor, and a manifest re-signed by another key is refused."""
    backup = _copy(backups.later, tmp_path)
    doc = _swap_database(backup, backups.earlier)
    attacker = _attacker_key(tmp_path)
    shutil.copyfile(attacker.with_suffix(".pub"), backup / CHECKPOINT_PUBKEY)
    _refresh(backup, doc, CHECKPOINT_PUBKEY)
    _rewrite(backup, doc, sign_with=attacker)
    secrets = tmp_path / "etc"
    secrets.mkdir()
    shutil.copyfile(backups.keys / "master.key", secrets / "master.key")
    shutil.copyfile(backups.keys / "checkpoint-ed25519.pem", secrets / "checkpoint.pem")
    target = tmp_path / "b"
    env = {"BROKER_DATA_DIR": str(target),
           "BROKER_MASTER_KEY_FILE": str(secrets / "master.key"),
           "BROKER_CHECKPOINT_KEY_FILE": str(secrets / "checkpoint.pem")}
    result = cli(env, "restore", str(backup))
    assert result.exit_code == MISMATCH, result.output
    _nothing_restored(target)
    assert sorted(p.name for p in secrets.iterdir()) == ["checkpoint.pem", "master.key"]  # no .pub


def test_a_restore_that_fails_half_way_leaves_nothing_behind(
        backups: Backups, tmp_path: Path) -> None:
    """A careless operator points the master key's place at a path that cannot be written
    (below a file): the restore fails, says nothing was restored, and indeed leaves no
    data directory, no staging directory and no key behind."""
    blocker = tmp_path / "etc"
    blocker.write_text("a file, not a directory")
    target = tmp_path / "b"
    env = {"BROKER_DATA_DIR": str(target),
           "BROKER_MASTER_KEY_FILE": str(blocker / "keys" / "master.key")}
    result = cli(env, "restore", str(backups.later), "--keys", str(backups.keys))
    assert result.exit_code != 0, result.output
    assert "nothing was restored" in result.output
    _nothing_restored(target)
    assert blocker.read_text() == "a file, not a directory"


def test_a_stale_journal_where_the_database_goes_is_refused(backups: Backups,
                                                          tmp_path: Path) -> None:
    """A careless operator deletes a crashed broker's database file but not its write-ahead
    log, then restores to the same path: SQLite would replay that stale log into the restored
    database when it is first opened. Refused, nothing restored, the stale log untouched."""
    db = tmp_path / "db" / "broker.db"
    db.parent.mkdir()
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.execute("CREATE TABLE audit_entries (seq INTEGER PRIMARY KEY, body TEXT)")
    conn.execute("INSERT INTO audit_entries VALUES (1, 'from an earlier broker')")
    wal = db.with_name("broker.db-wal")
    stale = wal.read_bytes()
    conn.close()
    db.unlink()
    wal.write_bytes(stale)  # as a crash leaves it
    target = tmp_path / "b"
    result = cli({"BROKER_DATA_DIR": str(target), "BROKER_DATABASE_URL": f"sqlite:///{db}"},
                 "restore", str(backups.later), "--keys", str(backups.keys))
    assert result.exit_code == REFUSED, result.output
    assert "-wal" in result.output
    _nothing_restored(target)
    assert not db.exists()
    assert wal.read_bytes() == stale


def test_a_broker_restored_without_its_keys_makes_no_new_secret_at_start(
        backups: Backups, tmp_path: Path) -> None:
    """``restore --without-key``, then a careless start before the keys are put in place:
    the start is refused and makes no secret of its own (no master key that opens nothing,
    no checkpoint key its restored public key does not verify, no new pseudonym secret).
    With the master and checkpoint keys put in place it starts, and its log verifies."""
    target = tmp_path / "b"
    result = cli({"BROKER_DATA_DIR": str(target)}, "restore", str(backups.later),
                 "--without-key")
    assert result.exit_code == 0, result.output
    settings = Settings(data_dir=target)
    before = sorted(p.name for p in settings.keys_dir.iterdir())
    with pytest.raises(SealError, match="no new key was made"), \
            TestClient(create_app(settings)):
        pass
    assert sorted(p.name for p in settings.keys_dir.iterdir()) == before
    shutil.copyfile(backups.keys / "master.key", settings.master_key_path)
    with pytest.raises(ValueError, match="without its private key"), \
            TestClient(create_app(settings)):
        pass
    assert not settings.checkpoint_key_path.exists()
    shutil.copyfile(backups.keys / "checkpoint-ed25519.pem", settings.checkpoint_key_path)
    with TestClient(create_app(settings)) as client:
        assert client.get("/readyz").status_code == 200
    verified = cli({"BROKER_DATA_DIR": str(target)}, "audit", "verify")
    assert verified.exit_code == 0, verified.output


def test_a_backup_holds_no_secret_nor_row_value_and_the_keys_are_private(
        backups: Backups) -> None:
    """No master key, signing key, JWT or pseudonym secret, and no enterprise code in any
    file of the backup (the database and checkpoints included); every file is 0600, and
    the key copy is a directory of 0600 files only its owner can list."""
    secrets = [p.read_bytes().strip() for p in backups.keys.rglob("*")
               if p.is_file() and p.name != MANIFEST]
    assert len(secrets) >= 4
    needles = [u.encode() for u in backups.uscc]
    for path in backups.later.rglob("*"):
        if path.is_file():
            content = path.read_bytes()
            assert not any(s in content for s in secrets), path
            assert not any(n in content for n in needles), path
            assert path.stat().st_mode & 0o077 == 0, path
    assert backups.keys.stat().st_mode & 0o077 == 0
    for path in backups.keys.rglob("*"):
        assert path.stat().st_mode & 0o077 == 0, path


def test_restored_secrets_are_private(backups: Backups, tmp_path: Path) -> None:
    target = tmp_path / "b"
    result = cli({"BROKER_DATA_DIR": str(target)}, "restore", str(backups.later), "--keys",
                 str(backups.keys))
    assert result.exit_code == 0, result.output
    restored = Settings(data_dir=target)
    assert target.stat().st_mode & 0o077 == 0
    for path in (restored.master_key_path, restored.checkpoint_key_path,
                 restored.keys_dir / "jwt-secret", restored.keys_dir / "pseudonym-secret"):
        assert path.stat().st_mode & 0o777 == 0o600, path


def test_backups_taken_while_the_master_key_rotates_all_restore_readable(
        backups: Backups, tmp_path: Path) -> None:
    """``broker keys rotate`` run again and again in another process while backups are
    taken: every backup's key copy opens every data key it holds, after a restore."""
    data = _copy(backups.data, tmp_path, "a")
    env = {"BROKER_DATA_DIR": str(data)}
    stop = threading.Event()
    rotations: list[int] = []

    def rotate() -> None:
        while not stop.is_set():
            done = subprocess.run(
                [sys.executable, "-m", "broker", "keys", "rotate"], env={**os.environ, **env},
                capture_output=True, text=True, timeout=120, check=False)
            rotations.append(done.returncode)

    thread = threading.Thread(target=rotate)
    thread.start()
    made: list[int] = []
    try:
        while len(made) < 3 or not rotations:
            n = len(made)
            result = cli(env, "backup", str(tmp_path / f"bk{n}"), "--keys",
                         str(tmp_path / f"keys{n}"))
            assert result.exit_code == 0, result.output
            made.append(n)
    finally:
        stop.set()
        thread.join()
    assert rotations
    assert set(rotations) == {0}, rotations
    for n in made:
        target = tmp_path / f"restored{n}"
        result = cli({"BROKER_DATA_DIR": str(target)}, "restore", str(tmp_path / f"bk{n}"),
                     "--keys", str(tmp_path / f"keys{n}"))
        assert result.exit_code == 0, result.output
        restored = Settings(data_dir=target)
        storage = ParquetStorage(restored.datasets_dir, Keyring(restored.master_key_path))
        versions = list(restored.datasets_dir.glob("*/v*.parquet.enc"))
        assert versions
        for version in versions:
            assert storage.read(version.relative_to(restored.datasets_dir).as_posix()).num_rows


# -- exact numbers -------------------------------------------------------------------------

FIRMS = [make_uscc("330481", f"{n:08d}") for n in range(1, 13)]


def _exact_meta(name: str, scale: int | None) -> dict[str, Any]:
    value: dict[str, Any] = {"name": "v", "type": "number", "role": "measure"}
    if scale is not None:
        value["scale"] = scale
    return {"name": name, "entity_field": "id", "fields": [
        {"name": "id", "type": "string", "role": "entity", "sensitivity": "L2"},
        {"name": "town", "type": "string", "role": "dimension"}, value,
        {"name": "n", "type": "integer", "role": "measure"}]}


class Provider:
    """The grid company uploading to, and econ querying, the broker behind ``client``."""

    def __init__(self, client: TestClient, mint: Mint) -> None:
        self.client, self.uploads = client, 0
        self.grid, self.econ = mint("grid", "provider"), mint("econ", "consumer")
        admin = mint("broker-ops", "admin")
        for org, kind in (("grid", "enterprise"), ("econ", "department")):
            client.post("/v1/orgs", headers=auth(admin), json={"id": org, "name": org,
                                                               "kind": kind})

    def upload(self, name: str, content: bytes, scale: int | None) -> httpx.Response:
        self.uploads += 1
        r: httpx.Response = self.client.post(
            "/v1/datasets", headers=auth(self.grid), files={"file": (name, content)},
            data={"meta": json.dumps(_exact_meta(f"d{self.uploads}", scale))})
        return r

    def total(self, dataset: str, measures: list[dict[str, Any]]) -> httpx.Response:
        r = self.client.post("/v1/contracts", headers=auth(self.grid), json=contract_terms(
            dataset, fields={"town": "clear", "v": "aggregate", "n": "aggregate"}))
        assert r.status_code == 201, r.text
        cid = r.json()["id"]
        r = self.client.post(f"/v1/contracts/{cid}/accept", headers=auth(self.econ))
        assert r.status_code == 200, r.text
        answer: httpx.Response = self.client.post(
            "/v1/queries/aggregate", headers=auth(self.econ), json={
                "contract_id": cid, "purpose": "energy-planning", "group_by": ["town"],
                "measures": measures})
        return answer


def _formats(texts: list[str], numbers: list[float]) -> dict[str, bytes]:
    """The same column ``v`` as CSV text, Parquet strings, Parquet doubles and xlsx."""
    csv = "id,town,v,n\n" + "".join(f"{f},a,{t},1\n" for f, t in zip(FIRMS, texts, strict=True))
    out = {"x.csv": csv.encode()}
    for name, column in (("s.parquet", pa.array(texts, pa.string())),
                         ("f.parquet", pa.array(numbers, pa.float64()))):
        buffer = io.BytesIO()
        pq.write_table(pa.table({"id": FIRMS, "town": ["a"] * 12, "v": column,
                                 "n": [1] * 12}), buffer)
        out[name] = buffer.getvalue()
    book = openpyxl.Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.append(["id", "town", "v", "n"])
    for firm, number, written in zip(FIRMS, numbers, texts, strict=True):
        sheet.append([firm, "a", number if math.isfinite(number) else written, 1])
    buffer = io.BytesIO()
    book.save(buffer)
    out["x.xlsx"] = buffer.getvalue()
    return out


EDGE_VALUES = {"NaN": float("nan"), "inf": float("inf"), "-inf": float("-inf"), "-0": -0.0,
               "1e2": 100.0, "0.125": 0.125, "1e18": 1e18, "12345678901234567": 1.2e16}


@pytest.mark.parametrize("scale", [None, 2])
def test_the_same_rows_in_any_format_get_the_same_status(client: TestClient, mint: Mint,
                                                         scale: int | None) -> None:
    """NaN, infinities, negative zero, an exponent, a value the scale cannot hold and ones
    too large, as CSV text, Parquet strings, Parquet doubles and xlsx: the upload's status
    and problems never depend on the format."""
    provider = Provider(client, mint)
    for value, number in EDGE_VALUES.items():
        texts, numbers = [value] + ["1.5"] * 11, [number] + [1.5] * 11
        outcomes = {}
        for name, content in _formats(texts, numbers).items():
            r = provider.upload(name, content, scale)
            assert r.status_code in (201, 422), r.text
            outcomes[name] = (r.status_code, sorted(
                (p["issue"], p["count"]) for p in r.json().get("problems", [])))
        assert len(set(map(str, outcomes.values()))) == 1, (value, outcomes)
        if not math.isfinite(number):
            assert outcomes["x.csv"][0] == 422, value


def test_refused_values_appear_in_no_answer_log_or_audit_entry(
        client: TestClient, mint: Mint, settings: Settings,
        caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]) -> None:
    """Values refused as too-many-decimals, too-large or not-number (in a scaled field and
    in an integer one): neither the problem answered, nor any log line, nor the audit log
    names one of them."""
    secret_values = ["31415.926535", "271828182845904523536.5", "16180339887e400",
                     "1414213562373095048801"]
    provider = Provider(client, mint)
    caplog.set_level(logging.DEBUG)
    for column, scale in (("v", 2), ("n", 2)):
        rows = "".join(f"{f},a,{secret_values[k % 4] if column == 'v' else 1},"
                       f"{secret_values[k % 4] if column == 'n' else 1}\n"
                       for k, f in enumerate(FIRMS))
        r = provider.upload("x.csv", ("id,town,v,n\n" + rows).encode(), scale)
        assert r.status_code == 422, r.text
        assert {p["column"] for p in r.json()["problems"]} == {column}
        for value in secret_values:
            assert value not in r.text
    captured = capsys.readouterr()
    logged = caplog.text + captured.out + captured.err
    with sqlite3.connect(settings.data_dir / "broker.db") as conn:
        audit = "\n".join(r[0] for r in conn.execute("SELECT body FROM audit_entries"))
    assert "dataset" in audit  # the refusals were audited
    for value in secret_values:
        for digits in (value, value[:8]):
            assert digits not in logged, digits
            assert digits not in audit, digits


def test_integer_sums_beyond_2_63_do_not_wrap(client: TestClient, mint: Mint) -> None:
    """Twelve integers near 2^62 (their sum passes 2^63, where a 64-bit sum wraps negative):
    the published sum is the double nearest the exact one; below 2^53 it is exact."""
    provider = Provider(client, mint)
    for values in ([2**62 + 2 * k + 1 for k in range(12)], [2**49 + 7 * k for k in range(12)]):
        rows = "".join(f"{f},a,1,{v}\n" for f, v in zip(FIRMS, values, strict=True))
        r = provider.upload("x.csv", ("id,town,v,n\n" + rows).encode(), None)
        assert r.status_code == 201, r.text
        answer = provider.total(r.json()["id"], [{"fn": "sum", "field": "n"}])
        assert answer.status_code == 200, answer.text
        (cell,) = answer.json()["cells"]
        assert cell["status"] == "published"
        published = cell["values"]["sum_n"]
        if sum(values) < 2**53:
            assert isinstance(published, int)
            assert published == sum(values)
        else:
            assert published == float(sum(values))
            assert published > 2**63


def test_a_mean_rounded_on_publish_is_never_negative_zero(client: TestClient,
                                                          mint: Mint) -> None:
    """A scaled field's mean is rounded to scale + 2 decimals: -0.01 over 301 rows rounds to
    zero, which must be published as 0, not -0.0 (a sign that betrays a negative sum). The
    values are +-0.01, so no enterprise dominates."""
    provider = Provider(client, mint)
    firms = [make_uscc("330481", f"{n:08d}") for n in range(1, 302)]
    rows = "".join(f"{f},a,{'-0.01' if k % 2 == 0 else '0.01'},1\n"
                   for k, f in enumerate(firms))
    r = provider.upload("x.csv", ("id,town,v,n\n" + rows).encode(), 2)
    assert r.status_code == 201, r.text
    answer = provider.total(r.json()["id"], [{"fn": "mean", "field": "v"}])
    assert answer.status_code == 200, answer.text
    (cell,) = answer.json()["cells"]
    assert cell["status"] == "published", answer.text
    mean = cell["values"]["mean_v"]
    assert mean == 0
    assert math.copysign(1.0, mean) == 1.0, answer.text
    assert '"mean_v":-0' not in answer.text.replace(" ", "")


# -- several workers on one PostgreSQL database --------------------------------------------


def test_workers_refused_on_sqlite(tmp_path: Path) -> None:
    """A careless operator asks for two workers on the embedded SQLite database: refused
    before anything starts (SQLite serves one process)."""
    done = subprocess.run(
        [sys.executable, "-m", "broker", "serve", "--workers", "2", "--port",
         str(free_port())], env={**os.environ, "BROKER_DATA_DIR": str(tmp_path / "data")},
        capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "PostgreSQL" in done.stdout + done.stderr
    assert not (tmp_path / "data" / "broker.db").exists()


def _sql(url: str, statement: str, **params: Any) -> list[Any]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            rows = list(conn.execute(text(statement), params))
            conn.commit()
        return rows
    finally:
        engine.dispose()


@pytest.mark.e2e
@pytest.mark.parametrize("database", ["postgresql", "sqlite"])
def test_two_brokers_on_one_database_stay_exact_and_sign_no_conflicting_checkpoint(
        tmp_path: Path, request: pytest.FixtureRequest, mint: Mint, database: str) -> None:
    """Two ``broker serve`` processes on one database under concurrent load. On PostgreSQL
    the database keeps terminating whichever connection holds the checkpoint signer's lease
    (a failover storm); on SQLite (a careless operator starting a second process on the
    embedded database) each process holds its local lease, so both sign. Either way the
    daily quota is exact across both, no release is counted twice, the log is gapless, no
    conflicting checkpoint was ever signed, and the log verifies against every checkpoint
    published."""
    quota = 16
    env = {"BROKER_DATA_DIR": str(tmp_path / "data"), "BROKER_JWT_SECRET": SECRET,
           "BROKER_CHECKPOINT_EVERY_SECONDS": "0.3"}
    if database == "postgresql":
        env["BROKER_DATABASE_URL"] = database_url = str(request.getfixturevalue("postgres_url"))
    else:
        database_url = f"sqlite:///{tmp_path / 'data' / 'broker.db'}"
    cut = threading.Event()
    cuts: list[int] = []

    def cutter() -> None:
        while database == "postgresql" and not cut.is_set():
            cuts.extend(r[0] for r in _sql(database_url, """
                SELECT pg_terminate_backend(l.pid) FROM pg_locks l
                WHERE l.locktype = 'advisory' AND l.objid = :key AND l.granted""",
                                          key=SIGNER) if r[0])
            time.sleep(0.4)

    with ExitStack() as stack:
        bases = [stack.enter_context(broker_server(tmp_path, env, log_name=f"{n}.log"))
                 for n in ("first", "second")]
        one = stack.enter_context(httpx.Client(base_url=bases[0], timeout=60))
        world = World(one, mint)  # type: ignore[arg-type]
        contract = world.contract_for(world.dataset["id"], max_queries_per_day=quota)
        statuses: list[int] = []
        lock = threading.Lock()

        def analyst(n: int) -> None:
            token = mint("econ", "consumer", sub=f"analyst{n}@econ")
            for i in range(4):
                with httpx.Client(base_url=bases[(n + i) % 2], timeout=60) as own:
                    r = own.post("/v1/queries/aggregate", headers=auth(token), json={
                        "contract_id": contract, "purpose": "energy-planning",
                        "group_by": [["town"], []][i % 2], "measures": [{"fn": "count"}]})
                with lock:
                    statuses.append(r.status_code)

        killer = threading.Thread(target=cutter)
        killer.start()
        threads = [threading.Thread(target=analyst, args=(n,)) for n in range(8)]
        try:
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            time.sleep(1.5)  # more lease cuts while the signers take over
        finally:
            cut.set()
            killer.join()
        assert cuts or database == "sqlite", "the lease was never held, so never cut"
        assert sorted(statuses) == [200] * quota + [403] * (32 - quota), statuses
        released_count = _sql(database_url, """
            SELECT COUNT(*) FROM audit_entries WHERE contract_id = :contract
            AND action = 'query.aggregate' AND allowed""", contract=contract)[0][0]
        assert released_count == quota
        count, low, high = _sql(database_url,
                               "SELECT COUNT(*), MIN(seq), MAX(seq) FROM audit_entries")[0]
        assert (low, high) == (1, count)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # a signer is back and covers the log
            size = _sql(database_url, "SELECT size FROM audit_head")[0][0]
            if _sql(database_url, "SELECT COALESCE(MAX(size), 0) FROM audit_checkpoints"
                   )[0][0] == size:
                break
            time.sleep(0.2)
        else:
            raise AssertionError("no signer covered the log after the lease cuts")
    assert not list((tmp_path / "data" / "checkpoints").glob("*conflict*"))
    verified = cli({k: v for k, v in env.items() if k != "BROKER_JWT_SECRET"},
                   "audit", "verify", "--json")
    assert verified.exit_code == 0, verified.output
    report = json.loads(verified.stdout.strip().splitlines()[-1])
    assert report["valid"] is True


def test_a_backup_of_a_truncated_log_is_refused_and_leaves_no_broker_behind(
        backups: Backups, tmp_path: Path) -> None:
    """The broker backed up had its log truncated (the last entries deleted by someone who
    dropped the append-only trigger and put it back just as it was): its backup is signed
    honestly, and the restore's check against the checkpoints finds the truncation. The
    restore must then be refused: no data directory a server could start on is left."""
    data = _copy(backups.data, tmp_path, "a")
    with sqlite3.connect(data / "broker.db") as conn:
        (definition,) = conn.execute("SELECT sql FROM sqlite_master WHERE type = 'trigger' "
                                     "AND name = 'audit_entries_no_delete'").fetchone()
        conn.execute("DROP TRIGGER audit_entries_no_delete")
        conn.execute("DELETE FROM audit_entries WHERE seq > (SELECT MAX(seq) - 3 FROM "
                     "audit_entries)")
        conn.execute(definition)
    env = {"BROKER_DATA_DIR": str(data)}
    made = cli(env, "backup", str(tmp_path / "bk"), "--keys", str(tmp_path / "keys"))
    assert made.exit_code == 0, made.output
    target = tmp_path / "b"
    result = cli({"BROKER_DATA_DIR": str(target)}, "restore", str(tmp_path / "bk"), "--keys",
                 str(tmp_path / "keys"))
    assert result.exit_code not in (0, FAILED), result.output
    assert "BROKEN" in result.output
    _nothing_restored(target)


#: E9 is alone in town C; its figure has cents beyond a double's 15-16 digits.
SCALED_TOWNS = pd.DataFrame({
    "uscc": [f"E{i}" for i in range(10)], "town": ["A"] * 5 + ["B"] * 4 + ["C"],
    "kwh": [f"{123456789012345 + i}.{i:02d}" for i in range(9)] + ["987654321098765.43"]})


def test_exact_decimal_sums_do_not_let_a_tracker_through(client: TestClient,
                                                          mint: Mint) -> None:
    """A tracker on a scaled field whose values exceed a double's precision: the totals of
    A+C and A+B are released exactly (DECIMAL), so B alone would give E9's figure to the
    cent by difference; it is withheld as linked, as it is for doubles."""
    world = World(client, mint)
    did = world.add_dataset(SCALED_TOWNS, [
        {"name": "town", "type": "string", "role": "dimension"},
        {"name": "kwh", "type": "number", "role": "measure", "scale": 2}])
    contract = world.contract_for(did, fields={"town": "clear", "kwh": "aggregate"})

    def total(*towns: str) -> httpx.Response:
        r: httpx.Response = client.post(
            "/v1/queries/aggregate", headers=auth(world.econ), json={
                "contract_id": contract, "purpose": "energy-planning",
                "measures": [{"fn": "sum", "field": "kwh"}, {"fn": "count"}],
                "filters": [{"field": "town", "op": "in", "value": list(towns)}]})
        return r

    first, second = released(total("A", "C")), released(total("A", "B"))
    assert first[0][1] is not None
    assert second[0][1] is not None
    assert released(total("B")) == [({}, None, "linked")]
    ((_, alone, reason),) = released(total("C"))  # one enterprise: never its own figure
    assert alone is None, reason


EXOTIC_TEXTS = ["1E+99999999999999999999", "1e-99999999999999999999", "-0E+5", "sNaN",
                "Infinity", "0x10", "1_000", "١٢٣", "0." + "0" * 5000 + "1",
                "1" + "0" * 40, "99999999999999999.99"]


@pytest.mark.parametrize("scale", [None, 0, 2, 9])
def test_exotic_number_texts_are_refused_or_taken_alike_as_csv_and_parquet(
        client: TestClient, mint: Mint, scale: int | None) -> None:
    """Exponents past any context's limit, signalling NaN, hexadecimal, underscores, Arabic
    digits, 5000 decimals, 41 digits: as CSV text and as Parquet strings, each is taken or
    refused alike (never a server error), and a refusal does not quote it."""
    provider = Provider(client, mint)
    for value in EXOTIC_TEXTS:
        texts = [value] + ["1.5" if scale != 0 else "1"] * 11
        csv = "id,town,v,n\n" + "".join(f"{f},a,{t},1\n" for f, t in zip(FIRMS, texts,
                                                                         strict=True))
        buffer = io.BytesIO()
        pq.write_table(pa.table({"id": FIRMS, "town": ["a"] * 12,
                                 "v": pa.array(texts, pa.string()), "n": [1] * 12}), buffer)
        outcomes = []
        for name, content in (("x.csv", csv.encode()), ("s.parquet", buffer.getvalue())):
            r = provider.upload(name, content, scale)
            assert r.status_code in (201, 422), (value[:40], r.text)
            if r.status_code == 422:
                assert value[:12] not in r.text.replace('"1.5"', "")
            outcomes.append((r.status_code, sorted(
                (p["issue"], p["count"]) for p in r.json().get("problems", []))))
        assert outcomes[0] == outcomes[1], (value[:40], outcomes)
