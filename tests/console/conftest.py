"""Fixtures of the console's browser tests: the broker serving the demo county, Debian's
Chromium through Playwright, and a zh-CN page that fails its test on any console error, CSP
violation, uncaught exception, failed request or 5xx answer the test did not declare.

Every browser test carries the ``console`` marker. Without Chromium they skip, except under
CI (``CI`` set and not ``false``/``0``), where they fail: CI must not silently lose them
(``make test`` installs Chromium and the Chinese fonts from Debian's packages)."""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, Playwright, sync_playwright

from tests.console.browser import (
    PageLog,
    artifacts_dir,
    chromium_path,
    launch_chromium,
    wait_for_log,
)
from tests.console.sample_site import sample_site  # noqa: F401  (fixture)
from tests.server import broker_server

# Set on a test whose page problems were already judged after its call.
_JUDGED = pytest.StashKey[bool]()


def _is_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


@pytest.fixture(scope="session")
def chromium() -> Path:
    """The Chromium binary (``BROKER_TEST_CHROMIUM``, else /usr/bin/chromium)."""
    path = chromium_path()
    if not os.access(path, os.X_OK):
        message = (f"console browser tests need Chromium at {path} (`make test` installs "
                   "Debian's chromium; BROKER_TEST_CHROMIUM names another)")
        if _is_ci():
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def playwright() -> Iterator[Playwright]:
    """Playwright's driver (sync API), for the session."""
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="session")
def browser(playwright: Playwright, chromium: Path) -> Iterator[Browser]:
    """One headless Chromium for the session."""
    browser = launch_chromium(playwright, chromium)
    yield browser
    browser.close()


@pytest.fixture
def page_log() -> PageLog:
    """The problems of this test's pages; ``page_log.expect(kind, pattern)`` declares one."""
    return PageLog()


@pytest.fixture
def page(request: pytest.FixtureRequest, browser: Browser, page_log: PageLog) -> Iterator[Page]:
    """A page in a fresh zh-CN context (no cookies); its problems are checked after the test."""
    if request.node.get_closest_marker("console") is None:
        pytest.fail("a browser test carries the `console` marker", pytrace=False)
    context = browser.new_context(locale="zh-CN")
    page = context.new_page()
    page_log.watch(page)
    yield page
    context.close()
    # Problems that arrived after the check of pytest_runtest_call (none, or it ran not).
    faults = page_log.unexpected()
    if faults and not request.node.stash.get(_JUDGED, False):
        pytest.fail("the page went wrong:\n" + "\n".join(faults), pytrace=False)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, object, object]:
    """Fail a browser test whose pages went wrong (a failure of the test, not of teardown);
    keep a screenshot of a failed test's page."""
    funcargs = getattr(item, "funcargs", {})
    page: Page | None = funcargs.get("page")
    log: PageLog | None = funcargs.get("page_log")
    try:
        result = yield
    except BaseException:
        if page is not None:
            _keep_failure_screenshot(item, page)
        if log is not None:
            item.add_report_section("call", "page problems", "\n".join(map(str, log.problems)))
        item.stash[_JUDGED] = True
        raise
    if page is not None and log is not None:
        page.evaluate("0")  # a round trip: events the browser sent meanwhile are delivered
        faults = log.unexpected()
        item.stash[_JUDGED] = True
        if faults:
            _keep_failure_screenshot(item, page)
            pytest.fail("the page went wrong:\n" + "\n".join(faults), pytrace=False)
    return result


def _keep_failure_screenshot(item: pytest.Item, page: Page) -> None:
    name = re.sub(r"[^\w.-]+", "_", item.nodeid)
    path = artifacts_dir() / "failures" / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(Exception):  # a closed page has nothing to show; the failure stands
        page.screenshot(path=path, full_page=True)


@pytest.fixture(scope="session")
def console_base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL of ``broker serve --demo`` on embedded defaults (a fresh data directory, the
    demo county loaded) with the console's dev login, for the session."""
    tmp = tmp_path_factory.mktemp("console-server")
    env = {"BROKER_DATA_DIR": str(tmp / "var"), "BROKER_CONSOLE_DEV_LOGIN": "true"}
    unset = ("BROKER_JWT_SECRET", "BROKER_OIDC_ISSUER", "BROKER_DATABASE_URL")
    with broker_server(tmp, env, unset=unset, args=["--demo"]) as base:
        wait_for_log(tmp / "server.log", "Broker ready")  # the demo county is loaded
        yield base
