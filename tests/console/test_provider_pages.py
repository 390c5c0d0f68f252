"""The provider's console pages over HTTP, with a real app: datasets (upload, versions,
slices), contracts (offer, act, terms and ODRL), uses of my data with receipts; another
provider's objects answer 404 (audited), a form without its CSRF token changes nothing, and a
refused upload leaves nothing stored."""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from broker.app import create_app
from broker.console.routes import provider
from broker.settings import Settings
from tests.conftest import ENERGY, ENERGY_META, Mint, World, auth, csv_bytes

BASE = "http://127.0.0.1"
#: The test client's address: loopback, where the dev login serves.
HERE = ("127.0.0.1", 50000)
CSRF = re.compile(r'name="csrf" value="([^"]+)"')


@dataclass
class Console:
    """A browser-like client of the console (cookies kept) beside an API client and the
    world they share."""

    web: TestClient
    api: TestClient
    world: World
    settings: Settings
    csrf: str = ""

    def login(self, org: str, role: str = "provider") -> None:
        """Log in with the dev login as ``org`` in ``role``; keep the page's CSRF token."""
        self.web.cookies.clear()
        r = self.web.get("/console/login")
        token = CSRF.search(r.text)
        assert token is not None, r.text
        r = self.web.post("/console/login", data={"org": org, "role": role,
                                                 "csrf": token.group(1)})
        assert r.status_code == 200, r.text
        found = CSRF.search(self.web.get("/console/").text)
        assert found is not None
        self.csrf = found.group(1)

    def post(self, path: str, data: dict[str, Any] | None = None, **kwargs: Any) -> Any:
        """A form post with the CSRF token in the form, not following the redirect."""
        return self.web.post(path, data={"csrf": self.csrf, **(data or {})},
                             follow_redirects=False, **kwargs)

    def upload(self, path: str, content: bytes, *, meta: dict[str, Any] | None = None,
               filename: str = "data.csv", csrf_header: bool = True) -> Any:
        """The upload form as HTMX sends it: multipart, the token in the header too."""
        data = {"csrf": self.csrf}
        if meta is not None:
            data["meta"] = json.dumps(meta)
        headers = {"HX-Request": "true"}
        if csrf_header:
            headers["X-CSRF-Token"] = self.csrf
        return self.web.post(path, data=data, files={"file": (filename, content, "text/csv")},
                             headers=headers, follow_redirects=False)

    def entries(self, **params: Any) -> list[dict[str, Any]]:
        """Audit entries as the auditor reads them through the API."""
        r = self.api.get("/v1/audit/entries", params={"limit": 1000, **params},
                         headers=auth(self.world.auditor))
        assert r.status_code == 200, r.text
        return [e["entry"] for e in r.json()["entries"]]

    def datasets(self, token: str) -> list[dict[str, Any]]:
        """The catalogue as ``token`` sees it through the API."""
        r = self.api.get("/v1/datasets", headers=auth(token))
        assert r.status_code == 200, r.text
        found: list[dict[str, Any]] = r.json()
        return found


@pytest.fixture
def console(settings: Settings, mint: Mint) -> Iterator[Console]:
    """The app with the world loaded (grid's energy dataset, an active contract to econ) and
    water's own dataset; nobody logged in yet."""
    app = create_app(settings)
    with TestClient(app, base_url=BASE, client=HERE) as web:
        api = TestClient(app, base_url=BASE, client=HERE)
        world = World(api, mint)
        r = api.post("/v1/datasets", headers=auth(world.other_provider),
                     files={"file": ("w.csv", csv_bytes(ENERGY), "text/csv")},
                     data={"meta": json.dumps({**ENERGY_META, "name": "water-use"})})
        assert r.status_code == 201, r.text
        yield Console(web, api, world, settings)


def _stored_files(settings: Settings) -> list[Path]:
    """Every file of datasets and of uploads in flight under the data directory."""
    return sorted(p for d in (settings.datasets_dir, settings.uploads_dir) if d.exists()
                  for p in d.rglob("*") if p.is_file())


