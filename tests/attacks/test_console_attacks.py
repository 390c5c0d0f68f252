"""Attacks on the web console (issue 20), written by someone who did not build it.

Every test is an attack that must fail to do harm. The console's routes are enumerated from
``app.routes`` rather than listed, so pages that land later are attacked too: each path
parameter is filled with a real id of another organisation's object (``OBJECT_PARAMS``); a
parameter this file does not know fails the enumeration, so a new kind of id cannot slip by.

Sessions are the dev login's (on loopback, where it is served by default); the objects are made
through the API (``tests.conftest.World`` plus a dataset with distinctive names and values, so a
leak is found by searching a page for them). Where a test needs a real server (the server log,
the loopback check of the dev login over real sockets) it runs one with ``tests/server.py``.
"""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
import pandas as pd
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from itsdangerous import URLSafeTimedSerializer
from pydantic import SecretStr
from starlette.routing import Mount

from broker.api.auth import mint_token
from broker.app import create_app
from broker.console.session import ConsoleAuth
from broker.settings import Settings
from broker.store.keys import console_secret
from tests.conftest import SECRET, Mint, World, auth, contract_terms, csv_bytes
from tests.server import broker_server

LOOPBACK = "http://127.0.0.1"
HERE = ("127.0.0.1", 50000)
COOKIE = "broker_console"
SALT = "broker-console-session"

# -- the scene: another organisation's objects, named so that a leak is easy to find -----------

#: Names and values that appear nowhere but in grid's secret dataset and what derives from it.
SECRET_NAME = "qz-secret-ledger"
SECRET_FIELDS = ("qz_town", "qz_secret_kwh", "qz_uscc")
SECRET_VALUES = ("Qzalpha", "Qzbeta", "Qzgamma", "QZUSCC0", "987654", "555111")
SLICE_NAME = "qz-slice-of-consent"
CONSENT_SCOPE = "qz-consent-scope-text"
CONSENT_BY = "Qz Board of Directors"

SECRET_FRAME = pd.DataFrame({
    "qz_uscc": [f"QZUSCC{i:04d}" for i in range(12)],
    "qz_town": ["Qzalpha"] * 5 + ["Qzbeta"] * 5 + ["Qzgamma"] * 2,
    "qz_secret_kwh": [987654.25, 986001.5, 985002.5, 984003.5, 983004.5,
                      982005.5, 981006.5, 980007.5, 979008.5, 978009.5,
                      555111.75, 444222.25],
})
SECRET_META: dict[str, Any] = {
    "name": SECRET_NAME,
    "entity_field": "qz_uscc",
    "fields": [
        {"name": "qz_uscc", "type": "string", "role": "entity", "sensitivity": "L2"},
        {"name": "qz_town", "type": "string", "role": "dimension"},
        {"name": "qz_secret_kwh", "type": "number", "role": "measure", "sensitivity": "L2"},
    ],
}
SECRET_CONTRACT_FIELDS = {"qz_town": "clear", "qz_secret_kwh": "aggregate"}


@dataclass
class Scene:
    """grid's secret dataset with a slice, an active and an offered contract to econ, and an
    answer econ was given under the active one."""

    world: World
    dataset: str
    contract: str
    pending: str
    slice: str
    seq: int
    query_id: str
    #: Strings that must not appear in what a stranger is shown.
    markers: tuple[str, ...] = field(default=())

    def ids(self) -> dict[str, str]:
        """The real id to put in each kind of path parameter."""
        return {"dataset_id": self.dataset, "contract_id": self.contract,
                "slice_id": self.slice, "seq": str(self.seq), "query_id": self.query_id,
                "id": self.contract}


#: Path parameters that name an object, and the scene's id for each (``Scene.ids``).
OBJECT_PARAMS = frozenset({"dataset_id", "contract_id", "slice_id", "seq", "query_id", "id"})
#: Path parameters that name no object, with a value that reaches the route.
PLAIN_PARAMS: Mapping[str, tuple[str, ...]] = {
    "rest": ("nowhere",),
    "kind": ("filter", "measure"),  # the query builder's extra rows
}


def absent_ids() -> dict[str, str]:
    """Ids of the same forms that name nothing."""
    other = str(uuid.uuid4())
    return {"dataset_id": other, "contract_id": other, "slice_id": other,
            "seq": str(10**9), "query_id": uuid.uuid4().hex, "id": other}


def auditor_entries(client: TestClient, token: str, after: int = 0) -> list[dict[str, Any]]:
    """Every audit entry after ``after``, read through the API as an auditor."""
    found: list[dict[str, Any]] = []
    cursor: str | None = str(after) if after else None
    while True:
        params = {"limit": "1000", **({"cursor": cursor} if cursor else {})}
        r = client.get("/v1/audit/entries", params=params, headers=auth(token))
        assert r.status_code == 200, r.text
        body = r.json()
        found += [e["entry"] for e in body["entries"]]
        cursor = body["next_cursor"]
        if not cursor:
            return found


def last_seq(client: TestClient, token: str) -> int:
    entries = auditor_entries(client, token)
    return max((int(e["seq"]) for e in entries), default=0)


def make_scene(world: World) -> Scene:
    """Add grid's secret dataset, a slice, two contracts and one released answer to ``world``."""
    c = world.client
    r = c.post("/v1/datasets", headers=auth(world.grid),
               files={"file": ("secret.csv", csv_bytes(SECRET_FRAME), "text/csv")},
               data={"meta": json.dumps(SECRET_META)})
    assert r.status_code == 201, r.text
    dataset = r.json()["id"]
    r = c.post(f"/v1/datasets/{dataset}/slices", headers=auth(world.grid), json={
        "name": SLICE_NAME, "fields": ["qz_town", "qz_secret_kwh"],
        "consent": {"given_by": CONSENT_BY, "given_at": datetime.now(UTC).isoformat(),
                    "scope": CONSENT_SCOPE}})
    assert r.status_code == 201, r.text
    slice_id = r.json()["id"]
    r = c.post("/v1/contracts", headers=auth(world.grid),
               json=contract_terms(dataset, fields=SECRET_CONTRACT_FIELDS))
    assert r.status_code == 201, r.text
    contract = r.json()["id"]
    r = c.post(f"/v1/contracts/{contract}/accept", headers=auth(world.econ))
    assert r.status_code == 200, r.text
    r = c.post("/v1/contracts", headers=auth(world.grid),
               json=contract_terms(dataset, fields=SECRET_CONTRACT_FIELDS))
    assert r.status_code == 201, r.text
    pending = r.json()["id"]
    r = c.post("/v1/queries/aggregate", headers=auth(world.econ), json={
        "contract_id": contract, "purpose": "energy-planning", "group_by": ["qz_town"],
        "measures": [{"fn": "count"}, {"fn": "sum", "field": "qz_secret_kwh"}]})
    assert r.status_code == 200, r.text
    answer = r.json()
    total = sum(cell["values"]["sum_qz_secret_kwh"] for cell in answer["cells"]
                if cell["status"] == "published")
    assert total > 0, answer
    markers = (SECRET_NAME, *SECRET_FIELDS, *SECRET_VALUES, SLICE_NAME, CONSENT_SCOPE,
               CONSENT_BY, f"{total:.2f}", f"{total:,.2f}", str(int(total)),
               f"{int(total):,}")
    return Scene(world=world, dataset=dataset, contract=contract, pending=pending,
                 slice=slice_id, seq=int(answer["receipt"]["seq"]),
                 query_id=str(answer["query_id"]), markers=markers)


# -- sessions ---------------------------------------------------------------------------------


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, html[:2000]
    return found.group(1)


@dataclass(frozen=True)
class Login:
    """A console session: who, the cookie's value and its CSRF token."""

    org: str
    role: str
    cookie: str
    csrf: str

    @property
    def name(self) -> str:
        return f"{self.role}@{self.org}"


def log_in(client: TestClient, org: str, role: str) -> Login:
    """Log in through the dev login; the session (the client's cookie jar is left empty)."""
    client.cookies.clear()
    form = client.get("/console/login")
    assert form.status_code == 200, form.text
    r = client.post("/console/login", data={"org": org, "role": role,
                                            "csrf": csrf_of(form.text)},
                    follow_redirects=False)
    assert r.status_code == 303, r.text
    cookie = client.cookies.get(COOKIE)
    assert cookie
    home = client.get("/console/")
    assert home.status_code == 200, home.text
    client.cookies.clear()
    return Login(org, role, cookie, csrf_of(home.text))


def as_(client: TestClient, who: Login | None, method: str, url: str,
        **kwargs: Any) -> httpx.Response:
    """One request carrying ``who``'s cookie (and nothing the jar kept from before)."""
    client.cookies.clear()
    headers = dict(kwargs.pop("headers", None) or {})
    if who is not None:
        headers["Cookie"] = f"{COOKIE}={who.cookie}"
    try:
        r: httpx.Response = client.request(method, url, headers=headers,
                                           follow_redirects=False, **kwargs)
        return r
    finally:
        client.cookies.clear()


@pytest.fixture
def console(settings: Settings) -> Iterator[TestClient]:
    """One app, reached from loopback (the dev login serves it)."""
    with TestClient(create_app(settings), base_url=LOOPBACK, client=HERE) as c:
        yield c


@pytest.fixture
def world(console: TestClient, mint: Mint) -> World:
    """The conftest world, made through the same app as the console."""
    return World(console, mint)


@pytest.fixture
def scene(world: World) -> Scene:
    return make_scene(world)


@dataclass(frozen=True)
class Cast:
    """Sessions of the parties and of the strangers to the scene's objects."""

    owner: Login  # grid, provider: owns the dataset
    party: Login  # econ, consumer: holds the contract
    auditor: Login
    admin: Login
    strangers: tuple[Login, ...]  # another provider, another department (both roles)

    def everyone(self) -> tuple[Login, ...]:
        return (self.owner, self.party, self.auditor, self.admin, *self.strangers)


@pytest.fixture
def cast(console: TestClient, scene: Scene) -> Cast:
    """The sessions; when the console runs queries, the scene's answer is one econ was shown
    there (its downloads are then what strangers go for)."""
    cast = Cast(owner=log_in(console, "grid", "provider"),
                party=log_in(console, "econ", "consumer"),
                auditor=log_in(console, "audit-office", "auditor"),
                admin=log_in(console, "broker-ops", "admin"),
                strangers=(log_in(console, "water", "provider"),
                           log_in(console, "env", "consumer"),
                           log_in(console, "env", "provider")))
    if has_route(console, "/console/query/run"):
        r = console_query(console, cast.party, scene.contract)
        assert r.status_code == 200, r.text[:3000]
        found = answer_id(r.text)
        assert found, r.text[:3000]
        scene.query_id = found
    return cast


def has_route(client: TestClient, path: str) -> bool:
    return any(r.path == path for r in console_routes(app_of(client)))


def console_query(client: TestClient, who: Login, contract: str, *, run: bool = True,
                  headers: Mapping[str, str] | None = None, **fields: Any) -> httpx.Response:
    """The query builder's form posted (run, or the dry run): by default the sum and count of
    the secret dataset's kWh by town."""
    form: dict[str, Any] = {"csrf": who.csrf, "contract": contract,
                            "purpose": "energy-planning", "group_by": ["qz_town"],
                            "measure_fn": ["count", "sum"],
                            "measure_field": ["", "qz_secret_kwh"]}
    form.update(fields)
    return as_(client, who, "POST", "/console/query/run" if run else "/console/query/explain",
               data=form, headers=dict(headers or {}))


def answer_id(html: str) -> str | None:
    """The id of the answer a results page offers for download."""
    found = re.search(r'/console/query/results/([^"/?]+)\.csv', html)
    return found.group(1) if found else None


# -- the routes -------------------------------------------------------------------------------

