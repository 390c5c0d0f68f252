"""The console's session: one sealed cookie, scoped to ``/console``, holding a CSRF token and,
once someone has logged in, the bearer token the API itself would take.

The console never decides who someone is by itself: the token in the cookie (minted by the dev
login, or the OIDC provider's access token) is verified on every request by the same verifier
and the same per-principal limits as a bearer token (``broker.api.limits.PrincipalMiddleware``
reads it through :func:`session_token`), and the use cases then see the same principal they
would see through the API. The cookie is encrypted and authenticated (Fernet, AES-128-CBC with
HMAC-SHA256, from ``cryptography``) with a key derived from one generated into the data
directory, so the token it carries cannot be read out of a browser's cookie store either. It
is HttpOnly, SameSite=Lax, Secure unless the console is reached on loopback, and expires with
the session.
"""

from __future__ import annotations

import base64
import hmac
import ipaddress
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from starlette.requests import Request, cookie_parser
from starlette.responses import Response
from starlette.types import Scope

from broker.domain.principals import Role

#: The session cookie's name and path: it is never sent to the API.
COOKIE = "broker_console"
PATH = "/console"
STATIC_PATH = "/console/static/"
#: The most a cookie may weigh; a larger token is refused rather than cut.
MAX_COOKIE = 3800


@dataclass(frozen=True, slots=True)
class Login:
    """A login under way through the OIDC provider: what the callback must match."""

    state: str
    nonce: str
    verifier: str
    next: str


@dataclass(frozen=True, slots=True)
class Session:
    """What the cookie holds."""

    csrf: str
    token: str | None = None
    login: Login | None = None

    def as_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"csrf": self.csrf}
        if self.token is not None:
            doc["token"] = self.token
        if self.login is not None:
            doc["login"] = {"state": self.login.state, "nonce": self.login.nonce,
                            "verifier": self.login.verifier, "next": self.login.next}
        return doc

    @classmethod
    def from_json(cls, doc: object) -> Session | None:
        """The session a well-formed cookie holds; None for anything else."""
        if not isinstance(doc, dict) or not isinstance(doc.get("csrf"), str):
            return None
        token = doc.get("token")
        login = doc.get("login")
        parsed: Login | None = None
        if isinstance(login, dict) and all(
                isinstance(login.get(k), str) for k in ("state", "nonce", "verifier", "next")):
            parsed = Login(login["state"], login["nonce"], login["verifier"], login["next"])
        return cls(csrf=doc["csrf"], token=token if isinstance(token, str) else None,
                   login=parsed)

    @classmethod
    def fresh(cls) -> Session:
        """A new anonymous session with its own CSRF token."""
        return cls(csrf=secrets.token_urlsafe(32))


#: Mints the dev login's token for an organisation and a role (embedded mode only).
DevMinter = Callable[[str, Role], str]


@dataclass(frozen=True, slots=True)
class ConsoleAuth:
    """The console's keys and how people log in, made by the composition root."""

    secret: bytes
    #: How long a session lasts, and the dev login's tokens.
    max_age: int
    #: The dev login's minter, or None when the dev login is off.
    dev_login: DevMinter | None = None
    #: The OIDC login (``broker.console.oidc.OidcLogin``), or None.
    oidc: Any = None
    #: Whether the dev login serves clients beyond loopback (only when
    #: ``BROKER_CONSOLE_DEV_LOGIN`` says so explicitly; by default it is for this machine).
    dev_login_anywhere: bool = False
    #: The operator organisation (the dev login offers it ``admin``).
    operator_org: str = "broker-ops"
    _fernet: Fernet = field(init=False, repr=False)

    def __post_init__(self) -> None:
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                   info=b"broker-console-session").derive(self.secret)
        object.__setattr__(self, "_fernet", Fernet(base64.urlsafe_b64encode(key)))

    def dev_login_for(self, request: Request) -> DevMinter | None:
        """The dev login's minter when it serves this request's client, else None."""
        if self.dev_login is None:
            return None
        client = request.client.host if request.client else None
        return self.dev_login if self.dev_login_anywhere or is_loopback(client) else None

    def decode(self, raw: str | None) -> Session | None:
        """The session of a cookie value, if it is ours, unaltered and not expired."""
        if not raw or len(raw) > MAX_COOKIE:
            return None
        try:
            token = raw.encode("ascii") + b"=" * (-len(raw) % 4)
            doc = json.loads(self._fernet.decrypt(token, ttl=self.max_age))
        except (InvalidToken, ValueError, UnicodeError):
            return None
        return Session.from_json(doc)

    def encode(self, session: Session) -> str:
        """The cookie value of ``session``."""
        body = json.dumps(session.as_json(), separators=(",", ":")).encode()
        # Without base64's padding: '=' would make the cookie value a quoted string.
        return self._fernet.encrypt(body).decode("ascii").rstrip("=")


