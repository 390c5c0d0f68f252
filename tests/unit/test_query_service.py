"""Use case: aggregate queries and their dry run under a usage contract, against in-memory
fakes, the real policies, DuckDB and encrypted storage. Every outcome must be on the record."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from audit.entry import encode, leaf_hash
from broker.domain.errors import DatasetUnreadable, InvalidInput, PolicyDenied, Unavailable
from broker.domain.queries import (
    AggregateSpec,
    CellStatus,
    Dimension,
    Filter,
    FilterOp,
    Measure,
    MeasureFn,
    Release,
    SuppressionReason,
)
from broker.services.queries import Prediction, QueryService
from broker.services.releases import result_digest
from connectors.storage import ParquetStorage
from tests.fakes import FakeUnitOfWorkFactory, ManualClock, SwitchablePolicyEngine
from tests.unit.conftest import County


@pytest.fixture
def dataset_id(county: County) -> str:
    """Grid's energy data, registered."""
    return county.energy().dataset.id


@pytest.fixture
def contract_id(county: County, dataset_id: str) -> str:
    """An active contract of econ's on the energy data: k_min 3, energy-planning only."""
    return county.active_contract(dataset_id).contract.id


def _by_town(contract_id: str, **changes: Any) -> AggregateSpec:
    """Enterprises and kWh by town, for energy planning."""
    spec: dict[str, Any] = {
        "contract_id": contract_id, "purpose": "energy-planning",
        "group_by": (Dimension("town"),),
        "measures": (Measure(MeasureFn.COUNT), Measure(MeasureFn.SUM, field="kwh"),
                     Measure(MeasureFn.MEAN, field="kwh")),
        **changes,
    }
    return AggregateSpec(**spec)


def _last_entry(uow: FakeUnitOfWorkFactory) -> dict[str, Any]:
    return uow.audit_entries()[-1]


def _cells(release: Release) -> dict[Any, tuple[Any, ...]]:
    return {c.key.get("town"): (c.status, c.values, c.reason) for c in release.cells}


def test_a_release_counts_enterprises_and_withholds_cells_below_k_min(
    county: County, contract_id: str, query_service: QueryService
) -> None:
    release = query_service.aggregate(county.econ.ctx(), _by_town(contract_id))
    # Town A: 6 enterprises (E1 with three rows), 85 kWh over 8 rows; town B: 2 enterprises.
    assert _cells(release) == {
        "A": (CellStatus.PUBLISHED, {"count": 6, "sum_kwh": 85.0, "mean_kwh": 85.0 / 8}, None),
        "B": (CellStatus.SUPPRESSED, None, SuppressionReason.MIN_ENTITIES),
    }
    assert release.k == 3
    assert release.field_verdicts == {"town": "clear", "kwh": "aggregate"}
    assert release.suppressed == {"min-entities": 1}


def test_a_lone_small_cell_is_withheld_without_its_count(
    county: County, contract_id: str, query_service: QueryService
) -> None:
    release = query_service.aggregate(county.econ.ctx(), _by_town(
        contract_id, filters=(Filter("town", FilterOp.EQ, "B"),)))
    [cell] = release.cells
    assert (cell.status, cell.values, cell.reason) == (
        CellStatus.SUPPRESSED, None, SuppressionReason.MIN_ENTITIES)
    assert (release.cells_published, release.cells_suppressed) == (0, 1)


