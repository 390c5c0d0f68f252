"""Proofs over HTTP, checked offline: receipts, inclusion and consistency, who may ask.

A consumer holds a query answer whose receipt names an audit entry; it fetches the inclusion
proof and checks it with nothing but the published key: once with ``broker audit check`` and
once here, independently of the broker's ``audit`` package, with only ``cryptography``,
``hashlib`` and ``rfc8785``: the C2SP signed note is parsed and its Ed25519 signature checked
by hand, the leaf hash recomputed from the entry and the proof walked as RFC 9162 says, and the
proof compared with the one RFC 6962's definitions give over every leaf the auditor can read.
"""

from __future__ import annotations

import base64
import copy
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import rfc8785
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from fastapi.testclient import TestClient
from typer.testing import CliRunner, Result

from broker.cli import app
from broker.settings import Settings
from tests.conftest import (
    ENERGY,
    ENERGY_META,
    SECRET,
    Mint,
    World,
    assert_problem,
    auth,
    upload,
)
from tests.rfc6962 import audit_path, leaf_hash, mth, node_hash, sha256, subproof

runner = CliRunner()

# --- an independent verifier: C2SP signed notes, RFC 8785 leaves, RFC 6962/9162 trees --------


def leaf_of(entry: dict[str, Any]) -> bytes:
    """RFC 6962 leaf hash of the entry's RFC 8785 bytes."""
    return leaf_hash(bytes(rfc8785.dumps(entry)))


class NoteKey:
    """An Ed25519 verifier key ``name+keyid+base64(0x01 || key)``, parsed by hand."""

    def __init__(self, vkey: str) -> None:
        name, _, rest = vkey.strip().partition("+")
        key_id, _, encoded = rest.partition("+")  # the base64 may itself hold "+"
        raw = base64.b64decode(encoded, validate=True)
        assert len(raw) == 33
        assert raw[0] == 0x01  # Ed25519
        self.name = name
        self.raw = raw[1:]
        self.key_id = sha256(name.encode() + b"\x0a" + b"\x01" + self.raw)[:4]
        assert self.key_id.hex() == key_id, "the key ID is not SHA-256(name||0x0A||0x01||key)"
        self.public = Ed25519PublicKey.from_public_bytes(self.raw)

    def open(self, note: str) -> tuple[str, int, bytes]:
        """(origin, size, root) of a checkpoint note this key signed; AssertionError else."""
        split = note.rfind("\n\n")
        assert split > 0
        assert note.endswith("\n")
        text, signatures = note[:split + 1], note[split + 2:-1].split("\n")
        good = False
        for line in signatures:
            assert line.startswith("\u2014 "), "a signature line starts with an em dash"
            name, _, encoded = line[2:].partition(" ")
            blob = base64.b64decode(encoded, validate=True)
            if name != self.name or blob[:4] != self.key_id:
                continue
            try:
                self.public.verify(blob[4:], text.encode())
            except InvalidSignature as exc:
                raise AssertionError("the note's signature does not verify") from exc
            good = True
        assert good, "no signature by this key"
        lines = text.split("\n")
        origin, size, root = lines[0], int(lines[1]), base64.b64decode(lines[2], validate=True)
        assert origin == self.name
        assert len(root) == 32
        return origin, size, root


def holds(check: Callable[[], bool]) -> bool:
    """Whether an independent check passes (a failed assertion inside counts as no)."""
    try:
        return check()
    except (AssertionError, ValueError, KeyError, TypeError, IndexError):
        return False


def _shift_to_set_bit(fn: int, sn: int) -> tuple[int, int]:
    """RFC 9162's step after hashing on the left: "until LSB(fn) is set or fn is 0,
    right-shift fn and sn equally"."""
    while fn % 2 == 0 and fn != 0:
        fn, sn = fn >> 1, sn >> 1
    return fn, sn


def inclusion_root(index: int, size: int, leaf: bytes, proof: list[bytes]) -> bytes:
    """RFC 9162 section 2.1.3.2: the root an inclusion proof leads to."""
    assert 0 <= index < size
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        assert sn != 0, "proof too long"
        if fn % 2 == 1 or fn == sn:
            r = node_hash(p, r)
            fn, sn = _shift_to_set_bit(fn, sn)
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    assert sn == 0, "proof too short"
    return r


