"""Each role of the demo county logs in through the console's dev login and gets a clean home
page: Chinese by default and English with ``?lang=en``, no console error, no serious or
critical accessibility violation, a screenshot kept."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page

from broker.console.i18n import translations
from broker.demo.story import ACTORS
from tests.console.browser import axe_scan, focus_order, login, rendered_fonts, screenshot

pytestmark = [pytest.mark.console, pytest.mark.e2e]

# Every (organisation, role) the demo county's actors hold.
LOGINS = sorted({(org, role) for _sub, org, roles in ACTORS.values() for role in roles})
HAN = re.compile(r"[\u4e00-\u9fff]")


@pytest.mark.parametrize(("org", "role"), LOGINS, ids=[f"{r}-{o}" for o, r in LOGINS])
def test_each_role_logs_in_to_a_clean_home_page_in_chinese_and_english(
        page: Page, console_base: str, org: str, role: str) -> None:
    zh = translations("zh-CN")
    login(page, console_base, org, role)

    assert page.locator("html").get_attribute("lang") == "zh-CN"
    heading = page.locator("main h1")
    assert heading.inner_text() == zh.gettext("Welcome") != "Welcome"
    assert HAN.search(heading.inner_text())
    assert org in page.locator("main").inner_text()
    assert zh.gettext("Log out") in page.locator("header").inner_text()
    # The Chinese is drawn, every character of it, with the CJK font make test installs.
    assert set(rendered_fonts(page, "main h1")) == {"WenQuanYi Micro Hei"}
    screenshot(page, f"home-{role}-{org}")
    axe_scan(page)

    page.goto(f"{console_base}/console/?lang=en")
    assert page.locator("html").get_attribute("lang") == "en"
    assert heading.inner_text() == "Welcome"
    assert "Log out" in page.locator("header").inner_text()
    assert not HAN.search(page.locator("main").inner_text())
    screenshot(page, f"home-{role}-{org}-en")
    axe_scan(page)


def test_the_login_page_is_clean_and_works_from_the_keyboard(page: Page,
                                                            console_base: str) -> None:
    page.goto(f"{console_base}/console/login")
    assert page.locator("html").get_attribute("lang") == "zh-CN"
    form = page.locator("form", has=page.locator("select[name=org]"))
    assert form.locator("input[type=hidden][name=csrf]").count() == 1
    roles = form.locator("select[name=role] option").evaluate_all("os => os.map(o => o.value)")
    assert sorted(roles) == ["admin", "auditor", "consumer", "provider"]
    screenshot(page, "login")
    axe_scan(page)
    # From the organisation's list, Tab reaches the role's and then the button.
    form.locator("select[name=org]").focus()
    order = focus_order(page, 2)
    assert re.match(r"select\S*\[name=role\]", order[0])
    assert order[1].startswith("button")
