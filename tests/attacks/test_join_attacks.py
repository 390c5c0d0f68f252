"""Attacks on cross-source queries (issue 17): several providers' data joined by enterprise.

The county here has four providers, each with one dataset in which a different firm (or
firms) is missing, so that any join's membership differs from a single source's, or from
another join's, by one firm:

* grid (monthly kwh, town, month): every firm but ``NO_GRID``;
* tax (yearly tax, industry): every firm but ``NO_TAX`` and two of the small town's firms;
* nrb (land mu): every firm but ``NO_NRB``;
* mee (co2): every firm but ``NO_MEE``.

Every consumer (econ, env) has a linkable contract on every dataset. The attacker keeps
every published figure as a linear form over each dataset's rows (one unknown per row; the
enterprise count over the county register, shared by every dataset), and the exact oracle of
:mod:`tests.attacks.oracle` decides whether any firm's figure is derivable. Each test fails
if its attack succeeds.

Found by this suite, and fixed:

* the remainder row was the pool of the cells withheld *before* the release audit; a cell the
  audit then withholds as ``linked`` is the margin less the published cells less the
  remainder (test_a_linked_cell_is_not_the_margin_less_the_rest_and_the_remainder,
  test_the_small_towns_joined_cell_through_the_margin; single source too:
  test_remainder_single_source.py); it now pools every cell not published;
* counts of distinct enterprises are forms over one register shared by every dataset, but
  each was audited only in its own dataset's history (now one county-wide system): single
  counts of three sources and
  their three-way join count one firm alone
  (test_counts_of_three_sources_and_their_join_do_not_isolate_a_firm[False], and the
  campaign's ``all`` case);
* a pseudonymized dimension grouped with the same attribute in clear from another dataset
  was read off the cross table's keys and reasons
  (test_a_pseudonymized_dimension_is_not_linked_back_by_a_clear_one_of_another_source); a
  join grouped by a pseudonymized field is now refused (``pseudonym-not-joinable``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
import pytest
from fastapi.testclient import TestClient

from tests.attacks.oracle import COUNT, Published, Row, find_leaks
from tests.conftest import Mint, assert_problem, auth, csv_bytes, upload

FIRMS = [f"F{i:02d}" for i in range(30)]
SMALL_TOWN = "Q"
#: F26-F29 are the small town's four firms; every other firm is in one of four big towns.
TOWN = {f: (SMALL_TOWN if i >= 26 else "NSEW"[i % 4]) for i, f in enumerate(FIRMS)}
INDUSTRY = {f: "xyz"[i % 3] for i, f in enumerate(FIRMS)}
NO_GRID, NO_TAX, NO_NRB, NO_MEE = "F04", "F05", "F06", "F07"
#: Two of the small town's four firms pay no tax here: the town's joined cell has two firms.
SMALL_UNTAXED = ("F28", "F29")
MONTHS = range(1, 13)


def _value(firm: str, salt: int, low: int, high: int) -> int:
    """A deterministic whole figure in [low, high) (whole: every published sum is exact)."""
    n = int(firm[1:])
    return low + (n * 37 + salt * 11 + n * n * salt) % (high - low)


def grid_frame() -> pd.DataFrame:
    return pd.DataFrame([{"uscc": f, "town": TOWN[f], "month": m,
                          "kwh": float(_value(f, m, 60, 120))}
                         for f in FIRMS if f != NO_GRID for m in MONTHS])


def tax_frame() -> pd.DataFrame:
    return pd.DataFrame([{"code": f, "industry": INDUSTRY[f], "tax": float(_value(f, 31, 100, 200))}
                         for f in FIRMS if f != NO_TAX and f not in SMALL_UNTAXED])


def nrb_frame() -> pd.DataFrame:
    return pd.DataFrame([{"uscc": f, "mu": float(_value(f, 47, 20, 40))}
                         for f in FIRMS if f != NO_NRB])


def mee_frame() -> pd.DataFrame:
    return pd.DataFrame([{"uscc": f, "co2": float(_value(f, 53, 30, 60))}
                         for f in FIRMS if f != NO_MEE])


META: dict[str, dict[str, Any]] = {
    "grid": {"name": "grid-monthly", "entity_field": "uscc", "fields": [
        {"name": "uscc", "type": "string", "role": "entity"},
        {"name": "town", "type": "string", "role": "dimension"},
        {"name": "month", "type": "integer", "role": "dimension"},
        {"name": "kwh", "type": "number", "role": "measure"}]},
    "tax": {"name": "tax-yearly", "entity_field": "code", "fields": [
        {"name": "code", "type": "string", "role": "entity"},
        {"name": "industry", "type": "string", "role": "dimension"},
        {"name": "tax", "type": "number", "role": "measure"}]},
    "nrb": {"name": "land-register", "entity_field": "uscc", "fields": [
        {"name": "uscc", "type": "string", "role": "entity"},
        {"name": "mu", "type": "number", "role": "measure"}]},
    "mee": {"name": "emissions", "entity_field": "uscc", "fields": [
        {"name": "uscc", "type": "string", "role": "entity"},
        {"name": "co2", "type": "number", "role": "measure"}]},
}
FRAMES: dict[str, Callable[[], pd.DataFrame]] = {
    "grid": grid_frame, "tax": tax_frame, "nrb": nrb_frame, "mee": mee_frame}
OFFERED: dict[str, dict[str, str]] = {
    "grid": {"town": "clear", "month": "clear", "kwh": "aggregate"},
    "tax": {"industry": "clear", "tax": "aggregate"},
    "nrb": {"mu": "aggregate"},
    "mee": {"co2": "aggregate"},
}
MEASURE = {"grid": "kwh", "tax": "tax", "nrb": "mu", "mee": "co2"}


def oracle_rows() -> list[Row]:
    """Every dataset's rows as the oracle's unknowns: a sum's unknowns are one dataset's rows
    (measure ``ds.field``), a count's the enterprises (shared by every dataset)."""
    rows = []
    for ds, make in FRAMES.items():
        frame = make()
        entity = META[ds]["entity_field"]
        measure = MEASURE[ds]
        for r in frame.to_dict("records"):
            attrs = {str(k): v for k, v in r.items() if k not in (entity, measure)}
            rows.append(Row(enterprise=str(r[entity]), attrs={"ds": ds, **attrs},
                            values={f"{ds}.{measure}": int(r[measure])}))
    return rows


ROWS = oracle_rows()

# ------------------------------------------------------------------------- the county