PARAM = re.compile(r"\{(\w+)(?::\w+)?\}")


@dataclass(frozen=True)
class ConsoleRouteInfo:
    path: str
    methods: frozenset[str]
    params: tuple[str, ...]

    def objects(self) -> tuple[str, ...]:
        return tuple(p for p in self.params if p in OBJECT_PARAMS)

    def urls(self, ids: Mapping[str, str]) -> list[str]:
        """The route's path with every parameter filled (one URL per plain value)."""
        plain = [p for p in self.params if p not in OBJECT_PARAMS]
        choices: list[dict[str, str]] = [{}]
        for p in plain:
            choices = [{**c, p: v} for c in choices for v in PLAIN_PARAMS[p]]
        return [fill(self.path, {**ids, **c}) for c in choices]


def _flat_routes(routes: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(full path, route) of every route, through included routers (FastAPI wraps them with
    their prefix)."""
    for route in routes:
        if hasattr(route, "original_router"):
            context = getattr(route, "include_context", None)
            yield from _flat_routes(route.original_router.routes,
                                    prefix + (getattr(context, "prefix", "") or ""))
        elif not isinstance(route, Mount):
            yield prefix + getattr(route, "path", ""), route


def fill(path: str, values: Mapping[str, str]) -> str:
    """``path`` with each ``{name}`` or ``{name:convertor}`` replaced by its value."""
    return PARAM.sub(lambda m: values[m.group(1)], path)


def console_routes(app: FastAPI) -> list[ConsoleRouteInfo]:
    """Every route under /console (the static files aside), with its path parameters; a
    parameter this file does not know is an error, so that no new id goes unattacked."""
    found: list[ConsoleRouteInfo] = []
    for path, route in _flat_routes(app.routes):
        if not (path == "/console" or path.startswith("/console/")):
            continue
        params = tuple(PARAM.findall(path))
        unknown = [p for p in params if p not in OBJECT_PARAMS and p not in PLAIN_PARAMS]
        assert not unknown, (f"{path}: path parameters {unknown} are new; say in "
                             "OBJECT_PARAMS or PLAIN_PARAMS what they name")
        found.append(ConsoleRouteInfo(path, frozenset(getattr(route, "methods", None) or ()),
                                      params))
    assert found
    return found


def object_routes(app: FastAPI) -> list[ConsoleRouteInfo]:
    return [r for r in console_routes(app) if r.objects()]


def post_routes(app: FastAPI) -> list[ConsoleRouteInfo]:
    """The POST routes (the catch-all 404 aside: it does nothing)."""
    return [r for r in console_routes(app) if "POST" in r.methods and "rest" not in r.params]


def get_routes(app: FastAPI) -> list[ConsoleRouteInfo]:
    return [r for r in console_routes(app) if "GET" in r.methods]


def app_of(client: TestClient) -> FastAPI:
    app = client.app
    assert isinstance(app, FastAPI)
    return app


# -- what a page may not hold -----------------------------------------------------------------


def leaks(body: str, markers: tuple[str, ...]) -> list[str]:
    return [m for m in markers if m.lower() in body.lower()]


def is_html(response: httpx.Response) -> bool:
    return str(response.headers.get("content-type", "")).startswith("text/html")


class Inspector(HTMLParser):
    """What a page holds that the CSP or plain escaping should have kept out."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.faults: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = {k.lower(): (v or "") for k, v in attrs}
        if tag == "script":
            src = names.get("src", "")
            if not src:
                self.faults.append("inline <script>")
                self._in_script = True
            elif not src.startswith("/console/static/"):
                self.faults.append(f"<script src={src!r}> from elsewhere")
        if tag == "style":
            self.faults.append("inline <style>")
        for name, value in names.items():
            if name.startswith("on"):
                self.faults.append(f"<{tag} {name}=...> event handler")
            if name == "style":
                self.faults.append(f"<{tag} style=...> inline style")
            if name in ("href", "src", "action", "formaction", "hx-get", "hx-post",
                        "data") and re.sub(r"\s", "", value).lower().startswith(
                            ("javascript:", "vbscript:", "data:text")):
                self.faults.append(f"<{tag} {name}={value!r}> script URL")
            if name.startswith("hx-on"):
                self.faults.append(f"<{tag} {name}> htmx inline handler")
        if tag == "img" and names.get("src") == "x":
            self.faults.append("injected <img src=x>")

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.faults.append("inline script text")

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False


def html_faults(body: str) -> list[str]:
    inspector = Inspector()
    inspector.feed(body)
    inspector.close()
    return inspector.faults


def header_faults(response: httpx.Response) -> list[str]:
    """The security headers a console response lacks."""
    h = response.headers
    faults = []
    csp = h.get("content-security-policy", "")
    if not csp:
        faults.append("no Content-Security-Policy")
    else:
        if "unsafe-inline" in csp or "unsafe-eval" in csp:
            faults.append("CSP allows unsafe-inline/unsafe-eval")
        if "frame-ancestors 'none'" not in csp:
            faults.append("CSP without frame-ancestors 'none'")
        script = re.search(r"script-src ([^;]*)", csp) or re.search(r"default-src ([^;]*)", csp)
        if script is None or "*" in script.group(1) or "data:" in script.group(1):
            faults.append("CSP lets scripts come from anywhere")
    if h.get("x-content-type-options", "").lower() != "nosniff":
        faults.append("no X-Content-Type-Options: nosniff")
    if "no-store" not in h.get("cache-control", ""):
        faults.append("no Cache-Control: no-store")
    return faults


# == 1. Another organisation's objects through every console URL ==============================


def test_the_routes_under_attack_include_every_console_page(console: TestClient) -> None:
    routes = console_routes(app_of(console))
    paths = {r.path for r in routes}
    assert "/console/" in paths
    assert "/console/login" in paths
    assert any(r.params for r in routes)


def test_no_console_url_shows_another_organisations_object(
        console: TestClient, scene: Scene, cast: Cast) -> None:
    """Every route with an object in its path, every method, as every stranger: a 403 or 404
    HTML page with nothing of the object, and the same status as for an id that names
    nothing (no oracle of existence)."""
    faults: list[str] = []
    real, absent = scene.ids(), absent_ids()
    for route in object_routes(app_of(console)):
        for method in sorted(route.methods - {"HEAD"}):
            for who in cast.strangers:
                data = {**plausible_form(real), "csrf": who.csrf} if method == "POST" else None
                for url, nothing in zip(route.urls(real), route.urls(absent), strict=True):
                    r = as_(console, who, method, url, data=data)
                    if r.status_code not in (403, 404):
                        faults.append(f"{method} {url} as {who.name}: {r.status_code}")
                    elif not is_html(r):
                        faults.append(f"{method} {url} as {who.name}: not a page "
                                      f"({r.headers.get('content-type')})")
                    if found := leaks(r.text, scene.markers):
                        faults.append(f"{method} {url} as {who.name} shows {found}")
                    other = as_(console, who, method, nothing, data=data)
                    if other.status_code != r.status_code:
                        faults.append(f"{method} {route.path} as {who.name}: {r.status_code} "
                                      f"for a real id, {other.status_code} for none")
    assert not faults, "\n".join(faults)


def test_every_attempt_on_another_organisations_object_is_audited(
        console: TestClient, scene: Scene, cast: Cast) -> None:
    """The issue: "A consumer cannot reach another organisation's objects through any console
    URL (404, audited)". Each attempt leaves a refusal by the stranger's organisation."""
    world = scene.world
    faults: list[str] = []
    for route in object_routes(app_of(console)):
        for method in sorted(route.methods - {"HEAD"}):
            for who in cast.strangers:
                data = ({**plausible_form(scene.ids()), "csrf": who.csrf} if method == "POST"
                        else None)
                for url in route.urls(scene.ids()):
                    before = last_seq(console, world.auditor)
                    r = as_(console, who, method, url, data=data)
                    new = auditor_entries(console, world.auditor, before)
                    refused = [e for e in new if e["actor"]["org"] == who.org
                               and not e["decision"]["allowed"]]
                    if not refused:
                        faults.append(f"{method} {url} as {who.name}: not audited "
                                      f"({r.status_code})")
    assert not faults, "\n".join(faults)


QUERY_ID_PARAMS = ("dataset_id", "contract_id", "slice_id", "seq", "query_id")
#: How pages name an object in their query string or form: (parameter, kind of id).
QUERY_STRING_IDS = (*((p, p) for p in QUERY_ID_PARAMS), ("contract", "contract_id"),
                    ("dataset", "dataset_id"), ("slice", "slice_id"), ("entry", "seq"),
                    ("query", "query_id"))


def test_ids_in_the_query_string_show_nothing_of_another_organisation(
        console: TestClient, scene: Scene, cast: Cast) -> None:
    """Every GET page without path parameters, as every stranger, with another
    organisation's id in the query string: whatever the page answers, it shows nothing of
    the object."""
    faults: list[str] = []
    ids = scene.ids()
    for route in get_routes(app_of(console)):
        if route.objects() or route.path in ("/console", "/console/login"):
            continue
        for url in route.urls(ids):
            for who in cast.strangers:
                for name, kind in QUERY_STRING_IDS:
                    r = as_(console, who, "GET", url, params={name: ids[kind]})
                    if r.status_code >= 500:
                        faults.append(f"GET {url}?{name}= as {who.name}: {r.status_code}")
                    if found := leaks(r.text, scene.markers):
                        faults.append(f"GET {url}?{name}= as {who.name} shows {found}")
    assert not faults, "\n".join(faults)


def test_form_fields_naming_another_organisations_object_change_nothing(
        console: TestClient, scene: Scene, cast: Cast) -> None:
    """Every POST route, as every stranger, with the session's own CSRF token and another
    organisation's ids in the form: nothing of the object is shown and nothing changes."""
    world = scene.world
    before = state_of(console, world)
    faults: list[str] = []
    ids = scene.ids()
    form = plausible_form(ids)
    for route in post_routes(app_of(console)):
        if route.path in ("/console/login", "/console/logout"):
            continue
        for who in cast.strangers:
            for url in route.urls(ids):
                r = as_(console, who, "POST", url, data={**form, "csrf": who.csrf})
                if r.status_code < 300 or r.status_code >= 500:
                    faults.append(f"POST {url} as {who.name}: {r.status_code}")
                if found := leaks(r.text, scene.markers):
                    faults.append(f"POST {url} as {who.name} shows {found}")
    assert state_of(console, world) == before
    assert not faults, "\n".join(faults)


def plausible_form(ids: Mapping[str, str]) -> dict[str, Any]:
    """A form that passes the console's forms' checks of shape (ids, a purpose, a query, a
    well-formed signature), so that what stops a stranger is the ownership check."""
    form: dict[str, Any] = {name: ids[kind] for name, kind in QUERY_STRING_IDS}
    form |= {"purpose": "energy-planning", "group_by": "qz_town", "measure_fn": "count",
             "fn": "count", "signature": base64.b64encode(bytes(64)).decode()}
    return form


def state_of(client: TestClient, world: World) -> dict[str, Any]:
    """What writes would change, read through the API: contracts, datasets and their
    versions, slices, organisations, and the allowed writes in the audit log."""
    contracts = client.get("/v1/contracts", headers=auth(world.auditor))
    datasets = client.get("/v1/datasets", headers=auth(world.auditor))
    orgs = client.get("/v1/orgs", headers=auth(world.admin))
    for r in (contracts, datasets, orgs):
        assert r.status_code == 200, r.text
    slices = {}
    for d in datasets.json():
        s = client.get(f"/v1/datasets/{d['id']}/slices", headers=auth(world.auditor))
        assert s.status_code == 200, s.text
        slices[d["id"]] = sorted(x["id"] for x in s.json())
    writes = [(e["action"], e["actor"]["org"]) for e in auditor_entries(client, world.auditor)
              if e["decision"]["allowed"] and not e["action"].endswith(
                  (".read", ".list", ".proof", ".checkpoints", ".verify", ".explain",
                   ".accesses", ".download"))]
    return {
        "contracts": sorted((c["id"], c["status"], c.get("signatures") and len(
            c["signatures"])) for c in contracts.json()),
        "datasets": sorted((d["id"], d.get("version")) for d in datasets.json()),
        "orgs": sorted(o["id"] for o in orgs.json()),
        "slices": slices,
        "writes": writes,
    }


# == 2. CSRF ==================================================================================

EVIL = "https://evil.example"


def csrf_attempts(who: Login, other: Login) -> list[tuple[str, dict[str, Any], str]]:
    """Ways to send a POST without proving it came from ``who``'s own console page:
    (label, request arguments, extra query string)."""
    return [
        ("no token", {"data": {}}, ""),
        ("another session's token", {"data": {"csrf": other.csrf}}, ""),
        ("another session's token in the header",
         {"headers": {"X-CSRF-Token": other.csrf}}, ""),
        ("the token in the query string", {"data": {}}, f"?csrf={who.csrf}"),
        ("the token in a JSON body", {"json": {"csrf": who.csrf}}, ""),
        ("the token in another header", {"headers": {"X-CSRFToken": who.csrf}}, ""),
        ("the token as a cookie", {"headers": {"Cookie": f"csrf={who.csrf}"}}, ""),
        ("an empty token", {"data": {"csrf": ""}}, ""),
        ("a cross-site Origin", {"data": {"csrf": who.csrf},
                                 "headers": {"Origin": EVIL}}, ""),
        ("a null Origin", {"data": {"csrf": who.csrf}, "headers": {"Origin": "null"}}, ""),
        ("a look-alike Origin", {"data": {"csrf": who.csrf},
                                 "headers": {"Origin": "http://127.0.0.1.evil.example"}}, ""),
        ("a cross-site Origin with the header token",
         {"headers": {"Origin": EVIL, "X-CSRF-Token": who.csrf}}, ""),
    ]


def test_no_console_post_succeeds_without_the_sessions_csrf_token(
        console: TestClient, scene: Scene, cast: Cast) -> None:
    """Every POST route, as every party that could legitimately use it, with the token
    missing, foreign, misplaced or from another origin: a 403, and nothing changes."""
    world = scene.world
    before = state_of(console, world)
    faults: list[str] = []
    sessions = (cast.owner, cast.party, cast.auditor, cast.admin)
    for route in post_routes(app_of(console)):
        for url in route.urls(scene.ids()):
            for who in sessions:
                other = cast.strangers[0]
                for label, kwargs, query in csrf_attempts(who, other):
                    headers = dict(kwargs.get("headers", {}))
                    if "Cookie" in headers:  # a second cookie beside the session's
                        headers["Cookie"] = f"{COOKIE}={who.cookie}; {headers['Cookie']}"
                        client_kwargs = {**kwargs, "headers": headers}
                        console.cookies.clear()
                        r = console.post(url + query, follow_redirects=False, **client_kwargs)
                    else:
                        r = as_(console, who, "POST", url + query, **kwargs)
                    if r.status_code != 403:
                        faults.append(f"POST {url} as {who.name} with {label}: "
                                      f"{r.status_code}")
                    if "set-cookie" in r.headers and COOKIE in r.headers["set-cookie"]:
                        faults.append(f"POST {url} as {who.name} with {label} changed the "
                                      "session cookie")
    assert state_of(console, world) == before
    for who in sessions:  # nobody was logged out or switched
        home = as_(console, who, "GET", "/console/")
        assert home.status_code == 200
        assert who.org in home.text
    assert not faults, "\n".join(faults)


def test_login_csrf_a_login_form_posted_from_elsewhere_does_not_log_in(
        console: TestClient, world: World) -> None:
    """An attacker's page makes the victim's browser log in as the attacker's organisation:
    without the victim's session and its token, or from another origin, it fails."""
    console.cookies.clear()
    # No session at all (SameSite keeps the cookie off a cross-site POST): refused.
    r = console.post("/console/login", data={"org": "water", "role": "provider",
                                             "csrf": "anything"}, follow_redirects=False)
    assert r.status_code == 403
    assert COOKIE not in r.headers.get("set-cookie", "") or "Max-Age=0" in r.headers.get(
        "set-cookie", "")
    # The attacker's own valid anonymous pair, posted from the attacker's origin: refused.
    form = console.get("/console/login")
    token = csrf_of(form.text)
    r = console.post("/console/login", data={"org": "water", "role": "provider",
                                             "csrf": token},
                     headers={"Origin": EVIL}, follow_redirects=False)
    assert r.status_code == 403
    assert console.get("/console/", follow_redirects=False).status_code == 303
    # A logged-in victim (econ) is not switched to another organisation without its token.
    victim = log_in(console, "econ", "consumer")
    for data in ({"org": "water", "role": "provider"},
                 {"org": "water", "role": "provider", "csrf": token}):
        r = as_(console, victim, "POST", "/console/login", data=data)
        assert r.status_code == 403, data
        assert COOKIE not in r.headers.get("set-cookie", "")


# == 3. Sessions ==============================================================================


def cookie_with(settings: Settings, doc: Mapping[str, Any], *, age: int = 0,
                secret: bytes | None = None) -> str:
    """A session cookie holding ``doc`` as sealed ``age`` seconds ago with ``secret`` (the
    broker's own key when None: what only the broker could make, e.g. from an OIDC login)."""
    auth = ConsoleAuth(secret=secret if secret is not None else console_secret(settings),
                       max_age=settings.console_session_seconds)
    fernet = auth._fernet  # the broker's own sealing, so the test follows any change to it
    body = json.dumps(dict(doc), separators=(",", ":")).encode()
    return fernet.encrypt_at_time(body, int(time.time()) - age).decode("ascii").rstrip("=")


def logged_in_as(client: TestClient, cookie: str, path: str = "/console/") -> httpx.Response:
    """``path`` requested with nothing but ``cookie`` as the session cookie."""
    client.cookies.clear()
    try:
        r: httpx.Response = client.get(path, headers={"Cookie": f"{COOKIE}={cookie}"},
                                       follow_redirects=False)
        return r
    finally:
        client.cookies.clear()


def test_a_cookie_forged_without_the_key_is_no_session(console: TestClient,
                                                       world: World) -> None:
    econ = log_in(console, "econ", "consumer")
    settings = world_settings(console)
    doc = {"csrf": "x", "token": world.grid}
    forged = [
        # Unsealed JSON; the bare bearer token; an empty cookie.
        json.dumps(doc), world.grid, "",
        # A real cookie with a character changed near its end (its MAC) and in its body.
        econ.cookie[:-2] + ("AA" if not econ.cookie.endswith("AA") else "BB"),
        econ.cookie[:40] + ("A" if econ.cookie[40] != "A" else "B") + econ.cookie[41:],
        # Sealed by another broker's key; signed (not sealed) with this broker's own key.
        cookie_with(settings, doc, secret=os.urandom(32)),
        URLSafeTimedSerializer(console_secret(settings), salt=SALT).dumps(doc),
    ]
    for value in forged:
        r = logged_in_as(console, value)
        assert r.status_code == 303, value
        assert r.headers["location"].startswith("/console/login")


def world_settings(client: TestClient) -> Settings:
    found = app_of(client).state.container.settings
    assert isinstance(found, Settings)
    return found


def test_an_expired_session_is_no_session(console: TestClient, world: World) -> None:
    settings = world_settings(console)
    token = mint_token(key=SECRET, issuer=settings.jwt_issuer, audience=settings.jwt_audience,
                       sub="console:consumer@econ", org="econ", roles=["consumer"], ttl=600)
    fresh = cookie_with(settings, {"csrf": "c", "token": token})
    assert logged_in_as(console, fresh).status_code == 200  # the forgery tool works
    stale = cookie_with(settings, {"csrf": "c", "token": token},
                        age=settings.console_session_seconds + 5)
    r = logged_in_as(console, stale)
    assert r.status_code == 303
    # The cookie is young but the token inside has expired.
    expired = mint_token(key=SECRET, issuer=settings.jwt_issuer,
                         audience=settings.jwt_audience, sub="console:consumer@econ",
                         org="econ", roles=["consumer"], ttl=-120)
    r = logged_in_as(console, cookie_with(settings, {"csrf": "c", "token": expired}))
    assert r.status_code == 303


def test_a_session_of_an_unregistered_or_misfit_principal_opens_nothing(
        console: TestClient, world: World) -> None:
    """A cookie only the broker could sign (an OIDC token, say) naming an organisation never
    registered, or a role its kind does not allow: a 403 page on every page, audited."""
    settings = world_settings(console)
    cases = [("ghost", "provider"), ("ghost", "consumer"), ("grid", "auditor"),
             ("grid", "consumer"), ("audit-office", "provider"), ("econ", "admin"),
             ("econ", "auditor")]
    for org, role in cases:
        token = mint_token(key=SECRET, issuer=settings.jwt_issuer,
                           audience=settings.jwt_audience, sub=f"misfit@{org}", org=org,
                           roles=[role], ttl=600)
        cookie = cookie_with(settings, {"csrf": "c", "token": token})
        before = last_seq(console, world.auditor)
        for path in ("/console/", "/console/contracts", "/console/datasets", "/console/audit",
                     "/console/operator", "/console/query"):
            client_r = logged_in_as(console, cookie, path)
            assert client_r.status_code == 403, (org, role, path, client_r.status_code)
            assert is_html(client_r)
        new = auditor_entries(console, world.auditor, before)
        assert any(e["actor"]["org"] == org and not e["decision"]["allowed"]
                   for e in new), (org, role)


def test_the_console_cookie_never_authenticates_the_api(console: TestClient,
                                                         world: World) -> None:
    econ = log_in(console, "econ", "consumer")
    for path in ("/v1/contracts", "/v1/datasets", "/v1/audit/entries"):
        console.cookies.clear()
        r = console.get(path, headers={"Cookie": f"{COOKIE}={econ.cookie}"})
        assert r.status_code == 401, (path, r.status_code)
    # Nor for a write, nor through a path that only looks like the console's.
    console.cookies.clear()
    r = console.post("/v1/queries/aggregate", headers={"Cookie": f"{COOKIE}={econ.cookie}"},
                     json={"contract_id": world.contract["id"], "purpose": "energy-planning",
                           "measures": [{"fn": "count"}]})
    assert r.status_code == 401
    for path in ("/console/../v1/contracts", "/console/%2e%2e/v1/contracts",
                 "/consolex/../v1/contracts"):
        r = console.get(path, headers={"Cookie": f"{COOKIE}={econ.cookie}"},
                        follow_redirects=False)
        assert r.status_code in (303, 401, 404), path
        assert world.contract["id"] not in r.text


def test_a_bearer_token_never_opens_the_console(console: TestClient, world: World) -> None:
    for token in (world.grid, world.econ, world.auditor, world.admin):
        for path in ("/console/", "/console/contracts", "/console/audit"):
            console.cookies.clear()
            r = console.get(path, headers=auth(token), follow_redirects=False)
            assert r.status_code == 303, (path, r.status_code)
            assert r.headers["location"].startswith("/console/login")


def test_a_huge_or_malformed_cookie_is_refused_cleanly(console: TestClient,
                                                       world: World) -> None:
    for value in ("A" * 3801, "A" * 60_000, "%00" * 100, '"' + "x" * 100, "%C3%A9" * 100,
                  "a.b.c.d.e"):
        console.cookies.clear()
        r = console.get("/console/", headers={"Cookie": f"{COOKIE}={value}"},
                        follow_redirects=False)
        assert r.status_code in (303, 400, 431), r.status_code
    settings = world_settings(console)
    big = cookie_with(settings, {"csrf": "c", "token": world.econ,
                                 "pad": os.urandom(3000).hex()})
    assert len(big) > 3800
    assert logged_in_as(console, big).status_code == 303


def test_a_cookie_set_before_login_is_not_the_logged_in_session(console: TestClient,
                                                                 world: World) -> None:
    """Session fixation: an anonymous session the attacker planted (its cookie and CSRF token
    known to the attacker) is not the one the victim ends up logged in with."""
    console.cookies.clear()
    form = console.get("/console/login")
    planted = console.cookies.get(COOKIE)
    planted_csrf = csrf_of(form.text)
    assert planted
    r = console.post("/console/login", data={"org": "econ", "role": "consumer",
                                             "csrf": planted_csrf}, follow_redirects=False)
    assert r.status_code == 303
    after = console.cookies.get(COOKIE)
    assert after
    assert after != planted
    # The planted cookie is still anonymous, and its CSRF token opens nothing of the session.
    assert logged_in_as(console, planted).status_code == 303
    victim = Login("econ", "consumer", after, planted_csrf)
    r = as_(console, victim, "POST", "/console/logout", data={"csrf": planted_csrf})
    assert r.status_code == 403
    assert logged_in_as(console, after).status_code == 200


@pytest.mark.xfail(strict=True, reason=(
    "known limit (README, 'Sessions'): the session is the sealed cookie alone, with no "
    "server-side store, so a copy taken before logout stays good until it expires; strict, "
    "so this fails the day logout revokes"))
def test_a_session_cookie_stops_working_after_logout(console: TestClient,
                                                      world: World) -> None:
    """A cookie copied before the user logged out (a shared computer, a proxy log) must not
    keep the session alive: logging out ends the session on the server too."""
    econ = log_in(console, "econ", "consumer")
    r = as_(console, econ, "POST", "/console/logout", data={"csrf": econ.csrf})
    assert r.status_code == 303
    replayed = logged_in_as(console, econ.cookie)
    assert replayed.status_code == 303, (
        "the session cookie still opens the console after logout "
        f"({replayed.status_code}): the session lives only in the sealed cookie (the README "
        "calls this a known limit; nothing on the server ends the session)")


# == 4. XSS, template injection and redirects =================================================

XSS = ('<script>alert("x1")</script>"><img src=x onerror=alert(2)>{{7*7}}'
       "{% raw %}${7*7}javascript:alert(3)")


def xss_faults(body: str) -> list[str]:
    faults = html_faults(body)
    if "<script>alert" in body:
        faults.append("payload script tag unescaped")
    if "onerror=alert(2)>" in body and "&lt;img" not in body:
        faults.append("payload img tag unescaped")
    return faults


def test_hostile_names_are_escaped_on_every_page(console: TestClient, mint: Mint,
                                                 world: World) -> None:
    """Organisation names (free text) and consent records carrying script, markup and
    template syntax: escaped, never executed nor evaluated, on every page each role reaches."""
    c = world.client
    r = c.post("/v1/orgs", headers=auth(world.admin),
               json={"id": "xss-dept", "name": XSS + " dept", "kind": "department"})
    assert r.status_code == 201, r.text
    r = c.post("/v1/orgs", headers=auth(world.admin),
               json={"id": "xss-firm", "name": XSS + " firm", "kind": "enterprise"})
    assert r.status_code == 201, r.text
    xss_firm = mint("xss-firm", "provider")
    frame = pd.DataFrame({"uscc": [f"X{i}" for i in range(6)],
                          "town": [XSS] * 4 + ["<b>b</b>"] * 2,
                          "kwh": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]})
    meta = {"name": "xss-data", "entity_field": "uscc", "fields": [
        {"name": "uscc", "type": "string", "role": "entity"},
        {"name": "town", "type": "string", "role": "dimension"},
        {"name": "kwh", "type": "number", "role": "measure"}]}
    r = c.post("/v1/datasets", headers=auth(xss_firm),
               files={"file": ("x.csv", csv_bytes(frame), "text/csv")},
               data={"meta": json.dumps(meta)})
    assert r.status_code == 201, r.text
    dataset = r.json()["id"]
    r = c.post(f"/v1/datasets/{dataset}/slices", headers=auth(xss_firm), json={
        "name": "xss-slice", "fields": ["town", "kwh"],
        "consent": {"given_by": XSS, "given_at": datetime.now(UTC).isoformat(),
                    "scope": XSS, "reference": XSS}})
    assert r.status_code == 201, r.text
    r = c.post("/v1/contracts", headers=auth(xss_firm), json=contract_terms(
        dataset, consumer_org="xss-dept", fields={"town": "clear", "kwh": "aggregate"}))
    assert r.status_code == 201, r.text
    contract = r.json()["id"]
    r = c.post(f"/v1/contracts/{contract}/accept", headers=auth(mint("xss-dept", "consumer")))
    assert r.status_code == 200, r.text
    r = c.post("/v1/queries/aggregate", headers=auth(mint("xss-dept", "consumer",
                                                          sub=f"{XSS}sub")), json={
        "contract_id": contract, "purpose": "energy-planning", "group_by": ["town"],
        "measures": [{"fn": "count"}],
        "filters": [{"field": "town", "op": "in", "value": [XSS, "<b>b</b>"]}]})
    assert r.status_code == 200, r.text
    ids = {"dataset_id": dataset, "contract_id": contract, "slice_id": r.json()["query_id"],
           "seq": str(r.json()["receipt"]["seq"]), "query_id": r.json()["query_id"],
           "id": contract}
    faults: list[str] = []
    login_page = console.get("/console/login")
    assert "xss-dept" in login_page.text
    faults += [f"/console/login: {f}" for f in xss_faults(login_page.text)]
    sessions = [log_in(console, "xss-firm", "provider"), log_in(console, "xss-dept",
                                                                 "consumer"),
                log_in(console, "audit-office", "auditor"), log_in(console, "broker-ops",
                                                                    "admin")]
    for who in sessions:
        for route in get_routes(app_of(console)):
            for url in route.urls(ids):
                for lang in ("en", "zh-CN"):
                    r = as_(console, who, "GET", url, params={"lang": lang})
                    if is_html(r):
                        faults += [f"GET {url} as {who.name}: {f}" for f in xss_faults(r.text)]
    assert not faults, "\n".join(sorted(set(faults)))