def test_the_audit_entry_is_committed_with_the_release_and_its_receipt_names_it(
    county: County, contract_id: str, dataset_id: str, query_service: QueryService,
    uow: FakeUnitOfWorkFactory
) -> None:
    ctx = county.econ.ctx()
    release = query_service.aggregate(ctx, _by_town(contract_id))
    assert release.receipt is not None
    assert release.result_nonce is not None
    entry = _last_entry(uow)
    assert entry["seq"] == release.receipt.seq
    assert leaf_hash(encode(entry)) == release.receipt.leaf_hash
    assert (entry["action"], entry["decision"]["allowed"]) == ("query.aggregate", True)
    assert (entry["request_id"], release.query_id) == (ctx.request_id, ctx.request_id)
    assert entry["resource"] == {"dataset_id": dataset_id, "version": 1,
                                 "contract_id": contract_id, "fields": ["kwh", "town"]}
    assert entry["disclosure"] == {
        "k": 3, "cells_published": 1, "cells_suppressed": 1,
        "result_digest": result_digest(release.result_nonce, release.cells)}
    # The differencing ledger and the cached answer were committed in the same unit.
    assert {seq for _, _, seq in uow.committed.released} == {release.receipt.seq}
    assert [seq for _, seq in uow.committed.answers.values()] == [release.receipt.seq]


def test_an_identical_repeat_is_answered_the_same_from_the_stored_answer(
    county: County, contract_id: str, query_service: QueryService,
    uow: FakeUnitOfWorkFactory
) -> None:
    first = query_service.aggregate(county.econ.ctx(), _by_town(contract_id))
    released = len(uow.committed.released)
    again = query_service.aggregate(county.econ.ctx(), _by_town(contract_id))
    assert again.cells == first.cells
    assert again.receipt is not None
    assert first.receipt is not None
    assert again.receipt.seq == first.receipt.seq + 1
    assert again.result_nonce != first.result_nonce
    assert len(uow.committed.answers) == 1
    assert len(uow.committed.released) == released
    assert _last_entry(uow)["disclosure"]["result_digest"] == result_digest(
        again.result_nonce or "", again.cells)


def test_a_query_for_a_purpose_outside_the_contract_is_denied_and_the_denial_is_audited(
    county: County, contract_id: str, dataset_id: str, query_service: QueryService,
    uow: FakeUnitOfWorkFactory
) -> None:
    with pytest.raises(PolicyDenied) as denied:
        query_service.aggregate(county.econ.ctx(),
                                _by_town(contract_id, purpose="industrial-policy"))
    assert denied.value.reasons == ["purpose-not-in-contract"]
    entry = _last_entry(uow)
    assert (entry["action"], entry["purpose"]) == ("query.aggregate", "industrial-policy")
    assert entry["decision"]["allowed"] is False
    assert entry["decision"]["reasons"] == ["purpose-not-in-contract"]
    assert entry["resource"]["dataset_id"] == dataset_id
    assert entry["disclosure"] is None
    assert uow.committed.released == []
    assert uow.committed.answers == {}


def test_a_department_without_a_contract_is_denied_and_the_attempt_names_the_dataset(
    county: County, contract_id: str, dataset_id: str, query_service: QueryService,
    uow: FakeUnitOfWorkFactory
) -> None:
    with pytest.raises(PolicyDenied) as denied:
        query_service.aggregate(county.env.ctx(), _by_town(contract_id))
    assert "no-active-contract" in denied.value.reasons
    entry = _last_entry(uow)
    assert (entry["actor"]["org"], entry["decision"]["allowed"]) == ("env", False)
    assert entry["resource"]["dataset_id"] == dataset_id
    assert entry["resource"]["contract_id"] == contract_id


def test_the_daily_quota_is_counted_from_the_log_and_renews_the_next_day(
    county: County, dataset_id: str, query_service: QueryService,
    uow: FakeUnitOfWorkFactory, clock: ManualClock
) -> None:
    contract_id = county.active_contract(dataset_id, max_queries_per_day=2).contract.id
    for _ in range(2):
        query_service.aggregate(county.econ.ctx(), _by_town(contract_id))
    with pytest.raises(PolicyDenied) as denied:
        query_service.aggregate(county.econ.ctx(), _by_town(contract_id))
    assert denied.value.reasons == ["daily-quota-exhausted"]
    assert _last_entry(uow)["decision"]["reasons"] == ["daily-quota-exhausted"]
    clock.advance(timedelta(days=1))
    assert query_service.aggregate(county.econ.ctx(), _by_town(contract_id)).receipt