def consistent(first: int, second: int, first_hash: bytes, second_hash: bytes,
               proof: list[bytes]) -> bool:
    """RFC 9162 section 2.1.4.2: whether ``proof`` shows tree ``first`` is a prefix of
    tree ``second``."""
    if first == second:
        return not proof and first_hash == second_hash
    assert 0 < first < second
    path = list(proof)
    if first & (first - 1) == 0:
        path.insert(0, first_hash)
    assert path
    fn, sn = first - 1, second - 1
    while fn % 2 == 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn % 2 == 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            fn, sn = _shift_to_set_bit(fn, sn)
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    return fr == first_hash and sr == second_hash and sn == 0


def check_inclusion(doc: dict[str, Any], key: NoteKey, receipt: dict[str, Any]) -> bool:
    """The whole offline check of an inclusion document about ``receipt``."""
    _, size, root = key.open(doc["checkpoint"])
    seq = doc["seq"]
    leaf = bytes.fromhex(doc["leaf_hash"])
    return (doc["type"] == "inclusion" and size == doc["tree_size"]
            and doc["leaf_index"] == seq - 1
            and doc["entry"]["seq"] == seq and leaf_of(doc["entry"]) == leaf
            and receipt["seq"] == seq and bytes.fromhex(receipt["leaf_hash"]) == leaf
            and inclusion_root(seq - 1, size, leaf, [bytes.fromhex(p) for p in doc["proof"]])
            == root)


def check_consistency(doc: dict[str, Any], key: NoteKey, trusted_note: str) -> bool:
    """The whole offline check of a consistency document against a checkpoint you hold."""
    _, old, old_root = key.open(trusted_note)
    _, new, new_root = key.open(doc["checkpoint"])
    return (doc["type"] == "consistency" and doc["old_size"] == old
            and bytes.fromhex(doc["old_root"]) == old_root
            and doc["new_size"] == new and bytes.fromhex(doc["new_root"]) == new_root
            and consistent(old, new, old_root, new_root,
                           [bytes.fromhex(p) for p in doc["proof"]]))


# --- helpers ----------------------------------------------------------------------------------


def cli(settings: Settings, *args: str) -> Result:
    return runner.invoke(app, list(args), env={
        "BROKER_DATA_DIR": str(settings.data_dir), "BROKER_JWT_SECRET": SECRET,
        "BROKER_MAX_UPLOAD_BYTES": str(settings.max_upload_bytes)})


def dump(path: Path, value: Any) -> Path:
    path.write_text(json.dumps(value, ensure_ascii=False), encoding="utf-8")
    return path


def published_key(client: TestClient, tmp_path: Path) -> tuple[NoteKey, Path, Path]:
    """The key from GET /v1/audit/key (no token), parsed, and written as vkey and PEM files."""
    r = client.get("/v1/audit/key")
    assert r.status_code == 200, r.text
    body = r.json()
    return (NoteKey(body["vkey"]), _write(tmp_path / "k.vkey", body["vkey"] + "\n"),
            _write(tmp_path / "k.pem", body["public_key_pem"]))


def _write(path: Path, content: str) -> Path:
    path.write_text(content, encoding="utf-8")
    return path


def answer(world: World, token: str | None = None, **body: Any) -> dict[str, Any]:
    r = world.query(token, **body)
    assert r.status_code == 200, r.text
    result: dict[str, Any] = r.json()
    return result


def all_entries(client: TestClient, token: str, **params: Any) -> list[dict[str, Any]]:
    """Every entry the caller may read with ``params``, following cursors."""
    found: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        r = client.get("/v1/audit/entries", headers=auth(token), params=query)
        assert r.status_code == 200, r.text
        page = r.json()
        found += page["entries"]
        cursor = page["next_cursor"]
        if cursor is None:
            return found


def leaves_of(client: TestClient, auditor: str, size: int) -> list[bytes]:
    """The first ``size`` leaf hashes, recomputed from the entries an auditor reads."""
    entries = all_entries(client, auditor, limit=1000)
    assert [e["entry"]["seq"] for e in entries[:size]] == list(range(1, size + 1))
    leaves = [leaf_of(e["entry"]) for e in entries[:size]]
    assert [leaf.hex() for leaf in leaves] == [e["leaf_hash"] for e in entries[:size]]
    return leaves


def sign_checkpoint(settings: Settings) -> str:
    result = cli(settings, "audit", "checkpoint")
    assert result.exit_code == 0, result.output
    return result.stdout


# --- the key ----------------------------------------------------------------------------------


