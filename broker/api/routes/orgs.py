"""Organisations."""

from __future__ import annotations

from fastapi import APIRouter

from broker.api.deps import ContextDep, OrgServiceDep
from broker.api.routes.common import AUTHENTICATED, problems
from broker.api.schemas.orgs import OrgIn, OrgOut

router = APIRouter(prefix="/v1/orgs", tags=["organisations"], responses=AUTHENTICATED)


@router.post("", status_code=201, responses=problems(409))
def register_org(body: OrgIn, ctx: ContextDep, orgs: OrgServiceDep) -> OrgOut:
    """Register an organisation (admin)."""
    org = orgs.register(ctx, org_id=body.id, name=body.name, kind=body.kind, uscc=body.uscc,
                        public_key=body.public_key)
    return OrgOut.from_domain(org)


@router.get("")
def list_orgs(ctx: ContextDep, orgs: OrgServiceDep) -> list[OrgOut]:
    """The directory of registered organisations (operator and registered organisations)."""
    return [OrgOut.from_domain(o) for o in orgs.list(ctx)]
