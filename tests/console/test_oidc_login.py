"""The console's OIDC login (authorization code with PKCE) against a real provider.

A real ``broker serve`` trusts ``tests/oidc/login.mjs`` (panva's oidc-provider on loopback),
where the console is registered as a public client; httpx plays the browser: the broker's
start, the provider's login page, the broker's callback. Attacks replay codes, swap states and
nonces, and drop the PKCE verifier; each must end on an error page with no session.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from broker.app import create_app
from broker.cli.serving import free_port
from broker.console.oidc import OidcLogin
from broker.console.session import COOKIE, ConsoleAuth, Session
from broker.domain.errors import Unauthenticated
from broker.settings import Settings
from broker.store.keys import console_secret
from tests.console.oidc_login import (
    Console,
    login_at_provider,
    provider_tokens,
    running_console,
)
from tests.oidc_provider import LoginProvider

pytestmark = pytest.mark.e2e

CONSUMER = "consumer@economic-bureau"


@pytest.fixture(scope="module")
def console(oidc_login_provider: LoginProvider, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[Console]:
    """A real broker whose console logs in through the provider."""
    with running_console(oidc_login_provider, tmp_path_factory.mktemp("oidc-console")) as found:
        yield found


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


def test_a_login_started_from_another_site_logs_nobody_out(console: Console) -> None:
    broker, idp = console.browser()
    assert broker.get(console.authorize(broker, idp, CONSUMER)).status_code == 303
    # Another site's link (a GET: SameSite=Lax sends the cookie) starts a login and stops.
    assert broker.get("/console/oidc/start").status_code == 303
    session = console.session(broker)
    assert session is not None
    assert session.token is not None
    assert session.login is not None
    assert broker.get("/console/").status_code == 200


def test_a_callback_with_another_state_is_refused(console: Console) -> None:
    broker, idp = console.browser()
    callback = console.authorize(broker, idp, CONSUMER)
    forged = re.sub(r"state=[^&]+", "state=" + secrets.token_urlsafe(32), callback)
    refused = broker.get(forged)
    _refused_without_session(console, broker, refused)
    # the error page's language links do not carry the code on
    assert 'href="?lang=en" lang="en"' in refused.text
    assert "code=" not in refused.text
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


def test_logout_clears_the_session_and_offers_to_end_it_at_the_provider(console: Console
                                                                         ) -> None:
    broker, idp = console.browser()
    assert broker.get(console.authorize(broker, idp, CONSUMER)).status_code == 303
    session = console.session(broker)
    assert session is not None
    assert session.token is not None
    response = broker.post("/console/logout", data={"csrf": session.csrf})
    assert response.status_code == 303
    assert response.headers["location"] == "/console/oidc/signed-out"
    assert console.session(broker) is None
    assert broker.get("/console/").status_code == 303
    page = broker.get("/console/oidc/signed-out?lang=en")
    assert page.status_code == 200
    link = re.search(r'href="([^"]*/session/end[^"]*)"', page.text)
    assert link is not None
    target = httpx.URL(link.group(1).replace("&amp;", "&"))
    assert str(target).startswith(console.provider.discovery()["end_session_endpoint"])
    assert target.params["client_id"] == console.client_id
    assert target.params["post_logout_redirect_uri"] == f"{console.base}/console/login"
    # the provider accepts it (the redirect URI is the client's registered one)
    assert idp.get(str(target)).status_code == 200


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


def test_the_provider_down_mid_session_is_a_503_page_not_a_login_page(tmp_path: Path) -> None:
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    settings = Settings(data_dir=tmp_path / "var", oidc_issuer=down, oidc_audience="broker",
                        oidc_client_id="broker-console")
    with TestClient(create_app(settings), base_url="http://127.0.0.1") as client:
        # A session holding a provider's token (its keys must be fetched to check it).
        header = {"alg": "RS256", "kid": "k1", "typ": "JWT"}
        claims = {"iss": down, "aud": "broker", "sub": "s", "org": "o", "exp": 2**31}
        token = ".".join(base64.urlsafe_b64encode(json.dumps(part).encode()).decode()
                         .rstrip("=") for part in (header, claims)) + ".c2ln"
        auth = ConsoleAuth(secret=console_secret(settings), max_age=3600)
        client.cookies.set(COOKIE, auth.encode(Session(csrf="c", token=token)), path="/console")
        response = client.get("/console/", follow_redirects=False)
        assert response.status_code == 503
        assert "text/html" in response.headers["content-type"]


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


def _forged(header: dict[str, object], claims: dict[str, object], key: bytes) -> str:
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest() if key else b""
    return f"{signing_input}.{b64(signature)}"


def test_an_id_token_is_accepted_only_when_issued_to_this_client_for_this_login(
        oidc_login_provider: LoginProvider) -> None:
    nonce = secrets.token_urlsafe(16)
    client_id, tokens = provider_tokens(oidc_login_provider, CONSUMER, nonce=nonce)
    ours = OidcLogin(issuer=oidc_login_provider.issuer, client_id=client_id)
    claims = ours.verify_id_token(tokens["id_token"], nonce=nonce)
    assert claims["sub"] == CONSUMER
    assert claims["aud"] == client_id
    # The same token offered to another client (token substitution) is refused.
    other = OidcLogin(issuer=oidc_login_provider.issuer, client_id="another-client")
    with pytest.raises(Unauthenticated):
        other.verify_id_token(tokens["id_token"], nonce=nonce)
    # So is another login's nonce, and the access token in the ID token's place.
    with pytest.raises(Unauthenticated):
        ours.verify_id_token(tokens["id_token"], nonce=secrets.token_urlsafe(16))
    with pytest.raises(Unauthenticated):
        ours.verify_id_token(tokens["access_token"], nonce=nonce)
    # Forged algorithms: HMAC with a guessable key, "none", and the provider's kid on HS256.
    now = int(time.time())
    forged_claims = {"iss": oidc_login_provider.issuer, "aud": client_id, "sub": CONSUMER,
                     "nonce": nonce, "iat": now, "exp": now + 300}
    kid = ours._key_set().keys[0].kid
    forgeries: list[tuple[dict[str, object], bytes]] = [
        ({"alg": "HS256", "kid": kid}, client_id.encode()),
        ({"alg": "none"}, b""),
        ({"alg": "none", "kid": kid}, b""),
    ]
    for header, key in forgeries:
        with pytest.raises(Unauthenticated):
            ours.verify_id_token(_forged(header, forged_claims, key), nonce=nonce)
