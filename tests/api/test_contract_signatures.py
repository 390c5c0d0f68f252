"""Signed contracts over HTTP: organisations that keep their own keys, forged and missing
signatures, terms changed behind the broker's back, suspension, expiry, ODRL-free reads."""

from __future__ import annotations

import base64
import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.settings import Settings
from contracts.terms import ContractTerms, encode_public_key
from tests.conftest import ENERGY, ENERGY_META, Mint, World, assert_problem, auth, contract_terms
from tests.conftest import upload as upload_csv


class SelfSigned:
    """Two organisations that registered their own public keys: a provider and a consumer."""

    def __init__(self, world: World, mint: Mint) -> None:
        self.world = world
        self.provider_key = Ed25519PrivateKey.generate()
        self.consumer_key = Ed25519PrivateKey.generate()
        c = world.client
        for org, kind, key in (("solar", "enterprise", self.provider_key),
                               ("stats", "department", self.consumer_key)):
            r = c.post("/v1/orgs", headers=auth(world.admin), json={
                "id": org, "name": org.title(), "kind": kind,
                "public_key": encode_public_key(key.public_key())})
            assert r.status_code == 201, r.text
        self.provider = mint("solar", "provider")
        self.consumer = mint("stats", "consumer")
        r = upload_csv(c, self.provider, ENERGY, {**ENERGY_META, "name": "solar-energy"})
        assert r.status_code == 201, r.text
        self.dataset = r.json()["id"]

    def offer(self, **terms: Any) -> dict[str, Any]:
        r = self.world.client.post(
            "/v1/contracts", headers=auth(self.provider),
            json=contract_terms(self.dataset, consumer_org="stats", **terms))
        assert r.status_code == 201, r.text
        body: dict[str, Any] = r.json()
        return body

    def terms(self, cid: str, token: str) -> ContractTerms:
        r = self.world.client.get(f"/v1/contracts/{cid}/terms", headers=auth(token))
        assert r.status_code == 200, r.text
        return ContractTerms.model_validate(r.json())

    @staticmethod
    def sign(key: Ed25519PrivateKey, terms: ContractTerms) -> str:
        return base64.b64encode(key.sign(terms.canonical())).decode()


@pytest.fixture
def signed(world: World, mint: Mint) -> SelfSigned:
    return SelfSigned(world, mint)


def _query(world: World, token: str, cid: str) -> Any:
    return world.client.post("/v1/queries/aggregate", headers=auth(token), json={
        "contract_id": cid, "purpose": "energy-planning", "group_by": ["town"],
        "measures": [{"fn": "count"}]})


def test_an_offer_from_an_org_with_its_own_key_waits_for_its_signature(
        signed: SelfSigned) -> None:
    c = signed.world.client
    offered = signed.offer()
    assert offered["status"] == "offered"
    assert offered["signatures"]["provider"] == {"signature": None, "valid": False}
    # The consumer cannot accept an unsigned offer, with or without a signature of its own.
    r = c.post(f"/v1/contracts/{offered['id']}/accept", headers=auth(signed.consumer))
    assert_problem(r, 409, "conflict")
    terms = signed.terms(offered["id"], signed.provider)
    assert terms.provider == "solar"
    assert terms.consumer == "stats"
    r = c.post(f"/v1/contracts/{offered['id']}/sign", headers=auth(signed.provider),
               json={"signature": signed.sign(signed.provider_key, terms)})
    assert r.status_code == 200, r.text
    assert r.json()["signatures"]["provider"]["valid"] is True
    # Acceptance needs the consumer's own signature: the broker does not hold its key.
    r = c.post(f"/v1/contracts/{offered['id']}/accept", headers=auth(signed.consumer))
    assert_problem(r, 422, "bad-signature")
    r = c.post(f"/v1/contracts/{offered['id']}/accept", headers=auth(signed.consumer),
               json={"signature": signed.sign(signed.consumer_key, terms)})
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "active"
    assert r.json()["signatures"]["consumer"]["valid"] is True
    assert r.json()["terms_sha256"] == __import__("hashlib").sha256(terms.canonical()).hexdigest()
    assert _query(signed.world, signed.consumer, offered["id"]).status_code == 200


