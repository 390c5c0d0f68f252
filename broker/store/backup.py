"""Backups of a running broker, and their restore on a fresh machine.

A backup is a directory: the database (SQLite's online backup API, or ``pg_dump --format=
custom`` inside an exported snapshot), the sealed dataset files that snapshot references with
their wrapped data keys, the wrapped key of the release cache, the checkpoint public key, the
signed checkpoints published outside the database, and ``manifest.json`` naming every file
with its size and SHA-256. It is built under a temporary name and renamed when whole, so a
half-made backup is never taken for a whole one.

The order makes it consistent while the broker runs. Checkpoints are copied first: each was
signed over a log the later database snapshot extends. Then the snapshot. Then the files it
references: dataset versions never change once written, and the indexes beside them only grow
(an entity the snapshot does not know is harmless in them); the county register is copied
last, so it numbers every entity the copied indexes hold. A shared lock on the master key's
lock file is held throughout, so no key rotation can re-wrap key files under our feet.

Secrets (master key, checkpoint signing key, JWT secret, pseudonym secret, custodial
organisation keys) go into the backup only when asked, to a separate directory that must not
be inside the backup, with a manifest of its own: whoever holds the backup alone holds sealed
files it cannot open. Nothing is ever decrypted here.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import os
import re
import shutil
import sqlite3
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import psycopg
import psycopg.sql
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from sqlalchemy.engine import URL, make_url

from audit import merkle
from broker import __version__
from broker.settings import Settings
from broker.store.keys import release_cache_key_path
from connectors.crypto import Keyring, MasterKey, SealError, fsync_dir, wrapping_key_id
from connectors.storage import KEY_FILE, SEALED

FORMAT = "broker-backup/1"
KEYS_FORMAT = "broker-backup-keys/1"
MANIFEST = "manifest.json"
#: Where things go inside a backup directory.
DB_SQLITE = "database/broker.db"
DB_POSTGRESQL = "database/broker.pgdump"
DATASETS = "datasets"
CHECKPOINTS = "checkpoints"
RELEASE_CACHE_KEY = "keys/release-cache.key"
CHECKPOINT_PUBKEY = "keys/checkpoint-ed25519.pub"
_REGISTER = "register.parquet" + SEALED
_INDEXES = ("entities.parquet" + SEALED, "atoms.parquet" + SEALED)
_CHUNK = 1 << 20
_TOOL_TIMEOUT = 3600
DatabaseKind = Literal["sqlite", "postgresql"]


class BackupError(Exception):
    """A backup or restore that cannot go on; the message says why and names no row value."""


class BackupRefused(BackupError):
    """The request itself is refused (a target in use, keys placed inside the backup):
    nothing was written."""


class BackupMismatch(BackupError):
    """A backup's files differ from its manifest (changed, missing, extra): nothing was
    restored."""


class KeyMissing(BackupError):
    """The master key that opens the backup's data keys is not at hand: nothing was
    restored."""


@dataclass(frozen=True, slots=True)
class FileEntry:
    """One file of a backup: its path (POSIX, relative), size and SHA-256."""

    path: str
    size: int
    sha256: str


@dataclass
class Manifest:
    """What a backup holds and what the log was at its snapshot."""

    database: DatabaseKind
    audit_size: int
    audit_root: str
    master_key_ids: list[str]
    created: str = ""
    broker_version: str = __version__
    files: list[FileEntry] = field(default_factory=list)
    format: str = FORMAT

    def as_json(self) -> dict[str, Any]:
        """The manifest document."""
        return {"format": self.format, "broker_version": self.broker_version,
                "created": self.created, "database": self.database,
                "audit": {"size": self.audit_size, "root": self.audit_root},
                "master_key_ids": self.master_key_ids,
                "files": [{"path": f.path, "size": f.size, "sha256": f.sha256}
                          for f in self.files]}

    @classmethod
    def from_json(cls, doc: Any) -> Manifest:
        """Parse a manifest; BackupError if it is not one this broker reads."""
        try:
            if doc["format"] != FORMAT:
                raise BackupError(f"not a backup of the format {FORMAT}")
            files = [FileEntry(_safe_relative(str(f["path"])), int(f["size"]),
                               str(f["sha256"])) for f in doc["files"]]
            kind = doc["database"]
            if kind not in ("sqlite", "postgresql"):
                raise BackupError("the manifest names an unknown database kind")
            return cls(database=kind, audit_size=int(doc["audit"]["size"]),
                       audit_root=str(doc["audit"]["root"]),
                       master_key_ids=[str(k) for k in doc["master_key_ids"]],
                       created=str(doc["created"]), broker_version=str(doc["broker_version"]),
                       files=files)
        except (KeyError, TypeError, ValueError) as exc:
            raise BackupError(f"the manifest is not readable: {exc}") from None


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What the database held at the snapshot: dataset locations and the audit log's head."""

    locations: list[str]
    audit_size: int
    audit_root: str


