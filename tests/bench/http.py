"""Benchmark: the aggregate endpoint over real HTTP on loopback, against the in-process call.

Run: .venv/bin/python -m tests.bench.http [--requests N] [--clients C]

Loads the demo county (grid company's monthly electricity, ~35k rows), then times the same
town x industry query (a) through the service in process and (b) through uvicorn with C
concurrent clients; prints p50/p99 latency and throughput. Bounded by --requests.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx

from broker.api.auth import mint_token
from broker.app import create_app
from broker.cli.serving import serve_in_thread
from broker.demo.story import Broker, set_up
from broker.settings import Settings
from broker.store.keys import jwt_secret


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args()
    settings = Settings(data_dir=Path(tempfile.mkdtemp(prefix="broker-http-bench-")))
    app = create_app(settings)
    with serve_in_thread(app) as base, httpx.Client(base_url=base, timeout=60) as client:
        secret = jwt_secret(settings)

        def mint(sub: str, org: str, roles: list[str]) -> str:
            return mint_token(key=secret, issuer=settings.jwt_issuer,
                              audience=settings.jwt_audience, sub=sub, org=org, roles=roles)

        broker = Broker(client, mint)
        story = set_up(broker)
        terms = {"dataset_id": story.datasets["electricity"]["id"],
                 "consumer_org": "economic-bureau", "purposes": ["energy-planning"],
                 "fields": {"town": "clear", "industry": "clear",
                            "electricity_kwh": "aggregate"},
                 "k_min": 5, "max_queries_per_day": 1_000_000,
                 "valid_until": "2100-01-01T00:00:00Z"}
        contract = broker.call("grid", "POST", "/v1/contracts", expect=201, json=terms).json()["id"]
        broker.call("econ", "POST", f"/v1/contracts/{contract}/accept", expect=200)
        body = {"contract_id": contract, "purpose": "energy-planning",
                "group_by": ["town", "industry"],
                "measures": [{"fn": "count"}, {"fn": "sum", "field": "electricity_kwh"}]}
        headers = {"Authorization": f"Bearer {broker.tokens['econ']}"}

        from broker.api.schemas.queries import AggregateIn
        from broker.domain.principals import Principal, RequestContext, Role

        container = app.state.container
        ctx = RequestContext(Principal(settings.jwt_issuer, "analyst@econ", "economic-bureau",
                                       frozenset({Role.CONSUMER})), "bench")
        spec = AggregateIn.model_validate(body).to_domain()
        in_process = []
        for _ in range(min(50, args.requests)):
            t = time.perf_counter()
            container.queries.aggregate(ctx, spec)
            in_process.append(time.perf_counter() - t)

        latencies: list[float] = []
        lock = threading.Lock()
        per_client = args.requests // args.clients

        def run() -> None:
            with httpx.Client(base_url=base, timeout=60) as own:
                for _ in range(per_client):
                    t = time.perf_counter()
                    own.post("/v1/queries/aggregate", json=body,
                             headers=headers).raise_for_status()
                    with lock:
                        latencies.append(time.perf_counter() - t)

        threads = [threading.Thread(target=run) for _ in range(args.clients)]
        start = time.perf_counter()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        wall = time.perf_counter() - start

    print(f"in process (service call)   p50 {statistics.median(in_process) * 1e3:7.1f} ms")
    print(f"HTTP, {args.clients} clients            p50 {_percentile(latencies, 0.5) * 1e3:7.1f} ms"
          f"   p99 {_percentile(latencies, 0.99) * 1e3:7.1f} ms")
    print(f"HTTP throughput             {len(latencies) / wall:7.1f} queries/s "
          f"({len(latencies)} queries, every one audited and committed)")


if __name__ == "__main__":
    main()
