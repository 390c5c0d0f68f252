"""The console over HTTP without a browser: a client on this machine and the dev login."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient

#: The console on loopback: its session cookie is not Secure there.
LOOPBACK = "http://127.0.0.1"
#: The client's address: this machine (the dev login serves it by default).
HERE = ("127.0.0.1", 50000)

CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def csrf_of(html: str) -> str:
    """The CSRF token a page's forms carry."""
    found = CSRF.search(html)
    assert found is not None, "no CSRF field on the page"
    return found.group(1)


def log_in(client: TestClient, org: str, role: str, *, language: str | None = None,
           fresh: bool = False) -> str:
    """Log in through the dev login (in ``language``, remembered, when given; in a browser
    without cookies when ``fresh``); the session's CSRF token."""
    if fresh:
        client.cookies.clear()
    query = f"?lang={language}" if language else ""
    form = client.get(f"/console/login{query}")
    assert form.status_code == 200, form.text
    r = client.post("/console/login", data={"org": org, "role": role,
                                            "csrf": csrf_of(form.text)},
                    follow_redirects=False)
    assert r.status_code == 303, r.text
    home = client.get(f"/console/{query}")
    assert home.status_code == 200, home.text
    return csrf_of(home.text)