# -- secrets -------------------------------------------------------------------------------


def secret_files(settings: Settings) -> dict[str, Path]:
    """The secrets a ``--keys`` copy holds, by their name in it, at their place under
    ``settings`` (those that exist)."""
    keyring = Keyring(settings.master_key_path)
    named = {
        "master.key": settings.master_key_path,
        "master.key.next": keyring.next_path,
        "checkpoint-ed25519.pem": settings.checkpoint_key_path,
        "jwt-secret": settings.keys_dir / "jwt-secret",
        "pseudonym-secret": settings.keys_dir / "pseudonym-secret",
    }
    orgs = settings.keys_dir / "orgs"
    if orgs.is_dir():
        named |= {f"orgs/{p.name}": p for p in sorted(orgs.glob("*.ed25519.pem"))}
    return {name: path for name, path in named.items() if path.is_file()}


def _key_ids(paths: list[Path]) -> set[str]:
    """The ids of the master keys in ``paths`` (files of 32 bytes)."""
    ids = set()
    for path in paths:
        try:
            ids.add(_master_id(path.read_bytes()))
        except (OSError, ValueError):
            continue
    return ids


def _master_id(secret: bytes) -> str:
    return MasterKey(secret).id


# -- making a backup -----------------------------------------------------------------------


def make_backup(settings: Settings, target: Path, keys: Path | None = None) -> Manifest:
    """Write a whole backup of the broker under ``settings`` to ``target`` (which must not
    exist or be empty), and its secrets to ``keys`` when given (outside ``target``)."""
    target = target.absolute()
    keys = keys.absolute() if keys is not None else None
    if keys is not None and (_inside(keys, target) or _inside(target, keys)):
        raise BackupRefused("--keys must name a directory outside the backup directory "
                            "(and not around it): the keys open every sealed file, so they "
                            "are kept apart from it")
    _check_fresh_target(target, "the backup directory")
    if keys is not None:
        _check_fresh_target(keys, "the keys directory")
    kind = database_kind(settings.db_url)
    staging = _staging(target)
    key_staging = _staging(keys) if keys is not None else None
    keyring = Keyring(settings.master_key_path)
    keys_placed = False
    try:
        staging.mkdir(mode=0o700)
        with _no_rotation(keyring):
            manifest = _fill(settings, kind, staging, key_staging)
        _write_manifest(staging, sign_manifest(manifest.as_json(),
                                               settings.checkpoint_key_path))
        if key_staging is not None and keys is not None:
            os.replace(key_staging, keys)
            keys_placed = True
            fsync_dir(keys.parent)
        os.replace(staging, target)
        fsync_dir(target.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if key_staging is not None:
            shutil.rmtree(key_staging, ignore_errors=True)
        if keys_placed and keys is not None:  # no secrets without the backup they open
            shutil.rmtree(keys, ignore_errors=True)
        raise
    return manifest


def _fill(settings: Settings, kind: DatabaseKind, staging: Path,
          key_staging: Path | None) -> Manifest:
    files: list[FileEntry] = []

    def put(source: Path, name: str) -> Path:
        files.append(copy_file(source, staging / name, name))
        return staging / name

    if settings.checkpoints_path.is_dir():  # before the snapshot: every one is covered by it
        for path in sorted(settings.checkpoints_path.iterdir()):
            if path.is_file() and not path.name.startswith("."):
                put(path, f"{CHECKPOINTS}/{path.name}")
    (staging / "database").mkdir()
    if kind == "sqlite":
        snapshot = _snapshot_sqlite(_sqlite_path(settings.db_url), staging / DB_SQLITE)
        files.append(describe(staging / DB_SQLITE, DB_SQLITE))
    else:
        snapshot = _snapshot_postgresql(settings.db_url, staging / DB_POSTGRESQL)
        files.append(describe(staging / DB_POSTGRESQL, DB_POSTGRESQL))
    key_files = _copy_datasets(settings.datasets_dir, snapshot.locations, put)
    cache_key = release_cache_key_path(settings)
    if cache_key.is_file():
        key_files.append(put(cache_key, RELEASE_CACHE_KEY))
    pubkey = settings.checkpoint_key_path.with_suffix(".pub")
    if pubkey.is_file():
        put(pubkey, CHECKPOINT_PUBKEY)
    wrapped_under = set()
    for path in key_files:
        try:
            wrapped_under.add(wrapping_key_id(path.read_bytes()))
        except SealError:
            raise BackupError(f"{path.name} is not a key file this broker reads") from None
    if key_staging is not None:
        secrets = secret_files(settings)
        held = _key_ids([p for n, p in secrets.items() if n.startswith("master.key")])
        if not wrapped_under <= held:
            raise BackupError("some data keys are wrapped under a master key that is not in "
                              "the key directory: nothing was kept")
        _copy_secrets(secrets, key_staging)
    return Manifest(database=kind, audit_size=snapshot.audit_size,
                    audit_root=snapshot.audit_root, master_key_ids=sorted(wrapped_under),
                    created=datetime.now(UTC).isoformat(timespec="seconds"), files=files)


def _copy_datasets(root: Path, locations: list[str], put: Callable[[Path, str], Path]
                   ) -> list[Path]:
    """Copy every version the snapshot references and its key file, then the indexes of
    their datasets, then the register; the copied key files."""
    key_files: list[Path] = []
    directories: set[str] = set()

    def pair(sealed: str) -> None:
        key = sealed[: -len(SEALED)] + KEY_FILE
        for name in (sealed, key):
            if not (root / name).is_file():
                raise BackupError(f"the snapshot references {name}, which is missing from "
                                  f"{root}")
        put(root / sealed, f"{DATASETS}/{sealed}")
        key_files.append(put(root / key, f"{DATASETS}/{key}"))

    for location in sorted(set(locations)):
        rel = _safe_relative(location)
        if not rel.endswith(SEALED):
            raise BackupError("a dataset location is not a sealed file")
        pair(rel)
        directories.add(str(PurePosixPath(rel).parent))
    for directory in sorted(directories):
        for index in _INDEXES:
            if (root / directory / index).is_file():
                pair(f"{directory}/{index}")
    if locations and (root / _REGISTER).is_file():
        pair(_REGISTER)  # last: it numbers every entity of the indexes copied before it
    return key_files


def _copy_secrets(secrets: dict[str, Path], key_staging: Path) -> None:
    key_staging.mkdir(mode=0o700)
    entries = [copy_file(path, key_staging / name, name) for name, path in secrets.items()]
    _write_manifest(key_staging, {"format": KEYS_FORMAT,
                                  "files": [{"path": e.path, "size": e.size,
                                             "sha256": e.sha256} for e in entries]})


def _snapshot_sqlite(db: Path, out: Path) -> Snapshot:
    """A consistent copy of the SQLite file ``db`` by the online backup API (one step, so
    under one read transaction), as a single self-contained file."""
    if not db.is_file():
        raise BackupError(f"there is no database at {db}")
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(fd)
    source = sqlite3.connect(db, timeout=30)
    try:
        target = sqlite3.connect(out)
        try:
            source.backup(target)
            target.execute("PRAGMA journal_mode=DELETE")
            snapshot = _read_snapshot(target)
            target.commit()
        finally:
            target.close()
    except sqlite3.Error as exc:
        raise BackupError(f"the SQLite backup failed: {exc}") from exc
    finally:
        source.close()
    _fsync(out)
    return snapshot


def _read_snapshot(conn: sqlite3.Connection | psycopg.Connection[Any]) -> Snapshot:
    locations = [str(r[0]) for r in conn.execute("SELECT location FROM dataset_versions")]
    row = conn.execute("SELECT size, frontier FROM audit_head WHERE id = 1").fetchone()
    if row is None:
        raise BackupError("the database has no audit head: not a broker database")
    size, packed = int(row[0]), str(row[1])
    root = merkle.Frontier.from_bytes(size, bytes.fromhex(packed)).root().hex()
    return Snapshot(locations, size, root)


def _snapshot_postgresql(url: str, out: Path) -> Snapshot:
    """``pg_dump --format=custom`` inside a snapshot exported from a REPEATABLE READ
    transaction, from which the referenced locations and the audit head are read too."""
    conninfo, env = libpq(url)
    try:
        with psycopg.connect(conninfo, connect_timeout=10) as conn:
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            conn.read_only = True
            row = _one(conn.execute("SELECT pg_export_snapshot(), "
                                    "current_setting('server_version_num')::int").fetchone())
            snapshot_id, version = str(row[0]), int(row[1])
            snapshot = _read_snapshot(conn)
            pg_dump = postgres_tool("pg_dump", version // 10000)
            _run([str(pg_dump), "--format=custom", "--no-owner", "--no-privileges",
                  f"--snapshot={snapshot_id}", f"--file={out}", f"--dbname={conninfo}"],
                 env, "pg_dump")
            conn.rollback()
    except psycopg.Error as exc:
        raise BackupError(f"PostgreSQL: {type(exc).__name__}: {_first_line(exc)}") from exc
    os.chmod(out, 0o600)
    _fsync(out)
    return snapshot


# -- checking and restoring ----------------------------------------------------------------


def read_manifest(directory: Path, anchor: Ed25519PublicKey | None = None) -> Manifest:
    """The manifest of the backup in ``directory``, its signature checked: against
    ``anchor`` (the public half of the checkpoint key in a key copy), which must have signed
    it; else against the public key the backup holds, which catches accidents only."""
    doc = _load_json(directory / MANIFEST)
    if anchor is None:
        # A broker with a checkpoint key (whose public half the backup then holds) signs
        # every manifest: an unsigned one beside that public key was changed.
        holds_key = (directory / CHECKPOINT_PUBKEY).exists()
        if holds_key or (isinstance(doc, dict) and "signature" in doc):
            try:
                anchor = _public_key(directory / CHECKPOINT_PUBKEY)
            except (OSError, ValueError):
                raise BackupMismatch("the manifest is signed and the backup has no public "
                                     "key to check it with") from None
        _check_signature(doc, anchor, required=holds_key)
    else:
        _check_signature(doc, anchor, required=True)
    return Manifest.from_json(doc)


def sign_manifest(doc: dict[str, Any], key_path: Path) -> dict[str, Any]:
    """``doc`` with an Ed25519 signature by the checkpoint key (when it is here) over its
    canonical JSON: whoever holds that key's public half can tell the manifest, and so every
    file it lists, was written by this broker and not changed since."""
    if not key_path.is_file():
        return doc
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise BackupError(f"{key_path} does not hold an Ed25519 private key")
    public = key.public_key().public_bytes(serialization.Encoding.Raw,
                                           serialization.PublicFormat.Raw)
    return {**doc, "signature": {"alg": "Ed25519",
                                 "public_key": base64.b64encode(public).decode(),
                                 "value": base64.b64encode(key.sign(_signed_bytes(doc)))
                                 .decode()}}


def _signed_bytes(doc: dict[str, Any]) -> bytes:
    body = {k: v for k, v in doc.items() if k != "signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _check_signature(doc: Any, anchor: Ed25519PublicKey | None, *, required: bool) -> None:
    signature = doc.get("signature") if isinstance(doc, dict) else None
    if signature is None:
        if required:
            raise BackupMismatch("the manifest is not signed, and the key copy holds the "
                                 "checkpoint key that signs every backup it is given to")
        return
    if anchor is None:
        raise BackupMismatch("the manifest's signature cannot be checked")
    try:
        anchor.verify(base64.b64decode(signature["value"], validate=True),
                      _signed_bytes(doc))
    except (InvalidSignature, KeyError, TypeError, ValueError, binascii.Error):
        raise BackupMismatch("the manifest's signature does not verify under the checkpoint "
                             "key") from None


def _raw(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _public_key(path: Path) -> Ed25519PublicKey:
    """The Ed25519 public key of a PEM file holding the private or the public key."""
    data = path.read_bytes()
    if b"PRIVATE KEY" in data:
        private = serialization.load_pem_private_key(data, password=None)
        if not isinstance(private, Ed25519PrivateKey):
            raise ValueError("not an Ed25519 key")
        return private.public_key()
    public = serialization.load_pem_public_key(data)
    if not isinstance(public, Ed25519PublicKey):
        raise ValueError("not an Ed25519 key")
    return public


def check_files(directory: Path, listed: list[FileEntry]) -> None:
    """Every listed file is there with its size and SHA-256, and nothing else is (but the
    manifest); BackupMismatch names the first difference."""
    names = {f.path for f in listed}
    for path in sorted(directory.rglob("*")):
        if path.is_symlink() or not (path.is_file() or path.is_dir()):
            raise BackupMismatch(f"{path.relative_to(directory)} is not a plain file")
        rel = path.relative_to(directory).as_posix()
        if path.is_file() and rel != MANIFEST and rel not in names:
            raise BackupMismatch(f"{rel} is in the backup but not in its manifest")
    for entry in listed:
        path = directory / entry.path
        if not path.is_file():
            raise BackupMismatch(f"{entry.path} is missing")
        if path.stat().st_size != entry.size or _sha256(path) != entry.sha256:
            raise BackupMismatch(f"{entry.path} differs from the manifest (size or SHA-256)")


def read_keys(keys: Path) -> list[FileEntry]:
    """The files of a ``--keys`` copy, checked against its manifest."""
    doc = _load_json(keys / MANIFEST)
    try:
        if doc["format"] != KEYS_FORMAT:
            raise BackupError(f"{keys} is not a key copy of the format {KEYS_FORMAT}")
        listed = [FileEntry(_safe_relative(str(f["path"])), int(f["size"]), str(f["sha256"]))
                  for f in doc["files"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise BackupError(f"the keys' manifest is not readable: {exc}") from None
    check_files(keys, listed)
    return listed


@dataclass(frozen=True, slots=True)
class Restored:
    """What a restore wrote: the manifest it followed and whether keys came with it."""

    manifest: Manifest
    keys_restored: bool
    key_available: bool


def restore_backup(settings: Settings, source: Path, keys: Path | None = None, *,
                   without_key: bool = False,
                   check: Callable[[Manifest], None] | None = None) -> Restored:
    """Restore the backup in ``source`` (and the secrets in ``keys``) into the empty data
    directory and database of ``settings``; every file is checked first. ``check`` runs on
    the restored broker before the restore counts as done (the audit log's verification): if
    it raises, everything restored is removed again, the database emptied, and it re-raises."""
    secrets = read_keys(keys) if keys is not None else []
    anchor = None
    if keys is not None and any(f.path == "checkpoint-ed25519.pem" for f in secrets):
        try:
            anchor = _public_key(keys / "checkpoint-ed25519.pem")
        except ValueError:
            raise BackupMismatch("the key copy's checkpoint key is not an Ed25519 key") from None
    elif keys is None and settings.checkpoint_key_path.is_file():
        # the checkpoint key already in place (kept outside the data directory) signed every
        # backup this broker made: it is the anchor, not the public key the backup carries
        try:
            anchor = _public_key(settings.checkpoint_key_path)
        except ValueError:
            raise BackupMismatch(f"{settings.checkpoint_key_path} is not an Ed25519 "
                                 "key") from None
    manifest = read_manifest(source, anchor)
    check_files(source, manifest.files)
    if anchor is not None and (source / CHECKPOINT_PUBKEY).is_file() and (
            _raw(_public_key(source / CHECKPOINT_PUBKEY)) != _raw(anchor)):
        raise BackupMismatch("the backup's checkpoint public key is not the key copy's")
    kind = database_kind(settings.db_url)
    if kind != manifest.database:
        raise BackupRefused(f"the backup holds a {manifest.database} database and the "
                            f"configured one is {kind}; restore into a {manifest.database} "
                            "database")
    plan = _check_empty_targets(settings, kind,
                                _restore_plan(settings, manifest, source, secrets, keys))
    if keys is not None:
        masters = [keys / f.path for f in secrets if f.path.startswith("master.key")]
    else:
        masters = [settings.master_key_path, Keyring(settings.master_key_path).next_path]
    available = set(manifest.master_key_ids) <= _key_ids(masters)
    if not available and not without_key:
        where = "in the keys directory" if keys is not None else (
            f"at {settings.master_key_path}")
        raise KeyMissing(
            f"the master key that opens this backup's data keys is not {where}: the sealed "
            "datasets cannot be read without it. Pass --keys with the directory "
            "'broker backup --keys' wrote, or put the key in place first; or pass "
            "--without-key to restore data that stays unreadable until the key is restored")
    _apply(settings, kind, source, plan, None if check is None else lambda: check(manifest))
    return Restored(manifest, keys is not None, available)


@dataclass(frozen=True, slots=True)
class _Placement:
    origin: Path  # the backup or the keys directory
    name: str
    sha256: str
    target: Path
    secret: bool


def _restore_plan(settings: Settings, manifest: Manifest, source: Path,
                  secrets: list[FileEntry], keys: Path | None) -> list[_Placement]:
    """Where each file of the backup and of the key copy goes under ``settings``."""
    plan: list[_Placement] = []
    keys_dir = settings.keys_dir
    for entry in manifest.files:
        name = entry.path
        if name in (DB_SQLITE, DB_POSTGRESQL):
            if name == DB_SQLITE:
                plan.append(_Placement(source, name, entry.sha256,
                                       _sqlite_path(settings.db_url), False))
            continue
        if name.startswith(f"{DATASETS}/"):
            target = settings.datasets_dir / name.removeprefix(f"{DATASETS}/")
        elif name.startswith(f"{CHECKPOINTS}/"):
            target = settings.checkpoints_path / name.removeprefix(f"{CHECKPOINTS}/")
        elif name == RELEASE_CACHE_KEY:
            target = release_cache_key_path(settings)
        elif name == CHECKPOINT_PUBKEY:
            target = settings.checkpoint_key_path.with_suffix(".pub")
        else:
            raise BackupMismatch(f"{name} has no place in a restore")
        plan.append(_Placement(source, name, entry.sha256, target, False))
    places = {"master.key": settings.master_key_path,
              "master.key.next": Keyring(settings.master_key_path).next_path,
              "checkpoint-ed25519.pem": settings.checkpoint_key_path,
              "jwt-secret": keys_dir / "jwt-secret",
              "pseudonym-secret": keys_dir / "pseudonym-secret"}
    for entry in secrets if keys is not None else []:
        found = places.get(entry.path)
        if found is None and re.fullmatch(r"orgs/[a-z0-9][a-z0-9-]{1,62}\.ed25519\.pem",
                                          entry.path):
            found = keys_dir / entry.path
        if found is None or keys is None:
            raise BackupMismatch(f"{entry.path} in the keys directory has no place in a "
                                 "restore")
        plan.append(_Placement(keys, entry.path, entry.sha256, found, True))
    return plan


def _check_empty_targets(settings: Settings, kind: DatabaseKind,
                         plan: list[_Placement]) -> list[_Placement]:
    """Refuse unless every place a restore writes is free; the plan without the files that
    are already in place with the very same bytes (keys mounted from a secret store outside
    the data directory, such as the checkpoint key and its public half: nothing to write).
    A fresh ext4 volume's ``lost+found`` does not make the data directory non-empty."""
    data_dir = settings.data_dir.absolute()
    if data_dir.exists() and (not data_dir.is_dir() or any(
            child.name != "lost+found" for child in data_dir.iterdir())):
        raise BackupRefused(f"the data directory {data_dir} is not empty: a restore goes "
                            "into an empty one only (nothing was restored)")
    todo = []
    for placement in plan:
        if not placement.target.exists():
            todo.append(placement)
        elif not (placement.target.is_file()
                  and _sha256(placement.target) == placement.sha256):
            raise BackupRefused(f"{placement.target} exists: a restore never overwrites "
                                "(nothing was restored)")
        if placement.name == DB_SQLITE:
            # a journal left by an earlier database at that path would be replayed into the
            # restored one the first time it is opened
            for suffix in ("-wal", "-shm", "-journal"):
                stale = placement.target.with_name(placement.target.name + suffix)
                if stale.exists():
                    raise BackupRefused(f"{stale} exists, left by an earlier database: SQLite "
                                        "would apply it to the restored one; remove it "
                                        "(nothing was restored)")
    if kind == "postgresql":
        conninfo, _ = libpq(settings.db_url)
        try:
            with psycopg.connect(conninfo, connect_timeout=10) as conn:
                row = conn.execute(
                    "SELECT count(*) FROM information_schema.tables WHERE table_schema "
                    "NOT IN ('pg_catalog', 'information_schema')").fetchone()
        except psycopg.Error as exc:
            raise BackupError(f"PostgreSQL: {type(exc).__name__}: {_first_line(exc)}") from exc
        if row is None or int(row[0]):
            raise BackupRefused("the configured PostgreSQL database is not empty: a restore "
                                "goes into an empty one only (nothing was restored)")
    return todo


def _apply(settings: Settings, kind: DatabaseKind, source: Path,
           plan: list[_Placement], check: Callable[[], None] | None = None) -> None:
    """Copy into a staging directory beside the data directory (re-checking each file's
    SHA-256 as it is copied), write what lives outside the data directory (first: a place that
    cannot be written fails the restore before anything else is in place), move the staged
    files into the data directory, and restore the PostgreSQL database last (``pg_restore
    --single-transaction``: whole or not at all); undo every file on failure, so that "nothing
    was restored" holds and the same restore can be run again."""
    data_dir = settings.data_dir.absolute()
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = _staging(data_dir)
    outside: list[tuple[Path, _Placement]] = []
    written: list[Path] = []
    moved: list[Path] = []
    created = restoring = False
    try:
        staging.mkdir(mode=0o700)
        for placement in plan:
            target = placement.target.absolute()
            if _inside(target, data_dir):
                dest = staging / target.relative_to(data_dir)
                _copy_checked(placement.origin / placement.name, dest, placement)
            else:
                outside.append((target, placement))
        # the files outside the data directory first: a place that cannot be written fails
        # the restore before the data directory and the database are in place
        for target, placement in outside:
            _copy_checked(placement.origin / placement.name, target, placement)
            written.append(target)
        if data_dir.exists():
            # Empty, as checked, and often a mount point (a container's volume), which can
            # be neither removed nor renamed over: what the staging directory holds moves in.
            for child in sorted(staging.iterdir()):
                os.replace(child, data_dir / child.name)
                moved.append(data_dir / child.name)
            staging.rmdir()
            fsync_dir(data_dir)
        else:
            os.replace(staging, data_dir)
            created = True
            fsync_dir(data_dir.parent)
        if kind == "postgresql":
            restoring = True
            _pg_restore(settings.db_url, source / DB_POSTGRESQL)
        if check is not None:
            check()
    except BaseException:
        if restoring:  # restored whole (one transaction) or not at all: empty it again
            _pg_clear(settings.db_url)
        shutil.rmtree(staging, ignore_errors=True)
        if created:
            shutil.rmtree(data_dir, ignore_errors=True)
        for path in moved:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        for path in written:
            path.unlink(missing_ok=True)
        raise


def _copy_checked(source: Path, dest: Path, placement: _Placement) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        entry = copy_file(source, dest, placement.name)
    except FileExistsError:  # someone else's file: never removed
        raise
    except BaseException:
        dest.unlink(missing_ok=True)  # no partial copy left behind
        raise
    if entry.sha256 != placement.sha256:
        dest.unlink(missing_ok=True)
        raise BackupMismatch(f"{placement.name} changed while it was restored")


def _pg_restore(url: str, dump: Path) -> None:
    conninfo, env = libpq(url)
    try:
        with psycopg.connect(conninfo, connect_timeout=10) as conn:
            row = _one(conn.execute(
                "SELECT current_setting('server_version_num')::int").fetchone())
    except psycopg.Error as exc:
        raise BackupError(f"PostgreSQL: {type(exc).__name__}: {_first_line(exc)}") from exc
    tool = postgres_tool("pg_restore", int(row[0]) // 10000)
    _run([str(tool), "--single-transaction", "--exit-on-error", "--no-owner",
          "--no-privileges", f"--dbname={conninfo}", str(dump)], env, "pg_restore")


def _pg_clear(url: str) -> None:
    """Empty the database a restore filled (it was empty before): drop what the dump made in
    the public schema, tables (with their sequences and triggers) and functions."""
    conninfo, _ = libpq(url)
    with psycopg.connect(conninfo, connect_timeout=10) as conn:
        tables = [r[0] for r in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
        for table in tables:
            conn.execute(psycopg.sql.SQL("DROP TABLE IF EXISTS {} CASCADE").format(
                psycopg.sql.Identifier("public", table)))
        functions = [r[0] for r in conn.execute(
            "SELECT p.oid::regprocedure::text FROM pg_proc p JOIN pg_namespace n "
            "ON n.oid = p.pronamespace WHERE n.nspname = 'public'")]
        for function in functions:
            conn.execute(psycopg.sql.SQL("DROP FUNCTION IF EXISTS {} CASCADE").format(
                psycopg.sql.SQL(function)))


# -- PostgreSQL tools ----------------------------------------------------------------------


def libpq(url: str) -> tuple[str, dict[str, str]]:
    """A libpq URI for the SQLAlchemy ``url`` without its password, and the environment that
    carries the password (never on a command line, where ``ps`` shows it)."""
    parsed: URL = make_url(url)
    env = {**os.environ}
    if parsed.password:
        env["PGPASSWORD"] = str(parsed.password)
    bare = parsed.set(drivername="postgresql", password=None)
    return bare.render_as_string(hide_password=False), env


def postgres_tool(name: str, major: int) -> Path:
    """``name`` (pg_dump, pg_restore) of the server's major version, or the nearest newer one
    (a newer client reads an older server; never the reverse): Debian's
    ``/usr/lib/postgresql/<major>/bin`` first, then the one on PATH."""
    found: list[tuple[int, Path]] = []
    for candidate in Path("/usr/lib/postgresql").glob(f"*/bin/{name}"):
        version = candidate.parent.parent.name.split(".")[0]
        if version.isdigit() and int(version) >= major:
            found.append((int(version), candidate))
    on_path = shutil.which(name)
    if on_path:
        with contextlib.suppress(OSError, subprocess.SubprocessError, ValueError):
            out = subprocess.run([on_path, "--version"],  # noqa: S603 (a found tool)
                                 capture_output=True, text=True, timeout=30, check=True).stdout
            version_match = re.search(r"(\d+)(?:\.\d+)?", out)
            if version_match and int(version_match.group(1)) >= major:
                found.append((int(version_match.group(1)), Path(on_path)))
    if not found:
        raise BackupError(f"no {name} of PostgreSQL {major} or newer (install "
                          f"postgresql-client-{major})")
    return min(found, key=lambda f: f[0])[1]


def _run(command: list[str], env: dict[str, str], tool: str) -> None:
    """Run a PostgreSQL tool; its messages are not repeated (they may quote row values)."""
    try:
        done = subprocess.run(command, env=env,  # noqa: S603 (a found tool, our arguments)
                              capture_output=True, timeout=_TOOL_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BackupError(f"{tool} could not run: {type(exc).__name__}") from exc
    if done.returncode != 0:
        raise BackupError(f"{tool} failed (exit {done.returncode}); its messages are not shown "
                          f"because they may quote data: run {tool} by hand to see them")


# -- files ---------------------------------------------------------------------------------


def database_kind(url: str) -> DatabaseKind:
    """``sqlite`` or ``postgresql``; BackupError for any other database."""
    backend = make_url(url).get_backend_name()
    if backend == "sqlite":
        return "sqlite"
    if backend == "postgresql":
        return "postgresql"
    raise BackupError(f"no backup for {backend} databases")


def _sqlite_path(url: str) -> Path:
    database = make_url(url).database
    if not database or database == ":memory:" or make_url(url).query.get("uri"):
        raise BackupError("only a SQLite database in a file can be backed up or restored")
    return Path(database).absolute()


def copy_file(source: Path, dest: Path, name: str) -> FileEntry:
    """Copy ``source`` to the new file ``dest`` (mode 0600, fsynced), hashing as it goes."""
    dest.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    digest = hashlib.sha256()
    size = 0
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with source.open("rb") as src, os.fdopen(fd, "wb") as out:
        while chunk := src.read(_CHUNK):
            digest.update(chunk)
            out.write(chunk)
            size += len(chunk)
        out.flush()
        os.fsync(out.fileno())
    return FileEntry(name, size, digest.hexdigest())


def describe(path: Path, name: str) -> FileEntry:
    """A file's entry as it is now."""
    return FileEntry(name, path.stat().st_size, _sha256(path))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_manifest(directory: Path, doc: dict[str, Any]) -> None:
    path = directory / MANIFEST
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(doc, fh, indent=1, sort_keys=True)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    for sub in sorted({p.parent for p in directory.rglob("*") if p.is_file()}):
        fsync_dir(sub)


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BackupError(f"{path} is missing: not a whole backup (or key copy)") from None
    except (OSError, ValueError) as exc:
        raise BackupError(f"{path} is not readable: {type(exc).__name__}") from None


def _safe_relative(name: str) -> str:
    """``name`` if it is a plain relative POSIX path inside its directory."""
    pure = PurePosixPath(name)
    if (not name or pure.is_absolute() or ".." in pure.parts or "\\" in name
            or pure.as_posix() != name):
        raise BackupError("a path in the manifest leaves the backup")
    return name


def _check_fresh_target(path: Path, what: str) -> None:
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise BackupRefused(f"{what} {path} exists and is not empty")
    path.parent.mkdir(parents=True, exist_ok=True)


def _staging(path: Path) -> Path:
    return path.parent / f".{path.name}.partial-{uuid.uuid4().hex[:12]}"


def _inside(path: Path, directory: Path) -> bool:
    resolved, base = path.resolve(), directory.resolve()
    return resolved == base or resolved.is_relative_to(base)


@contextlib.contextmanager
def _no_rotation(keyring: Keyring) -> Iterator[None]:
    """Hold off ``broker keys rotate`` (which needs the lock exclusively) for the block."""
    if not keyring.path.is_file():  # no key, no key files to re-wrap
        yield
        return
    with keyring.writing():
        yield


def _one(row: tuple[Any, ...] | None) -> tuple[Any, ...]:
    if row is None:
        raise BackupError("PostgreSQL answered no row")
    return row


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:200]
