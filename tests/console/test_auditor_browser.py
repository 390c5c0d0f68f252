"""The auditor's and the operator's console in headless Chromium against ``broker serve
--demo``: the log filtered and paged, an entry with its inclusion proof, "verify now", the
checkpoints, the denial charts drawn, the organisations and health pages; each page scanned
by axe-core, the main ones kept as screenshots, no console error or CSP violation."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, expect

from broker.console.i18n import translations
from tests.console.browser import PageLog, axe_scan, login, screenshot

pytestmark = [pytest.mark.console, pytest.mark.e2e]


def provoke_a_denial(page: Page, page_log: PageLog, base: str) -> None:
    """As the grid company (a provider), ask for an entry that is not about its data: the
    console answers 404 and the log records the refusal (a denial the auditor then sees)."""
    login(page, base, "grid-company", "provider")
    page_log.expect_status(404, r"/console/audit/entries/1(\?|$)")
    response = page.goto(f"{base}/console/audit/entries/1?lang=en")
    assert response is not None
    assert response.status == 404


def test_auditor_filters_the_log_pages_through_it_and_opens_an_entry_with_its_proof(
        page: Page, page_log: PageLog, console_base: str) -> None:
    provoke_a_denial(page, page_log, console_base)
    login(page, console_base, "audit-office", "auditor")
    page.goto(f"{console_base}/console/audit?lang=en&limit=5")
    rows = page.locator("#audit-entries tbody tr")
    expect(rows).to_have_count(5)
    screenshot(page, "auditor-log")
    axe_scan(page)

    seq_cells = page.locator("#audit-entries tbody tr td:first-child")
    first_seqs = seq_cells.all_inner_texts()
    page.get_by_role("link", name="Next page").click()
    page.wait_for_url(re.compile(r"cursor=5"))
    second_seqs = seq_cells.all_inner_texts()
    assert first_seqs == ["1", "2", "3", "4", "5"]
    assert second_seqs == ["6", "7", "8", "9", "10"]

    # Only the refusals (the provider's above, at least), still five to a page.
    page.select_option("#f-decision", "deny")
    page.get_by_role("button", name="Apply filters").click()
    page.wait_for_url(re.compile(r"decision=deny"))
    assert "limit=5" in page.url
    assert rows.count() >= 1
    assert rows.locator(".denied").count() == rows.count()
    assert rows.locator(".allowed").count() == 0
    axe_scan(page)

    entry = rows.first.locator("td a").first
    seq = entry.inner_text()
    entry.click()
    page.wait_for_url(re.compile(rf"/console/audit/entries/{seq}$"))
    expect(page.locator("#inclusion-proof")).to_be_visible()
    expect(page.locator("#canonical-entry")).to_contain_text(f'"seq":{seq}')
    expect(page.locator("#proof-checkpoint")).to_contain_text("—")  # a signed note
    assert "broker audit check" in page.locator("main").inner_text()
    screenshot(page, "auditor-entry")
    axe_scan(page)
    with page.expect_download() as download:
        page.get_by_role("link", name="proof (JSON)").click()
    assert download.value.suggested_filename == f"audit-proof-{seq}.json"


def test_the_auditor_pages_read_in_chinese(page: Page, console_base: str) -> None:
    zh = translations("zh-CN")
    login(page, console_base, "audit-office", "auditor")
    for path, title, shot in (("/console/audit", "Audit log", "auditor-log-zh"),
                              ("/console/audit/verify", "Verify the log", None),
                              ("/console/audit/checkpoints", "Signed checkpoints", None),
                              ("/console/audit/charts", "Denials over time", None)):
        page.goto(f"{console_base}{path}?lang=zh-CN")
        assert page.locator("html").get_attribute("lang") == "zh-CN"
        expect(page.locator("main h1")).to_have_text(zh.gettext(title))
        assert zh.gettext(title) != title
        if shot:
            screenshot(page, shot)
        axe_scan(page)


def test_verify_now_shows_the_result_in_place(page: Page, console_base: str) -> None:
    login(page, console_base, "audit-office", "auditor")
    page.goto(f"{console_base}/console/audit/verify?lang=en")
    axe_scan(page)
    page.get_by_role("button", name="Verify now").click()
    outcome = page.locator("#verify-outcome")
    expect(outcome).to_have_text("The log is intact")
    assert page.url.endswith("/console/audit/verify?lang=en")  # HTMX: no page change
    assert page.locator("#verify-table").inner_text().count("Yes") == 1
    screenshot(page, "auditor-verify")
    axe_scan(page)
    # The keyboard does it too: focus the button, press Enter, a fresh result.
    page.locator("#verify-now").focus()
    page.keyboard.press("Enter")
    expect(outcome).to_have_text("The log is intact")


def test_an_htmx_request_refused_shows_the_error_page_in_place(
        page: Page, page_log: PageLog, console_base: str) -> None:
    login(page, console_base, "audit-office", "auditor")
    page.goto(f"{console_base}/console/audit/verify?lang=en")
    # The session's CSRF token lost (as after logging in again in another tab): refused.
    page.evaluate("document.body.setAttribute('hx-headers', '{\"X-CSRF-Token\": \"stale\"}')")
    page_log.expect_status(403, r"/console/audit/verify$")
    page.get_by_role("button", name="Verify now").click()
    expect(page.locator("main h1")).to_have_text("Not allowed")
    assert "Reload the page" in page.locator("main").inner_text()
    assert page.locator("#verify-outcome").count() == 0
    assert page.locator("main").count() == 1  # the page's <main>, replaced, not nested
    axe_scan(page)


def test_checkpoints_show_their_outside_copies_and_the_key(page: Page,
                                                            console_base: str) -> None:
    login(page, console_base, "audit-office", "auditor")
    page.goto(f"{console_base}/console/audit/entries/1?lang=en")  # signs one if none yet
    page.goto(f"{console_base}/console/audit/checkpoints?lang=en")
    rows = page.locator("#checkpoints tbody tr")
    assert rows.count() >= 1
    expect(rows.first).to_contain_text("same root")
    expect(page.locator("#checkpoint-key")).to_contain_text("Ed25519")
    screenshot(page, "auditor-checkpoints")
    axe_scan(page)


def test_denial_charts_are_drawn_with_their_tables(page: Page, page_log: PageLog,
                                                   console_base: str) -> None:
    provoke_a_denial(page, page_log, console_base)
    login(page, console_base, "audit-office", "auditor")
    page.goto(f"{console_base}/console/audit/charts?lang=en")
    for chart, table in (("#chart-reasons", "#table-reasons"), ("#chart-orgs", "#table-orgs")):
        canvas = page.locator(chart)
        expect(canvas).to_have_attribute("data-drawn", "1")
        box = canvas.bounding_box()
        assert box is not None
        assert box["width"] > 100
        assert box["height"] > 100
        assert page.locator(f"{table} tbody tr").count() >= 1
    # Chart.js drew bars: the canvas is not blank.
    painted = page.evaluate("""() => {
        const c = document.querySelector('#chart-reasons');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0; for (let i = 3; i < d.length; i += 4) { if (d[i] > 0) n++; }
        return n;
    }""")
    assert painted > 1000
    screenshot(page, "auditor-charts")
    axe_scan(page)


def test_operator_registers_an_organisation_and_reads_the_health(page: Page,
                                                                 console_base: str) -> None:
    login(page, console_base, "broker-ops", "admin")
    page.goto(f"{console_base}/console/operator?lang=en")
    orgs = page.locator("#orgs tbody")
    expect(orgs).to_contain_text("audit-office")
    expect(orgs).to_contain_text("SHA256:")
    screenshot(page, "operator-orgs")
    axe_scan(page)

    page.fill("#org-id", "forestry-bureau")
    page.fill("#org-name", "Forestry Bureau")
    page.select_option("#org-kind", "department")
    page.get_by_role("button", name="Register").click()
    page.wait_for_url(re.compile(r"registered=forestry-bureau"))
    expect(page.locator(".flash")).to_contain_text("forestry-bureau")
    expect(orgs).to_contain_text("Forestry Bureau")
    axe_scan(page)

    page.goto(f"{console_base}/console/operator/health?lang=en")
    expect(page.locator("#health")).to_contain_text("embedded")
    expect(page.locator(".flash")).to_contain_text("Ready")
    screenshot(page, "operator-health")
    axe_scan(page)


def test_a_provider_gets_404_for_an_entry_about_another_organisation(
        page: Page, page_log: PageLog, console_base: str) -> None:
    login(page, console_base, "grid-company", "provider")
    page_log.expect_status(404, r"/console/audit/entries/1(\?|$)")
    response = page.goto(f"{console_base}/console/audit/entries/1?lang=en")
    assert response is not None
    assert response.status == 404
    expect(page.locator("main h1")).to_have_text("Not found")
    axe_scan(page)
