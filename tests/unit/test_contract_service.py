"""Use case: the contract lifecycle (offer, sign, accept, suspend, resume, revoke, expire),
every step audited, against in-memory fakes."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.domain.errors import BadSignature, Conflict, InvalidInput, NotFound, PolicyDenied
from broker.domain.organisations import OrgKind
from broker.domain.principals import Role
from broker.services.contracts import ContractService
from broker.services.orgs import OrgService
from contracts.model import ContractStatus, FieldForm
from contracts.terms import encode_public_key, sign, verify
from tests.fakes import FakeUnitOfWorkFactory, ManualClock
from tests.unit.conftest import START, County, caller


@pytest.fixture
def dataset_id(county: County) -> str:
    """Grid's energy data, registered."""
    return county.energy().dataset.id


def _actions(uow: FakeUnitOfWorkFactory) -> list[tuple[str, bool]]:
    return [(e["action"], e["decision"]["allowed"]) for e in uow.audit_entries()]


def test_an_offer_is_signed_for_the_provider_and_audited(
    county: County, dataset_id: str, uow: FakeUnitOfWorkFactory
) -> None:
    view = county.offer(dataset_id)
    contract = view.contract
    assert view.status is ContractStatus.OFFERED
    assert (contract.provider_org, contract.consumer_org) == ("grid", "econ")
    assert (view.provider_signed, view.consumer_signed) == (True, False)
    assert contract.created_at == START
    with uow(read_only=True) as unit:
        assert unit.contracts.get(contract.id) == contract
    last = uow.audit_entries()[-1]
    assert (last["action"], last["decision"]["allowed"]) == ("contract.offer", True)
    assert last["resource"]["contract_id"] == contract.id


def test_the_consumer_accepts_and_the_contract_comes_into_force_with_both_signatures(
    county: County, dataset_id: str, contract_service: ContractService,
    uow: FakeUnitOfWorkFactory, clock: ManualClock
) -> None:
    offered = county.offer(dataset_id).contract
    clock.advance(timedelta(hours=1))
    view = contract_service.accept(county.econ.ctx(), offered.id)
    assert view.status is ContractStatus.ACTIVE
    assert (view.provider_signed, view.consumer_signed) == (True, True)
    assert view.contract.accepted_at == clock()
    with uow(read_only=True) as unit:
        stored = unit.contracts.get(offered.id)
        grid, econ = unit.orgs.get("grid"), unit.orgs.get("econ")
    assert stored is not None
    assert stored.status is ContractStatus.ACTIVE
    assert grid is not None
    assert econ is not None
    terms = contract_service.terms(county.econ.ctx(), offered.id).canonical()
    assert verify(grid.public_key, terms, stored.provider_signature)
    assert verify(econ.public_key, terms, stored.consumer_signature)
    assert ("contract.accept", True) in _actions(uow)


def test_the_provider_cannot_accept_its_own_offer_and_the_attempt_is_audited(
    county: County, dataset_id: str, contract_service: ContractService,
    uow: FakeUnitOfWorkFactory
) -> None:
    offered = county.offer(dataset_id).contract
    with pytest.raises(PolicyDenied):
        contract_service.accept(county.grid.ctx(), offered.id)
    assert _actions(uow)[-1] == ("contract.accept", False)
    with uow(read_only=True) as unit:
        assert unit.contracts.get(offered.id) == offered


def test_suspending_and_resuming_move_an_active_contract_and_each_step_is_audited(
    county: County, dataset_id: str, contract_service: ContractService,
    uow: FakeUnitOfWorkFactory, clock: ManualClock
) -> None:
    active = county.active_contract(dataset_id).contract
    clock.advance(timedelta(days=1))
    suspended = contract_service.suspend(county.grid.ctx(), active.id)
    assert suspended.status is ContractStatus.SUSPENDED
    assert suspended.contract.suspended_at == clock()
    resumed = contract_service.resume(county.grid.ctx(), active.id)
    assert resumed.status is ContractStatus.ACTIVE
    assert resumed.contract.suspended_at is None
    assert _actions(uow)[-2:] == [("contract.suspend", True), ("contract.resume", True)]


