"""The in-memory fakes behave as the SQL store does where the use cases rely on it: commit
and rollback, one writer at a time, read-only snapshots, and a real hash-chained ledger."""

from __future__ import annotations

from datetime import timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from audit import merkle
from audit.checkpoint import NoteSigner
from audit.entry import AuditEvent, format_ts
from broker.domain.organisations import Organisation, OrgKind
from broker.services.audit import verify_store
from tests.fakes import FakeUnitOfWorkFactory, ManualClock, ReadOnlyWrite, WriterBusy
from tests.unit.conftest import START


def _org(org_id: str) -> Organisation:
    return Organisation(id=org_id, name=org_id.title(), kind=OrgKind.ENTERPRISE, uscc=None,
                        public_key=None, created_at=START)


def _event(n: int) -> AuditEvent:
    return AuditEvent(actor={"iss": "tests", "sub": f"user{n}@grid", "org": "grid",
                             "roles": ["provider"]},
                      action="dataset.read", request_id=f"req-{n}", allowed=True)


def test_nothing_a_unit_stages_is_kept_unless_it_commits(uow: FakeUnitOfWorkFactory) -> None:
    with uow() as unit:
        unit.orgs.add(_org("grid"))
        unit.audit.append(_event(1))
        assert unit.orgs.get("grid") is not None
    with uow() as unit:
        assert unit.orgs.get("grid") is None
        assert unit.audit.head().size == 0
        unit.orgs.add(_org("grid"))
        unit.commit()
    with uow(read_only=True) as unit:
        assert [o.id for o in unit.orgs.all()] == ["grid"]


def test_rollback_drops_what_was_staged_since_the_last_commit_only(
    uow: FakeUnitOfWorkFactory,
) -> None:
    with uow() as unit:
        unit.orgs.add(_org("grid"))
        unit.commit()
        unit.orgs.add(_org("water"))
        unit.audit.append(_event(1))
        unit.rollback()
        assert [o.id for o in unit.orgs.all()] == ["grid"]
        unit.audit.append(_event(2))
        unit.commit()
    assert [e["request_id"] for e in uow.audit_entries()] == ["req-2"]


def test_a_read_only_unit_reads_a_snapshot_and_refuses_writes(
    uow: FakeUnitOfWorkFactory,
) -> None:
    with uow(read_only=True) as reader:
        with uow() as writer:
            writer.orgs.add(_org("grid"))
            writer.commit()
        assert reader.orgs.get("grid") is None
        with pytest.raises(ReadOnlyWrite):
            reader.audit.append(_event(1))


def test_a_write_unit_opened_inside_another_is_refused_as_sqlite_would_block_it(
    uow: FakeUnitOfWorkFactory,
) -> None:
    with uow(), pytest.raises(WriterBusy):
        uow().__enter__()
    with uow() as unit:  # the first one's lock went with its block
        unit.commit()


def test_the_ledger_chains_real_entries_that_the_real_verifier_accepts(
    uow: FakeUnitOfWorkFactory, clock: ManualClock
) -> None:
    receipts = []
    for n in range(1, 6):
        with uow() as unit:
            receipts.append(unit.audit.append(_event(n)))
            unit.commit()
        clock.advance(timedelta(seconds=1))
    assert [r.seq for r in receipts] == [1, 2, 3, 4, 5]
    entries = uow.audit_entries()
    assert [e["prev_hash"] for e in entries[1:]] == [r.leaf_hash for r in receipts[:-1]]
    signer = NoteSigner("broker.test/audit", Ed25519PrivateKey.generate())
    with uow(read_only=True) as unit:
        result = verify_store(unit, signer.verifier, [])
        tree = unit.audit.frontier()
    assert result.valid
    assert result.size == 5
    assert tree.root() == merkle.root(bytes.fromhex(r.leaf_hash) for r in receipts)
    assert result.root == tree.root().hex()


def test_count_released_counts_allowed_entries_of_a_contract_since_a_time(
    uow: FakeUnitOfWorkFactory, clock: ManualClock
) -> None:
    released = AuditEvent(actor={"org": "econ"}, action="query.aggregate", request_id="r",
                          allowed=True, contract_id="c-1")
    with uow() as unit:
        unit.audit.append(released)
        clock.advance(timedelta(days=1))
        since = clock()
        unit.audit.append(released)
        unit.audit.append(AuditEvent(actor={"org": "econ"}, action="query.aggregate",
                                     request_id="r", allowed=False, contract_id="c-1"))
        unit.audit.append(AuditEvent(actor={"org": "econ"}, action="query.aggregate",
                                     request_id="r", allowed=True, contract_id="c-2"))
        unit.commit()
    with uow(read_only=True) as unit:
        assert unit.audit.count_released("c-1", ("query.aggregate",), format_ts(since)) == 1
        assert unit.audit.count_released("c-1", ("query.aggregate",), "0") == 2
