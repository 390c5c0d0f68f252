"""What every console browser test uses: Debian's Chromium driven by Playwright (never a
downloaded browser), a record of what went wrong in a page, the dev login, an axe-core scan and
screenshots kept as test artifacts."""

from __future__ import annotations

import hashlib
import os
import re
import time
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from playwright.sync_api import Browser, ConsoleMessage, Page, Playwright, Request, Response

ROOT = Path(__file__).resolve().parents[2]
VENDOR = Path(__file__).resolve().parent / "vendor"

DEFAULT_CHROMIUM = "/usr/bin/chromium"
# Headless, and quiet: the machines' network is closed, and without these Chromium keeps trying
# to reach Google's services (updates, sync, QUIC probes), flooding refused connections.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync")

# Chromium reports a Content-Security-Policy violation as a console error; older releases
# begin it with "Refused to ...", newer ones name the policy ("... violates the following
# Content Security Policy directive ...").
_CSP_MESSAGE = re.compile(r"^(\[Report Only\] )?Refused to |Content Security Policy")


def chromium_path() -> Path:
    """The Chromium binary the tests drive: ``BROKER_TEST_CHROMIUM``, else Debian's."""
    return Path(os.environ.get("BROKER_TEST_CHROMIUM") or DEFAULT_CHROMIUM)


def artifacts_dir() -> Path:
    """Where screenshots go: ``BROKER_TEST_ARTIFACTS``, else ``build/test-artifacts/console``."""
    configured = os.environ.get("BROKER_TEST_ARTIFACTS")
    return Path(configured) if configured else ROOT / "build" / "test-artifacts" / "console"


def launch_chromium(playwright: Playwright, executable: Path) -> Browser:
    """Start headless Chromium from ``executable`` with the flags of a closed network."""
    return playwright.chromium.launch(executable_path=executable, args=list(CHROMIUM_FLAGS))


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing that went wrong in a page: its kind, what the browser said, and where."""

    kind: str  # console | csp | pageerror | requestfailed | response
    text: str
    url: str = ""

    def __str__(self) -> str:
        return f"[{self.kind}] {self.text}" + (f" ({self.url})" if self.url else "")


KINDS = frozenset({"console", "csp", "pageerror", "requestfailed", "response"})


@dataclass(frozen=True, slots=True)
class _Expected:
    kind: str
    pattern: re.Pattern[str]
    url: re.Pattern[str] | None = None

    def matches(self, problem: Problem) -> bool:
        return (self.kind == problem.kind
                and bool(self.pattern.search(problem.text) or self.pattern.search(problem.url))
                and (self.url is None or bool(self.url.search(problem.url))))

    def __str__(self) -> str:
        where = f" at a URL matching {self.url.pattern!r}" if self.url else ""
        return f"a {self.kind} problem matching {self.pattern.pattern!r}{where}"


@dataclass  # no slots: Playwright marks the bound methods it is given as handlers
class PageLog:
    """Every console error, CSP violation, uncaught exception, failed request and 5xx answer
    of the pages it watches. A test declares the ones it provokes with ``expect`` (or
    ``expect_status`` for an error page it visits on purpose); anything else fails it, and so
    does an expectation that never came true. A request that became a download is not a
    failed one (Chromium aborts it once the download takes over)."""

    problems: list[Problem] = field(default_factory=list)
    downloads: set[str] = field(default_factory=set)
    _expected: list[_Expected] = field(default_factory=list)

    def expect(self, kind: str, pattern: str, *, url: str | None = None) -> None:
        """Declare a problem of ``kind`` whose text or URL matches the regex ``pattern`` (and
        whose URL matches the regex ``url``, if given)."""
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}; one of {sorted(KINDS)}")
        self._expected.append(_Expected(kind, re.compile(pattern),
                                        re.compile(url) if url is not None else None))

    def expect_status(self, status: int, url: str) -> None:
        """Declare that a page or resource at a URL matching the regex ``url`` answers
        ``status`` (an error status, which Chromium reports on the console)."""
        self.expect("console", rf"the server responded with a status of {status}\b", url=url)
        if status >= 500:
            self.expect("response", rf"^HTTP {status}$", url=url)

    def watch(self, page: Page) -> None:
        """Record ``page``'s problems from now on."""
        page.on("console", self._on_console)
        page.on("pageerror", self._on_page_error)
        page.on("requestfailed", self._on_request_failed)
        page.on("response", self._on_response)
        page.on("download", lambda download: self.downloads.add(download.url))

    def _on_console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            kind = "csp" if _CSP_MESSAGE.search(message.text) else "console"
            self.problems.append(Problem(kind, message.text, message.location.get("url", "")))

    def _on_page_error(self, error: Exception) -> None:
        # Playwright's Error carries the page's error name (TypeError, ...) and message.
        name = getattr(error, "name", None) or type(error).__name__
        message = getattr(error, "message", None) or str(error)
        self.problems.append(Problem("pageerror", f"{name}: {message}"))

    def _on_request_failed(self, request: Request) -> None:
        self.problems.append(Problem("requestfailed", request.failure or "failed", request.url))

    def _on_response(self, response: Response) -> None:
        if response.status >= 500:
            self.problems.append(Problem("response", f"HTTP {response.status}", response.url))

    def unexpected(self) -> list[str]:
        """What went wrong that no ``expect`` declared, and the expectations never met."""
        problems = [p for p in self.problems if not (
            p.kind == "requestfailed" and p.text == "net::ERR_ABORTED" and p.url in self.downloads)]
        faults = [str(p) for p in problems if not any(e.matches(p) for e in self._expected)]
        faults += [f"expected {e}, none came"
                   for e in self._expected if not any(e.matches(p) for p in problems)]
        return faults


