"""Exports that prove their tail: ``broker audit export`` ends at a checkpoint signed over
every entry it holds, and ``broker audit verify --export`` refuses one that does not.

Logs are written by the store's own appends (each a unit of work, as a request's entry is) on
SQLite and PostgreSQL; checkpoints are signed with the broker's real Ed25519 key through the
CLI; the verdicts come from the CLI given only the published key.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner, Result

from audit.checkpoint import Checkpoint, NoteSigner, NoteVerifier
from audit.entry import AuditEvent
from broker.api.auth import mint_token
from broker.cli import app
from broker.services.checkpoints import Checkpointer, make_sinks
from broker.settings import Settings
from broker.store.db import create_schema, make_engine
from broker.store.keys import checkpoint_signer
from broker.store.uow import SqlUnitOfWork, SqlUnitOfWorkFactory
from tests.conftest import SECRET, auth
from tests.server import broker_server

runner = CliRunner()


def _clock() -> datetime:
    return datetime.now(UTC)


def _event(i: int) -> AuditEvent:
    return AuditEvent(
        actor={"iss": "test", "sub": "a@econ", "org": "econ", "roles": ["consumer"]},
        action="query.aggregate", request_id=f"req-{i:08d}", allowed=True,
        policy_revision="0123456789abcdef", dataset_id="ds-1", version=1,
        contract_id="c-1", purpose="energy-planning", query_fp="f" * 64,
        fields=("kwh", "town"), disclosure={"k": 5, "cells_published": 4},
    )


@dataclass
class Log:
    """A broker's settings, its database and the key it publishes."""

    settings: Settings
    env: dict[str, str]
    vkey: Path

    def append(self, count: int) -> None:
        """``count`` entries, each its own unit of work and commit."""
        engine = make_engine(self.settings.db_url)
        try:
            for i in range(count):
                with SqlUnitOfWork(engine, _clock) as uow:
                    uow.audit.append(_event(i))
                    uow.commit()
        finally:
            engine.dispose()

    def cli(self, *args: str) -> Result:
        """``broker ARGS`` with this log's settings."""
        return runner.invoke(app, list(args), env=self.env)

    def sign(self) -> str:
        """``broker audit checkpoint``: the note."""
        result = self.cli("audit", "checkpoint")
        assert result.exit_code == 0, result.output
        return result.stdout

    def export(self, path: Path, *args: str) -> Result:
        return self.cli("audit", "export", "--output", str(path), *args)

    def verify(self, path: Path, *args: str) -> tuple[int, dict[str, Any]]:
        """``broker audit verify --export PATH --json``: exit code and report."""
        result = self.cli("audit", "verify", "--export", str(path), "--pubkey", str(self.vkey),
                          "--json", *args)
        assert result.exit_code not in (1, 2), result.output
        return result.exit_code, json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(params=["sqlite", "postgresql"])
def log(request: pytest.FixtureRequest, tmp_path: Path) -> Log:
    """An empty log on SQLite, or on a PostgreSQL database of its own; its key made."""
    url = None
    if request.param == "postgresql":
        url = request.getfixturevalue("postgres_url")
    settings = Settings(data_dir=tmp_path / "var", database_url=url)
    env = {"BROKER_DATA_DIR": str(settings.data_dir)}
    if url is not None:
        env["BROKER_DATABASE_URL"] = url
    engine = make_engine(settings.db_url)
    create_schema(engine)
    engine.dispose()
    vkey = tmp_path / "log.vkey"
    vkey.write_text(checkpoint_signer(settings).verifier.vkey + "\n", encoding="utf-8")
    return Log(settings, env, vkey)


@dataclass
class Lines:
    """An export file as its header, checkpoint lines and entry lines."""

    header: bytes
    notes: list[bytes]
    entries: list[bytes]

    @classmethod
    def read(cls, path: Path) -> Lines:
        lines = path.read_bytes().splitlines()
        notes = [line for line in lines if line.startswith(b'{"checkpoint":')]
        assert lines[1:1 + len(notes)] == notes  # the header, then the checkpoints
        return cls(lines[0], notes, lines[1 + len(notes):])

    def sizes(self) -> list[int]:
        return [_size(n) for n in self.notes]

    def write(self, path: Path, *, notes: list[bytes] | None = None,
              entries: list[bytes] | None = None) -> Path:
        lines = [self.header, *(self.notes if notes is None else notes),
                 *(self.entries if entries is None else entries)]
        path.write_bytes(b"\n".join(lines) + b"\n")
        return path


