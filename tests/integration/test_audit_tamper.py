"""An insider's edits to a real audit log, and what ``broker audit verify`` says about them.

Every case starts from a SQLite database written by real broker use (organisations, an upload,
a contract, allowed and denied queries, proofs) with signed checkpoints in the database and
copied to the directory outside it. The edits are the ones a database administrator can make
(``broker.demo.tamper``, or plain SQL and a text editor on an export); the verdict comes from
the CLI, through Typer's runner, given only the key the broker publishes at GET /v1/audit/key.
Each test pins the exit code, the fault kind of the ``--json`` report and, where the kind can
name one, the first entry that is not what the log committed to.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import rfc8785
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import SecretStr
from sqlalchemy import Connection, create_engine, text
from typer.testing import CliRunner, Result

from audit.checkpoint import Checkpoint, NoteSigner
from broker.cli import app
from broker.demo import tamper
from broker.settings import Settings
from broker.store.keys import checkpoint_signer
from tests.conftest import SECRET, World, assert_problem, auth

runner = CliRunner()

EXIT = {"bad-entry": 3, "gap": 4, "reorder": 5, "rollback": 6, "fork": 7, "bad-checkpoint": 8,
        "unsigned-tail": 9}
GENESIS = "0" * 64

T = TypeVar("T")


# --- settings: the conftest's, and one that signs a checkpoint at nearly every entry ---------


@pytest.fixture
def settings(tmp_path: Path, request: pytest.FixtureRequest) -> Settings:
    """The conftest's settings; ``frequent`` (indirect parameter) signs checkpoints as often as
    the checkpointer thread can (every entry, polled every 20 ms)."""
    cadence = getattr(request, "param", "default")
    extra: dict[str, Any] = {}
    if cadence == "frequent":
        extra = {"checkpoint_every_entries": 1, "checkpoint_every_seconds": 0.02}
    made = Settings(data_dir=tmp_path / "var", jwt_secret=SecretStr(SECRET),
                    max_upload_bytes=2_000_000, **extra)
    if cadence == "plus-key":
        _install_plus_key(made.checkpoint_key_path)
    return made


def _install_plus_key(path: Path) -> None:
    """A checkpoint key whose verifier key string holds "+" and "/" in its base64 part (the
    separator of the vkey's fields is "+" too)."""
    while True:
        key = Ed25519PrivateKey.generate()
        raw = key.public_key().public_bytes(serialization.Encoding.Raw,
                                            serialization.PublicFormat.Raw)
        encoded = base64.b64encode(b"\x01" + raw).decode()
        if "+" in encoded and "/" in encoded:
            break
    path.parent.mkdir(parents=True)
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)


BOTH_CADENCES = pytest.mark.parametrize("settings", ["default", "frequent"], indirect=True)
ALL_SETTINGS = pytest.mark.parametrize("settings", ["default", "frequent", "plus-key"],
                                       indirect=True)


def cli_env(settings: Settings) -> dict[str, str]:
    """The BROKER_ environment that makes the CLI read the fixture's settings."""
    return {
        "BROKER_DATA_DIR": str(settings.data_dir),
        "BROKER_JWT_SECRET": SECRET,
        "BROKER_MAX_UPLOAD_BYTES": str(settings.max_upload_bytes),
        "BROKER_CHECKPOINT_EVERY_ENTRIES": str(settings.checkpoint_every_entries),
        "BROKER_CHECKPOINT_EVERY_SECONDS": str(settings.checkpoint_every_seconds),
    }


def cli(settings: Settings, *args: str, env: dict[str, str] | None = None) -> Result:
    """Run ``broker ARGS`` with the fixture's settings (plus ``env``)."""
    return runner.invoke(app, list(args), env={**cli_env(settings), **(env or {})})


def verify(settings: Settings, *args: str) -> tuple[int, dict[str, Any]]:
    """``broker audit verify ARGS --json``: the exit code and the JSON report."""
    result = cli(settings, "audit", "verify", *args, "--json")
    assert result.exit_code not in (1, 2), result.output  # unreadable input or a usage error
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1, result.output
    report: dict[str, Any] = json.loads(lines[0])
    return result.exit_code, report


def assert_fault(outcome: tuple[int, dict[str, Any]], kind: str, seq: int | None) -> None:
    """The verdict is ``kind`` (its exit code) at entry ``seq`` (None: not checked)."""
    code, report = outcome
    assert report["valid"] is False, report
    assert report["kind"] == kind, report
    assert code == EXIT[kind], (code, report)
    if seq is not None:
        assert report["first_bad_seq"] == seq, report


def assert_valid(outcome: tuple[int, dict[str, Any]], size: int) -> None:
    code, report = outcome
    assert (code, report["valid"], report["size"]) == (0, True, size), report
    assert "kind" not in report


# --- a log made by real use -------------------------------------------------------------------


