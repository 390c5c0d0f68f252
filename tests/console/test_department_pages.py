"""The department's console pages over HTTP (no browser): contracts in force, the query
builder's dry run and run, withheld cells, downloads that release nothing again, receipts, and
the 404s and 403s that keep one department out of another's contracts and answers."""

from __future__ import annotations

import io
import json
import re
import sqlite3
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import openpyxl
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from audit.checkpoint import NoteVerifier
from audit.proofs import check_document
from broker.app import create_app
from broker.settings import Settings
from tests.conftest import Mint, World, auth, contract_terms
from tests.console.http import HERE, LOOPBACK, log_in

#: The dev login in English: the session's CSRF token.
login = partial(log_in, role="consumer", language="en")


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    """A TestClient on loopback (the session cookie is Secure elsewhere)."""
    with TestClient(create_app(settings), base_url=LOOPBACK, client=HERE) as c:
        yield c


def other_client(client: TestClient) -> TestClient:
    """A second browser on the same app (its own cookies)."""
    return TestClient(client.app, base_url=LOOPBACK, client=HERE)




def audit(settings: Settings) -> list[tuple[int, str, int, dict[str, Any]]]:
    with sqlite3.connect(settings.data_dir / "broker.db") as conn:
        rows = conn.execute(
            "SELECT seq, action, allowed, body FROM audit_entries ORDER BY seq").fetchall()
    return [(seq, action, allowed, json.loads(body)) for seq, action, allowed, body in rows]


def actions(settings: Settings, action: str) -> list[tuple[int, int, dict[str, Any]]]:
    return [(seq, allowed, body) for seq, a, allowed, body in audit(settings) if a == action]


def query_form(world: World, csrf: str, **overrides: Any) -> dict[str, Any]:
    """The builder's form: town by town, the count and the kWh sum."""
    form: dict[str, Any] = {
        "csrf": csrf, "contract": world.contract["id"], "purpose": "energy-planning",
        "group_by": ["town"], "measure_fn": ["count", "sum"], "measure_field": ["", "kwh"],
        "measure_denominator": ["", ""]}
    form.update(overrides)
    return {k: v for k, v in form.items() if v is not None}


def quota_left(world: World) -> int:
    r = world.client.post("/v1/policy/explain", headers=auth(world.econ), json={
        "contract_id": world.contract["id"], "purpose": "energy-planning",
        "measures": [{"fn": "count"}]})
    assert r.status_code == 200, r.text
    left: int = r.json()["quota_remaining"]
    return left


def row_of(html: str, key: str) -> str:
    """The answer table's row whose first cell is ``key``."""
    found = re.search(r"<tr>\s*<td>" + re.escape(key) + r"</td>(.*?)</tr>", html, re.S)
    assert found is not None, html
    return found.group(1)


def test_contracts_in_force_show_what_each_allows_and_the_quota_left(
        client: TestClient, world: World) -> None:
    login(client, "econ")
    world.query(group_by=["town"])
    page = client.get("/console/contracts/in-force?lang=en")
    assert page.status_code == 200
    html = page.text
    assert world.contract["id"] in html
    assert "energy-planning" in html
    assert "kwh: aggregated only" in html
    assert "town: clear" in html
    assert "name: pseudonymised" in html
    assert "99 left today" in html  # one release of the 100 a day
    assert "Content-Security-Policy" in page.headers


def test_an_offer_is_accepted_from_the_console_with_the_brokers_signature(
        client: TestClient, world: World, settings: Settings) -> None:
    csrf = login(client, "econ")
    r = client.post("/v1/contracts", headers=auth(world.grid), json=contract_terms(
        world.energy_copy(), fields={"town": "clear", "kwh": "aggregate"}))
    assert r.status_code == 201, r.text
    offered = r.json()["id"]
    page = client.get("/console/contracts/in-force?lang=en").text
    assert f"/console/contracts/{offered}/accept" in page
    r = client.post(f"/console/contracts/{offered}/accept", data={"csrf": csrf},
                    follow_redirects=False)
    assert r.status_code == 303
    assert r.headers["location"] == "/console/contracts/in-force?done=accepted"
    got = client.get(f"/v1/contracts/{offered}", headers=auth(world.econ)).json()
    assert got["status"] == "active"
    assert [a for _, a, allowed, body in audit(settings)
            if a == "contract.accept" and body["resource"]["contract_id"] == offered] == [
        "contract.accept"]


