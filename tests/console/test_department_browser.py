"""The department's pages in Chromium against ``broker serve --demo``: the economic bureau
builds a query by keyboard only, dry-runs it, runs it, reads the chart and a withheld cell with
its reason, downloads the answer as CSV and Excel, and opens the receipt; each page is
screenshotted and axe-scanned, and no page logs an error."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import openpyxl
import pytest
from playwright.sync_api import Page, expect

from tests.console.browser import axe_scan, login, screenshot

pytestmark = pytest.mark.console

#: The demo's department (the industry brain) and the grid company's dataset it may query.
BUREAU = "economic-bureau"
DATASET = "electricity-2025"


def focused(page: Page) -> str:
    """The focused element, as ``tag#id[name=...]``."""
    described: str = page.evaluate("""() => {
        const el = document.activeElement;
        if (!el || el === document.body) return 'body';
        let d = el.tagName.toLowerCase();
        if (el.id) d += '#' + el.id;
        if (el.getAttribute('name')) d += '[name=' + el.getAttribute('name') + ']';
        return d;
    }""")
    return described


def tab_to(page: Page, selector: str, *, key: str = "Tab", most: int = 60) -> list[str]:
    """Press ``key`` until the element ``selector`` has the focus; the elements passed."""
    passed = []
    for _ in range(most):
        page.keyboard.press(key)
        passed.append(focused(page))
        if page.evaluate("s => document.activeElement.matches(s)", selector):
            return passed
    raise AssertionError(f"{selector} never got the focus by {key}; passed {passed}")


def focus_is_visible(page: Page) -> bool:
    """Whether the focused element draws a focus ring (an outline of some width)."""
    visible: bool = page.evaluate("""() => {
        const style = getComputedStyle(document.activeElement);
        return style.outlineStyle !== 'none' && parseFloat(style.outlineWidth) >= 2;
    }""")
    return visible


def choose_by_keyboard(page: Page, label_part: str, *, most: int = 20) -> None:
    """With a <select> focused, press ArrowDown until its chosen option's text holds
    ``label_part``."""
    for _ in range(most):
        text = page.evaluate(
            "() => document.activeElement.selectedOptions[0]?.textContent || ''")
        if label_part in text:
            return
        page.keyboard.press("ArrowDown")
    raise AssertionError(f"no option holding {label_part!r} in {focused(page)}")


def electricity_option(page: Page) -> str:
    """The text of the contract option over the grid company's electricity."""
    texts: list[str] = page.locator("#q-contract option").all_text_contents()
    found = [t for t in texts if f" · {DATASET} · " in t]
    assert found, texts
    return found[0]