@dataclass
class Log:
    """A broker database after real use, the published key, and where its checkpoints are."""

    world: World
    settings: Settings
    vkey: Path
    pem: Path
    victim: int  # an entry in the middle (the first allowed query)

    @property
    def url(self) -> str:
        return self.settings.db_url

    @property
    def db_path(self) -> Path:
        return self.settings.data_dir / "broker.db"

    @property
    def outside(self) -> Path:
        return self.settings.checkpoints_path

    def size(self) -> int:
        with sqlite3.connect(self.db_path) as conn:
            return int(conn.execute("SELECT size FROM audit_head").fetchone()[0])

    def db_checkpoints(self) -> list[int]:
        with sqlite3.connect(self.db_path) as conn:
            return [r[0] for r in conn.execute(
                "SELECT size FROM audit_checkpoints ORDER BY size")]

    def outside_checkpoints(self) -> list[int]:
        return sorted(int(p.stem) for p in self.outside.glob("*.checkpoint"))

    def outside_note(self, size: int) -> str:
        return (self.outside / f"{size:020d}.checkpoint").read_text(encoding="utf-8")

    def tamper(self, attack: Callable[[Connection], object]) -> None:
        """Edit the database as an administrator does: drop the triggers, then plain SQL."""
        _tamper_at(self.url, attack)

    def backup(self, path: Path) -> str:
        """A copy of the database, at ``path``; its URL."""
        with sqlite3.connect(self.db_path) as source, sqlite3.connect(path) as target:
            source.backup(target)
        return f"sqlite:///{path}"


def _tamper_at(url: str, attack: Callable[[Connection], T]) -> T:
    """Edit the database at ``url`` as an administrator does: drop the triggers, then plain
    SQL, then put the triggers back as they were (or the broker would not start on it);
    what ``attack`` returns."""
    engine = create_engine(url)
    with engine.begin() as conn:
        tamper.disarm(conn)
        found = attack(conn)
        tamper.rearm(conn)
    engine.dispose()
    return found


def _queries(world: World, n: int, start: int = 0) -> list[int]:
    """``n`` different allowed aggregate queries by econ; their receipts' seqs."""
    variants: list[dict[str, Any]] = [
        {"group_by": ["town"]},
        {"group_by": ["town"], "measures": [{"fn": "count"}, {"fn": "sum", "field": "kwh"}]},
        {"measures": [{"fn": "count"}]},
        {"group_by": ["town"], "measures": [{"fn": "mean", "field": "kwh"}]},
        {"filters": [{"field": "town", "op": "in", "value": ["A"]}]},
        {"measures": [{"fn": "sum", "field": "kwh"}]},
    ]
    seqs = []
    for i in range(start, start + n):
        r = world.query(**variants[i % len(variants)])
        assert r.status_code == 200, r.text
        seqs.append(r.json()["receipt"]["seq"])
    return seqs


def _sign_now(settings: Settings) -> str:
    result = cli(settings, "audit", "checkpoint")
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.fixture
def log(world: World, settings: Settings, tmp_path: Path) -> Log:
    """Real use with checkpoints signed by the CLI, by a consumer's proof request and (with
    ``frequent``) by the checkpointer thread; the thread is stopped before anything is edited,
    so that what verification sees does not depend on its timing."""
    c = world.client
    key = c.get("/v1/audit/key")  # no token: the key is public
    assert key.status_code == 200, key.text
    vkey, pem = tmp_path / "log.vkey", tmp_path / "log.pem"
    vkey.write_text(key.json()["vkey"] + "\n", encoding="utf-8")
    pem.write_text(key.json()["public_key_pem"], encoding="utf-8")

    first = _queries(world, 1)[0]
    denied = world.query(token=world.env)  # env holds no contract: refused and audited
    assert denied.status_code == 403, denied.text
    _queries(world, 2, start=1)
    _sign_now(settings)  # checkpoint by `broker audit checkpoint`
    receipt = _queries(world, 2, start=3)[-1]
    proof = c.get(f"/v1/audit/entries/{receipt}/proof", headers=auth(world.econ))
    assert proof.status_code == 200, proof.text  # signs a checkpoint covering the receipt
    _queries(world, 2, start=5)
    _sign_now(settings)
    _queries(world, 2, start=7)  # an uncovered tail (with the default cadence)
    if settings.checkpoint_every_seconds < 1:
        c.app.state.container.checkpointer.stop()  # type: ignore[attr-defined]
    built = Log(world, settings, vkey, pem, victim=first)
    assert built.outside_checkpoints() == built.db_checkpoints()
    assert len(built.outside_checkpoints()) >= 3
    assert built.size() >= 19
    return built


# --- a valid log ------------------------------------------------------------------------------


@ALL_SETTINGS
def test_a_valid_log_verifies_with_the_published_key(log: Log) -> None:
    size = log.size()
    sizes = set(log.outside_checkpoints())
    for extra in ([], ["--deep"]):
        code, report = verify(log.settings, "--pubkey", str(log.vkey), *extra)
        assert_valid((code, report), size)
        assert report["checkpoints_checked"] == len(sizes)
        assert report["latest_checkpoint"] == max(sizes)
    assert_valid(verify(log.settings, "--pubkey", str(log.pem)), size)
    assert_valid(verify(log.settings, "--db", log.url, "--pubkey", str(log.vkey), "--deep"), size)
    # the root is the one the latest checkpoint signed when the log was that size
    if max(sizes) == size:
        note_root = log.outside_note(size).split("\n")[2]
        _, report = verify(log.settings, "--pubkey", str(log.vkey))
        assert base64.b64decode(note_root).hex() == report["root"]