def test_the_key_is_public_and_its_forms_agree(client: TestClient) -> None:
    r = client.get("/v1/audit/key")  # no Authorization header at all
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["algorithm"] == "Ed25519"
    key = NoteKey(body["vkey"])  # checks the key ID against the name and key
    assert key.name == body["origin"]
    assert key.key_id.hex() == body["key_id"]
    pem = serialization.load_pem_public_key(body["public_key_pem"].encode())
    assert isinstance(pem, Ed25519PublicKey)
    assert pem.public_bytes(serialization.Encoding.Raw,
                            serialization.PublicFormat.Raw) == key.raw
    assert client.get("/v1/audit/key", headers={"Authorization": "Bearer junk"}
                      ).status_code in (200, 401)


# --- a receipt, proven offline ----------------------------------------------------------------


def test_a_consumer_proves_its_receipt_offline(
    world: World, settings: Settings, tmp_path: Path
) -> None:
    key, vkey, pem = published_key(world.client, tmp_path)
    first = answer(world, group_by=["town"])
    assert set(first["receipt"]) >= {"seq", "leaf_hash"}
    second = answer(world, measures=[{"fn": "sum", "field": "kwh"}])
    receipt = first["receipt"]
    seq = receipt["seq"]

    r = world.client.get(f"/v1/audit/entries/{seq}/proof", headers=auth(world.econ))
    assert r.status_code == 200, r.text
    doc = r.json()
    assert (doc["type"], doc["seq"], doc["leaf_index"], doc["leaf_hash"]) == (
        "inclusion", seq, seq - 1, receipt["leaf_hash"])
    assert doc["tree_size"] >= seq
    assert doc["entry"]["seq"] == seq
    assert doc["entry"]["actor"]["org"] == "econ"
    assert doc["entry"]["action"] == "query.aggregate"

    # offline with the broker's CLI, given the published key in either form
    doc_file, answer_file = dump(tmp_path / "proof.json", doc), dump(tmp_path / "a.json", first)
    receipt_file = dump(tmp_path / "receipt.json", receipt)
    for key_file in (vkey, pem):
        for wanted in (answer_file, receipt_file):
            result = cli(settings, "audit", "check", str(doc_file), "--pubkey", str(key_file),
                         "--receipt", str(wanted))
            assert result.exit_code == 0, result.output
    # the genuine proof is not a proof of another answer's receipt
    other_file = dump(tmp_path / "other.json", second)
    result = cli(settings, "audit", "check", str(doc_file), "--pubkey", str(vkey),
                 "--receipt", str(other_file))
    assert result.exit_code == 3, result.output

    # and independently of it
    assert check_inclusion(doc, key, receipt)
    _, size, root = key.open(doc["checkpoint"])
    leaves = leaves_of(world.client, world.auditor, size)
    assert mth(leaves) == root
    assert [bytes.fromhex(p) for p in doc["proof"]] == audit_path(seq - 1, leaves)


def test_a_proof_against_an_older_checkpoint_by_size(
    world: World, settings: Settings, tmp_path: Path
) -> None:
    key, _, _ = published_key(world.client, tmp_path)
    receipt = answer(world)["receipt"]
    old = sign_checkpoint(settings)
    for _ in range(3):
        answer(world, group_by=["town"])
    sign_checkpoint(settings)
    _, old_size, old_root = key.open(old)
    r = world.client.get(f"/v1/audit/entries/{receipt['seq']}/proof", headers=auth(world.econ),
                         params={"size": old_size})
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["tree_size"] == old_size
    assert doc["checkpoint"] == old
    assert check_inclusion(doc, key, receipt)
    latest = world.client.get(f"/v1/audit/entries/{receipt['seq']}/proof",
                              headers=auth(world.econ)).json()
    assert latest["tree_size"] > old_size
    assert check_inclusion(latest, key, receipt)
    # a checkpoint signed before the entry existed cannot prove it; nor one never signed
    before = world.client.get(f"/v1/audit/entries/{old_size + 1}/proof",
                              headers=auth(world.auditor), params={"size": old_size})
    assert_problem(before, 422, "invalid-input")
    never = world.client.get(f"/v1/audit/entries/{receipt['seq']}/proof",
                             headers=auth(world.auditor), params={"size": old_size + 1000})
    assert_problem(never, 404, "not-found")
    assert old_root


def _forge_note(note: str, name: str) -> str:
    """The note's text signed under the same name by a key the log does not use."""
    text = note[:note.rfind("\n\n") + 1]
    private = Ed25519PrivateKey.generate()
    raw = private.public_key().public_bytes(serialization.Encoding.Raw,
                                            serialization.PublicFormat.Raw)
    key_id = sha256(name.encode() + b"\n\x01" + raw)[:4]
    blob = key_id + private.sign(text.encode())
    return f"{text}\n\u2014 {name} {base64.b64encode(blob).decode()}\n"


