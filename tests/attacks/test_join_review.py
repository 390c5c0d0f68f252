"""Second reader's attacks on cross-source queries (issue 17 review)."""

from __future__ import annotations

import itertools
import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
import pytest
from fastapi.testclient import TestClient

from tests.conftest import Mint, auth, csv_bytes, upload

#: F is the target; P, Q, R three groups of five firms.
GROUPS = {"F": ["F00"], "P": [f"P{i}" for i in range(5)], "Q": [f"Q{i}" for i in range(5)],
          "R": [f"R{i}" for i in range(5)]}
FIRMS = [f for g in GROUPS.values() for f in g]
GROUP = {f: g for g, fs in GROUPS.items() for f in fs}
METER = {f: 1000.0 + 37 * i for i, f in enumerate(FIRMS)}
#: Each firm's own report is 4 to 6 % off the meter, the target's 5.5 %.
REPORTED = {f: round(METER[f] * (1.04 + 0.001 * (i % 20)), 2) for i, f in enumerate(FIRMS)}
#: Group R's own reports are 30 % above the meter: every one of them disagrees.
MISREPORTED = {f: round(METER[f] * (1.3 if GROUP[f] == "R" else 1.04 + 0.001 * (i % 20)), 2)
               for i, f in enumerate(FIRMS)}

METER_META = {"name": "meter", "entity_field": "uscc", "fields": [
    {"name": "uscc", "type": "string", "role": "entity"},
    {"name": "grp", "type": "string", "role": "dimension"},
    {"name": "month", "type": "integer", "role": "dimension"},
    {"name": "kwh", "type": "number", "role": "measure"}]}
SELF_META = {"name": "self", "entity_field": "uscc", "fields": [
    {"name": "uscc", "type": "string", "role": "entity"},
    {"name": "kwh_reported", "type": "number", "role": "measure"}]}


class Pair:
    """A meter dataset (grid) and the firms' own reports (assoc), both linkable to econ."""

    def __init__(self, client: TestClient, mint: Mint,
                 reported: dict[str, float] | None = None) -> None:
        self.client = client
        reported = reported or REPORTED
        admin = mint("broker-ops", "admin")
        self.econ = mint("econ", "consumer")
        self.auditor = mint("audit-office", "auditor")
        self.providers = providers = {org: mint(org, "provider") for org in ("grid", "assoc")}
        for org, kind in [("grid", "enterprise"), ("assoc", "department"),
                          ("econ", "department"), ("audit-office", "auditor")]:
            r = client.post("/v1/orgs", headers=auth(admin),
                            json={"id": org, "name": org, "kind": kind})
            assert r.status_code == 201, r.text
        meter = pd.DataFrame([{"uscc": f, "grp": GROUP[f].lower(), "month": m,
                               "kwh": METER[f] * share} for f in FIRMS
                              for m, share in ((1, 0.375), (2, 0.625))])
        own = pd.DataFrame([{"uscc": f, "kwh_reported": reported[f]} for f in FIRMS])
        self.contracts: dict[str, str] = {}
        self.datasets: dict[str, str] = {}
        for org, frame, meta, fields in [
                ("grid", meter, METER_META, {"grp": "clear", "month": "clear", "kwh": "aggregate"}),
                ("assoc", own, SELF_META, {"kwh_reported": "aggregate"})]:
            r = upload(client, providers[org], frame, meta)
            assert r.status_code == 201, r.text
            self.datasets[org] = r.json()["id"]
            now = datetime.now(UTC)
            r = client.post("/v1/contracts", headers=auth(providers[org]), json={
                "dataset_id": self.datasets[org], "consumer_org": "econ",
                "purposes": ["industrial-policy"], "fields": fields, "k_min": 3,
                "valid_from": (now - timedelta(minutes=5)).isoformat(),
                "valid_until": (now + timedelta(days=30)).isoformat(),
                "max_queries_per_day": 1000, "linkable": True})
            assert r.status_code == 201, r.text
            self.contracts[org] = r.json()["id"]
            r = client.post(f"/v1/contracts/{self.contracts[org]}/accept",
                            headers=auth(self.econ))
            assert r.status_code == 200, r.text

    def crosscheck(self, left: str, groups: str, tolerance: float = 10.0,
                   **body: Any) -> dict[str, Any]:
        """One cell: the cross-check over the firms of ``groups``; ``left`` names the
        authoritative side ("g" the meter, "s" the firms' reports)."""
        cells = self.crosscheck_cells(left, groups, tolerance, **body)
        assert len(cells) == 1, cells
        return cells[0]

    def crosscheck_cells(self, left: str, groups: str, tolerance: float = 10.0,
                         **body: Any) -> list[dict[str, Any]]:
        """Every cell of a cross-check over the firms of ``groups``."""
        fields = {"g": "g.kwh", "s": "s.kwh_reported"}
        right = "s" if left == "g" else "g"
        r = self.client.post("/v1/queries/crosscheck", headers=auth(self.econ), json={
            "sources": {"g": self.contracts["grid"], "s": self.contracts["assoc"]},
            "purpose": "industrial-policy", "left": fields[left], "right": fields[right],
            "tolerance_pct": tolerance,
            "filters": [{"field": "g.grp", "op": "in", "value": [g.lower() for g in groups]}],
            **body})
        assert r.status_code == 200, r.text
        return list(r.json()["cells"])


    def joined_sum(self, field: str, groups: str, *more: dict[str, Any]) -> dict[str, Any]:
        """One cell: a joined sum of ``field`` (no count) over the firms of ``groups``."""
        r = self.client.post("/v1/queries/aggregate", headers=auth(self.econ), json={
            "sources": {"g": self.contracts["grid"], "s": self.contracts["assoc"]},
            "purpose": "industrial-policy", "measures": [{"fn": "sum", "field": field}],
            "filters": [{"field": "g.grp", "op": "in", "value": [g.lower() for g in groups]},
                        *more]})
        assert r.status_code == 200, r.text
        [cell] = r.json()["cells"]
        return dict(cell)