def test_query_parameters_echoed_in_pages_are_escaped(console: TestClient,
                                                      scene: Scene, cast: Cast) -> None:
    """Every GET page, as every role, with hostile values in the query parameters pages
    commonly echo (filters, next, cursors): escaped, never executed."""
    faults: list[str] = []
    names = ("next", "actor", "org", "action", "consumer", "purpose", "decision", "q",
             "since", "until", "registered", "error", "message", "dataset_id", "contract_id",
             "cursor", "before", "after", "by", "kind", "status")
    for who in (cast.owner, cast.party, cast.auditor, cast.admin, None):
        for route in get_routes(app_of(console)):
            for url in route.urls(scene.ids()):
                r = as_(console, who, "GET", url, params=dict.fromkeys(names, XSS))
                if r.status_code >= 500:
                    faults.append(f"GET {url}: {r.status_code}")
                if is_html(r):
                    faults += [f"GET {url} as {who.name if who else 'nobody'}: {f}"
                               for f in xss_faults(r.text)]
    assert not faults, "\n".join(sorted(set(faults)))


REDIRECT_TARGETS = ("https://evil.example/", "//evil.example/x", "///evil.example/x",
                    "/\\evil.example", "\\\\evil.example", "/console\\@evil.example",
                    "javascript:alert(1)", "/console/../v1/contracts", "https:evil.example",
                    "/console//evil.example", "/console/%2F%2Fevil.example",
                    "\t//evil.example", " //evil.example", "/console@evil.example",
                    "%2F%2Fevil.example", "/console/\r\nLocation: https://evil.example")


