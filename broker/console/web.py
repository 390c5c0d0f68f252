"""What every console page shares: the templates, the page context (who is looking, in which
language, with which CSRF token), the security headers, and errors as pages.

A console route is a FastAPI route of class :class:`ConsoleRoute`: a domain error it raises
(the use cases' audited 404 for another organisation's object, a 403, a 422) is answered as an
HTML page with the same status the API would give, never as a problem document and never with
the error's data. Every console response carries the Content-Security-Policy (scripts only
from the console's own static files, no inline script or style), and pages are not cached.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar
from urllib.parse import quote, urlencode, urlsplit

from fastapi import Depends, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import HTMLResponse, RedirectResponse, Response

from broker.console import i18n
from broker.console.i18n import _
from broker.console.session import PATH as LANG_COOKIE_PATH
from broker.console.session import Session, csrf_matches, read_session
from broker.domain.errors import BrokerError, Unauthenticated
from broker.domain.principals import Principal, RequestContext, Role
from broker.observability.logs import frames

log = logging.getLogger("broker.console")

TEMPLATES = Path(__file__).parent / "templates"
STATIC = Path(__file__).parent / "static"

#: Scripts, styles, images and fonts only from the console itself; no inline script or style,
#: no framing, forms only to the console.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "font-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; "
       "base-uri 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

T = TypeVar("T")


def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(default=True, default_for_string=True),
        extensions=["jinja2.ext.i18n"],
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.install_gettext_callables(  # type: ignore[attr-defined]
        lambda message: i18n.translations(i18n.current()).gettext(message),
        lambda s, p, n: i18n.translations(i18n.current()).ngettext(s, p, n),
        newstyle=True,
    )
    env.filters["number"] = i18n.number
    env.filters["when"] = i18n.when
    return env


ENV = _environment()


@dataclass(frozen=True, slots=True)
class Page:
    """Who is looking at a page, in which language, and the CSRF token its forms carry."""

    request: Request
    language: str
    session: Session | None
    principal: Principal | None
    remember_language: bool

    @property
    def csrf(self) -> str:
        return self.session.csrf if self.session is not None else ""

    @property
    def context(self) -> RequestContext:
        """The use cases' context for the logged-in principal (raises if there is none)."""
        if self.principal is None:
            raise Unauthenticated("Log in first.")
        ctx = getattr(self.request.state, "context", None)
        if isinstance(ctx, RequestContext) and ctx.principal == self.principal:
            return ctx
        ctx = RequestContext(principal=self.principal,
                             request_id=getattr(self.request.state, "request_id", "-"))
        self.request.state.context = ctx
        return ctx

    def has(self, role: Role) -> bool:
        return self.principal is not None and self.principal.has_role(role)

    def in_language(self, language: str) -> str:
        """This page's URL in ``language``: the same path and query (a filtered log stays
        filtered), with ``lang`` replaced; never the OIDC callback's code and state, and on an
        error page nothing of the refused request."""
        keep = not (self.request.url.path.startswith("/console/oidc/")
                    or getattr(self.request.state, "error_page", False))
        params = [(k, v) for k, v in self.request.query_params.multi_items()
                  if k != "lang" and keep]
        return "?" + urlencode([*params, ("lang", language)])

    def url(self, path: str, **params: object) -> str:
        """A console URL in this page's language (the language rides on the cookie, so only
        an explicit switch adds ``lang``)."""
        query = "&".join(f"{quote(k)}={quote(str(v))}" for k, v in params.items()
                         if v is not None and v != "")
        return f"/console{path}" + (f"?{query}" if query else "")


def _principal(request: Request) -> Principal | None:
    found = getattr(request.state, "principal", None)
    return found if isinstance(found, Principal) else None


def get_page(request: Request) -> Page:
    """The page context of a request: the session, the principal the middleware verified from
    it (None when nobody is logged in), and the language."""
    language, named = i18n.choose(request)
    i18n.activate(language)
    return Page(request=request, language=language, session=read_session(request),
                principal=_principal(request), remember_language=named)


def get_user(request: Request) -> Page:
    """The page context of someone logged in; anyone else is sent to the login page."""
    page = get_page(request)
    down = getattr(request.state, "session_error", None)
    if page.principal is None and isinstance(down, BrokerError):
        raise down  # the identity provider cannot be reached: a 503 page, not a login page
    if page.principal is None or page.session is None:
        raise LoginRequired(request.url.path + (f"?{request.url.query}" if request.url.query
                                                else ""))
    page.context  # noqa: B018 - the request's context, made once
    container = request.app.state.container
    container.orgs.admit(page.context)  # the roles fit the organisation, or an audited 403
    return page