def test_forged_signatures_are_refused_and_audited(signed: SelfSigned) -> None:
    c, world = signed.world.client, signed.world
    offered = signed.offer()
    cid = offered["id"]
    terms = signed.terms(cid, signed.provider)
    forger = Ed25519PrivateKey.generate()
    other_terms = terms.model_copy(update={"k_min": 2})
    for forged in (signed.sign(forger, terms),                      # someone else's key
                   signed.sign(signed.provider_key, other_terms),   # other terms
                   signed.sign(signed.consumer_key, terms),         # the other party's key
                   base64.b64encode(bytes(64)).decode()):
        r = c.post(f"/v1/contracts/{cid}/sign", headers=auth(signed.provider),
                   json={"signature": forged})
        assert_problem(r, 422, "bad-signature")
    for malformed in ("", "abc", "A" * 200):
        r = c.post(f"/v1/contracts/{cid}/sign", headers=auth(signed.provider),
                   json={"signature": malformed})
        assert_problem(r, 422, "invalid-input")
    assert c.get(f"/v1/contracts/{cid}", headers=auth(signed.provider)).json()[
        "signatures"]["provider"]["signature"] is None
    r = c.post(f"/v1/contracts/{cid}/sign", headers=auth(signed.provider),
               json={"signature": signed.sign(signed.provider_key, terms)})
    assert r.status_code == 200
    r = c.post(f"/v1/contracts/{cid}/accept", headers=auth(signed.consumer),
               json={"signature": signed.sign(forger, terms)})
    assert_problem(r, 422, "bad-signature")
    assert c.get(f"/v1/contracts/{cid}", headers=auth(signed.consumer)).json()["status"] == (
        "offered")
    assert _query(world, signed.consumer, cid).status_code == 403
    entries = c.get("/v1/audit/entries", headers=auth(world.auditor),
                    params={"contract_id": cid, "decision": "deny"}).json()["entries"]
    assert {(e["entry"]["action"], tuple(e["entry"]["decision"]["reasons"]))
            for e in entries} >= {
        ("contract.sign", ("bad-signature",)), ("contract.accept", ("bad-signature",))}


def test_a_signature_cannot_be_replayed_onto_another_contract(signed: SelfSigned) -> None:
    c = signed.world.client
    first, second = signed.offer(), signed.offer()
    terms = signed.terms(first["id"], signed.provider)
    r = c.post(f"/v1/contracts/{second['id']}/sign", headers=auth(signed.provider),
               json={"signature": signed.sign(signed.provider_key, terms)})
    assert_problem(r, 422, "bad-signature")


def _db(settings: Settings) -> sqlite3.Connection:
    return sqlite3.connect(settings.data_dir / "broker.db")


@pytest.mark.parametrize(("column", "value"), [
    ("k_min", 2), ("max_queries_per_day", 100000), ("consumer_signature", None),
    ("valid_until", "2099-01-01 00:00:00.000000"), ("fields", '{"town": "clear", "kwh": "clear",'
                                                            ' "name": "clear"}'),
    ("dataset_version", 1),
])
def test_terms_changed_in_the_database_stop_the_contract(
        world: World, settings: Settings, column: str, value: object) -> None:
    assert _query(world, world.econ, world.contract["id"]).status_code == 200
    with _db(settings) as db:
        db.execute(f"UPDATE contracts SET {column} = ? WHERE id = ?",  # noqa: S608
                   (value, world.contract["id"]))
    r = _query(world, world.econ, world.contract["id"])
    assert assert_problem(r, 403, "policy-denied")["reasons"] == ["contract-signature-invalid"]
    got = world.client.get(f"/v1/contracts/{world.contract['id']}", headers=auth(world.econ))
    assert got.json()["signatures"]["consumer"]["valid"] is False or column == "consumer_signature"


def test_a_replaced_public_key_stops_the_contract(world: World, settings: Settings) -> None:
    forged = encode_public_key(Ed25519PrivateKey.generate().public_key())
    with _db(settings) as db:
        db.execute("UPDATE orgs SET public_key = ? WHERE id = 'grid'", (forged,))
    r = _query(world, world.econ, world.contract["id"])
    assert assert_problem(r, 403, "policy-denied")["reasons"] == ["contract-signature-invalid"]


def test_suspend_and_resume(world: World) -> None:
    c, cid = world.client, world.contract["id"]
    r = c.post(f"/v1/contracts/{cid}/suspend", headers=auth(world.grid))
    assert r.status_code == 200
    assert r.json()["status"] == "suspended"
    assert r.json()["suspended_at"]
    assert assert_problem(_query(world, world.econ, cid), 403, "policy-denied")["reasons"] == [
        "contract-not-active"]
    for token, action in ((world.econ, "resume"), (world.econ, "suspend"),
                          (world.auditor, "resume")):
        assert_problem(c.post(f"/v1/contracts/{cid}/{action}", headers=auth(token)), 403,
                       "policy-denied")
    assert_problem(c.post(f"/v1/contracts/{cid}/suspend", headers=auth(world.grid)), 409,
                   "conflict")
    assert_problem(c.post(f"/v1/contracts/{cid}/accept", headers=auth(world.econ)), 409,
                   "conflict")
    r = c.post(f"/v1/contracts/{cid}/resume", headers=auth(world.grid))
    assert r.status_code == 200
    assert r.json()["status"] == "active"
    assert _query(world, world.econ, cid).status_code == 200
    assert_problem(c.post(f"/v1/contracts/{cid}/resume", headers=auth(world.grid)), 409,
                   "conflict")
    c.post(f"/v1/contracts/{cid}/suspend", headers=auth(world.grid))
    assert c.post(f"/v1/contracts/{cid}/revoke", headers=auth(world.grid)).json()["status"] == (
        "revoked")
    assert_problem(c.post(f"/v1/contracts/{cid}/resume", headers=auth(world.grid)), 409,
                   "conflict")
    actions = [e["entry"]["action"] for e in c.get("/v1/audit/entries", headers=auth(world.auditor),
                                          params={"contract_id": cid}).json()["entries"]]
    for step in ("contract.suspend", "contract.resume", "contract.revoke"):
        assert step in actions