def test_no_redirect_leaves_the_console(console: TestClient, world: World) -> None:
    """``next`` (and any other redirect parameter) never sends the browser off the console:
    through the dev login, the login page's links and every route's redirects."""
    faults: list[str] = []
    for target in REDIRECT_TARGETS:
        console.cookies.clear()
        form = console.get("/console/login", params={"next": target})
        faults += [f"login page next={target!r}: {f}" for f in html_faults(form.text)]
        for href in re.findall(r'<(?:a|form)\b[^>]*?\b(?:href|action)="([^"]*)"', form.text):
            where = urlsplit(urljoin(f"{LOOPBACK}/console/login", href.replace("&amp;", "&")))
            if where.netloc != "127.0.0.1" or not where.path.startswith("/console"):
                faults.append(f"login page next={target!r} links to {href}")
        r = console.post("/console/login", data={"org": "econ", "role": "consumer",
                                                 "csrf": csrf_of(form.text), "next": target},
                         follow_redirects=False)
        location = r.headers.get("location", "")
        if not safe_location(location):
            faults.append(f"next={target!r} -> {location!r}")
    econ = log_in(console, "econ", "consumer")
    for route in get_routes(app_of(console)):
        if route.params:
            continue
        for name in ("next", "redirect", "return", "return_to", "url", "back"):
            for target in REDIRECT_TARGETS[:5]:
                r = as_(console, econ, "GET", route.path, params={name: target})
                location = r.headers.get("location", "")
                if r.is_redirect and not safe_location(location):
                    faults.append(f"GET {route.path}?{name}={target!r} -> {location!r}")
                if r.headers.get("hx-redirect") and not safe_location(
                        r.headers["hx-redirect"]):
                    faults.append(f"GET {route.path}?{name}= HX-Redirect "
                                  f"{r.headers['hx-redirect']!r}")
    assert not faults, "\n".join(faults)


def safe_location(location: str) -> bool:
    """Whether a redirect stays on this site under /console (browsers read ``\\`` as ``/``)."""
    if not location:
        return True
    if any(ch in location for ch in "\\\r\n\t"):
        return False
    parts = urlsplit(location)
    if parts.scheme or parts.netloc:
        return parts.netloc == "127.0.0.1" and parts.path.startswith("/console")
    return location.startswith("/console") and not location.startswith("//")


# == 5. CSP and headers on every console response =============================================


def test_every_console_response_carries_the_security_headers_and_no_inline_code(
        console: TestClient, scene: Scene, cast: Cast) -> None:
    """Pages, fragments, errors, redirects and downloads, as every role and as nobody: the
    headers, and no inline script, style or handler in any HTML rendered."""
    faults: list[str] = []
    seen = 0
    for who in (*cast.everyone(), None):
        name = who.name if who else "nobody"
        for route in get_routes(app_of(console)):
            if route.path == "/console":  # the bare redirect: the next test
                continue
            for url in route.urls(scene.ids()):
                for headers in ({}, {"HX-Request": "true"}):
                    r = as_(console, who, "GET", url, headers=headers)
                    seen += 1
                    faults += [f"GET {url} as {name} ({r.status_code}): {f}"
                               for f in header_faults(r)]
                    if is_html(r):
                        faults += [f"GET {url} as {name}: {f}" for f in html_faults(r.text)]
    assert seen > 10
    assert not faults, "\n".join(sorted(set(faults)))