class County:
    """Four providers, two consumers, a linkable contract for each (consumer, dataset)."""

    def __init__(self, client: TestClient, mint: Mint) -> None:
        self.client = client
        self.admin = mint("broker-ops", "admin")
        self.tokens = {org: mint(org, "provider") for org in ("grid", "tax", "nrb", "mee",
                                                               "water")}
        self.consumers = {"econ": mint("econ", "consumer"), "env": mint("env", "consumer")}
        self.auditor = mint("audit-office", "auditor")
        for org, kind in [("grid", "enterprise"), ("tax", "department"), ("nrb", "department"),
                          ("mee", "department"), ("water", "enterprise"),
                          ("econ", "department"), ("env", "department"),
                          ("audit-office", "auditor")]:
            r = client.post("/v1/orgs", headers=auth(self.admin),
                            json={"id": org, "name": org, "kind": kind})
            assert r.status_code == 201, r.text
        self.datasets: dict[str, str] = {}
        for org, make in FRAMES.items():
            r = upload(client, self.tokens[org], make(), META[org])
            assert r.status_code == 201, r.text
            self.datasets[org] = r.json()["id"]
        self.contracts: dict[str, dict[str, str]] = {
            consumer: {org: self.contract(org, consumer=consumer) for org in FRAMES}
            for consumer in self.consumers}

    def contract(self, org: str, fields: Mapping[str, str] | None = None, *,
                 consumer: str = "econ", linkable: bool = True, accept: bool = True,
                 **terms: Any) -> str:
        now = datetime.now(UTC)
        body = {"dataset_id": self.datasets[org], "consumer_org": consumer,
                "purposes": ["industrial-policy"], "fields": dict(fields or OFFERED[org]),
                "k_min": 3, "valid_from": (now - timedelta(minutes=5)).isoformat(),
                "valid_until": (now + timedelta(days=30)).isoformat(),
                "max_queries_per_day": 1000, "linkable": linkable, **terms}
        r = self.client.post("/v1/contracts", headers=auth(self.tokens[org]), json=body)
        assert r.status_code == 201, r.text
        cid: str = r.json()["id"]
        if accept:
            r = self.client.post(f"/v1/contracts/{cid}/accept",
                                 headers=auth(self.consumers[consumer]))
            assert r.status_code == 200, r.text
        return cid

    def post(self, consumer: str, body: Mapping[str, Any],
             path: str = "/v1/queries/aggregate") -> Any:
        payload = {"purpose": "industrial-policy", **body}
        return self.client.post(path, headers=auth(self.consumers[consumer]), json=payload)

    def entries(self, **params: Any) -> list[dict[str, Any]]:
        r = self.client.get("/v1/audit/entries", headers=auth(self.auditor),
                            params={"limit": 500, **params})
        assert r.status_code == 200, r.text
        entries: list[dict[str, Any]] = r.json()["entries"]
        return entries


@pytest.fixture
def county(client: TestClient, mint: Mint) -> County:
    return County(client, mint)


# ------------------------------------------------------------ the attacker's bookkeeping


def _passes(value: object, op: str, arg: Any) -> bool:
    if op == "eq":
        return bool(value == arg)
    if op == "in":
        return value in arg
    low, high = arg
    return (low is None or value >= low) and (high is None or value <= high)


@dataclass
class Attack:
    """Every figure published to any consumer, as linear forms for the oracle."""

    county: County
    cells: list[Published] = field(default_factory=list)
    log: list[str] = field(default_factory=list)

    # -- reading a query back ------------------------------------------------------------

    @staticmethod
    def _scope(ds: str, preds: Sequence[tuple[str, str, Any]]) -> Callable[[Row], bool]:
        def where(row: Row) -> bool:
            return row.attrs["ds"] == ds and all(_passes(row.attrs[f], op, v)
                                                 for f, op, v in preds)
        return where

    def _cell_where(self, sources: Mapping[str, str], body: Mapping[str, Any],
                    key: Mapping[str, Any]) -> tuple[dict[str, Callable[[Row], bool]],
                                                     frozenset[str]]:
        """Each alias's rows in a cell's scope, and the enterprises the join keeps."""
        preds: dict[str, list[tuple[str, str, Any]]] = {a: [] for a in sources}
        for flt in body.get("filters", []):
            alias, own = self._split(sources, flt["field"])
            preds[alias].append((own, flt["op"], flt["value"]))
        for name, value in key.items():
            alias, own = self._split(sources, name)
            preds[alias].append((own, "eq", value))
        scopes = {a: self._scope(ds, preds[a]) for a, ds in sources.items()}
        kept: set[str] | None = None
        for scope in scopes.values():
            present = {r.enterprise for r in ROWS if scope(r)}
            kept = present if kept is None else kept & present
        return scopes, frozenset(kept or ())

    @staticmethod
    def _split(sources: Mapping[str, str], name: str) -> tuple[str, str]:
        if len(sources) == 1:
            return next(iter(sources)), name
        alias, _, own = name.partition(".")
        return alias, own

    def _publish(self, label: str, measure: str, value: float, scope: Callable[[Row], bool],
                 kept: frozenset[str]) -> None:
        def where(row: Row) -> bool:
            return row.enterprise in kept and scope(row)
        self.cells.append(Published(label, measure, round(value) if measure != COUNT
                                    else int(value), where))

    # -- asking --------------------------------------------------------------------------

    def ask(self, consumer: str, sources: Mapping[str, str], **body: Any
            ) -> dict[tuple[tuple[str, Any], ...], dict[str, Any] | None] | None:
        """Ask one query: ``sources`` maps alias -> provider (one entry: a single-source
        query, fields unqualified). Measures are named m0, m1, ... The cells by key (None
        where withheld), or None when refused whole; every published sum and count is kept,
        and a mean times its count, a ratio times its denominator's sum, as sums."""
        n = len(self.log) + 1
        measures = [dict(m, **{"as": f"m{i}"}) for i, m in enumerate(body.pop("measures"))]
        contracts = self.county.contracts[consumer]
        if len(sources) == 1:
            [ds] = sources.values()
            payload = {"contract_id": contracts[ds], "measures": measures, **body}
        else:
            payload = {"sources": {a: contracts[ds] for a, ds in sources.items()},
                       "measures": measures, **body}
        r = self.county.post(consumer, payload)
        if r.status_code == 403 and r.json().get("type") == "disclosure-refused":
            self.log.append(f"q{n}({consumer}): refused")
            return None
        assert r.status_code == 200, f"q{n} failed: {r.text}"
        answer = r.json()
        out: dict[tuple[tuple[str, Any], ...], dict[str, Any] | None] = {}
        published = 0
        withheld_keys = []
        dims = [d if isinstance(d, str) else d["field"] for d in body.get("group_by", [])]
        for cell in answer["cells"]:
            key, values = cell["key"], cell["values"]
            out[tuple(sorted(key.items()))] = values
            if values is None:
                # the remainder pools every table cell not published, whatever withheld it
                if set(key) == set(dims):
                    withheld_keys.append(key)
                continue
            published += 1
            self._record(f"q{n}{key}", sources, body, measures, key, values)
        rest = answer.get("remainder")
        if rest is not None and rest.get("values") is not None and withheld_keys:
            self._record_pooled(f"q{n}-rest", sources, body, measures, withheld_keys,
                                rest["values"])
        self.log.append(f"q{n}({consumer},{'+'.join(sources.values())}): "
                        f"{published}/{len(out)} published"
                        + (", remainder" if rest and rest.get("values") else ""))
        return out

    def _measure_of(self, sources: Mapping[str, str], name: str) -> str:
        alias, own = self._split(sources, name)
        return f"{sources[alias]}.{own}"

    def _record(self, label: str, sources: Mapping[str, str], body: Mapping[str, Any],
                measures: Sequence[Mapping[str, Any]], key: Mapping[str, Any],
                values: Mapping[str, Any]) -> None:
        scopes, kept = self._cell_where(sources, body, key)
        first = next(iter(sources))
        count = next((values[m["as"]] for m in measures if m["fn"] == "count"), None)
        for m in measures:
            v = values.get(m["as"])
            if v is None:
                continue
            if m["fn"] == "count":
                self._publish(label, COUNT, v, scopes[first], kept)
            elif m["fn"] == "sum":
                alias, _ = self._split(sources, m["field"])
                self._publish(label, self._measure_of(sources, m["field"]), v, scopes[alias],
                              kept)
            elif m["fn"] == "mean" and count is not None:
                alias, _ = self._split(sources, m["field"])
                self._publish(label + "*count", self._measure_of(sources, m["field"]),
                              v * count, scopes[alias], kept)
            elif m["fn"] == "ratio":
                den = next((values[o["as"]] for o in measures if o["fn"] == "sum"
                            and o["field"] == m["denominator"]), None)
                if den is not None and v is not None:
                    alias, _ = self._split(sources, m["numerator"])
                    self._publish(label + "*den", self._measure_of(sources, m["numerator"]),
                                  v * den, scopes[alias], kept)

    def _record_pooled(self, label: str, sources: Mapping[str, str], body: Mapping[str, Any],
                       measures: Sequence[Mapping[str, Any]], keys: Sequence[Mapping[str, Any]],
                       values: Mapping[str, Any]) -> None:
        parts = [self._cell_where(sources, body, key) for key in keys]
        for m in measures:
            v = values.get(m["as"])
            if v is None or m["fn"] not in ("sum", "count"):
                continue
            alias = (next(iter(sources)) if m["fn"] == "count"
                     else self._split(sources, m["field"])[0])
            measure = COUNT if m["fn"] == "count" else self._measure_of(sources, m["field"])
            chosen = [(scopes[alias], kept) for scopes, kept in parts]

            def where(row: Row, chosen: list[tuple[Callable[[Row], bool],
                                                   frozenset[str]]] = chosen) -> bool:
                return any(row.enterprise in kept and scope(row) for scope, kept in chosen)
            self.cells.append(Published(label, measure, round(v) if m["fn"] == "sum"
                                        else int(v), where))

    def assert_no_leak(self, *, sums_only: bool = False) -> None:
        """No combination of everything published isolates a firm (``sums_only``: among the
        sums; counts are then left out)."""
        cells = [c for c in self.cells if not (sums_only and c.measure == COUNT)]
        leaks = find_leaks(ROWS, cells)
        if leaks:
            first = {leak.measure: leak for leak in reversed(leaks)}
            pytest.fail(" // ".join(leak.describe() for leak in first.values())
                        + f" | {'; '.join(self.log)}", pytrace=False)


