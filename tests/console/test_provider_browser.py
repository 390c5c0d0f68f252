"""The provider's console in Chromium against ``broker serve --demo``: the grid company uploads
a dataset through the form (progress bar filled, a bad file refused with its problems first),
publishes a consented slice, offers a contract and revokes it, and reads the uses of its data
with the timeline chart and a receipt; each page screenshotted and axe-scanned, with no
console error."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.console.browser import PageLog, axe_scan, login, screenshot

pytestmark = [pytest.mark.console, pytest.mark.e2e]

ORG = "grid-company"
DATASET = re.compile(r"/console/datasets/([0-9a-f-]{36})")
CONTRACT = re.compile(r"/console/contracts/([0-9a-f-]{36})$")


def _files(tmp_path: Path) -> tuple[Path, Path]:
    """A good CSV (40 enterprises in 4 towns) and one whose ``output`` column has text."""
    rows = [f"E{i:03d},town-{i % 4},{10 + i}.5" for i in range(40)]
    good = tmp_path / "output.csv"
    good.write_text("uscc,town,output\n" + "\n".join(rows) + "\n", encoding="utf-8")
    bad = tmp_path / "bad.csv"
    bad.write_text("uscc,town,output\nE1,town-0,many\n" + "\n".join(rows[1:]) + "\n",
                   encoding="utf-8")
    return good, bad


def _meta(name: str) -> str:
    return json.dumps({"name": name, "entity_field": "uscc", "fields": [
        {"name": "uscc", "type": "string", "role": "entity", "sensitivity": "L2"},
        {"name": "town", "type": "string", "role": "dimension", "sensitivity": "L1"},
        {"name": "output", "type": "number", "role": "measure", "sensitivity": "L2",
         "scale": 1}]})


def test_a_provider_uploads_publishes_a_slice_offers_and_revokes_a_contract(
        page: Page, page_log: PageLog, console_base: str, tmp_path: Path) -> None:
    good, bad = _files(tmp_path)
    name = f"output-{uuid.uuid4().hex[:8]}"
    login(page, console_base, ORG, "provider")

    page.goto(f"{console_base}/console/datasets")
    expect(page.locator("main h1")).to_be_visible()
    screenshot(page, "provider-datasets")
    axe_scan(page)

    # A file that does not match its declaration: refused, its problems shown, nothing stored.
    page.goto(f"{console_base}/console/datasets/new")
    axe_scan(page)
    page_log.expect_status(422, r"/console/datasets/new$")
    page.locator("#upload-meta").fill(_meta(name))
    page.locator("#upload-file").set_input_files(str(bad))
    progress = page.locator("#upload-progress")
    expect(progress).to_be_visible()
    page.locator("main form [type=submit]").click()
    refusal = page.locator("#upload-result [role=alert]")
    expect(refusal).to_be_visible()
    expect(refusal.locator("th[scope=row]", has_text="output")).to_be_visible()
    assert progress.evaluate("p => p.value > 0 && p.value === p.max")  # the bytes went
    screenshot(page, "provider-upload-refused")
    axe_scan(page)

    # The good file: stored, and the dataset's page shows it.
    page.locator("#upload-file").set_input_files(str(good))
    page.locator("main form [type=submit]").click()
    page.wait_for_url(re.compile(r"/console/datasets/[0-9a-f-]{36}\?uploaded=1$"))
    found = DATASET.search(page.url)
    assert found is not None
    dataset_id = found.group(1)
    expect(page.locator("main h1")).to_contain_text(name)
    expect(page.locator("main [role=status]")).to_be_visible()
    screenshot(page, "provider-dataset")
    axe_scan(page)

    # A consented slice.
    page.goto(f"{console_base}/console/datasets/{dataset_id}/slices/new")
    axe_scan(page)
    page.locator("#slice-name").fill("towns-0-1")
    page.locator("#slice-field-town").check()
    page.locator("#slice-field-output").check()
    page.locator("#slice-predicate").fill(
        '[{"field": "town", "op": "in", "value": ["town-0", "town-1"]}]')
    page.locator("#slice-given-by").fill("Grid company board")
    page.locator("#slice-given-at").fill("2026-01-05T08:00")
    page.locator("#slice-scope").fill("Town-level output for planning")
    page.locator("main form.stack [type=submit]").click()
    page.wait_for_url(f"{console_base}/console/datasets/{dataset_id}")
    expect(page.locator("main")).to_contain_text("Grid company board")

    # Offer a contract over it to the economic bureau.
    page.goto(f"{console_base}/console/contracts/offer?dataset_id={dataset_id}")
    axe_scan(page)
    offer = page.locator("main form[method=post]")
    offer.locator("#offer-consumer").select_option("economic-bureau")
    offer.locator("input[name=purposes]").first.check()
    offer.locator("#offer-form-town").select_option("clear")
    offer.locator("#offer-form-output").select_option("aggregate")
    offer.locator("#offer-k-min").fill("3")
    offer.locator("[type=submit]").click()
    page.wait_for_url(CONTRACT)
    state = page.locator("main p strong").first
    expect(state).to_have_class(re.compile(r"\bstate-offered\b"))
    expect(page.locator("details pre").first).to_be_attached()
    screenshot(page, "provider-contract")
    axe_scan(page)

    # Revoke it, confirming the question asked first.
    asked: list[str] = []

    def accept(dialog: object) -> None:
        asked.append(dialog.message)  # type: ignore[attr-defined]
        dialog.accept()  # type: ignore[attr-defined]

    page.once("dialog", accept)
    page.locator("button.danger").click()
    page.wait_for_load_state()
    expect(page.locator("main p strong").first).to_have_class(re.compile(r"\bstate-revoked\b"))
    assert len(asked) == 1
    assert page.locator("button.danger").count() == 0

    page.goto(f"{console_base}/console/contracts")
    expect(page.locator("main table").first).to_be_visible()
    screenshot(page, "provider-contracts")
    axe_scan(page)


def test_uses_of_my_data_show_a_timeline_and_receipts(
        page: Page, console_base: str) -> None:
    login(page, console_base, ORG, "provider")
    page.goto(f"{console_base}/console/uses")
    canvas = page.locator("canvas[data-chart]")
    expect(canvas).to_be_visible()
    expect(canvas).to_have_attribute("data-drawn", "1")  # Chart.js drew it
    figures = page.locator("main table").first
    expect(figures.locator("caption")).to_be_visible()
    assert figures.locator("tbody tr").count() >= 1
    screenshot(page, "provider-uses")
    axe_scan(page)

    page.locator("#uses-decision").select_option("deny")
    page.locator("#uses-by").select_option("decision")
    page.locator("form.filters [type=submit]").click()
    page.wait_for_url(re.compile(r"decision=deny"))
    axe_scan(page)

    page.goto(f"{console_base}/console/uses")
    receipt = page.locator("a[href^='/console/audit/entries/']").first
    receipt.click()
    page.wait_for_url(re.compile(r"/console/audit/entries/\d+$"))
    expect(page.locator("main pre").first).to_be_attached()
    screenshot(page, "provider-receipt")
    axe_scan(page)
