"""The auditor's and the operator's console pages over HTTP, on a real app: the log with
filters and paging, an entry with its proof (and a provider kept to its own datasets'),
"verify now" on an intact and a tampered log, checkpoints, denial charts, organisations and
health; roles and CSRF enforced."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import re
from collections.abc import Iterator
from functools import partial

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from fastapi.testclient import TestClient
from sqlalchemy import create_engine

from broker.app import create_app
from broker.console.web import CSP
from broker.demo import tamper
from broker.domain.uscc import make_uscc
from broker.settings import Settings
from tests.conftest import Mint, World, auth
from tests.console.http import HERE, LOOPBACK, log_in


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    """The app on loopback, for a client on this machine (the session cookie is not Secure
    there and the dev login serves it), lifespan run."""
    with TestClient(create_app(settings), base_url=LOOPBACK, client=HERE) as c:
        yield c


#: The dev login, in English, in a browser without cookies.
login = partial(log_in, language="en", fresh=True)


def entries(world: World, **params: str) -> list[dict[str, object]]:
    """The log as the API gives it to the auditor."""
    r = world.client.get("/v1/audit/entries", headers=auth(world.auditor),
                         params={"limit": "1000", **params})
    assert r.status_code == 200, r.text
    found: list[dict[str, object]] = [e["entry"] for e in r.json()["entries"]]
    return found


def seqs_on(html: str) -> list[int]:
    """The entries' seqs listed in the log table of a page."""
    return [int(s) for s in re.findall(r'href="/console/audit/entries/(\d+)"', html)]


def test_auditor_reads_the_log_with_filters_and_pages_through_it(world: World) -> None:
    assert world.query(group_by=["town"]).status_code == 200
    assert world.query(purpose="marketing").status_code == 403  # a denial on the record
    login(world.client, "audit-office", "auditor")

    first = world.client.get("/console/audit", params={"limit": "4"})
    assert first.status_code == 200
    assert "content-security-policy" in first.headers
    assert seqs_on(first.text) == [1, 2, 3, 4]
    assert 'rel="next"' in first.text
    next_url = re.search(r'href="([^"]+)" rel="next"', first.text)
    assert next_url is not None
    second = world.client.get(next_url.group(1).replace("&amp;", "&"))
    assert seqs_on(second.text) == [5, 6, 7, 8]

    denied = world.client.get("/console/audit", params={"decision": "deny", "org": "econ"})
    wanted = [e["seq"] for e in entries(world, decision="deny", org="econ")]
    assert wanted
    assert seqs_on(denied.text) == wanted
    assert "purpose-not-in-contract" in denied.text
    by_dataset = world.client.get("/console/audit", params={
        "dataset_id": world.dataset["id"], "action": "query.aggregate"})
    wanted = [e["seq"] for e in entries(world, dataset_id=world.dataset["id"],
                                        action="query.aggregate")]
    assert len(wanted) == 2
    assert seqs_on(by_dataset.text) == wanted
    today = entries(world)[0]["ts"]
    assert isinstance(today, str)
    day = today[:10]
    in_window = world.client.get("/console/audit", params={"since": day, "until": day,
                                                           "limit": "500"})
    assert len(seqs_on(in_window.text)) >= 10
    before = world.client.get("/console/audit", params={"until": "2000-01-01"})
    assert seqs_on(before.text) == []

    bad = world.client.get("/console/audit", params={"dataset_id": "not-a-uuid"})
    assert bad.status_code == 422


def test_the_log_page_shows_decisions_and_disclosure_never_values(world: World) -> None:
    r = world.query(group_by=["town"])
    assert r.status_code == 200
    receipt = r.json()["receipt"]["seq"]
    login(world.client, "audit-office", "auditor")
    page = world.client.get("/console/audit", params={"action": "query.aggregate",
                                                      "lang": "en"})
    assert f'href="/console/audit/entries/{receipt}"' in page.text
    assert "Cells published" in page.text
    assert "energy-planning" in page.text
    for cell in r.json()["cells"]:  # the released values are nowhere on the page
        for value in (cell.get("values") or {}).values():
            assert f">{value}<" not in page.text