@pytest.fixture
def attack(county: County) -> Attack:
    return Attack(county)


def count() -> dict[str, str]:
    return {"fn": "count"}


def total(name: str) -> dict[str, str]:
    return {"fn": "sum", "field": name}


GT = {"g": "grid", "t": "tax"}
TL = {"t": "tax", "l": "nrb"}
GL = {"g": "grid", "l": "nrb"}
GTL = {"g": "grid", "t": "tax", "l": "nrb"}
GTLM = {"g": "grid", "t": "tax", "l": "nrb", "m": "mee"}


# ------------------------------------------------------------------- 1. differencing


def test_the_model_of_a_join_agrees_with_the_broker(attack: Attack) -> None:
    """Sanity: a joined table the broker publishes is what the attacker's model says (the
    oracle raises on any published value its rows do not hold)."""
    attack.ask("econ", GTL, group_by=["g.town"], measures=[
        count(), total("t.tax"), total("g.kwh"), total("l.mu")])
    assert len(attack.cells) >= 8, attack.log
    find_leaks(ROWS, attack.cells)


@pytest.mark.parametrize("order", ["single-first", "joined-first"])
@pytest.mark.parametrize("fn", ["sum", "count"])
def test_a_single_total_and_a_joined_total_one_firm_apart(attack: Attack, order: str,
                                                          fn: str) -> None:
    """tax alone covers every firm but NO_TAX and the small town's two; tax joined with land
    lacks NO_NRB too: the difference is NO_NRB's tax (or its presence)."""
    asks: list[tuple[dict[str, str], str]] = [({"t": "tax"}, "tax"), (TL, "t.tax")]
    for sources, name in asks if order == "single-first" else asks[::-1]:
        attack.ask("econ", sources, measures=[count() if fn == "count" else total(name)])
    attack.assert_no_leak()


@pytest.mark.parametrize("fn", ["sum", "count"])
def test_two_colluding_departments_difference_single_and_joined(attack: Attack,
                                                                fn: str) -> None:
    """econ asks grid alone; env asks grid joined with land (lacks NO_NRB) and with tax."""
    m = count() if fn == "count" else total("kwh")
    attack.ask("econ", {"g": "grid"}, group_by=["town"], measures=[m])
    jm = count() if fn == "count" else total("g.kwh")
    attack.ask("env", GL, group_by=["g.town"], measures=[jm])
    attack.ask("env", GT, group_by=["g.town"], measures=[jm])
    attack.assert_no_leak()


def test_grouped_by_industry_with_margins_and_remainder(attack: Attack) -> None:
    attack.ask("econ", {"t": "tax"}, group_by=["industry"], totals=True, remainder=True,
               measures=[count(), total("tax")])
    attack.ask("env", TL, group_by=["t.industry"], totals=True, remainder=True,
               measures=[count(), total("t.tax")])
    attack.ask("econ", {"t": "tax", "m": "mee"}, group_by=["t.industry"], totals=True,
               remainder=True, measures=[count(), total("t.tax")])
    attack.assert_no_leak()


def test_month_ranges_single_against_joined(attack: Attack) -> None:
    """kwh of the first half year, by town, alone and joined with tax (which lacks
    NO_TAX): the difference is NO_TAX's half-year kwh."""
    half = [{"field": "month", "op": "range", "value": [1, 6]}]
    attack.ask("econ", {"g": "grid"}, group_by=["town"], filters=half,
               measures=[total("kwh")])
    attack.ask("env", GT, group_by=["g.town"],
               filters=[{"field": "g.month", "op": "range", "value": [1, 6]}],
               measures=[total("g.kwh")])
    attack.ask("env", GT, filters=[{"field": "g.month", "op": "in", "value": [1, 2, 3]}],
               measures=[total("g.kwh")])
    attack.ask("econ", {"g": "grid"}, filters=[{"field": "month", "op": "in",
                                                 "value": [1, 2, 3]}],
               measures=[total("kwh")])
    attack.assert_no_leak()


def test_a_filter_on_the_other_source_splits_the_single_total(attack: Attack) -> None:
    """grid alone; grid joined with tax filtered on each industry: the pieces add up to the
    grid total less NO_TAX (and the small town's untaxed firms)."""
    attack.ask("econ", {"g": "grid"}, group_by=["town"], totals=True,
               measures=[total("kwh"), count()])
    for industry in "xyz":
        attack.ask("env", GT, group_by=["g.town"], totals=True,
                   filters=[{"field": "t.industry", "op": "eq", "value": industry}],
                   measures=[total("g.kwh"), count()])
    attack.assert_no_leak()


