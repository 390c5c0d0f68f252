"""Request dependencies as ``Annotated`` aliases; the container itself is made in ``app.py``.

Each alias reads one collaborator from the container the app's lifespan hung on
``app.state``, so routes declare what they need and tests override it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from broker.api.auth import TokenVerifier
from broker.domain.errors import Unauthenticated
from broker.domain.principals import Principal, RequestContext
from broker.services.audit import AuditService
from broker.services.contracts import ContractService
from broker.services.datasets import DatasetService
from broker.services.orgs import OrgService
from broker.services.queries import QueryService
from broker.settings import Settings


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.container.settings
    return settings


def _tokens(request: Request) -> TokenVerifier:
    tokens: TokenVerifier = request.app.state.container.tokens
    return tokens


def _readiness(request: Request) -> Callable[[], str]:
    ready: Callable[[], str] = request.app.state.container.ready
    return ready


SettingsDep = Annotated[Settings, Depends(_settings)]
TokensDep = Annotated[TokenVerifier, Depends(_tokens)]
#: Raises unless the database answers and the policy engine decides; returns the revision.
ReadinessDep = Annotated[Callable[[], str], Depends(_readiness)]

bearer = HTTPBearer(auto_error=False, description="JWT issued by the broker or the OIDC provider")


def get_principal(
    tokens: TokensDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Principal:
    """The authenticated caller; 401 problem when the token is missing or invalid."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Unauthenticated("A bearer token is required.")
    return tokens.verify(credentials.credentials)


PrincipalDep = Annotated[Principal, Depends(get_principal)]


def get_context(request: Request, principal: PrincipalDep) -> RequestContext:
    """The caller and the server-assigned request id."""
    return RequestContext(principal=principal, request_id=request.state.request_id)


ContextDep = Annotated[RequestContext, Depends(get_context)]


def _orgs(request: Request) -> OrgService:
    service: OrgService = request.app.state.container.orgs
    return service


def _datasets(request: Request) -> DatasetService:
    service: DatasetService = request.app.state.container.datasets
    return service


def _contracts(request: Request) -> ContractService:
    service: ContractService = request.app.state.container.contracts
    return service


def _queries(request: Request) -> QueryService:
    service: QueryService = request.app.state.container.queries
    return service


def _audit(request: Request) -> AuditService:
    service: AuditService = request.app.state.container.audit
    return service


OrgServiceDep = Annotated[OrgService, Depends(_orgs)]
DatasetServiceDep = Annotated[DatasetService, Depends(_datasets)]
ContractServiceDep = Annotated[ContractService, Depends(_contracts)]
QueryServiceDep = Annotated[QueryService, Depends(_queries)]
AuditServiceDep = Annotated[AuditService, Depends(_audit)]