@pytest.fixture
def pair(client: TestClient, mint: Mint) -> Pair:
    return Pair(client, mint)


def _abs(groups: str) -> float:
    return sum(abs(METER[f] - REPORTED[f]) for f in FIRMS if GROUP[f] in groups)


def test_abs_diff_of_one_pair_audited_under_two_keys_by_direction(pair: Pair) -> None:
    """|meter - report| per firm is one figure whichever side is authoritative, but the
    release audit keeps it under ``#check:<right>:<left>:<right>:abs`` in the *left*
    source's history: with the sides swapped it lands in the other dataset's history, under
    another key, and the two halves of a derivation never meet.

    S1 = F+P+Q and S4 = R through the meter as authority; S2 = P+R and S3 = Q+R through the
    reports as authority: S1 - S2 - S3 + 2 S4 = F. Every pair of populations is at least
    five firms apart, so only the release audit could see it."""
    published = {}
    for name, left, groups in [("S1", "g", "FPQ"), ("S4", "g", "R"),
                               ("S2", "s", "PR"), ("S3", "s", "QR")]:
        cell = pair.crosscheck(left, groups)
        if cell["status"] == "published":
            published[name] = cell["values"]["abs_diff_sum"]
            assert published[name] == pytest.approx(_abs(groups))
    if len(published) == 4:
        derived = published["S1"] - published["S2"] - published["S3"] + 2 * published["S4"]
        truth = abs(METER["F00"] - REPORTED["F00"])
        assert derived != pytest.approx(truth), (
            f"F00's |meter - report| = {derived} derived from four cross-checks")


@pytest.fixture
def misreported(client: TestClient, mint: Mint) -> Pair:
    return Pair(client, mint, MISREPORTED)


def test_a_unanimous_disagreement_is_not_the_total_less_the_other_cells(
        misreported: Pair) -> None:
    """A cross-check cell where every firm disagrees is withheld (as dominated) only after
    complementary suppression ran, with no protection level: the total less the other cells
    then gives it back, telling of each of group R's firms that it misreports."""
    cells = misreported.crosscheck_cells("g", "PR", group_by=["g.grp"], totals=True)
    by_key = {c["key"].get("g.grp", "*"): c for c in cells}
    assert by_key["r"]["status"] == "suppressed", cells
    if by_key["p"]["status"] == "published" and by_key["*"]["status"] == "published":
        disagree = by_key["*"]["values"]["disagree"] - by_key["p"]["values"]["disagree"]
        compared = by_key["*"]["values"]["compared"] - by_key["p"]["values"]["compared"]
        assert disagree < compared, (
            f"every one of the {compared} firms of group R disagrees: total less group P")


