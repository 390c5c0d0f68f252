"""``broker backup`` and ``broker restore``: a backup taken from a real server under load
restores to a broker that answers the same, on SQLite and PostgreSQL; and every refusal."""

from __future__ import annotations

import hashlib
import io
import json
import os
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner, Result

from broker.api.auth import mint_token
from broker.app import create_app
from broker.cli import app
from broker.demo.county import County, generate_county, grid_slice
from broker.demo.story import Broker, StoryResult, set_up
from broker.settings import Settings
from broker.store.backup import MANIFEST
from broker.store.keys import jwt_secret
from connectors.crypto import Keyring, MasterKey, wrap_key, write_atomic
from connectors.storage import ParquetStorage
from tests.postgres import PostgresServer
from tests.server import broker_server

runner = CliRunner()

#: Exit codes of broker backup / broker restore (see their --help).
REFUSED, MISMATCH, NO_KEY = 10, 11, 12


def cli(env: dict[str, str], *args: str) -> Result:
    """``broker ARGS`` in this process with ``env`` as the broker's settings."""
    return runner.invoke(app, list(args), env={"BROKER_JWT_SECRET": None, **env})


def minter(settings: Settings) -> Any:
    """Mints tokens with the JWT secret generated into ``settings``' data directory."""
    secret = jwt_secret(settings)

    def mint(sub: str, org: str, roles: list[str]) -> str:
        return mint_token(key=secret, issuer=settings.jwt_issuer,
                          audience=settings.jwt_audience, sub=sub, org=org, roles=roles)

    return mint


def electricity_by_town(result: StoryResult) -> dict[str, Any]:
    """A query whose answer must come back the same from the restored broker."""
    return {"contract_id": result.contracts["electricity"]["id"], "purpose": "energy-planning",
            "group_by": ["town", "industry"], "totals": True,
            "measures": [{"fn": "count"}, {"fn": "sum", "field": "electricity_kwh"}]}


def tax_by_quarter(result: StoryResult) -> dict[str, Any]:
    return {"contract_id": result.contracts["tax"]["id"], "purpose": "industrial-policy",
            "group_by": [{"field": "month", "level": "quarter"}],
            "measures": [{"fn": "count"}, {"fn": "sum", "field": "tax_paid"}]}


def upload(broker: Broker, county: County, name: str) -> int:
    """The grid company registers its slice again under ``name``; the status."""
    data = grid_slice(county)
    buffer = io.StringIO()
    data.frame.to_csv(buffer, index=False)
    files = {"file": (f"{name}.csv", buffer.getvalue().encode(), "text/csv")}
    meta = {**data.meta, "name": name}
    return broker.call("grid", "POST", "/v1/datasets", files=files,
                       data={"meta": json.dumps(meta)}).status_code


@dataclass
class Load:
    """Queries and uploads from threads of their own until stopped."""

    base: str
    mint: Any
    county: County
    body: dict[str, Any]
    statuses: list[int]
    stop: threading.Event

    def queries(self) -> None:
        with httpx.Client(base_url=self.base, timeout=60) as client:
            broker = Broker(client, self.mint)
            while not self.stop.is_set():
                self.statuses.append(broker.call("econ", "POST", "/v1/queries/aggregate",
                                                 json=self.body).status_code)
                time.sleep(0.05)

    def uploads(self) -> None:
        with httpx.Client(base_url=self.base, timeout=60) as client:
            broker = Broker(client, self.mint)
            n = 0
            while not self.stop.is_set():
                n += 1
                self.statuses.append(upload(broker, self.county, f"load-{n}"))


def cells(answer: dict[str, Any]) -> list[Any]:
    """An answer's cells, in a stable order."""
    return sorted(answer["cells"], key=lambda c: json.dumps(c["key"], sort_keys=True))


def file_bytes(root: Path) -> Iterator[tuple[Path, bytes]]:
    for path in sorted(root.rglob("*")):
        if path.is_file():
            yield path, path.read_bytes()


@pytest.fixture(params=["sqlite", "postgresql"])
def databases(request: pytest.FixtureRequest) -> Iterator[tuple[dict[str, str], dict[str, str]]]:
    """The database settings of the broker backed up and of the one restored (empty)."""
    if request.param == "sqlite":
        yield {}, {}
        return
    server: PostgresServer = request.getfixturevalue("postgres_server")
    source, target = server.create_database("backup_src"), server.create_database("backup_dst")
    try:
        yield ({"BROKER_DATABASE_URL": server.url(source)},
               {"BROKER_DATABASE_URL": server.url(target)})
    finally:
        server.drop_database(source)
        server.drop_database(target)


