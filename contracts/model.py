"""The usage-contract model and its lifecycle state machine.

A contract is offered by the provider that owns a dataset to one consumer organisation. It
names the purposes the data may serve, the form in which each field may flow, the disclosure
thresholds (k_min distinct enterprises per released cell, (n, k) dominance), a validity window
and a daily query quota. Lifecycle::

    offered --accept--> active --suspend--> suspended --resume--> active
       |                  |                     |
       +--revoke----------+--revoke-------------+--revoke--> revoked
       |                  |                     |
       +------------------+---(now >= valid_until)---------> expired

``expired`` follows from ``valid_until`` at the moment of each decision, so a contract stops
working at its end time without a job having to run; the broker also stores and audits the
step the first time a request finds it due. ``revoked`` and ``expired`` are final.

What the parties agree to is one value, :class:`Terms`: the provider offers it, the contract
holds it next to its parties and lifecycle state, the store keeps it as columns and the signed
document (:meth:`Contract.document`, see ``contracts.terms``) is built from it. A contract is
usable only while both signatures verify against the organisations' registered keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from dataclasses import fields as dataclass_fields
from datetime import datetime
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from contracts.terms import ContractTerms
from contracts.terms import verify as verify_signature


class ContractStatus(StrEnum):
    """Where a contract is in its lifecycle."""

    OFFERED = "offered"
    ACTIVE = "active"
    SUSPENDED = "suspended"
    REVOKED = "revoked"
    EXPIRED = "expired"


class FieldForm(StrEnum):
    """The form in which a field may flow under a contract."""

    AGGREGATE = "aggregate"
    CLEAR = "clear"
    GENERALIZE = "generalize"
    PSEUDONYMIZE = "pseudonymize"


class IllegalTransition(Exception):
    """A lifecycle step that the contract's current state does not allow."""


#: The steps each status allows, by action name.
TRANSITIONS: dict[str, tuple[frozenset[ContractStatus], ContractStatus]] = {
    "accept": (frozenset({ContractStatus.OFFERED}), ContractStatus.ACTIVE),
    "suspend": (frozenset({ContractStatus.ACTIVE}), ContractStatus.SUSPENDED),
    "resume": (frozenset({ContractStatus.SUSPENDED}), ContractStatus.ACTIVE),
    "revoke": (frozenset({ContractStatus.OFFERED, ContractStatus.ACTIVE,
                          ContractStatus.SUSPENDED}), ContractStatus.REVOKED),
}
_DONE = {"accept": "accepted", "suspend": "suspended", "resume": "resumed",
         "revoke": "revoked"}


@dataclass(frozen=True, slots=True)
class Dominance:
    """(n, k) dominance rule: a cell is unsafe if its n largest contributors exceed k percent.

    Defaults n=2, k=85 follow sdcTable's and tau-ARGUS's customary settings.
    """

    n: int = 2
    k: float = 85.0
    p: float = 0.0  # the p% rule's p; 0 leaves it to the policy floor


@dataclass(frozen=True, slots=True, kw_only=True)
class Terms:
    """The terms a provider offers and both parties sign: what may be used, how and for how long.

    One immutable value: the offer, the contract and the signed document all hold or are built
    from it. A new term is a field here and, under the same name, a column of ``ContractRow``,
    a field of ``ContractTerms`` (the signed document; regenerate its JSON Schema) and of the
    API's ``ContractIn`` and ``ContractOut``: the mappings between those shapes go through
    :meth:`as_record` and :meth:`from_record` and need no change. The Rego input
    (``broker.policy.inputs.contract_view``) and the ODRL export name the terms they use.
    """

    dataset_id: str
    #: The dataset version the contract is pinned to; None follows the latest version.
    dataset_version: int | None = None
    #: The consented slice the contract is limited to, if any.
    slice_id: str | None = None
    purposes: tuple[str, ...]
    fields: Mapping[str, FieldForm]
    k_min: int
    dominance: Dominance
    valid_from: datetime
    valid_until: datetime
    max_queries_per_day: int
    #: How many days the consumer may keep a released result.
    result_retention_days: int = 30
    #: Whether the provider lets the consumer join this data with other providers' data by
    #: enterprise inside the broker (cross-source queries); never by default.
    linkable: bool = False

    def __post_init__(self) -> None:
        # A value object: a read-only copy, so no holder of the terms can change them.
        object.__setattr__(self, "fields", MappingProxyType(dict(self.fields)))

    def as_record(self) -> dict[str, Any]:
        """Every term by name as plain data: lists, dicts, strings, numbers and datetimes."""
        record = {term.name: getattr(self, term.name) for term in dataclass_fields(self)}
        record["purposes"] = list(self.purposes)
        record["fields"] = {name: form.value for name, form in self.fields.items()}
        record["dominance"] = asdict(self.dominance)
        return record

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Terms:
        """The terms from :meth:`as_record`'s shape (forms as strings, dominance as a dict)."""
        return cls(**{
            **record,
            "purposes": tuple(record["purposes"]),
            "fields": {name: FieldForm(form) for name, form in record["fields"].items()},
            "dominance": Dominance(**record["dominance"]),
        })


