"""Usage contracts: offer, accept, revoke, read."""

from __future__ import annotations

from uuid import UUID

from fastapi import APIRouter

from broker.api.deps import ContextDep, ContractServiceDep
from broker.api.routes.common import AUTHENTICATED, problems
from broker.api.schemas import ContractIn, ContractOut, dominance_of
from broker.services.contracts import ContractOffer

router = APIRouter(prefix="/v1/contracts", tags=["contracts"], responses=AUTHENTICATED)


@router.post("", status_code=201, responses=problems(404))
def offer_contract(body: ContractIn, ctx: ContextDep, contracts: ContractServiceDep) -> ContractOut:
    """Offer usage terms over one of your datasets to a consumer organisation (provider)."""
    contract = contracts.offer(
        ctx,
        ContractOffer(
            dataset_id=body.dataset_id,
            consumer_org=body.consumer_org,
            purposes=tuple(body.purposes),
            fields=body.fields,
            k_min=body.k_min,
            dominance=dominance_of(body.dominance),
            valid_from=body.valid_from,
            valid_until=body.valid_until,
            max_queries_per_day=body.max_queries_per_day,
        ),
    )
    return ContractOut.from_domain(contract)


@router.post("/{contract_id}/accept", responses=problems(404, 409))
def accept_contract(
    contract_id: UUID, ctx: ContextDep, contracts: ContractServiceDep
) -> ContractOut:
    """Accept an offer made to your organisation (consumer); it becomes active."""
    return ContractOut.from_domain(contracts.accept(ctx, str(contract_id)))


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