def test_consumers_and_providers_get_403_on_the_auditor_pages(world: World) -> None:
    for org, role in (("econ", "consumer"), ("grid", "provider")):
        login(world.client, org, role)
        for path in ("/console/audit", "/console/audit/verify", "/console/audit/checkpoints",
                     "/console/audit/charts", "/console/operator", "/console/operator/health"):
            r = world.client.get(path)
            assert r.status_code == 403, (org, path)
            assert "text/html" in r.headers["content-type"]


def test_an_entry_shows_its_canonical_json_and_its_inclusion_proof(world: World) -> None:
    receipt = world.query(group_by=["town"]).json()["receipt"]
    login(world.client, "audit-office", "auditor")
    r = world.client.get(f"/console/audit/entries/{receipt['seq']}?lang=en")
    assert r.status_code == 200
    assert receipt["leaf_hash"] in r.text
    assert "broker audit check" in r.text
    assert "Inclusion proof" in r.text
    document = world.client.get(f"/console/audit/entries/{receipt['seq']}/proof.json")
    assert document.status_code == 200
    proof = document.json()
    assert (proof["type"], proof["seq"], proof["leaf_hash"]) == (
        "inclusion", receipt["seq"], receipt["leaf_hash"])
    assert proof["entry"]["seq"] == receipt["seq"]
    key = world.client.get("/console/audit/key.txt").text.strip()
    assert key == world.client.get("/v1/audit/key").json()["vkey"]


def test_the_proof_document_checks_offline(world: World, tmp_path: object) -> None:
    from audit.checkpoint import NoteVerifier
    from audit.proofs import check_document

    seq = world.query(group_by=["town"]).json()["receipt"]["seq"]
    login(world.client, "audit-office", "auditor")
    proof = world.client.get(f"/console/audit/entries/{seq}/proof.json").json()
    key = world.client.get("/console/audit/key.txt").text
    check_document(proof, NoteVerifier.from_text(key))  # raises if it does not hold
    proof["entry"]["purpose"] = "something-else"
    with pytest.raises(ValueError, match=r".+"):
        check_document(proof, NoteVerifier.from_text(key))


def test_a_provider_opens_entries_about_its_data_and_gets_404_for_others(
        world: World, mint: Mint) -> None:
    receipt = world.query(group_by=["town"]).json()["receipt"]
    login(world.client, "grid", "provider")
    own = world.client.get(f"/console/audit/entries/{receipt['seq']}")
    assert own.status_code == 200
    assert receipt["leaf_hash"] in own.text

    other = world.client.get("/console/audit/entries/1")  # registering an organisation
    assert other.status_code == 404
    assert "text/html" in other.headers["content-type"]
    assert world.client.get("/console/audit/entries/1/proof.json").status_code == 404
    refused = [e for e in entries(world, org="grid", decision="deny")
               if e["action"] == "audit.proof"]
    assert len(refused) == 2  # both attempts are on the record

    login(world.client, "water", "provider")  # another provider: not its data
    assert world.client.get(f"/console/audit/entries/{receipt['seq']}").status_code == 404


def test_verify_now_reports_an_intact_log(world: World) -> None:
    csrf = login(world.client, "audit-office", "auditor")
    page = world.client.get("/console/audit/verify?lang=en")
    assert page.status_code == 200
    assert "Verify now" in page.text
    r = world.client.post("/console/audit/verify", headers={"X-CSRF-Token": csrf,
                                                            "HX-Request": "true"})
    assert r.status_code == 200
    assert "The log is intact" in r.text
    assert "<html" not in r.text
    whole = world.client.post("/console/audit/verify", data={"csrf": csrf})
    assert whole.status_code == 200
    assert "<html" in whole.text


def test_verify_now_on_a_tampered_log_names_the_first_bad_entry(
        world: World, settings: Settings) -> None:
    world.query(group_by=["town"])
    engine = create_engine(settings.db_url)
    with engine.begin() as conn:
        tamper.disarm(conn)
        tamper.flip_byte(conn, 4)
    engine.dispose()
    csrf = login(world.client, "audit-office", "auditor")
    r = world.client.post("/console/audit/verify?lang=en",
                          headers={"X-CSRF-Token": csrf, "HX-Request": "true"})
    assert r.status_code == 200
    assert "The log has been tampered with" in r.text
    assert re.search(r'id="first-bad-seq">4<', r.text)
    assert re.search(r'id="fault-kind">bad-entry<', r.text)


