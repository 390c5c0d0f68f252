"""Logging in through the OIDC provider (authorization code with PKCE): start and callback.

The routes are plain ``def`` routes: discovery, the key set and the code exchange are blocking
HTTP calls to the provider, made in the threadpool, off the event loop, with timeouts.
"""

from __future__ import annotations

from dataclasses import replace

from fastapi import APIRouter, Request
from starlette.responses import RedirectResponse, Response

from broker.console.oidc import OidcLogin
from broker.console.routes.home import safe_next
from broker.console.session import Session, auth_of, logged_in, write_session
from broker.console.web import ConsoleRoute, PageDep, handle_error, render
from broker.domain.errors import BrokerError, NotFound, Unauthenticated
from broker.domain.principals import RequestContext

router = APIRouter(route_class=ConsoleRoute, include_in_schema=False)

#: The most an authorization response's parameter may weigh (codes and states are short).
MAX_PARAM = 2048


def _oidc(request: Request) -> OidcLogin:
    auth = auth_of(request)
    if auth is None or not isinstance(auth.oidc, OidcLogin):
        raise NotFound("Login through the identity provider is not configured.")
    return auth.oidc


@router.get("/oidc/start")
def start(page: PageDep, request: Request, next: str | None = None) -> Response:
    """Send the browser to the identity provider, keeping the login's state, nonce and PKCE
    verifier in the session."""
    oidc = _oidc(request)
    url, login = oidc.start(redirect_uri=oidc.redirect_uri(str(request.base_url)),
                            next_url=safe_next(next))
    response = RedirectResponse(url, status_code=303)
    # A login under way leaves the current session as it is (a link from another site that
    # starts one must not log anyone out); the callback replaces it only on success.
    write_session(response, request, replace(page.session or Session.fresh(), login=login))
    return response


@router.get("/oidc/callback")
def callback(page: PageDep, request: Request) -> Response:
    """Finish the login: the code for tokens, the ID token checked, the access token verified
    by the broker's own verifier and admitted; then the session holds it. Any failure is an
    error page and leaves no session (the login under way is used up either way)."""
    oidc = _oidc(request)
    session = page.session
    if session is None or session.login is None:
        raise Unauthenticated("No login is under way in this browser: start again from the "
                              "login page.")
    login = session.login
    used_up = replace(session, token=None, login=None)
    container = request.app.state.container
    try:
        params = {k: v for k, v in request.query_params.items() if len(v) <= MAX_PARAM}
        token = oidc.finish(login, params=params,
                            redirect_uri=oidc.redirect_uri(str(request.base_url)))
        principal = container.tokens.verify(token)
        container.orgs.admit(RequestContext(
            principal=principal, request_id=getattr(request.state, "request_id", "-")))
        response: Response = RedirectResponse(safe_next(login.next), status_code=303)
        write_session(response, request, logged_in(token))
    except BrokerError as exc:
        response = handle_error(request, exc)
        write_session(response, request, used_up)
    except ValueError:  # the access token does not fit in the cookie
        response = handle_error(request, Unauthenticated(
            "The identity provider's access token is too large for a console session."))
        write_session(response, request, used_up)
    return response


@router.get("/oidc/signed-out")
def signed_out(page: PageDep, request: Request) -> Response:
    """After logging out of the console: a link to end the session at the provider too, when
    it has an end-session endpoint (RP-Initiated Logout 1.0)."""
    oidc = _oidc(request)
    end_session = oidc.logout_url(oidc.console_url(str(request.base_url)) + "/login")
    return render(page, "oidc/signed_out.html", end_session=end_session)