def test_the_wrong_key_is_not_a_valid_log(log: Log, tmp_path: Path) -> None:
    other = NoteSigner(log.settings.audit_origin, Ed25519PrivateKey.generate())
    wrong = tmp_path / "wrong.vkey"
    wrong.write_text(other.verifier.vkey, encoding="utf-8")
    assert_fault(verify(log.settings, "--pubkey", str(wrong)), "bad-checkpoint", None)


# --- one changed byte -------------------------------------------------------------------------


@BOTH_CADENCES
def test_a_flipped_byte_in_an_entry_body_is_named(log: Log) -> None:
    log.tamper(lambda c: tamper.flip_byte(c, log.victim))
    for key in (log.vkey, log.pem):
        outcome = verify(log.settings, "--pubkey", str(key))
        assert_fault(outcome, "bad-entry", log.victim)
        assert outcome[1]["reason"] == "leaf-hash-mismatch"
    assert_fault(verify(log.settings, "--db", log.url, "--pubkey", str(log.vkey)), "bad-entry",
                 log.victim)


def test_a_flipped_byte_in_the_stored_leaf_hash_is_named(log: Log) -> None:
    def flip_leaf(conn: Connection) -> None:
        leaf = conn.execute(text("SELECT leaf_hash FROM audit_entries WHERE seq = :s"),
                            {"s": log.victim}).scalar_one()
        forged = leaf[:10] + ("0" if leaf[10] != "0" else "1") + leaf[11:]
        conn.execute(text("UPDATE audit_entries SET leaf_hash = :l WHERE seq = :s"),
                     {"l": forged, "s": log.victim})

    log.tamper(flip_leaf)
    outcome = verify(log.settings, "--pubkey", str(log.vkey))
    assert_fault(outcome, "bad-entry", log.victim)
    assert outcome[1]["reason"] == "leaf-hash-mismatch"


def _rehash_row(conn: Connection, seq: int, edit: Callable[[dict[str, Any]], None]) -> None:
    """Edit entry ``seq`` and store its new canonical bytes with a recomputed leaf hash."""
    body = conn.execute(text("SELECT body FROM audit_entries WHERE seq = :s"),
                        {"s": seq}).scalar_one()
    entry = json.loads(body)
    edit(entry)
    raw = rfc8785.dumps(entry)
    conn.execute(text("UPDATE audit_entries SET body = :b, leaf_hash = :l WHERE seq = :s"),
                 {"b": raw.decode(), "l": hashlib.sha256(b"\x00" + raw).hexdigest(), "s": seq})


def test_a_changed_entry_with_its_leaf_hash_recomputed_is_named(log: Log) -> None:
    log.tamper(lambda c: _rehash_row(c, log.victim, lambda e: e.update(purpose="forged")))
    outcome = verify(log.settings, "--db", log.url, "--pubkey", str(log.vkey))
    assert_fault(outcome, "bad-entry", log.victim)  # entry victim+1 no longer chains to it
    assert outcome[1]["reason"] == "prev-hash-mismatch"


def test_a_changed_last_entry_with_its_leaf_hash_recomputed_is_named(log: Log) -> None:
    last = log.size()
    log.tamper(lambda c: _rehash_row(c, last, lambda e: e.update(purpose="forged")))
    outcome = verify(log.settings, "--db", log.url, "--pubkey", str(log.vkey))
    assert_fault(outcome, "bad-entry", last)  # nothing chains to it, but the head row does
    assert outcome[1]["reason"] == "head-mismatch"


# --- rows removed or moved --------------------------------------------------------------------


@BOTH_CADENCES
def test_a_deleted_row_is_a_gap_at_its_seq(log: Log) -> None:
    log.tamper(lambda c: tamper.delete_entry(c, log.victim))
    outcome = verify(log.settings, "--pubkey", str(log.vkey))
    assert_fault(outcome, "gap", log.victim)
    assert outcome[1]["reason"] == "seq-gap"
    assert_fault(verify(log.settings, "--db", log.url, "--pubkey", str(log.pem)), "gap",
                 log.victim)


@BOTH_CADENCES
def test_swapped_rows_are_a_reorder_at_the_first_position(log: Log) -> None:
    log.tamper(lambda c: tamper.swap_entries(c, log.victim, log.victim + 1))
    assert_fault(verify(log.settings, "--pubkey", str(log.vkey)), "reorder", log.victim)
    assert_fault(verify(log.settings, "--db", log.url, "--pubkey", str(log.pem)), "reorder",
                 log.victim)


