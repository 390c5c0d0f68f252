"""The ODRL 2.2 export of usage contracts, read back by a real JSON-LD processor (pyld).

pyld resolves the ODRL context from the copy embedded in contracts/context/ through an offline
document loader, so these tests never touch the network.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import tomllib
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyld import jsonld  # type: ignore[import-untyped]

from contracts.model import Contract, ContractStatus, Dominance, FieldForm, Terms
from contracts.odrl import (
    ODRL,
    ODRL_CONTEXT_URL,
    ODRL_CONTEXT_URL_HTTPS,
    broker_profile,
    odrl_context,
    to_odrl,
)

ROOT = Path(__file__).resolve().parents[2]
BASE = "https://broker.example.gov.cn"
VOCAB = f"{BASE}/ns/broker#"
XSD = "http://www.w3.org/2001/XMLSchema#"
RDF_VALUE = "http://www.w3.org/1999/02/22-rdf-syntax-ns#value"
RDFS_LABEL = "http://www.w3.org/2000/01/rdf-schema#label"
DCT = "http://purl.org/dc/terms/"
SKOS = "http://www.w3.org/2004/02/skos/core#"
PURPOSES = tuple(json.loads((ROOT / "policies" / "data.json").read_text("utf-8"))
                 ["config"]["purposes"])
T0 = datetime(2026, 1, 1, tzinfo=UTC)

Json = dict[str, Any]


def _offline_loader(url: str, options: Json | None = None) -> Json:
    """Serve the embedded ODRL context; any other URL is a test failure, never a download."""
    if url not in (ODRL_CONTEXT_URL, ODRL_CONTEXT_URL_HTTPS):
        raise LookupError(f"no offline copy of {url}")
    return {"contentType": "application/ld+json", "contextUrl": None, "documentUrl": url,
            "document": odrl_context()}


_OPTIONS: Json = {"documentLoader": _offline_loader}


def _expand(document: Json) -> tuple[list[Json], list[str | None]]:
    """The expanded form and every key the processor dropped on the way."""
    dropped: list[str | None] = []
    expanded = jsonld.expand(document, dict(_OPTIONS), on_property_dropped=dropped.append)
    return expanded, dropped


TERM_NAMES = {term.name for term in dataclasses.fields(Terms)}


def _contract(**kw: Any) -> Contract:
    """A contract; ``kw`` overrides its attributes and, by their names, its terms."""
    terms: Json = {
        "dataset_id": "d-1", "purposes": ("industrial-policy", "energy-planning"),
        "fields": {"town": FieldForm.CLEAR, "industry": FieldForm.GENERALIZE,
                   "electricity_kwh": FieldForm.AGGREGATE},
        "k_min": 5, "dominance": Dominance(n=2, k=85.0), "valid_from": T0,
        "valid_until": T0 + timedelta(days=365), "max_queries_per_day": 200,
    }
    base: Json = {
        "id": "c-1", "provider_org": "grid-company", "consumer_org": "economic-bureau",
        "status": ContractStatus.ACTIVE, "created_at": T0 - timedelta(days=1), "accepted_at": T0,
    }
    for name, value in kw.items():
        (terms if name in TERM_NAMES else base)[name] = value
    return Contract(**base, terms=Terms(**terms))


def _nodes(value: Any) -> Iterator[Json]:
    """Every JSON object inside ``value``, depth first."""
    if isinstance(value, dict):
        yield value
        for item in value.values():
            yield from _nodes(item)
    elif isinstance(value, list):
        for item in value:
            yield from _nodes(item)


def _keys(value: Any) -> int:
    """How many non-keyword keys (properties) ``value`` has, at any depth."""
    return sum(1 for node in _nodes(value) for key in node
               if not key.startswith("@") and key not in ("uid", "type"))


def _iris(expanded: list[Json]) -> set[str]:
    """Every IRI the expanded document uses: properties, types and node references."""
    found: set[str] = set()
    for node in _nodes(expanded):
        found.update(key for key in node if not key.startswith("@"))
        if "@id" in node:
            found.add(node["@id"])
        types = node.get("@type", [])
        found.update([types] if isinstance(types, str) else types)
    return found


def _permission(expanded: list[Json]) -> Json:
    [policy] = expanded
    [permission] = policy[ODRL + "permission"]
    result: Json = permission
    return result


def _by_left_operand(constraints: list[Json]) -> dict[str, list[Json]]:
    grouped: dict[str, list[Json]] = {}
    for c in constraints:
        grouped.setdefault(c[ODRL + "leftOperand"][0]["@id"], []).append(c)
    return grouped


def _operator(constraint: Json) -> str:
    operator: str = constraint[ODRL + "operator"][0]["@id"]
    return operator


@st.composite
def contracts(draw: st.DrawFn) -> tuple[Contract, list[str] | None]:
    """Contracts over the whole space of terms, with unicode identifiers and field names."""
    names = st.text(min_size=1, max_size=10)
    fields = draw(st.dictionaries(names, st.sampled_from(list(FieldForm)), min_size=1,
                                  max_size=6))
    zone = draw(st.sampled_from([UTC, timezone(timedelta(hours=8)),
                                 timezone(timedelta(hours=-5, minutes=-30))]))
    # Hypothesis bounds datetimes with naive values and attaches the zone itself.
    start = draw(st.datetimes(min_value=datetime(2000, 1, 1),  # noqa: DTZ001
                              max_value=datetime(2090, 1, 1),  # noqa: DTZ001
                              timezones=st.just(zone)))
    slice_id = draw(st.none() | names)
    slice_fields = None
    if slice_id is not None and draw(st.booleans()):
        slice_fields = [*fields, *draw(st.lists(names, max_size=3))]
    status = draw(st.sampled_from(list(ContractStatus)))
    contract = _contract(
        id=draw(names), dataset_id=draw(names), provider_org=draw(names),
        consumer_org=draw(names), fields=fields,
        purposes=tuple(draw(st.lists(st.sampled_from(PURPOSES), min_size=1, unique=True))),
        k_min=draw(st.integers(2, 10_000)),
        dominance=Dominance(n=draw(st.integers(1, 5)), k=draw(st.floats(1, 100)),
                            p=draw(st.sampled_from([0.0, 5.0, 12.5]))),
        valid_from=start, valid_until=start + timedelta(days=draw(st.integers(1, 3650))),
        max_queries_per_day=draw(st.integers(1, 1_000_000)), status=status,
        accepted_at=draw(st.none() | st.just(start)),
        dataset_version=draw(st.none() | st.integers(1, 50)), slice_id=slice_id,
        result_retention_days=draw(st.integers(0, 3650)),
        provider_signature=draw(st.none() | st.just("A" * 86 + "==")),
    )
    return contract, slice_fields


SAMPLES = {
    "dataset": (_contract(), None),
    "pinned-version": (_contract(dataset_version=3), None),
    "slice": (_contract(slice_id="s-1"), None),
    "slice-of-pinned-version-with-fields": (
        _contract(slice_id="s-1", dataset_version=2), ["town", "industry", "electricity_kwh"]),
    "every-purpose-and-unicode-fields": (
        _contract(purposes=PURPOSES, fields={"用电量": FieldForm.AGGREGATE,
                                             "所属乡镇": FieldForm.CLEAR,
                                             "tax/paid #%": FieldForm.PSEUDONYMIZE}), None),
    "offer": (_contract(status=ContractStatus.OFFERED, accepted_at=None), None),
}


def test_embedded_context_is_the_w3c_odrl_22_context() -> None:
    path = ROOT / "contracts" / "context" / "odrl.jsonld"
    readme = (ROOT / "contracts" / "context" / "README.md").read_text("utf-8")
    assert hashlib.sha256(path.read_bytes()).hexdigest() in readme
    context = odrl_context()["@context"]
    assert context["odrl"] == ODRL
    assert len(context) == 174
    assert context["purpose"] == "odrl:purpose"
    assert context["leftOperand"] == {"@type": "@vocab", "@id": "odrl:leftOperand"}
    assert context["refinement"] == {"@type": "@id", "@id": "odrl:refinement"}


def test_embedded_context_ships_as_package_data() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))
    assert "context/*.jsonld" in pyproject["tool"]["setuptools"]["package-data"]["contracts"]
    assert "pyld>=3.3" in pyproject["project"]["optional-dependencies"]["dev"]


@pytest.fixture(params=SAMPLES.values(), ids=list(SAMPLES))
def document(request: pytest.FixtureRequest) -> dict[str, Any]:
    """The ODRL document of each of the SAMPLES."""
    contract, slice_fields = request.param
    return to_odrl(contract, base_iri=BASE, slice_fields=slice_fields)


def test_expansion_keeps_every_key_and_resolves_every_term(document: dict[str, Any]) -> None:
    expanded, dropped = _expand(document)
    assert dropped == []
    assert _keys(expanded) == _keys({k: v for k, v in document.items() if k != "@context"})
    # Vocabulary values (actions, operators, left operands) resolved to absolute IRIs too.
    assert all(urlsplit(iri).scheme in ("http", "https") for iri in _iris(expanded))


def test_compaction_of_the_expansion_loses_nothing(document: dict[str, Any]) -> None:
    expanded, _ = _expand(document)
    compacted = jsonld.compact(expanded, document["@context"], dict(_OPTIONS))
    again, dropped = _expand(compacted)
    assert dropped == []
    assert again == expanded


def test_agreement_has_the_odrl_shape_of_permission_constraints_and_duties() -> None:
    expanded, _ = _expand(to_odrl(_contract(), base_iri=BASE))
    [policy] = expanded
    assert policy["@type"] == [ODRL + "Agreement"]
    assert policy["@id"] == f"{BASE}/contracts/c-1"
    assert policy[ODRL + "profile"] == [{"@id": f"{BASE}/ns/broker"}]
    assert policy[ODRL + "assigner"] == [{"@id": f"{BASE}/orgs/grid-company"}]
    assert policy[ODRL + "assignee"] == [{"@id": f"{BASE}/orgs/economic-bureau"}]
    permission = _permission(expanded)
    assert permission[ODRL + "target"] == [{"@id": f"{BASE}/datasets/d-1"}]
    [action] = permission[ODRL + "action"]
    assert action[RDF_VALUE] == [{"@id": ODRL + "use"}]
    refinements = _by_left_operand(action[ODRL + "refinement"])
    assert set(refinements) == {VOCAB + "cellEntities", VOCAB + "cellConcentration",
                                VOCAB + "fieldDisclosure"}
    constraints = _by_left_operand(permission[ODRL + "constraint"])
    assert set(constraints) == {ODRL + "purpose", ODRL + "dateTime", ODRL + "count",
                                VOCAB + "entityLinking"}
    assert [d[ODRL + "action"] for d in permission[ODRL + "duty"]] == [
        [{"@id": VOCAB + "log"}], [{"@id": ODRL + "delete"}]]


def test_validity_window_is_half_open_in_xsd_datetime_utc() -> None:
    shanghai = timezone(timedelta(hours=8))
    contract = _contract(valid_from=datetime(2026, 1, 1, 8, tzinfo=shanghai),
                         valid_until=datetime(2026, 7, 1, 12, 30, 15, 250_000, tzinfo=UTC))
    expanded, _ = _expand(to_odrl(contract, base_iri=BASE))
    window = _by_left_operand(_permission(expanded)[ODRL + "constraint"])[ODRL + "dateTime"]
    assert [_operator(c) for c in window] == [ODRL + "gteq", ODRL + "lt"]
    values = [c[ODRL + "rightOperand"] for c in window]
    assert values == [[{"@type": XSD + "dateTime", "@value": "2026-01-01T00:00:00Z"}],
                      [{"@type": XSD + "dateTime", "@value": "2026-07-01T12:30:15.250000Z"}]]
    parsed = [datetime.fromisoformat(v[0]["@value"]) for v in values]
    assert parsed == [contract.terms.valid_from, contract.terms.valid_until]


def test_quota_is_a_count_per_day_and_purposes_any_of_their_iris() -> None:
    expanded, _ = _expand(to_odrl(_contract(), base_iri=BASE))
    constraints = _by_left_operand(_permission(expanded)[ODRL + "constraint"])
    [count] = constraints[ODRL + "count"]
    assert _operator(count) == ODRL + "lteq"
    assert count[ODRL + "rightOperand"] == [{"@value": 200}]
    assert count[ODRL + "unit"] == [{"@id": VOCAB + "perDay"}]
    [purpose] = constraints[ODRL + "purpose"]
    assert _operator(purpose) == ODRL + "isAnyOf"
    assert purpose[ODRL + "rightOperand"] == [{"@id": f"{BASE}/purposes/energy-planning"},
                                              {"@id": f"{BASE}/purposes/industrial-policy"}]


@pytest.mark.parametrize("linkable", [False, True])
def test_linking_by_entity_is_a_boolean_constraint_said_either_way(linkable: bool) -> None:
    contract = _contract()
    contract = replace(contract, terms=replace(contract.terms, linkable=linkable))
    expanded, _ = _expand(to_odrl(contract, base_iri=BASE))
    [linking] = _by_left_operand(_permission(expanded)[ODRL + "constraint"])[
        VOCAB + "entityLinking"]
    assert _operator(linking) == ODRL + "eq"
    assert linking[ODRL + "rightOperand"] == [{"@type": XSD + "boolean", "@value": linkable}]


def test_disclosure_controls_refine_the_use() -> None:
    contract = _contract(k_min=7, dominance=Dominance(n=3, k=80.5, p=10.0))
    expanded, _ = _expand(to_odrl(contract, base_iri=BASE))
    refinements = _by_left_operand(_permission(expanded)[ODRL + "action"][0][ODRL + "refinement"])
    [k_min] = refinements[VOCAB + "cellEntities"]
    assert (_operator(k_min), k_min[ODRL + "rightOperand"]) == (ODRL + "gteq", [{"@value": 7}])
    [dominance] = refinements[VOCAB + "cellConcentration"]
    assert _operator(dominance) == ODRL + "lteq"
    [rule] = dominance[ODRL + "rightOperand"]
    assert rule["@type"] == [VOCAB + "DominanceRule"]
    assert rule[VOCAB + "n"] == [{"@value": 3}]
    assert rule[VOCAB + "k"] == [{"@type": XSD + "decimal", "@value": "80.5"}]
    assert rule[VOCAB + "p"] == [{"@type": XSD + "decimal", "@value": "10.0"}]
    expanded, _ = _expand(to_odrl(_contract(), base_iri=BASE))
    refinements = _by_left_operand(_permission(expanded)[ODRL + "action"][0][ODRL + "refinement"])
    [rule] = refinements[VOCAB + "cellConcentration"][0][ODRL + "rightOperand"]
    assert VOCAB + "p" not in rule  # p = 0 leaves the p% rule to the policy floor


def test_each_field_is_granted_its_form_and_unicode_names_survive() -> None:
    contract = SAMPLES["every-purpose-and-unicode-fields"][0]
    expanded, _ = _expand(to_odrl(contract, base_iri=BASE))
    refinements = _by_left_operand(_permission(expanded)[ODRL + "action"][0][ODRL + "refinement"])
    [fields] = refinements[VOCAB + "fieldDisclosure"]
    assert _operator(fields) == ODRL + "isPartOf"
    grants = {g[VOCAB + "field"][0][RDFS_LABEL][0]["@value"]:
              (g[VOCAB + "field"][0]["@id"], g[VOCAB + "form"][0]["@id"])
              for g in fields[ODRL + "rightOperand"]}
    assert grants == {
        "tax/paid #%": (f"{BASE}/datasets/d-1/fields/tax%2Fpaid%20%23%25",
                        VOCAB + "pseudonymize"),
        "所属乡镇": (f"{BASE}/datasets/d-1/fields/所属乡镇", VOCAB + "clear"),
        "用电量": (f"{BASE}/datasets/d-1/fields/用电量", VOCAB + "aggregate"),
    }


def test_every_use_is_logged_for_the_provider_before_it_is_exercised() -> None:
    expanded, _ = _expand(to_odrl(_contract(), base_iri=BASE))
    log = _permission(expanded)[ODRL + "duty"][0]
    assert log[ODRL + "informedParty"] == [{"@id": f"{BASE}/orgs/grid-company"}]
    assert log[ODRL + "informingParty"] == [{"@id": f"{BASE}/"}]
    [before] = log[ODRL + "constraint"]
    assert before[ODRL + "leftOperand"] == [{"@id": ODRL + "event"}]
    assert _operator(before) == ODRL + "lt"
    assert before[ODRL + "rightOperand"] == [{"@id": ODRL + "policyUsage"}]


def test_results_must_be_deleted_when_the_retention_period_ends() -> None:
    expanded, _ = _expand(to_odrl(_contract(result_retention_days=14), base_iri=BASE))
    permission = _permission(expanded)
    results = f"{BASE}/contracts/c-1/results"
    assert permission[ODRL + "output"] == [{"@id": results, "@type": [ODRL + "AssetCollection"]}]
    delete = permission[ODRL + "duty"][1]
    assert delete[ODRL + "target"] == [{"@id": results}]
    [sequence] = delete[ODRL + "constraint"]
    [after_use, delay] = sequence[ODRL + "andSequence"][0]["@list"]
    assert (_operator(after_use), after_use[ODRL + "rightOperand"]) == (
        ODRL + "gt", [{"@id": ODRL + "policyUsage"}])
    assert delay[ODRL + "leftOperand"] == [{"@id": ODRL + "delayPeriod"}]
    assert _operator(delay) == ODRL + "eq"
    assert delay[ODRL + "rightOperand"] == [{"@type": XSD + "duration", "@value": "P14D"}]


@pytest.mark.parametrize(("status", "accepted", "policy_type"), [
    (ContractStatus.OFFERED, False, "Offer"),
    (ContractStatus.ACTIVE, True, "Agreement"),
    (ContractStatus.SUSPENDED, True, "Agreement"),
    (ContractStatus.REVOKED, True, "Agreement"),
    (ContractStatus.REVOKED, False, "Offer"),
    (ContractStatus.EXPIRED, True, "Agreement"),
])
def test_a_contract_is_an_offer_until_the_consumer_accepts_it(
    status: ContractStatus, accepted: bool, policy_type: str
) -> None:
    contract = _contract(status=status, accepted_at=T0 if accepted else None)
    document = to_odrl(contract, base_iri=BASE)
    assert document["@type"] == policy_type
    assert document["broker:contractStatus"] == status.value
    expanded, _ = _expand(document)
    assert expanded[0]["@type"] == [ODRL + policy_type]
    # An Offer names its assignee too, but grants it nothing (ODRL Vocabulary, Offer).
    assert expanded[0][ODRL + "assignee"] == [{"@id": f"{BASE}/orgs/economic-bureau"}]


@pytest.mark.parametrize(("kw", "target"), [
    ({}, f"{BASE}/datasets/d-1"),
    ({"dataset_version": 4}, f"{BASE}/datasets/d-1/versions/4"),
    ({"slice_id": "s-1"}, f"{BASE}/datasets/d-1/slices/s-1"),
    ({"slice_id": "s-1", "dataset_version": 4}, f"{BASE}/datasets/d-1/versions/4/slices/s-1"),
])
def test_target_is_the_dataset_its_pinned_version_or_the_slice(kw: Json, target: str) -> None:
    expanded, _ = _expand(to_odrl(_contract(**kw), base_iri=BASE))
    [asset] = _permission(expanded)[ODRL + "target"]
    assert asset["@id"] == target
    if "slice_id" in kw:
        parent = target.rsplit("/slices/", 1)[0]
        assert asset[DCT + "isPartOf"][0]["@id"] == parent
    elif "dataset_version" in kw:
        assert asset[DCT + "isVersionOf"] == [{"@id": f"{BASE}/datasets/d-1"}]


def test_slice_fields_describe_the_target() -> None:
    contract = _contract(slice_id="s-1")
    document = to_odrl(contract, base_iri=BASE,
                       slice_fields=["town", "industry", "electricity_kwh", "month", "town"])
    fields = document["permission"][0]["target"]["broker:field"]
    assert [f["rdfs:label"] for f in fields] == ["electricity_kwh", "industry", "month", "town"]


def test_export_is_deterministic_and_ignores_the_order_of_terms() -> None:
    contract = _contract()
    shuffled = _contract(purposes=tuple(reversed(contract.terms.purposes)),
                         fields=dict(reversed(list(contract.terms.fields.items()))))
    first = json.dumps(to_odrl(contract, base_iri=BASE), ensure_ascii=False)
    assert json.dumps(to_odrl(contract, base_iri=BASE), ensure_ascii=False) == first
    assert json.dumps(to_odrl(shuffled, base_iri=BASE + "/"), ensure_ascii=False) == first


@pytest.mark.parametrize(("kw", "slice_fields", "base_iri"), [
    ({"valid_from": datetime(2026, 1, 1)}, None, BASE),  # noqa: DTZ001  (naive on purpose)
    ({"purposes": ()}, None, BASE),
    ({"fields": {}}, None, BASE),
    ({"result_retention_days": -1}, None, BASE),
    ({"dominance": Dominance(k=float("nan"))}, None, BASE),
    ({}, ["town"], BASE),  # slice fields without a slice
    ({"slice_id": "s-1"}, ["town"], BASE),  # contract fields outside the slice
    ({"fields": {"": FieldForm.CLEAR}}, None, BASE),
    ({}, None, "broker.example"),
    ({}, None, "ftp://broker.example"),
    ({}, None, f"{BASE}?x=1"),
    ({}, None, f"{BASE}#top"),
])
def test_terms_odrl_cannot_state_faithfully_are_refused(
    kw: Json, slice_fields: list[str] | None, base_iri: str
) -> None:
    with pytest.raises(ValueError):  # noqa: PT011  (several messages, one contract)
        to_odrl(_contract(**kw), base_iri=base_iri, slice_fields=slice_fields)


def test_profile_defines_its_terms_as_odrl_profiles_must() -> None:
    expanded, dropped = _expand(broker_profile(base_iri=BASE))
    assert dropped == []
    terms = {node["@id"]: node for node in expanded if node["@id"].startswith(VOCAB)}
    for node in terms.values():
        assert SKOS + "Concept" in node["@type"]
        assert node[RDFS_LABEL]
        assert node[SKOS + "definition"]
    log = terms[VOCAB + "log"]
    assert ODRL + "Action" in log["@type"]
    assert log[ODRL + "includedIn"] == [{"@id": ODRL + "inform"}]
    for name in ("cellEntities", "cellConcentration", "fieldDisclosure"):
        assert ODRL + "LeftOperand" in terms[VOCAB + name]["@type"]
    for name in ("DominanceRule", "FieldGrant"):
        assert terms[VOCAB + name]["http://www.w3.org/2000/01/rdf-schema#subClassOf"] == [
            {"@id": ODRL + "RightOperand"}]


@settings(max_examples=40, suppress_health_check=[HealthCheck.too_slow])
@given(contracts())
def test_any_contract_exports_a_lossless_policy_in_the_broker_profile(
    case: tuple[Contract, list[str] | None],
) -> None:
    contract, slice_fields = case
    document = to_odrl(contract, base_iri=BASE, slice_fields=slice_fields)
    expanded, dropped = _expand(document)
    assert dropped == []
    assert _keys(expanded) == _keys({k: v for k, v in document.items() if k != "@context"})
    assert all(urlsplit(iri).scheme in ("http", "https") for iri in _iris(expanded))
    defined = {node["@id"] for node in _expand(broker_profile(base_iri=BASE))[0]}
    assert {iri for iri in _iris(expanded) if iri.startswith(VOCAB)} <= defined
    compacted = jsonld.compact(expanded, document["@context"], dict(_OPTIONS))
    assert _expand(compacted)[0] == expanded
    permission = _permission(expanded)
    grants = _by_left_operand(permission[ODRL + "action"][0][ODRL + "refinement"])[
        VOCAB + "fieldDisclosure"][0][ODRL + "rightOperand"]
    assert sorted(g[VOCAB + "field"][0][RDFS_LABEL][0]["@value"] for g in grants) == sorted(
        contract.terms.fields)