def _flip_hex(value: str, at: int = 0) -> str:
    return value[:at] + ("0" if value[at] != "0" else "1") + value[at + 1:]


def _resign_root(note: str) -> str:
    """The note with the root in its text changed and the signature left as it was."""
    lines = note.split("\n")
    root = bytearray(base64.b64decode(lines[2]))
    root[0] ^= 0x01
    lines[2] = base64.b64encode(bytes(root)).decode()
    return "\n".join(lines)


MUTATIONS: dict[str, Callable[[dict[str, Any], dict[str, Any]], object]] = {
    "other-seq": lambda d, _: d.update(seq=d["seq"] + 1, leaf_index=d["seq"]),
    "other-seq-without-entry": lambda d, _: d.update(seq=d["seq"] + 1, leaf_index=d["seq"],
                                                     entry=None),
    "flipped-proof-hash": lambda d, _: d["proof"].__setitem__(0, _flip_hex(d["proof"][0], 5)),
    "proof-hash-dropped": lambda d, _: d["proof"].pop(),
    "other-receipt": lambda d, other: d.update(
        seq=other["seq"], leaf_hash=other["leaf_hash"], leaf_index=other["seq"] - 1),
    "forged-note": lambda d, _: d.update(
        checkpoint=_forge_note(d["checkpoint"], d["checkpoint"].split("\n")[0])),
    "note-root-edited": lambda d, _: d.update(checkpoint=_resign_root(d["checkpoint"])),
    "entry-edited": lambda d, _: d["entry"].update(purpose="emissions-monitoring"),
    "entry-and-leaf-edited": lambda d, _: (
        d["entry"].update(purpose="emissions-monitoring"),
        d.update(leaf_hash=leaf_of(d["entry"]).hex())),
    "tree-size": lambda d, _: d.update(tree_size=d["tree_size"] + 1),
    "leaf-index": lambda d, _: d.update(leaf_index=d["leaf_index"] + 1),
}


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_a_mutated_inclusion_document_does_not_hold(
    world: World, settings: Settings, tmp_path: Path, mutation: str
) -> None:
    key, vkey, _ = published_key(world.client, tmp_path)
    mine = answer(world, group_by=["town"])
    other = answer(world, measures=[{"fn": "sum", "field": "kwh"}])
    answer(world)
    r = world.client.get(f"/v1/audit/entries/{mine['receipt']['seq']}/proof",
                         headers=auth(world.econ))
    assert r.status_code == 200, r.text
    genuine = r.json()
    doc = copy.deepcopy(genuine)
    MUTATIONS[mutation](doc, other["receipt"])
    assert doc != genuine
    answer_file = dump(tmp_path / "answer.json", mine)
    assert cli(settings, "audit", "check", str(dump(tmp_path / "ok.json", genuine)),
               "--pubkey", str(vkey), "--receipt", str(answer_file)).exit_code == 0
    assert check_inclusion(genuine, key, mine["receipt"])
    bad = dump(tmp_path / "bad.json", doc)
    result = cli(settings, "audit", "check", str(bad), "--pubkey", str(vkey),
                 "--receipt", str(answer_file))
    assert result.exit_code == 3, result.output
    result = cli(settings, "audit", "check", str(bad), "--pubkey", str(vkey))
    assert result.exit_code == 3, result.output  # nor does it hold on its own
    assert not holds(lambda: check_inclusion(doc, key, mine["receipt"]))
    if mutation == "other-receipt":  # about the other answer, it holds no better
        assert not holds(lambda: check_inclusion(doc, key, other["receipt"]))


# --- who may have a proof ---------------------------------------------------------------------