def test_means_and_ratios_release_their_sums(attack: Attack) -> None:
    """A mean times its count, a ratio times its denominator: sums to difference."""
    attack.ask("econ", {"t": "tax"}, group_by=["industry"], measures=[total("tax"),
                                                                     count()])
    attack.ask("env", TL, group_by=["t.industry"], measures=[
        count(), {"fn": "mean", "field": "t.tax"}])
    attack.ask("econ", TL, measures=[
        {"fn": "ratio", "numerator": "t.tax", "denominator": "l.mu"}, total("l.mu")])
    attack.ask("env", {"t": "tax"}, measures=[count(), {"fn": "mean", "field": "tax"}])
    attack.assert_no_leak()


def test_the_small_towns_joined_cell_through_the_margin(attack: Attack) -> None:
    """The small town has 4 grid firms, 2 taxed: its joined cell is too small and withheld,
    but the joined total less the other towns gives it, and grid's own small-town cell
    less that gives the two untaxed firms (and the town margin with NO_TAX)."""
    attack.ask("econ", {"g": "grid"}, group_by=["town"], totals=True, remainder=True,
               measures=[total("kwh"), count()])
    attack.ask("env", GT, group_by=["g.town"], totals=True, remainder=True,
               measures=[total("g.kwh"), count()])
    attack.ask("env", GT, measures=[total("g.kwh"), count()])
    attack.assert_no_leak()


# -------------------------------------------------------------- 2. joins of 2, 3, 4


def test_joins_of_growing_source_sets_differ_by_one_firm_each(attack: Attack) -> None:
    """g+t, g+t+l, g+t+l+m: each step drops one firm (NO_NRB, then NO_MEE)."""
    for sources in (GT, GTL, GTLM):
        attack.ask("econ", sources, measures=[count(), total("g.kwh"), total("t.tax")])
    attack.assert_no_leak()


def test_joins_with_different_source_sets_by_town(attack: Attack) -> None:
    for consumer, sources in (("econ", GL), ("env", GT), ("econ", GTL),
                              ("env", {"g": "grid", "m": "mee"}), ("econ", GTLM)):
        attack.ask(consumer, sources, group_by=["g.town"], totals=True,
                   measures=[count(), total("g.kwh")])
    attack.assert_no_leak()


def test_inclusion_exclusion_of_memberships_isolates_nothing(attack: Attack) -> None:
    """|G&L| + |G&M| - |G&L&M| - |G| ... the union of two drops is recoverable only if the
    audit loses track of which firms each join keeps."""
    gm = {"g": "grid", "m": "mee"}
    lm = {"l": "nrb", "m": "mee"}
    for consumer, sources in (("econ", GL), ("env", gm), ("econ", {"g": "grid", "l": "nrb",
                                                                   "m": "mee"}),
                              ("env", lm)):
        attack.ask(consumer, sources, measures=[count(), total("l.mu")
                                                if "l" in sources else total("m.co2")])
    attack.ask("env", {"l": "nrb"}, measures=[count(), total("mu")])
    attack.ask("econ", {"m": "mee"}, measures=[count(), total("co2")])
    attack.assert_no_leak()


# ------------------------------------------------------------------------ 6. k