def test_swapped_rows_far_apart_are_a_reorder(log: Log) -> None:
    log.tamper(lambda c: tamper.swap_entries(c, 2, log.size() - 1))
    assert_fault(verify(log.settings, "--pubkey", str(log.vkey)), "reorder", 2)


# --- rows added, the head and the stored tree -------------------------------------------------


def test_an_entry_appended_behind_the_heads_back_is_named(log: Log) -> None:
    """A forged entry that chains correctly to the last one, written without the head."""
    size = log.size()

    def append(conn: Connection) -> None:
        last = conn.execute(text("SELECT body, leaf_hash FROM audit_entries WHERE seq = :s"),
                            {"s": size}).one()
        entry = json.loads(last[0])
        entry.update(seq=size + 1, prev_hash=last[1], purpose="forged")
        raw = rfc8785.dumps(entry)
        conn.execute(text("INSERT INTO audit_entries (seq, body, leaf_hash, prev_hash) "
                          "VALUES (:s, :b, :l, :p)"),
                     {"s": size + 1, "b": raw.decode(), "p": last[1],
                      "l": hashlib.sha256(b"\x00" + raw).hexdigest()})

    log.tamper(append)
    outcome = verify(log.settings, "--pubkey", str(log.vkey))
    assert_fault(outcome, "bad-entry", size + 1)
    assert outcome[1]["reason"] == "entry-beyond-head"


def test_a_head_frontier_that_is_not_the_logs_is_a_fork(log: Log) -> None:
    def flip_frontier(conn: Connection) -> None:
        packed = conn.execute(text("SELECT frontier FROM audit_head")).scalar_one()
        conn.execute(text("UPDATE audit_head SET frontier = :f"),
                     {"f": ("0" if packed[0] != "0" else "1") + packed[1:]})

    log.tamper(flip_frontier)
    outcome = verify(log.settings, "--db", log.url, "--pubkey", str(log.vkey))
    assert_fault(outcome, "fork", log.size())
    assert outcome[1]["reason"] == "head-frontier-mismatch"


def test_a_damaged_stored_tree_node_is_reported_by_verify(log: Log) -> None:
    """A proof request on a damaged node table answers 503 "run broker audit verify"; verify
    must then not call the log valid."""
    def flip_node(conn: Connection) -> None:
        conn.execute(text("UPDATE audit_nodes SET hash = :h WHERE level = 1 AND idx = 1"),
                     {"h": "ab" * 32})

    log.tamper(flip_node)
    r = log.world.client.get("/v1/audit/entries/1/proof", headers=auth(log.world.auditor))
    assert r.status_code == 503, r.text
    assert "broker audit verify" in r.json()["detail"]
    for extra in ([], ["--deep"]):
        code, report = verify(log.settings, "--pubkey", str(log.vkey), *extra)
        assert report["valid"] is False, report
        assert code == EXIT[report["kind"]]


@BOTH_CADENCES
def test_an_emptied_log_is_a_rollback_to_nothing(log: Log) -> None:
    log.tamper(lambda c: tamper.truncate(c, 0))
    assert_valid(verify(log.settings, "--db", log.url, "--pubkey", str(log.vkey)), 0)
    outcome = verify(log.settings, "--pubkey", str(log.vkey))
    assert_fault(outcome, "rollback", 1)


# --- a truncated tail -------------------------------------------------------------------------


def _keep(log: Log) -> int:
    """How many entries a truncation keeps: fewer than the largest signed checkpoint."""
    keep = max(log.outside_checkpoints()) - 2
    assert keep > log.victim
    return keep


def test_deleting_the_tail_rows_alone_is_a_rollback_against_the_head(log: Log) -> None:
    keep = _keep(log)
    log.tamper(lambda c: c.execute(text("DELETE FROM audit_entries WHERE seq > :k"),
                                   {"k": keep}))
    outcome = verify(log.settings, "--db", log.url, "--pubkey", str(log.vkey))
    assert_fault(outcome, "rollback", keep + 1)


def test_a_truncation_that_leaves_the_checkpoints_is_a_rollback(log: Log) -> None:
    keep = _keep(log)
    log.tamper(lambda c: tamper.truncate(c, keep, drop_checkpoints=False))
    outcome = verify(log.settings, "--db", log.url, "--pubkey", str(log.vkey))
    assert_fault(outcome, "rollback", keep + 1)
    assert outcome[1]["reason"] == "log-shorter-than-checkpoint"