def test_proofs_follow_who_the_entry_is_about(
    world: World, client: TestClient, mint: Mint
) -> None:
    water = mint("water", "provider")
    r = upload(client, water, ENERGY, {**ENERGY_META, "name": "water-energy"})
    assert r.status_code == 201, r.text
    water_upload = max(e["entry"]["seq"] for e in all_entries(
        client, world.auditor, action="dataset.register"))
    econ_query = answer(world, group_by=["town"])["receipt"]["seq"]
    denied = world.query(token=world.env)
    assert denied.status_code == 403
    env_denied = max(e["entry"]["seq"] for e in all_entries(client, world.auditor, org="env"))

    def status(token: str, seq: int) -> int:
        r = client.get(f"/v1/audit/entries/{seq}/proof", headers=auth(token))
        if r.status_code != 200:
            assert_problem(r, r.status_code, r.json()["type"])
        else:
            assert r.json()["seq"] == seq
        return int(r.status_code)

    # consumers: their own entries only
    assert status(world.econ, econ_query) == 200
    assert status(world.env, env_denied) == 200  # a refusal is a receipt too
    for seq in (econ_query, 1, water_upload):
        assert status(world.env, seq) == 403
    for seq in (env_denied, 1, water_upload):
        assert status(world.econ, seq) == 403
    forbidden = client.get(f"/v1/audit/entries/{econ_query}/proof", headers=auth(world.env))
    assert_problem(forbidden, 403, "policy-denied")
    # providers: entries about their datasets only
    assert status(world.grid, econ_query) == 200
    assert status(world.grid, env_denied) == 200  # env tried grid's dataset
    assert status(water, water_upload) == 200
    for seq in (1, water_upload):
        assert status(world.grid, seq) == 403
    for seq in (econ_query, env_denied, 1):
        assert status(water, seq) == 403
    # auditors: any
    for seq in (1, econ_query, env_denied, water_upload):
        assert status(world.auditor, seq) == 200
    # the admin holds no grant
    assert status(world.admin, 1) == 403


def test_proof_of_a_missing_or_malformed_seq(world: World) -> None:
    c = world.client
    beyond = c.get("/v1/audit/entries/100000/proof", headers=auth(world.auditor))
    assert_problem(beyond, 404, "not-found")
    # a consumer learns nothing more about a missing entry than about another org's
    mine_missing = c.get("/v1/audit/entries/100000/proof", headers=auth(world.econ))
    others = c.get("/v1/audit/entries/1/proof", headers=auth(world.econ))
    assert mine_missing.status_code == others.status_code
    for bad in ("0", "-1", "junk", "1.5", str(2**60)):
        r = c.get(f"/v1/audit/entries/{bad}/proof", headers=auth(world.auditor))
        assert_problem(r, 422, "invalid-input")
    assert_problem(c.get("/v1/audit/entries/1/proof", params={"size": "0"},
                         headers=auth(world.auditor)), 422, "invalid-input")
    assert_problem(c.get("/v1/audit/entries/1/proof"), 401, "unauthenticated")


# --- checkpoints and consistency --------------------------------------------------------------


def _checkpointed(world: World, settings: Settings, rounds: int = 5) -> list[str]:
    """Queries with a checkpoint signed after each round; the notes in order."""
    notes = []
    for i in range(rounds):
        answer(world, group_by=["town"]) if i % 2 else answer(world)
        notes.append(sign_checkpoint(settings))
    return notes


def test_checkpoints_are_listed_newest_first_with_cursor_paging(
    world: World, settings: Settings, tmp_path: Path
) -> None:
    key, _, _ = published_key(world.client, tmp_path)
    notes = _checkpointed(world, settings)
    sizes = [key.open(n)[1] for n in notes]
    assert sizes == sorted(set(sizes))
    for token in (world.auditor, world.grid, world.econ):
        pages, before = [], None
        while True:
            params: dict[str, Any] = {"limit": 2, **({"before": before} if before else {})}
            r = world.client.get("/v1/audit/checkpoints", headers=auth(token), params=params)
            assert r.status_code == 200, r.text
            page = r.json()
            assert len(page["checkpoints"]) <= 2
            pages.append(page["checkpoints"])
            before = page["next_cursor"]
            if before is None:
                break
        listed = [c for page in pages for c in page]
        assert [c["size"] for c in listed] == sorted(sizes, reverse=True)
        assert [c["note"] for c in listed] == list(reversed(notes))
        for c in listed:
            _, size, root = key.open(c["note"])
            assert (size, root.hex()) == (c["size"], c["root"])
            assert c["ts"].endswith("Z")
    r = world.client.get("/v1/audit/checkpoints", headers=auth(world.auditor),
                         params={"before": "junk"})
    assert_problem(r, 422, "invalid-input")


