"""The signed terms document: schema, examples, canonical bytes, signatures, state machine."""

from __future__ import annotations

import base64
import dataclasses
import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jsonschema
import pytest
import rfc8785
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from contracts.model import (
    TRANSITIONS,
    Contract,
    ContractStatus,
    Dominance,
    FieldForm,
    IllegalTransition,
    Terms,
)
from contracts.terms import (
    BadKey,
    ContractTerms,
    encode_public_key,
    parse_public_key,
    render_schema,
    sign,
    verify,
)

ROOT = Path(__file__).resolve().parents[2] / "contracts"
T0 = datetime(2026, 1, 1, tzinfo=UTC)


TERM_NAMES = {term.name for term in dataclasses.fields(Terms)}


def _contract(**kw: object) -> Contract:
    """A contract; ``kw`` overrides its attributes and, by their names, its terms."""
    terms: dict[str, object] = {
        "dataset_id": "00000000-0000-4000-8000-000000000001", "purposes": ("energy-planning",),
        "fields": {"town": FieldForm.CLEAR, "用电量": FieldForm.AGGREGATE}, "k_min": 5,
        "dominance": Dominance(), "valid_from": T0, "valid_until": T0 + timedelta(days=10),
        "max_queries_per_day": 10}
    base: dict[str, object] = {
        "id": "6f1c2a4e-8d0b-4c52-9a7e-3b1d5e9f0a21", "provider_org": "grid",
        "consumer_org": "econ", "status": ContractStatus.OFFERED, "created_at": T0}
    for name, value in kw.items():
        (terms if name in TERM_NAMES else base)[name] = value
    return Contract(**base, terms=Terms(**terms))  # type: ignore[arg-type]


def _key() -> tuple[Ed25519PrivateKey, str]:
    key = Ed25519PrivateKey.generate()
    return key, encode_public_key(key.public_key())


def test_the_checked_in_schema_is_the_models_schema() -> None:
    on_disk = (ROOT / "schema" / "contract-terms.schema.json").read_text(encoding="utf-8")
    assert on_disk == render_schema(), "regenerate it: python -m contracts.terms"


