"""The console's frame over real HTTP semantics (no browser): the session cookie, the dev
login, CSRF, the security headers and the languages."""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from broker.api.auth import mint_token
from broker.app import create_app
from broker.console.session import ConsoleAuth, Session
from broker.console.web import CSP
from broker.settings import Settings
from broker.store.keys import console_secret, jwt_secret
from tests.conftest import Mint, World, auth
from tests.console.http import HERE, LOOPBACK, csrf_of, log_in


@pytest.fixture
def console(settings: Settings) -> Iterator[TestClient]:
    """A client on loopback (where the session cookie may go without TLS)."""
    with TestClient(create_app(settings), base_url=LOOPBACK, client=HERE) as c:
        yield c




def test_a_page_without_a_session_goes_to_the_login_page(console: TestClient) -> None:
    r = console.get("/console/audit?x=1", follow_redirects=False)
    assert r.status_code == 303
    assert r.headers["location"] == "/console/login?next=%2Fconsole%2Faudit%3Fx%3D1"


def test_the_dev_login_offers_registered_organisations_with_the_roles_that_fit(
        console: TestClient, world: World) -> None:
    html = console.get("/console/login").text
    assert re.search(r'<option value="grid" data-roles="provider"', html)
    assert re.search(r'<option value="econ" data-roles="provider consumer"', html)
    assert re.search(r'<option value="audit-office" data-roles="auditor"', html)
    assert re.search(r'<option value="broker-ops" data-roles="admin"', html)


def test_logging_in_gives_a_signed_httponly_session_scoped_to_the_console(
        console: TestClient, world: World) -> None:
    form = console.get("/console/login")
    r = console.post("/console/login", data={"org": "econ", "role": "consumer",
                                             "csrf": csrf_of(form.text)},
                     follow_redirects=False)
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie
    assert "Path=/console" in cookie
    assert "SameSite=lax" in cookie
    assert "Secure" not in cookie  # loopback
    # The cookie is sealed: neither the token nor its claims can be read out of it.
    value = console.cookies.get("broker_console") or ""
    padded = value + "=" * (-len(value) % 4)
    raw = base64.urlsafe_b64decode(padded)
    assert b"eyJ" not in raw
    assert b"econ" not in raw
    assert b"consumer" not in raw
    home = console.get("/console/")
    assert home.status_code == 200
    assert "econ" in home.text
    # The new session's CSRF token is not the one from before the login.
    assert csrf_of(home.text) != csrf_of(form.text)


def test_the_session_cookie_is_secure_outside_loopback(settings: Settings, world: World) -> None:
    with TestClient(create_app(settings), base_url="https://broker.example.gov.cn",
                    client=HERE) as c:
        form = c.get("/console/login")
        r = c.post("/console/login", data={"org": "econ", "role": "consumer",
                                           "csrf": csrf_of(form.text)}, follow_redirects=False)
        assert "Secure" in r.headers["set-cookie"]


def test_a_role_the_organisation_does_not_hold_is_refused(console: TestClient,
                                                          world: World) -> None:
    form = console.get("/console/login")
    r = console.post("/console/login", data={"org": "grid", "role": "auditor",
                                             "csrf": csrf_of(form.text)},
                     follow_redirects=False)
    assert r.status_code == 422
    assert console.get("/console/", follow_redirects=False).status_code == 303


def test_a_login_without_the_csrf_token_is_refused(console: TestClient, world: World) -> None:
    console.get("/console/login")
    r = console.post("/console/login", data={"org": "econ", "role": "consumer"},
                     follow_redirects=False)
    assert r.status_code == 403
    assert console.get("/console/", follow_redirects=False).status_code == 303


def test_a_post_from_another_origin_is_refused_even_with_the_token(
        console: TestClient, world: World) -> None:
    csrf = log_in(console, "econ", "consumer")
    r = console.post("/console/logout", data={"csrf": csrf},
                     headers={"Origin": "https://evil.example"}, follow_redirects=False)
    assert r.status_code == 403
    assert console.get("/console/", follow_redirects=False).status_code == 200


