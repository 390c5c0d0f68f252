"""The console's OIDC login (authorization code with PKCE) against a real provider.

A real ``broker serve`` trusts ``tests/oidc/login.mjs`` (panva's oidc-provider on loopback),
where the console is registered as a public client; httpx plays the browser: the broker's
start, the provider's login page, the broker's callback. Attacks replay codes, swap states and
nonces, and drop the PKCE verifier; each must end on an error page with no session.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, replace
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import parse_qs, urljoin, urlsplit

import httpx
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from broker.app import create_app
from broker.cli.serving import free_port
from broker.console.session import COOKIE, ConsoleAuth, Session
from broker.settings import Settings
from broker.store.keys import console_secret
from tests.oidc_provider import LoginProvider
from tests.server import broker_server

pytestmark = pytest.mark.e2e

CONSUMER = "consumer@economic-bureau"


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


@pytest.fixture(scope="module")
def console(oidc_login_provider: LoginProvider, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[Console]:
    """A real broker whose console logs in through the provider, with economic-bureau
    registered (by an admin whose token the provider issued)."""
    tmp = tmp_path_factory.mktemp("oidc-console")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    client_id, _secret = oidc_login_provider.register(
        redirect_uris=[f"{base}/console/oidc/callback"],
        post_logout_redirect_uris=[f"{base}/console/login"])
    env = {"BROKER_DATA_DIR": str(tmp / "var"), "BROKER_OIDC_ISSUER": oidc_login_provider.issuer,
           "BROKER_OIDC_AUDIENCE": "broker", "BROKER_OIDC_CLIENT_ID": client_id,
           "BROKER_OIDC_SCOPES": "openid broker"}
    with broker_server(tmp, env, unset=("BROKER_JWT_SECRET", "BROKER_CONSOLE_DEV_LOGIN"),
                       port=port) as url:
        admin = provider_access_token(oidc_login_provider, "admin@broker-ops")
        r = httpx.post(f"{url}/v1/orgs", headers={"Authorization": f"Bearer {admin}"},
                       json={"id": "economic-bureau", "name": "Economic bureau",
                             "kind": "department"}, timeout=10)
        assert r.status_code == 201, r.text
        yield Console(url, tmp / "var", oidc_login_provider, client_id)


def provider_access_token(provider: LoginProvider, account: str) -> str:
    """An access token for ``account``, obtained by the test as a client of its own."""
    redirect = "http://127.0.0.1:9/test-client"
    client_id, _ = provider.register(redirect_uris=[redirect])
    verifier = secrets.token_urlsafe(48)
    doc = provider.discovery()
    with httpx.Client(timeout=10) as idp:
        url = httpx.URL(doc["authorization_endpoint"], params={
            "client_id": client_id, "redirect_uri": redirect, "response_type": "code",
            "scope": "openid broker", "state": "s", "code_challenge": _s256(verifier),
            "code_challenge_method": "S256"})
        back = login_at_provider(idp, str(url), account, until=redirect)
        code = parse_qs(urlsplit(back).query)["code"][0]
        r = idp.post(doc["token_endpoint"], data={
            "grant_type": "authorization_code", "code": code, "redirect_uri": redirect,
            "client_id": client_id, "code_verifier": verifier})
        assert r.status_code == 200, r.text
        token: str = r.json()["access_token"]
        return token


def _s256(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(
        b"=").decode()


def _refused_without_session(console: Console, broker: httpx.Client, response: httpx.Response,
                             status: int = 401) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("text/html")
    session = console.session(broker)
    assert session is not None
    assert session.token is None
    assert session.login is None
    home = broker.get("/console/")
    assert home.status_code == 303
    assert home.headers["location"].startswith("/console/login")


def test_a_department_logs_in_through_the_provider_and_acts_as_itself(console: Console
                                                                      ) -> None:
    broker, idp = console.browser()
    callback = console.authorize(broker, idp, CONSUMER, next_url="/console/?lang=en")
    assert parse_qs(urlsplit(callback).query)["iss"] == [console.provider.issuer]
    response = broker.get(callback)
    assert response.status_code == 303, response.text
    assert response.headers["location"] == "/console/?lang=en"
    cookie = response.headers["set-cookie"]
    assert "HttpOnly" in cookie
    assert "SameSite=lax" in cookie
    assert "Secure" not in cookie
    session = console.session(broker)
    assert session is not None
    assert session.token is not None
    assert session.login is None
    home = broker.get("/console/?lang=en")
    assert home.status_code == 200
    assert "economic-bureau" in home.text
    assert "consumer" in home.text


def test_a_callback_with_another_state_is_refused(console: Console) -> None:
    broker, idp = console.browser()
    callback = console.authorize(broker, idp, CONSUMER)
    forged = re.sub(r"state=[^&]+", "state=" + secrets.token_urlsafe(32), callback)
    _refused_without_session(console, broker, broker.get(forged))
    # the login under way is used up: the real state cannot be tried after a wrong one
    _refused_without_session(console, broker, broker.get(callback))


def test_a_replayed_code_is_refused(console: Console) -> None:
    broker, idp = console.browser()
    callback = console.authorize(broker, idp, CONSUMER)
    before = console.session(broker)
    assert before is not None
    assert before.login is not None
    assert broker.get(callback).status_code == 303
    console.forge(broker, before)  # the cookie as it was before the callback
    response = broker.get(callback)
    _refused_without_session(console, broker, response)
    assert "invalid_grant" in response.text


def test_the_provider_refuses_a_code_without_or_with_another_verifier(console: Console
                                                                       ) -> None:
    token_endpoint = console.provider.discovery()["token_endpoint"]
    for verifier in (None, secrets.token_urlsafe(48)):
        broker, idp = console.browser()
        callback = console.authorize(broker, idp, CONSUMER)
        code = parse_qs(urlsplit(callback).query)["code"][0]
        form = {"grant_type": "authorization_code", "code": code,
                "redirect_uri": f"{console.base}/console/oidc/callback",
                "client_id": console.client_id}
        if verifier is not None:
            form["code_verifier"] = verifier
        r = httpx.post(token_endpoint, data=form, timeout=10)
        assert r.status_code == 400
        assert r.json()["error"] in ("invalid_grant", "invalid_request")
    # and through the broker: a session whose verifier is not the login's
    broker, idp = console.browser()
    callback = console.authorize(broker, idp, CONSUMER)
    session = console.session(broker)
    assert session is not None
    assert session.login is not None
    console.forge(broker, replace(session, login=replace(
        session.login, verifier=secrets.token_urlsafe(48))))
    response = broker.get(callback)
    _refused_without_session(console, broker, response)
    assert "invalid_grant" in response.text


def test_an_id_token_with_another_nonce_is_refused(console: Console) -> None:
    broker, idp = console.browser()
    callback = console.authorize(broker, idp, CONSUMER)
    session = console.session(broker)
    assert session is not None
    assert session.login is not None
    console.forge(broker, replace(session, login=replace(
        session.login, nonce=secrets.token_urlsafe(32))))
    response = broker.get(callback)
    _refused_without_session(console, broker, response)
    assert "nonce" in response.text


@pytest.mark.parametrize(("account", "status"), [
    ("somebody", 401),  # a token without org and roles makes no principal
    ("consumer@unregistered-bureau", 403),  # an organisation the broker does not know
])
def test_a_user_the_broker_cannot_admit_gets_an_error_page_and_no_session(
        console: Console, account: str, status: int) -> None:
    broker, idp = console.browser()
    callback = console.authorize(broker, idp, account)
    _refused_without_session(console, broker, broker.get(callback), status)


@pytest.mark.parametrize("next_url", ["https://evil.example/", "//evil.example/console/",
                                      "/v1/orgs", "/console\\@evil.example"])
def test_next_cannot_lead_off_the_console(console: Console, next_url: str) -> None:
    broker, idp = console.browser()
    response = broker.get(console.authorize(broker, idp, CONSUMER, next_url=next_url))
    assert response.status_code == 303
    assert response.headers["location"] == "/console/"


def test_the_dev_login_is_off_when_an_issuer_is_configured(console: Console) -> None:
    broker, _idp = console.browser()
    page = broker.get("/console/login")
    assert page.status_code == 200
    assert "/console/oidc/start" in page.text
    assert 'name="org"' not in page.text
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
    session = console.session(broker)
    assert session is not None
    response = broker.post("/console/login", data={
        "csrf": csrf.group(1) if csrf else session.csrf, "org": "broker-ops", "role": "admin"})
    assert response.status_code == 403
    assert "The dev login is off" in response.text  # not a CSRF refusal
    after = console.session(broker)
    assert after is not None
    assert after.token is None


def test_the_session_cookie_is_secure_when_not_on_loopback(console: Console) -> None:
    response = httpx.get(f"{console.base}/console/oidc/start",
                         headers={"Host": "broker.example.gov.cn"}, timeout=10)
    assert response.status_code == 303
    cookie = response.headers["set-cookie"]
    assert "Secure" in cookie
    assert "HttpOnly" in cookie
    assert "SameSite=lax" in cookie
    assert "Path=/console" in cookie


def test_logout_clears_the_session_and_ends_it_at_the_provider(console: Console) -> None:
    broker, idp = console.browser()
    assert broker.get(console.authorize(broker, idp, CONSUMER)).status_code == 303
    session = console.session(broker)
    assert session is not None
    assert session.token is not None
    response = broker.post("/console/logout", data={"csrf": session.csrf})
    assert response.status_code == 303
    target = httpx.URL(response.headers["location"])
    assert str(target).startswith(console.provider.discovery()["end_session_endpoint"])
    assert target.params["client_id"] == console.client_id
    assert target.params["post_logout_redirect_uri"] == f"{console.base}/console/login"
    assert console.session(broker) is None
    assert broker.get("/console/").status_code == 303


def test_the_provider_down_is_a_503_page_and_no_login(tmp_path: Path) -> None:
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    settings = Settings(data_dir=tmp_path / "var", oidc_issuer=down, oidc_audience="broker",
                        oidc_client_id="broker-console")
    with TestClient(create_app(settings), base_url="http://127.0.0.1") as client:
        response = client.get("/console/oidc/start", follow_redirects=False)
        assert response.status_code == 503
        assert "text/html" in response.headers["content-type"]
        assert response.headers["content-security-policy"].startswith("default-src 'none'")
        auth = ConsoleAuth(secret=console_secret(settings), max_age=3600)
        session = auth.decode(client.cookies.get(COOKIE))
        assert session is None or (session.token is None and session.login is None)


def test_an_issuer_without_a_client_id_offers_no_login(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "var", oidc_issuer="http://127.0.0.1:9",
                        oidc_audience="broker")
    with TestClient(create_app(settings), base_url="http://127.0.0.1") as client:
        page = client.get("/console/login?lang=en")
        assert page.status_code == 200
        assert "BROKER_OIDC_CLIENT_ID" in page.text
        assert "/console/oidc/start" not in page.text
        assert client.get("/console/oidc/start", follow_redirects=False).status_code == 404


@pytest.mark.parametrize("right_secret", [True, False])
def test_a_confidential_client_redeems_its_code_with_its_secret(
        tmp_path: Path, oidc_login_provider: LoginProvider, right_secret: bool) -> None:
    base = "http://127.0.0.1"
    client_id, secret = oidc_login_provider.register(
        redirect_uris=[f"{base}/console/oidc/callback"], confidential=True)
    assert secret is not None
    settings = Settings(data_dir=tmp_path / "var", oidc_issuer=oidc_login_provider.issuer,
                        oidc_audience="broker", oidc_client_id=client_id,
                        oidc_client_secret=SecretStr(secret if right_secret else secret[::-1]),
                        oidc_scopes="openid broker")
    with (TestClient(create_app(settings), base_url=base) as broker,
          httpx.Client(timeout=10) as idp):
        start = broker.get("/console/oidc/start", follow_redirects=False)
        assert start.status_code == 303
        back = login_at_provider(idp, start.headers["location"], "admin@broker-ops",
                                 until=f"{base}/console/oidc/callback")
        response = broker.get(back.removeprefix(base), follow_redirects=False)
        session = ConsoleAuth(secret=console_secret(settings), max_age=3600).decode(
            broker.cookies.get(COOKIE))
        assert session is not None
        if right_secret:
            assert response.status_code == 303
            assert session.token is not None
            assert broker.get("/console/", follow_redirects=False).status_code == 200
        else:
            assert response.status_code == 401
            assert "invalid_client" in response.text
            assert session.token is None
