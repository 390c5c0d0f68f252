"""A partial (HTMX) request refused before any console route saw it (the middleware's JSON
problems: a file over the size limit, the rate limit, a malformed request) is never silent
and never pasted into the page: the base page's alert says why in the page's language, and
takes the focus."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from broker.console.i18n import translations
from tests.console.browser import PageLog, axe_scan, login

pytestmark = [pytest.mark.console, pytest.mark.e2e]


def test_a_partial_request_refused_as_a_problem_is_announced_in_the_alert(
        page: Page, page_log: PageLog, console_base: str) -> None:
    login(page, console_base, "audit-office", "auditor")
    page.goto(f"{console_base}/console/audit/verify")
    alert = page.locator("#console-error")
    expect(alert).to_be_hidden()
    # A NUL in the query string: the principal middleware answers a 422 problem (JSON).
    page.evaluate("""() => {
        const form = document.querySelector('form[hx-post="/console/audit/verify"]');
        form.setAttribute('hx-post', '/console/audit/verify?x=%00');
        htmx.process(form);
    }""")
    page_log.expect_status(422, r"/console/audit/verify\?x=%00$")
    page.locator("#verify-now").click()
    expected = translations("zh-CN").gettext(
        "The request failed. Reload the page and try again; nothing was done.")
    expect(alert).to_be_visible()
    expect(alert).to_have_text(expected)
    expect(alert).to_be_focused()
    expect(page.locator("#verify-result")).not_to_contain_text("invalid-input")
    expect(page.locator("body")).not_to_contain_text("problem")
    axe_scan(page)
