"""The broker's story, told through its HTTP API exactly as its users would.

Used by ``broker demo`` (printed as a report), ``broker serve --demo`` (the set-up half) and
the end-to-end test (asserted on).
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from broker.demo.county import (
    INDUSTRIES,
    County,
    Slice,
    generate_county,
    grid_slice,
    land_slice,
    self_reported_slice,
    tax_slice,
)

#: (sub, org, roles) of the people in the story.
ACTORS: dict[str, tuple[str, str, list[str]]] = {
    "operator": ("ops@broker", "broker-ops", ["admin"]),
    "grid": ("data-officer@grid", "grid-company", ["provider"]),
    "tax": ("data-officer@tax", "tax-bureau", ["provider"]),
    "land": ("data-officer@nrb", "natural-resources-bureau", ["provider"]),
    "reports": ("data-officer@reports", "enterprise-reports", ["provider"]),
    "econ": ("analyst@econ", "economic-bureau", ["consumer"]),
    "env": ("analyst@env", "environment-bureau", ["consumer"]),
    "auditor": ("inspector@audit", "audit-office", ["auditor"]),
}

ORGS: list[dict[str, Any]] = [
    {"id": "grid-company", "name": "County Power Supply Company", "kind": "enterprise",
     "uscc": "91330481MA2B3C4D14"},
    {"id": "tax-bureau", "name": "County Tax Bureau", "kind": "department"},
    {"id": "natural-resources-bureau", "name": "Natural Resources and Planning Bureau",
     "kind": "department"},
    {"id": "enterprise-reports", "name": "Enterprise Self-Reporting Platform",
     "kind": "enterprise"},
    {"id": "economic-bureau", "name": "Economic and Information Bureau (industry brain)",
     "kind": "department"},
    {"id": "environment-bureau", "name": "Ecology and Environment Bureau", "kind": "department"},
    {"id": "audit-office", "name": "Data Security Audit Office", "kind": "auditor"},
]

Mint = Callable[[str, str, list[str]], str]


class StoryError(RuntimeError):
    """A step answered differently from what the story expects."""


@dataclass
class Step:
    """One thing somebody did, and what the broker answered."""

    actor: str
    action: str
    status: int
    body: Any


@dataclass
class StoryResult:
    """Everything the report shows and the e2e test asserts on."""

    county: County | None = None
    orgs: list[dict[str, Any]] = field(default_factory=list)
    datasets: dict[str, dict[str, Any]] = field(default_factory=dict)
    contracts: dict[str, dict[str, Any]] = field(default_factory=dict)
    queries: dict[str, dict[str, Any]] = field(default_factory=dict)
    explanations: dict[str, dict[str, Any]] = field(default_factory=dict)
    indicators: list[dict[str, Any]] = field(default_factory=list)
    refusals: list[Step] = field(default_factory=list)
    provider_view: list[dict[str, Any]] = field(default_factory=list)
    audit_entries: list[dict[str, Any]] = field(default_factory=list)
    verify: dict[str, Any] = field(default_factory=dict)


class Broker:
    """A thin HTTP client that speaks as one of the story's actors at a time."""

    def __init__(self, client: httpx.Client, mint: Mint) -> None:
        self.client = client
        self.tokens = {name: mint(*spec) for name, spec in ACTORS.items()}

    def call(self, actor: str, method: str, path: str, *, expect: int | None = None,
             **kwargs: Any) -> httpx.Response:
        """Send a request as ``actor``; StoryError if ``expect`` is given and not met."""
        headers = {"Authorization": f"Bearer {self.tokens[actor]}"}
        response = self.client.request(method, path, headers=headers, **kwargs)
        if expect is not None and response.status_code != expect:
            raise StoryError(
                f"{actor} {method} {path}: expected {expect}, got {response.status_code}: "
                f"{response.text[:500]}"
            )
        return response


def _upload(broker: Broker, actor: str, data: Slice) -> dict[str, Any]:
    buffer = io.StringIO()
    data.frame.to_csv(buffer, index=False)
    files = {"file": (f"{data.meta['name']}.csv", buffer.getvalue().encode(), "text/csv")}
    response = broker.call(actor, "POST", "/v1/datasets", expect=201, files=files,
                           data={"meta": json.dumps(data.meta)})
    created: dict[str, Any] = response.json()
    return created


def _small_group(county: County) -> tuple[str, str]:
    """A (town, industry) with one to four enterprises: the tracker's target."""
    sizes = county.enterprises.groupby(["town", "industry"]).size()
    small = sizes[(sizes >= 1) & (sizes <= 4)].sort_index()
    if small.empty:
        raise ValueError("this county has no small group for the tracker to aim at")
    town, industry = small.index[0]
    return str(town), str(industry)