@pytest.mark.e2e
def test_a_backup_taken_under_load_restores_to_a_broker_that_answers_the_same(
    tmp_path: Path, databases: tuple[dict[str, str], dict[str, str]]
) -> None:
    source_db, target_db = databases
    env_a = {"BROKER_DATA_DIR": str(tmp_path / "a"), "BROKER_RATE_LIMIT": "100000/minute",
             "BROKER_CHECKPOINT_EVERY_SECONDS": "0.2", **source_db}
    env_b = {"BROKER_DATA_DIR": str(tmp_path / "b"), "BROKER_RATE_LIMIT": "100000/minute",
             **target_db}
    settings_a = Settings(data_dir=tmp_path / "a")
    backup, keys = tmp_path / "backup", tmp_path / "keys"
    county = generate_county(enterprises=300)
    (tmp_path / "run-a").mkdir()
    with broker_server(tmp_path / "run-a", env_a, unset=("BROKER_JWT_SECRET",)) as base:
        mint = minter(settings_a)
        with httpx.Client(base_url=base, timeout=60) as client:
            broker = Broker(client, mint)
            result = set_up(broker, county)
            before = {name: broker.call("econ", "POST", "/v1/queries/aggregate", expect=200,
                                        json=body(result)).json()
                      for name, body in (("electricity", electricity_by_town),
                                         ("tax", tax_by_quarter))}
            time.sleep(0.5)  # a signed checkpoint covers the queries
            published = {p.name: p.read_text(encoding="utf-8")
                         for p in (settings_a.checkpoints_path).glob("*.checkpoint")}
            assert published
            load = Load(base, mint, county, {**electricity_by_town(result),
                                             "group_by": ["industry"]}, [], threading.Event())
            threads = [threading.Thread(target=load.queries),
                       threading.Thread(target=load.uploads)]
            for thread in threads:
                thread.start()
            try:
                while len(load.statuses) < 6:
                    time.sleep(0.05)
                made = cli(env_a, "backup", str(backup), "--keys", str(keys))
                during = len(load.statuses)
                while len(load.statuses) < during + 4:  # the server kept serving after it
                    time.sleep(0.05)
            finally:
                load.stop.set()
                for thread in threads:
                    thread.join()
            assert made.exit_code == 0, made.output
            assert set(load.statuses) == {200, 201}, load.statuses
            everything = {d["id"] for d in broker.call("grid", "GET", "/v1/datasets",
                                                       expect=200).json()}

    manifest = json.loads((backup / MANIFEST).read_text(encoding="utf-8"))
    assert manifest["database"] == ("postgresql" if source_db else "sqlite")
    assert manifest["audit"]["size"] > 0
    assert {f["path"] for f in manifest["files"]} >= {f"checkpoints/{n}" for n in published}
    # Sealed means sealed: no enterprise code and no secret is anywhere in the backup.
    needles = [u.encode() for u in county.enterprises["uscc"][:100]]
    master = settings_a.master_key_path.read_bytes()
    for path, content in file_bytes(backup):
        assert master not in content, path
        assert not any(n in content for n in needles), path
    assert (keys / "master.key").read_bytes() == master
    assert {oct(p.stat().st_mode & 0o777) for p in keys.rglob("*") if p.is_file()} == {"0o600"}

    if target_db:  # a database that is not empty is refused, and nothing is restored
        refused = cli({**env_b, **source_db}, "restore", str(backup), "--keys", str(keys))
        assert refused.exit_code == REFUSED, refused.output
        assert "not empty" in refused.output
        assert not (tmp_path / "b").exists()
    restored = cli(env_b, "restore", str(backup), "--keys", str(keys))
    assert restored.exit_code == 0, restored.output
    assert "audit log verified" in restored.output
    settings_b = Settings(data_dir=tmp_path / "b",
                          database_url=target_db.get("BROKER_DATABASE_URL"))
    verified = cli(env_b, "audit", "verify", "--json")
    assert verified.exit_code == 0, verified.output
    report = json.loads(verified.stdout.strip().splitlines()[-1])
    assert (report["valid"], report["size"], report["root"]) == (
        True, manifest["audit"]["size"], manifest["audit"]["root"])
    for name, note in published.items():  # what was published before the backup holds
        trusted = tmp_path / name
        trusted.write_text(note, encoding="utf-8")
        checked = cli(env_b, "audit", "verify", "--trusted", str(trusted))
        assert checked.exit_code == 0, checked.output

    # Every version the restored database references opens under the restored keys.
    from broker.store.db import make_engine

    engine = make_engine(settings_b.db_url)
    try:
        with engine.connect() as conn:
            locations = [r[0] for r in conn.exec_driver_sql(
                "SELECT location FROM dataset_versions")]
    finally:
        engine.dispose()
    storage = ParquetStorage(settings_b.datasets_dir, Keyring(settings_b.master_key_path))
    assert all(storage.read(loc).num_rows > 0 for loc in locations)

    (tmp_path / "run-b").mkdir()
    with (broker_server(tmp_path / "run-b", env_b, unset=("BROKER_JWT_SECRET",)) as base,
          httpx.Client(base_url=base, timeout=60) as client):
        broker = Broker(client, minter(settings_b))  # the restored JWT secret
        kept = {d["id"] for d in broker.call("grid", "GET", "/v1/datasets", expect=200).json()}
        # The grid company's own: set up before, and those uploaded before the snapshot.
        assert {result.datasets["electricity"]["id"]} <= kept <= everything
        assert len(locations) == len(kept) + 3  # and the other providers' three
        for name, body in (("electricity", electricity_by_town), ("tax", tax_by_quarter)):
            again = broker.call("econ", "POST", "/v1/queries/aggregate", expect=200,
                                json=body(result)).json()
            assert cells(again) == cells(before[name]), name