@pytest.mark.parametrize("path", sorted((ROOT / "examples").glob("*.json")), ids=lambda p: p.name)
def test_every_example_validates_against_the_model_and_the_schema_file(path: Path) -> None:
    document = json.loads(path.read_text(encoding="utf-8"))
    schema = json.loads((ROOT / "schema" / "contract-terms.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.Draft202012Validator(schema).validate(document)
    terms = ContractTerms.model_validate(document)
    assert terms.model_dump(mode="json") == document


def test_examples_directory_is_not_empty() -> None:
    assert len(list((ROOT / "examples").glob("*.json"))) >= 2


@pytest.mark.parametrize("change", [
    {"extra": 1},
    {"type": "other/v1"},
    {"k_min": 1},
    {"k_min": "5"},
    {"purposes": []},
    {"fields": {}},
    {"fields": {"1bad": "clear"}},
    {"fields": {"town": "leak"}},
    {"valid_from": "2026-01-01T00:00:00"},  # no offset: ambiguous
    {"provider": "Grid Co"},
    {"dataset": {"id": "x"}},
    {"dominance": {"n": 2, "k": 101.0, "p": 0.0}},
])
def test_malformed_terms_are_refused_by_model_and_schema(change: dict[str, object]) -> None:
    document = {**json.loads((ROOT / "examples" / "electricity-to-economic-bureau.json")
                             .read_text()), **change}
    with pytest.raises(ValidationError):
        ContractTerms.model_validate(document)
    schema = json.loads((ROOT / "schema" / "contract-terms.schema.json").read_text())
    if change.get("fields") == {"1bad": "clear"} or "valid_from" in change:
        # Unicode field names and the offset of a date-time are checked by the model only: a
        # JSON Schema pattern's \w is ASCII, and "format" is an annotation by default.
        return
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(schema).validate(document)


def test_canonical_bytes_are_rfc8785_of_the_document_and_survive_a_round_trip() -> None:
    terms = _contract().document()
    assert terms.canonical() == rfc8785.dumps(terms.model_dump(mode="json"))
    again = ContractTerms.model_validate_json(json.dumps(json.loads(terms.canonical()), indent=3))
    assert again.canonical() == terms.canonical()


def test_a_signature_verifies_only_over_the_exact_terms_and_key() -> None:
    key, public = _key()
    other, other_public = _key()
    contract = _contract()
    signature = sign(key, contract.document())
    message = contract.document().canonical()
    assert verify(public, message, signature)
    assert not verify(other_public, message, signature)
    assert not verify(public, message, sign(other, contract.document()))
    assert not verify(None, message, signature)
    assert not verify(public, message, None)
    assert not verify(public, message, "not base64!")
    terms = contract.terms
    for changed in (replace(contract, terms=replace(terms, k_min=4)),
                    replace(contract, terms=replace(terms, max_queries_per_day=11)),
                    replace(contract, terms=replace(terms, fields={"town": FieldForm.CLEAR})),
                    replace(contract, terms=replace(
                        terms, valid_until=terms.valid_until + timedelta(seconds=1))),
                    replace(contract, terms=replace(terms, dataset_version=2)),
                    replace(contract, consumer_org="env"),
                    replace(contract, terms=replace(terms, result_retention_days=31))):
        assert not verify(public, changed.document().canonical(), signature)
    flipped = bytearray(base64.b64decode(signature))
    flipped[0] ^= 1
    assert not verify(public, message, base64.b64encode(bytes(flipped)).decode())


def test_terms_survive_their_record_and_cannot_be_changed_in_place() -> None:
    terms = _contract(dataset_version=3, slice_id="7d1c2a4e-8d0b-4c52-9a7e-3b1d5e9f0a21").terms
    assert Terms.from_record(terms.as_record()) == terms
    with pytest.raises(TypeError):
        terms.fields["town"] = FieldForm.AGGREGATE  # type: ignore[index]


def test_the_signed_document_carries_every_term() -> None:
    contract = _contract(dataset_version=3, slice_id="7d1c2a4e-8d0b-4c52-9a7e-3b1d5e9f0a21")
    document = contract.document()
    assert document.dataset.id == contract.terms.dataset_id
    assert document.dataset.version == 3
    assert document.slice == contract.terms.slice_id
    record = contract.terms.as_record()
    for name in TERM_NAMES - {"dataset_id", "dataset_version", "slice_id", "dominance"}:
        assert getattr(document, name) == record[name], name
    assert document.dominance.model_dump() == record["dominance"]


def test_linkable_is_signed_when_granted_and_unsaid_otherwise() -> None:
    unlinked, linked = _contract(), _contract(linkable=True)
    assert "linkable" not in json.loads(unlinked.document().canonical())
    assert json.loads(linked.document().canonical())["linkable"] is True
    # A document made before the term existed has the same bytes, so old signatures hold.
    before = json.loads(unlinked.document().canonical())
    assert ContractTerms.model_validate(before).canonical() == unlinked.document().canonical()
    key, public = _key()
    signature = base64.b64encode(key.sign(unlinked.document().canonical())).decode()
    assert not verify(public, linked.document().canonical(), signature)


def test_lifecycle_state_is_not_part_of_the_signed_terms() -> None:
    contract = _contract()
    moved = contract.moved("accept", T0 + timedelta(days=1))
    assert moved.document() == contract.document()


def test_signatures_hold_needs_the_offer_then_both() -> None:
    pkey, ppub = _key()
    ckey, cpub = _key()
    offered = _contract()
    assert not offered.signatures_hold(ppub, cpub)
    offered = replace(offered, provider_signature=sign(pkey, offered.document()))
    assert offered.signatures_hold(ppub, cpub)
    active = offered.moved("accept", T0)
    assert not active.signatures_hold(ppub, cpub)
    active = replace(active, consumer_signature=sign(ckey, active.document()))
    assert active.signatures_hold(ppub, cpub)
    assert not active.signatures_hold(cpub, ppub)
    # The consumer's signature made by the provider's key is not the consumer's.
    assert not replace(active, consumer_signature=sign(pkey, active.document())).signatures_hold(
        ppub, cpub)


def test_public_keys_are_read_as_pem_or_raw_base64() -> None:
    key, public = _key()
    pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    assert encode_public_key(parse_public_key(pem)) == public
    assert encode_public_key(parse_public_key(public)) == public
    for bad in ("", "abc", base64.b64encode(b"x" * 31).decode(), "-----BEGIN PUBLIC KEY-----\n"):
        with pytest.raises(BadKey):
            parse_public_key(bad)


STATES = [ContractStatus.OFFERED, ContractStatus.ACTIVE, ContractStatus.SUSPENDED,
          ContractStatus.REVOKED, ContractStatus.EXPIRED]
LEGAL = {("offered", "accept"): "active", ("offered", "revoke"): "revoked",
         ("active", "suspend"): "suspended", ("active", "revoke"): "revoked",
         ("suspended", "resume"): "active", ("suspended", "revoke"): "revoked"}


@pytest.mark.parametrize("state", STATES, ids=str)
@pytest.mark.parametrize("action", sorted(TRANSITIONS))
def test_every_state_and_action(state: ContractStatus, action: str) -> None:
    contract = _contract(status=state)
    now = T0 + timedelta(days=1)
    expected = LEGAL.get((state.value, action))
    if expected is None:
        with pytest.raises(IllegalTransition):
            contract.moved(action, now)
    else:
        assert contract.moved(action, now).status.value == expected


@pytest.mark.parametrize("state", STATES[:3], ids=str)
def test_a_live_contract_past_its_window_is_expired_and_final(state: ContractStatus) -> None:
    contract = _contract(status=state)
    late = contract.terms.valid_until
    assert contract.status_at(late) is ContractStatus.EXPIRED
    assert contract.expiry_due(late)
    for action in TRANSITIONS:
        with pytest.raises(IllegalTransition):
            contract.moved(action, late)


@given(k_min=st.integers(2, 10_000), quota=st.integers(1, 1_000_000),
       days=st.integers(1, 3650), retention=st.integers(0, 3650),
       purposes=st.lists(st.from_regex(r"[a-z][a-z0-9-]{0,20}", fullmatch=True),
                         min_size=1, max_size=5, unique=True))
def test_terms_of_any_contract_validate_and_match_the_schema(
        k_min: int, quota: int, days: int, retention: int, purposes: list[str]) -> None:
    contract = _contract(k_min=k_min, max_queries_per_day=quota, purposes=tuple(purposes),
                         valid_until=T0 + timedelta(days=days), result_retention_days=retention)
    document = json.loads(contract.document().canonical())
    schema = json.loads((ROOT / "schema" / "contract-terms.schema.json").read_text())
    jsonschema.Draft202012Validator(schema).validate(document)
    assert ContractTerms.model_validate(document) == contract.document()