def test_behind_a_proxy_the_configured_console_url_is_this_console_s_origin(
        settings: Settings, world: World) -> None:
    # The proxy ends TLS for https://broker.example.gov.cn and passes the request on to the
    # broker on loopback; the browser's Origin is the public one.
    settings = settings.model_copy(update={"console_url": "https://broker.example.gov.cn"})
    with TestClient(create_app(settings), base_url=LOOPBACK, client=HERE) as c:
        form = c.get("/console/login")
        # The browser is on https: the cookie is Secure though the broker sees loopback.
        assert "Secure" in form.headers["set-cookie"]
        c.cookies.set("broker_console", form.cookies["broker_console"], path="/console")
        r = c.post("/console/login", data={"org": "econ", "role": "consumer",
                                           "csrf": csrf_of(form.text)}, follow_redirects=False)
        assert r.status_code == 303
        assert "Secure" in r.headers["set-cookie"]
        c.cookies.set("broker_console", r.cookies["broker_console"], path="/console")
        csrf = csrf_of(c.get("/console/").text)
        evil = c.post("/console/logout", data={"csrf": csrf},
                      headers={"Origin": "https://evil.example"}, follow_redirects=False)
        assert evil.status_code == 403
        r = c.post("/console/logout", data={"csrf": csrf},
                   headers={"Origin": "https://broker.example.gov.cn"}, follow_redirects=False)
        assert r.status_code == 303
        cleared = r.headers["set-cookie"]
        assert cleared.startswith('broker_console="";')
        assert "Max-Age=0" in cleared
        assert "Secure" in cleared


def test_a_tampered_cookie_is_no_session(console: TestClient, world: World) -> None:
    log_in(console, "econ", "consumer")
    value = console.cookies.get("broker_console")
    assert value
    console.cookies.set("broker_console", value[:-3] + ("AAA" if value[-3:] != "AAA" else "BBB"),
                        path="/console")
    assert console.get("/console/", follow_redirects=False).status_code == 303


def test_the_api_ignores_the_console_cookie_and_the_console_ignores_bearer_tokens(
        console: TestClient, world: World) -> None:
    log_in(console, "econ", "consumer")
    cookie = console.cookies.get("broker_console")
    r = console.get("/v1/contracts", headers={"Cookie": f"broker_console={cookie}"})
    assert r.status_code == 401  # a cookie never authenticates the API (no CSRF there)
    console.cookies.clear()
    r = console.get("/console/", headers=auth(world.econ), follow_redirects=False)
    assert r.status_code == 303  # nor a bearer token the console


def test_a_session_whose_token_has_expired_is_sent_to_log_in_again(
        console: TestClient, settings: Settings, world: World) -> None:
    log_in(console, "econ", "consumer")
    auth_ = console.app.state.container.console  # type: ignore[attr-defined]
    session = auth_.decode(console.cookies.get("broker_console"))
    assert session is not None
    assert session.token is not None
    expired = mint_token(key=jwt_secret(settings), issuer=settings.jwt_issuer,
                         audience=settings.jwt_audience, sub="console:consumer@econ",
                         org="econ", roles=["consumer"], ttl=-3600,
                         algorithm=settings.jwt_algorithms[0])
    console.cookies.set("broker_console", auth_.encode(replace(session, token=expired)),
                        path="/console")
    r = console.get("/console/", follow_redirects=False)
    # The console's own answer (log in again), not the API's 401 problem document.
    assert r.status_code == 303
    assert r.headers["location"].startswith("/console/login")
    hx = console.get("/console/", headers={"HX-Request": "true"}, follow_redirects=False)
    assert (hx.status_code, hx.headers["hx-redirect"][:14]) == (401, "/console/login")


def test_logout_forgets_the_session(console: TestClient, world: World) -> None:
    csrf = log_in(console, "econ", "consumer")
    r = console.post("/console/logout", data={"csrf": csrf}, follow_redirects=False)
    assert r.status_code == 303
    assert console.get("/console/", follow_redirects=False).status_code == 303


def test_next_never_leaves_the_console(console: TestClient, world: World) -> None:
    for target in ("https://evil.example/", "//evil.example/x", "/v1/contracts",
                   "/console\\@evil.example"):
        form = console.get("/console/login", params={"next": target})
        r = console.post("/console/login", data={"org": "econ", "role": "consumer",
                                                 "csrf": csrf_of(form.text), "next": target},
                         follow_redirects=False)
        assert r.headers["location"] == "/console/", target


def test_every_console_page_sends_the_security_headers(console: TestClient,
                                                       world: World) -> None:
    log_in(console, "econ", "consumer")
    for r in (console.get("/console/login"), console.get("/console/nowhere")):
        assert r.headers["content-security-policy"] == CSP
        assert "unsafe-inline" not in CSP
        assert r.headers["x-frame-options"] == "DENY"
        assert r.headers["cache-control"] == "no-store"
    assert console.get("/console/nowhere").status_code == 404


