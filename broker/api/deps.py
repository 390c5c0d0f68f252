"""Request dependencies as ``Annotated`` aliases; the container itself is made in ``app.py``.

Each alias reads one collaborator from the container the app's lifespan hung on
``app.state``, so routes declare what they need and tests override it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, TypeVar

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from broker.domain.errors import Unauthenticated
from broker.domain.principals import Principal, RequestContext
from broker.services.audit import AuditService
from broker.services.contracts import ContractService
from broker.services.datasets import DatasetService
from broker.services.indicators import IndicatorService
from broker.services.orgs import OrgService
from broker.services.queries import QueryService
from broker.services.uploads import UploadRules
from broker.settings import Settings

T = TypeVar("T")


def _from_container(name: str, kind: type[T]) -> Callable[[Request], T]:
    """A dependency that reads one collaborator off the app's container, checked to be of
    ``kind`` (a misnamed attribute fails at once, not somewhere downstream)."""

    def get(request: Request) -> T:
        found = getattr(request.app.state.container, name)
        if not isinstance(found, kind):
            raise TypeError(f"container.{name} is not a {kind.__name__}")
        return found

    get.__name__ = f"get_{name}"
    return get


async def _readiness(request: Request) -> Callable[[], str]:
    ready: Callable[[], str] = request.app.state.container.ready
    return ready


SettingsDep = Annotated[Settings, Depends(_from_container("settings", Settings))]
#: Raises unless the database answers and the policy engine decides; returns the revision.
ReadinessDep = Annotated[Callable[[], str], Depends(_readiness)]

bearer = HTTPBearer(auto_error=False, description="JWT issued by the broker or the OIDC provider")


def get_principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Principal:
    """The authenticated caller; 401 problem when the token is missing or invalid. The
    token was verified by ``broker.api.limits.PrincipalMiddleware`` when it ran."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Unauthenticated("A bearer token is required.")
    principal = getattr(request.state, "principal", None)
    if not isinstance(principal, Principal):  # the middleware did not vouch for it: refuse
        raise Unauthenticated("The bearer token was not verified.")
    return principal


PrincipalDep = Annotated[Principal, Depends(get_principal)]


OrgServiceDep = Annotated[OrgService, Depends(_from_container("orgs", OrgService))]


def get_context(request: Request, principal: PrincipalDep, orgs: OrgServiceDep) -> RequestContext:
    """The caller and the server-assigned request id (kept on the request, so that a query
    whose body the schema refuses is still audited as the caller's), once its roles are
    known to fit its organisation (an audited 403 otherwise)."""
    ctx = RequestContext(principal=principal, request_id=request.state.request_id)
    orgs.admit(ctx)
    request.state.context = ctx
    return ctx


ContextDep = Annotated[RequestContext, Depends(get_context)]

IndicatorServiceDep = Annotated[IndicatorService,
                                Depends(_from_container("indicators", IndicatorService))]
DatasetServiceDep = Annotated[DatasetService, Depends(_from_container("datasets", DatasetService))]
ContractServiceDep = Annotated[ContractService,
                               Depends(_from_container("contracts", ContractService))]
QueryServiceDep = Annotated[QueryService, Depends(_from_container("queries", QueryService))]
AuditServiceDep = Annotated[AuditService, Depends(_from_container("audit", AuditService))]


def get_upload_rules(settings: SettingsDep, datasets: DatasetServiceDep) -> UploadRules:
    """What a dataset upload may be: the configured size limit and scratch directory, and the
    formats the dataset service reads."""
    return UploadRules(settings.uploads_dir, settings.max_upload_bytes, datasets.formats())


UploadRulesDep = Annotated[UploadRules, Depends(get_upload_rules)]