@ALL_SETTINGS
def test_a_careful_truncation_is_caught_only_by_checkpoints_kept_outside(
    log: Log, tmp_path: Path
) -> None:
    keep = _keep(log)
    trusted = tmp_path / "trusted.checkpoint"  # what an auditor saved from an earlier visit
    trusted.write_text(log.outside_note(max(log.outside_checkpoints())), encoding="utf-8")
    log.tamper(lambda c: tamper.truncate(c, keep))
    assert max(log.db_checkpoints()) <= keep

    # the database alone is self-consistent again: entries, nodes, head and its checkpoints
    assert_valid(verify(log.settings, "--db", log.url, "--pubkey", str(log.vkey)), keep)
    assert_valid(verify(log.settings, "--db", log.url, "--pubkey", str(log.vkey), "--deep"),
                 keep)

    # the copies outside the database, the default for the configured database
    for key in (log.vkey, log.pem):
        outcome = verify(log.settings, "--pubkey", str(key))
        assert_fault(outcome, "rollback", keep + 1)
        assert outcome[1]["reason"] == "log-shorter-than-checkpoint"
    assert_fault(verify(log.settings, "--db", log.url, "--pubkey", str(log.vkey),
                        "--checkpoints", str(log.outside)), "rollback", keep + 1)
    # a checkpoint the auditor already held
    assert_fault(verify(log.settings, "--db", log.url, "--pubkey", str(log.vkey),
                        "--trusted", str(trusted)), "rollback", keep + 1)


def test_the_broker_does_not_overwrite_outside_evidence_after_a_truncation(log: Log) -> None:
    """A truncated log that grows back to a signed size: the broker refuses to sign it again,
    and the copy outside the database keeps the checkpoint of the first history."""
    sizes = log.outside_checkpoints()
    top = max(sizes)
    keep = max(s for s in sizes if s < top) + 1  # no other outside checkpoint in (keep, top)
    assert keep < top
    log.tamper(lambda c: tamper.truncate(c, keep))
    while log.size() < top:  # the broker keeps serving: new entries refill the positions
        r = log.world.client.get("/v1/audit/entries", headers=auth(log.world.auditor),
                                 params={"limit": 1})
        assert r.status_code == 200, r.text
    assert log.size() == top
    # the broker refuses to sign a second history of size `top` over the published one
    refused = cli(log.settings, "audit", "checkpoint")
    assert refused.exit_code == 1
    assert "does not extend its signed checkpoints" in refused.output
    outcome = verify(log.settings, "--pubkey", str(log.vkey))
    assert_fault(outcome, "fork", None)
    # pinned between the last checkpoint that still matches and the one that does not
    assert keep - 1 < outcome[1]["first_bad_seq"] <= top, outcome


# --- a full rewrite with every hash recomputed ------------------------------------------------


def _rewrite_victim(log: Log) -> int:
    """An entry right after a signed checkpoint, and before a later one."""
    sizes = log.outside_checkpoints()
    victim = sizes[-2] + 1
    assert victim <= sizes[-1]
    return victim


@ALL_SETTINGS
def test_a_rewrite_with_every_hash_recomputed_is_a_fork(log: Log, tmp_path: Path) -> None:
    victim = _rewrite_victim(log)
    trusted = tmp_path / "trusted.checkpoint"
    trusted.write_text(log.outside_note(max(log.outside_checkpoints())), encoding="utf-8")
    log.tamper(lambda c: tamper.rewrite(c, victim))
    size = log.size()

    # alone, the rewritten database is self-consistent: nothing but a signature can tell
    assert_valid(verify(log.settings, "--db", log.url, "--pubkey", str(log.vkey), "--deep"),
                 size)

    for key in (log.vkey, log.pem):
        outcome = verify(log.settings, "--pubkey", str(key))
        assert_fault(outcome, "fork", victim)
        assert outcome[1]["reason"] == "checkpoint-root-mismatch"
    assert_fault(verify(log.settings, "--db", log.url, "--pubkey", str(log.vkey),
                        "--checkpoints", str(log.outside)), "fork", victim)
    assert_fault(verify(log.settings, "--db", log.url, "--pubkey", str(log.vkey),
                        "--trusted", str(trusted)), "fork", victim)


def test_a_proof_request_after_a_rewrite_does_not_erase_the_outside_checkpoint(
    log: Log,
) -> None:
    """After a rewrite the database holds no checkpoint of the current size; a proof request
    would need one. The broker refuses to sign the rewritten tree, and the copy outside the
    database keeps the checkpoint of the genuine tree."""
    _sign_now(log.settings)  # the genuine log, signed at its current size
    size = log.size()
    genuine = log.outside_note(size)
    victim = _rewrite_victim(log)
    assert max(log.outside_checkpoints()) == size
    log.tamper(lambda c: tamper.rewrite(c, victim))
    # econ asks for the proof of its last receipt (the last entry, written before the rewrite)
    proof = log.world.client.get(f"/v1/audit/entries/{size}/proof",
                                 headers=auth(log.world.econ))
    assert_problem(proof, 503, "unavailable")  # fail closed: no proof over a rewritten tree
    outside = [p.read_text(encoding="utf-8") for p in log.outside.glob("*.checkpoint")]
    assert genuine in outside, "the outside copy of the genuine checkpoint was overwritten"
    assert_fault(verify(log.settings, "--pubkey", str(log.vkey)), "fork", victim)


def test_a_rewrite_that_leaves_the_checkpoints_is_a_fork(log: Log) -> None:
    victim = _rewrite_victim(log)
    log.tamper(lambda c: tamper.rewrite(c, victim, drop_checkpoints=False))
    assert_fault(verify(log.settings, "--db", log.url, "--pubkey", str(log.vkey)), "fork",
                 victim)