def test_accept_without_csrf_is_403_and_the_offer_stays_offered(
        client: TestClient, world: World) -> None:
    login(client, "econ")
    r = client.post("/v1/contracts", headers=auth(world.grid), json=contract_terms(
        world.energy_copy(), fields={"town": "clear", "kwh": "aggregate"}))
    offered = r.json()["id"]
    r = client.post(f"/console/contracts/{offered}/accept", data={})
    assert r.status_code == 403
    assert client.get(f"/v1/contracts/{offered}",
                      headers=auth(world.econ)).json()["status"] == "offered"


def test_the_builder_offers_the_contracts_fields_by_form(
        client: TestClient, world: World) -> None:
    login(client, "econ")
    html = client.get(f"/console/query?contract={world.contract['id']}&lang=en").text
    assert 'name="group_by" value="town"' in html
    assert 'name="group_by" value="kwh"' not in html  # aggregate only: never a key
    assert '<option value="kwh">kwh</option>' in html  # a measure
    assert '<option value="energy-planning">' in html
    fragment = client.get(f"/console/query/fields?contract={world.contract['id']}").text
    assert "<html" not in fragment
    assert 'name="group_by" value="town"' in fragment
    row = client.get(f"/console/query/rows/filter?contract={world.contract['id']}").text
    assert 'name="filter_field"' in row
    assert "<option value=\"town\">" in row
    assert "<option value=\"kwh\">" not in row
    # No contract chosen (the empty choice): the hint, not an error.
    none = client.get("/console/query/fields?contract=&lang=en")
    assert none.status_code == 200
    assert "Choose a contract to see the fields it offers." in none.text
    assert client.get("/console/query?contract=not-a-uuid").status_code == 422


def test_another_departments_contract_in_the_builder_is_404_and_audited(
        client: TestClient, world: World, settings: Settings, mint: Mint) -> None:
    theirs = world.contract_for(world.energy_copy(), consumer="env",
                                fields={"town": "clear", "kwh": "aggregate"})
    csrf = login(client, "econ")
    r = client.get(f"/console/query?contract={theirs}&lang=en")
    assert r.status_code == 404
    assert theirs not in r.text
    _seq, allowed, body = actions(settings, "contract.read")[-1]
    assert (allowed, body["actor"]["org"], body["resource"]["contract_id"]) == (
        0, "econ", theirs)
    before = len(actions(settings, "query.aggregate"))
    r = client.post("/console/query/run", data=query_form(world, csrf, contract=theirs))
    assert r.status_code == 404
    assert len(actions(settings, "query.aggregate")) == before


def test_a_dry_run_shows_verdicts_and_predictions_and_releases_nothing(
        client: TestClient, world: World, settings: Settings) -> None:
    csrf = login(client, "econ")
    left = quota_left(world)
    r = client.post("/console/query/explain?lang=en", data=query_form(world, csrf),
                    headers={"HX-Request": "true"})
    assert r.status_code == 200, r.text
    html = r.text
    assert "<html" not in html  # an HTMX fragment
    assert "Nothing was released" in html
    assert "The policy would allow this query." in html
    assert re.search(r"<td>town</td><td class=\"allowed\">clear</td>", html)
    assert "Too few enterprises in the cell" in html  # town B predicted withheld
    assert actions(settings, "query.aggregate") == []
    assert quota_left(world) == left
    assert actions(settings, "policy.explain")[-1][2]["actor"]["org"] == "econ"


def test_a_run_shows_the_answer_and_a_withheld_cell_never_as_a_number(
        client: TestClient, world: World, settings: Settings) -> None:
    csrf = login(client, "econ")
    r = client.post("/console/query/run?lang=en", data=query_form(world, csrf),
                    headers={"HX-Request": "true"})
    assert r.status_code == 200, r.text
    html = r.text
    assert r.headers["x-console-fragment"] == "1"
    published = row_of(html, "A")
    assert ">6<" in published
    assert ">85<" in published
    withheld = row_of(html, "B")
    assert "WITHHELD" in withheld
    assert "min-entities" in withheld
    assert "Too few enterprises in the cell" in withheld
    # No count, no sum, nothing that could be one: the row's text holds no digit.
    assert not re.search(r"\d", re.sub(r"<[^>]+>", "", withheld))
    chart = re.search(r"data-chart='([^']+)'", html)
    assert chart is not None
    config = json.loads(chart.group(1).replace("&#34;", '"').replace("&#39;", "'")
                        .replace("&amp;", "&"))
    assert config["data"]["labels"] == ["A", "B"]
    assert config["data"]["datasets"][1] == {"label": "sum_kwh", "yAxisID": "y1",
                                             "data": [85.0, None]}
    (seq, allowed, body), = actions(settings, "query.aggregate")
    assert allowed == 1
    assert f"<td>{seq}</td>" in html
    assert body["request_id"] in html
    assert f'href="/console/query/receipts/{seq}"' in html