def test_verify_and_register_without_the_csrf_token_are_refused(world: World) -> None:
    login(world.client, "audit-office", "auditor")
    r = world.client.post("/console/audit/verify", data={})
    assert r.status_code == 403
    r = world.client.post("/console/audit/verify", data={"csrf": "forged"})
    assert r.status_code == 403
    verifications = [e for e in entries(world) if e["action"] == "audit.verify"]
    assert verifications == []  # nothing ran

    csrf = login(world.client, "broker-ops", "admin")
    form = {"org_id": "forestry", "name": "Forestry", "kind": "department"}
    assert world.client.post("/console/operator/orgs", data=form).status_code == 403
    assert world.client.post("/console/operator/orgs",
                             data={**form, "csrf": csrf},
                             headers={"Origin": "http://evil.example"}).status_code == 403
    orgs = world.client.get("/v1/orgs", headers=auth(world.admin)).json()
    assert "forestry" not in [o["id"] for o in orgs]


def test_checkpoints_page_shows_the_signed_notes_their_outside_copies_and_the_key(
        world: World) -> None:
    world.query(group_by=["town"])
    login(world.client, "audit-office", "auditor")
    # An inclusion proof signs a checkpoint covering the entry, stored and copied outside.
    assert world.client.get("/console/audit/entries/3").status_code == 200
    r = world.client.get("/console/audit/checkpoints?lang=en")
    assert r.status_code == 200
    api = world.client.get("/v1/audit/checkpoints", headers=auth(world.auditor)).json()
    newest = api["checkpoints"][0]
    assert newest["root"] in r.text
    assert f"{newest['size']:020d}.checkpoint" in r.text
    assert "same root" in r.text
    assert world.client.get("/v1/audit/key").json()["vkey"] in r.text


def table_totals(html: str, table_id: str) -> dict[str, int]:
    """A denial table's figures summed over its days, per column (series)."""
    table = html[html.index(f'id="{table_id}"'):]
    table = table[:table.index("</table>")]
    names = re.findall(r'<th scope="col"><code>([^<]+)</code></th>', table)
    totals: dict[str, int] = {}
    for cells in re.findall(r'<th scope="row">[^<]+</th>(.*?)</tr>', table, re.S):
        values = [int(v) for v in re.findall(r'<td class="num">(\d+)</td>', cells)]
        assert len(values) == len(names) + 1
        assert sum(values[:-1]) == values[-1]  # the day's total
        for name, n in zip(names, values, strict=False):
            totals[name] = totals.get(name, 0) + n
    return totals


def test_denial_charts_count_denials_by_reason_and_organisation(world: World) -> None:
    for _ in range(2):
        assert world.query(purpose="marketing").status_code == 403
    login(world.client, "audit-office", "auditor")
    r = world.client.get("/console/audit/charts?lang=en")
    assert r.status_code == 200
    denied = entries(world, decision="deny")
    assert denied
    by_org: dict[str, int] = {}
    by_reason: dict[str, int] = {}
    for e in denied:
        actor, decision = e["actor"], e["decision"]
        assert isinstance(actor, dict)
        assert isinstance(decision, dict)
        by_org[actor["org"]] = by_org.get(actor["org"], 0) + 1
        for reason in decision["reasons"]:
            by_reason[reason] = by_reason.get(reason, 0) + 1
    assert table_totals(r.text, "table-reasons") == by_reason
    assert table_totals(r.text, "table-orgs") == by_org
    assert '"text": "Denials by reason"' in r.text  # the chart's title: the page's language
    assert 'data-chart=' in r.text
    assert 'id="table-reasons"' in r.text
    assert f"Denied entries counted: {len(denied)}." in r.text