# --- bad, foreign and conflicting checkpoints -------------------------------------------------


def _flip_signature(note: str) -> str:
    """The note with one byte of its Ed25519 signature (not of its key ID) changed."""
    text_part, sig_line = note.rstrip("\n").rsplit("\n", 1)
    name, blob64 = sig_line.removeprefix("\u2014 ").split(" ")
    blob = bytearray(base64.b64decode(blob64))
    blob[4 + 17] ^= 0x01
    return f"{text_part}\n\u2014 {name} {base64.b64encode(bytes(blob)).decode()}\n"


def _foreign_note(log: Log, size: int) -> str:
    """A checkpoint of the true tree at ``size``, signed under the log's name by another key."""
    body = log.outside_note(size).split("\n\n")[0] + "\n"
    forger = NoteSigner(log.settings.audit_origin, Ed25519PrivateKey.generate())
    return forger.checkpoint(Checkpoint.parse(body))


def test_a_checkpoint_with_a_flipped_signature_byte_is_bad(log: Log, tmp_path: Path) -> None:
    size = log.outside_checkpoints()[0]
    note = log.outside_note(size)
    forged = _flip_signature(note)
    assert forged != note

    # in the database
    log.tamper(lambda c: c.execute(text("UPDATE audit_checkpoints SET note = :n WHERE size = :s"),
                                   {"n": forged, "s": size}))
    assert_fault(verify(log.settings, "--db", log.url, "--pubkey", str(log.vkey)),
                 "bad-checkpoint", None)
    log.tamper(lambda c: c.execute(text("UPDATE audit_checkpoints SET note = :n WHERE size = :s"),
                                   {"n": note, "s": size}))
    assert_valid(verify(log.settings, "--pubkey", str(log.vkey)), log.size())

    # in the directory outside the database
    (log.outside / f"{size:020d}.checkpoint").write_text(forged, encoding="utf-8")
    assert_fault(verify(log.settings, "--pubkey", str(log.vkey)), "bad-checkpoint", None)

    # handed in as trusted
    trusted = tmp_path / "trusted.checkpoint"
    trusted.write_text(forged, encoding="utf-8")
    assert_fault(verify(log.settings, "--db", log.url, "--pubkey", str(log.pem),
                        "--trusted", str(trusted)), "bad-checkpoint", None)


def test_a_checkpoint_signed_by_another_key_is_bad(log: Log, tmp_path: Path) -> None:
    size = log.outside_checkpoints()[-1]
    foreign = _foreign_note(log, size)
    trusted = tmp_path / "foreign.checkpoint"
    trusted.write_text(foreign, encoding="utf-8")
    assert_fault(verify(log.settings, "--db", log.url, "--pubkey", str(log.vkey),
                        "--trusted", str(trusted)), "bad-checkpoint", None)
    (log.outside / f"{size + 1000:020d}.checkpoint").write_text(foreign, encoding="utf-8")
    outcome = verify(log.settings, "--pubkey", str(log.vkey))
    assert_fault(outcome, "bad-checkpoint", None)
    assert outcome[1]["reason"] == "checkpoint-signature"


def _fork_copy(log: Log, tmp_path: Path, victim: int) -> str:
    """A second history: a copy of the database rewritten from ``victim`` and signed by the
    broker's own key (as a broker run on the altered copy would); its latest note."""
    copy = log.backup(tmp_path / "fork.db")
    _tamper_at(copy, lambda c: tamper.rewrite(c, victim))
    result = cli(log.settings, "audit", "checkpoint", env={
        "BROKER_DATABASE_URL": copy,
        "BROKER_CHECKPOINT_DIR": str(tmp_path / "fork-checkpoints")})
    assert result.exit_code == 0, result.output
    return result.stdout


def test_two_signed_checkpoints_of_one_size_that_disagree_are_a_fork(
    log: Log, tmp_path: Path
) -> None:
    victim = _rewrite_victim(log)
    _sign_now(log.settings)  # the genuine log, signed at its current size
    size = log.size()
    other = _fork_copy(log, tmp_path, victim)
    assert other.split("\n")[1] == str(size)
    assert other != log.outside_note(size)
    trusted = tmp_path / "other.checkpoint"
    trusted.write_text(other, encoding="utf-8")
    outcome = verify(log.settings, "--pubkey", str(log.vkey), "--trusted", str(trusted))
    assert_fault(outcome, "fork", size)
    assert outcome[1]["reason"] == "conflicting-checkpoints"
    # the same two notes, both in the directory outside the database
    (log.outside / "other-history.checkpoint").write_text(other, encoding="utf-8")
    assert_fault(verify(log.settings, "--pubkey", str(log.vkey)), "fork", size)


