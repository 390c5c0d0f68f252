"""A usage contract's terms as an ODRL 2.2 policy in JSON-LD.

The export is a description for the parties and for other ODRL tools; the broker enforces the
contract through its Rego policies, not through this document. Section numbers below are those
of the W3C Recommendations of 15 February 2018: the ODRL Information Model 2.2 (IM) and the ODRL
Vocabulary & Expression 2.2 (Vocab).

How the terms map:

- ``@context`` is the W3C ODRL context (embedded in ``contracts/context/odrl.jsonld``) plus the
  prefix ``broker`` for this broker's profile, ``{base_iri}/ns/broker#``. Every term that ODRL
  lacks is defined there (:func:`broker_profile`) and named by ``profile`` (IM 2.1, 3.2, 3.3).
- ``@type`` is ``Offer`` while the consumer has not accepted, ``Agreement`` once it has (IM
  2.1.2, 2.1.3): a suspended, revoked or expired contract that was accepted stays an Agreement,
  one withdrawn before acceptance stays an Offer; ``broker:contractStatus`` says which, since an
  ODRL policy has no lifecycle state. An Offer also names its assignee, which Vocab 3.2.2 allows
  as long as it grants that Party nothing.
- ``assigner`` (provider) and ``assignee`` (consumer) are declared once at Policy level (IM 2.7.1,
  compact policy) and so apply to every Rule. ``target`` is kept on the Permission: IM 2.7.1
  would copy a Policy-level target into the delete duty, whose target is the results.
- The target is the dataset, the pinned version (``dct:isVersionOf`` the dataset) or the slice
  (``dct:isPartOf`` the dataset or version, with its fields); IM 2.2 recommends Dublin Core for
  Asset metadata.
- One Permission, action ``use`` (Vocab 3.12.1). ``odrl:aggregate`` (Vocab 4.4.2) would be wrong:
  it means putting the Asset into a composite collection, not statistical aggregation. The use
  is refined (IM 2.5.4, ``rdf:value`` form) by the disclosure controls, which narrow what a use
  may release: ``broker:cellEntities`` ``gteq`` k_min, ``broker:cellConcentration`` ``lteq`` a
  ``broker:DominanceRule`` (n, k and, when set, p), and ``broker:fieldDisclosure`` ``isPartOf``
  one ``broker:FieldGrant`` (field, form) per contracted field.
- Constraints (IM 2.5.3) say when and why the use is allowed: ``purpose`` ``isAnyOf`` the purpose
  IRIs; ``dateTime`` ``gteq`` valid_from and ``lt`` valid_until as ``xsd:dateTime`` (the window is
  half open, as in ``Contract.status_at``); ``count`` ``lteq`` max_queries_per_day with ``unit``
  ``broker:perDay``; ``broker:entityLinking`` ``eq`` the ``linkable`` term (``xsd:boolean``):
  whether the use may join the data with other providers' by enterprise. The unit (IM 2.5.1:
  "the unit used for the value of the rightOperand") carries
  the daily period. ``timeInterval`` is "a recurring period of time before the next execution of
  the action", so and-ing it with ``count`` would allow one query a day; scoping ``count`` by an
  ``andSequence`` would bend an operand meant for ordering; ``elapsedTime`` bounds how long a use
  may last, not how often.
- Duty ``broker:log`` (IM 2.6.5, a pre-condition): ODRL has no "log" action, so the profile
  defines one ``includedIn`` ``odrl:inform`` (Vocab 4.4, "to inform that an action has been
  performed"), naming the provider ``informedParty`` ("the Party to be informed of all uses") and
  the broker ``informingParty``. Its constraint ``event lt policyUsage`` (the pattern of IM
  example 22) says the entry is made before the use is exercised: the audit append commits before
  any value is released.
- Duty ``delete`` (Vocab 4.4) on the released results (the Permission's ``output``, Vocab 4.2.1),
  due ``result_retention_days`` after the use: ``andSequence`` (IM 2.5.2, ``@list``) of ``event gt
  policyUsage`` and ``delayPeriod eq P{n}D``. ``delayPeriod`` is "a time delay period prior to
  exercising the action", its starting point set by another temporal constraint in an
  ``andSequence``; ``elapsedTime`` is "a continuous elapsed time period which may be used for
  exercising of the action", which fits a continuous action such as ``play``, not a deletion. ODRL
  has no "within" for delays (only eq, gt, gteq are recommended), so the duty falls due when the
  retention period ends. Both duties sit on the Permission, whose duties "MUST be agreed to be
  fulfilled" (IM 2.6.5); a Policy-level ``obligation`` (IM 2.6.4) could not refer to each use.

IRIs: ``{base}/contracts/{id}`` (the policy; its results at ``.../results``), ``{base}/orgs/{id}``,
``{base}/datasets/{id}`` (``/versions/{n}``, ``/slices/{id}``, ``/fields/{name}``) and
``{base}/purposes/{slug}``. Identifiers are IRI path segments: RFC 3987 ``iunreserved`` characters
stay as they are (so 用电量 stays readable), everything else is percent-encoded as UTF-8.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from importlib import resources
from typing import Any, Final
from urllib.parse import urlsplit

from contracts.model import Contract, ContractStatus, FieldForm, Terms

#: Where W3C publishes the ODRL 2.2 JSON-LD context; also the key the embedded copy answers to.
ODRL_CONTEXT_URL: Final = "http://www.w3.org/ns/odrl.jsonld"
#: The same context under https, as some processors ask for it.
ODRL_CONTEXT_URL_HTTPS: Final = "https://www.w3.org/ns/odrl.jsonld"
ODRL: Final = "http://www.w3.org/ns/odrl/2/"

_UNRESERVED: Final = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
#: Bidirectional formatting characters, which RFC 3987 section 4.1 keeps out of IRIs.
_BIDI: Final = frozenset(chr(c) for c in (0x200E, 0x200F, *range(0x202A, 0x202F)))


def odrl_context() -> dict[str, Any]:
    """The embedded ODRL 2.2 JSON-LD context document (see contracts/context/README.md)."""
    text = resources.files("contracts").joinpath("context/odrl.jsonld").read_text("utf-8")
    document: dict[str, Any] = json.loads(text)
    return document


def to_odrl(
    contract: Contract, *, base_iri: str, slice_fields: Sequence[str] | None = None
) -> dict[str, Any]:
    """The contract's terms as an ODRL 2.2 Offer or Agreement in compact JSON-LD.

    ``slice_fields`` are the fields of the contract's consented slice, if the caller has them;
    they describe the target. Raises ``ValueError`` for terms ODRL cannot state faithfully: no
    purpose or field, a naive datetime, or fields outside the slice.
    """
    iris = _Iris.of(base_iri)
    if not contract.terms.purposes:
        raise ValueError("A contract without purposes permits nothing to export.")
    if not contract.terms.fields:
        raise ValueError("A contract without fields permits nothing to export.")
    if contract.terms.result_retention_days < 0:
        raise ValueError("result_retention_days must not be negative.")
    policy: dict[str, Any] = {
        "@context": [ODRL_CONTEXT_URL, {"broker": iris.vocab}],
        "@type": _policy_type(contract),
        "uid": iris.contract(contract.id),
        "profile": iris.profile,
        "dct:issued": _datetime(contract.created_at, "created_at"),
        "broker:contractStatus": contract.status.value,
    }
    if contract.provider_signature is not None:
        policy["broker:providerSignature"] = contract.provider_signature
    if contract.consumer_signature is not None:
        policy["broker:consumerSignature"] = contract.consumer_signature
    policy["assigner"] = iris.org(contract.provider_org)
    policy["assignee"] = iris.org(contract.consumer_org)
    policy["permission"] = [_permission(contract, iris, slice_fields)]
    return policy


def broker_profile(*, base_iri: str) -> dict[str, Any]:
    """The broker's ODRL profile: every term the export uses that ODRL 2.2 does not define.

    Written as IM 3.3 asks: each new term is a ``skos:Concept`` with ``rdfs:label`` and
    ``skos:definition``; actions are ``includedIn`` an ODRL action, left and right operands are
    instances of ``odrl:LeftOperand`` and (subclasses of) ``odrl:RightOperand``.
    """
    iris = _Iris.of(base_iri)

    def term(name: str, types: list[str], label: str, definition: str,
             **extra: Any) -> dict[str, Any]:
        node: dict[str, Any] = {
            "uid": f"broker:{name}",
            "@type": [*types, "skos:Concept"],
            "rdfs:isDefinedBy": {"@id": iris.profile},
            "rdfs:label": {"@value": label, "@language": "en"},
            "skos:definition": {"@value": definition, "@language": "en"},
        }
        node.update(extra)
        return node

    prop, cls, individual = "rdf:Property", "rdfs:Class", "owl:NamedIndividual"
    forms = {
        FieldForm.AGGREGATE: ("Aggregate only", "Values may be released only inside aggregate "
                              "measures (sum, mean, ratio) over cells that pass the disclosure "
                              "controls; never as group keys, filter values or rows."),
        FieldForm.GENERALIZE: ("Generalised", "Values may be released only at a coarser level "
                               "of their hierarchy (month, quarter or year; GB/T 4754 group, "
                               "division or section; numeric bins), or inside aggregates."),
        FieldForm.PSEUDONYMIZE: ("Pseudonymised", "Values may be released only as keyed "
                                 "pseudonyms, grouped by the stored values, never regrouped."),
        FieldForm.CLEAR: ("Clear", "Values may be released as stored, generalised, or inside "
                          "aggregates."),
    }
    graph: list[dict[str, Any]] = [
        {
            "uid": iris.profile,
            "@type": "owl:Ontology",
            "rdfs:label": {"@value": "Data-sharing broker ODRL profile", "@language": "en"},
            "dct:description": {"@value": "Terms for usage contracts of a privacy-preserving "
                                "data-sharing broker: disclosure controls, per-field forms, "
                                "audit logging and daily quotas.", "@language": "en"},
        },
        term("log", ["Action"], "Log",
             "To record an exercise of the Rule's action as an entry of the broker's "
             "append-only, hash-chained audit log, committed before any result of it is "
             "released. The informedParty can read and verify the entries; they carry no row "
             "values.", includedIn="odrl:inform",
             **{"skos:note": {"@value": "A specialisation of odrl:inform: the informedParty is "
                              "informed of every use through the log the informingParty keeps.",
                              "@language": "en"}}),
        term("cellEntities", ["LeftOperand", individual], "Entities per released cell",
             "The smallest number of distinct entities (enterprises, by unified social credit "
             "code) contributing to any cell the action releases. Right operand: xsd:integer."),
        term("cellConcentration", ["LeftOperand", individual], "Concentration of released cells",
             "How concentrated the contributions to each cell the action releases are. With "
             "lteq and a broker:DominanceRule it is satisfied when, in every released cell, the "
             "n largest contributors hold at most k percent of the cell total and, if p is "
             "given, the total less the two largest contributions is at least p percent of the "
             "largest (the (n,k) dominance and p% rules of tau-ARGUS)."),
        term("fieldDisclosure", ["LeftOperand", individual], "Field disclosure",
             "The fields of the target the action discloses, each with the form of disclosure. "
             "With isPartOf and a set of broker:FieldGrant it is satisfied when every disclosed "
             "field has a grant whose form covers the form used: each form covers itself, clear "
             "also covers generalize and aggregate, generalize also covers aggregate."),
        term("entityLinking", ["LeftOperand", individual], "Linking by entity",
             "Whether the use may join the target with other providers' data on the entity "
             "(the same enterprise across datasets) inside the broker, each source reduced to "
             "one value per enterprise and cell, the joined cells held to every disclosure "
             "control. Right operand: xsd:boolean; false forbids cross-source use."),
        term("DominanceRule", [cls], "Dominance rule",
             "A right operand giving the n, k and optional p of a dominance rule.",
             **{"rdfs:subClassOf": {"@id": "odrl:RightOperand"}}),
        term("FieldGrant", [cls], "Field grant",
             "A right operand pairing a field with the most revealing form it may flow in.",
             **{"rdfs:subClassOf": {"@id": "odrl:RightOperand"}}),
        term("FieldForm", [cls], "Field form", "A form in which a field may flow."),
        *(term(form.value, ["broker:FieldForm", individual], label, definition)
          for form, (label, definition) in forms.items()),
        term("n", [prop], "n", "The number of largest contributors a dominance rule sums.",
             **{"rdfs:domain": {"@id": "broker:DominanceRule"}}),
        term("k", [prop], "k", "The share, in percent of the cell total, the n largest "
             "contributors may hold at most.", **{"rdfs:domain": {"@id": "broker:DominanceRule"}}),
        term("p", [prop], "p", "The p% rule's p: the cell total less its two largest "
             "contributions must be at least p percent of the largest. Absent when the contract "
             "leaves it to the broker's policy floor.",
             **{"rdfs:domain": {"@id": "broker:DominanceRule"}}),
        term("field", [prop], "Field", "A field (column) of a dataset; its rdfs:label is the "
             "field's name."),
        term("form", [prop], "Form", "The most revealing form in which the field may flow.",
             **{"rdfs:range": {"@id": "broker:FieldForm"}}),
        term("perDay", [individual], "Per day",
             "A unit for count constraints: exercises per calendar day in UTC, the count "
             "starting again at 00:00 UTC."),
        term("contractStatus", [prop], "Contract status",
             "The contract's stored lifecycle state: offered, active, suspended or revoked. "
             "Expiry is not stored; it follows from the dateTime constraint."),
        term("providerSignature", [prop], "Provider signature",
             "The provider's base64 Ed25519 signature over the contract's canonical terms as "
             "the broker serves them, not over this document."),
        term("consumerSignature", [prop], "Consumer signature",
             "The consumer's base64 Ed25519 signature, made on acceptance, over the contract's "
             "canonical terms as the broker serves them, not over this document."),
    ]
    return {"@context": [ODRL_CONTEXT_URL, {"broker": iris.vocab}], "@graph": graph}


def _policy_type(contract: Contract) -> str:
    if contract.status is ContractStatus.OFFERED:
        return "Offer"
    if contract.status in (ContractStatus.ACTIVE, ContractStatus.SUSPENDED):
        return "Agreement"
    # Revoked or expired: an Agreement if it was ever accepted, else a withdrawn Offer.
    return "Agreement" if contract.accepted_at is not None else "Offer"


def _permission(
    contract: Contract, iris: _Iris, slice_fields: Sequence[str] | None
) -> dict[str, Any]:
    terms = contract.terms
    results = iris.results(contract.id)
    policy_usage = {"@id": "odrl:policyUsage"}
    return {
        "target": _target(terms, iris, slice_fields),
        "output": {"uid": results, "@type": "AssetCollection"},
        "action": [{"rdf:value": {"@id": "odrl:use"}, "refinement": _refinements(terms, iris)}],
        "constraint": [
            {"leftOperand": "purpose", "operator": "isAnyOf",
             "rightOperand": [{"@id": iris.purpose(p)} for p in sorted(set(terms.purposes))]},
            {"leftOperand": "dateTime", "operator": "gteq",
             "rightOperand": _datetime(terms.valid_from, "valid_from")},
            {"leftOperand": "dateTime", "operator": "lt",
             "rightOperand": _datetime(terms.valid_until, "valid_until")},
            {"leftOperand": "count", "operator": "lteq",
             "rightOperand": terms.max_queries_per_day, "unit": {"@id": "broker:perDay"}},
            {"leftOperand": "broker:entityLinking", "operator": "eq",
             "rightOperand": {"@value": terms.linkable, "@type": "xsd:boolean"}},
        ],
        "duty": [
            {"action": "broker:log",
             "informingParty": iris.broker,
             "informedParty": iris.org(contract.provider_org),
             "constraint": [{"leftOperand": "event", "operator": "lt",
                             "rightOperand": policy_usage}]},
            {"action": "delete",
             "target": results,
             "constraint": [{"andSequence": {"@list": [
                 {"leftOperand": "event", "operator": "gt", "rightOperand": policy_usage},
                 {"leftOperand": "delayPeriod", "operator": "eq",
                  "rightOperand": {"@value": f"P{terms.result_retention_days}D",
                                   "@type": "xsd:duration"}},
             ]}}]},
        ],
    }


def _refinements(terms: Terms, iris: _Iris) -> list[dict[str, Any]]:
    rule: dict[str, Any] = {
        "@type": "broker:DominanceRule",
        "broker:n": terms.dominance.n,
        "broker:k": _decimal(terms.dominance.k, "dominance.k"),
    }
    if terms.dominance.p > 0:
        rule["broker:p"] = _decimal(terms.dominance.p, "dominance.p")
    grants = [
        {"@type": "broker:FieldGrant",
         "broker:field": _field(iris, terms.dataset_id, name),
         "broker:form": {"@id": f"broker:{FieldForm(terms.fields[name]).value}"}}
        for name in sorted(terms.fields)
    ]
    return [
        {"leftOperand": "broker:cellEntities", "operator": "gteq",
         "rightOperand": terms.k_min},
        {"leftOperand": "broker:cellConcentration", "operator": "lteq", "rightOperand": rule},
        {"leftOperand": "broker:fieldDisclosure", "operator": "isPartOf",
         "rightOperand": grants},
    ]


def _target(
    terms: Terms, iris: _Iris, slice_fields: Sequence[str] | None
) -> str | dict[str, Any]:
    dataset = iris.dataset(terms.dataset_id)
    asset: str | dict[str, Any] = dataset
    asset_iri = dataset
    if terms.dataset_version is not None:
        asset_iri = f"{dataset}/versions/{terms.dataset_version}"
        asset = {"uid": asset_iri, "@type": "AssetCollection",
                 "dct:isVersionOf": {"@id": dataset}}
    if terms.slice_id is None:
        if slice_fields is not None:
            raise ValueError("slice_fields given for a contract without a slice.")
        return asset
    node: dict[str, Any] = {
        "uid": f"{asset_iri}/slices/{_segment(terms.slice_id)}",
        "@type": "AssetCollection",
        "dct:isPartOf": asset if isinstance(asset, dict) else {"@id": asset},
    }
    if slice_fields is not None:
        names = sorted(set(slice_fields))
        if any(name not in names for name in terms.fields):
            raise ValueError("The contract lists fields outside its slice.")
        node["broker:field"] = [_field(iris, terms.dataset_id, name) for name in names]
    return node


def _field(iris: _Iris, dataset_id: str, name: str) -> dict[str, Any]:
    return {"uid": f"{iris.dataset(dataset_id)}/fields/{_segment(name)}", "rdfs:label": name}


def _datetime(value: datetime, what: str) -> dict[str, str]:
    if value.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware.")
    text = value.astimezone(UTC).isoformat().removesuffix("+00:00") + "Z"
    return {"@value": text, "@type": "xsd:dateTime"}


def _decimal(value: float, what: str) -> dict[str, str]:
    if not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number.")
    return {"@value": format(Decimal(repr(float(value))), "f"), "@type": "xsd:decimal"}


def _segment(value: str) -> str:
    """``value`` as one IRI path segment (RFC 3987 ``isegment-nz``), percent-encoding as UTF-8."""
    if not value:
        raise ValueError("An identifier in an IRI must not be empty.")
    if value in (".", ".."):
        return value.replace(".", "%2E")  # a bare dot segment would be removed on resolution
    return "".join(
        ch if ch in _UNRESERVED or (_is_ucschar(ord(ch)) and ch not in _BIDI)
        else "".join(f"%{byte:02X}" for byte in ch.encode("utf-8"))
        for ch in value
    )


def _is_ucschar(code: int) -> bool:
    """RFC 3987 ``ucschar``: the non-ASCII characters an IRI may carry unencoded."""
    if code < 0x10000:
        return 0xA0 <= code <= 0xD7FF or 0xF900 <= code <= 0xFDCF or 0xFDF0 <= code <= 0xFFEF
    if code >= 0xE0000:
        return 0xE1000 <= code <= 0xEFFFD
    return (code & 0xFFFF) <= 0xFFFD


class _Iris:
    """The IRIs of the broker's resources under one base."""

    __slots__ = ("base",)

    def __init__(self, base: str) -> None:
        self.base = base

    @classmethod
    def of(cls, base_iri: str) -> _Iris:
        parts = urlsplit(base_iri)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.query \
                or parts.fragment or base_iri.endswith("#"):
            raise ValueError("base_iri must be an absolute http(s) IRI without query or "
                             "fragment.")
        return cls(base_iri.rstrip("/"))

    @property
    def profile(self) -> str:
        return f"{self.base}/ns/broker"

    @property
    def vocab(self) -> str:
        return f"{self.profile}#"

    @property
    def broker(self) -> str:
        return f"{self.base}/"

    def contract(self, contract_id: str) -> str:
        return f"{self.base}/contracts/{_segment(contract_id)}"

    def results(self, contract_id: str) -> str:
        return f"{self.contract(contract_id)}/results"

    def org(self, org_id: str) -> str:
        return f"{self.base}/orgs/{_segment(org_id)}"

    def dataset(self, dataset_id: str) -> str:
        return f"{self.base}/datasets/{_segment(dataset_id)}"

    def purpose(self, slug: str) -> str:
        return f"{self.base}/purposes/{_segment(slug)}"