@dataclass(frozen=True, slots=True)
class Contract:
    """A usage contract: its terms between one provider and one consumer, and where it is in
    its lifecycle."""

    id: str
    provider_org: str
    consumer_org: str
    terms: Terms
    status: ContractStatus
    created_at: datetime
    accepted_at: datetime | None = None
    revoked_at: datetime | None = None
    suspended_at: datetime | None = None
    #: Base64 Ed25519 signatures over the canonical terms: the provider's offer and the
    #: consumer's acceptance.
    provider_signature: str | None = None
    consumer_signature: str | None = None

    def status_at(self, now: datetime) -> ContractStatus:
        """The effective status at ``now``: stored status, or ``expired`` past the window."""
        if self.status in (ContractStatus.OFFERED, ContractStatus.ACTIVE,
                           ContractStatus.SUSPENDED) and now >= self.terms.valid_until:
            return ContractStatus.EXPIRED
        return self.status

    def moved(self, action: str, now: datetime) -> Contract:
        """The contract after ``action`` (accept, suspend, resume, revoke) at ``now``."""
        allowed_from, target = TRANSITIONS[action]
        status = self.status_at(now)
        if status not in allowed_from:
            raise IllegalTransition(f"A contract that is {status} cannot be {_DONE[action]}.")
        stamps: dict[str, Any] = {"status": target}
        if action == "accept":
            stamps["accepted_at"] = now
        elif action == "revoke":
            stamps["revoked_at"] = now
        elif action == "suspend":
            stamps["suspended_at"] = now
        else:
            stamps["suspended_at"] = None
        return replace(self, **stamps)

    def accepted(self, now: datetime) -> Contract:
        """The contract after the consumer accepts it."""
        return self.moved("accept", now)

    def revoked(self, now: datetime) -> Contract:
        """The contract after the provider revokes (or withdraws) it."""
        return self.moved("revoke", now)

    def expiry_due(self, now: datetime) -> bool:
        """Whether the stored status still says live although the window has closed."""
        return self.status is not ContractStatus.EXPIRED and (
            self.status_at(now) is ContractStatus.EXPIRED)

    def document(self) -> ContractTerms:
        """The signed document: the parties and every term, none of the lifecycle state."""
        record = self.terms.as_record()
        # The document nests what the terms name flat: the dataset with its pinned version,
        # and the slice.
        dataset = {"id": record.pop("dataset_id"), "version": record.pop("dataset_version")}
        slice_id = record.pop("slice_id")
        return ContractTerms.model_validate({
            "id": self.id, "provider": self.provider_org, "consumer": self.consumer_org,
            "dataset": dataset, "slice": slice_id, **record, "offered_at": self.created_at,
        })

    def signatures_hold(self, provider_key: str | None, consumer_key: str | None) -> bool:
        """Whether the offer and (once accepted) the acceptance verify under these keys.

        An offer needs the provider's signature; every later state needs both.
        """
        message = self.document().canonical()
        if not verify_signature(provider_key, message, self.provider_signature):
            return False
        if self.status is ContractStatus.OFFERED:
            return True
        return verify_signature(consumer_key, message, self.consumer_signature)
