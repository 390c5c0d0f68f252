"""Use cases: offering, signing, accepting, suspending, revoking and reading usage contracts."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from broker.domain.datasets import DatasetSchema, FieldRole
from broker.domain.errors import BadSignature, Conflict, InvalidInput
from broker.domain.ports import Clock, OrgKeyring, UnitOfWork, UnitOfWorkFactory
from broker.domain.principals import RequestContext
from broker.domain.slices import Slice
from broker.services.datasets import dataset_resource
from broker.services.guard import Guard
from contracts.model import Contract, ContractStatus, FieldForm, IllegalTransition, Terms
from contracts.terms import ContractTerms, whole_seconds
from contracts.terms import verify as verify_signature

#: Forms that let a field's values out, which pseudonyms of the same field could be matched to.
_VALUES = frozenset({FieldForm.CLEAR, FieldForm.GENERALIZE})


def _linkable_forms(terms: Terms, contracts: Sequence[Contract]) -> list[str]:
    """Fields ``terms`` would release pseudonymized while another contract on the dataset (of
    any status: what was released stays released) releases their values, or the reverse.

    Departments may collude: the per-group sums under the pseudonyms equal the per-group sums
    under the clear keys, so one contract's pseudonyms protect nothing once another contract
    lets the same field out with its values.
    """
    clash: set[str] = set()
    for other in contracts:
        if other.terms.dataset_id != terms.dataset_id:
            continue
        for name, form in terms.fields.items():
            theirs = other.terms.fields.get(name)
            if theirs is None:
                continue
            pair = {form, theirs}
            if FieldForm.PSEUDONYMIZE in pair and pair & _VALUES:
                clash.add(name)
    return sorted(clash)


def _check_forms(terms: Terms, schema: DatasetSchema) -> None:
    """Refuse terms that offer the entity field other than pseudonymized, or an identifier in
    clear: both parties would sign them and the policy would then deny every query that uses
    the field (``entity-field-not-usable``, ``identifier-never-in-clear``)."""
    entity_form = terms.fields.get(schema.entity_field)
    if entity_form is not None and entity_form is not FieldForm.PSEUDONYMIZE:
        # Every query groups and counts by the entity, never releases it.
        raise InvalidInput("The entity field can be offered only pseudonymized.",
                           fields=[schema.entity_field],
                           reasons=["entity-field-pseudonymized-only"])
    identifiers = sorted(name for name, form in terms.fields.items()
                         if form is FieldForm.CLEAR and schema.has_field(name)
                         and schema.field(name).role is FieldRole.IDENTIFIER)
    if identifiers:
        raise InvalidInput("Identifier fields are never offered in clear; offer them "
                           "pseudonymized, or leave them out.",
                           fields=identifiers, reasons=["identifier-never-in-clear"])


def contract_resource(contract: Contract) -> dict[str, Any]:
    """The contract as authz sees it: the provider owns it, the consumer is its party."""
    return {
        "kind": "contract",
        "id": contract.id,
        "owner_org": contract.provider_org,
        "consumer_org": contract.consumer_org,
    }


def org_keys(uow: UnitOfWork, contract: Contract) -> tuple[str | None, str | None]:
    """The registered public keys of the contract's provider and consumer."""
    provider, consumer = uow.orgs.get(contract.provider_org), uow.orgs.get(contract.consumer_org)
    return (provider.public_key if provider else None, consumer.public_key if consumer else None)


def in_force_signatures(uow: UnitOfWork, contract: Contract) -> bool:
    """Whether the contract's signatures verify under its parties' registered keys now."""
    return contract.signatures_hold(*org_keys(uow, contract))


@dataclass(frozen=True, slots=True)
class ContractView:
    """A contract with its status as of the moment the service answered, and whether each
    party's signature verifies under its organisation's registered key."""

    contract: Contract
    status: ContractStatus
    provider_signed: bool = False
    consumer_signed: bool = False


#: Lifecycle actions and the step of the state machine each makes.
_STEPS = {"contract.accept": "accept", "contract.suspend": "suspend",
          "contract.resume": "resume", "contract.revoke": "revoke"}