# -- refusals ------------------------------------------------------------------------------


@dataclass
class Made:
    """A small broker's data directory, its backup and its keys."""

    env: dict[str, str]
    backup: Path
    keys: Path
    target: dict[str, str]


@pytest.fixture
def made(tmp_path: Path) -> Made:
    """A broker with the demo's organisations, datasets and contracts, backed up with keys."""
    settings = Settings(data_dir=tmp_path / "a", checkpoint_every_seconds=0.2)
    with TestClient(create_app(settings)) as client:
        set_up(Broker(client, minter(settings)), generate_county(enterprises=150))
    env = {"BROKER_DATA_DIR": str(settings.data_dir)}
    backup, keys = tmp_path / "backup", tmp_path / "keys"
    result = cli(env, "backup", str(backup), "--keys", str(keys))
    assert result.exit_code == 0, result.output
    return Made(env, backup, keys, {"BROKER_DATA_DIR": str(tmp_path / "b")})


def _flip(path: Path, position: int) -> None:
    data = bytearray(path.read_bytes())
    data[position % len(data)] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("which", ["database/broker.db", "datasets/register.parquet.enc",
                                   "checkpoints/latest", "keys/release-cache.key",
                                   "version", "master.key"])
def test_one_changed_byte_anywhere_is_refused_and_nothing_is_restored(
    made: Made, which: str
) -> None:
    if which == "version":
        path = next(made.backup.glob("datasets/*/v1.parquet.enc"))
    elif which == "master.key":
        path = made.keys / which
    else:
        path = made.backup / which
    _flip(path, 1000)
    result = cli(made.target, "restore", str(made.backup), "--keys", str(made.keys))
    assert result.exit_code == MISMATCH, result.output
    assert "does not match its manifest" in result.output
    assert "nothing was restored" in result.output
    assert not Path(made.target["BROKER_DATA_DIR"]).exists()
    assert not any(p.name.startswith(".b.") for p in Path(made.target["BROKER_DATA_DIR"])
                   .parent.iterdir())


def test_a_missing_or_extra_file_is_refused(made: Made) -> None:
    extra = made.backup / "datasets" / "extra.parquet.enc"
    extra.write_bytes(b"x")
    result = cli(made.target, "restore", str(made.backup), "--keys", str(made.keys))
    assert (result.exit_code, "not in its manifest" in result.output) == (MISMATCH, True)
    extra.unlink()
    next(made.backup.glob("checkpoints/*.checkpoint")).unlink()
    result = cli(made.target, "restore", str(made.backup), "--keys", str(made.keys))
    assert (result.exit_code, "is missing" in result.output) == (MISMATCH, True)
    assert not Path(made.target["BROKER_DATA_DIR"]).exists()


