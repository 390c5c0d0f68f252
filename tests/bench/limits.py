"""Benchmark: what the per-principal limits cost, and health checks under load.

Run: .venv/bin/python -m tests.bench.limits [--requests 300] [--load-seconds 20] [--clients 32]

Three figures, each measured in this run against its own baseline:

1. The limiter alone: ``PrincipalLimits.acquire`` + ``release`` per admitted request at the
   default rate (600/minute) over 10,000 principals in turn, and per refused request of a
   principal at its limit, as requests per second (what it sustains on one core) and
   microseconds per request.
2. Its cost over HTTP: two brokers serve the same county, one with the limits off and one with
   them on (a rate it never reaches and a cap it never hits, so every request does the
   limiter's full work); one client sends the same cheap authenticated request (the contracts
   list: token, admission, policy decision, a database read) to each in turn, so both see
   the same machine load; p50 and p99 of each and the p50 difference.
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


def admitted_rate(calls: int, principals: int) -> float:
    """Seconds per acquire + release at the default rate, ``calls`` spread over
    ``principals`` keys (each stays under its limit)."""
    limits = PrincipalLimits("600/minute", 8)
    keys = [f"https://idp.example\nuser-{i}" for i in range(principals)]
    t = time.perf_counter()
    for i in range(calls):
        key = keys[i % principals]
        if limits.acquire(key) is not None:
            raise RuntimeError("the benchmark's rate was reached")
        limits.release(key)
    return (time.perf_counter() - t) / calls


def refused_rate(calls: int) -> float:
    """Seconds per refused acquire of one principal at its limit."""
    limits = PrincipalLimits("600/minute", 8)
    for _ in range(600):
        limits.acquire("busy")
        limits.release("busy")
    t = time.perf_counter()
    for _ in range(calls):
        if limits.acquire("busy") is None:
            raise RuntimeError("the limit did not hold")
    return (time.perf_counter() - t) / calls


def cheap_latency(served: Served) -> float:
    """Seconds for one contract listing by the bureau."""
    t = time.perf_counter()
    served.client.get("/v1/contracts", headers=served.headers).raise_for_status()
    return time.perf_counter() - t


#: Why probes failed: "path status: detail" -> how many times.
failures: dict[str, int] = {}


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
            failures[f"{path} {r.status_code}: {r.json().get('detail', '')}"] = failures.get(
                f"{path} {r.status_code}: {r.json().get('detail', '')}", 0) + 1
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

    print("1. The limiter alone (moving window, 600/minute, one core)")
    per = admitted_rate(200_000, 10_000)
    print(f"   admitted (10,000 principals): {per * 1e6:6.2f} us per request, "
          f"{1 / per:,.0f} requests/s")
    per = refused_rate(50_000)
    print(f"   refused (one at its limit)  : {per * 1e6:6.2f} us per request, "
          f"{1 / per:,.0f} requests/s")

    county = generate_county()
    print(f"2. One client, {args.requests} contract listings to each broker, taking turns")
    results: dict[str, list[float]] = {"off": [], "on": []}
    on: dict[str, Any] = {"rate_limit": "1000000/minute", "max_concurrent_per_principal": 8}
    with served_county(county) as off_served, served_county(county, **on) as on_served:
        pair = {"off": off_served, "on": on_served}
        for i in range(args.requests + 20):
            for name in (("off", "on") if i % 2 else ("on", "off")):
                took = cheap_latency(pair[name])
                if i >= 20:  # after the warm-up
                    results[name].append(took)
    for name in ("off", "on"):
        print(f"   limits {name:3}: {_ms(results[name])}")
    delta = statistics.median(results["on"]) - statistics.median(results["off"])
    print(f"   p50 added by the limits: {delta * 1e3:+.3f} ms "
          f"(ratio {statistics.median(results['on']) / statistics.median(results['off']):.3f}x)")

    print(f"3. /healthz and /readyz, idle and under {args.clients} concurrent aggregates")
    with served_county(county, max_concurrent_per_org=args.clients) as served:
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
    for why, times in failures.items():
        print(f"   failed probes: {times} x {why}")


if __name__ == "__main__":
    main()