def test_downloads_hold_the_answer_shown_and_release_nothing_again(
        client: TestClient, world: World, settings: Settings) -> None:
    csrf = login(client, "econ")
    r = client.post("/console/query/run?lang=en", data=query_form(world, csrf))
    assert r.status_code == 200
    query_id = actions(settings, "query.aggregate")[-1][2]["request_id"]
    left = quota_left(world)

    csv_file = client.get(f"/console/query/results/{query_id}.csv")
    assert csv_file.status_code == 200
    assert csv_file.headers["content-type"].startswith("text/csv")
    assert csv_file.content.startswith(b"\xef\xbb\xbf")  # UTF-8 BOM: Excel reads Chinese
    lines = csv_file.content.decode("utf-8-sig").splitlines()
    assert lines[0] == "town,count,sum_kwh,Status,Reason"
    assert lines[1] == "A,6,85.0,Published,"
    assert lines[2].startswith("B,Withheld: Too few enterprises in the cell,")
    assert lines[2].endswith(",Withheld,min-entities")
    assert not re.search(r"\d", lines[2])

    xlsx = client.get(f"/console/query/results/{query_id}.xlsx")
    assert xlsx.status_code == 200
    sheet = openpyxl.load_workbook(io.BytesIO(xlsx.content)).active
    assert sheet is not None
    rows = [list(r) for r in sheet.iter_rows(values_only=True)]
    assert rows[1] == ["A", 6, 85, "Published", None]
    assert rows[2][0] == "B"
    assert rows[2][3:] == ["Withheld", "min-entities"]
    assert all(isinstance(v, str) and v.startswith("Withheld") for v in rows[2][1:3])

    assert len(actions(settings, "query.aggregate")) == 1  # no second release
    assert quota_left(world) == left
    downloads = actions(settings, "query.download")
    assert [allowed for _, allowed, _ in downloads] == [1, 1]
    # On the provider's record too: which contract and dataset the downloaded answer came from.
    assert {(b["resource"]["contract_id"], b["resource"]["dataset_id"])
            for _, _, b in downloads} == {(world.contract["id"], world.dataset["id"])}


def test_chinese_downloads_are_chinese(client: TestClient, world: World,
                                       settings: Settings) -> None:
    csrf = login(client, "econ")
    client.post("/console/query/run?lang=zh-CN", data=query_form(world, csrf))
    query_id = actions(settings, "query.aggregate")[-1][2]["request_id"]
    text = client.get(f"/console/query/results/{query_id}.csv").content.decode("utf-8-sig")
    assert "已隐去" in text
    assert "单元格内企业数过少" in text


def test_another_departments_download_url_is_404_and_audited(
        client: TestClient, world: World, settings: Settings) -> None:
    csrf = login(client, "econ")
    client.post("/console/query/run", data=query_form(world, csrf))
    query_id = actions(settings, "query.aggregate")[-1][2]["request_id"]
    with other_client(client) as env:
        login(env, "env")
        for ext in ("csv", "xlsx"):
            r = env.get(f"/console/query/results/{query_id}.{ext}?lang=en")
            assert r.status_code == 404
            assert "min-entities" not in r.text
            assert "sum_kwh" not in r.text  # (the page holds a random request id)
    refused = [(allowed, body["actor"]["org"], body["decision"]["reasons"])
               for _, allowed, body in actions(settings, "query.download")]
    assert refused == [(0, "env", ["not-found"])] * 2
    # The owner still gets it; an unknown id is the same 404.
    assert client.get(f"/console/query/results/{query_id}.csv").status_code == 200
    assert client.get("/console/query/results/no-such-query.csv").status_code == 404


def test_a_run_without_csrf_is_403_releases_nothing_and_uses_no_quota(
        client: TestClient, world: World, settings: Settings) -> None:
    login(client, "econ")
    left = quota_left(world)
    form = query_form(world, "")
    del form["csrf"]
    for path in ("/console/query/run", "/console/query/explain"):
        r = client.post(path, data=form)
        assert r.status_code == 403
        r = client.post(path, data={**form, "csrf": "forged"}, headers={"HX-Request": "true"})
        assert r.status_code == 403
    assert actions(settings, "query.aggregate") == []
    assert len(actions(settings, "policy.explain")) == 1  # quota_left's own dry run
    assert quota_left(world) == left


