"""A partial (HTMX) request that fails without a fragment to show is never silent: the base
page's alert says why in the page's language, and takes the focus."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from broker.console.i18n import translations
from tests.console.browser import PageLog, axe_scan, login

pytestmark = [pytest.mark.console, pytest.mark.e2e]


def test_a_refused_partial_request_is_announced_in_the_alert(page: Page, page_log: PageLog,
                                                             console_base: str) -> None:
    login(page, console_base, "audit-office", "auditor")
    page.goto(f"{console_base}/console/audit/verify")
    alert = page.locator("#console-error")
    expect(alert).to_be_hidden()
    # The session's CSRF token, as HTMX sends it, replaced: the broker refuses the request.
    page.evaluate("""() => document.body.setAttribute('hx-headers',
                     JSON.stringify({'X-CSRF-Token': 'not-the-sessions-token'}))""")
    page_log.expect_status(403, r"/console/audit/verify$")
    page_log.expect("console", r"Response Status Error Code 403")  # htmx's own report
    page.locator("#verify-now").click()
    expected = translations("zh-CN").gettext(
        "Not allowed: reload the page (the form may have expired) and try again.")
    expect(alert).to_be_visible()
    expect(alert).to_have_text(expected)
    expect(alert).to_be_focused()
    expect(page.locator("#verify-result")).not_to_contain_text("valid", ignore_case=True)
    axe_scan(page)
