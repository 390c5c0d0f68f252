"""The browser harness checked on a tiny strict-CSP site: axe-core finds what it must, the page
fixture fails a test on what went wrong in its page, and Chinese renders in the wqy font."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from playwright.sync_api import Page

from tests.console.browser import (
    ROOT,
    PageLog,
    axe_scan,
    axe_violations,
    focus_order,
    rendered_fonts,
    screenshot,
)
from tests.console.sample_site import CHINESE

pytestmark = pytest.mark.console


def test_axe_finds_the_missing_alt_text_and_label_on_a_bad_page(page: Page,
                                                                 sample_site: str) -> None:
    page.goto(f"{sample_site}/bad")
    found = {v["id"]: v for v in axe_violations(page)}
    assert {"image-alt", "label"} <= set(found)
    assert found["image-alt"]["targets"] == ["img"]
    with pytest.raises(AssertionError, match=r"(?s)image-alt \(critical\).*label \(critical\)"):
        axe_scan(page)


def test_axe_finds_nothing_serious_on_a_good_page_under_a_strict_csp(page: Page,
                                                                      sample_site: str) -> None:
    page.goto(f"{sample_site}/good")
    # The page's own script ran (script-src 'self' allows it), and axe runs despite the CSP.
    assert page.locator("body[data-ready=yes]").count() == 1
    axe_scan(page)
    assert page.evaluate("typeof window.axe") == "object"


def test_focus_order_follows_the_keyboard(page: Page, sample_site: str) -> None:
    page.goto(f"{sample_site}/good")
    assert focus_order(page, 3) == ['a "跳到查询"', "input#q[name=q]", 'button "运行"']
    assert focus_order(page, 2, key="Shift+Tab") == ["input#q[name=q]", 'a "跳到查询"']


def test_chinese_text_is_drawn_with_the_wenquanyi_font(page: Page, sample_site: str) -> None:
    page.goto(f"{sample_site}/good")
    fonts = rendered_fonts(page, "#zh")
    # Every character drawn by WenQuanYi Micro Hei: none left to a fallback (or a blank box).
    assert fonts == {"WenQuanYi Micro Hei": len(CHINESE)}
    # ... and drawn full-width: each character as wide as the font is high.
    width, size = page.evaluate("""() => {
        const el = document.getElementById('zh'), range = document.createRange();
        range.selectNodeContents(el);
        return [range.getBoundingClientRect().width, parseFloat(getComputedStyle(el).fontSize)];
    }""")
    assert width == pytest.approx(len(CHINESE) * size, rel=0.05)


def test_a_screenshot_is_a_full_page_png_under_the_artifacts_directory(
        page: Page, sample_site: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BROKER_TEST_ARTIFACTS", str(tmp_path / "shots"))
    page.goto(f"{sample_site}/good")
    path = screenshot(page, "sample-good")
    assert path == tmp_path / "shots" / "sample-good.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="screenshot name"):
        screenshot(page, "../escape")


@pytest.mark.parametrize(("path", "kind", "said"), [
    ("/console-error", "console", "sample failure"),
    ("/inline-script", "csp", "Content Security Policy"),
    ("/uncaught", "pageerror", "TypeError: sample uncaught"),
    ("/broken-image", "response", "HTTP 500"),
])
def test_the_page_log_records_what_went_wrong(page: Page, page_log: PageLog, sample_site: str,
                                              path: str, kind: str, said: str) -> None:
    page.goto(f"{sample_site}{path}")
    page.evaluate("0")  # events the browser sent meanwhile are delivered
    assert any(p.kind == kind and said in p.text for p in page_log.problems), page_log.problems
    assert page_log.unexpected()  # the fixture would fail this test...
    page_log.expect(kind, re.escape(said) if kind != "response" else r"/server-error\.svg$")
    if kind == "response":  # ... and the browser also reports the failed load on its console
        page_log.expect("console", "500")
    assert page_log.unexpected() == []  # ... unless the test declared it


def test_a_download_is_not_a_failed_request(page: Page, page_log: PageLog,
                                            sample_site: str) -> None:
    page.goto(f"{sample_site}/download")
    with page.expect_download() as download:
        page.locator("#csv").click()
    assert Path(download.value.path()).read_text(encoding="utf-8").startswith("行业,企业数")
    page.evaluate("0")
    assert [p.kind for p in page_log.problems] == ["requestfailed"]  # Chromium's abort...
    assert page_log.unexpected() == []  # ... which is no fault


def test_an_error_page_visited_on_purpose_is_declared_by_its_status(
        page: Page, page_log: PageLog, sample_site: str) -> None:
    page_log.expect_status(404, r"/elsewhere$")
    assert page.goto(f"{sample_site}/elsewhere").status == 404  # type: ignore[union-attr]
    page_log.expect_status(500, r"/server-error\.svg$")
    page.goto(f"{sample_site}/broken-image")
    page.evaluate("0")
    assert page_log.unexpected() == []
    unmet = PageLog()
    unmet.expect_status(404, r"/never-visited$")
    (fault,) = unmet.unexpected()
    assert fault.startswith("expected a console problem matching 'the server responded")
    assert fault.endswith(" at a URL matching '/never-visited$', none came")


def test_an_unknown_kind_of_problem_cannot_be_expected(page_log: PageLog) -> None:
    with pytest.raises(ValueError, match="unknown kind"):
        page_log.expect("warning", ".")


INNER_CONFTEST = """
from tests.console.conftest import *  # the fixtures and the hook under test
from tests.console.sample_site import sample_site
"""

INNER_TESTS = """
import pytest