def test_a_data_directory_in_use_is_refused(made: Made) -> None:
    target = Path(made.target["BROKER_DATA_DIR"])
    target.mkdir()
    (target / "broker.db").write_bytes(b"someone's")
    result = cli(made.target, "restore", str(made.backup), "--keys", str(made.keys))
    assert result.exit_code == REFUSED, result.output
    assert "not empty" in result.output
    assert [p.name for p in target.iterdir()] == ["broker.db"]
    assert (target / "broker.db").read_bytes() == b"someone's"


def test_a_fresh_volume_with_only_lost_and_found_is_empty_enough(made: Made) -> None:
    target = Path(made.target["BROKER_DATA_DIR"])
    (target / "lost+found").mkdir(parents=True)
    result = cli(made.target, "restore", str(made.backup), "--keys", str(made.keys))
    assert result.exit_code == 0, result.output
    assert (target / "lost+found").is_dir()
    assert (target / "broker.db").is_file()


def test_a_backup_into_a_directory_in_use_or_with_keys_inside_it_is_refused(
    made: Made, tmp_path: Path
) -> None:
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "note").write_text("mine")
    result = cli(made.env, "backup", str(busy))
    assert (result.exit_code, "not empty" in result.output) == (REFUSED, True)
    assert [p.name for p in busy.iterdir()] == ["note"]
    fresh = tmp_path / "fresh"
    for keys in (fresh / "keys", fresh, tmp_path):
        result = cli(made.env, "backup", str(fresh), "--keys", str(keys))
        assert result.exit_code == REFUSED, result.output
        assert "outside the backup directory" in result.output
        assert not fresh.exists()


def test_a_restore_without_the_master_key_is_refused_unless_asked(made: Made) -> None:
    """Refused by default (the data could not be read); --without-key restores with a
    warning, and queries then fail closed until the key is put in place."""
    result = cli(made.target, "restore", str(made.backup))
    assert result.exit_code == NO_KEY, result.output
    assert "cannot be read without it" in result.output
    assert not Path(made.target["BROKER_DATA_DIR"]).exists()
    result = cli(made.target, "restore", str(made.backup), "--without-key")
    assert result.exit_code == 0, result.output
    assert "warning: the master key is not in place" in result.output
    assert "audit log verified" in result.output
    restored = Path(made.target["BROKER_DATA_DIR"])
    assert not (restored / "keys" / "master.key").exists()
    assert not (restored / "keys" / "jwt-secret").exists()


def test_a_backup_without_keys_holds_no_secret_and_its_key_files_are_wrapped(
    made: Made, tmp_path: Path
) -> None:
    plain = tmp_path / "plain"
    result = cli(made.env, "backup", str(plain))
    assert result.exit_code == 0, result.output
    assert "no secrets copied" in result.output
    secrets = [p.read_bytes() for p in (made.keys).rglob("*")
               if p.is_file() and p.name != MANIFEST]
    for path, content in file_bytes(plain):
        assert not any(s.strip() in content for s in secrets), path
    names = {p.name for p in plain.rglob("*")}
    assert not names & {"master.key", "jwt-secret", "pseudonym-secret",
                        "checkpoint-ed25519.pem"}
    assert os.stat(plain / MANIFEST).st_mode & 0o077 == 0


def test_a_manifest_rewritten_to_match_a_changed_file_fails_its_signature(made: Made) -> None:
    """The checkpoint key signs the manifest: with the key copy at hand, a backup changed
    together with its manifest is refused; the signature is dropped to no avail."""
    version = next(made.backup.glob("datasets/*/v1.parquet.enc"))
    _flip(version, 1000)
    path = made.backup / MANIFEST
    doc = json.loads(path.read_text(encoding="utf-8"))
    name = version.relative_to(made.backup).as_posix()
    entry = next(f for f in doc["files"] if f["path"] == name)
    entry["sha256"] = hashlib.sha256(version.read_bytes()).hexdigest()
    for signed in (True, False):
        if not signed:
            del doc["signature"]
        path.write_text(json.dumps(doc), encoding="utf-8")
        result = cli(made.target, "restore", str(made.backup), "--keys", str(made.keys))
        assert result.exit_code == MISMATCH, result.output
        assert "signature" in result.output or "not signed" in result.output
        assert not Path(made.target["BROKER_DATA_DIR"]).exists()