def _id_in(location: str) -> str:
    found = re.search(r"/datasets/([0-9a-f-]{36})", location)
    assert found is not None, location
    return found.group(1)


# -- datasets ---------------------------------------------------------------------------------


def test_my_datasets_lists_mine_only_with_fields_and_versions(console: Console) -> None:
    console.login("grid")
    r = console.web.get("/console/datasets")
    assert r.status_code == 200
    assert "energy" in r.text
    assert "water-use" not in r.text
    assert r.headers["content-security-policy"].startswith("default-src 'none'")
    r = console.web.get(f"/console/datasets/{console.world.dataset['id']}?lang=en")
    assert r.status_code == 200
    for text in ("kwh", "measure", "L2", "identifier", console.world.dataset["sha256"]):
        assert text in r.text
    assert '<progress id="upload-progress"' in r.text


def test_a_new_dataset_uploaded_through_the_form_is_stored(console: Console) -> None:
    console.login("grid")
    form = html.unescape(console.web.get("/console/datasets/new").text)
    assert '"entity_field": "uscc"' in form  # the skeleton, a valid declaration
    r = console.upload("/console/datasets/new", csv_bytes(ENERGY),
                       meta={**ENERGY_META, "name": "energy-2026"})
    assert r.status_code == 200, r.text
    location = r.headers["hx-redirect"]
    page = console.web.get(location)
    assert page.status_code == 200
    assert "energy-2026" in page.text
    names = {d["name"] for d in console.datasets(console.world.grid)}
    assert "energy-2026" in names
    assert [p for p in _stored_files(console.settings) if p.suffix == ".upload"] == []
    ours = [e for e in console.entries(action="dataset.register")
            if e["resource"]["dataset_id"] == _id_in(location)]
    assert len(ours) == 1
    assert ours[0]["actor"]["org"] == "grid"


def test_a_file_that_does_not_match_shows_its_problems_and_nothing_is_stored(
        console: Console) -> None:
    console.login("grid")
    before = _stored_files(console.settings)
    bad = ENERGY.assign(kwh=["lots"] + [str(v) for v in ENERGY.kwh[1:]])
    r = console.upload("/console/datasets/new?lang=en", csv_bytes(bad),
                       meta={**ENERGY_META, "name": "energy-bad"})
    assert r.status_code == 422, r.text
    assert "Problems found in the file" in r.text
    assert "<th scope=\"row\">kwh</th>" in r.text
    assert "lots" not in r.text  # problems name columns and rows, never a value
    assert "energy-bad" not in {d["name"] for d in console.datasets(console.world.grid)}
    assert _stored_files(console.settings) == before


def test_a_declaration_that_does_not_match_is_refused_with_its_places(console: Console) -> None:
    console.login("grid")
    before = _stored_files(console.settings)
    meta = {**ENERGY_META, "fields": [{**ENERGY_META["fields"][0], "type": "text"},
                                      *ENERGY_META["fields"][1:]]}
    r = console.upload("/console/datasets/new?lang=en", csv_bytes(ENERGY), meta=meta)
    assert r.status_code == 422, r.text
    assert "fields.0.type" in r.text
    assert _stored_files(console.settings) == before


