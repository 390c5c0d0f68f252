"""The contract state machine."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from broker.policy.inputs import contract_view
from contracts.model import (
    Contract,
    ContractStatus,
    Dominance,
    FieldForm,
    IllegalTransition,
    Terms,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _contract(**kw: object) -> Contract:
    terms = Terms(dataset_id="d", purposes=("x",), fields={"f": FieldForm.AGGREGATE}, k_min=5,
                  dominance=Dominance(), valid_from=T0, valid_until=T0 + timedelta(days=10),
                  max_queries_per_day=10)
    base: dict[str, object] = {
        "id": "c", "provider_org": "p", "consumer_org": "q", "terms": terms,
        "status": ContractStatus.OFFERED, "created_at": T0}
    base.update(kw)
    return Contract(**base)  # type: ignore[arg-type]


def test_offered_contract_is_accepted_then_revoked() -> None:
    active = _contract().accepted(T0 + timedelta(days=1))
    assert active.status is ContractStatus.ACTIVE
    assert active.accepted_at
    revoked = active.revoked(T0 + timedelta(days=2))
    assert revoked.status is ContractStatus.REVOKED
    with pytest.raises(IllegalTransition):
        revoked.accepted(T0 + timedelta(days=3))
    with pytest.raises(IllegalTransition):
        revoked.revoked(T0 + timedelta(days=3))


def test_contract_expires_at_valid_until_without_a_job() -> None:
    active = _contract(status=ContractStatus.ACTIVE)
    assert active.status_at(T0 + timedelta(days=9)) is ContractStatus.ACTIVE
    assert active.status_at(T0 + timedelta(days=10)) is ContractStatus.EXPIRED
    with pytest.raises(IllegalTransition):
        _contract().accepted(T0 + timedelta(days=11))


def test_policy_view_carries_times_as_epoch_seconds() -> None:
    view = contract_view(_contract(), T0)
    assert view["valid_from"] == T0.timestamp()
    assert view["status"] == "offered"
