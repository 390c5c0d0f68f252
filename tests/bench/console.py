"""Benchmark: what the web console costs over the API doing the same work in the same run.

Run: .venv/bin/python -m tests.bench.console [--enterprises 800] [--queries 40] [--reads 60]

A broker on loopback with the demo county; the economic bureau logged in to the console
through the dev login (a real session cookie, verified on every request) and holding a bearer
token for the API. For each kind of work, the median and p90 latency through the console (the
page or fragment, rendered in Chinese) and through the API (JSON), and their ratio:

1. aggregate queries: distinct drawn shapes, each a fresh computation and release, half sent
   through ``POST /console/query/run`` (the builder's form), half through
   ``POST /v1/queries/aggregate``, alternating;
2. dry runs: ``POST /console/query/explain`` against ``POST /v1/policy/explain``;
3. reads: the auditor's log page of 50 entries against ``GET /v1/audit/entries?limit=50``, and
   the contracts in force against ``GET /v1/contracts``.
"""

from __future__ import annotations

import argparse
import re
import statistics
import time
from collections.abc import Callable
from typing import Any

import httpx

from broker.demo.county import generate_county
from tests.bench.http import _percentile, body, draw_queries, served_county


def form_of(request: dict[str, Any], csrf: str) -> dict[str, Any]:
    """The query builder's form for the API's aggregate ``request``."""
    form: dict[str, Any] = {"csrf": csrf, "contract": request["contract_id"],
                            "purpose": request["purpose"], "group_by": [],
                            "measure_fn": [], "measure_field": [], "measure_denominator": [],
                            "filter_field": [], "filter_op": [], "filter_value": [],
                            "filter_to": []}
    for item in request["group_by"]:
        name = item if isinstance(item, str) else item["field"]
        form["group_by"].append(name)
        if isinstance(item, dict) and item.get("level"):
            form[f"level.{name}"] = item["level"]
    for m in request["measures"]:
        form["measure_fn"].append(m["fn"])
        form["measure_field"].append(m.get("field") or "")
        form["measure_denominator"].append("")
    for f in request["filters"]:
        form["filter_field"].append(f["field"])
        form["filter_op"].append(f["op"])
        if f["op"] == "range":
            form["filter_value"].append(str(f["value"][0]))
            form["filter_to"].append(str(f["value"][1]))
        elif f["op"] == "in":
            form["filter_value"].append(", ".join(map(str, f["value"])))
            form["filter_to"].append("")
        else:
            form["filter_value"].append(str(f["value"]))
            form["filter_to"].append("")
    if request.get("totals"):
        form["totals"] = "on"
    return form


def log_in(base: str, org: str, role: str) -> tuple[httpx.Client, str]:
    """A browser's cookie jar logged in to the console through the dev login; its CSRF
    token."""
    client = httpx.Client(base_url=base, timeout=120, follow_redirects=True)
    form = client.get("/console/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert csrf is not None
    r = client.post("/console/login", data={"org": org, "role": role, "csrf": csrf.group(1)})
    assert r.status_code == 200, r.text
    token = re.search(r'name="csrf" value="([^"]+)"', r.text)
    assert token is not None
    return client, token.group(1)


def timed(call: Callable[[], httpx.Response], expect: int = 200) -> float:
    """Seconds one request takes, checked to answer ``expect``."""
    started = time.perf_counter()
    response = call()
    spent = time.perf_counter() - started
    assert response.status_code == expect, response.text[:300]
    return spent


def report(name: str, console: list[float], api: list[float]) -> None:
    """One line: median and p90 of each, and the ratio of the medians."""
    c50, a50 = statistics.median(console), statistics.median(api)
    c90 = _percentile(console, 0.9)
    print(f"{name:<28} console p50 {c50 * 1000:7.1f} ms  p90 {c90 * 1000:7.1f}"
          f" ms | API p50 {a50 * 1000:7.1f} ms  p90 {_percentile(api, 0.9) * 1000:7.1f} ms"
          f" | ratio {c50 / a50:5.2f}x  (n={len(console)}/{len(api)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--enterprises", type=int, default=800)
    parser.add_argument("--queries", type=int, default=40)
    parser.add_argument("--reads", type=int, default=60)
    args = parser.parse_args()
    county = generate_county(enterprises=args.enterprises)
    months = sorted(str(m) for m in county.monthly["month"].unique())
    with served_county(county) as served:
        econ, csrf = log_in(served.base, "economic-bureau", "consumer")
        auditor, _ = log_in(served.base, "audit-office", "auditor")
        api = served.client
        auditor_headers = {"Authorization": "Bearer " + served.mint(
            "auditor@audit-office", "audit-office", ["auditor"])}
        shapes = draw_queries(2 * args.queries, months, seed=11)
        runs: tuple[list[float], list[float]] = ([], [])
        dry: tuple[list[float], list[float]] = ([], [])
        for i, q in enumerate(shapes):
            request = body(served.contract, q)
            if i % 2 == 0:
                runs[0].append(timed(lambda r=request: econ.post(  # type: ignore[misc]
                    "/console/query/run", data=form_of(r, csrf))))
                dry[1].append(timed(lambda r=request: api.post(  # type: ignore[misc]
                    "/v1/policy/explain", json=r, headers=served.headers)))
            else:
                runs[1].append(timed(lambda r=request: api.post(  # type: ignore[misc]
                    "/v1/queries/aggregate", json=r, headers=served.headers)))
                dry[0].append(timed(lambda r=request: econ.post(  # type: ignore[misc]
                    "/console/query/explain", data=form_of(r, csrf))))
        reads: dict[str, tuple[list[float], list[float]]] = {"log": ([], []),
                                                              "contracts": ([], [])}
        for _ in range(args.reads):
            reads["log"][0].append(timed(lambda: auditor.get("/console/audit?limit=50")))
            reads["log"][1].append(timed(lambda: api.get("/v1/audit/entries?limit=50",
                                                         headers=auditor_headers)))
            reads["contracts"][0].append(timed(lambda: econ.get("/console/contracts/in-force")))
            reads["contracts"][1].append(timed(lambda: api.get("/v1/contracts",
                                                               headers=served.headers)))
        print(f"county: {args.enterprises} enterprises; {args.queries} queries each way; "
              f"{args.reads} reads of each page")
        report("aggregate query (release)", *runs)
        report("dry run (explain)", *dry)
        report("audit log, 50 entries", *reads["log"])
        report("contracts in force", *reads["contracts"])


if __name__ == "__main__":
    main()