def test_a_consistency_proof_between_two_checkpoints_verifies(
    world: World, settings: Settings, tmp_path: Path
) -> None:
    key, vkey, pem = published_key(world.client, tmp_path)
    notes = _checkpointed(world, settings)
    _, new_size, new_root = key.open(notes[-1])
    for old_note in notes[:-1]:
        _, old_size, old_root = key.open(old_note)
        r = world.client.get("/v1/audit/consistency", headers=auth(world.econ),
                             params={"old": old_size, "new": new_size})
        assert r.status_code == 200, r.text
        doc = r.json()
        assert (doc["type"], doc["old_size"], doc["new_size"]) == (
            "consistency", old_size, new_size)
        assert (doc["old_root"], doc["new_root"]) == (old_root.hex(), new_root.hex())
        trusted = _write(tmp_path / "trusted.checkpoint", old_note)
        doc_file = dump(tmp_path / "consistency.json", doc)
        for key_file in (vkey, pem):
            result = cli(settings, "audit", "check", str(doc_file), "--pubkey", str(key_file),
                         "--trusted", str(trusted))
            assert result.exit_code == 0, result.output
        assert check_consistency(doc, key, old_note)
        leaves = leaves_of(world.client, world.auditor, new_size)
        assert mth(leaves[:old_size]) == old_root
        assert [bytes.fromhex(p) for p in doc["proof"]] == subproof(old_size, leaves, True)

    # the default new end is the latest checkpoint
    r = world.client.get("/v1/audit/consistency", headers=auth(world.auditor),
                         params={"old": 1})
    assert r.status_code == 200, r.text
    assert r.json()["new_size"] == new_size
    assert consistent(1, new_size, bytes.fromhex(r.json()["old_root"]), new_root,
                      [bytes.fromhex(p) for p in r.json()["proof"]])


def test_a_consistency_proof_fails_for_a_tampered_old_root(
    world: World, settings: Settings, tmp_path: Path
) -> None:
    key, vkey, _ = published_key(world.client, tmp_path)
    notes = _checkpointed(world, settings)
    old_note = notes[1]
    _, old_size, _ = key.open(old_note)
    doc = world.client.get("/v1/audit/consistency", headers=auth(world.auditor),
                           params={"old": old_size}).json()
    trusted = _write(tmp_path / "trusted.checkpoint", old_note)
    assert check_consistency(doc, key, old_note)

    tampered = {**doc, "old_root": _flip_hex(doc["old_root"], 7)}
    bad = dump(tmp_path / "bad.json", tampered)
    for extra in ([], ["--trusted", str(trusted)]):
        result = cli(settings, "audit", "check", str(bad), "--pubkey", str(vkey), *extra)
        assert result.exit_code == 3, result.output
    assert not holds(lambda: check_consistency(tampered, key, old_note))
    assert not consistent(old_size, doc["new_size"], bytes.fromhex(tampered["old_root"]),
                          bytes.fromhex(doc["new_root"]),
                          [bytes.fromhex(p) for p in doc["proof"]])

    # a genuine proof from another old size than the one trusted does not pass as it either
    other = world.client.get("/v1/audit/consistency", headers=auth(world.auditor),
                             params={"old": key.open(notes[0])[1]}).json()
    result = cli(settings, "audit", "check", str(dump(tmp_path / "other.json", other)),
                 "--pubkey", str(vkey), "--trusted", str(trusted))
    assert result.exit_code == 3, result.output
    # a flipped proof hash
    flipped = {**doc, "proof": [_flip_hex(doc["proof"][0], 3), *doc["proof"][1:]]}
    result = cli(settings, "audit", "check", str(dump(tmp_path / "flipped.json", flipped)),
                 "--pubkey", str(vkey), "--trusted", str(trusted))
    assert result.exit_code == 3, result.output
    assert not holds(lambda: check_consistency(flipped, key, old_note))


def test_consistency_request_errors(world: World, settings: Settings) -> None:
    c = world.client
    assert_problem(c.get("/v1/audit/consistency", headers=auth(world.auditor),
                         params={"old": 1}), 404, "not-found")  # nothing signed yet
    sign_checkpoint(settings)
    size = c.get("/v1/audit/checkpoints", headers=auth(world.auditor)).json()[
        "checkpoints"][0]["size"]
    assert_problem(c.get("/v1/audit/consistency", headers=auth(world.auditor),
                         params={"old": size + 1}), 422, "invalid-input")
    assert_problem(c.get("/v1/audit/consistency", headers=auth(world.auditor),
                         params={"old": 1, "new": size + 1}), 404, "not-found")
    for bad in ("0", "junk"):
        assert_problem(c.get("/v1/audit/consistency", headers=auth(world.auditor),
                             params={"old": bad}), 422, "invalid-input")


# --- the provider's view ----------------------------------------------------------------------

_SCRUB = [
    re.compile(r"[0-9a-f]{16,}"),  # hashes, digests, nonces
    re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"),  # ids
    re.compile(r"\d{4}-\d\d-\d\dT[0-9:.]+Z?"),  # timestamps
]


def _scrubbed(text: str) -> str:
    for pattern in _SCRUB:
        text = pattern.sub("#", text)
    return text