def test_a_backup_in_the_middle_of_a_key_rotation_restores_readable(
    tmp_path: Path, made: Made
) -> None:
    """An interrupted rotation leaves key files under the old and the new master key: the
    key copy holds both, and every restored version opens."""
    settings = Settings(data_dir=Path(made.env["BROKER_DATA_DIR"]))
    keyring = Keyring(settings.master_key_path)
    write_atomic(keyring.next_path, secrets.token_bytes(32))
    storage = ParquetStorage(settings.datasets_dir, keyring)
    path, context = next(iter(storage.key_files()))
    data_key = keyring.read_key_file(path, context)
    write_atomic(path, wrap_key(MasterKey(keyring.next_path.read_bytes()), data_key, context))
    backup, keys = tmp_path / "mid-backup", tmp_path / "mid-keys"
    result = cli(made.env, "backup", str(backup), "--keys", str(keys))
    assert result.exit_code == 0, result.output
    manifest = json.loads((backup / MANIFEST).read_text(encoding="utf-8"))
    assert len(manifest["master_key_ids"]) == 2
    assert (keys / "master.key.next").is_file()
    restored = cli(made.target, "restore", str(backup), "--keys", str(keys))
    assert restored.exit_code == 0, restored.output
    target = Settings(data_dir=Path(made.target["BROKER_DATA_DIR"]))
    opened = ParquetStorage(target.datasets_dir, Keyring(target.master_key_path))
    versions = list(target.datasets_dir.glob("*/v1.parquet.enc"))
    assert len(versions) == 4
    for version in versions:
        location = version.relative_to(target.datasets_dir).as_posix()
        assert opened.read(location).num_rows > 0