def test_console_error_and_edge_responses_carry_the_security_headers(
        console: TestClient, world: World) -> None:
    """The responses that are not a route's page: the bare ``/console`` redirect, a method
    the route does not take, a static file, an unknown static file, a malformed query."""
    econ = log_in(console, "econ", "consumer")
    faults: list[str] = []
    cases = [("GET", "/console", None), ("PUT", "/console/", econ),
             ("DELETE", "/console/login", None), ("GET", "/console/?lang=%00", econ),
             ("GET", "/console/nowhere", econ), ("GET", "/console/nowhere", None),
             ("POST", "/console/nowhere", econ)]
    for method, url, who in cases:
        r = as_(console, who, method, url)
        faults += [f"{method} {url} ({r.status_code}): {f}" for f in header_faults(r)]
    # Static files are scripts and styles, not pages: they need nosniff (a script served as
    # something else must not run), and must not be reachable outside the static folder.
    for url in ("/console/static/console.js", "/console/static/console.css",
                "/console/static/vendor/htmx.min.js", "/console/static/nothing.js"):
        r = as_(console, None, "GET", url)
        if r.headers.get("x-content-type-options", "").lower() != "nosniff":
            faults.append(f"GET {url} ({r.status_code}): no X-Content-Type-Options: nosniff")
    for url in ("/console/static/../templates/base.html", "/console/static/%2e%2e/web.py",
                "/console/static/..%2fweb.py"):
        r = as_(console, None, "GET", url)
        if r.status_code == 200 and ("{%" in r.text or "import" in r.text):
            faults.append(f"GET {url} serves a file outside the static folder")
    assert not faults, "\n".join(faults)


# == 7. The dev login ========================================================================


def test_the_dev_login_cannot_mint_roles_the_organisation_does_not_hold(
        console: TestClient, world: World) -> None:
    """admin for anyone but the operator, a role the kind does not allow, an organisation
    never registered, a role that does not exist: refused, and no session."""
    cases = [("grid", "admin"), ("econ", "admin"), ("audit-office", "admin"),
             ("broker-ops", "provider"), ("broker-ops", "auditor"), ("grid", "auditor"),
             ("grid", "consumer"), ("audit-office", "provider"), ("econ", "auditor"),
             ("ghost", "provider"), ("ghost", "admin"), ("econ", "root"),
             ("econ", "consumer admin"), ("GRID", "provider"), ("grid ", "provider"),
             ("", "provider")]
    for org, role in cases:
        console.cookies.clear()
        form = console.get("/console/login")
        r = console.post("/console/login", data={"org": org, "role": role,
                                                 "csrf": csrf_of(form.text)},
                         follow_redirects=False)
        assert r.status_code in (403, 422), (org, role, r.status_code)
        assert logged_in_as(console, console.cookies.get(COOKIE) or "").status_code == 303, \
            (org, role)


def test_the_dev_login_is_off_for_other_machines_whatever_they_claim(
        settings: Settings, world: World) -> None:
    """A client elsewhere that says it is local (forwarding headers, a loopback Host): no
    dev login."""
    with TestClient(create_app(settings), base_url="http://localhost",
                    client=("203.0.113.9", 40000)) as c:
        headers = {"X-Forwarded-For": "127.0.0.1", "X-Real-IP": "127.0.0.1",
                   "Forwarded": "for=127.0.0.1", "Host": "127.0.0.1"}
        form = c.get("/console/login", headers=headers)
        assert 'name="org"' not in form.text
        csrf = csrf_of(form.text) if 'name="csrf"' in form.text else "x"
        r = c.post("/console/login", data={"org": "broker-ops", "role": "admin", "csrf": csrf},
                   headers=headers, follow_redirects=False)
        assert r.status_code == 403


def non_loopback_address() -> str | None:
    """An address of this machine that is not loopback, if it has one."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))  # no packet is sent
            address = s.getsockname()[0]
    except OSError:
        return None
    return None if address.startswith("127.") else str(address)


def test_the_dev_login_is_off_for_another_machine_over_real_sockets(tmp_path: Path) -> None:
    """A real server listening on every interface, reached through a non-loopback address
    with forwarding headers claiming loopback: no dev login (uvicorn trusts forwarding
    headers from loopback only)."""
    address = non_loopback_address()
    if address is None:
        if is_ci():
            pytest.fail("this machine has no non-loopback address")
        pytest.skip("this machine has no non-loopback address")
    env = {"BROKER_DATA_DIR": str(tmp_path / "var"), "BROKER_JWT_SECRET": SECRET}
    with broker_server(tmp_path, env, args=("--host", "0.0.0.0")) as base:  # noqa: S104
        remote = base.replace("127.0.0.1", address)
        headers = {"X-Forwarded-For": "127.0.0.1", "Forwarded": "for=127.0.0.1"}
        with httpx.Client(base_url=remote, timeout=10) as c:
            form = c.get("/console/login", headers=headers)
            assert form.status_code == 200
            assert 'name="org"' not in form.text
            csrf = csrf_of(form.text) if 'name="csrf"' in form.text else "x"
            r = c.post("/console/login", data={"org": "broker-ops", "role": "admin",
                                               "csrf": csrf}, headers=headers)
            assert r.status_code == 403
        with httpx.Client(base_url=base, timeout=10) as c:  # the same server, from loopback
            assert 'name="org"' in c.get("/console/login").text


# == 8. Limits ===============================================================================


def flood(settings: Settings, mint: Mint) -> httpx.Response:
    """Console pages as one principal under a low rate limit until one is refused; the
    refusal."""
    settings = settings.model_copy(update={"rate_limit": "12/minute"})
    with TestClient(create_app(settings), base_url=LOOPBACK, client=HERE) as c:
        r = c.post("/v1/orgs", headers=auth(mint("broker-ops", "admin")),
                   json={"id": "econ", "name": "Econ", "kind": "department"})
        assert r.status_code == 201
        econ = log_in(c, "econ", "consumer")
        for _ in range(30):
            r = as_(c, econ, "GET", "/console/")
            if r.status_code != 200:
                # One bucket per principal: the API refuses the same principal now too.
                api = c.get("/v1/contracts", headers=auth(mint("econ", "consumer",
                                                               sub="console:consumer@econ")))
                assert api.status_code == 429, api.status_code
                return r
    raise AssertionError("30 console pages in a row under a limit of 12 a minute")


def test_console_requests_count_against_the_principals_rate_limit(settings: Settings,
                                                                   mint: Mint) -> None:
    """Console pages are counted like API calls, per principal: a flood of pages ends in a
    429 with Retry-After."""
    limited = flood(settings, mint)
    assert limited.status_code == 429
    assert limited.headers.get("retry-after")


def test_a_console_429_is_a_page_with_the_security_headers(settings: Settings,
                                                           mint: Mint) -> None:
    limited = flood(settings, mint)
    assert limited.status_code == 429
    assert not header_faults(limited), header_faults(limited)


# == Real servers: the browser, and the server's log ==========================================


def real_world(base: str, tmp_path: Path) -> tuple[World, httpx.Client]:
    """The conftest world made through the API of a real server started with ``SECRET``."""
    defaults = Settings(data_dir=tmp_path / "unused")

    def mint(org: str, *roles: str, sub: str | None = None, ttl: int = 600) -> str:
        return mint_token(key=SECRET, issuer=defaults.jwt_issuer,
                          audience=defaults.jwt_audience, sub=sub or f"user@{org}", org=org,
                          roles=roles, ttl=ttl)

    client = httpx.Client(base_url=base, timeout=30)
    world_client: Any = client  # World drives any client with TestClient's interface
    return World(world_client, mint), client


def hostile_objects(world: World) -> str:
    """Organisations, data, a consent record and a query whose text is hostile markup; the
    id of xss-dept's contract on that data."""
    c, admin = world.client, world.admin
    for org, kind in (("xss-dept", "department"), ("xss-firm", "enterprise")):
        r = c.post("/v1/orgs", headers=auth(admin),
                   json={"id": org, "name": f"{XSS} {org}", "kind": kind})
        assert r.status_code == 201, r.text
    defaults = Settings()
    # Subjects (free text from an identity provider) reach the audit log and its pages.
    firm = mint_token(key=SECRET, issuer=defaults.jwt_issuer, audience=defaults.jwt_audience,
                      sub=f"{XSS}firm", org="xss-firm", roles=["provider"], ttl=600)
    dept = mint_token(key=SECRET, issuer=defaults.jwt_issuer, audience=defaults.jwt_audience,
                      sub=f"{XSS}dept", org="xss-dept", roles=["consumer"], ttl=600)
    frame = pd.DataFrame({"uscc": [f"X{i}" for i in range(8)],
                          "town": [XSS] * 4 + ["<b>b</b>"] * 4,
                          "kwh": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]})
    meta = {"name": "xss-data", "entity_field": "uscc", "fields": [
        {"name": "uscc", "type": "string", "role": "entity"},
        {"name": "town", "type": "string", "role": "dimension"},
        {"name": "kwh", "type": "number", "role": "measure"}]}
    r = c.post("/v1/datasets", headers=auth(firm),
               files={"file": ("x.csv", csv_bytes(frame), "text/csv")},
               data={"meta": json.dumps(meta)})
    assert r.status_code == 201, r.text
    dataset = r.json()["id"]
    r = c.post(f"/v1/datasets/{dataset}/slices", headers=auth(firm), json={
        "name": "xss-slice", "fields": ["town", "kwh"],
        "consent": {"given_by": XSS, "given_at": datetime.now(UTC).isoformat(),
                    "scope": XSS, "reference": XSS}})
    assert r.status_code == 201, r.text
    r = c.post("/v1/contracts", headers=auth(firm), json=contract_terms(
        dataset, consumer_org="xss-dept", fields={"town": "clear", "kwh": "aggregate"}))
    assert r.status_code == 201, r.text
    contract = r.json()["id"]
    r = c.post(f"/v1/contracts/{contract}/accept", headers=auth(dept))
    assert r.status_code == 200, r.text
    r = c.post("/v1/queries/aggregate", headers=auth(dept), json={
        "contract_id": contract, "purpose": "energy-planning", "group_by": ["town"],
        "measures": [{"fn": "count"}, {"fn": "sum", "field": "kwh"}]})
    assert r.status_code == 200, r.text
    return str(contract)


SKIP_LINKS = ("/console/logout", "/console/static/", "/console/oidc/")


def crawl(fetch: Callable[[str], str | None], start: str = "/console/",
          limit: int = 120) -> list[str]:
    """The console pages reachable by links from ``start`` (``fetch`` returns a page's HTML,
    or None for what is not a page); the URLs visited."""
    seen: list[str] = []
    todo = [start]
    while todo and len(seen) < limit:
        url = todo.pop(0)
        if url in seen:
            continue
        seen.append(url)
        html = fetch(url)
        if html is None:
            continue
        for href in re.findall(r'href="([^"#]+)"', html):
            href = href.replace("&amp;", "&")
            if href.startswith("?"):
                href = url.split("?")[0] + href
            if (href.startswith("/console") and not href.startswith(SKIP_LINKS)
                    and "lang=" not in href and href not in seen and href not in todo):
                todo.append(href)
    return seen