def test_the_bureau_builds_runs_and_downloads_a_query_by_keyboard_only(
        page: Page, console_base: str, tmp_path: Path) -> None:
    login(page, console_base, BUREAU, "consumer")

    page.goto(f"{console_base}/console/contracts/in-force")
    expect(page.locator("h1")).to_have_text("生效合约")
    assert page.locator("section.card").count() >= 2  # the demo's contracts in force
    expect(page.get_by_text("今日剩余").first).to_be_visible()
    axe_scan(page)
    screenshot(page, "department-contracts")

    page.goto(f"{console_base}/console/query")
    axe_scan(page)
    # Keyboard only from here: the skip link, then into the builder.
    page.keyboard.press("Tab")
    assert focused(page) == "a"  # the skip link comes first
    page.keyboard.press("Enter")
    tab_to(page, "#q-contract")
    assert focus_is_visible(page)
    option = electricity_option(page)
    choose_by_keyboard(page, option)
    # Choosing the contract reloads the field choices (HTMX), focus stays on the choice.
    expect(page.locator("input[name=group_by][value=town]")).to_be_visible()
    assert focused(page) == "select#q-contract[name=contract]"
    order = tab_to(page, "#q-run")
    # A sensible order: purpose, group-by, filters, measures, totals, dry run, run.
    wanted = ["select#q-purpose[name=purpose]", "input#gb-", "button#add-filter",
              "select#m-fn-", "button#add-measure", "input#q-totals", "button#q-explain",
              "button#q-run"]
    positions = [next(i for i, f in enumerate(order) if f.startswith(w)) for w in wanted]
    assert positions == sorted(positions), order

    tab_to(page, "select#q-purpose", key="Shift+Tab")
    choose_by_keyboard(page, "energy-planning")
    tab_to(page, "input[name=group_by][value=town]")
    page.keyboard.press("Space")
    assert page.locator("input[name=group_by][value=town]").is_checked()
    tab_to(page, "input[name=group_by][value=industry]")
    page.keyboard.press("Space")

    # A filter row added and removed with the keyboard; focus follows.
    tab_to(page, "#add-filter")
    page.keyboard.press("Enter")
    expect(page.locator("#filters .row")).to_have_count(1)
    page.wait_for_function("() => document.activeElement.name === 'filter_field'")
    tab_to(page, "#filters .row button[data-remove]")
    page.keyboard.press("Enter")
    expect(page.locator("#filters .row")).to_have_count(0)
    assert focused(page) == "button#add-filter"
    assert focus_is_visible(page)

    # A second measure: the sum of electricity.
    tab_to(page, "#add-measure")
    page.keyboard.press("Enter")
    expect(page.locator("#measures .row")).to_have_count(2)
    page.wait_for_function("() => document.activeElement.name === 'measure_fn'")
    choose_by_keyboard(page, "求和")
    page.keyboard.press("Tab")
    choose_by_keyboard(page, "electricity_kwh")

    # The dry run: verdicts and predictions, focus on its heading.
    tab_to(page, "#q-explain")
    page.keyboard.press("Enter")
    expect(page.locator("#results-heading")).to_have_text("试运行")
    page.wait_for_function("() => document.activeElement.id === 'results-heading'")
    expect(page.get_by_text("未发布任何数据")).to_be_visible()
    expect(page.locator("#results table").first).to_contain_text("town")
    axe_scan(page)

    # Run: the answer, focus on its heading, a chart drawn, withheld cells with their reason.
    tab_to(page, "#q-run", key="Shift+Tab")
    page.keyboard.press("Enter")
    expect(page.locator("#results-heading")).to_have_text("查询结果")
    page.wait_for_function("() => document.activeElement.id === 'results-heading'")
    assert focus_is_visible(page)
    withheld = page.locator("table.answer td.withheld")
    assert withheld.count() > 0
    first = withheld.first.inner_text()
    assert first.startswith("已隐去")
    assert re.search(r"min-entities|dominance|complementary|differencing|linked", first)
    assert not re.search(r"\d", first)
    assert page.locator("table.answer td.num").count() > 0  # published figures too
    page.wait_for_function("""() => {
        const c = document.querySelector('canvas[data-chart]');
        return c && c.dataset.drawn === '1' && window.Chart && Chart.getChart(c);
    }""")
    axe_scan(page)
    screenshot(page, "department-answer")

    # Downloads by keyboard: CSV and Excel, withheld cells marked, never a number.
    tab_to(page, "a[href$='.csv']")
    with page.expect_download() as csv_download:
        page.keyboard.press("Enter")
    csv_path = tmp_path / "answer.csv"
    csv_download.value.save_as(csv_path)
    raw = csv_path.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")
    rows = list(csv.reader(io.StringIO(raw.decode("utf-8-sig"))))
    assert sorted(rows[0][:2]) == ["industry", "town"]
    assert rows[0][2:4] == ["count", "sum_electricity_kwh"]
    held = [r for r in rows[1:] if r[-1]]
    assert held
    assert all(r[2].startswith("已隐去") and r[3].startswith("已隐去") for r in held)
    assert all(not re.search(r"\d", r[2] + r[3]) for r in held)
    assert len(held) == withheld.count()

    tab_to(page, "a[href$='.xlsx']")
    with page.expect_download() as xlsx_download:
        page.keyboard.press("Enter")
    xlsx_path = tmp_path / "answer.xlsx"
    xlsx_download.value.save_as(xlsx_path)
    sheet = openpyxl.load_workbook(xlsx_path).active
    assert sheet is not None
    cells = [list(r) for r in sheet.iter_rows(values_only=True)]
    assert cells[0][2:4] == ["count", "sum_electricity_kwh"]
    for row in cells[1:]:
        if row[-1]:  # a withheld cell: its reason, and text where the figures would be
            assert all(isinstance(v, str) and v.startswith("已隐去") for v in row[2:4])
        else:
            assert all(isinstance(v, int | float) for v in row[2:4])

    # The receipt, and how to check it offline.
    tab_to(page, "a[href^='/console/query/receipts/']")
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r"/console/query/receipts/\d+$"))
    expect(page.locator("pre").last).to_contain_text("broker audit check proof-")
    axe_scan(page)
    screenshot(page, "department-receipt")


def test_the_dry_run_in_english(page: Page, console_base: str) -> None:
    login(page, console_base, BUREAU, "consumer")
    page.goto(f"{console_base}/console/query?lang=en")
    option = electricity_option(page)
    page.locator("#q-contract").select_option(label=option)
    expect(page.locator("input[name=group_by][value=town]")).to_be_visible()
    page.locator("input[name=group_by][value=industry]").check()
    page.locator("#q-explain").click()
    expect(page.locator("#results-heading")).to_have_text("Dry run")
    expect(page.locator("#results")).to_contain_text("Verdict per field")
    axe_scan(page)
    screenshot(page, "department-dry-run-en")