def _row_values(answers: list[dict[str, Any]]) -> list[str]:
    """Strings that would betray a row or a released value if they appeared in the log."""
    values = ["Firm ", *(f'"E{i}"' for i in range(1, 9)), "1000", "1007", "85.0"]
    for a in answers:
        for cell in a["cells"]:
            for v in (cell.get("values") or {}).values():
                if (isinstance(v, float) and not v.is_integer()) or abs(v) >= 40:
                    values.append(repr(v).rstrip("0").rstrip(".") if isinstance(v, float)
                                  else str(v))
    return values


def test_a_provider_sees_who_used_its_data_and_no_value(
    world: World, client: TestClient, mint: Mint
) -> None:
    water = mint("water", "provider")
    for path in ("/v1/audit/accesses", "/v1/audit/entries"):  # no dataset yet: nothing to see
        r = client.get(path, headers=auth(water))
        assert r.status_code == 200, r.text
        assert r.json()["accesses" if path.endswith("accesses") else "entries"] == []
    r = upload(client, water, ENERGY, {**ENERGY_META, "name": "water-energy"})
    assert r.status_code == 201, r.text
    water_id = r.json()["id"]
    answers = [answer(world, group_by=["town"], measures=[
        {"fn": "count"}, {"fn": "sum", "field": "kwh"}, {"fn": "mean", "field": "kwh"}])]
    answers.append(answer(world, measures=[{"fn": "sum", "field": "kwh"}]))
    assert world.query(token=world.env).status_code == 403
    grid_id, contract_id = world.dataset["id"], world.contract["id"]

    everything = all_entries(client, world.auditor, limit=1000)
    snapshot = max(e["entry"]["seq"] for e in everything)
    about_grid = [e["entry"] for e in everything
                  if e["entry"]["resource"]["dataset_id"] == grid_id]

    accesses: list[dict[str, Any]] = []
    texts: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        r = client.get("/v1/audit/accesses", headers=auth(world.grid), params=params)
        assert r.status_code == 200, r.text
        texts.append(r.text)
        accesses += r.json()["accesses"]
        cursor = r.json()["next_cursor"]
        if cursor is None:
            break
    accesses = [a for a in accesses if a["seq"] <= snapshot]
    assert [a["seq"] for a in accesses] == [e["seq"] for e in about_grid]
    assert {a["dataset_id"] for a in accesses} == {grid_id}

    queries = [a for a in accesses if a["action"] == "query.aggregate"]
    assert [(a["who"]["sub"], a["who"]["org"], a["allowed"]) for a in queries] == [
        ("user@econ", "econ", True), ("user@econ", "econ", True), ("user@env", "env", False)]
    for a, receipt in zip(queries, (x["receipt"] for x in answers), strict=False):
        assert a["seq"] == receipt["seq"]
        assert a["leaf_hash"] == receipt["leaf_hash"]
        assert a["purpose"] == "energy-planning"
        assert a["contract_id"] == contract_id
        assert a["ts"].endswith("Z")
    assert set(queries[0]["fields"]) == {"town", "kwh"}
    assert queries[0]["disclosure"]["cells_published"] >= 1
    assert queries[2]["reasons"]

    # never a row value, nor a released one
    for body in texts:
        clean = _scrubbed(body)
        for value in _row_values(answers):
            assert value not in clean, value
    assert water_id not in "".join(texts)
    # the water company sees its own dataset's record and nothing of grid's
    water_view = client.get("/v1/audit/accesses", headers=auth(water)).json()["accesses"]
    assert water_view
    assert {a["dataset_id"] for a in water_view} == {water_id}
    # consumers do not read the log
    assert_problem(client.get("/v1/audit/accesses", headers=auth(world.econ)), 403,
                   "policy-denied")


def test_the_entries_an_auditor_reads_carry_no_row_value(world: World) -> None:
    answers = [answer(world, group_by=["town"], measures=[
        {"fn": "count"}, {"fn": "sum", "field": "kwh"}, {"fn": "mean", "field": "kwh"}])]
    texts = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        r = world.client.get("/v1/audit/entries", headers=auth(world.auditor), params=params)
        texts.append(r.text)
        cursor = r.json()["next_cursor"]
        if cursor is None:
            break
    for body in texts:
        clean = _scrubbed(body)
        for value in _row_values(answers):
            assert value not in clean, value


# --- entry filters with cursor paging ---------------------------------------------------------