def test_a_trusted_checkpoint_the_log_does_not_extend(log: Log, tmp_path: Path) -> None:
    victim = _rewrite_victim(log)
    other = _fork_copy(log, tmp_path, victim)  # of the current size, no genuine one there
    trusted = tmp_path / "other.checkpoint"
    trusted.write_text(other, encoding="utf-8")
    outcome = verify(log.settings, "--pubkey", str(log.vkey), "--trusted", str(trusted))
    assert_fault(outcome, "fork", max(log.outside_checkpoints()) + 1)
    assert outcome[1]["reason"] == "checkpoint-root-mismatch"

    # a trusted checkpoint larger than the log: a copy that was rolled back by one entry
    later = tmp_path / "later.checkpoint"
    later.write_text(_sign_now(log.settings), encoding="utf-8")
    snapshot = log.backup(tmp_path / "snapshot.db")

    def roll_back_one(conn: Connection) -> int:
        size = int(conn.execute(text("SELECT size FROM audit_head")).scalar_one())
        tamper.truncate(conn, size - 1)
        return size

    size = _tamper_at(snapshot, roll_back_one)
    outcome = verify(log.settings, "--db", snapshot, "--pubkey", str(log.vkey),
                     "--trusted", str(later))
    assert_fault(outcome, "rollback", size)


# --- the same attacks on an export file -------------------------------------------------------


@dataclass
class Export:
    """An export file split into its header, checkpoint lines and entry lines."""

    path: Path
    header: bytes
    notes: list[bytes]
    entries: list[bytes]

    def write(self, entries: list[bytes] | None = None, notes: list[bytes] | None = None) -> Path:
        lines = [self.header, *(self.notes if notes is None else notes),
                 *(self.entries if entries is None else entries)]
        self.path.write_bytes(b"\n".join(lines) + b"\n")
        return self.path

    def sizes(self, notes: list[bytes] | None = None) -> list[int]:
        return sorted(int(json.loads(n)["checkpoint"].split("\n")[1])
                      for n in (self.notes if notes is None else notes))


@pytest.fixture
def export(log: Log, tmp_path: Path) -> Export:
    """``broker audit export --output F`` of the log, after one more checkpoint at its end."""
    _sign_now(log.settings)
    path = tmp_path / "audit.jsonl"
    result = cli(log.settings, "audit", "export", "--output", str(path))
    assert result.exit_code == 0, result.output
    lines = path.read_bytes().splitlines()
    header = json.loads(lines[0])
    assert header["key"] == log.vkey.read_text(encoding="utf-8").strip()
    notes = [line for line in lines if line.startswith(b'{"checkpoint":')]
    entries = lines[1 + len(notes):]
    assert lines[1:1 + len(notes)] == notes
    assert [json.loads(e)["seq"] for e in entries] == list(range(1, log.size() + 1))
    return Export(path, lines[0], notes, entries)


def _verify_export(log: Log, export: Export, *args: str) -> tuple[int, dict[str, Any]]:
    return verify(log.settings, "--export", str(export.path), "--pubkey", str(log.vkey), *args)


def test_an_untouched_export_is_valid(log: Log, export: Export) -> None:
    size = log.size()
    for extra in ([], ["--deep"]):
        code, report = _verify_export(log, export, *extra)
        assert_valid((code, report), size)
        assert report["checkpoints_checked"] == len(export.notes)
        assert report["latest_checkpoint"] == size
    assert_valid(verify(log.settings, "--export", str(export.path), "--pubkey", str(log.pem)),
                 size)


def test_an_export_with_a_flipped_byte_names_the_entry(log: Log, export: Export) -> None:
    victim = log.victim
    line = export.entries[victim - 1]
    at = line.index(b'"ts":"') + len(b'"ts":"2026-01-01T00:00:00.00000')
    forged = line[:at] + (b"1" if line[at:at + 1] != b"1" else b"2") + line[at + 1:]
    entries = list(export.entries)
    entries[victim - 1] = forged
    export.write(entries)
    outcome = _verify_export(log, export)
    assert_fault(outcome, "bad-entry", victim)
    assert outcome[1]["reason"] == "prev-hash-mismatch"


def test_an_export_with_a_flipped_byte_in_its_last_entry_is_a_fork(
    log: Log, export: Export
) -> None:
    """No entry follows the last one and an export has no head: only the checkpoint signed at
    the end of the log covers it."""
    entries = list(export.entries)
    entries[-1] = entries[-1].replace(b'"v":1', b'"v":2')
    export.write(entries)
    sizes = export.sizes()
    assert_fault(_verify_export(log, export), "fork", sizes[-2] + 1)


def test_an_export_with_a_deleted_line_is_a_gap(log: Log, export: Export) -> None:
    entries = list(export.entries)
    del entries[log.victim - 1]
    export.write(entries)
    outcome = _verify_export(log, export)
    assert_fault(outcome, "gap", log.victim)
    assert outcome[1]["reason"] == "seq-gap"


def test_an_export_with_swapped_lines_is_a_reorder(log: Log, export: Export) -> None:
    entries = list(export.entries)
    v = log.victim - 1
    entries[v], entries[v + 1] = entries[v + 1], entries[v]
    export.write(entries)
    assert_fault(_verify_export(log, export), "reorder", log.victim)