def test_a_refusal_is_shown_in_place_with_its_reasons(
        client: TestClient, world: World, settings: Settings) -> None:
    csrf = login(client, "econ")
    r = client.post("/console/query/run?lang=en",
                    data=query_form(world, csrf, purpose="tax-audit"),
                    headers={"HX-Request": "true"})
    assert r.status_code == 403
    assert r.headers["x-console-fragment"] == "1"
    assert "The query was refused" in r.text
    assert "purpose-not-in-contract" in r.text
    assert actions(settings, "query.aggregate")[-1][1] == 0


def test_a_form_the_api_model_refuses_is_422_and_on_the_record(
        client: TestClient, world: World, settings: Settings) -> None:
    csrf = login(client, "econ")
    r = client.post("/console/query/run?lang=en",
                    data=query_form(world, csrf, purpose="Not A Slug!"))
    assert r.status_code == 422
    assert "purpose" in r.text
    assert "Not A Slug" not in r.text
    (_, allowed, body), = actions(settings, "query.aggregate")
    assert (allowed, body["decision"]["reasons"]) == (0, ["invalid-input"])


def test_the_receipt_page_links_a_proof_that_checks_offline(
        client: TestClient, world: World, settings: Settings, tmp_path: Path) -> None:
    csrf = login(client, "econ")
    client.post("/console/query/run", data=query_form(world, csrf))
    seq, _, _body = actions(settings, "query.aggregate")[-1]
    page = client.get(f"/console/query/receipts/{seq}?lang=en")
    assert page.status_code == 200
    assert "broker audit check proof-" in page.text
    proof = client.get(f"/console/query/receipts/{seq}/proof.json").json()
    receipt = client.get(f"/console/query/receipts/{seq}/receipt.json").json()
    vkey = client.get("/console/query/log.vkey").text
    verifier = NoteVerifier.from_text(vkey, settings.audit_origin)
    checked = check_document(proof, verifier, receipt=receipt)
    assert checked.summary
    assert receipt["seq"] == seq
    # Another department may not see this entry's proof: refused as the API refuses it
    # (GET /v1/audit/entries/{seq}/proof), and on the record.
    with other_client(client) as env:
        login(env, "env")
        assert env.get(f"/console/query/receipts/{seq}").status_code == 403
        assert env.get(f"/console/query/receipts/{seq}/proof.json").status_code == 403
    refused = [body["actor"]["org"] for _, allowed, body in actions(settings, "audit.proof")
               if not allowed]
    assert refused == ["env", "env"]


def test_a_provider_cannot_open_the_department_pages(client: TestClient, world: World) -> None:
    login(client, "grid", role="provider")
    assert client.get("/console/query").status_code == 403
    assert client.get("/console/contracts/in-force").status_code == 403


#: Daily readings of eight firms over two months: a date the contract lets out only coarser.
DAILY = pd.DataFrame({
    "uscc": [f"E{i}" for i in range(8)] * 2,
    "day": ["2025-01-05"] * 8 + ["2025-02-07"] * 8,
    "town": ["A", "A", "A", "A", "B", "B", "B", "B"] * 2,
    "kwh": [float(10 + i) for i in range(16)],
})


def test_a_generalised_date_is_offered_only_at_coarser_levels_and_runs_by_month(
        client: TestClient, world: World, settings: Settings) -> None:
    dataset = world.add_dataset(DAILY, [
        {"name": "day", "type": "date", "role": "dimension"},
        {"name": "town", "type": "string", "role": "dimension"},
        {"name": "kwh", "type": "number", "role": "measure"}])
    world.fields = {"day": "generalize", "town": "clear", "kwh": "aggregate"}
    cid = world.contract_for(dataset)
    csrf = login(client, "econ")
    html = client.get(f"/console/query?contract={cid}&lang=en").text
    levels = re.search(r'<select id="lv-\d+" name="level\.day">(.*?)</select>', html, re.S)
    assert levels is not None
    assert re.findall(r'<option value="([^"]*)"', levels.group(1)) == ["month", "quarter",
                                                                        "year"]
    r = client.post("/console/query/run?lang=en", data={
        "csrf": csrf, "contract": cid, "purpose": "energy-planning", "group_by": ["day"],
        "level.day": "month", "measure_fn": ["count"], "measure_field": [""],
        "measure_denominator": [""], "filter_field": ["town"], "filter_op": ["in"],
        "filter_value": ["A, B"], "filter_to": [""]})
    assert r.status_code == 200, r.text
    assert ">8<" in row_of(r.text, "2025-01")
    assert ">8<" in row_of(r.text, "2025-02")
    (_, allowed, body), = actions(settings, "query.aggregate")
    assert allowed == 1
    assert body["resource"]["contract_id"] == cid