@pytest.mark.console
def test_console_error(page, sample_site):
    page.goto(f"{sample_site}/console-error")


@pytest.mark.console
def test_csp_violation(page, sample_site):
    page.goto(f"{sample_site}/inline-script")


@pytest.mark.console
def test_uncaught_exception(page, sample_site):
    page.goto(f"{sample_site}/uncaught")


@pytest.mark.console
def test_server_error(page, sample_site):
    page.goto(f"{sample_site}/broken-image")


@pytest.mark.console
def test_declared_problem(page, page_log, sample_site):
    page_log.expect("csp", "Content Security Policy")
    page.goto(f"{sample_site}/inline-script")


@pytest.mark.console
def test_declared_problem_that_never_came(page, page_log, sample_site):
    page_log.expect("console", "never said")
    page.goto(f"{sample_site}/good")


@pytest.mark.console
def test_undeclared_not_found(page, sample_site):
    page.goto(f"{sample_site}/elsewhere")


@pytest.mark.console
def test_clean_page(page, sample_site):
    page.goto(f"{sample_site}/good")


@pytest.mark.console
def test_failing_assertion(page, sample_site):
    page.goto(f"{sample_site}/good")
    assert page.title() == "something else"


def test_unmarked(page):
    pass
"""


def _run_inner(tmp_path: Path, tests: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``tests`` (with the console fixtures) in a pytest of their own, environment plus
    ``env``; -rA lists every outcome."""
    (tmp_path / "conftest.py").write_text(INNER_CONFTEST)
    (tmp_path / "test_inner.py").write_text(tests)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rA", "-o",
         "markers=console: browser test", "--strict-markers", "test_inner.py"],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        capture_output=True, text=True, timeout=300, check=False)


def _outcomes(run: subprocess.CompletedProcess[str]) -> dict[str, str]:
    return {name: outcome for outcome, name in re.findall(
        r"^(PASSED|FAILED|ERROR) test_inner\.py::(\w+)", run.stdout, re.MULTILINE)}


def test_the_page_fixture_fails_a_test_whose_page_went_wrong(tmp_path: Path,
                                                             chromium: Path) -> None:
    run = _run_inner(tmp_path, INNER_TESTS, BROKER_TEST_CHROMIUM=str(chromium),
                     BROKER_TEST_ARTIFACTS=str(tmp_path / "artifacts"))
    assert _outcomes(run) == {
        "test_console_error": "FAILED", "test_csp_violation": "FAILED",
        "test_uncaught_exception": "FAILED", "test_server_error": "FAILED",
        "test_declared_problem": "PASSED", "test_declared_problem_that_never_came": "FAILED",
        "test_undeclared_not_found": "FAILED", "test_clean_page": "PASSED",
        "test_failing_assertion": "FAILED",
        "test_unmarked": "ERROR",
    }, run.stdout + run.stderr
    assert "[console] sample failure" in run.stdout
    assert re.search(r"^\[csp\] .*script-src 'self'", run.stdout, re.MULTILINE)
    assert "[pageerror] TypeError: sample uncaught" in run.stdout
    assert "[response] HTTP 500 (http://127.0.0.1:" in run.stdout
    assert "expected a console problem matching 'never said', none came" in run.stdout
    assert "[console] Failed to load resource: the server responded with a status of 404" \
        in run.stdout
    # A failed test leaves a screenshot of its page.
    shots = {p.name for p in (tmp_path / "artifacts" / "failures").iterdir()}
    assert "test_inner.py_test_failing_assertion.png" in shots


ONE_BROWSER_TEST = """
import pytest


@pytest.mark.console
def test_browser(page):
    pass
"""


@pytest.mark.parametrize(("ci", "outcome"), [("true", "1 error"), ("", "1 skipped")])
def test_without_chromium_browser_tests_skip_except_under_ci_where_they_fail(
        tmp_path: Path, ci: str, outcome: str) -> None:
    run = _run_inner(tmp_path, ONE_BROWSER_TEST, CI=ci,
                     BROKER_TEST_CHROMIUM=str(tmp_path / "no-chromium"))
    assert re.search(rf"=+ {outcome} in ", run.stdout), run.stdout + run.stderr
    assert f"console browser tests need Chromium at {tmp_path / 'no-chromium'}" in run.stdout
