"""Response models map the services' typed values without changing a byte of what parties
sign or check offline."""

from __future__ import annotations

from broker.api.schemas.audit import InclusionProofOut, VerifyOut
from broker.api.schemas.contracts import ContractTermsOut
from broker.services.audit import AuditService
from broker.services.contracts import ContractService
from tests.fakes import FakeUnitOfWorkFactory
from tests.unit.conftest import County


def test_the_terms_response_is_the_signed_document_field_for_field(
    county: County, contract_service: ContractService
) -> None:
    offered = county.offer(county.energy().dataset.id).contract
    terms = contract_service.terms(county.econ.ctx(), offered.id)
    out = ContractTermsOut.from_domain(terms)
    assert out.model_dump(mode="json") == terms.model_dump(mode="json")
    assert out.canonical() == terms.canonical()


def test_the_proof_response_is_the_document_the_cli_prints(
    county: County, audit_service: AuditService
) -> None:
    proof = audit_service.proof(county.auditor.ctx(), 2, None)
    assert InclusionProofOut.from_domain(proof).model_dump(mode="json") == proof.as_json()


def test_a_failed_verification_names_its_fault_in_the_response(
    county: County, audit_service: AuditService, uow: FakeUnitOfWorkFactory
) -> None:
    assert VerifyOut.from_domain(audit_service.verify(county.auditor.ctx())).kind is None
    del uow.committed.entries[1]
    out = VerifyOut.from_domain(audit_service.verify(county.auditor.ctx()))
    assert (out.valid, out.kind, out.first_bad_seq) == (False, "gap", 2)