def test_a_revoked_contract_is_final(
    county: County, dataset_id: str, contract_service: ContractService,
    uow: FakeUnitOfWorkFactory
) -> None:
    active = county.active_contract(dataset_id).contract
    revoked = contract_service.revoke(county.grid.ctx(), active.id)
    assert revoked.status is ContractStatus.REVOKED
    assert revoked.contract.revoked_at == START
    for step in (contract_service.resume, contract_service.suspend, contract_service.revoke):
        with pytest.raises(Conflict) as refused:
            step(county.grid.ctx(), active.id)
        assert refused.value.extensions["contract_status"] == "revoked"
    with pytest.raises(Conflict):
        contract_service.accept(county.econ.ctx(), active.id)
    with uow(read_only=True) as unit:
        assert unit.contracts.get(active.id) == revoked.contract


def test_a_contract_past_its_window_expires_on_the_next_read_and_the_expiry_is_audited(
    county: County, dataset_id: str, contract_service: ContractService,
    uow: FakeUnitOfWorkFactory, clock: ManualClock
) -> None:
    active = county.active_contract(dataset_id).contract
    clock.advance(timedelta(days=31))
    view = contract_service.get(county.econ.ctx(), active.id)
    assert view.status is ContractStatus.EXPIRED
    with uow(read_only=True) as unit:
        stored = unit.contracts.get(active.id)
    assert stored is not None
    assert stored.status is ContractStatus.EXPIRED
    assert _actions(uow)[-2:] == [("contract.expire", True), ("contract.read", True)]
    with pytest.raises(Conflict):
        contract_service.suspend(county.grid.ctx(), active.id)


def test_another_organisations_contract_is_not_found_and_the_attempt_is_audited(
    county: County, dataset_id: str, contract_service: ContractService,
    uow: FakeUnitOfWorkFactory
) -> None:
    offered = county.offer(dataset_id).contract
    with pytest.raises(NotFound):
        contract_service.get(county.env.ctx(), offered.id)
    last = uow.audit_entries()[-1]
    assert (last["action"], last["decision"]["allowed"]) == ("contract.read", False)
    assert last["actor"]["org"] == "env"
    assert last["resource"]["contract_id"] == offered.id
    assert [v.contract.id for v in contract_service.list(county.env.ctx())] == []
    assert [v.contract.id for v in contract_service.list(county.auditor.ctx())] == [offered.id]


@pytest.mark.parametrize(("terms", "complaint"), [
    ({"purposes": ("fortune-telling",)}, "purpose catalogue"),
    ({"fields": {"town": FieldForm.CLEAR, "floor_area": FieldForm.AGGREGATE}},
     "fields the dataset does not have"),
    ({"valid_until": START}, "valid_until must be after valid_from"),
    ({"dataset_version": 2}, "dataset_version must be between 1 and 1"),
])
def test_an_offer_with_terms_the_dataset_or_catalogue_cannot_honour_is_refused_and_not_kept(
    county: County, dataset_id: str, uow: FakeUnitOfWorkFactory,
    terms: dict[str, Any], complaint: str
) -> None:
    with pytest.raises(InvalidInput, match=complaint):
        county.offer(dataset_id, **terms)
    with uow(read_only=True) as unit:
        assert unit.contracts.all() == []
    assert ("contract.offer", True) not in _actions(uow)


def test_an_offer_to_an_unregistered_organisation_is_refused(
    county: County, dataset_id: str
) -> None:
    with pytest.raises(InvalidInput, match="consumer_org"):
        county.offer(dataset_id, caller("nobody", Role.CONSUMER))


def test_a_consumer_holding_its_own_key_accepts_only_with_a_signature_that_verifies(
    county: County, dataset_id: str, org_service: OrgService,
    contract_service: ContractService, uow: FakeUnitOfWorkFactory
) -> None:
    own_key = Ed25519PrivateKey.generate()
    org_service.register(county.admin.ctx(), org_id="stats", name="Stats",
                         kind=OrgKind.DEPARTMENT,
                         public_key=encode_public_key(own_key.public_key()))
    stats = caller("stats", Role.CONSUMER)
    offered = county.offer(dataset_id, stats).contract
    with pytest.raises(BadSignature):
        contract_service.accept(stats.ctx(), offered.id)  # the broker holds no key for stats
    terms = contract_service.terms(stats.ctx(), offered.id)
    forged = sign(Ed25519PrivateKey.generate(), terms)
    with pytest.raises(BadSignature):
        contract_service.accept(stats.ctx(), offered.id, forged)
    assert _actions(uow)[-1] == ("contract.accept", False)
    view = contract_service.accept(stats.ctx(), offered.id, sign(own_key, terms))
    assert view.status is ContractStatus.ACTIVE
    assert view.consumer_signed