def test_a_joined_cell_of_fewer_firms_than_the_strictest_k_is_withheld(
        county: County) -> None:
    """Each source alone has every firm of each town and industry; joined by town and
    industry, cells have 2-3 firms. Under a k=5 contract none of them may be published."""
    strict = county.contract("nrb", k_min=5)
    r = county.post("econ", {"sources": {"g": county.contracts["econ"]["grid"], "l": strict},
                             "group_by": ["g.town"], "measures": [count(), total("l.mu")]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["k"] == 5
    for cell in body["cells"]:
        if cell["values"] is not None:
            assert cell["values"]["count"] >= 5, cell
    small = {c["key"]["g.town"]: c for c in body["cells"]}[SMALL_TOWN]  # 4 firms in both
    assert small["values"] is None, small
    # the small town joined with tax: 2 firms, though each source alone has 4 and 26+
    r = county.post("econ", {"sources": {"g": county.contracts["econ"]["grid"],
                                         "t": county.contracts["econ"]["tax"]},
                             "filters": [{"field": "g.town", "op": "eq",
                                          "value": SMALL_TOWN}],
                             "measures": [count(), total("t.tax"), total("g.kwh")]})
    if r.status_code == 200:
        [cell] = r.json()["cells"]
        assert cell["values"] is None, cell
    else:
        assert r.status_code == 403, r.text
        assert "values" not in r.text


# ------------------------------------------------------------------- 3. the oracle


@pytest.mark.parametrize("sums_only", [False, True], ids=["all", "sums"])
def test_everything_a_campaign_publishes_pins_no_firm(attack: Attack, sums_only: bool) -> None:
    """A long campaign of both departments mixing single and joined queries, groupings,
    filters, margins and remainders; then the oracle over everything published."""
    half = {"g.month": [1, 6]}
    for consumer in ("econ", "env"):
        attack.ask(consumer, {"g": "grid"}, group_by=["town", "month"], totals=True,
                   remainder=True, measures=[count(), total("kwh")])
        attack.ask(consumer, {"t": "tax"}, group_by=["industry"], totals=True,
                   measures=[count(), total("tax")])
        attack.ask(consumer, {"l": "nrb"}, measures=[count(), total("mu")])
        attack.ask(consumer, {"m": "mee"}, measures=[count(), total("co2")])
    for i, (sources, group) in enumerate([
            (GT, ["g.town", "t.industry"]), (GTL, ["t.industry"]), (GTLM, ["g.town"]),
            (GL, ["g.town", "g.month"]), (TL, ["t.industry"]),
            ({"t": "tax", "m": "mee"}, []), ({"g": "grid", "m": "mee"}, ["g.town"])]):
        measures = [count()] + [total(f"{a}.{MEASURE[ds]}") for a, ds in sources.items()]
        attack.ask("econ" if i % 2 else "env", sources, group_by=group, totals=True,
                   remainder=True, measures=measures)
        if "g" in sources:
            attack.ask("env" if i % 2 else "econ", sources, group_by=group,
                       filters=[{"field": f, "op": "range", "value": v}
                                for f, v in half.items()],
                       measures=measures)
    attack.assert_no_leak(sums_only=sums_only)


# ------------------------------------------------------------------ 4. input attacks


def _released_since(county: County, seq: int) -> list[dict[str, Any]]:
    return [e for e in county.entries(action="query.aggregate")
            if e["entry"]["seq"] > seq and e["entry"]["decision"]["allowed"]]


def _last_seq(county: County) -> int:
    entries = county.entries()
    return max((e["entry"]["seq"] for e in entries), default=-1)


def _no_row_values(text: str) -> None:
    """No figure of any dataset appears in an error body."""
    for ds, make in FRAMES.items():
        frame = make()
        for v in set(frame[MEASURE[ds]].astype(int)):
            for spelled in (f"{v}.0", f": {v},", f":{v},", f":{v}}}"):
                assert spelled not in text, (ds, v, text)


BAD_ALIASES = ["G", "gé", "g" * 17, "1g", "g-1", "g.t", "", "g t", "g'--", "\uff47"]


@pytest.mark.parametrize("alias", BAD_ALIASES)
def test_a_malformed_alias_is_invalid_input(county: County, alias: str) -> None:
    c = county.contracts["econ"]
    r = county.post("econ", {"sources": {alias: c["grid"], "t": c["tax"]},
                             "measures": [total(f"{alias}.kwh")]})
    assert_problem(r, 422, "invalid-input")
    assert "cells" not in r.json()
    _no_row_values(r.text)


INJECTIONS = ["kwh; drop table x", "kwh\" or 1=1 --", "kwh)", "*", "kwh/*", "uscc",
              "t.tax", "Kwh", "\uff4b\uff57\uff48", "kwh\u200b", "g", "a.b.c", "month'",
              "tax", "industry", "code", "mu"]  # the last: other sources' fields


@pytest.mark.parametrize("name", INJECTIONS)
def test_injection_in_a_field_name_releases_nothing(county: County, name: str) -> None:
    c = county.contracts["econ"]
    seq = _last_seq(county)
    for where in ("measure", "group", "filter"):
        body: dict[str, Any] = {"sources": {"g": c["grid"], "t": c["tax"]},
                                "measures": [count()]}
        if where == "measure":
            body["measures"] = [total(f"g.{name}")]
        elif where == "group":
            body["group_by"] = [f"g.{name}"]
        else:
            body["filters"] = [{"field": f"g.{name}", "op": "eq", "value": 1}]
        r = county.post("econ", body)
        assert r.status_code in (403, 422), r.text
        assert r.headers["content-type"].startswith("application/problem+json")
        assert "cells" not in r.json()
        _no_row_values(r.text)
    assert not _released_since(county, seq)


def test_a_field_the_contract_does_not_offer_looks_like_an_absent_one(
        county: County) -> None:
    """grid offers town, month, kwh; the dataset has nothing else. A contract that does not
    offer kwh: asking g.kwh must answer as asking g.nosuch does."""
    narrow = county.contract("grid", {"town": "clear", "month": "clear"})
    c = county.contracts["econ"]
    answers = []
    for name in ("kwh", "nosuch"):
        r = county.post("econ", {"sources": {"g": narrow, "t": c["tax"]},
                                 "measures": [total(f"g.{name}")]})
        assert r.status_code in (403, 422), r.text
        body = r.json()
        answers.append((r.status_code, body["type"], body.get("reasons"),
                        body["detail"].replace(name, "<f>")))
        _no_row_values(r.text)
    assert answers[0] == answers[1], answers


@pytest.mark.parametrize("case", [
    "five-sources", "one-source", "duplicate-contract", "no-alias", "unknown-alias",
    "filter-on-measure", "entity-as-dimension", "entity-in-filter", "entity-as-measure",
    "both-kinds"])
def test_malformed_joins_release_nothing(county: County, case: str) -> None:
    c = county.contracts["econ"]
    seq = _last_seq(county)
    body: dict[str, Any] = {"sources": {"g": c["grid"], "t": c["tax"]},
                            "measures": [count()]}
    if case == "five-sources":
        extra = county.contract("grid")
        body["sources"] = {"g": c["grid"], "t": c["tax"], "l": c["nrb"], "m": c["mee"],
                           "h": extra}
    elif case == "one-source":
        body["sources"] = {"g": c["grid"]}
    elif case == "duplicate-contract":
        body["sources"] = {"a": c["grid"], "b": c["grid"]}
        body["measures"] = [total("a.kwh"), total("b.kwh")]
    elif case == "no-alias":
        body["group_by"] = ["town"]
    elif case == "unknown-alias":
        body["measures"] = [total("x.kwh")]
    elif case == "filter-on-measure":
        body["filters"] = [{"field": "t.tax", "op": "range", "value": [150, 160]}]
    elif case == "entity-as-dimension":
        body["group_by"] = ["g.uscc"]
    elif case == "entity-in-filter":
        body["filters"] = [{"field": "t.code", "op": "eq", "value": "F10"}]
    elif case == "entity-as-measure":
        body["measures"] = [total("g.uscc")]
    elif case == "both-kinds":
        body["contract_id"] = c["grid"]
    r = county.post("econ", body)
    assert r.status_code in (403, 422), r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert "cells" not in r.json()
    _no_row_values(r.text)
    assert not _released_since(county, seq)
    if r.status_code == 403:  # a refusal by the broker (not the schema) is audited
        last = county.entries(action="query.aggregate")[-1]["entry"]
        assert last["seq"] > seq, last
        assert last["decision"]["allowed"] is False, last


@pytest.mark.parametrize("change", ["revoke", "suspend", "expired", "not-linkable",
                                    "other-purpose", "other-consumer", "not-accepted",
                                    "unknown"])
def test_a_source_not_usable_refuses_the_join_audited(county: County, change: str) -> None:
    c = county.contracts["econ"]
    now = datetime.now(UTC)
    if change == "unknown":
        cid = "00000000-0000-4000-8000-00000000abcd"
    elif change == "expired":  # accepted while in force, then left to expire
        cid = county.contract("nrb", valid_until=(now + timedelta(seconds=2)).isoformat())
        time.sleep(max(0.0, (now + timedelta(seconds=2.2) - datetime.now(UTC))
                       .total_seconds()))
    else:
        cid = county.contract(
            "nrb", linkable=change != "not-linkable",
            consumer="env" if change == "other-consumer" else "econ",
            accept=change != "not-accepted",
            purposes=["land-efficiency"] if change == "other-purpose"
            else ["industrial-policy"])
    if change in ("revoke", "suspend"):
        r = county.client.post(f"/v1/contracts/{cid}/{change}",
                               headers=auth(county.tokens["nrb"]))
        assert r.status_code == 200, r.text
    seq = _last_seq(county)
    r = county.post("econ", {"sources": {"g": c["grid"], "l": cid},
                             "measures": [count(), total("l.mu")]})
    assert r.status_code in (403, 422), r.text
    body = r.json()
    assert "cells" not in body
    _no_row_values(r.text)
    assert not _released_since(county, seq)
    last = county.entries(action="query.aggregate")[-1]["entry"]
    assert last["seq"] > seq, last
    assert last["decision"]["allowed"] is False, last
    if change in ("other-consumer", "unknown"):
        # another consumer's contract must look like no contract at all
        r2 = county.post("econ", {"sources": {"g": c["grid"],
                                              "l": "00000000-0000-4000-8000-00000000abce"},
                                  "measures": [count(), total("l.mu")]})
        assert (r.status_code, body.get("reasons"), body["type"]) == (
            r2.status_code, r2.json().get("reasons"), r2.json()["type"]), (r.text, r2.text)


# --------------------------------------------------------------------------- 5. audit


def test_a_joined_release_is_audited_for_every_source_and_no_one_else(
        county: County) -> None:
    c = county.contracts["econ"]
    r = county.post("econ", {"sources": {"g": c["grid"], "t": c["tax"], "l": c["nrb"],
                                         "m": c["mee"]},
                             "group_by": ["g.town"], "measures": [count(), total("m.co2")]})
    assert r.status_code == 200, r.text
    seq = r.json()["receipt"]["seq"]
    [entry] = [e["entry"] for e in county.entries(action="query.aggregate")
               if e["entry"]["seq"] == seq]
    named = {(s["alias"], s["dataset_id"], s["contract_id"])
             for s in entry["resource"]["sources"]}
    assert named == {(a, county.datasets[ds], c[ds])
                     for a, ds in (("g", "grid"), ("t", "tax"), ("l", "nrb"), ("m", "mee"))}
    for org in ("grid", "tax", "nrb", "mee"):
        page = county.client.get("/v1/audit/accesses", headers=auth(county.tokens[org]),
                                 params={"limit": 500})
        assert page.status_code == 200, page.text
        assert seq in {a["seq"] for a in page.json()["accesses"]}, org
    water = county.client.get("/v1/audit/accesses", headers=auth(county.tokens["water"]),
                              params={"limit": 500})
    assert water.status_code == 200, water.text
    assert seq not in {a["seq"] for a in water.json()["accesses"]}
    # nor may it read the entry or its proof
    proof = county.client.get(f"/v1/audit/entries/{seq}/proof",
                              headers=auth(county.tokens["water"]))
    assert proof.status_code in (403, 404), proof.text
    # a consumer does not see the other consumer's use
    env = county.client.get("/v1/audit/entries", headers=auth(county.consumers["env"]))
    if env.status_code == 200:
        assert seq not in {e["entry"]["seq"] for e in env.json()["entries"]}


def test_a_refused_join_is_seen_by_every_named_provider(county: County) -> None:
    """Even refused, the attempt shows in each source's access log."""
    c = county.contracts["econ"]
    plain = county.contract("mee", linkable=False)
    r = county.post("econ", {"sources": {"g": c["grid"], "m": plain},
                             "measures": [count()]})
    assert_problem(r, 403, "policy-denied")
    last = county.entries(action="query.aggregate")[-1]["entry"]
    for org in ("grid", "mee"):
        page = county.client.get("/v1/audit/accesses", headers=auth(county.tokens[org]),
                                 params={"limit": 500}).json()
        assert last["seq"] in {a["seq"] for a in page["accesses"]}, org
    page = county.client.get("/v1/audit/accesses", headers=auth(county.tokens["tax"]),
                             params={"limit": 500}).json()
    assert last["seq"] not in {a["seq"] for a in page["accesses"]}


@pytest.mark.parametrize("limited", ["grid", "tax", "nrb"])
def test_every_source_contract_counts_the_query(county: County, limited: str) -> None:
    ids = {ds: (county.contract(ds, max_queries_per_day=2) if ds == limited
                else county.contracts["econ"][ds]) for ds in ("grid", "tax", "nrb")}
    body = {"sources": {"g": ids["grid"], "t": ids["tax"], "l": ids["nrb"]},
            "group_by": ["g.town"], "measures": [count()]}
    for _ in range(2):
        r = county.post("econ", body)
        assert r.status_code == 200, r.text
    r = county.post("econ", body)
    assert "daily-quota-exhausted" in assert_problem(r, 403, "policy-denied")["reasons"]
    # and a single-source query under the limited contract is now over quota too
    r = county.post("econ", {"contract_id": ids[limited], "measures": [count()]})
    assert "daily-quota-exhausted" in assert_problem(r, 403, "policy-denied")["reasons"]


def test_pure_counts_of_the_model_are_exact(county: County) -> None:
    """Sanity for the model: the full join's count is the firms in all four sources."""
    c = county.contracts["econ"]
    r = county.post("econ", {"sources": {"g": c["grid"], "t": c["tax"], "l": c["nrb"],
                                         "m": c["mee"]}, "measures": [count()]})
    assert r.status_code == 200, r.text
    [cell] = r.json()["cells"]
    expected = len(set(FIRMS) - {NO_GRID, NO_TAX, NO_NRB, NO_MEE, *SMALL_UNTAXED})
    assert cell["values"] is not None
    assert math.isclose(cell["values"]["count"], expected)


# ------------------------------------------- the remainder row after the release audit


def _by_key(answer: Mapping[str, Any], dim: str) -> dict[str, Any]:
    return {c["key"].get(dim, "*"): c for c in answer["cells"]}


def test_a_linked_cell_is_not_the_margin_less_the_rest_and_the_remainder(
        county: County) -> None:
    """Found by this suite. econ asks grid kwh by town; env asks grid joined with tax by
    town with totals and the remainder. The joined town S lacks NO_TAX, so the release audit
    withholds it as ``linked``; but the remainder row is the pool of the cells withheld
    *before* the audit (E and the small town) and still goes out, so S joined is the total
    less the published towns less the remainder, and S alone less that is NO_TAX's kwh."""
    c = county.contracts
    single = county.post("econ", {"contract_id": c["econ"]["grid"], "group_by": ["town"],
                                  "measures": [total("kwh")]})
    assert single.status_code == 200, single.text
    joined = county.post("env", {"sources": {"g": c["env"]["grid"], "t": c["env"]["tax"]},
                                 "group_by": ["g.town"], "totals": True, "remainder": True,
                                 "measures": [total("g.kwh")]})
    assert joined.status_code == 200, joined.text
    alone, both = _by_key(single.json(), "town"), _by_key(joined.json(), "g.town")
    rest = joined.json().get("remainder") or {}
    town = TOWN[NO_TAX]
    shown = [t for t, cell in both.items() if t != "*" and cell["values"] is not None]
    if (both["*"]["values"] is None or rest.get("values") is None
            or alone[town]["values"] is None):
        return  # nothing to difference
    derived_joined = (both["*"]["values"]["sum_g.kwh"]
                      - sum(both[t]["values"]["sum_g.kwh"] for t in shown)
                      - rest["values"]["sum_g.kwh"])
    derived = alone[town]["values"]["sum_kwh"] - derived_joined
    frame = grid_frame()
    truth = float(frame.loc[frame.uscc == NO_TAX, "kwh"].sum())
    assert not math.isclose(derived, truth), (
        f"{NO_TAX}'s yearly kwh {truth:g} = {town} alone "
        f"{alone[town]['values']['sum_kwh']:g} - (joined total "
        f"{both['*']['values']['sum_g.kwh']:g} - joined {shown} - remainder "
        f"{rest['values']['sum_g.kwh']:g}); joined {town} was {both[town]['reason']}")


# ----------------------------------------- counts: one register, several histories


@pytest.mark.parametrize("grouped", [False, True])
def test_counts_of_three_sources_and_their_join_do_not_isolate_a_firm(
        attack: Attack, grouped: bool) -> None:
    """Found by this suite. Counts of distinct enterprises are forms over one register,
    shared by every dataset, but each is audited only in its own dataset's history. grid
    counts every firm but NO_GRID, tax every firm but NO_TAX and two, land every firm but
    NO_NRB; the three-way join every firm in all three. Then
    tax + land - grid - join = 2 * [NO_GRID]: no one history holds all four forms (grid
    sees grid - join = 4 firms, tax sees tax - join = 2, land sees land - join = 4), so
    each is published; together they count NO_GRID alone (and, grouped by industry, give
    the industry of the one firm in tax and land but not on the grid)."""
    attack.ask("econ", {"g": "grid"}, measures=[count()])
    attack.ask("econ", {"t": "tax"}, group_by=["industry"] if grouped else [],
               measures=[count()])
    attack.ask("econ", {"l": "nrb"}, measures=[count()])
    attack.ask("env", GTL, group_by=["t.industry"] if grouped else [], measures=[count()])
    attack.assert_no_leak()


@pytest.mark.parametrize("strict", ["grid", "nrb"])
def test_the_strictest_k_of_either_side_applies(county: County, strict: str) -> None:
    """k=8 on one side only: every published joined cell counts at least 8 firms."""
    ids = {ds: county.contract(ds, k_min=8) if ds == strict else county.contracts["econ"][ds]
           for ds in ("grid", "nrb")}
    r = county.post("econ", {"sources": {"g": ids["grid"], "l": ids["nrb"]},
                             "group_by": ["g.town"], "totals": True, "remainder": True,
                             "measures": [count(), total("l.mu"), total("g.kwh")]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["k"] == 8
    for cell in [*body["cells"], body.get("remainder") or {"values": None}]:
        if cell["values"] is not None:
            assert cell["values"]["count"] >= 8, cell


def test_a_firm_dominating_one_source_withholds_the_joined_cell(county: County) -> None:
    """A fifth provider's figure of one firm dwarfs the rest of its town: the joined cell is
    dominated in that source's measure, though grid's kwh of the same firms is not."""
    big = "F10"
    frame = pd.DataFrame([{"uscc": f, "sales": float(1_000_000 if f == big else 100 + i)}
                          for i, f in enumerate(FIRMS)])
    meta = {"name": "sales", "entity_field": "uscc", "fields": [
        {"name": "uscc", "type": "string", "role": "entity"},
        {"name": "sales", "type": "number", "role": "measure"}]}
    r = upload(county.client, county.tokens["water"], frame, meta)
    assert r.status_code == 201, r.text
    county.datasets["water"] = r.json()["id"]
    cid = county.contract("water", {"sales": "aggregate"})
    r = county.post("econ", {"sources": {"g": county.contracts["econ"]["grid"], "w": cid},
                             "group_by": ["g.town"], "totals": True,
                             "measures": [count(), total("w.sales"), total("g.kwh")]})
    assert r.status_code == 200, r.text
    cells = _by_key(r.json(), "g.town")
    assert cells[TOWN[big]]["values"] is None, cells[TOWN[big]]
    assert cells["*"]["values"] is None or cells["*"]["values"]["count"] >= 3
    if cells["*"]["values"] is not None:  # the total is dominated by the same firm
        assert cells["*"]["values"].get("sum_w.sales") is None, cells["*"]


@pytest.mark.parametrize("who", ["grid", "tax", "auditor", "admin"])
def test_no_one_but_the_consumer_runs_its_join(county: County, who: str) -> None:
    """A provider of a source (or an auditor, or the operator) with the consumer's contract
    ids gets nothing."""
    token = {"auditor": county.auditor, "admin": county.admin}.get(who) or county.tokens[who]
    c = county.contracts["econ"]
    r = county.client.post("/v1/queries/aggregate", headers=auth(token), json={
        "sources": {"g": c["grid"], "t": c["tax"]}, "purpose": "industrial-policy",
        "group_by": ["g.town"], "measures": [count(), total("t.tax")]})
    assert r.status_code in (401, 403), r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert "cells" not in r.json()
    _no_row_values(r.text)


@pytest.mark.parametrize("consumers", [("econ", "econ"), ("econ", "env")])
def test_a_small_joined_cell_is_not_the_margin_less_cells_known_from_one_source(
        county: County, consumers: tuple[str, str]) -> None:
    """The small town joined with tax has two firms (withheld, min-entities) and its
    complementary partner may be a town no firm of which is missing from tax: that town's
    single-source cell then equals its joined one, and the joined total less every other
    town gives the small town's two firms (no remainder asked)."""
    c = county.contracts
    first, second = consumers
    single = county.post(first, {"contract_id": c[first]["grid"], "group_by": ["town"],
                                 "measures": [total("kwh")]})
    assert single.status_code == 200, single.text
    joined = county.post(second, {"sources": {"g": c[second]["grid"], "t": c[second]["tax"]},
                                  "group_by": ["g.town"], "totals": True,
                                  "measures": [total("g.kwh")]})
    assert joined.status_code == 200, joined.text
    alone, both = _by_key(single.json(), "town"), _by_key(joined.json(), "g.town")
    untaxed = {NO_TAX, *SMALL_UNTAXED}
    same = {t for t in alone if all(TOWN[f] != t for f in untaxed)}  # joined == alone
    if both["*"]["values"] is None:
        return
    known = 0.0
    for town, cell in both.items():
        if town in ("*", SMALL_TOWN):
            continue
        if cell["values"] is not None:
            known += cell["values"]["sum_g.kwh"]
        elif town in same and alone[town]["values"] is not None:
            known += alone[town]["values"]["sum_kwh"]
        else:
            return  # a town neither published nor known: nothing exact
    derived = both["*"]["values"]["sum_g.kwh"] - known
    frame = grid_frame()
    taxed = set(tax_frame().code)
    truth = float(frame.loc[(frame.town == SMALL_TOWN) & frame.uscc.isin(taxed), "kwh"].sum())
    assert not math.isclose(derived, truth), (
        f"the small town's joined kwh {truth:g} (two firms) = joined total less "
        f"{[(t, c['reason']) for t, c in both.items()]} with single-source cells")


@pytest.mark.parametrize("town", ["N", "E", "W"])
def test_a_complementary_cell_already_known_from_one_source_protects_nothing(
        county: County, town: str) -> None:
    """One big town's kwh alone first (no firm of N, E, W is missing from tax, so its joined
    cell is the same number); then grid joined with tax by town with the total. If that town
    is the small town's complementary partner, the small town's two firms are the total less
    the other towns, unless the release audit withholds more."""
    c = county.contracts
    single = county.post("econ", {"contract_id": c["econ"]["grid"],
                                  "filters": [{"field": "town", "op": "eq", "value": town}],
                                  "measures": [total("kwh")]})
    assert single.status_code == 200, single.text
    [cell] = single.json()["cells"]
    joined = county.post("env", {"sources": {"g": c["env"]["grid"], "t": c["env"]["tax"]},
                                 "group_by": ["g.town"], "totals": True,
                                 "measures": [total("g.kwh")]})
    assert joined.status_code == 200, joined.text
    both = _by_key(joined.json(), "g.town")
    if both["*"]["values"] is None or cell["values"] is None:
        return  # the total (or the town alone) withheld: nothing exact
    known = 0.0
    for name, out in both.items():
        if name in ("*", SMALL_TOWN):
            continue
        if out["values"] is not None:
            known += out["values"]["sum_g.kwh"]
        elif name == town:
            known += cell["values"]["sum_kwh"]
        else:
            return  # nothing exact
    derived = both["*"]["values"]["sum_g.kwh"] - known
    frame = grid_frame()
    taxed = set(tax_frame().code)
    truth = float(frame.loc[(frame.town == SMALL_TOWN) & frame.uscc.isin(taxed), "kwh"].sum())
    assert not math.isclose(derived, truth), [(t, o["reason"]) for t, o in both.items()]


# ------------------------------------------------------------------ dataset versions


def _new_grid_version(county: County, frame: pd.DataFrame) -> None:
    r = county.client.post(f"/v1/datasets/{county.datasets['grid']}/versions",
                           headers=auth(county.tokens["grid"]),
                           files={"file": ("v.csv", csv_bytes(frame), "text/csv")})
    assert r.status_code == 201, r.text
    assert r.json()["version"] == 2, r.text


@pytest.mark.parametrize("change", ["dropped", "moved"])
@pytest.mark.parametrize("before", ["joined", "single-pinned"])
def test_a_firm_dropped_or_moved_in_a_new_version_is_not_isolated_by_a_join(
        county: County, change: str, before: str) -> None:
    """Version 2 of grid drops F08 (town N) or moves it to town W; every other row is the
    same (the small town is left out, so no cell is withheld for it). Town N before (a
    join, or a single-source query under a contract pinned to version 1) less town N after
    (a join on the latest version) is F08's kwh."""
    mover = "F08"
    v1 = grid_frame()
    v2 = (v1[v1.uscc != mover] if change == "dropped"
          else v1.assign(town=v1.town.where(v1.uscc != mover, "W"))).reset_index(drop=True)
    big = [{"field": "g.town", "op": "in", "value": list("NSEW")}]
    c = county.contracts
    town = TOWN[mover]
    if before == "joined":
        first = county.post("econ", {"sources": {"g": c["econ"]["grid"], "t": c["econ"]["tax"]},
                                     "group_by": ["g.town"], "filters": big,
                                     "measures": [total("g.kwh")]})
        name, dim = "sum_g.kwh", "g.town"
    else:
        pinned = county.contract("grid", consumer="env", dataset_version=1)
        first = county.post("env", {"contract_id": pinned, "group_by": ["town"],
                                    "measures": [total("kwh")]})
        name, dim = "sum_kwh", "town"
    assert first.status_code == 200, first.text
    _new_grid_version(county, v2)
    if before == "single-pinned":  # the pinned contract still answers on version 1
        again = county.post("env", {"contract_id": pinned, "group_by": ["town"],
                                    "measures": [total("kwh")]})
        assert again.status_code == 200, again.text
    after = county.post("econ", {"sources": {"g": c["econ"]["grid"], "t": c["econ"]["tax"]},
                                 "group_by": ["g.town"], "filters": big,
                                 "measures": [total("g.kwh")]})
    assert after.status_code == 200, after.text
    old = _by_key(first.json(), dim)[town]["values"]
    new = _by_key(after.json(), "g.town")[town]["values"]
    if old is None or new is None:
        return  # withheld (the release audit relates the versions): safe
    truth = float(v1.loc[v1.uscc == mover, "kwh"].sum())
    assert not math.isclose(old[name] - new["sum_g.kwh"], truth), (
        f"{mover}'s kwh {truth:g} = town {town} on version 1 ({old[name]:g}) less on "
        f"version 2 ({new['sum_g.kwh']:g})")


# ---------------------------------------------------------------------- pseudonyms


def _pseudo_grid(county: County, consumer: str = "econ") -> str:
    """A copy of grid (every contract on it pseudonymizes town), and a contract on it."""
    if "gridp" not in county.datasets:
        meta = {**META["grid"], "name": "grid-monthly-copy"}
        r = upload(county.client, county.tokens["grid"], grid_frame(), meta)
        assert r.status_code == 201, r.text
        county.datasets["gridp"] = r.json()["id"]
        county.tokens["gridp"] = county.tokens["grid"]
    return county.contract("gridp", {"town": "pseudonymize", "kwh": "aggregate"},
                           consumer=consumer)


def test_a_pseudonymized_field_of_one_source_is_not_filtered_through_a_join(
        county: County) -> None:
    pseudo = _pseudo_grid(county)
    tax = county.contracts["econ"]["tax"]
    seq = _last_seq(county)
    for flt in ({"field": "g.town", "op": "eq", "value": "N"},
                {"field": "g.town", "op": "in", "value": ["N", "S"]}):
        r = county.post("econ", {"sources": {"g": pseudo, "t": tax}, "group_by": ["g.town"],
                                 "filters": [flt], "measures": [count()]})
        assert r.status_code == 403, r.text
        assert "cells" not in r.json()
    r = county.post("econ", {"sources": {"g": pseudo, "t": tax},
                             "measures": [total("g.town")]})
    assert r.status_code in (403, 422), r.text
    assert not _released_since(county, seq)


def test_a_join_never_groups_by_a_pseudonymized_field(county: County) -> None:
    """A pseudonym's cells grouped beside another source's keys line up with keys in clear
    (see the next test): a cross-source query grouped by a field its contract lets out only
    pseudonymized is refused whole, audited, and nothing of it is released."""
    pseudo = _pseudo_grid(county)
    tax = county.contracts["econ"]["tax"]
    r = county.post("econ", {"sources": {"g": pseudo, "t": tax}, "group_by": ["g.town"],
                             "measures": [count(), total("t.tax")]})
    assert r.status_code == 403, r.text
    assert r.json()["reasons"] == ["pseudonym-not-joinable"]
    assert "cells" not in r.json()


def test_a_pseudonymized_dimension_is_not_linked_back_by_a_clear_one_of_another_source(
        county: County) -> None:
    """Found by this suite (a key, not a figure): gridp lets town out only pseudonymized;
    grid (another dataset, the same towns) in clear. Grouped by both, the cells of the
    cross table come back keyed (pseudonym, town) with their reasons: the empty
    combinations ``min-entities``, the one real cell of each pseudonym ``complementary``
    (or published), so each pseudonym is read as its town, undoing the pseudonyms the
    gridp contract promised. (The per-dataset rule "pseudonymized or in clear, never both"
    does not see two datasets holding the same attribute.)"""
    pseudo = _pseudo_grid(county)
    r = county.post("econ", {"sources": {"p": pseudo, "g": county.contracts["econ"]["grid"]},
                             "group_by": ["p.town", "g.town"],
                             "measures": [count()]})
    if r.status_code == 403:
        return  # refused: safe
    assert r.status_code == 200, r.text
    # A cell published, or withheld for another reason than being small, holds k firms or
    # more: a pseudonym with one such town among the clear ones is that town.
    pairs: dict[str, set[str]] = {}
    for cell in r.json()["cells"]:
        key = cell["key"]
        if "p.town" in key and "g.town" in key and cell.get("reason") != "min-entities":
            pairs.setdefault(str(key["p.town"]), set()).add(str(key["g.town"]))
    linked = {p: next(iter(t)) for p, t in pairs.items() if len(t) == 1}
    assert not linked, ("pseudonym -> town read off the published keys and reasons: "
                        f"{linked}")