def set_up(broker: Broker, county: County | None = None) -> StoryResult:
    """Organisations, two providers' datasets, two contracts offered and accepted."""
    county = county or generate_county()
    result = StoryResult(county=county)
    for org in ORGS:
        broker.call("operator", "POST", "/v1/orgs", expect=201, json=org)
    result.orgs = broker.call("operator", "GET", "/v1/orgs", expect=200).json()
    result.datasets["electricity"] = _upload(broker, "grid", grid_slice(county))
    result.datasets["tax"] = _upload(broker, "tax", tax_slice(county))
    result.datasets["land"] = _upload(broker, "land", land_slice(county))
    result.datasets["reports"] = _upload(broker, "reports", self_reported_slice(county))
    now = datetime.now(UTC)
    window = {"valid_from": (now - timedelta(minutes=1)).isoformat(),
              "valid_until": (now + timedelta(days=365)).isoformat()}
    offers = {
        "electricity": ("grid", {
            "dataset_id": result.datasets["electricity"]["id"],
            "consumer_org": "economic-bureau",
            "purposes": ["industrial-policy", "energy-planning"],
            "fields": {"town": "clear", "industry": "clear", "month": "clear",
                       "electricity_kwh": "aggregate"},
            "k_min": 5,
            "max_queries_per_day": 200,
            # The grid company lets the bureau join its data with others' by enterprise.
            "linkable": True,
            **window,
        }),
        "tax": ("tax", {
            "dataset_id": result.datasets["tax"]["id"],
            "consumer_org": "economic-bureau",
            "purposes": ["industrial-policy", "tax-analysis"],
            # The tax bureau lets industry out only by division or coarser, and months only
            # by quarter or year: the flow policy's generalize verdict.
            "fields": {"town": "clear", "industry": "generalize", "month": "generalize",
                       "output_value": "aggregate", "tax_paid": "aggregate"},
            "k_min": 5,
            "max_queries_per_day": 50,
            **window,
        }),
        "land": ("land", {
            "dataset_id": result.datasets["land"]["id"],
            "consumer_org": "economic-bureau",
            "purposes": ["industrial-policy", "land-efficiency"],
            "fields": {"land_mu": "aggregate"},
            "k_min": 5, "max_queries_per_day": 50, "linkable": True,
            **window,
        }),
        "reports": ("reports", {
            "dataset_id": result.datasets["reports"]["id"],
            "consumer_org": "economic-bureau",
            "purposes": ["industrial-policy", "energy-planning"],
            "fields": {"reported_kwh": "aggregate"},
            "k_min": 5, "max_queries_per_day": 50, "linkable": True,
            **window,
        }),
    }
    for name, (provider, terms) in offers.items():
        result.contracts[name] = _agreed(broker, provider, terms)
    # One data item, one authoritative source, checked by another (一数一源、多元校核).
    result.indicators = [broker.call("operator", "POST", "/v1/indicators", expect=201, json={
        "id": "electricity-use", "name": "用电量 (electricity use)", "unit": "kWh",
        "definition": "Electricity an enterprise consumed in the year",
        "source": {"dataset_id": result.datasets["electricity"]["id"],
                   "field": "electricity_kwh"},
        "checks": [{"dataset_id": result.datasets["reports"]["id"], "field": "reported_kwh"}],
    }).json()]
    return result


def _agreed(broker: Broker, provider: str, terms: dict[str, Any]) -> dict[str, Any]:
    """A contract the provider offers and the economic bureau accepts."""
    offered = broker.call(provider, "POST", "/v1/contracts", expect=201, json=terms).json()
    accepted: dict[str, Any] = broker.call(
        "econ", "POST", f"/v1/contracts/{offered['id']}/accept", expect=200).json()
    return accepted


def _across_sources(broker: Broker, result: StoryResult) -> None:
    """Questions across providers: output and tax per mu of land (亩均论英雄), refused while
    the tax bureau's contract does not let its data be joined and answered once it does; and
    the grid's electricity cross-checked against the enterprises' own reports."""
    tax, land = result.contracts["tax"], result.contracts["land"]
    per_mu = {
        "sources": {"t": tax["id"], "l": land["id"]}, "purpose": "industrial-policy",
        "group_by": ["t.town"], "totals": True,
        "measures": [{"fn": "count"},
                     {"fn": "ratio", "numerator": "t.output_value", "denominator": "l.land_mu",
                      "as": "output_per_mu"},
                     {"fn": "ratio", "numerator": "t.tax_paid", "denominator": "l.land_mu",
                      "as": "tax_per_mu"}],
    }
    response = broker.call("econ", "POST", "/v1/queries/aggregate", expect=403, json=per_mu)
    result.refusals.append(Step("econ", "joining tax data with land under a contract that is "
                                "not linkable", response.status_code, response.json()))
    # The tax bureau offers amended terms that grant linking; the bureau accepts them.
    amended = {k: tax[k] for k in ("dataset_id", "consumer_org", "purposes", "fields", "k_min",
                                   "max_queries_per_day", "valid_from", "valid_until")}
    amended["dominance"] = tax["dominance"]
    result.contracts["tax (linkable)"] = _agreed(broker, "tax", {**amended, "linkable": True})
    per_mu["sources"] = {"t": result.contracts["tax (linkable)"]["id"], "l": land["id"]}
    result.queries["output and tax per mu of land by town (tax x land)"] = broker.call(
        "econ", "POST", "/v1/queries/aggregate", expect=200, json=per_mu).json()
    result.queries["electricity: grid meters cross-checked against enterprises' reports"] = (
        broker.call("econ", "POST", "/v1/queries/crosscheck", expect=200, json={
            "sources": {"g": result.contracts["electricity"]["id"],
                        "r": result.contracts["reports"]["id"]},
            "purpose": "industrial-policy", "indicator": "electricity-use",
            "tolerance_pct": 5, "group_by": ["g.industry"], "totals": True,
        }).json())