def _paged(client: TestClient, token: str, limit: int, **params: Any) -> list[dict[str, Any]]:
    """Every page of a filtered listing; checks the pages themselves on the way."""
    found: list[dict[str, Any]] = []
    cursor = None
    while True:
        query = {"limit": limit, **params, **({"cursor": cursor} if cursor else {})}
        r = client.get("/v1/audit/entries", headers=auth(token), params=query)
        assert r.status_code == 200, r.text
        page = r.json()
        assert len(page["entries"]) <= limit
        if page["next_cursor"] is not None:
            assert len(page["entries"]) == limit
            assert page["next_cursor"] == str(page["entries"][-1]["entry"]["seq"])
        found += page["entries"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    seqs = [e["entry"]["seq"] for e in found]
    assert seqs == sorted(set(seqs))
    return found


def test_entry_filters_with_cursor_paging(world: World, client: TestClient, mint: Mint) -> None:
    water = mint("water", "provider")
    r = upload(client, water, ENERGY, {**ENERGY_META, "name": "water-energy"})
    assert r.status_code == 201, r.text
    water_id = r.json()["id"]
    env_contract = world.contract_for(world.dataset["id"], consumer="env")
    for i in range(3):
        answer(world, group_by=["town"]) if i % 2 else answer(world)
    assert world.query(token=world.env).status_code == 403  # wrong contract: denied
    assert world.query(token=world.env, contract_id=env_contract).status_code == 200
    assert world.query(purpose="emissions-monitoring").status_code == 403

    everything = [e["entry"] for e in all_entries(client, world.auditor, limit=1000)]
    snapshot = len(everything)
    assert [e["seq"] for e in everything] == list(range(1, snapshot + 1))
    middle = everything[snapshot // 2]
    late = everything[snapshot - 3]

    cases: list[tuple[dict[str, Any], Callable[[dict[str, Any]], bool]]] = [
        ({"actor": "user@econ"}, lambda e: e["actor"]["sub"] == "user@econ"),
        ({"org": "env"}, lambda e: e["actor"]["org"] == "env"),
        ({"dataset_id": world.dataset["id"]},
         lambda e: e["resource"]["dataset_id"] == world.dataset["id"]),
        ({"dataset_id": water_id}, lambda e: e["resource"]["dataset_id"] == water_id),
        ({"contract_id": env_contract}, lambda e: e["resource"]["contract_id"] == env_contract),
        ({"action": "query.aggregate"}, lambda e: e["action"] == "query.aggregate"),
        ({"decision": "allow"}, lambda e: e["decision"]["allowed"] is True),
        ({"decision": "deny"}, lambda e: e["decision"]["allowed"] is False),
        ({"allowed": "false"}, lambda e: e["decision"]["allowed"] is False),
        ({"since": middle["ts"]}, lambda e: e["ts"] >= middle["ts"]),
        ({"until": middle["ts"]}, lambda e: e["ts"] < middle["ts"]),
        ({"since": middle["ts"], "until": late["ts"]},
         lambda e: middle["ts"] <= e["ts"] < late["ts"]),
        ({"org": "econ", "decision": "deny", "action": "query.aggregate"},
         lambda e: e["actor"]["org"] == "econ" and not e["decision"]["allowed"]
         and e["action"] == "query.aggregate"),
    ]
    for params, wanted in cases:
        expected = [e["seq"] for e in everything if wanted(e)]
        assert expected, params  # every filter has something to find
        assert len(expected) < snapshot, params  # and something to leave out
        got = [e["entry"]["seq"] for e in _paged(client, world.auditor, 2, **params)
               if e["entry"]["seq"] <= snapshot]
        assert got == expected, params

    # a provider's filters act inside its own datasets only
    grid_all = [e["entry"]["seq"] for e in _paged(client, world.grid, 3)
                if e["entry"]["seq"] <= snapshot]
    assert grid_all == [e["seq"] for e in everything
                        if e["resource"]["dataset_id"] == world.dataset["id"]]
    assert _paged(client, world.grid, 3, dataset_id=water_id) == []
    grid_denied = [e["entry"]["seq"] for e in _paged(client, world.grid, 2, decision="deny")]
    assert grid_denied == [e["seq"] for e in everything if not e["decision"]["allowed"]
                           and e["resource"]["dataset_id"] == world.dataset["id"]]

    for bad in ({"decision": "maybe"}, {"decision": "allow", "allowed": "false"},
                {"since": "yesterday"}, {"until": "2026-01-01T00:00:00"},
                {"cursor": "junk"}, {"dataset_id": "not-a-uuid"}, {"limit": 0},
                {"action": "DROP TABLE"}):
        r = client.get("/v1/audit/entries", headers=auth(world.auditor), params=bad)
        assert_problem(r, 422, "invalid-input")