def browse_as(browser: Any, base: str, org: str, role: str, dialogs: list[str],
              faults: list[str], contract: str | None = None) -> int:
    """Log in as ``role`` of ``org`` in a fresh context and follow every console link; what
    went wrong goes to ``dialogs`` and ``faults``."""
    from playwright.sync_api import Dialog

    from tests.console.browser import PageLog, login

    who = f"{role}@{org}"
    context = browser.new_context(locale="zh-CN")
    page = context.new_page()
    log = PageLog()
    log.watch(page)

    def on_dialog(dialog: Dialog) -> None:
        dialogs.append(f"{who}: {dialog.type} {dialog.message!r}")
        dialog.dismiss()

    page.on("dialog", on_dialog)
    login(page, base, org, role)

    def fetch(url: str) -> str | None:
        head = page.request.get(base + url, max_redirects=0)
        if not str(head.headers.get("content-type", "")).startswith("text/html"):
            return None  # a download or a redirect: nothing to render
        response = page.goto(base + url)
        if response is None or not str(response.headers.get("content-type", "")).startswith(
                "text/html"):
            return None
        if page.evaluate("() => document.querySelectorAll("
                         "'img[src=\"x\"], script:not([src])').length"):
            faults.append(f"{url} as {who}: injected elements in the DOM")
        return str(page.content())

    visited = crawl(fetch)
    if contract is not None and role == "consumer":
        # The query builder's answer (a POST, so no link leads to it) with the hostile keys
        # in its table and chart: the form is built and submitted as the page's own would be.
        page.goto(f"{base}/console/query?contract={contract}")
        with page.expect_navigation():
            page.evaluate("""contract => {
                const f = document.createElement('form');
                f.method = 'post'; f.action = '/console/query/run';
                const add = (n, v) => { const i = document.createElement('input');
                    i.type = 'hidden'; i.name = n; i.value = v; f.appendChild(i); };
                add('csrf', document.querySelector('input[name=csrf]').value);
                add('contract', contract); add('purpose', 'energy-planning');
                add('group_by', 'town'); add('measure_fn', 'count'); add('measure_field', '');
                document.body.appendChild(f); f.submit(); }""", contract)
        page.wait_for_load_state("load")
        if "/console/query/results/" not in page.content():
            faults.append(f"{who}: the hostile query did not run ({page.url})")
        if page.evaluate("() => document.querySelectorAll("
                         "'img[src=\"x\"], script:not([src])').length"):
            faults.append(f"query results as {who}: injected elements in the DOM")
    faults.extend(f"{who}: {p}" for p in log.problems if p.kind in ("csp", "pageerror"))
    context.close()
    return len(visited)


@pytest.mark.console
def test_hostile_names_do_not_run_in_a_real_browser(tmp_path: Path) -> None:
    """Chromium, logged in as each role, follows every console link on a broker holding
    hostile organisation names, data values and consent records: no dialog opens, no script
    runs (an injected one the CSP blocked is a fault too) and no page throws."""
    from playwright.sync_api import sync_playwright

    from tests.console.browser import chromium_path, launch_chromium

    if not os.access(chromium_path(), os.X_OK):
        if is_ci():
            pytest.fail(f"no Chromium at {chromium_path()}")
        pytest.skip(f"no Chromium at {chromium_path()}")
    env = {"BROKER_DATA_DIR": str(tmp_path / "var"), "BROKER_JWT_SECRET": SECRET}
    with broker_server(tmp_path, env, unset=("BROKER_OIDC_ISSUER",
                                             "BROKER_DATABASE_URL")) as base:
        world, client = real_world(base, tmp_path)
        try:
            contract = hostile_objects(world)
        finally:
            client.close()
        dialogs: list[str] = []
        faults: list[str] = []
        visited = {}
        with sync_playwright() as playwright:
            browser = launch_chromium(playwright, chromium_path())
            try:
                for org, role in (("xss-firm", "provider"), ("xss-dept", "consumer"),
                                  ("audit-office", "auditor"), ("broker-ops", "admin")):
                    visited[role] = browse_as(browser, base, org, role, dialogs, faults,
                                              contract)
            finally:
                browser.close()
    assert not dialogs, "\n".join(dialogs)
    assert not faults, "\n".join(faults)
    assert visited["auditor"] > 3, visited  # the crawl reached the auditor's pages


def writes_with_values(browser: httpx.Client, csrf: str, role: str, scene: Scene) -> None:
    """The console's forms carrying row values: queries filtered on values (run, dry run,
    refused), and an upload whose bad cells hold values."""
    if role == "consumer":
        base = {"csrf": csrf, "contract": scene.contract, "purpose": "energy-planning",
                "group_by": ["qz_town"], "measure_fn": ["count"], "measure_field": [""]}
        for path in ("/console/query/run", "/console/query/explain"):
            for value, field in (("Qzalpha", "qz_town"), ("QZFILTER-1", "qz_town"),
                                 ("QZFILTER-2", "qz_secret_kwh")):
                r = browser.post(path, data={**base, "filter_field": [field],
                                             "filter_op": ["eq"], "filter_value": [value]})
                assert r.status_code in (200, 404, 422), (path, value, r.status_code)
    if role == "provider":
        bad = b"qz_uscc,qz_town,qz_secret_kwh\nQZUSCC9,Qzalpha,QZBROKEN987\n"
        meta = json.dumps({**SECRET_META, "name": "qz-broken"})
        r = browser.post("/console/datasets/new", content=multipart_upload(bad, meta),
                         headers={"X-CSRF-Token": csrf,
                                  "Content-Type": "multipart/form-data; boundary=qzboundary7"})
        assert r.status_code == 422, r.status_code


def test_the_server_log_holds_no_row_values_from_console_requests(tmp_path: Path) -> None:
    """A real server at debug level; every role browses every console page it can reach by
    links and every enumerated route with the scene's ids, departments filter on values and
    providers upload bad cells: the uploaded and filtered values never reach the log."""
    env = {"BROKER_DATA_DIR": str(tmp_path / "var"), "BROKER_JWT_SECRET": SECRET,
           "BROKER_LOG_LEVEL": "debug"}
    with broker_server(tmp_path, env, unset=("BROKER_OIDC_ISSUER",
                                             "BROKER_DATABASE_URL")) as base:
        world, client = real_world(base, tmp_path)
        try:
            scene = make_scene(world)
            routes = console_routes(create_app(Settings(data_dir=tmp_path / "routes")))
            pages = 0
            for org, role in (("grid", "provider"), ("econ", "consumer"),
                              ("audit-office", "auditor"), ("broker-ops", "admin"),
                              ("water", "provider"), ("env", "consumer")):
                with httpx.Client(base_url=base, timeout=30, follow_redirects=True) as browser:
                    form = browser.get("/console/login")
                    r = browser.post("/console/login", data={
                        "org": org, "role": role, "csrf": csrf_of(form.text)})
                    assert r.status_code == 200, r.text

                    def fetch(url: str, browser: httpx.Client = browser) -> str | None:
                        got = browser.get(url)
                        return got.text if is_html(got) else None

                    pages += len(crawl(fetch))
                    for route in routes:
                        if "GET" in route.methods:
                            for url in route.urls(scene.ids()):
                                browser.get(url)
                                pages += 1
                    csrf = csrf_of(browser.get("/console/").text)
                    writes_with_values(browser, csrf, role, scene)
        finally:
            client.close()
    assert pages > 20
    log = (tmp_path / "server.log").read_text(errors="replace")
    assert "/console/" in log or pages  # the log is the server's
    # A number counts as found standing alone (not inside a timestamp's microseconds, a
    # duration's decimals or a hex id, where six digits turn up by chance in a long log).
    found = [v for v in (*SECRET_VALUES, CONSENT_SCOPE, CONSENT_BY, "QZBROKEN", "QZFILTER")
             if (re.search(rf"(?<![0-9A-Za-z.]){re.escape(v)}(?![0-9A-Za-z])", log)
                 if v.isdigit() else v in log)]
    assert not found, f"the server log holds {found}"


def test_with_an_identity_provider_the_dev_login_and_dev_tokens_are_dead(
        tmp_path: Path, oidc_provider: Any) -> None:
    """With an OIDC issuer configured the dev login is off even on loopback, and a session
    cookie holding a dev (HS256) token, even one signed with the broker's own cookie key,
    opens nothing."""
    settings = Settings(data_dir=tmp_path / "var", jwt_secret=SecretStr(SECRET),
                        oidc_issuer=oidc_provider.issuer, oidc_audience="broker")
    with TestClient(create_app(settings), base_url=LOOPBACK, client=HERE) as c:
        form = c.get("/console/login")
        assert form.status_code == 200
        assert 'name="org"' not in form.text
        csrf = csrf_of(form.text) if 'name="csrf"' in form.text else "x"
        r = c.post("/console/login", data={"org": "broker-ops", "role": "admin",
                                           "csrf": csrf}, follow_redirects=False)
        assert r.status_code == 403
        assert logged_in_as(c, c.cookies.get(COOKIE) or "").status_code == 303
        dev = mint_token(key=SECRET, issuer=settings.jwt_issuer,
                         audience=settings.jwt_audience, sub="console:admin@broker-ops",
                         org="broker-ops", roles=["admin"], ttl=600)
        r = logged_in_as(c, cookie_with(settings, {"csrf": "c", "token": dev}))
        assert r.status_code == 303


# == 6. Privacy: what the department's pages and files give away =============================


def number_forms(value: float) -> set[str]:
    """The ways a page or file might write ``value``."""
    forms = {f"{value:.2f}", f"{value:,.2f}", f"{value:.1f}", f"{value:,.1f}", repr(value)}
    if value == int(value):
        forms |= {str(int(value)), f"{int(value):,}"}
    return forms


def secret_truth() -> dict[str, tuple[int, float]]:
    """Each town's true entity count and kWh sum in the secret dataset."""
    grouped = SECRET_FRAME.groupby("qz_town").agg(n=("qz_uscc", "nunique"),
                                                  kwh=("qz_secret_kwh", "sum"))
    return {str(town): (int(row.n), float(row.kwh)) for town, row in grouped.iterrows()}


def api_answer(world: World, contract: str) -> dict[str, Any]:
    r = world.client.post("/v1/queries/aggregate", headers=auth(world.econ), json={
        "contract_id": contract, "purpose": "energy-planning", "group_by": ["qz_town"],
        "measures": [{"fn": "count"}, {"fn": "sum", "field": "qz_secret_kwh"}]})
    assert r.status_code == 200, r.text
    answer: dict[str, Any] = r.json()
    return answer


