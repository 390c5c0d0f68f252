"""Usage contracts: offer, sign, accept, suspend, resume, revoke, read, export."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Body, Request
from fastapi.responses import JSONResponse

from broker.api.deps import ContextDep, ContractServiceDep, SettingsDep
from broker.api.routes.common import AUTHENTICATED, problems
from broker.api.schemas.contracts import (
    AcceptIn,
    ContractOut,
    ContractTermsOut,
    SignatureIn,
)
from broker.services.provider_inputs import ContractIn
from contracts.odrl import to_odrl

router = APIRouter(prefix="/v1/contracts", tags=["contracts"], responses=AUTHENTICATED)


@router.post("", status_code=201, responses=problems(404))
def offer_contract(body: ContractIn, ctx: ContextDep, contracts: ContractServiceDep) -> ContractOut:
    """Offer usage terms over one of your datasets to a consumer organisation (provider)."""
    contract = contracts.offer(ctx, body.to_domain(), consumer_org=body.consumer_org)
    return ContractOut.from_domain(contract)


@router.get("/{contract_id}/terms", responses=problems(404))
def contract_terms(contract_id: UUID, ctx: ContextDep,
                   contracts: ContractServiceDep) -> ContractTermsOut:
    """The terms both parties sign: sign the RFC 8785 canonical bytes of this document with
    your organisation's Ed25519 key (``broker contracts sign``)."""
    return ContractTermsOut.from_domain(contracts.terms(ctx, str(contract_id)))


@router.post("/{contract_id}/sign", responses=problems(404, 409, 422))
def sign_contract(contract_id: UUID, body: SignatureIn, ctx: ContextDep,
                  contracts: ContractServiceDep) -> ContractOut:
    """Attach the provider's offer signature, made outside the broker (provider)."""
    return ContractOut.from_domain(contracts.sign(ctx, str(contract_id), body.signature))


@router.post("/{contract_id}/accept", responses=problems(404, 409, 422))
def accept_contract(
    contract_id: UUID, ctx: ContextDep, contracts: ContractServiceDep,
    body: Annotated[AcceptIn | None, Body()] = None,
) -> ContractOut:
    """Accept a signed offer made to your organisation (consumer), with your signature over
    the terms; it becomes active. Without a signature the broker signs only if it holds your
    organisation's key (embedded demo)."""
    signature = body.signature if body is not None else None
    return ContractOut.from_domain(contracts.accept(ctx, str(contract_id), signature))


@router.post("/{contract_id}/suspend", responses=problems(404, 409))
def suspend_contract(
    contract_id: UUID, ctx: ContextDep, contracts: ContractServiceDep
) -> ContractOut:
    """Pause an active contract over your data (provider); effective for the next request."""
    return ContractOut.from_domain(contracts.suspend(ctx, str(contract_id)))


@router.post("/{contract_id}/resume", responses=problems(404, 409))
def resume_contract(
    contract_id: UUID, ctx: ContextDep, contracts: ContractServiceDep
) -> ContractOut:
    """Lift a suspension (provider); the contract is active again."""
    return ContractOut.from_domain(contracts.resume(ctx, str(contract_id)))


@router.post("/{contract_id}/revoke", responses=problems(404, 409))
def revoke_contract(
    contract_id: UUID, ctx: ContextDep, contracts: ContractServiceDep
) -> ContractOut:
    """Revoke a contract over your data (provider); effective for the next request."""
    return ContractOut.from_domain(contracts.revoke(ctx, str(contract_id)))


@router.get("")
def list_contracts(ctx: ContextDep, contracts: ContractServiceDep) -> list[ContractOut]:
    """Contracts you are a party to (all, for auditors)."""
    return [ContractOut.from_domain(c) for c in contracts.list(ctx)]


@router.get("/{contract_id}", responses=problems(404))
def get_contract(contract_id: UUID, ctx: ContextDep, contracts: ContractServiceDep) -> ContractOut:
    """One contract, for its parties and auditors."""
    return ContractOut.from_domain(contracts.get(ctx, str(contract_id)))


@router.get("/{contract_id}/odrl", responses={
    **problems(404),
    200: {"content": {"application/ld+json": {}},
          "description": "The terms as an ODRL 2.2 policy in JSON-LD"}})
def contract_odrl(contract_id: UUID, request: Request, ctx: ContextDep,
                  contracts: ContractServiceDep, settings: SettingsDep) -> JSONResponse:
    """The contract's terms as an ODRL 2.2 policy (JSON-LD): permission, constraints on
    purpose, time window and daily count, and the duty to log every use."""
    view, consented = contracts.with_slice(ctx, str(contract_id))
    base = settings.public_url or str(request.base_url)
    document = to_odrl(view.contract, base_iri=base,
                       slice_fields=consented.fields if consented is not None else None)
    return JSONResponse(document, media_type="application/ld+json")