def run_story(broker: Broker, county: County | None = None) -> StoryResult:
    """The whole story: set-up, queries, refusals, revocation, the provider's and auditor's view."""
    result = set_up(broker, county)
    grid = result.contracts["electricity"]["id"]
    tax = result.contracts["tax"]["id"]

    # A tracker: a town's count of firms, then again without the one industry in which it
    # has only a handful. Subtracting would give those firms away: the second answer is
    # withheld as differencing.
    town, industry = _small_group(result.county or generate_county())
    tracker = {"contract_id": grid, "purpose": "energy-planning", "measures": [{"fn": "count"}],
               "filters": [{"field": "town", "op": "eq", "value": town}]}
    result.queries[f"firms in {town}"] = broker.call(
        "econ", "POST", "/v1/queries/aggregate", expect=200, json=tracker).json()
    others = [i for i in INDUSTRIES if i != industry]
    result.queries[f"firms in {town} outside {industry}"] = broker.call(
        "econ", "POST", "/v1/queries/aggregate", expect=200, json={
            **tracker, "filters": [*tracker["filters"],
                                   {"field": "industry", "op": "in", "value": others}]}).json()
    result.queries["electricity by town and industry"] = broker.call(
        "econ", "POST", "/v1/queries/aggregate", expect=200, json={
            "contract_id": grid, "purpose": "energy-planning",
            "group_by": ["town", "industry"], "totals": True, "remainder": True,
            "measures": [{"fn": "count"}, {"fn": "sum", "field": "electricity_kwh"}],
        }).json()
    tax_query = {
        "contract_id": tax, "purpose": "industrial-policy",
        "group_by": [{"field": "industry", "level": "division"},
                     {"field": "month", "level": "quarter"}],
        "measures": [{"fn": "count"},
                     {"fn": "ratio", "numerator": "tax_paid", "denominator": "output_value",
                      "as": "tax_per_output"}],
    }
    # A dry run first: what the policy would let flow, in which form, under which k.
    result.explanations["tax per unit of output by industry division and quarter"] = broker.call(
        "econ", "POST", "/v1/policy/explain", expect=200, json=tax_query).json()
    result.queries["tax per unit of output by industry division and quarter"] = broker.call(
        "econ", "POST", "/v1/queries/aggregate", expect=200, json=tax_query).json()

    attempts = [
        ("env", "a department without a contract uses another's contract",
         {"contract_id": grid, "purpose": "energy-planning", "group_by": ["town"],
          "measures": [{"fn": "sum", "field": "electricity_kwh"}]}),
        ("econ", "a purpose the contract does not name",
         {"contract_id": grid, "purpose": "tax-analysis", "group_by": ["town"],
          "measures": [{"fn": "sum", "field": "electricity_kwh"}]}),
        ("econ", "grouping by the enterprise code",
         {"contract_id": grid, "purpose": "energy-planning", "group_by": ["uscc"],
          "measures": [{"fn": "sum", "field": "electricity_kwh"}]}),
        ("econ", "tax by 4-digit industry class, which the tax bureau lets out only generalized",
         {**tax_query, "group_by": ["industry"]}),
    ]
    for actor, what, body in attempts:
        response = broker.call(actor, "POST", "/v1/queries/aggregate", expect=403, json=body)
        result.refusals.append(Step(actor, what, response.status_code, response.json()))
    _across_sources(broker, result)

    broker.call("grid", "POST", f"/v1/contracts/{grid}/revoke", expect=200)
    response = broker.call("econ", "POST", "/v1/queries/aggregate", expect=403, json={
        "contract_id": grid, "purpose": "energy-planning", "group_by": ["town"],
        "measures": [{"fn": "count"}]})
    result.refusals.append(Step("econ", "a query after the provider revoked the contract",
                                response.status_code, response.json()))
    result.contracts["electricity"] = broker.call(
        "grid", "GET", f"/v1/contracts/{grid}", expect=200).json()

    result.provider_view = broker.call(
        "grid", "GET", "/v1/audit/entries", expect=200,
        params={"action": "query.aggregate", "limit": 1000}).json()["entries"]
    entries: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 1000, **({"cursor": cursor} if cursor else {})}
        page = broker.call("auditor", "GET", "/v1/audit/entries", expect=200,
                           params=params).json()
        entries += page["entries"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    result.audit_entries = entries
    result.verify = broker.call("auditor", "GET", "/v1/audit/verify", expect=200).json()
    return result