def test_an_upload_over_the_limit_is_refused_and_nothing_is_stored(console: Console) -> None:
    console.login("grid")
    before = _stored_files(console.settings)
    big = b"uscc,town,name,kwh\n" + b"E1,A,Firm,1.0\n" * (console.settings.max_upload_bytes // 14)
    r = console.upload("/console/datasets/new", big, meta={**ENERGY_META, "name": "huge"})
    assert r.status_code == 413
    assert "huge" not in {d["name"] for d in console.datasets(console.world.grid)}
    assert _stored_files(console.settings) == before


def test_an_upload_without_the_csrf_header_is_refused_and_nothing_is_stored(
        console: Console) -> None:
    console.login("grid")
    before = _stored_files(console.settings)
    r = console.upload("/console/datasets/new", csv_bytes(ENERGY),
                       meta={**ENERGY_META, "name": "energy-forged"}, csrf_header=False)
    assert r.status_code == 403
    assert "energy-forged" not in {d["name"] for d in console.datasets(console.world.grid)}
    assert _stored_files(console.settings) == before


def test_a_new_version_is_stored_and_listed(console: Console) -> None:
    console.login("grid")
    did = console.world.dataset["id"]
    newer = ENERGY.assign(kwh=ENERGY.kwh + 1)
    r = console.upload(f"/console/datasets/{did}/versions", csv_bytes(newer))
    assert r.status_code == 200, r.text
    page = console.web.get(f"/console/datasets/{did}").text
    assert page.count('<th scope="row">2</th>') == 1
    assert page.count('<th scope="row">1</th>') == 1
    r = console.upload(f"/console/datasets/{did}/versions?lang=en", csv_bytes(newer))
    assert r.status_code == 409
    assert "identical to version 2" in r.text


def test_a_slice_is_published_with_its_consent_record(console: Console) -> None:
    console.login("grid")
    did = console.world.dataset["id"]
    assert console.web.get(f"/console/datasets/{did}/slices/new").status_code == 200
    form = {"name": "town-a", "fields": ["town", "kwh"],
            "predicate": '[{"field": "town", "op": "eq", "value": "A"}]',
            "given_by": "Board of Grid Co.", "given_at": "2026-01-05T08:00",
            "scope": "Town-level electricity statistics", "reference": "Resolution 2026-03"}
    r = console.post(f"/console/datasets/{did}/slices?lang=en", {**form, "predicate": "[{"})
    assert r.status_code == 422
    assert "not valid JSON" in r.text
    r = console.post(f"/console/datasets/{did}/slices?lang=en", {**form, "fields": ["nope"]})
    assert r.status_code == 422
    assert "nope" in r.text
    r = console.post(f"/console/datasets/{did}/slices", form)
    assert r.status_code == 303, r.text
    page = console.web.get(f"/console/datasets/{did}").text
    assert "town-a" in page
    assert "Board of Grid Co." in page
    assert "Resolution 2026-03" in page
    r = console.api.get(f"/v1/datasets/{did}/slices", headers=auth(console.world.grid))
    assert [s["name"] for s in r.json()] == ["town-a"]


# -- contracts --------------------------------------------------------------------------------


def _offer(console: Console, **overrides: Any) -> Any:
    form = {"dataset_id": console.world.dataset["id"], "consumer_org": "env",
            "purposes": ["energy-planning"], "form_town": "clear", "form_kwh": "aggregate",
            "k_min": "3", "dominance_n": "2", "dominance_k": "85", "dominance_p": "0",
            "valid_from": "2026-01-01T00:00", "valid_until": "2030-01-01T00:00",
            "max_queries_per_day": "50", "result_retention_days": "30", "slice_id": ""}
    return console.post("/console/contracts/offer?lang=en", {**form, **overrides})


def test_a_contract_is_offered_with_errors_shown_in_the_form(console: Console) -> None:
    console.login("grid")
    page = console.web.get(f"/console/contracts/offer?dataset_id={console.world.dataset['id']}")
    assert page.status_code == 200
    assert 'name="form_kwh"' in page.text
    r = _offer(console, purposes=[], k_min="1")
    assert r.status_code == 422
    assert "purposes" in r.text
    assert "k_min" in r.text
    r = _offer(console, form_name="clear")  # the world's contract lets it out pseudonymized
    assert r.status_code == 409, r.text
    assert "pseudonym-linkable" in r.text
    assert "<code>name</code>" in r.text
    r = _offer(console)
    assert r.status_code == 303, r.text
    cid = r.headers["location"].rsplit("/", 1)[1]
    detail = console.web.get(f"/console/contracts/{cid}?lang=en").text
    assert "offered" in detail
    assert "energy-planning" in detail
    assert '"@context"' in html.unescape(detail)  # the ODRL export
    assert '"permission"' in html.unescape(detail)
    listing = console.web.get("/console/contracts").text
    assert cid[:8] in listing
    r = console.api.get(f"/v1/contracts/{cid}", headers=auth(console.world.grid))
    assert r.json()["consumer_org"] == "env"
    assert r.json()["k_min"] == 3


def test_a_contract_is_suspended_resumed_and_revoked(console: Console) -> None:
    console.login("grid")
    cid = console.world.contract["id"]
    page = console.web.get(f"/console/contracts/{cid}").text
    assert "data-confirm" in page  # revoking asks first
    for action, state in (("suspend", "suspended"), ("resume", "active"),
                          ("revoke", "revoked")):
        r = console.post(f"/console/contracts/{cid}/{action}")
        assert r.status_code == 303, r.text
        status = console.api.get(f"/v1/contracts/{cid}", headers=auth(console.world.grid))
        assert status.json()["status"] == state
    r = console.post(f"/console/contracts/{cid}/resume")
    assert r.status_code == 409


def test_a_post_without_the_csrf_token_is_refused_and_changes_nothing(console: Console) -> None:
    console.login("grid")
    cid = console.world.contract["id"]
    r = console.web.post(f"/console/contracts/{cid}/revoke", data={},
                         follow_redirects=False)
    assert r.status_code == 403
    r = console.web.post(f"/console/contracts/{cid}/revoke", data={"csrf": "forged"},
                         follow_redirects=False)
    assert r.status_code == 403
    status = console.api.get(f"/v1/contracts/{cid}", headers=auth(console.world.grid))
    assert status.json()["status"] == "active"


def test_a_department_sees_the_contracts_offered_to_it_without_provider_actions(
        console: Console) -> None:
    console.login("econ", "consumer")
    r = console.web.get("/console/contracts")
    assert r.status_code == 200
    assert console.world.contract["id"][:8] in r.text
    assert "/console/contracts/offer" not in r.text
    detail = console.web.get(f"/console/contracts/{console.world.contract['id']}").text
    assert "/revoke" not in detail
    assert console.web.get("/console/datasets").status_code == 403


# -- another organisation's objects -----------------------------------------------------------


def test_another_providers_objects_answer_404_and_the_attempts_are_audited(
        console: Console) -> None:
    did = console.world.dataset["id"]
    cid = console.world.contract["id"]
    console.world.query()  # an entry about grid's data
    grid_entry = max(e["seq"] for e in console.entries(dataset_id=did))
    console.login("water")
    before = max(e["seq"] for e in console.entries())
    for path in (f"/console/datasets/{did}", f"/console/datasets/{did}/slices/new",
                 f"/console/contracts/{cid}"):
        r = console.web.get(path)
        assert r.status_code == 404, (path, r.status_code)
        assert "energy" not in r.text
    # The receipt (the audit entry's page) of an entry about another's data.
    r = console.web.get(f"/console/audit/entries/{grid_entry}")
    assert r.status_code == 404
    assert "energy" not in r.text
    assert console.post(f"/console/contracts/{cid}/revoke").status_code == 404
    assert console.post(f"/console/datasets/{did}/slices", {
        "name": "x", "fields": ["town"], "predicate": "[]", "given_by": "x",
        "given_at": "2026-01-05T08:00", "scope": "x"}).status_code == 404
    r = console.upload(f"/console/datasets/{did}/versions", csv_bytes(ENERGY))
    assert r.status_code == 404
    status = console.api.get(f"/v1/contracts/{cid}", headers=auth(console.world.grid))
    assert status.json()["status"] == "active"
    refused = [e for e in console.entries(org="water", decision="deny")
               if e["seq"] > before]
    assert {e["action"] for e in refused} >= {"dataset.read", "contract.read", "audit.proof",
                                              "contract.revoke", "dataset.version",
                                              "slice.publish"}
    # The other provider's uses page shows nothing of grid's data.
    page = console.web.get("/console/uses").text
    assert f"/console/audit/entries/{grid_entry}\"" not in page


# -- uses of my data --------------------------------------------------------------------------


def test_uses_of_my_data_has_filters_a_timeline_and_receipts(console: Console) -> None:
    world = console.world
    world.query(group_by=["town"])
    world.query(purpose="tax-audit")  # denied: not a purpose of the contract
    console.login("grid")
    r = console.web.get("/console/uses?lang=en")
    assert r.status_code == 200
    assert "econ" in r.text
    assert "allowed" in r.text
    assert "denied" in r.text
    chart = re.search(r"data-chart='([^']+)'", r.text)
    assert chart is not None
    config = json.loads(html.unescape(chart.group(1)))
    assert config["type"] == "bar"
    assert config["options"]["scales"]["x"]["stacked"] is True
    assert sum(sum(d["data"]) for d in config["data"]["datasets"]) >= 2
    assert "<caption>Accesses per day (UTC)</caption>" in r.text
    denied = console.web.get("/console/uses?lang=en&decision=deny&by=decision").text
    rows = re.findall(r'href="/console/audit/entries/(\d+)"', denied)
    assert rows
    assert 'class="allowed"' not in denied
    purpose = console.web.get("/console/uses?lang=en&purpose=tax-audit").text
    assert "tax-audit" in purpose
    assert "energy-planning</td>" not in purpose
    receipt = console.web.get(f"/console/audit/entries/{rows[0]}?lang=en")
    assert receipt.status_code == 200
    leaf = {e["seq"]: e for e in console.entries()}[int(rows[0])]
    assert leaf["decision"]["allowed"] is False
    r = console.api.get(f"/v1/audit/entries/{rows[0]}/proof", headers=auth(world.grid))
    assert r.json()["leaf_hash"] in receipt.text


def test_uses_are_paged_with_the_filters_kept(console: Console,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(provider, "USES_PAGE", 2)
    for _ in range(3):
        console.world.query()
    console.login("grid")
    seen: list[int] = []
    path = "/console/uses?lang=en&decision=allow"
    for _ in range(10):
        page = html.unescape(console.web.get(path).text)
        rows = [int(s) for s in re.findall(r'href="/console/audit/entries/(\d+)"', page)]
        assert 1 <= len(rows) <= 2
        seen += rows
        more = re.search(r'href="(/console/uses\?[^"]*cursor=\d+[^"]*)"', page)
        if more is None:
            break
        path = more.group(1)
        assert "decision=allow" in path
    assert seen == sorted(set(seen))
    everything = [e["seq"] for e in console.entries(decision="allow")
                  if e["resource"].get("dataset_id") == console.world.dataset["id"]]
    assert set(everything) <= set(seen)


def test_a_signature_that_is_not_one_is_refused_and_changes_nothing(console: Console) -> None:
    console.login("grid")
    r = _offer(console)
    cid = r.headers["location"].rsplit("/", 1)[1]
    before = console.api.get(f"/v1/contracts/{cid}", headers=auth(console.world.grid)).json()
    r = console.post(f"/console/contracts/{cid}/sign", {"signature": "not-a-signature"})
    assert r.status_code == 422
    r = console.post(f"/console/contracts/{cid}/sign", {"signature": "A" * 86 + "=="})
    assert r.status_code in (409, 422)  # already signed by the broker's key, or bad
    after = console.api.get(f"/v1/contracts/{cid}", headers=auth(console.world.grid)).json()
    assert after["signatures"] == before["signatures"]


@pytest.mark.parametrize("lang", ["zh-CN", "en"])
def test_the_provider_pages_render_in_both_languages(console: Console, lang: str) -> None:
    console.login("grid")
    did = console.world.dataset["id"]
    for path in ("/console/datasets", "/console/datasets/new", f"/console/datasets/{did}",
                 f"/console/datasets/{did}/slices/new", "/console/contracts",
                 "/console/contracts/offer", f"/console/contracts/offer?dataset_id={did}",
                 f"/console/contracts/{console.world.contract['id']}", "/console/uses"):
        r = console.web.get(path + ("&" if "?" in path else "?") + f"lang={lang}")
        assert r.status_code == 200, (path, r.text[:500])
        assert f'<html lang="{lang}">' in r.text
    if lang == "zh-CN":
        assert "我的数据集" in console.web.get("/console/datasets").text