@dataclass(frozen=True, slots=True)
class ContractService:
    """The contract lifecycle; every step and every read is audited.

    A contract comes into force only when the provider's offer signature and the consumer's
    acceptance signature verify, over the canonical terms, under the keys their organisations
    registered. The broker signs for an organisation only when it holds that organisation's
    key (``keyring``, embedded demo); otherwise the parties sign outside and send signatures.
    """

    uow: UnitOfWorkFactory
    guard: Guard
    clock: Clock
    keyring: OrgKeyring | None = None
    #: The purpose catalogue (policy data); a contract may only name these purposes.
    purposes: frozenset[str] | None = None

    def offer(self, ctx: RequestContext, terms: Terms, *, consumer_org: str) -> ContractView:
        """The dataset owner offers terms to a consumer organisation."""
        with self.uow() as uow:
            now = whole_seconds(self.clock())
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
            self._check_terms(uow, terms, consumer_org, dataset.version,
                              dataset.schema.has_field)
            _check_forms(terms, dataset.schema)
            contract = Contract(
                id=str(uuid.uuid4()),
                provider_org=dataset.owner_org,
                consumer_org=consumer_org,
                terms=replace(
                    terms,
                    purposes=tuple(dict.fromkeys(terms.purposes)),
                    # Whole seconds, rounded inwards: the signed window is never wider than asked.
                    valid_from=whole_seconds(terms.valid_from, up=True),
                    valid_until=whole_seconds(terms.valid_until),
                ),
                status=ContractStatus.OFFERED,
                created_at=now,
            )
            contract = replace(contract, provider_signature=self._held_signature(
                uow, contract.provider_org, contract))
            uow.contracts.add(contract)
            self.guard.record(
                uow, ctx, "contract.offer", dataset_id=dataset.id, version=dataset.version,
                contract_id=contract.id,
            )
            uow.commit()
            return self._view(uow, contract, now)

    def _check_terms(self, uow: UnitOfWork, terms: Terms, consumer_org: str, latest: int,
                     has_field: Any) -> None:
        if uow.orgs.get(consumer_org) is None:
            raise InvalidInput("consumer_org is not a registered organisation.")
        if self.purposes is not None:
            unknown = sorted(set(terms.purposes) - self.purposes)
            if unknown:
                raise InvalidInput("The contract names purposes outside the purpose catalogue.",
                                   purposes=unknown)
        fields = sorted(f for f in terms.fields if not has_field(f))
        if fields:
            raise InvalidInput("The contract lists fields the dataset does not have.",
                               fields=fields)
        if terms.dataset_version is not None and not 1 <= terms.dataset_version <= latest:
            raise InvalidInput(f"dataset_version must be between 1 and {latest}.")
        if terms.slice_id is not None:
            consented = uow.slices.get(terms.slice_id)
            if consented is None or consented.dataset_id != terms.dataset_id:
                raise InvalidInput("slice_id is not a slice of this dataset.")
            outside = sorted(f for f in terms.fields if f not in consented.fields)
            if outside:
                raise InvalidInput("The contract lists fields outside the slice.",
                                   fields=outside)
        if whole_seconds(terms.valid_until) <= whole_seconds(terms.valid_from, up=True):
            raise InvalidInput("valid_until must be after valid_from.")
        linkable = _linkable_forms(terms, uow.contracts.all())
        if linkable:
            raise Conflict(
                "A field may leave a dataset either pseudonymized or with its values (clear or "
                "generalized), never both: another contract on this dataset releases these "
                "fields the other way, and per-group figures would link the pseudonyms back.",
                reasons=["pseudonym-linkable"], fields=linkable)

    def sign(self, ctx: RequestContext, contract_id: str, signature: str) -> ContractView:
        """The provider attaches its offer signature, made outside the broker."""
        with self.uow() as uow:
            contract = self._visible(uow, ctx, contract_id, "contract.sign")
            self.guard.require(uow, ctx, "contract.sign", contract_resource(contract),
                               **self._ids(contract))
            now = self.clock()
            status = contract.status_at(now)
            if status is not ContractStatus.OFFERED:
                raise Conflict(f"A contract that is {status} cannot be signed.",
                               contract_status=status.value)
            provider_key, _ = org_keys(uow, contract)
            message = contract.document().canonical()
            if verify_signature(provider_key, message, contract.provider_signature):
                raise Conflict("The offer is already signed.", contract_status=status.value)
            if not verify_signature(provider_key, message, signature):
                self.guard.deny(uow, ctx, "contract.sign", ("bad-signature",),
                                **self._ids(contract))
                raise BadSignature("The signature does not verify under the provider's "
                                   "registered key over the canonical terms.")
            changed = replace(contract, provider_signature=signature)
            uow.contracts.save(changed)
            self.guard.record(uow, ctx, "contract.sign", **self._ids(changed))
            uow.commit()
            return self._view(uow, changed, now)

    def accept(self, ctx: RequestContext, contract_id: str,
               signature: str | None = None) -> ContractView:
        """The consumer accepts a signed offer with its own signature; it becomes active."""
        return self._transition(ctx, contract_id, "contract.accept", signature)

    def suspend(self, ctx: RequestContext, contract_id: str) -> ContractView:
        """The provider pauses an active contract; queries under it stop at once."""
        return self._transition(ctx, contract_id, "contract.suspend")

    def resume(self, ctx: RequestContext, contract_id: str) -> ContractView:
        """The provider lifts a suspension; the contract is active again."""
        return self._transition(ctx, contract_id, "contract.resume")

    def revoke(self, ctx: RequestContext, contract_id: str) -> ContractView:
        """The provider revokes a contract; queries under it stop at once."""
        return self._transition(ctx, contract_id, "contract.revoke")

    def get(self, ctx: RequestContext, contract_id: str) -> ContractView:
        """One contract, for its parties and auditors."""
        with self.uow() as uow:
            contract = self._settled(uow, ctx, self._visible(uow, ctx, contract_id,
                                                             "contract.read"))
            self.guard.record(uow, ctx, "contract.read", **self._ids(contract))
            uow.commit()
            return self._view(uow, contract, self.clock())

    def with_slice(self, ctx: RequestContext, contract_id: str
                   ) -> tuple[ContractView, Slice | None]:
        """One contract (a read like ``get``) with the consented slice it is limited to."""
        view = self.get(ctx, contract_id)
        slice_id = view.contract.terms.slice_id
        if slice_id is None:
            return view, None
        with self.uow(read_only=True) as uow:
            return view, uow.slices.get(slice_id)

    def terms(self, ctx: RequestContext, contract_id: str) -> ContractTerms:
        """The document the parties sign, for signing or checking it outside the broker."""
        with self.uow() as uow:
            contract = self._visible(uow, ctx, contract_id, "contract.read")
            self.guard.record(uow, ctx, "contract.read", **self._ids(contract))
            uow.commit()
            return contract.document()

    def list(self, ctx: RequestContext) -> Sequence[ContractView]:
        """Every contract the caller is a party to (all of them for auditors)."""
        with self.uow() as uow:
            now = self.clock()
            visible = [
                c for c in uow.contracts.all()
                if self.guard.decide(uow, ctx, "contract.read", contract_resource(c)).allow
            ]
            visible = [self._settled(uow, ctx, c) for c in visible]
            self.guard.record(uow, ctx, "contract.list")
            uow.commit()
            return [self._view(uow, c, now) for c in visible]

    def _transition(self, ctx: RequestContext, contract_id: str, action: str,
                    signature: str | None = None) -> ContractView:
        with self.uow() as uow:
            contract = self._visible(uow, ctx, contract_id, action)
            self.guard.require(uow, ctx, action, contract_resource(contract),
                               **self._ids(contract))
            now = self.clock()
            if contract.expiry_due(now):
                self._settled(uow, ctx, contract)
                uow.commit()
            try:
                changed = contract.moved(_STEPS[action], now)
            except IllegalTransition as exc:
                raise Conflict(str(exc), contract_status=contract.status_at(now).value) from exc
            if action == "contract.accept":
                changed = self._countersigned(uow, ctx, changed, signature)
            uow.contracts.save(changed)
            self.guard.record(uow, ctx, action, **self._ids(changed))
            uow.commit()
            return self._view(uow, changed, now)

    def _countersigned(self, uow: UnitOfWork, ctx: RequestContext, contract: Contract,
                       signature: str | None) -> Contract:
        """The accepted contract with the consumer's signature, once both signatures hold."""
        provider_key, consumer_key = org_keys(uow, contract)
        message = contract.document().canonical()
        if not verify_signature(provider_key, message, contract.provider_signature):
            raise Conflict("The offer is not signed by the provider under its registered key; "
                           "it cannot be accepted.", contract_status="offered")
        if signature is None:
            signature = self._held_signature(uow, contract.consumer_org, contract)
            if signature is None:
                raise BadSignature("Accepting needs the consumer's signature over the canonical "
                                   "terms (GET /v1/contracts/{id}/terms; broker contracts sign).")
        if not verify_signature(consumer_key, message, signature):
            self.guard.deny(uow, ctx, "contract.accept", ("bad-signature",),
                            **self._ids(contract))
            raise BadSignature("The signature does not verify under the consumer's registered "
                               "key over the canonical terms.")
        return replace(contract, consumer_signature=signature)

    def _held_signature(self, uow: UnitOfWork, org_id: str, contract: Contract) -> str | None:
        """The organisation's signature if the broker holds its registered key, else None."""
        if self.keyring is None:
            return None
        message = contract.document().canonical()
        signature = self.keyring.sign(org_id, message)
        org = uow.orgs.get(org_id)
        key = org.public_key if org else None
        if signature is None or not verify_signature(key, message, signature):
            return None  # the org registered a key of its own: it signs for itself
        return signature

    def _settled(self, uow: UnitOfWork, ctx: RequestContext, contract: Contract) -> Contract:
        """The contract with a due expiry stored and audited (the caller commits)."""
        now = self.clock()
        if not contract.expiry_due(now):
            return contract
        expired = replace(contract, status=ContractStatus.EXPIRED)
        uow.contracts.save(expired)
        self.guard.record(uow, ctx, "contract.expire", **self._ids(expired))
        return expired

    def _view(self, uow: UnitOfWork, contract: Contract, now: datetime) -> ContractView:
        provider_key, consumer_key = org_keys(uow, contract)
        message = contract.document().canonical()
        return ContractView(
            contract, contract.status_at(now),
            provider_signed=verify_signature(provider_key, message, contract.provider_signature),
            consumer_signed=verify_signature(consumer_key, message, contract.consumer_signature),
        )

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
        return {"dataset_id": contract.terms.dataset_id, "contract_id": contract.id}