def auth_of(scope_or_request: Scope | Request) -> ConsoleAuth | None:
    """The console's auth, hung on the container by the composition root (None before the
    lifespan has built it)."""
    app = scope_or_request.app if isinstance(scope_or_request, Request) else \
        scope_or_request.get("app")
    container = getattr(getattr(app, "state", None), "container", None)
    found = getattr(container, "console", None)
    return found if isinstance(found, ConsoleAuth) else None


def is_console_path(path: str) -> bool:
    """Whether ``path`` is the console's (where the cookie, and only the cookie, counts)."""
    return path == PATH or path.startswith(PATH + "/")


def session_token(scope: Scope) -> str | None:
    """The bearer token of a console request's session cookie, for the principal middleware;
    None outside the console, without a cookie, or with one that is not ours."""
    path = scope.get("path", "")
    if not is_console_path(path) or path.startswith(STATIC_PATH):
        return None  # static files need no one's token
    auth = auth_of(scope)
    if auth is None:
        return None
    raw = None
    for name, value in scope.get("headers") or ():
        if name == b"cookie":
            raw = cookie_parser(value.decode("latin-1")).get(COOKIE)
            break
    session = auth.decode(raw)
    return session.token if session is not None else None


def read_session(request: Request) -> Session | None:
    """The request's session, if its cookie is valid."""
    auth = auth_of(request)
    return auth.decode(request.cookies.get(COOKIE)) if auth is not None else None


def is_loopback(host: str | None) -> bool:
    """Whether ``host`` names this machine (the only place a cookie may go without TLS)."""
    if not host:
        return False
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def is_secure(request: Request) -> bool:
    """Whether the session cookie is ``Secure``: outside loopback, and always when the console's
    configured URL is ``https`` (behind a proxy that ends TLS and passes the request on to
    loopback, the request's own host is loopback, the browser's is not)."""
    settings = getattr(getattr(request.app.state, "container", None), "settings", None)
    configured = (getattr(settings, "console_url", None)
                  or getattr(settings, "public_url", None))
    if isinstance(configured, str) and configured.startswith("https://"):
        return True
    return not is_loopback(request.url.hostname)


def write_session(response: Response, request: Request, session: Session) -> None:
    """Set the session cookie on ``response``."""
    auth = auth_of(request)
    if auth is None:
        raise RuntimeError("the console has no keys yet")
    value = auth.encode(session)
    if len(value) > MAX_COOKIE:
        raise ValueError("the session does not fit in a cookie")
    response.set_cookie(COOKIE, value, max_age=auth.max_age, path=PATH, httponly=True,
                        samesite="lax", secure=is_secure(request))


def clear_session(response: Response, request: Request) -> None:
    """Remove the session cookie."""
    response.delete_cookie(COOKIE, path=PATH, httponly=True, samesite="lax",
                           secure=is_secure(request))


def csrf_matches(session: Session | None, offered: str | None) -> bool:
    """Whether ``offered`` is the session's CSRF token (compared in constant time)."""
    if session is None or not offered:
        return False
    return hmac.compare_digest(session.csrf.encode(), offered.encode())


def logged_in(token: str) -> Session:
    """The session after a login: a new CSRF token (none from before the login survives) and
    the token; no login is under way any more."""
    return replace(Session.fresh(), token=token)
