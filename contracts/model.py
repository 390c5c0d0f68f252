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

The terms both parties sign are :meth:`Contract.terms` (see ``contracts.terms``); a contract is
usable only while both signatures verify against the organisations' registered keys.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum
from typing import Any

from contracts.terms import ContractTerms, DatasetTerms, DominanceTerms
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


@dataclass(frozen=True, slots=True)
class Contract:
    """A usage contract between one provider and one consumer over one dataset."""

    id: str
    dataset_id: str
    provider_org: str
    consumer_org: str
    purposes: tuple[str, ...]
    fields: dict[str, FieldForm]
    k_min: int
    dominance: Dominance
    valid_from: datetime
    valid_until: datetime
    max_queries_per_day: int
    status: ContractStatus
    created_at: datetime
    accepted_at: datetime | None = None
    revoked_at: datetime | None = None
    #: The dataset version the contract is pinned to; None follows the latest version.
    dataset_version: int | None = None
    #: The consented slice the contract is limited to, if any.
    slice_id: str | None = None
    #: How many days the consumer may keep a released result.
    result_retention_days: int = 30
    suspended_at: datetime | None = None
    #: Base64 Ed25519 signatures over the canonical terms: the provider's offer and the
    #: consumer's acceptance.
    provider_signature: str | None = None
    consumer_signature: str | None = None

    def status_at(self, now: datetime) -> ContractStatus:
        """The effective status at ``now``: stored status, or ``expired`` past the window."""
        if self.status in (ContractStatus.OFFERED, ContractStatus.ACTIVE,
                           ContractStatus.SUSPENDED) and now >= self.valid_until:
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

    def terms(self) -> ContractTerms:
        """The signed document: every term, none of the lifecycle state."""
        return ContractTerms(
            id=self.id,
            provider=self.provider_org,
            consumer=self.consumer_org,
            dataset=DatasetTerms(id=self.dataset_id, version=self.dataset_version),
            slice=self.slice_id,
            purposes=list(self.purposes),
            fields={name: form.value for name, form in self.fields.items()},
            k_min=self.k_min,
            dominance=DominanceTerms(n=self.dominance.n, k=float(self.dominance.k),
                                     p=float(self.dominance.p)),
            valid_from=self.valid_from,
            valid_until=self.valid_until,
            max_queries_per_day=self.max_queries_per_day,
            result_retention_days=self.result_retention_days,
            offered_at=self.created_at,
        )

    def signatures_hold(self, provider_key: str | None, consumer_key: str | None) -> bool:
        """Whether the offer and (once accepted) the acceptance verify under these keys.

        An offer needs the provider's signature; every later state needs both.
        """
        message = self.terms().canonical()
        if not verify_signature(provider_key, message, self.provider_signature):
            return False
        if self.status is ContractStatus.OFFERED:
            return True
        return verify_signature(consumer_key, message, self.consumer_signature)

    def policy_view(self, now: datetime) -> dict[str, Any]:
        """The contract as the Rego policies see it (times as epoch seconds)."""
        return {
            "id": self.id,
            "dataset_id": self.dataset_id,
            "provider_org": self.provider_org,
            "consumer_org": self.consumer_org,
            "status": self.status_at(now).value,
            "purposes": list(self.purposes),
            "fields": {name: form.value for name, form in self.fields.items()},
            "k_min": self.k_min,
            "dominance": {"n": self.dominance.n, "k": self.dominance.k,
                          "p": self.dominance.p},
            # Whole seconds, rounded inwards: the policy compares them with the current second
            # rounded down, and the window it sees is never wider than the agreed one.
            "valid_from": math.ceil(self.valid_from.timestamp()),
            "valid_until": math.floor(self.valid_until.timestamp()),
            "max_queries_per_day": self.max_queries_per_day,
        }