def test_a_unanimous_disagreement_is_not_two_cross_checks_apart(misreported: Pair) -> None:
    """The same attribute disclosure from two one-cell cross-checks: P+R (half disagree) and
    P (none does), each published, five firms apart (k = 3, so no differencing). Their
    difference is group R's cell, compared 5, disagree 5: every firm of R misreports, which
    the broker refuses to publish as a cell. Unanimity is only checked on table cells, and
    the release audit gives a unanimous cell no protection unless it was asked for."""
    both = misreported.crosscheck("g", "PR")
    alone = misreported.crosscheck("g", "P")
    if both["status"] == "published" and alone["status"] == "published":
        disagree = both["values"]["disagree"] - alone["values"]["disagree"]
        compared = both["values"]["compared"] - alone["values"]["compared"]
        assert disagree < compared, (
            f"every one of the {compared} firms of group R disagrees: P+R less P")


def test_abs_diff_sum_and_joined_sums_of_each_side_give_a_firms_report(pair: Pair) -> None:
    """``abs_diff_sum`` is audited as a quantity of its own, linked to neither side's sums,
    and only the cross-check carries a count. With the sign of the differences known (the
    firms' own reports run above the meter, as they commonly do; here every one does):
    abs(F+P) + meter(F+P) - report(P) = report(F). Three answers, one per history (the
    check's, the meter's, the reports'); populations F+P and P are one firm apart, but under
    different keys (f:#check...:abs, f:kwh, f:kwh_reported), so the differencing guard never
    compares them, and no count joins the sums to the county-wide count system."""
    x = pair.crosscheck("g", "FP")
    g = pair.joined_sum("g.kwh", "FP")
    y = pair.joined_sum("s.kwh_reported", "P")
    if all(c["status"] == "published" for c in (x, g, y)):
        derived = (x["values"]["abs_diff_sum"] + g["values"]["sum_g.kwh"]
                   - y["values"]["sum_s.kwh_reported"])
        assert derived != pytest.approx(REPORTED["F00"]), (
            f"F00's own report {derived} from a cross-check and two joined sums")


def test_a_month_against_the_year_gives_the_sign_and_a_firms_report(pair: Pair) -> None:
    """The same without any guess about signs: a cross-check of the firms' yearly reports
    (authoritative) against one month of the meter compares a year with a month, so every
    difference is report - month (tolerance 100 %: nobody disagrees, nothing withheld).
    abs(F+P, month 1) + meter(F+P, month 1) - report(P) = report(F)."""
    month = {"field": "g.month", "op": "eq", "value": 1}
    x = pair.crosscheck("s", "FP", 100.0, filters=[
        {"field": "g.grp", "op": "in", "value": ["f", "p"]}, month])
    g = pair.joined_sum("g.kwh", "FP", month)
    y = pair.joined_sum("s.kwh_reported", "P")
    # (A cross-check cell is now withheld unless k firms disagree and k agree; and its
    # compared fields are audited as if their sums were released.)
    if all(c["status"] == "published" for c in (x, g, y)):
        derived = (x["values"]["abs_diff_sum"] + g["values"]["sum_g.kwh"]
                   - y["values"]["sum_s.kwh_reported"])
        assert derived != pytest.approx(REPORTED["F00"]), (
            f"F00's own report {derived} from a cross-check and two joined sums")


def test_a_refused_join_whose_first_alias_names_no_contract_is_seen_by_the_other_provider(
        pair: Pair) -> None:
    """The providers' view keeps an entry when ``dataset_id`` or ``source0_dataset_id`` is
    set: a join whose alphabetically first alias names an unknown contract has no dataset at
    source 0, so the meter's provider never sees the attempt on its contract (while the same
    attempt with the unknown contract's alias sorting after "g" does show)."""
    seen = []
    unknown = "00000000-0000-4000-8000-00000000beef"
    for other in ("z", "a"):  # the unknown contract's alias sorts after "g", then before
        r = pair.client.post("/v1/queries/aggregate", headers=auth(pair.econ), json={
            "sources": {"g": pair.contracts["grid"], other: unknown},
            "purpose": "industrial-policy", "measures": [{"fn": "count"}]})
        assert r.status_code == 403, r.text
        entries = pair.client.get("/v1/audit/entries", headers=auth(pair.auditor),
                                  params={"action": "query.aggregate"}).json()["entries"]
        seq = entries[-1]["entry"]["seq"]
        page = pair.client.get("/v1/audit/accesses", headers=auth(pair.providers["grid"]),
                               params={"limit": 500}).json()
        seen.append(seq in {a["seq"] for a in page["accesses"]})
    assert seen == [True, True], seen


