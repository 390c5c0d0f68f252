"""Use cases: offering, accepting, revoking and reading usage contracts."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from broker.domain.errors import Conflict, InvalidInput
from broker.domain.ports import Clock, UnitOfWork, UnitOfWorkFactory
from broker.domain.principals import RequestContext
from broker.services.datasets import dataset_resource
from broker.services.guard import Guard
from contracts.model import (
    Contract,
    ContractStatus,
    Dominance,
    FieldForm,
    IllegalTransition,
)


def contract_resource(contract: Contract) -> dict[str, Any]:
    """The contract as authz sees it: the provider owns it, the consumer is its party."""
    return {
        "kind": "contract",
        "id": contract.id,
        "owner_org": contract.provider_org,
        "consumer_org": contract.consumer_org,
    }


@dataclass(frozen=True, slots=True)
class ContractView:
    """A contract with its status as of the moment the service answered."""

    contract: Contract
    status: ContractStatus


@dataclass(frozen=True, slots=True)
class ContractOffer:
    """The terms a provider offers."""

    dataset_id: str
    consumer_org: str
    purposes: tuple[str, ...]
    fields: Mapping[str, FieldForm]
    k_min: int
    dominance: Dominance
    valid_from: datetime
    valid_until: datetime
    max_queries_per_day: int


@dataclass(frozen=True, slots=True)
class ContractService:
    """The contract lifecycle; every step and every read is audited."""

    uow: UnitOfWorkFactory
    guard: Guard
    clock: Clock

    def offer(self, ctx: RequestContext, terms: ContractOffer) -> ContractView:
        """The dataset owner offers terms to a consumer organisation."""
        with self.uow() as uow:
            now = self.clock()
            dataset = uow.datasets.get(terms.dataset_id)
            if dataset is None:
                self.guard.conceal(uow, ctx, "contract.offer", ("not-found",), "dataset",
                                   dataset_id=terms.dataset_id)
            resource = dataset_resource(dataset, uow.contracts.all(), now)
            seen = self.guard.decide(uow, ctx, "dataset.read", resource)
            if not seen.allow:
                self.guard.conceal(uow, ctx, "contract.offer", seen.reasons, "dataset",
                                   dataset_id=dataset.id, version=dataset.version)
            self.guard.require(uow, ctx, "contract.offer", resource, dataset_id=dataset.id,
                               version=dataset.version)
            if uow.orgs.get(terms.consumer_org) is None:
                raise InvalidInput("consumer_org is not a registered organisation.")
            unknown = sorted(f for f in terms.fields if not dataset.schema.has_field(f))
            if unknown:
                raise InvalidInput("The contract lists fields the dataset does not have.",
                                   fields=unknown)
            if terms.valid_until <= terms.valid_from:
                raise InvalidInput("valid_until must be after valid_from.")
            contract = Contract(
                id=str(uuid.uuid4()),
                dataset_id=dataset.id,
                provider_org=dataset.owner_org,
                consumer_org=terms.consumer_org,
                purposes=tuple(dict.fromkeys(terms.purposes)),
                fields=dict(terms.fields),
                k_min=terms.k_min,
                dominance=terms.dominance,
                valid_from=terms.valid_from,
                valid_until=terms.valid_until,
                max_queries_per_day=terms.max_queries_per_day,
                status=ContractStatus.OFFERED,
                created_at=now,
            )
            uow.contracts.add(contract)
            self.guard.record(
                uow, ctx, "contract.offer", dataset_id=dataset.id, version=dataset.version,
                contract_id=contract.id,
            )
            uow.commit()
            return ContractView(contract, contract.status_at(now))

    def accept(self, ctx: RequestContext, contract_id: str) -> ContractView:
        """The consumer accepts an offer; the contract becomes active."""
        return self._transition(ctx, contract_id, "contract.accept")

    def revoke(self, ctx: RequestContext, contract_id: str) -> ContractView:
        """The provider revokes a contract; queries under it stop at once."""
        return self._transition(ctx, contract_id, "contract.revoke")

    def get(self, ctx: RequestContext, contract_id: str) -> ContractView:
        """One contract, for its parties and auditors."""
        with self.uow() as uow:
            contract = self._visible(uow, ctx, contract_id, "contract.read")
            self.guard.record(uow, ctx, "contract.read", **self._ids(contract))
            uow.commit()
            return ContractView(contract, contract.status_at(self.clock()))

    def list(self, ctx: RequestContext) -> Sequence[ContractView]:
        """Every contract the caller is a party to (all of them for auditors)."""
        with self.uow() as uow:
            now = self.clock()
            visible = [
                ContractView(c, c.status_at(now))
                for c in uow.contracts.all()
                if self.guard.decide(uow, ctx, "contract.read", contract_resource(c)).allow
            ]
            self.guard.record(uow, ctx, "contract.list")
            uow.commit()
            return visible

    def _transition(self, ctx: RequestContext, contract_id: str, action: str) -> ContractView:
        with self.uow() as uow:
            contract = self._visible(uow, ctx, contract_id, action)
            self.guard.require(uow, ctx, action, contract_resource(contract),
                               **self._ids(contract))
            now = self.clock()
            try:
                changed = contract.accepted(now) if action == "contract.accept" else (
                    contract.revoked(now)
                )
            except IllegalTransition as exc:
                raise Conflict(str(exc), contract_status=contract.status_at(now).value) from exc
            uow.contracts.save(changed)
            self.guard.record(uow, ctx, action, **self._ids(changed))
            uow.commit()
            return ContractView(changed, changed.status_at(now))

    def _visible(
        self, uow: UnitOfWork, ctx: RequestContext, contract_id: str, action: str
    ) -> Contract:
        """The contract if the caller may see it; otherwise the attempt is audited and 404."""
        contract = uow.contracts.get(contract_id)
        if contract is None:
            self.guard.conceal(uow, ctx, action, ("not-found",), "contract",
                               contract_id=contract_id)
        seen = self.guard.decide(uow, ctx, "contract.read", contract_resource(contract))
        if not seen.allow:
            self.guard.conceal(uow, ctx, action, seen.reasons, "contract",
                               **self._ids(contract))
        return contract

    @staticmethod
    def _ids(contract: Contract) -> dict[str, Any]:
        return {"dataset_id": contract.dataset_id, "contract_id": contract.id}
