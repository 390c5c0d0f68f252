"""Use case: reading, proving and verifying the audit log, as typed values, against in-memory
fakes; proofs are checked offline with the real ``audit`` package."""

from __future__ import annotations

from dataclasses import replace

import pytest

from audit.checkpoint import NoteVerifier
from audit.entry import encode, leaf_hash
from audit.proofs import check_document
from audit.verify import Fault
from broker.domain.errors import PolicyDenied
from broker.domain.ports import AuditQuery
from broker.domain.queries import AggregateSpec, Dimension, Measure, MeasureFn
from broker.services.audit import Access, AuditService
from broker.services.queries import QueryService
from broker.services.releases import result_digest
from tests.fakes import FakeUnitOfWorkFactory
from tests.unit.conftest import County

REGISTRATIONS = AuditQuery(action="org.register", limit=2)


def _count_by_town(contract_id: str) -> AggregateSpec:
    return AggregateSpec(contract_id=contract_id, purpose="energy-planning",
                         group_by=(Dimension("town"),), measures=(Measure(MeasureFn.COUNT),))


def test_entries_come_oldest_first_in_pages_that_end_with_no_cursor(
    county: County, audit_service: AuditService
) -> None:
    seen: list[list[int]] = []
    query = REGISTRATIONS
    while True:
        page = audit_service.entries(county.auditor.ctx(), query)
        seen.append([item.seq for item in page.items])
        if page.next_cursor is None:
            break
        query = replace(query, after_seq=page.next_cursor)
    assert seen == [[1, 2], [3, 4], [5]]
    item = audit_service.entries(county.auditor.ctx(), REGISTRATIONS).items[0]
    assert item.entry["action"] == "org.register"
    assert leaf_hash(encode(item.entry)) == item.leaf_hash


def test_every_read_of_the_log_is_itself_on_the_log(
    county: County, audit_service: AuditService, uow: FakeUnitOfWorkFactory
) -> None:
    audit_service.entries(county.auditor.ctx(), REGISTRATIONS)
    last = uow.audit_entries()[-1]
    assert (last["action"], last["actor"]["org"]) == ("audit.read", "audit-office")


def test_a_consumer_may_not_read_the_log_and_the_refusal_is_audited(
    county: County, audit_service: AuditService, uow: FakeUnitOfWorkFactory
) -> None:
    with pytest.raises(PolicyDenied):
        audit_service.entries(county.econ.ctx(), AuditQuery())
    last = uow.audit_entries()[-1]
    assert (last["action"], last["decision"]["allowed"]) == ("audit.read", False)


def test_a_provider_reads_every_access_to_its_data_and_nothing_else(
    county: County, audit_service: AuditService, query_service: QueryService
) -> None:
    dataset_id = county.energy().dataset.id
    contract_id = county.active_contract(dataset_id).contract.id
    release = query_service.aggregate(county.econ.ctx(), _count_by_town(contract_id))
    with pytest.raises(PolicyDenied):
        query_service.aggregate(county.env.ctx(), _count_by_town(contract_id))
    page = audit_service.accesses(county.grid.ctx(), AuditQuery(action="query.aggregate"))
    assert page.next_cursor is None
    released, refused = page.items
    assert all(isinstance(a, Access) and a.dataset_id == dataset_id for a in page.items)
    assert release.receipt is not None
    assert (released.seq, released.leaf_hash) == (release.receipt.seq,
                                                  release.receipt.leaf_hash)
    assert (released.who.org, released.allowed, released.reasons) == ("econ", True, ())
    assert (released.purpose, released.contract_id, released.fields) == (
        "energy-planning", contract_id, ("town",))
    assert released.disclosure == {
        "k": 3, "cells_published": release.cells_published,
        "cells_suppressed": release.cells_suppressed,
        "result_digest": result_digest(release.result_nonce or "", release.cells)}
    assert (refused.who.org, refused.allowed) == ("env", False)
    assert "no-active-contract" in refused.reasons
    assert audit_service.accesses(county.water.ctx(), AuditQuery()).items == ()


def test_a_receipts_inclusion_proof_holds_offline_under_the_published_key(
    county: County, audit_service: AuditService, query_service: QueryService
) -> None:
    dataset_id = county.energy().dataset.id
    contract_id = county.active_contract(dataset_id).contract.id
    receipt = query_service.aggregate(county.econ.ctx(), _count_by_town(contract_id)).receipt
    assert receipt is not None
    proof = audit_service.proof(county.econ.ctx(), receipt.seq, None)
    assert (proof.seq, proof.leaf_index, proof.leaf_hash) == (receipt.seq, receipt.seq - 1,
                                                              receipt.leaf_hash)
    assert proof.tree_size >= receipt.seq
    key = audit_service.key()
    verifier = NoteVerifier.from_vkey(key.vkey)
    assert (key.origin, key.algorithm) == (verifier.name, "Ed25519")
    checked = check_document(proof.as_json(), verifier, receipt={
        "seq": receipt.seq, "leaf_hash": receipt.leaf_hash})
    assert checked.checkpoint.size == proof.tree_size


def test_a_consistency_proof_shows_the_log_was_only_extended(
    county: County, audit_service: AuditService
) -> None:
    first = audit_service.checkpointer.checkpoint()
    assert first is not None
    county.energy()
    latest = audit_service.checkpointer.checkpoint()
    assert latest is not None
    assert latest.size > first.size
    proof = audit_service.consistency(county.auditor.ctx(), first.size, None)
    assert (proof.old_size, proof.old_root, proof.new_size, proof.new_root) == (
        first.size, first.root, latest.size, latest.root)
    verifier = audit_service.verifier
    check_document(proof.as_json(), verifier, trusted=verifier.checkpoint(first.note))


def test_checkpoints_come_newest_first_with_a_cursor_to_older_ones(
    county: County, audit_service: AuditService
) -> None:
    sizes: list[int] = []
    for _ in range(3):
        county.energy(name=f"energy-{len(sizes)}")
        stored = audit_service.checkpointer.checkpoint()
        assert stored is not None
        sizes.append(stored.size)
    page = audit_service.checkpoints(county.auditor.ctx(), before=None, limit=2)
    assert [c.size for c in page.items] == sizes[:0:-1]
    assert page.next_cursor == sizes[1]
    older = audit_service.checkpoints(county.auditor.ctx(), before=page.next_cursor, limit=2)
    assert ([c.size for c in older.items], older.next_cursor) == ([sizes[0]], None)


def test_verification_accepts_the_log_and_names_an_entry_changed_in_the_store(
    county: County, audit_service: AuditService, uow: FakeUnitOfWorkFactory
) -> None:
    audit_service.checkpointer.checkpoint()
    result = audit_service.verify(county.auditor.ctx())
    assert result.valid
    assert (result.size, result.checkpoints) == (5, 1)
    entries = uow.committed.entries
    changed = entries[2].body.replace(b'"ts":"2026-', b'"ts":"2025-')
    assert changed != entries[2].body
    entries[2] = replace(entries[2], body=changed)
    result = audit_service.verify(county.auditor.ctx())
    assert not result.valid
    assert (result.fault, result.first_bad_seq) == (Fault.BAD_ENTRY, 3)