def test_a_cross_check_refused_while_resolving_its_indicator_is_audited(pair: Pair) -> None:
    """Every query is audited whatever its outcome (and a malformed body is, see
    ``AUDITED_QUERIES``); but ``JoinedQueries._resolved`` raises NotFound / InvalidInput
    before any entry is written, so probing the indicator catalogue against contracts
    leaves no trace."""
    def crosschecks() -> int:
        r = pair.client.get("/v1/audit/entries", headers=auth(pair.auditor),
                            params={"action": "query.crosscheck", "limit": 500})
        return len(r.json()["entries"])

    before = crosschecks()
    r = pair.client.post("/v1/queries/crosscheck", headers=auth(pair.econ), json={
        "sources": {"g": pair.contracts["grid"], "s": pair.contracts["assoc"]},
        "purpose": "industrial-policy", "indicator": "no-such-indicator"})
    assert r.status_code == 404, r.text
    assert crosschecks() == before + 1, "the refused cross-check is not on the record"


def test_the_audit_entry_names_the_version_the_join_was_computed_on(
        client: TestClient, mint: Mint) -> None:
    """A contract that follows the latest version: a new version stored while the join is
    computed. The service computes on the version of the first decision, then decides again
    under the lock and writes the entry from that second decision: the receipt names a
    version whose data the answer never read (the single-source service writes its entry
    from the decision it computed with)."""
    pair = Pair(client, mint)
    storage = client.app.state.container.queries.storage  # type: ignore[attr-defined]
    original = storage.scan
    calls: list[str] = []

    def scan_then_new_version(location: str) -> Any:
        if not calls:
            calls.append(location)
            own = pd.DataFrame([{"uscc": f, "kwh_reported": 1.0} for f in FIRMS])
            r = client.post(f"/v1/datasets/{pair.datasets['assoc']}/versions",
                            headers=auth(pair.providers["assoc"]),
                            files={"file": ("v2.csv", csv_bytes(own), "text/csv")})
            assert r.status_code == 201, r.text
        return original(location)

    storage.scan = scan_then_new_version
    try:
        r = pair.client.post("/v1/queries/aggregate", headers=auth(pair.econ), json={
            "sources": {"g": pair.contracts["grid"], "s": pair.contracts["assoc"]},
            "purpose": "industrial-policy",
            "measures": [{"fn": "sum", "field": "s.kwh_reported"}]})
    finally:
        storage.scan = original
    assert r.status_code == 200, r.text
    [cell] = r.json()["cells"]
    assert cell["values"]["sum_s.kwh_reported"] == pytest.approx(sum(REPORTED.values()))
    entries = pair.client.get("/v1/audit/entries", headers=auth(pair.auditor),
                              params={"action": "query.aggregate"}).json()["entries"]
    sources = {s["alias"]: s for s in entries[-1]["entry"]["resource"]["sources"]}
    assert sources["s"]["version"] == 1, "the entry names version 2; the answer read 1"


def test_a_tolerance_sweep_does_not_read_off_each_firms_discrepancy(pair: Pair) -> None:
    """``disagree`` at each tolerance is a quantity of its own (``...:disagree@<t>``), so
    nothing relates the answers at different tolerances: sweeping ``tolerance_pct`` over one
    published five-firm cell reads off every firm's relative discrepancy |meter - report| /
    meter, to the step of the sweep (the cell's distribution, exactly, with no identity). A
    firm known to be the cell's only outlier, or one cell's unanimity at another tolerance,
    then needs no further query."""
    truth = sorted(abs(METER[f] - REPORTED[f]) / METER[f] * 100 for f in GROUPS["P"])
    # from the top down: a cell of P withheld first (unanimous at a low tolerance) would
    # protect P's abs_diff_sum and withhold every later cell of P as linked
    steps = [round(4.0 + 0.01 * i, 2) for i in range(70)]
    counts = []
    for t in reversed(steps):
        cell = pair.crosscheck("g", "P", t)
        # withheld as "dominance" below the smallest discrepancy: all five disagree (the
        # reason itself says so when no firm's difference dominates)
        counts.append(cell["values"]["disagree"] if cell["status"] == "published"
                      else 5 if cell["reason"] == "dominance" else math.nan)
    counts.reverse()
    published = [c for c in counts if not math.isnan(c)]
    # Whatever is published, no two answers tell apart fewer than k firms (k = 3 here).
    assert all(a == b or abs(a - b) >= 3 for a, b in itertools.pairwise(published)), counts
    if len(published) < len(counts):
        return  # the steps withheld leave nothing to read to the step of the sweep
    read = sorted(t for t, before, after in zip(steps[1:], counts, counts[1:], strict=False)
                  for _ in range(int(before - after)))
    assert len(read) != len(truth) or any(
        abs(r - x) > 0.05 for r, x in zip(read, truth, strict=True)), (
        f"each firm's discrepancy in % read off one cell: {read} (truth {truth})")