def test_an_expired_contract_is_stored_and_audited_once(world: World, settings: Settings) -> None:
    cid = world.contract["id"]
    with _db(settings) as db:  # the window closes (signatures are refreshed by re-signing)
        db.execute("UPDATE contracts SET valid_until = '2000-01-01 00:00:00.000000', "
                   "valid_from = '1999-01-01 00:00:00.000000' WHERE id = ?", (cid,))
    r = world.client.get(f"/v1/contracts/{cid}", headers=auth(world.econ))
    assert r.json()["status"] == "expired"
    world.client.get(f"/v1/contracts/{cid}", headers=auth(world.econ))
    world.client.get("/v1/contracts", headers=auth(world.grid))
    expiries = world.client.get("/v1/audit/entries", headers=auth(world.auditor), params={
        "contract_id": cid, "action": "contract.expire"}).json()["entries"]
    assert len(expiries) == 1
    assert_problem(world.client.post(f"/v1/contracts/{cid}/suspend", headers=auth(world.grid)),
                   409, "conflict")


def test_unknown_purposes_are_refused_at_offer(world: World) -> None:
    r = world.client.post("/v1/contracts", headers=auth(world.grid), json=contract_terms(
        world.dataset["id"], purposes=["energy-planning", "marketing"]))
    assert assert_problem(r, 422, "invalid-input")["purposes"] == ["marketing"]


def test_org_public_keys_are_validated(world: World) -> None:
    for bad in ("not a key", base64.b64encode(b"short").decode(),
                "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----"):
        r = world.client.post("/v1/orgs", headers=auth(world.admin),
                              json={"id": "bad-key", "name": "B", "kind": "enterprise",
                                    "public_key": bad})
        assert_problem(r, 422, "invalid-input")


def test_the_cli_signs_what_the_api_verifies(signed: SelfSigned, tmp_path: Path) -> None:
    c = signed.world.client
    offered = signed.offer()
    r = c.get(f"/v1/contracts/{offered['id']}/terms", headers=auth(signed.provider))
    terms_file = tmp_path / "terms.json"
    terms_file.write_text(json.dumps(r.json(), indent=2, ensure_ascii=False))
    key_file = tmp_path / "solar.pem"
    out = subprocess.run([sys.executable, "-m", "broker", "contracts", "keygen", "--out",
                          str(key_file)], capture_output=True, text=True, check=True)
    public = out.stdout.strip()
    assert len(base64.b64decode(public)) == 32
    assert key_file.stat().st_mode & 0o777 == 0o600
    # The key registered for solar is a different one: this signature must not verify.
    sig = subprocess.run([sys.executable, "-m", "broker", "contracts", "sign", str(terms_file),
                          "--key", str(key_file)], capture_output=True, text=True, check=True)
    r = c.post(f"/v1/contracts/{offered['id']}/sign", headers=auth(signed.provider),
               json={"signature": sig.stdout.strip()})
    assert_problem(r, 422, "bad-signature")
    check = subprocess.run([sys.executable, "-m", "broker", "contracts", "verify",
                            str(terms_file), "--signature", sig.stdout.strip(), "--pubkey",
                            public], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    wrong = subprocess.run([sys.executable, "-m", "broker", "contracts", "verify",
                            str(terms_file), "--signature", sig.stdout.strip(), "--pubkey",
                            encode_public_key(signed.provider_key.public_key())],
                           capture_output=True, text=True)
    assert wrong.returncode == 1
    # With the organisation's real key, the CLI's signature is accepted by the broker.
    real = tmp_path / "real.pem"
    from cryptography.hazmat.primitives import serialization
    real.write_bytes(signed.provider_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    sig = subprocess.run([sys.executable, "-m", "broker", "contracts", "sign", "-",
                          "--key", str(real)], input=terms_file.read_text(),
                         capture_output=True, text=True, check=True)
    r = c.post(f"/v1/contracts/{offered['id']}/sign", headers=auth(signed.provider),
               json={"signature": sig.stdout.strip()})
    assert r.status_code == 200, r.text