def test_operator_lists_organisations_with_key_fingerprints_and_registers_one(
        world: World) -> None:
    csrf = login(world.client, "broker-ops", "admin")
    r = world.client.get("/console/operator?lang=en")
    assert r.status_code == 200
    for org in ("grid", "water", "econ", "env", "audit-office"):
        assert f"<code>{org}</code>" in r.text
    assert "SHA256:" in r.text  # the embedded keyring gave each a key
    assert "<td>Department</td>" in r.text  # kinds in the page's language

    uscc = make_uscc("330100", "MA2F0000")
    made = world.client.post("/console/operator/orgs", data={
        "org_id": "forestry", "name": "Forestry Bureau", "kind": "department",
        "uscc": uscc, "csrf": csrf}, follow_redirects=False)
    assert made.status_code == 303
    listed = world.client.get(made.headers["location"])
    assert "Forestry Bureau" in listed.text
    assert uscc in listed.text
    orgs = {o["id"]: o for o in world.client.get("/v1/orgs", headers=auth(world.admin)).json()}
    assert orgs["forestry"]["kind"] == "department"

    twice = world.client.post("/console/operator/orgs", data={
        "org_id": "forestry", "name": "Other", "kind": "department", "csrf": csrf})
    assert twice.status_code == 409
    bad = world.client.post("/console/operator/orgs", data={
        "org_id": "roads", "name": "Roads", "kind": "department",
        "uscc": uscc[:-1] + ("0" if uscc[-1] != "0" else "1"), "csrf": csrf})
    assert bad.status_code == 422
    assert "roads" not in {o["id"] for o in world.client.get(
        "/v1/orgs", headers=auth(world.admin)).json()}


def test_a_registered_public_key_is_shown_by_its_sha256_fingerprint(world: World) -> None:
    key = Ed25519PrivateKey.generate().public_key()
    pem = key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()
    raw = key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    expected = "SHA256:" + base64.b64encode(hashlib.sha256(raw).digest()).decode().rstrip("=")
    csrf = login(world.client, "broker-ops", "admin")
    r = world.client.post("/console/operator/orgs", data={
        "org_id": "roads", "name": "Roads Bureau", "kind": "department", "public_key": pem,
        "csrf": csrf})
    assert r.status_code == 200  # after the redirect
    row = r.text[r.text.index("<code>roads</code>"):]
    assert expected in row[:row.index("</tr>")]


def test_operator_health_shows_the_policy_revision_and_the_probes(world: World) -> None:
    login(world.client, "broker-ops", "admin")
    r = world.client.get("/console/operator/health?lang=en")
    assert r.status_code == 200
    revision = world.client.get("/readyz").json()["policy_revision"]
    assert f"<code>{revision}</code>" in r.text
    assert "Ready" in r.text
    assert "embedded" in r.text
    assert "secret" not in r.text.lower()


def test_an_unexpected_failure_is_a_page_with_the_csp_that_tells_nothing_of_it(
        world: World, caplog: pytest.LogCaptureFixture) -> None:
    container = world.client.app.state.container  # type: ignore[attr-defined]

    def broken() -> str:
        raise RuntimeError("row value 4711.25 of enterprise-x")

    object.__setattr__(container, "health", dataclasses.replace(container.health,
                                                                revision=broken))
    login(world.client, "broker-ops", "admin")
    r = world.client.get("/console/operator/health")
    assert r.status_code == 500
    assert r.headers["content-type"].startswith("text/html")
    assert r.headers["content-security-policy"] == CSP
    assert "Something went wrong" in r.text  # a page in the language chosen (English)
    assert "4711.25" not in r.text
    assert "RuntimeError" in caplog.text
    assert "4711.25" not in caplog.text


def test_the_auditor_pages_are_in_chinese_by_default(world: World) -> None:
    login(world.client, "audit-office", "auditor")
    world.client.cookies.delete("broker_console_lang", path="/console")
    r = world.client.get("/console/audit?lang=zh-CN")
    assert "审计日志" in r.text


def test_a_forged_outside_copy_of_a_checkpoint_is_flagged(world: World,
                                                          settings: Settings) -> None:
    login(world.client, "audit-office", "auditor")
    assert world.client.get("/console/audit/entries/3").status_code == 200  # signs one
    newest = world.client.get("/v1/audit/checkpoints",
                              headers=auth(world.auditor)).json()["checkpoints"][0]
    size = newest["size"]
    lines = newest["note"].split("\n")
    lines[2] = "A" * 43 + "="  # another root under the same signature
    forged = settings.checkpoints_path / f"{size:020d}.conflict-0123abcd.checkpoint"
    forged.write_text("\n".join(lines), encoding="utf-8")
    r = world.client.get("/console/audit/checkpoints?lang=en")
    assert r.status_code == 200
    assert "whose signature does not verify" in r.text
    assert forged.name in r.text
    assert f"{size:020d}.checkpoint</code>: <span class=\"status-ok\">same root" in r.text