def require(*roles: Role) -> Callable[[Request], Page]:
    """A dependency: someone logged in holding one of ``roles`` (a 403 page otherwise)."""

    def dependency(request: Request) -> Page:
        page = get_user(request)
        if not any(page.has(role) for role in roles):
            # On the record, as the API's refusals are: a page its role never opens is often
            # an attempt on another organisation's object by URL.
            request.app.state.container.audit.record_refusal(
                page.context, "console.open", ("role-not-allowed-for-page",))
            raise RoleMissing(roles)
        return page

    return dependency


async def check_csrf(request: Request) -> None:
    """Every unsafe console request carries the session's CSRF token, in the form's ``csrf``
    field or the ``X-CSRF-Token`` header (HTMX), and comes from the console's own origin when
    the browser says where it comes from."""
    if request.method in ("GET", "HEAD", "OPTIONS"):
        return
    origin = request.headers.get("origin")
    if origin is not None and not same_origin(request, origin):
        raise CsrfFailed()
    offered = request.headers.get("x-csrf-token")
    if offered is None:
        ctype = request.headers.get("content-type", "")
        # A multipart body is an upload, streamed to its scratch file by the route under the
        # size limit (broker.services.uploads): it is never read here, so its token must come
        # in the header (HTMX sends it); without one it is refused before a byte is read.
        if ctype.startswith("application/x-www-form-urlencoded"):
            form = await request.form()
            value = form.get("csrf")
            offered = value if isinstance(value, str) else None
    if not csrf_matches(read_session(request), offered):
        raise CsrfFailed()


def same_origin(request: Request, origin: str) -> bool:
    """Whether a browser's ``Origin`` is this console: the host and port it was reached at
    (the scheme may differ behind a proxy that ends TLS), or the configured console URL
    (``BROKER_CONSOLE_URL``, else ``BROKER_PUBLIC_URL``: the base the OIDC login sends the
    browser back to)."""
    parts = urlsplit(origin)
    if parts.netloc and parts.netloc.lower() == request.url.netloc.lower():
        return True
    settings = getattr(request.app.state.container, "settings", None)
    public = (getattr(settings, "console_url", None)
              or getattr(settings, "public_url", None))
    if public:
        mine = urlsplit(public)
        return (parts.scheme, parts.netloc.lower()) == (mine.scheme, mine.netloc.lower())
    return False


PageDep = Annotated[Page, Depends(get_page)]
UserDep = Annotated[Page, Depends(get_user)]
ProviderPage = Annotated[Page, Depends(require(Role.PROVIDER))]
ConsumerPage = Annotated[Page, Depends(require(Role.CONSUMER))]
AuditorPage = Annotated[Page, Depends(require(Role.AUDITOR))]
AdminPage = Annotated[Page, Depends(require(Role.ADMIN))]
#: Providers see their own datasets' accesses; auditors see everything.
TrailPage = Annotated[Page, Depends(require(Role.AUDITOR, Role.PROVIDER))]


def service(name: str, kind: type[T]) -> Callable[[Request], T]:
    """A dependency reading one use case off the app's container (checked to be ``kind``)."""

    def get(request: Request) -> T:
        found = getattr(request.app.state.container, name)
        if not isinstance(found, kind):
            raise TypeError(f"container.{name} is not a {kind.__name__}")
        return found

    get.__name__ = f"console_{name}"
    return get


class LoginRequired(Exception):
    """Nobody is logged in: go to the login page, then come back to ``next``."""

    def __init__(self, next_url: str) -> None:
        super().__init__(next_url)
        self.next_url = next_url


class RoleMissing(Exception):
    """The principal holds none of the roles a page needs."""


class CsrfFailed(Exception):
    """An unsafe request without the session's CSRF token (or from another origin)."""


def nav(page: Page) -> list[tuple[str, str]]:
    """The sections the principal's roles open, as (path, label)."""
    items: list[tuple[str, str]] = [("/", _("Home"))]
    if page.has(Role.PROVIDER):
        items += [("/datasets", _("My datasets")), ("/contracts", _("Contracts")),
                  ("/uses", _("Uses of my data"))]
    if page.has(Role.CONSUMER):
        items += [("/contracts/in-force", _("Contracts in force")),
                  ("/query", _("Query builder"))]
    if page.has(Role.AUDITOR):
        items += [("/audit", _("Audit log")), ("/audit/verify", _("Verify")),
                  ("/audit/checkpoints", _("Checkpoints")), ("/audit/charts", _("Denials"))]
    if page.has(Role.ADMIN):
        items += [("/operator", _("Organisations")), ("/operator/health", _("Health"))]
    unique: dict[str, str] = {}
    for path, label in items:
        unique.setdefault(path, label)
    return list(unique.items())


