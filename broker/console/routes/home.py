"""Logging in and out, and each role's home page."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, Form, Request
from starlette.responses import RedirectResponse, Response

from broker.console.deps import OrgsDep
from broker.console.i18n import _
from broker.console.session import (
    Session,
    auth_of,
    clear_session,
    logged_in,
    write_session,
)
from broker.console.web import (
    ConsoleRoute,
    PageDep,
    UserDep,
    check_csrf,
    redirect,
    render,
)
from broker.domain.errors import Forbidden, InvalidInput
from broker.domain.organisations import OrgKind
from broker.domain.principals import ROLE_KINDS, Principal, RequestContext, Role
from broker.services.orgs import OrgService

router = APIRouter(route_class=ConsoleRoute, include_in_schema=False)



def safe_next(value: str | None) -> str:
    """Where to go after logging in: a console path of this site, never another site."""
    if not value:
        return "/console/"
    parts = urlsplit(value)
    if parts.scheme or parts.netloc or not value.startswith("/console") or "\\" in value:
        return "/console/"
    return value


def _directory(request: Request, orgs: OrgService) -> list[tuple[str, str, list[str]]]:
    """The organisations the dev login offers, each with the roles that fit it."""
    auth = auth_of(request)
    operator = auth.operator_org if auth is not None else "broker-ops"
    ctx = RequestContext(
        principal=Principal(iss="broker-console", sub="console-dev-login", org=operator,
                            roles=frozenset({Role.ADMIN})),
        request_id=getattr(request.state, "request_id", "-"))
    found = [(operator, _("Broker operator"), [Role.ADMIN.value])]
    for org in orgs.list(ctx):
        roles = [r.value for r in (Role.PROVIDER, Role.CONSUMER, Role.AUDITOR)
                 if org.kind in ROLE_KINDS[r]]
        found.append((org.id, org.name, roles))
    return found


@router.get("/login")
def login_form(page: PageDep, request: Request, orgs: OrgsDep, next: str | None = None
               ) -> Response:
    """The login page: the OIDC provider's button, or in embedded mode the dev login."""
    auth = auth_of(request)
    session = page.session or Session.fresh()
    dev = auth is not None and auth.dev_login_for(request) is not None
    directory = _directory(request, orgs) if dev else []
    response = render(page, "login.html", directory=directory, next=safe_next(next),
                      oidc=auth is not None and auth.oidc is not None, dev=dev,
                      issuer=bool(request.app.state.container.settings.oidc_issuer),
                      csrf=session.csrf, roles=_role_labels())
    if page.session is None:
        write_session(response, request, session)
    return response


def _role_labels() -> dict[str, str]:
    return {"provider": _("Data provider"), "consumer": _("Department (consumer)"),
            "auditor": _("Auditor"), "admin": _("Operator (admin)")}


@router.post("/login", dependencies=[Depends(check_csrf)])
def dev_login(page: PageDep, request: Request, orgs: OrgsDep,
              org: Annotated[str, Form(max_length=63)],
              role: Annotated[str, Form(max_length=20)],
              next: Annotated[str | None, Form(max_length=2000)] = None) -> Response:
    """The dev login: a token for the organisation and role picked (embedded mode only)."""
    auth = auth_of(request)
    mint = auth.dev_login_for(request) if auth is not None else None
    if mint is None or page.session is None:
        raise Forbidden("The dev login is off here: log in through the identity provider.")
    offered = {o: roles for o, _name, roles in _directory(request, orgs)}
    if org not in offered or role not in offered[org]:
        raise InvalidInput("That organisation does not hold that role.")
    token = mint(org, Role(role))
    response = RedirectResponse(safe_next(next), status_code=303)
    write_session(response, request, logged_in(token))
    return response


@router.post("/logout", dependencies=[Depends(check_csrf)])
def logout(page: PageDep, request: Request) -> Response:
    """Forget the session; after an OIDC login, a page offers to end the provider's session
    too (a link: the CSP lets forms lead only to the console)."""
    auth = auth_of(request)
    by_oidc = (auth is not None and auth.oidc is not None and page.session is not None
               and page.session.token is not None)
    response = redirect(page, "/oidc/signed-out" if by_oidc else "/login")
    clear_session(response, request)
    return response


@router.get("/")
def home(page: UserDep) -> Response:
    """The home page: what the principal's roles open."""
    principal = page.principal
    assert principal is not None  # noqa: S101 - UserDep guarantees it
    return render(page, "home.html", roles=sorted(r.value for r in principal.roles),
                  role_labels=_role_labels())


def kinds() -> dict[str, str]:
    """Organisation kinds, translated."""
    return {OrgKind.ENTERPRISE.value: _("Enterprise"), OrgKind.DEPARTMENT.value: _("Department"),
            OrgKind.AUDITOR.value: _("Auditor")}