def _mounted_secrets(made: Made, tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """The broker's keys as production mounts them, outside the data directory (a Secret at
    /run/secrets/broker): master key, checkpoint key and its public half; the settings."""
    mounted = tmp_path / "run-secrets"
    mounted.mkdir()
    for name in ("master.key", "checkpoint-ed25519.pem"):
        (mounted / name).write_bytes((made.keys / name).read_bytes())
    source = Path(made.env["BROKER_DATA_DIR"]) / "keys" / "checkpoint-ed25519.pub"
    (mounted / "checkpoint-ed25519.pub").write_bytes(source.read_bytes())
    return mounted, {**made.target,
                     "BROKER_MASTER_KEY_FILE": str(mounted / "master.key"),
                     "BROKER_CHECKPOINT_KEY_FILE": str(mounted / "checkpoint-ed25519.pem")}


def test_a_restore_beside_keys_mounted_from_a_secret_store_uses_them(
        made: Made, tmp_path: Path) -> None:
    """The production layout (README, "Production"): the keys are mounted read-only outside
    the data directory before anything runs. The backup's copy of the checkpoint public key
    is the same file: a restore leaves it as it is instead of refusing."""
    mounted, env = _mounted_secrets(made, tmp_path)
    before = {p.name: p.read_bytes() for p in mounted.iterdir()}
    result = cli(env, "restore", str(made.backup))
    assert result.exit_code == 0, result.output
    assert "audit log verified" in result.output
    assert {p.name: p.read_bytes() for p in mounted.iterdir()} == before


def test_a_restore_beside_a_different_mounted_public_key_is_refused(
        made: Made, tmp_path: Path) -> None:
    mounted, env = _mounted_secrets(made, tmp_path)
    (mounted / "checkpoint-ed25519.pub").write_bytes(b"another key\n")
    result = cli(env, "restore", str(made.backup))
    assert result.exit_code == REFUSED, result.output
    assert "exists: a restore never overwrites" in result.output
    assert not Path(made.target["BROKER_DATA_DIR"]).exists()
    assert (mounted / "checkpoint-ed25519.pub").read_bytes() == b"another key\n"


def test_a_restore_fills_an_existing_empty_data_directory_in_place(made: Made) -> None:
    """A container's data directory is a mount point, which can be neither removed nor
    renamed over: the restore moves its files into the directory that is there."""
    target = Path(made.target["BROKER_DATA_DIR"])
    target.mkdir()
    inode = target.stat().st_ino
    result = cli(made.target, "restore", str(made.backup), "--keys", str(made.keys))
    assert result.exit_code == 0, result.output
    assert "audit log verified" in result.output
    assert target.stat().st_ino == inode
    assert (target / "broker.db").is_file()
    assert not [p for p in target.parent.iterdir() if p.name.startswith(".b.")]


def test_a_restore_that_fails_writing_a_file_leaves_the_database_empty_to_try_again(
        tmp_path: Path, postgres_server: PostgresServer) -> None:
    """The database is restored last: a restore that fails before it (here the checkpoint
    directory cannot be made) has restored nothing, as it says, and can simply be rerun."""
    source, target = (postgres_server.create_database("restore_src"),
                      postgres_server.create_database("restore_dst"))
    try:
        settings = Settings(data_dir=tmp_path / "a", database_url=postgres_server.url(source))
        with TestClient(create_app(settings)) as client:
            set_up(Broker(client, minter(settings)), generate_county(enterprises=150))
        env = {"BROKER_DATA_DIR": str(settings.data_dir),
               "BROKER_DATABASE_URL": postgres_server.url(source)}
        backup, keys = tmp_path / "backup", tmp_path / "keys"
        assert cli(env, "backup", str(backup), "--keys", str(keys)).exit_code == 0
        blocker = tmp_path / "not-a-directory"
        blocker.write_text("a file where the checkpoint directory would go")
        into = {"BROKER_DATA_DIR": str(tmp_path / "b"),
                "BROKER_DATABASE_URL": postgres_server.url(target)}
        failed = cli({**into, "BROKER_CHECKPOINT_DIR": str(blocker / "checkpoints")},
                     "restore", str(backup), "--keys", str(keys))
        assert failed.exit_code == 1, failed.output
        assert "nothing was restored" in failed.output
        assert not (tmp_path / "b").exists()
        again = cli({**into, "BROKER_CHECKPOINT_DIR": str(tmp_path / "checkpoints")},
                    "restore", str(backup), "--keys", str(keys))
        assert again.exit_code == 0, again.output
        assert "audit log verified" in again.output
    finally:
        postgres_server.drop_database(source)
        postgres_server.drop_database(target)


@pytest.mark.e2e
def test_a_restored_log_that_does_not_verify_is_undone_database_and_files(
        tmp_path: Path, postgres_server: PostgresServer) -> None:
    """A broker whose log was truncated behind its back (trigger disabled, last entries
    deleted, trigger enabled again) is backed up honestly; the restore's verification finds
    the truncation, and the restore is undone: no data directory, an empty database, so no
    broker can start on it; the same backup never becomes a running broker."""
    source, target = (postgres_server.create_database("truncated_src"),
                      postgres_server.create_database("truncated_dst"))
    try:
        settings = Settings(data_dir=tmp_path / "a", database_url=postgres_server.url(source))
        with TestClient(create_app(settings)) as client:
            set_up(Broker(client, minter(settings)), generate_county(enterprises=150))
        with psycopg.connect(postgres_server.conninfo(source), autocommit=True) as conn:
            conn.execute("ALTER TABLE audit_entries DISABLE TRIGGER audit_entries_append_only")
            conn.execute("DELETE FROM audit_entries WHERE seq > "
                         "(SELECT MAX(seq) - 3 FROM audit_entries)")
            conn.execute("ALTER TABLE audit_entries ENABLE TRIGGER audit_entries_append_only")
        env = {"BROKER_DATA_DIR": str(settings.data_dir),
               "BROKER_DATABASE_URL": postgres_server.url(source)}
        backup, keys = tmp_path / "backup", tmp_path / "keys"
        made = cli(env, "backup", str(backup), "--keys", str(keys))
        assert made.exit_code == 0, made.output
        into = {"BROKER_DATA_DIR": str(tmp_path / "b"),
                "BROKER_DATABASE_URL": postgres_server.url(target)}
        refused = cli(into, "restore", str(backup), "--keys", str(keys))
        assert refused.exit_code in range(3, 9), refused.output
        assert "BROKEN" in refused.output
        assert "restore was undone" in refused.output
        assert not (tmp_path / "b").exists()
        with psycopg.connect(postgres_server.conninfo(target)) as conn:
            left = conn.execute("SELECT count(*) FROM information_schema.tables WHERE "
                                "table_schema = 'public'").fetchone()
        assert left == (0,)
    finally:
        postgres_server.drop_database(source)
        postgres_server.drop_database(target)