def test_an_export_with_its_tail_cut(log: Log, export: Export, tmp_path: Path) -> None:
    keep = _keep(log)
    entries = export.entries[:keep]
    export.write(entries)
    assert_fault(_verify_export(log, export), "rollback", keep + 1)

    # cut carefully: the checkpoint lines that would give it away go too
    notes = [n for n in export.notes if int(json.loads(n)["checkpoint"].split("\n")[1]) <= keep]
    export.write(entries, notes)
    assert_valid(_verify_export(log, export), keep)
    assert_fault(_verify_export(log, export, "--checkpoints", str(log.outside)), "rollback",
                 keep + 1)
    trusted = tmp_path / "trusted.checkpoint"
    trusted.write_text(json.loads(export.notes[-1])["checkpoint"], encoding="utf-8")
    assert_fault(_verify_export(log, export, "--trusted", str(trusted)), "rollback", keep + 1)


def _rehash_export(entries: list[bytes], victim: int) -> list[bytes]:
    """Change entry ``victim``'s purpose and recompute every later ``prev_hash`` (RFC 8785,
    SHA-256 with the 0x00 leaf prefix), as the export's author can."""
    out = list(entries[:victim - 1])
    prev = hashlib.sha256(b"\x00" + entries[victim - 2]).hexdigest() if victim > 1 else GENESIS
    for line in entries[victim - 1:]:
        entry = json.loads(line)
        if entry["seq"] == victim:
            entry["purpose"] = "rewritten-by-insider"
        entry["prev_hash"] = prev
        raw = bytes(rfc8785.dumps(entry))
        out.append(raw)
        prev = hashlib.sha256(b"\x00" + raw).hexdigest()
    return out


def test_an_export_rewritten_and_rehashed_is_a_fork(log: Log, export: Export) -> None:
    victim = _rewrite_victim(log)
    entries = _rehash_export(export.entries, victim)
    assert entries[victim - 1] != export.entries[victim - 1]
    assert entries[victim - 2] == export.entries[victim - 2]
    export.write(entries)
    outcome = _verify_export(log, export, "--deep")
    assert_fault(outcome, "fork", victim)
    assert outcome[1]["reason"] == "checkpoint-root-mismatch"

    # with the checkpoint lines it contradicts removed, the rewritten entries are an unsigned
    # tail: refused, and accepted only as unproven when told to; the outside copies tell
    notes = [n for n in export.notes if int(json.loads(n)["checkpoint"].split("\n")[1]) < victim]
    export.write(entries, notes)
    signed = export.sizes(notes)[-1]
    outcome = _verify_export(log, export, "--deep")
    assert_fault(outcome, "unsigned-tail", signed + 1)
    code, report = _verify_export(log, export, "--deep", "--allow-unsigned-tail")
    assert_valid((code, report), log.size())
    assert report["unproven"] == log.size() - signed
    assert_fault(_verify_export(log, export, "--checkpoints", str(log.outside)), "fork", victim)


def test_an_export_with_a_bad_checkpoint_line(log: Log, export: Export) -> None:
    first = json.loads(export.notes[0])["checkpoint"]
    flipped = json.dumps({"checkpoint": _flip_signature(first)}, ensure_ascii=False).encode()
    export.write(notes=[flipped, *export.notes[1:]])
    assert_fault(_verify_export(log, export), "bad-checkpoint", None)

    size = export.sizes()[-1]
    foreign = json.dumps({"checkpoint": _foreign_note(log, size)}, ensure_ascii=False).encode()
    export.write(notes=[*export.notes, foreign])
    assert_fault(_verify_export(log, export), "bad-checkpoint", None)


def test_an_export_with_two_conflicting_checkpoints_is_a_fork(
    log: Log, export: Export, tmp_path: Path
) -> None:
    size = log.size()
    other = _fork_copy(log, tmp_path, _rewrite_victim(log))
    assert other.split("\n")[1] == str(size)
    line = json.dumps({"checkpoint": other}, ensure_ascii=False).encode()
    export.write(notes=[*export.notes, line])
    outcome = _verify_export(log, export)
    assert_fault(outcome, "fork", size)
    assert outcome[1]["reason"] == "conflicting-checkpoints"


def test_the_export_key_is_the_published_one(log: Log) -> None:
    signer = checkpoint_signer(log.settings)
    assert signer.verifier.vkey == log.vkey.read_text(encoding="utf-8").strip()
    key_cli = cli(log.settings, "audit", "key")
    assert key_cli.exit_code == 0
    assert key_cli.stdout.strip() == signer.verifier.vkey
    pem_cli = cli(log.settings, "audit", "key", "--pem")
    assert pem_cli.stdout == log.pem.read_text(encoding="utf-8")


def test_verify_without_a_readable_key_is_exit_1(log: Log, tmp_path: Path) -> None:
    junk = tmp_path / "junk.key"
    junk.write_text("not a key", encoding="utf-8")
    result = cli(log.settings, "audit", "verify", "--pubkey", str(junk), "--json")
    assert result.exit_code == 1, result.output
