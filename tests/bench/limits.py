"""Benchmark: what the per-principal limits cost, and health checks under load.

Run: .venv/bin/python -m tests.bench.limits [--requests 300] [--load-seconds 20] [--clients 32]

Three figures, each measured in this run against its own baseline:

1. The limiter alone: ``PrincipalLimits.acquire`` + ``release`` per request, for one busy
   principal and for 10,000 principals in turn, as calls per second (the rate it sustains on
   one core) and microseconds per call.
2. Its cost over HTTP: one client sends the same cheap authenticated request (the contracts
   list: token, admission, policy decision, a database read) to a broker with the limits off
   and then to one with them on (a rate it never reaches and a cap it never hits, so every
   request does the limiter's full work); p50 and p99 of each and the p50 difference.
3. ``/healthz`` and ``/readyz`` while ``--clients`` analysts (each a principal of its own)
   keep aggregate queries in flight for ``--load-seconds``: p50, p99 and max latency of probes
   sent every 50 ms, against the same probes with no load.

The demo county (3,000 enterprises x 12 months) is served on loopback from throw-away data
directories that are removed at the end.
"""

from __future__ import annotations

import argparse
import random
import statistics
import threading
import time
from typing import Any

import httpx

from broker.api.limits import PrincipalLimits
from broker.demo.county import generate_county
from tests.bench.http import Served, _percentile, body, draw_queries, served_county


def limiter_rate(calls: int, principals: int) -> float:
    """Seconds per acquire + release over ``calls`` calls spread over ``principals`` keys."""
    limits = PrincipalLimits("1000000/minute;10000000/hour", 8)
    keys = [f"https://idp.example\nuser-{i}" for i in range(principals)]
    t = time.perf_counter()
    for i in range(calls):
        key = keys[i % principals]
        if limits.acquire(key) is not None:
            raise RuntimeError("the benchmark's rate was reached")
        limits.release(key)
    return (time.perf_counter() - t) / calls


def cheap_latencies(served: Served, requests: int) -> list[float]:
    """Latencies of ``requests`` sequential contract listings by the bureau."""
    out = []
    for _ in range(requests):
        t = time.perf_counter()
        served.client.get("/v1/contracts", headers=served.headers).raise_for_status()
        out.append(time.perf_counter() - t)
    return out


def probe(base: str, seconds: float, path: str) -> list[float]:
    """Latencies of ``path`` sent every 50 ms for ``seconds``, each on a fresh connection
    (as an orchestrator's probe comes)."""
    out: list[float] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        t = time.perf_counter()
        r = httpx.get(f"{base}{path}", timeout=30)
        out.append(time.perf_counter() - t)
        if r.status_code != 200:
            out[-1] = float("inf")  # a failed probe counts as never answered
        time.sleep(0.05)
    return out


def loaded_probes(served: Served, clients: int, seconds: float) -> dict[str, Any]:
    """Probe latencies with ``clients`` analysts sending aggregates, and the load's figures."""
    months = [f"2025-{m:02d}-01" for m in range(1, 13)]
    shapes = draw_queries(4000, months, seed=7)
    tokens = [served.mint(f"analyst-{i}@econ", "economic-bureau", ["consumer"])
              for i in range(clients)]
    stop = threading.Event()
    answered = [0] * clients
    statuses: dict[int, int] = {}
    lock = threading.Lock()

    def analyst(i: int) -> None:
        rng = random.Random(i)
        with httpx.Client(base_url=served.base, timeout=300) as c:
            while not stop.is_set():
                r = c.post("/v1/queries/aggregate", json=body(served.contract, rng.choice(shapes)),
                           headers={"Authorization": f"Bearer {tokens[i]}"})
                with lock:
                    statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                answered[i] += 1

    threads = [threading.Thread(target=analyst, args=(i,)) for i in range(clients)]
    for th in threads:
        th.start()
    time.sleep(2)  # every analyst has a query in flight
    health = probe(served.base, seconds / 2, "/healthz")
    ready = probe(served.base, seconds / 2, "/readyz")
    stop.set()
    for th in threads:
        th.join()
    return {"healthz": health, "readyz": ready, "answered": sum(answered),
            "statuses": statuses}


def _ms(values: list[float]) -> str:
    p50, p99 = _percentile(values, 0.5) * 1e3, _percentile(values, 0.99) * 1e3
    top = max(values) * 1e3
    return f"p50 {p50:7.2f} ms  p99 {p99:7.2f} ms  max {top:7.2f} ms  (n={len(values)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--load-seconds", type=float, default=20)
    parser.add_argument("--clients", type=int, default=32)
    args = parser.parse_args()

    print("1. The limiter alone (acquire + release, moving window, one core)")
    for principals in (1, 10_000):
        per = limiter_rate(200_000, principals)
        print(f"   {principals:>6} principal(s): {per * 1e6:6.2f} us per request, "
              f"{1 / per:,.0f} requests/s")

    county = generate_county()
    print(f"2. One client, {args.requests} contract listings, limits off then on")
    results = {}
    modes: tuple[tuple[str, dict[str, Any]], ...] = (
        ("off", {}), ("on", {"rate_limit": "1000000/minute", "max_concurrent_per_principal": 8}))
    for name, overrides in modes:
        with served_county(county, **overrides) as served:
            cheap_latencies(served, 20)  # warm-up
            results[name] = cheap_latencies(served, args.requests)
        print(f"   limits {name:3}: {_ms(results[name])}")
    delta = statistics.median(results["on"]) - statistics.median(results["off"])
    print(f"   p50 added by the limits: {delta * 1e3:+.3f} ms")

    print(f"3. /healthz and /readyz, idle and under {args.clients} concurrent aggregates")
    with served_county(county) as served:
        idle = probe(served.base, 3, "/healthz")
        idle_ready = probe(served.base, 3, "/readyz")
        loaded = loaded_probes(served, args.clients, args.load_seconds)
    print(f"   /healthz idle  : {_ms(idle)}")
    print(f"   /healthz loaded: {_ms(loaded['healthz'])}")
    print(f"   /readyz  idle  : {_ms(idle_ready)}")
    print(f"   /readyz  loaded: {_ms(loaded['readyz'])}")
    print(f"   ratio p99 loaded / idle: healthz "
          f"{_percentile(loaded['healthz'], 0.99) / _percentile(idle, 0.99):.1f}x, readyz "
          f"{_percentile(loaded['readyz'], 0.99) / _percentile(idle_ready, 0.99):.1f}x")
    print(f"   load: {loaded['answered']} aggregates answered, statuses {loaded['statuses']}")


if __name__ == "__main__":
    main()
