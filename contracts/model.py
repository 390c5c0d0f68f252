"""The usage-contract model and its lifecycle state machine.

A contract is offered by the provider that owns a dataset to one consumer organisation. It
names the purposes the data may serve, the form in which each field may flow, the disclosure
thresholds (k_min distinct enterprises per released cell, (n, k) dominance), a validity window
and a daily query quota. Lifecycle::

    offered --accept--> active --revoke--> revoked
       |                  |
       +----revoke--------+----(now > valid_until)--> expired

``expired`` is never stored: it is derived from ``valid_until`` at the moment of the decision,
so a contract stops working at its end time without a job having to run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum
from typing import Any


class ContractStatus(StrEnum):
    """Where a contract is in its lifecycle."""

    OFFERED = "offered"
    ACTIVE = "active"
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

    def status_at(self, now: datetime) -> ContractStatus:
        """The effective status at ``now``: stored status, or ``expired`` past the window."""
        if self.status in (ContractStatus.OFFERED, ContractStatus.ACTIVE) and (
            now >= self.valid_until
        ):
            return ContractStatus.EXPIRED
        return self.status

    def accepted(self, now: datetime) -> Contract:
        """The contract after the consumer accepts it."""
        status = self.status_at(now)
        if status is not ContractStatus.OFFERED:
            raise IllegalTransition(f"A contract that is {status} cannot be accepted.")
        return replace(self, status=ContractStatus.ACTIVE, accepted_at=now)

    def revoked(self, now: datetime) -> Contract:
        """The contract after the provider revokes (or withdraws) it."""
        status = self.status_at(now)
        if status not in (ContractStatus.OFFERED, ContractStatus.ACTIVE):
            raise IllegalTransition(f"A contract that is {status} cannot be revoked.")
        return replace(self, status=ContractStatus.REVOKED, revoked_at=now)

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