def render(page: Page, template: str, *, status: int = 200,
           headers: Mapping[str, str] | None = None, **values: Any) -> HTMLResponse:
    """``template`` rendered for ``page``, as it is: a route that answers HTMX with a fragment
    names the fragment's template itself (as ``verify_now`` does). A refusal (a status of 400
    or more) links its language switch to the bare page, never to the refused request."""
    i18n.activate(page.language)
    if status >= 400:
        page.request.state.error_page = True
    body = ENV.get_template(template).render(
        page=page, _=_, nav=nav(page) if page.principal else [], lang=page.language,
        html_lang=page.language, path=page.request.url.path, **values)
    response = HTMLResponse(body, status_code=status, headers=dict(headers or {}))
    if page.remember_language:
        response.set_cookie(i18n.LANG_COOKIE, page.language, max_age=365 * 86_400,
                            path=LANG_COOKIE_PATH, httponly=True, samesite="lax")
    return response


def redirect(page: Page, path: str) -> RedirectResponse:
    """A redirect (303: the next request is a GET) to a console path."""
    response = RedirectResponse(f"/console{path}", status_code=303)
    if page.remember_language:
        response.set_cookie(i18n.LANG_COOKIE, page.language, max_age=365 * 86_400,
                            path=LANG_COOKIE_PATH, httponly=True, samesite="lax")
    return response


def error_page(request: Request, status: int, title: str, detail: str,
               reasons: list[str] | None = None, *, detail_lang: str | None = None
               ) -> HTMLResponse:
    """An error as a page, with the status the API would answer. To an HTMX request, the
    page's ``<main>`` replaces the one of the page the request came from (wherever the
    request meant to put its answer), so the user reads why."""
    page = get_page(request)
    headers = ({"HX-Retarget": "#main", "HX-Reselect": "#main", "HX-Reswap": "outerHTML"}
               if request.headers.get("hx-request") else None)
    return render(page, "error.html", status=status, headers=headers, title=title,
                  detail=detail, reasons=reasons or [],
                  detail_lang=detail_lang if detail_lang != page.language else None,
                  request_id=getattr(request.state, "request_id", None))


def _titles() -> dict[int, str]:
    return {400: _("Bad request"), 401: _("Please log in"), 403: _("Not allowed"),
            404: _("Not found"), 405: _("Not allowed"), 409: _("Conflict"),
            413: _("Too large"), 422: _("Please check the input"),
            429: _("Too many requests"), 503: _("Temporarily unavailable"),
            500: _("Something went wrong")}


def handle_error(request: Request, exc: Exception) -> Response:
    """The response to an exception a console route raised."""
    get_page(request)  # the language of the error page
    titles = _titles()
    if isinstance(exc, LoginRequired):
        target = "/console/login?next=" + quote(exc.next_url, safe="")
        if request.headers.get("hx-request"):
            return Response(status_code=401, headers={"HX-Redirect": target})
        return RedirectResponse(target, status_code=303)
    if isinstance(exc, RoleMissing):
        return error_page(request, 403, titles[403], _(
            "Your role does not open this page. Log in with another role."))
    if isinstance(exc, CsrfFailed):
        return error_page(request, 403, titles[403], _(
            "The form had expired or did not come from this console. Reload the page and "
            "try again."))
    if isinstance(exc, BrokerError):
        status = exc.status
        reasons = [str(r) for r in exc.extensions.get("reasons", ())]
        return error_page(request, status, titles.get(status, titles[500]),
                          exc.detail, reasons, detail_lang=DOMAIN_LANGUAGE)
    if isinstance(exc, RequestValidationError):
        return error_page(request, 422, titles[422], _(
            "A field of the form is missing or not valid."))
    if isinstance(exc, StarletteHTTPException):
        return error_page(request, exc.status_code, titles.get(exc.status_code, titles[500]),
                          "")
    raise exc


#: The language of the domain's error details (marked as such on a page in another language,
#: so that a screen reader reads them as English).
DOMAIN_LANGUAGE = "en"


class ConsoleRoute(APIRoute):
    """A console route: errors as pages, and the security headers on every response."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            # The language, set here in the request's own context: the dependencies and the
            # endpoint run in worker threads on copies of it, so what one of them activates
            # is not seen by the next (a label made in a route would stay Chinese).
            i18n.activate(i18n.choose(request)[0])
            try:
                response = await handler(request)
            except (BrokerError, LoginRequired, RoleMissing, CsrfFailed,
                    RequestValidationError, StarletteHTTPException) as exc:
                response = handle_error(request, exc)
            except Exception as exc:
                # A bug or a broken dependency: a page, like every other console answer (not
                # the API's problem document, without the CSP); logged as the API's
                # UnexpectedErrorMiddleware logs it, by type and frames, never the message,
                # which may quote data.
                request_id = getattr(request.state, "request_id", "-")
                log.error("unhandled %s in console request %s\n%s", type(exc).__name__,
                          request_id, frames(exc.__traceback__))
                response = error_page(request, 500, _titles()[500], _(
                    "The console could not show this page. Try again later, or give the operator "
                    "the request id."))
            for name, value in SECURITY_HEADERS.items():
                response.headers.setdefault(name, value)
            return response

        return route