def test_chinese_by_default_english_on_request_and_remembered(console: TestClient,
                                                              world: World) -> None:
    log_in(console, "econ", "consumer")
    page = console.get("/console/")
    assert '<html lang="zh-CN"' in page.text
    assert "欢迎" in page.text
    page = console.get("/console/?lang=en")
    assert '<html lang="en"' in page.text
    assert "Welcome" in page.text
    assert "欢迎" not in page.text
    assert "Welcome" in console.get("/console/").text
    assert "欢迎" in console.get("/console/?lang=zh-CN").text
    assert "欢迎" in console.get("/console/?lang=fr").text  # an unknown language: the default


def test_the_language_switch_keeps_the_page_and_its_query(console: TestClient,
                                                          world: World) -> None:
    log_in(console, "audit-office", "auditor")
    html = console.get("/console/audit", params={"decision": "deny", "org": "econ",
                                                 "lang": "en"}).text
    assert 'href="?decision=deny&amp;org=econ&amp;lang=zh-CN" lang="zh-CN"' in html
    assert 'href="?decision=deny&amp;org=econ&amp;lang=en" lang="en"' in html
    assert 'href="?lang=en" lang="en"' in console.get("/console/").text


def test_a_domain_error_detail_in_english_is_marked_so_on_a_chinese_page(
        console: TestClient, world: World) -> None:
    log_in(console, "audit-office", "auditor")
    zh = console.get("/console/audit", params={"dataset_id": "nope", "lang": "zh-CN"})
    assert zh.status_code == 422
    assert '<html lang="zh-CN"' in zh.text
    assert '<p class="detail" lang="en">dataset_id is not a dataset id.</p>' in zh.text
    en = console.get("/console/audit", params={"dataset_id": "nope", "lang": "en"})
    assert '<p class="detail">dataset_id is not a dataset id.</p>' in en.text
    # The console's own messages are translated, so they carry no mark.
    csrf = console.post("/console/logout", data={"csrf": "wrong"}, params={"lang": "zh-CN"})
    assert csrf.status_code == 403
    assert '<p class="detail">' in csrf.text


def test_a_role_that_does_not_fit_the_page_is_a_403_page(console: TestClient,
                                                          world: World) -> None:
    log_in(console, "econ", "consumer")
    r = console.get("/console/operator")
    assert r.status_code == 403
    assert r.headers["content-type"].startswith("text/html")


def test_the_dev_login_is_off_with_an_identity_provider(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="DEV_LOGIN"):
        Settings(data_dir=tmp_path, oidc_issuer="https://idp.example", oidc_audience="broker",
                 console_dev_login=True)
    assert not Settings(data_dir=tmp_path, oidc_issuer="https://idp.example",
                        oidc_audience="broker").dev_login
    assert Settings(data_dir=tmp_path).dev_login


def test_by_default_the_dev_login_serves_this_machine_only(settings: Settings,
                                                           world: World) -> None:
    with TestClient(create_app(settings), base_url=LOOPBACK, client=("10.1.2.3", 50000)) as c:
        form = c.get("/console/login")
        assert 'name="org"' not in form.text
        # The page offers no form, but the session it started has a CSRF token: a POST with
        # it is refused by the dev login itself, not by the CSRF check.
        session = c.app.state.container.console.decode(  # type: ignore[attr-defined]
            c.cookies.get("broker_console"))
        assert session is not None
        r = c.post("/console/login", data={"org": "econ", "role": "consumer",
                                           "csrf": session.csrf}, follow_redirects=False)
        assert r.status_code == 403
        assert c.get("/console/", follow_redirects=False).status_code == 303


def test_the_dev_login_serves_every_client_when_told_so(settings: Settings,
                                                        world: World) -> None:
    settings = settings.model_copy(update={"console_dev_login": True})
    with TestClient(create_app(settings), base_url=LOOPBACK, client=("10.1.2.3", 50000)) as c:
        form = c.get("/console/login")
        assert 'name="org"' in form.text


def test_a_session_whose_roles_do_not_fit_its_organisation_is_refused(
        console: TestClient, world: World, settings: Settings, mint: Mint) -> None:
    # A session holding a validly signed token for an enterprise with the auditor's role (what
    # the dev login never mints): refused on every page, as the API refuses the token.
    auth = ConsoleAuth(secret=console_secret(settings), max_age=600)
    token = mint("grid", "auditor")
    console.cookies.set("broker_console", auth.encode(Session(csrf="c", token=token)),
                        path="/console")
    for path in ("/console/", "/console/audit", "/console/contracts"):
        r = console.get(path, follow_redirects=False)
        assert r.status_code == 403, path
        assert r.headers["content-type"].startswith("text/html")