def login(page: Page, base: str, org: str, role: str) -> None:
    """Log in through the console's dev login as ``role`` (provider, consumer, auditor or
    admin) of ``org``, and wait for the console's home page it redirects to."""
    page.goto(f"{base}/console/login")
    form = page.locator("form", has=page.locator("select[name=org]"))
    form.locator("select[name=org]").select_option(value=org)
    form.locator("select[name=role]").select_option(value=role)
    if form.locator("input[type=hidden][name=csrf]").count() != 1:
        raise AssertionError("the login form carries no CSRF token")
    form.locator("[type=submit]").click()
    page.wait_for_url(re.compile(re.escape(f"{base}/console/") + r"(\?.*)?$"))


@cache
def _axe_source() -> str:
    return (VENDOR / "axe.min.js").read_text(encoding="utf-8")


def axe_violations(page: Page, *, impacts: frozenset[str] = frozenset({"serious", "critical"}),
                   ) -> list[dict[str, Any]]:
    """Run axe-core on the page as it is now; its violations of the given impacts.

    The script is evaluated, not added as a ``<script>``: the console's CSP (``script-src
    'self'``) refuses inline scripts, but not Playwright's evaluation."""
    if not page.evaluate("typeof window.axe === 'object'"):
        page.evaluate(_axe_source())
    violations: list[dict[str, Any]] = page.evaluate(
        "() => axe.run(document, {resultTypes: ['violations']}).then(r => r.violations.map("
        "v => ({id: v.id, impact: v.impact, help: v.help, helpUrl: v.helpUrl,"
        " targets: v.nodes.map(n => n.target.join(' '))})))")
    return [v for v in violations if v["impact"] in impacts]


def axe_scan(page: Page) -> None:
    """Fail, listing each one, if axe-core finds a serious or critical violation on the page."""
    violations = axe_violations(page)
    if violations:
        lines = [f"{v['id']} ({v['impact']}): {v['help']} [{v['helpUrl']}]\n    "
                 + "\n    ".join(v["targets"]) for v in violations]
        raise AssertionError(f"axe-core: {len(violations)} serious or critical violation(s) on "
                             f"{page.url}:\n" + "\n".join(lines))


def screenshot(page: Page, name: str) -> Path:
    """Save a full-page PNG of ``page`` as ``<artifacts>/<name>.png``; its path."""
    if not re.fullmatch(r"[\w.-]+", name):
        raise ValueError(f"a screenshot name is letters, digits, '.', '-' or '_': {name!r}")
    path = artifacts_dir() / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=path, full_page=True)
    return path


def focus_order(page: Page, presses: int, *, key: str = "Tab") -> list[str]:
    """Press ``key`` (Tab, Shift+Tab) ``presses`` times; after each press, the focused element
    as ``tag#id[name=...] "text"`` (the parts it has): keyboard navigation, as a list."""
    described = []
    for _ in range(presses):
        page.keyboard.press(key)
        described.append(page.evaluate("""() => {
            const el = document.activeElement;
            if (!el || el === document.body) return 'body';
            let d = el.tagName.toLowerCase();
            if (el.id) d += '#' + el.id;
            if (el.getAttribute('name')) d += '[name=' + el.getAttribute('name') + ']';
            const text = (el.innerText || el.value || '').trim().slice(0, 40);
            return text ? d + ' "' + text + '"' : d;
        }"""))
    return described


def rendered_fonts(page: Page, selector: str) -> dict[str, int]:
    """The platform fonts Chromium drew the text of ``selector``'s first element with (family
    name -> glyph count), as its DevTools report them: what was drawn, not what CSS asked."""
    cdp = page.context.new_cdp_session(page)
    try:
        cdp.send("DOM.enable")
        cdp.send("CSS.enable")
        root = cdp.send("DOM.getDocument")["root"]["nodeId"]
        node = cdp.send("DOM.querySelector", {"nodeId": root, "selector": selector})["nodeId"]
        if not node:
            raise AssertionError(f"no element matches {selector!r}")
        fonts = cdp.send("CSS.getPlatformFontsForNode", {"nodeId": node})["fonts"]
        return {f["familyName"]: f["glyphCount"] for f in fonts}
    finally:
        cdp.detach()


def sha256_of(path: Path) -> str:
    """The hex SHA-256 of a file."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def wait_for_log(path: Path, marker: str, *, timeout: float = 300) -> None:
    """Wait until ``marker`` appears in the log at ``path``; fail with the log if it does not."""
    deadline = time.monotonic() + timeout
    while marker not in path.read_text(errors="replace"):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{marker!r} not in {path} after {timeout:.0f} s:\n"
                               + path.read_text(errors="replace")[-4000:])
        time.sleep(0.2)