def _size(line: bytes) -> int:
    return int(json.loads(line)["checkpoint"].split("\n")[1])


def _note_line(note: str) -> bytes:
    return json.dumps({"checkpoint": note}, ensure_ascii=False).encode()


def test_export_of_a_live_log_ends_with_a_checkpoint_signed_over_its_size(
    log: Log, tmp_path: Path
) -> None:
    log.append(10)
    log.sign()
    log.append(7)  # past the last checkpoint: the export signs one of 17
    path = tmp_path / "audit.jsonl"
    result = log.export(path)
    assert result.exit_code == 0, result.output
    assert "ending at the signed checkpoint of size 17" in result.stderr
    lines = Lines.read(path)
    assert lines.sizes() == [10, 17]
    assert [json.loads(e)["seq"] for e in lines.entries] == list(range(1, 18))
    # signed as the server signs: stored in the database and copied outside it
    outside = log.settings.checkpoints_path / f"{17:020d}.checkpoint"
    assert outside.read_text(encoding="utf-8") == json.loads(lines.notes[-1])["checkpoint"]
    code, report = log.verify(path)
    assert (code, report["valid"], report["size"], report["unproven"]) == (0, True, 17, 0)
    assert report["latest_checkpoint"] == 17

    again = tmp_path / "again.jsonl"  # nothing new: the same checkpoint, no second signature
    assert log.export(again).exit_code == 0
    assert again.read_bytes() == path.read_bytes()


def test_export_to_stdout_is_the_export_even_with_a_stdout_checkpoint_sink(
    log: Log, tmp_path: Path
) -> None:
    """The checkpoint the export signs goes to the stdout sink too; with the export on stdout,
    that copy is written to stderr instead of into the export."""
    log.append(5)
    log.env["BROKER_CHECKPOINT_SINKS"] = '["dir", "stdout"]'
    result = log.cli("audit", "export")
    assert result.exit_code == 0, result.output
    assert '"audit_checkpoint"' in result.stderr
    path = tmp_path / "stdout.jsonl"
    path.write_bytes(result.stdout_bytes)
    assert Lines.read(path).sizes() == [5]
    assert log.verify(path)[0] == 0


@pytest.fixture
def exported(log: Log, tmp_path: Path) -> tuple[Path, Lines]:
    """An export of 30 entries with checkpoints at 10, 20 and 30."""
    for _ in range(3):
        log.append(10)
        log.sign()
    path = tmp_path / "audit.jsonl"
    assert log.export(path).exit_code == 0
    lines = Lines.read(path)
    assert lines.sizes() == [10, 20, 30]
    return path, lines


def test_cutting_entries_after_the_last_checkpoint_is_a_rollback(
    log: Log, exported: tuple[Path, Lines]
) -> None:
    path, lines = exported
    lines.write(path, entries=lines.entries[:27])
    code, report = log.verify(path)
    assert (code, report["kind"], report["first_bad_seq"]) == (6, "rollback", 28)
    code, report = log.verify(path, "--allow-unsigned-tail")  # no flag excuses a rollback
    assert (code, report["kind"]) == (6, "rollback")


def test_cutting_the_final_checkpoint_leaves_an_unsigned_tail_that_is_refused(
    log: Log, exported: tuple[Path, Lines]
) -> None:
    path, lines = exported
    lines.write(path, notes=lines.notes[:-1])
    code, report = log.verify(path)
    assert (code, report["valid"], report["kind"]) == (9, False, "unsigned-tail")
    assert report["first_bad_seq"] == 21
    assert "entries 21..30 (10)" in report["detail"]

    code, report = log.verify(path, "--allow-unsigned-tail")
    assert (code, report["valid"], report["size"], report["unproven"]) == (0, True, 30, 10)
    text = log.cli("audit", "verify", "--export", str(path), "--pubkey", str(log.vkey),
                   "--allow-unsigned-tail")
    assert text.exit_code == 0, text.output
    assert "UNPROVEN: 10 entries (21..30)" in text.output
    refused = log.cli("audit", "verify", "--export", str(path), "--pubkey", str(log.vkey))
    assert refused.exit_code == 9
    assert "unsigned-tail at entry 21" in refused.output

    # the final checkpoint and some entries cut: still a tail nothing signs
    lines.write(path, notes=lines.notes[:-1], entries=lines.entries[:25])
    code, report = log.verify(path)
    assert (code, report["kind"], report["first_bad_seq"]) == (9, "unsigned-tail", 21)
    assert log.verify(path, "--allow-unsigned-tail")[1]["unproven"] == 5