def is_ci() -> bool:
    """Whether this runs under CI (``CI`` set and not false), where nothing may skip."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def needs_route(client: TestClient, path: str) -> None:
    """The console serves ``path`` (an attack on a page that is gone must not pass)."""
    assert has_route(client, path), f"{path} is not served"


def test_withheld_cells_show_no_value_or_count_in_the_page_csv_or_excel(
        console: TestClient, scene: Scene, cast: Cast) -> None:
    """The console's answer, as a page, a CSV and a workbook: a withheld cell is marked
    withheld with its reason, and its true sum and entity count appear nowhere in its row."""
    import csv
    import io

    import openpyxl

    needs_route(console, "/console/query/results/{query_id}.csv")
    truth = secret_truth()
    r = console_query(console, cast.party, scene.contract)
    assert r.status_code == 200
    query_id = answer_id(r.text)
    assert query_id
    api = api_answer(scene.world, scene.contract)
    withheld = {c["key"]["qz_town"] for c in api["cells"] if c["status"] != "published"}
    assert "Qzgamma" in withheld  # 2 enterprises under k = 3
    page = r.text
    for town in withheld:
        n, kwh = truth[town]
        found = [f for f in number_forms(kwh) if f in page]
        assert not found, f"the page shows the withheld sum of {town}: {found}"
        html_row = re.search(rf"<tr[^>]*>(?:(?!</tr>).)*{town}(?:(?!</tr>).)*</tr>", page,
                             re.S)
        assert html_row, f"the page has no row for the withheld cell {town}"
        cells = re.sub(r"<code>[^<]*</code>", "", html_row.group(0))
        assert not re.search(rf">\s*{n}\s*<", cells), f"the page shows {town}'s count"
    csv_r = as_(console, cast.party, "GET", f"/console/query/results/{query_id}.csv")
    assert csv_r.status_code == 200
    assert not header_faults(csv_r), header_faults(csv_r)
    rows = list(csv.reader(io.StringIO(csv_r.content.decode("utf-8-sig"))))
    header = rows[0]
    xlsx_r = as_(console, cast.party, "GET", f"/console/query/results/{query_id}.xlsx")
    assert xlsx_r.status_code == 200
    sheet = openpyxl.load_workbook(io.BytesIO(xlsx_r.content)).active
    assert sheet is not None
    sheet_rows = [list(row) for row in sheet.iter_rows(values_only=True)]
    for source, table in (("CSV", rows), ("Excel", sheet_rows)):
        by_town = {str(row[header.index("qz_town")]): row for row in table[1:]}
        for town in withheld:
            row = by_town[town]
            values = [v for i, v in enumerate(row) if header[i] != "qz_town"]
            numbers = [v for v in values if isinstance(v, int | float) or (
                isinstance(v, str) and re.fullmatch(r"[\d.,]+", v.strip() or "x"))]
            assert not numbers, f"{source}: the withheld cell {town} has figures {numbers}"
            assert all(v not in (None, "") for v in values[:2]), \
                f"{source}: the withheld cell {town} is blank (read as zero)"
        for town, row in by_town.items():
            if town not in withheld:
                n, kwh = truth[town]
                assert n in row or str(n) in row, (source, town, row)


def test_the_console_shows_no_more_than_the_api_gives_the_same_principal(
        console: TestClient, scene: Scene, cast: Cast) -> None:
    """The same query through the console (its CSV) and through the API: the same cells, the
    same published figures, the same withheld ones."""
    import csv
    import io

    needs_route(console, "/console/query/results/{query_id}.csv")
    r = console_query(console, cast.party, scene.contract)
    query_id = answer_id(r.text)
    assert query_id
    csv_r = as_(console, cast.party, "GET", f"/console/query/results/{query_id}.csv")
    rows = list(csv.reader(io.StringIO(csv_r.content.decode("utf-8-sig"))))
    header = rows[0]
    api = api_answer(scene.world, scene.contract)
    published = {c["key"]["qz_town"]: c["values"] for c in api["cells"]
                 if c["status"] == "published"}
    console_published = {}
    for row in rows[1:]:
        town = row[header.index("qz_town")]
        if row[header.index("count")] and re.fullmatch(r"[\d.]+", row[header.index("count")]):
            console_published[town] = {"count": float(row[header.index("count")]),
                                       "sum_qz_secret_kwh": float(
                                           row[header.index("sum_qz_secret_kwh")])}
    assert set(console_published) == set(published)
    for town, values in published.items():
        for name, value in values.items():
            assert console_published[town][name] == pytest.approx(float(value)), (town, name)


def test_a_dry_run_releases_nothing_and_uses_no_quota(console: TestClient, scene: Scene,
                                                      cast: Cast) -> None:
    """The builder's dry run: no release on the ledger, no query counted against the
    contract's daily quota, and no figure of the data on the page."""
    needs_route(console, "/console/query/explain")
    world = scene.world

    def remaining() -> int:
        r = world.client.post("/v1/policy/explain", headers=auth(world.econ), json={
            "contract_id": scene.contract, "purpose": "energy-planning",
            "group_by": ["qz_town"], "measures": [{"fn": "count"}]})
        assert r.status_code == 200, r.text
        left: int = r.json()["quota_remaining"]
        return left

    before, seq = remaining(), last_seq(console, world.auditor)
    for _ in range(3):
        r = console_query(console, cast.party, scene.contract, run=False)
        assert r.status_code == 200, r.text[:2000]
        truth = secret_truth()
        for town, (_n, kwh) in truth.items():
            found = [f for f in number_forms(kwh) if f in r.text]
            assert not found, f"the dry run shows {town}'s sum: {found}"
    assert remaining() == before
    released = [e for e in auditor_entries(console, world.auditor, seq)
                if e["action"] == "query.aggregate"]
    assert not released, released


def test_another_principals_answer_cannot_be_downloaded(console: TestClient, scene: Scene,
                                                        cast: Cast) -> None:
    """The download URL of econ's answer, asked for by another person of econ itself (another
    subject), by another department and with the id's case or form changed: 404, audited."""
    needs_route(console, "/console/query/results/{query_id}.csv")
    settings = world_settings(console)
    colleague = mint_token(key=SECRET, issuer=settings.jwt_issuer,
                           audience=settings.jwt_audience, sub="colleague@econ", org="econ",
                           roles=["consumer"], ttl=600)
    cookie = cookie_with(settings, {"csrf": "c", "token": colleague})
    other = Login("econ", "consumer", cookie, "c")
    qid = scene.query_id
    for who in (other, cast.strangers[1]):
        for url in (f"/console/query/results/{qid}.csv", f"/console/query/results/{qid}.xlsx",
                    f"/console/query/results/{qid.upper()}.csv",
                    f"/console/query/results/{qid}%00.csv",
                    f"/console/query/results/{qid}.csv?principal=econ"):
            before = last_seq(console, scene.world.auditor)
            r = as_(console, who, "GET", url)
            assert r.status_code == 404, (who.name, url, r.status_code)
            assert not leaks(r.text, scene.markers)
            new = auditor_entries(console, scene.world.auditor, before)
            assert any(not e["decision"]["allowed"] and e["actor"]["org"] == who.org
                       for e in new), (who.name, url)
    assert as_(console, cast.party, "GET", f"/console/query/results/{qid}.csv"
               ).status_code == 200


CSV_FORMULAS = ('=HYPERLINK("http://evil.example","x")', "+1+cmd|' /C calc'!A0", "-2+3",
                "@SUM(A1)", "\t=1+1")


def test_downloads_are_safe_from_formula_injection(console: TestClient, mint: Mint,
                                                   world: World) -> None:
    """Dimension values written as spreadsheet formulas come out of the CSV and the workbook
    as text, never as formulas."""
    import csv
    import io

    import openpyxl

    needs_route(console, "/console/query/results/{query_id}.csv")
    towns = [t for t in CSV_FORMULAS for _ in range(3)]
    frame = pd.DataFrame({"uscc": [f"F{i}" for i in range(len(towns))], "town": towns,
                          "kwh": [float(i + 1) for i in range(len(towns))]})
    did = world.add_dataset(frame, [{"name": "town", "type": "string", "role": "dimension"},
                                    {"name": "kwh", "type": "number", "role": "measure"}])
    cid = world.contract_for(did, fields={"town": "clear", "kwh": "aggregate"})
    econ = log_in(console, "econ", "consumer")
    r = as_(console, econ, "POST", "/console/query/run", data={
        "csrf": econ.csrf, "contract": cid, "purpose": "energy-planning",
        "group_by": ["town"], "measure_fn": ["count"], "measure_field": [""]})
    assert r.status_code == 200, r.text[:2000]
    qid = answer_id(r.text)
    assert qid
    body = as_(console, econ, "GET", f"/console/query/results/{qid}.csv").content
    texts = [v for row in csv.reader(io.StringIO(body.decode("utf-8-sig"))) for v in row]
    dangerous = [v for v in texts if v[:1] in ("=", "+", "-", "@", "\t", "\r")]
    assert not dangerous, dangerous
    book = openpyxl.load_workbook(io.BytesIO(as_(console, econ, "GET",
                                                 f"/console/query/results/{qid}.xlsx").content))
    sheet = book.active
    assert sheet is not None
    formulas = [c.value for row in sheet.iter_rows() for c in row
                if c.data_type == "f" or (isinstance(c.value, str) and c.value[:1] == "=")]
    assert not formulas, formulas


def test_a_department_cannot_query_another_departments_contract(
        console: TestClient, scene: Scene, cast: Cast) -> None:
    """env posts the query builder (run and dry run, page and HTMX) naming econ's contract:
    404, nothing of the data, nothing released, the attempt on the record."""
    needs_route(console, "/console/query/run")
    world = scene.world
    env = cast.strangers[1]
    for run in (True, False):
        for headers in ({}, {"HX-Request": "true"}):
            before = last_seq(console, world.auditor)
            r = console_query(console, env, scene.contract, run=run, headers=headers)
            assert r.status_code == 404, (run, headers, r.status_code)
            assert not leaks(r.text, scene.markers), leaks(r.text, scene.markers)
            new = auditor_entries(console, world.auditor, before)
            assert any(e["actor"]["org"] == "env" and not e["decision"]["allowed"]
                       for e in new), (run, headers)
            assert not [e for e in new if e["action"] == "query.aggregate"
                        and e["decision"]["allowed"]]
    # The builder's field lists and extra rows under econ's contract: nothing of it either.
    for url in ("/console/query", "/console/query/fields", "/console/query/rows/filter",
                "/console/query/rows/measure"):
        r = as_(console, env, "GET", url, params={"contract": scene.contract})
        assert r.status_code in (200, 403, 404), (url, r.status_code)
        assert not leaks(r.text, scene.markers), (url, leaks(r.text, scene.markers))


# == 8. Uploads through the console ==========================================================


def files_holding(root: Path, needle: bytes) -> list[Path]:
    """Files under ``root`` whose bytes hold ``needle`` (a plaintext copy)."""
    return [p for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


def multipart_upload(body: bytes, meta: str | None, boundary: str = "qzboundary7") -> bytes:
    """A multipart body as the upload forms send it: ``meta`` (when given) and ``file``."""
    parts = b""
    if meta is not None:
        parts += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"meta\"\r\n\r\n"
                  f"{meta}\r\n").encode()
    return parts + (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
                    f"filename=\"data.csv\"\r\nContent-Type: text/csv\r\n\r\n").encode() + (
                        body + f"\r\n--{boundary}--\r\n".encode())


def test_a_console_upload_over_the_limit_is_refused_and_leaves_nothing(
        console: TestClient, world: World) -> None:
    """A new dataset, and a new version, through the console's upload forms, larger than
    BROKER_MAX_UPLOAD_BYTES, announced honestly or streamed without a length: refused, no
    dataset or version, no scratch file, no plaintext of it anywhere under the data
    directory."""
    needs_route(console, "/console/datasets/new")
    settings = world_settings(console)
    grid = log_in(console, "grid", "provider")
    marker = b"QZUPLOADMARKER"
    rows = settings.max_upload_bytes // 25
    body = b"uscc,town,kwh\n" + b"".join(b"U%08d,%s,%d\n" % (i, marker, i) for i in range(rows))
    assert len(body) > settings.max_upload_bytes
    meta = json.dumps({**ENERGY_META_FOR_UPLOAD, "name": "too-big"})
    before = state_of(console, world)
    headers = {"X-CSRF-Token": grid.csrf,
               "Content-Type": "multipart/form-data; boundary=qzboundary7"}
    for url, multipart in (("/console/datasets/new", multipart_upload(body, meta)),
                           (f"/console/datasets/{world.dataset['id']}/versions",
                            multipart_upload(body, None))):

        def chunks(data: bytes = multipart) -> Iterator[bytes]:
            for i in range(0, len(data), 65_536):
                yield data[i:i + 65_536]

        for content in (multipart, chunks()):
            r = as_(console, grid, "POST", url, content=content, headers=headers)
            assert r.status_code == 413, (url, r.status_code, r.text[:500])
            assert not header_faults(r), header_faults(r)
    assert state_of(console, world) == before
    assert not files_holding(settings.data_dir, marker)
    uploads = settings.uploads_dir
    assert not uploads.exists() or not any(uploads.iterdir()), list(uploads.iterdir())


def test_another_provider_cannot_upload_a_version_of_a_dataset(console: TestClient,
                                                               scene: Scene) -> None:
    """water sends a new version of grid's secret dataset through the console's upload form
    (its own valid session and CSRF header): 404, grid's versions unchanged, no plaintext
    left, the attempt on the record."""
    needs_route(console, "/console/datasets/{dataset_id:uuid}/versions")
    world = scene.world
    settings = world_settings(console)
    water = log_in(console, "water", "provider")
    body = csv_bytes(SECRET_FRAME.assign(qz_town="QZOVERWRITE"))
    before, seq = state_of(console, world), last_seq(console, world.auditor)
    r = as_(console, water, "POST", f"/console/datasets/{scene.dataset}/versions",
            content=multipart_upload(body, None),
            headers={"X-CSRF-Token": water.csrf,
                     "Content-Type": "multipart/form-data; boundary=qzboundary7"})
    assert r.status_code == 404, r.status_code
    assert not leaks(r.text, scene.markers)
    assert state_of(console, world) == before
    assert any(e["actor"]["org"] == "water" and not e["decision"]["allowed"]
               for e in auditor_entries(console, world.auditor, seq))
    assert not files_holding(settings.data_dir, b"QZOVERWRITE")


