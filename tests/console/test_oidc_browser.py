"""Logging in to the console through the identity provider in Chromium: the login page's
button, the provider's sign-in page, back to the console's home page; a user the broker cannot
admit lands on an error page. Every console page is axe-scanned and screenshotted, and no page
may log a console error or a CSP violation."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from playwright.sync_api import Page, Route

from tests.console.browser import PageLog, axe_scan, screenshot
from tests.console.oidc_login import Console, running_console
from tests.oidc_provider import LoginProvider

pytestmark = [pytest.mark.console, pytest.mark.e2e]


@pytest.fixture(scope="module")
def console(oidc_login_provider: LoginProvider, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[Console]:
    """A real broker whose console logs in through the provider."""
    with running_console(oidc_login_provider, tmp_path_factory.mktemp("oidc-browser")) as found:
        yield found


def _loopback_only(page: Page) -> None:
    """Refuse, inside the browser, any request that would leave the machine."""

    def refuse(route: Route) -> None:
        route.abort()

    page.context.route(re.compile(r"^(?!https?://127\.0\.0\.1[:/])"), refuse)


def _sign_in(page: Page, console: Console, account: str) -> None:
    """From the console's login page, through the provider's sign-in page, as ``account``."""
    page.goto(f"{console.base}/console/login")
    page.get_by_role("link", name=re.compile("统一身份认证")).click()
    page.wait_for_url(re.compile(re.escape(console.provider.issuer) + "/interaction/"))
    page.get_by_label("Login").fill(account)
    page.get_by_label("Password").fill("any-password")
    page.get_by_role("button", name="Sign in").press("Enter")


def test_a_department_logs_in_through_the_identity_provider(page: Page, console: Console
                                                             ) -> None:
    _loopback_only(page)
    page.goto(f"{console.base}/console/login")
    assert page.locator("select[name=org]").count() == 0  # no dev login with an issuer
    screenshot(page, "oidc-login")
    axe_scan(page)

    _sign_in(page, console, "consumer@economic-bureau")
    page.wait_for_url(re.compile(re.escape(f"{console.base}/console/") + r"$"))
    assert "economic-bureau" in page.locator("header").inner_text()
    screenshot(page, "oidc-home-consumer-economic-bureau")
    axe_scan(page)
    cookies = {c["name"]: c for c in page.context.cookies(f"{console.base}/console/")}
    session = cookies["broker_console"]
    assert session["httpOnly"] is True
    assert session["sameSite"] == "Lax"
    assert session["path"] == "/console"

    # Log out: the session is gone here, and a link ends the provider's session too.
    page.locator("header form button[type=submit]").click()
    page.wait_for_url(f"{console.base}/console/oidc/signed-out")
    screenshot(page, "oidc-signed-out")
    axe_scan(page)
    page.get_by_role("link", name="同时退出统一身份认证").click()
    page.wait_for_url(re.compile(re.escape(console.provider.issuer) + "/session/end"))
    page.get_by_role("button", name="Yes, sign me out").click()
    page.wait_for_url(re.compile(re.escape(f"{console.base}/console/login")))
    page.goto(f"{console.base}/console/")
    page.wait_for_url(re.compile(re.escape(f"{console.base}/console/login")))


def test_a_user_without_organisation_or_roles_gets_an_error_page(
        page: Page, page_log: PageLog, console: Console) -> None:
    _loopback_only(page)
    page_log.expect_status(401, re.escape(f"{console.base}/console/oidc/callback"))
    _sign_in(page, console, "somebody")
    page.wait_for_url(re.compile(re.escape(f"{console.base}/console/oidc/callback")))
    assert page.locator("main h1").inner_text() != ""
    screenshot(page, "oidc-refused")
    axe_scan(page)
    page.goto(f"{console.base}/console/")
    page.wait_for_url(re.compile(re.escape(f"{console.base}/console/login")))