def test_an_export_cut_in_the_middle_is_refused(
    log: Log, exported: tuple[Path, Lines], tmp_path: Path
) -> None:
    path, lines = exported
    whole = path.read_bytes()
    middle = whole.index(lines.entries[14])
    for cut in (middle, middle + len(lines.entries[14]) // 2):  # at a line, inside a line
        path.write_bytes(whole[:cut])
        for extra in ([], ["--allow-unsigned-tail"]):
            code, report = log.verify(path, *extra)
            assert report["valid"] is False, report
            assert code in (3, 6), report  # rollback, or the torn entry itself
            assert report["first_bad_seq"] in (15, 16)

    lines.write(path, entries=lines.entries[:14] + lines.entries[15:])  # one line taken out
    code, report = log.verify(path)
    assert (code, report["kind"], report["first_bad_seq"]) == (4, "gap", 15)


def test_a_final_checkpoint_signed_by_another_key_is_refused(
    log: Log, exported: tuple[Path, Lines]
) -> None:
    path, lines = exported
    final = NoteVerifier.from_vkey(log.vkey.read_text(encoding="utf-8")).checkpoint(
        json.loads(lines.notes[-1])["checkpoint"])
    other = NoteSigner(log.settings.audit_origin, Ed25519PrivateKey.generate())
    forged = _note_line(other.checkpoint(Checkpoint(final.origin, final.size, final.root)))
    lines.write(path, notes=[*lines.notes[:-1], forged])
    for extra in ([], ["--allow-unsigned-tail"]):
        code, report = log.verify(path, *extra)
        assert (code, report["kind"]) == (8, "bad-checkpoint"), report
        assert "not signed by" in report["detail"]


def test_a_checkpoint_beyond_the_entries_present_is_a_rollback(
    log: Log, exported: tuple[Path, Lines]
) -> None:
    path, lines = exported
    log.append(5)
    later = _note_line(log.sign())  # a real signature over 35 entries
    lines.write(path, notes=[*lines.notes, later])
    code, report = log.verify(path, "--allow-unsigned-tail")
    assert (code, report["kind"], report["first_bad_seq"]) == (6, "rollback", 31)
    assert report["reason"] == "log-shorter-than-checkpoint"


def test_without_the_signing_key_an_export_with_an_uncovered_tail_is_refused(
    log: Log, tmp_path: Path
) -> None:
    log.append(10)
    log.sign()
    log.append(4)
    key = log.settings.checkpoint_key_path
    key.rename(key.with_name("elsewhere.pem"))  # the public key stays
    path = tmp_path / "audit.jsonl"
    refused = log.export(path)
    assert refused.exit_code == 1
    assert "entries 11..14 (4) are after the last signed checkpoint" in refused.output
    assert "--allow-unsigned-tail" in refused.output
    assert not path.exists()
    assert not key.exists()  # no new key was made in its place

    unproven = log.export(path, "--allow-unsigned-tail")
    assert unproven.exit_code == 0, unproven.output
    assert "the last 4 (11..14)" in unproven.stderr
    code, report = log.verify(path)
    assert (code, report["kind"], report["first_bad_seq"]) == (9, "unsigned-tail", 11)
    code, report = log.verify(path, "--allow-unsigned-tail")
    assert (code, report["size"], report["unproven"]) == (0, 14, 4)

    key.with_name("elsewhere.pem").rename(key)
    log.sign()  # signed where the key is: an export without it is whole again
    key.rename(key.with_name("elsewhere.pem"))
    assert log.export(path).exit_code == 0
    assert log.verify(path)[1]["size"] == 14


def test_exports_while_the_log_grows_are_consistent_prefixes(
    log: Log, tmp_path: Path
) -> None:
    """Writers append and the server's checkpointer signs (every 7 entries or 50 ms) while
    exports run: each export is a prefix ending at a checkpoint signed over it."""
    log.append(5)
    settings = log.settings
    engine = make_engine(settings.db_url)
    checkpointer = Checkpointer(
        SqlUnitOfWorkFactory(engine, _clock), checkpoint_signer(settings),
        make_sinks(settings.checkpoint_sinks, settings.checkpoints_path),
        every_entries=7, every_seconds=0.05)
    stop = threading.Event()
    errors: list[BaseException] = []

    def write() -> None:
        try:
            while not stop.is_set():
                with SqlUnitOfWork(engine, _clock) as uow:
                    uow.audit.append(_event(0))
                    uow.commit()
        except BaseException as exc:
            errors.append(exc)

    writers = [threading.Thread(target=write) for _ in range(2)]
    checkpointer.start()
    for writer in writers:
        writer.start()
    sizes = []
    try:
        for n in range(6):
            path = tmp_path / f"live-{n}.jsonl"
            result = log.export(path)
            assert result.exit_code == 0, result.output
            lines = Lines.read(path)
            size = len(lines.entries)
            assert lines.sizes()[-1] == size
            assert [json.loads(e)["seq"] for e in lines.entries] == list(range(1, size + 1))
            code, report = log.verify(path)
            assert (code, report["valid"], report["unproven"]) == (0, True, 0), report
            sizes.append(size)
    finally:
        stop.set()
        for writer in writers:
            writer.join()
        checkpointer.stop()
        engine.dispose()
    assert not errors
    assert sizes == sorted(sizes)
    assert sizes[-1] > sizes[0]


def test_an_unusable_signing_key_refuses_the_export_rather_than_leave_it_unproven(
    log: Log, tmp_path: Path
) -> None:
    log.append(3)
    log.sign()
    log.append(2)
    key = log.settings.checkpoint_key_path
    key.write_bytes(b"not a key")
    path = tmp_path / "audit.jsonl"
    refused = log.export(path)
    assert refused.exit_code == 1
    assert f"The checkpoint key {key} cannot be used" in refused.output
    assert not path.exists()
    unproven = log.export(path, "--allow-unsigned-tail")
    assert unproven.exit_code == 0, unproven.output
    assert "the last 2 (4..5)" in unproven.stderr
    assert log.verify(path, "--allow-unsigned-tail")[1]["unproven"] == 2


@pytest.mark.e2e
def test_exports_while_a_real_server_appends_are_consistent_prefixes(tmp_path: Path) -> None:
    """``broker serve`` audits refused requests from two threads (each a ``token.admit``
    entry) and signs checkpoints on its own cadence while ``broker audit export`` runs on the
    same SQLite file: every export verifies, ends at a checkpoint over its size, and the server
    is not disturbed."""
    settings = Settings(data_dir=tmp_path / "var")
    env = {"BROKER_DATA_DIR": str(settings.data_dir), "BROKER_JWT_SECRET": SECRET,
           "BROKER_RATE_LIMIT": "100000/minute", "BROKER_CHECKPOINT_EVERY_ENTRIES": "13",
           "BROKER_CHECKPOINT_EVERY_SECONDS": "0.2"}
    token = mint_token(key=SECRET, issuer=settings.jwt_issuer, audience=settings.jwt_audience,
                       sub="x@grid", org="grid", roles=("admin",))  # not the operator: refused
    with broker_server(tmp_path, env) as base:
        key = httpx.get(f"{base}/v1/audit/key", timeout=30).json()["vkey"]
        vkey = tmp_path / "log.vkey"
        vkey.write_text(key + "\n", encoding="utf-8")
        log = Log(settings, env, vkey)
        stop = threading.Event()
        statuses: list[int] = []

        def load() -> None:
            with httpx.Client(base_url=base, timeout=30) as client:
                while not stop.is_set():
                    statuses.append(client.get("/v1/datasets", headers=auth(token)).status_code)

        threads = [threading.Thread(target=load) for _ in range(2)]
        for thread in threads:
            thread.start()
        sizes = []
        try:
            while len(statuses) < 20:
                time.sleep(0.05)
            for n in range(4):
                path = tmp_path / f"served-{n}.jsonl"
                result = log.export(path)
                assert result.exit_code == 0, result.output
                lines = Lines.read(path)
                assert lines.sizes()[-1] == len(lines.entries)
                code, report = log.verify(path)
                assert (code, report["valid"], report["unproven"]) == (0, True, 0), report
                sizes.append(len(lines.entries))
        finally:
            stop.set()
            for thread in threads:
                thread.join()
    assert set(statuses) == {403}
    assert sizes == sorted(sizes)
    assert sizes[-1] > sizes[0]