ENERGY_META_FOR_UPLOAD: dict[str, Any] = {
    "entity_field": "uscc",
    "fields": [
        {"name": "uscc", "type": "string", "role": "entity"},
        {"name": "town", "type": "string", "role": "dimension"},
        {"name": "kwh", "type": "number", "role": "measure"},
    ],
}


# == The OIDC login ==========================================================================


@pytest.fixture(scope="module")
def oidc_console(oidc_login_provider: Any, tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[Any]:
    """A real broker logging in through the test OIDC provider (tests/console/oidc_login.py)."""
    from tests.console.oidc_login import running_console

    with running_console(oidc_login_provider, tmp_path_factory.mktemp("oidc-console")) as c:
        yield c


def test_a_cross_site_link_to_the_oidc_start_does_not_end_a_session(oidc_console: Any) -> None:
    """Another site links (a top-level GET, which SameSite=Lax lets the cookie ride along) to
    /console/oidc/start: the logged-in session must survive it (a GET changes no state)."""
    broker, idp = oidc_console.browser()
    with broker, idp:
        assert broker.get(oidc_console.authorize(broker, idp, "consumer@economic-bureau")
                          ).status_code == 303
        assert broker.get("/console/").status_code == 200
        r = broker.get("/console/oidc/start", params={"next": "/console/"},
                       headers={"Referer": EVIL + "/page", "Sec-Fetch-Site": "cross-site"})
        assert r.status_code == 303
        home = broker.get("/console/")
        assert home.status_code == 200, (
            "a cross-site GET of /console/oidc/start logged the user out "
            f"({home.status_code} {home.headers.get('location')})")


@pytest.mark.xfail(strict=True, reason=(
    "known limit (README, 'Sessions'): the session is the sealed cookie alone, with no "
    "server-side store, so a copy taken before logout stays good until it expires; strict, "
    "so this fails the day logout revokes"))
def test_an_oidc_session_cookie_stops_working_after_logout(oidc_console: Any) -> None:
    """The same as for the dev login: a copy of the cookie taken before logout is dead after."""
    broker, idp = oidc_console.browser()
    with broker, idp:
        assert broker.get(oidc_console.authorize(broker, idp, "consumer@economic-bureau")
                          ).status_code == 303
        cookie = broker.cookies.get(COOKIE, path="/console")
        session = oidc_console.session(broker)
        assert cookie
        assert session is not None
        assert broker.post("/console/logout", data={"csrf": session.csrf}).status_code == 303
        broker.cookies.clear()
        replayed = broker.get("/console/", headers={"Cookie": f"{COOKIE}={cookie}"})
        assert replayed.status_code == 303, "the cookie still opens the console after logout"


def test_a_department_sees_no_field_the_api_hides_from_it(console: TestClient, scene: Scene,
                                                          cast: Cast) -> None:
    """Every console page econ can reach by links (and the query builder under its contract)
    names only fields of grid's dataset that the API's catalogue shows econ."""
    world = scene.world
    r = world.client.get(f"/v1/datasets/{scene.dataset}", headers=auth(world.econ))
    assert r.status_code == 200, r.text
    shown = {f["name"] for f in r.json()["fields"]}
    hidden = set(SECRET_FIELDS) - shown
    assert hidden  # the entity field is not offered

    def fetch(url: str) -> str | None:
        got = as_(console, cast.party, "GET", url)
        return got.text if is_html(got) else None

    pages = crawl(fetch)
    faults = []
    for url in [*pages, f"/console/query?contract={scene.contract}",
                f"/console/query/fields?contract={scene.contract}",
                f"/console/query/rows/filter?contract={scene.contract}",
                f"/console/query/rows/measure?contract={scene.contract}",
                f"/console/contracts/{scene.contract}"]:
        body = as_(console, cast.party, "GET", url).text
        faults += [f"{url} names {name}" for name in hidden if name in body]
    assert not faults, "\n".join(faults)


FORM_FIELDS = ("org", "role", "next", "name", "org_id", "kind", "uscc", "public_key", "meta",
               "signature", "purpose", "purposes", "consumer_org", "fields", "k_min",
               "valid_from", "valid_until", "max_queries_per_day", "given_by", "given_at",
               "scope", "reference", "group_by", "measure_fn", "measure_field",
               "measure_denominator", "filter_field", "filter_op", "filter_value", "filter_to",
               "totals", "level.qz_town", "consumer", "decision", "since", "until")


def test_hostile_form_values_are_escaped_in_every_post_answer(
        console: TestClient, scene: Scene, cast: Cast) -> None:
    """Every POST route, as each party that may use it, with real ids and every other form
    field hostile markup (page and HTMX fragment): no 5xx, nothing unescaped."""
    faults: list[str] = []
    ids = scene.ids()
    for route in post_routes(app_of(console)):
        if route.path in ("/console/logout",):
            continue
        for url in route.urls(ids):
            for who in (cast.owner, cast.party, cast.auditor, cast.admin):
                for ids_too in (True, False):
                    form: dict[str, Any] = dict.fromkeys(FORM_FIELDS, XSS)
                    if ids_too:
                        form |= {"contract": scene.contract, "dataset_id": scene.dataset,
                                 "contract_id": scene.contract, "filter_field": "qz_town",
                                 "filter_op": "eq", "group_by": "qz_town",
                                 "measure_fn": "count", "measure_field": ""}
                    for headers in ({}, {"HX-Request": "true"}):
                        r = as_(console, who, "POST", url, data={**form, "csrf": who.csrf},
                                headers=headers)
                        if r.status_code >= 500:
                            faults.append(f"POST {url} as {who.name}: {r.status_code}")
                        if is_html(r):
                            faults += [f"POST {url} as {who.name}: {f}"
                                       for f in xss_faults(r.text)]
    assert not faults, "\n".join(sorted(set(faults)))


def test_another_party_cannot_accept_suspend_or_revoke_a_contract(
        console: TestClient, scene: Scene, cast: Cast) -> None:
    """env accepts the offer grid made to econ; water suspends and revokes grid's contract
    with econ: 404 pages, the contracts unchanged, the attempts on the record."""
    world = scene.world
    water, env = cast.strangers[0], cast.strangers[1]
    attempts = [(env, f"/console/contracts/{scene.pending}/accept")]
    attempts += [(water, f"/console/contracts/{scene.contract}/{action}")
                 for action in ("suspend", "revoke", "resume")]
    served = {r.path.replace(":uuid", "") for r in post_routes(app_of(console))}
    attempts = [(who, url) for who, url in attempts
                if any(re.fullmatch(PARAM.sub(r"[^/]+", p), url) for p in served)]
    if not attempts:
        needs_route(console, "/console/contracts/{contract_id}/accept")
    before = state_of(console, world)
    for who, url in attempts:
        seq = last_seq(console, world.auditor)
        r = as_(console, who, "POST", url, data={**plausible_form(scene.ids()),
                                                 "csrf": who.csrf})
        assert r.status_code == 404, (who.name, url, r.status_code)
        assert not leaks(r.text, scene.markers)
        assert any(e["actor"]["org"] == who.org and not e["decision"]["allowed"]
                   for e in auditor_entries(console, world.auditor, seq)), (who.name, url)
    assert state_of(console, world) == before


def test_no_console_get_changes_anything(console: TestClient, scene: Scene,
                                         cast: Cast) -> None:
    """GETs carry no CSRF token, so none may change state: every GET route as every party,
    with real ids and with query strings that would name an action, leaves the contracts,
    datasets, slices, organisations and the allowed writes in the log as they were."""
    world = scene.world
    before = state_of(console, world)
    ids = scene.ids()
    query = {"contract": scene.contract, "action": "revoke", "run": "1", "accept": "1",
             "purpose": "energy-planning", "group_by": "qz_town", "measure_fn": "count"}
    for route in get_routes(app_of(console)):
        if route.path.startswith("/console/oidc/"):
            continue  # the login's own redirects (see the OIDC tests)
        for url in route.urls(ids):
            for who in (cast.owner, cast.party, cast.auditor, cast.admin):
                as_(console, who, "GET", url)
                as_(console, who, "GET", url, params=query)
    after = state_of(console, world)
    new_writes = after.pop("writes")[len(before["writes"]):]
    assert not new_writes, new_writes
    before.pop("writes")
    assert after == before


def offer_form(who: Login, dataset: str) -> dict[str, str]:
    """A complete, valid offer form on ``dataset``'s secret fields to econ."""
    from datetime import timedelta

    now = datetime.now(UTC)
    return {"csrf": who.csrf, "dataset_id": dataset, "consumer_org": "econ",
            "purposes": "energy-planning", "form_qz_town": "clear",
            "form_qz_secret_kwh": "aggregate", "k_min": "3", "dominance_n": "1",
            "dominance_k": "90", "max_queries_per_day": "10", "result_retention_days": "30",
            "valid_from": (now - timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M"),
            "valid_until": (now + timedelta(days=3)).strftime("%Y-%m-%dT%H:%M")}


def test_a_provider_cannot_offer_another_providers_dataset(console: TestClient,
                                                            scene: Scene) -> None:
    """water submits a complete offer form naming grid's dataset: no contract, nothing of the
    dataset on the page, the attempt on the record."""
    needs_route(console, "/console/contracts/offer")
    world = scene.world
    water = log_in(console, "water", "provider")
    before, seq = state_of(console, world), last_seq(console, world.auditor)
    r = as_(console, water, "POST", "/console/contracts/offer",
            data=offer_form(water, scene.dataset))
    assert r.status_code in (403, 404), r.status_code
    assert not leaks(r.text, scene.markers), leaks(r.text, scene.markers)
    assert state_of(console, world)["contracts"] == before["contracts"]
    assert any(e["actor"]["org"] == "water" and not e["decision"]["allowed"]
               for e in auditor_entries(console, world.auditor, seq))


def test_an_offer_cannot_borrow_another_providers_slice(console: TestClient,
                                                        scene: Scene) -> None:
    """water offers, through the console's offer form, a contract on its own dataset limited
    to grid's consented slice: refused exactly as for a slice that does not exist (no oracle),
    nothing of the slice shown, no contract made."""
    needs_route(console, "/console/contracts/offer")
    world = scene.world
    r = world.client.post("/v1/datasets", headers=auth(world.other_provider),
                          files={"file": ("w.csv", csv_bytes(SECRET_FRAME), "text/csv")},
                          data={"meta": json.dumps({**SECRET_META, "name": "water-own"})})
    assert r.status_code == 201, r.text
    own = r.json()["id"]
    water = log_in(console, "water", "provider")
    form = offer_form(water, own)
    before = state_of(console, world)
    answers = []
    for slice_id in (scene.slice, str(uuid.uuid4())):
        r = as_(console, water, "POST", "/console/contracts/offer",
                data={**form, "slice_id": slice_id})
        answers.append(r.status_code)
        assert r.status_code in (404, 422), r.status_code
        assert "slice" in re.sub(r'name="slice_id"|value="[^"]*"', "", r.text).lower()
        assert not leaks(r.text.replace(own, ""), (SLICE_NAME, CONSENT_SCOPE, CONSENT_BY))
    assert answers[0] == answers[1]
    after = state_of(console, world)
    assert after["contracts"] == before["contracts"]
    # The same form without the borrowed slice is a valid offer (so the slice was the refusal).
    r = as_(console, water, "POST", "/console/contracts/offer", data={**form, "slice_id": ""})
    assert r.status_code == 303, re.findall(r"<strong>.*?</div>", r.text, re.S)
    assert len(state_of(console, world)["contracts"]) == len(before["contracts"]) + 1
