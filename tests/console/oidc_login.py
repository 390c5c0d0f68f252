"""The console logging in through a real OIDC provider: a broker trusting
``tests/oidc/login.mjs``, the console registered there as a public client, and httpx playing
the browser (its pages, its cookies) through the provider's login page."""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import parse_qs, urljoin, urlsplit

import httpx

from broker.cli.serving import free_port
from broker.console.session import COOKIE, ConsoleAuth, Session
from broker.settings import Settings
from broker.store.keys import console_secret
from tests.oidc_provider import LoginProvider
from tests.server import broker_server


class _Forms(HTMLParser):
    """The forms of a page: action and the inputs' names and values."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[tuple[str, dict[str, str]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.forms.append((found.get("action", ""), {}))
        elif tag == "input" and self.forms and "name" in found:
            self.forms[-1][1][found["name"]] = found.get("value", "")


def login_at_provider(http: httpx.Client, url: str, account: str, until: str) -> str:
    """Follow the provider from ``url`` through its login page as ``account`` (any password)
    until it redirects to a URL starting with ``until``; that URL."""
    for _ in range(12):
        response = http.get(url)
        while response.status_code == 200:
            parser = _Forms()
            parser.feed(response.text)
            action, fields = next(f for f in parser.forms if "login" in f[1])
            fields.update(login=account, password=secrets.token_urlsafe(8))
            response = http.post(urljoin(url, action), data=fields)
            url = str(response.url)
        assert response.status_code in (302, 303), (response.status_code, response.text)
        url = urljoin(url, response.headers["location"])
        if url.startswith(until):
            return url
    raise AssertionError("the provider did not come back to the client")


@dataclass
class Console:
    """A broker trusting the login provider, its data directory and the console's client."""

    base: str
    data_dir: Path
    provider: LoginProvider
    client_id: str

    def browser(self) -> tuple[httpx.Client, httpx.Client]:
        """A fresh browser: one cookie jar for the broker, one for the provider."""
        return (httpx.Client(base_url=self.base, timeout=10),
                httpx.Client(timeout=10, follow_redirects=False))

    def authorize(self, broker: httpx.Client, idp: httpx.Client, account: str,
                  next_url: str = "/console/") -> str:
        """Start a login at the broker and log in at the provider; the callback URL (with the
        code and state) the provider sends the browser back to."""
        start = broker.get("/console/oidc/start", params={"next": next_url})
        assert start.status_code == 303, start.text
        assert start.headers["location"].startswith(self.provider.issuer + "/")
        return login_at_provider(idp, start.headers["location"], account,
                                 until=f"{self.base}/console/oidc/callback")

    def session(self, broker: httpx.Client) -> Session | None:
        """The session in the browser's cookie, as the broker reads it."""
        return self.auth().decode(broker.cookies.get(COOKIE, path="/console"))

    def forge(self, broker: httpx.Client, session: Session) -> None:
        """Put ``session``, signed with the broker's key, into the browser's cookie (what an
        attacker holding the key could do: it stands in for a browser that kept an old or
        another login's cookie)."""
        broker.cookies.set(COOKIE, self.auth().encode(session), domain="127.0.0.1",
                           path="/console")

    def auth(self) -> ConsoleAuth:
        return ConsoleAuth(secret=console_secret(Settings(data_dir=self.data_dir)),
                           max_age=3600)


@contextmanager
def running_console(provider: LoginProvider, tmp: Path) -> Iterator[Console]:
    """A real broker whose console logs in through ``provider``, with economic-bureau
    registered (by an admin whose token the provider issued); stopped on exit."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    client_id, _secret = provider.register(
        redirect_uris=[f"{base}/console/oidc/callback"],
        post_logout_redirect_uris=[f"{base}/console/login"])
    env = {"BROKER_DATA_DIR": str(tmp / "var"), "BROKER_OIDC_ISSUER": provider.issuer,
           "BROKER_OIDC_AUDIENCE": "broker", "BROKER_OIDC_CLIENT_ID": client_id,
           "BROKER_OIDC_SCOPES": "openid broker"}
    with broker_server(tmp, env, unset=("BROKER_JWT_SECRET", "BROKER_CONSOLE_DEV_LOGIN"),
                       port=port) as url:
        admin = provider_access_token(provider, "admin@broker-ops")
        r = httpx.post(f"{url}/v1/orgs", headers={"Authorization": f"Bearer {admin}"},
                       json={"id": "economic-bureau", "name": "Economic bureau",
                             "kind": "department"}, timeout=10)
        assert r.status_code == 201, r.text
        yield Console(url, tmp / "var", provider, client_id)


def provider_tokens(provider: LoginProvider, account: str, *, nonce: str | None = None
                    ) -> tuple[str, dict[str, str]]:
    """The token response for ``account`` (access and ID token), obtained by the test as a
    client of its own; that client's id."""
    redirect = "http://127.0.0.1:9/test-client"
    client_id, _ = provider.register(redirect_uris=[redirect])
    verifier = secrets.token_urlsafe(48)
    doc = provider.discovery()
    params = {"client_id": client_id, "redirect_uri": redirect, "response_type": "code",
              "scope": "openid broker", "state": "s", "code_challenge": _s256(verifier),
              "code_challenge_method": "S256"}
    if nonce is not None:
        params["nonce"] = nonce
    with httpx.Client(timeout=10) as idp:
        url = httpx.URL(doc["authorization_endpoint"], params=params)
        back = login_at_provider(idp, str(url), account, until=redirect)
        code = parse_qs(urlsplit(back).query)["code"][0]
        r = idp.post(doc["token_endpoint"], data={
            "grant_type": "authorization_code", "code": code, "redirect_uri": redirect,
            "client_id": client_id, "code_verifier": verifier})
        assert r.status_code == 200, r.text
        return client_id, r.json()


def provider_access_token(provider: LoginProvider, account: str) -> str:
    """An access token for ``account`` from the provider."""
    return provider_tokens(provider, account)[1]["access_token"]


def _s256(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(
        b"=").decode()