def test_a_revoked_contract_stops_queries_at_once(
    county: County, contract_id: str, query_service: QueryService,
    uow: FakeUnitOfWorkFactory
) -> None:
    query_service.aggregate(county.econ.ctx(), _by_town(contract_id))
    county.contracts.revoke(county.grid.ctx(), contract_id)
    with pytest.raises(PolicyDenied) as denied:
        query_service.aggregate(county.econ.ctx(), _by_town(contract_id))
    assert "contract-not-active" in denied.value.reasons
    assert _last_entry(uow)["decision"]["allowed"] is False


def test_a_query_the_planner_rejects_after_the_policy_allowed_is_audited_as_refused(
    county: County, contract_id: str, query_service: QueryService,
    uow: FakeUnitOfWorkFactory
) -> None:
    with pytest.raises(InvalidInput):
        query_service.aggregate(county.econ.ctx(), _by_town(
            contract_id, filters=(Filter("town", FilterOp.EQ, 5),)))
    entry = _last_entry(uow)
    assert (entry["action"], entry["decision"]["reasons"]) == ("query.aggregate",
                                                               ["invalid-input"])


def test_tampered_stored_data_fails_closed_and_the_failure_is_audited(
    county: County, contract_id: str, dataset_id: str, query_service: QueryService,
    storage: ParquetStorage, uow: FakeUnitOfWorkFactory
) -> None:
    with uow(read_only=True) as unit:
        stored = storage.resolve(unit.datasets.version_path(dataset_id, 1))
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0x01
    stored.write_bytes(bytes(data))
    with pytest.raises(DatasetUnreadable):
        query_service.aggregate(county.econ.ctx(), _by_town(contract_id))
    assert _last_entry(uow)["decision"]["reasons"] == ["dataset-unreadable"]
    assert uow.committed.answers == {}


def test_a_query_while_the_policy_engine_is_down_is_refused_and_audited(
    county: County, contract_id: str, query_service: QueryService,
    policy_engine: SwitchablePolicyEngine, uow: FakeUnitOfWorkFactory
) -> None:
    policy_engine.down = True
    with pytest.raises(Unavailable):
        query_service.aggregate(county.econ.ctx(), _by_town(contract_id))
    entry = _last_entry(uow)
    assert entry["decision"] == {"allowed": False, "reasons": ["policy-engine-unavailable"],
                                 "policy_revision": policy_engine.revision}


def test_explain_gives_the_verdicts_and_thresholds_releases_nothing_and_is_audited(
    county: County, contract_id: str, query_service: QueryService,
    uow: FakeUnitOfWorkFactory
) -> None:
    explanation = query_service.explain(county.econ.ctx(), _by_town(contract_id))
    decision = explanation.decision
    assert decision.allow
    assert decision.fields == {"town": "clear", "kwh": "aggregate"}
    assert decision.k == 3
    entry = _last_entry(uow)
    assert (entry["action"], entry["decision"]["allowed"]) == ("policy.explain", True)
    assert entry["disclosure"] is None
    assert uow.committed.released == []
    assert uow.committed.answers == {}
    assert uow.committed.forms == []
    # town A (6 firms) would be published, town B (2 firms) withheld, as the query would run
    assert explanation.predicted == Prediction(1, {"min-entities": 1})


def test_explain_reports_a_denial_without_raising_and_records_it(
    county: County, contract_id: str, query_service: QueryService,
    uow: FakeUnitOfWorkFactory
) -> None:
    explanation = query_service.explain(county.econ.ctx(),
                                        _by_town(contract_id, purpose="tax-analysis"))
    decision = explanation.decision
    assert explanation.predicted is None
    assert not decision.allow
    assert "purpose-not-in-contract" in decision.reasons
    entry = _last_entry(uow)
    assert (entry["action"], entry["decision"]["allowed"]) == ("policy.explain", False)
