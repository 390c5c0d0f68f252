"""Benchmark: policy decisions per second and latency on each engine, with and without the cache.

Run: .venv/bin/python -m tests.bench.policy [--decisions N] [--threads T] [--warm-set W]

The engines: regopy (rego-cpp in process, the broker's ``embedded`` engine), opa-go (OPA's own
Go engine in process, the reference) and opa-rest (the ``opa`` adapter over HTTP to the fake
OPA server of tests/fake_opa.py on 127.0.0.1, deciding with the Go engine; by default in a
child process, as a real OPA server would be, so that it does not share the client's GIL).

For the flow decision (the heaviest: the base input of policies/cases/flow.json) and the authz
decision (a consumer reading a dataset offered to it), each engine is timed over N decisions

- none: on the engine itself;
- cold: through CachedPolicyEngine, every input distinct (the flow input's ``now`` and the
  authz caller's ``sub`` change per call, the decision does not), so every call misses;
- warm: through CachedPolicyEngine over W inputs repeated, after one priming pass;

and, with T > 1, by T threads sharing the engine (no cache), for the aggregate throughput.
Latencies are per call (time.perf_counter_ns); the ratio column divides each row's p50 by
the p50 of opa-go without cache on the same entrypoint (the raw OPA engine).
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from broker.domain.ports import PolicyEngine
from broker.policy.cache import CachedPolicyEngine
from broker.policy.cases import load_cases
from broker.policy.embedded import EmbeddedPolicyEngine
from broker.policy.golib import GoPolicyEngine
from broker.policy.opa import OpaServerPolicyEngine
from policies import POLICY_DIR
from tests.fake_opa import running_fake_opa

FLOW = "broker/flow/decision"
AUTHZ = "broker/authz/decision"
AUTHZ_CASE = "consumer sees a dataset offered to it"
BASELINE = "opa-go"
# Generous: N threads queue on an engine's one worker thread, and a benchmark should measure
# the queue, not fail on the broker's 2 s deadline.
TIMEOUT = 30.0
WARMUP = 5

_serial = itertools.count()  # every generated input is distinct across the whole run


@dataclass(frozen=True, slots=True)
class Row:
    """The figures of one timed run."""

    engine: str
    entrypoint: str
    mode: str
    per_second: float
    p50_us: float
    p99_us: float
    hit_rate: float | None = None


def _inputs() -> dict[str, Callable[[], dict[str, Any]]]:
    """Per entrypoint, a maker of inputs that all get the same decision and digest apart."""
    cases = json.loads((POLICY_DIR / "cases" / "flow.json").read_text(encoding="utf-8"))
    flow: dict[str, Any] = cases["base"]
    # The window is widened so that every distinct ``now`` (whole seconds, as the broker
    # sends it) stays inside it: the same allow, the same rules evaluated.
    start = flow["contract"]["valid_from"]
    flow["contract"]["valid_until"] = start + 10**9
    authz = next(c.input for c in load_cases(POLICY_DIR)
                 if c.entrypoint == AUTHZ and c.name == AUTHZ_CASE)

    def flow_input() -> dict[str, Any]:
        document = copy.deepcopy(flow)
        document["now"] = start + 1 + next(_serial)
        return document

    def authz_input() -> dict[str, Any]:
        document = copy.deepcopy(authz)
        document["principal"] = {**document["principal"], "iss": "broker-dev",
                                 "sub": f"analyst-{next(_serial)}@econ"}
        return document

    return {FLOW: flow_input, AUTHZ: authz_input}


def _time(engine: PolicyEngine, entrypoint: str,
          inputs: Sequence[dict[str, Any]]) -> tuple[list[int], int]:
    """Each call's latency (ns) and the whole loop's wall time (ns)."""
    latencies = []
    start = time.perf_counter_ns()
    for document in inputs:
        t = time.perf_counter_ns()
        engine.evaluate(entrypoint, document)
        latencies.append(time.perf_counter_ns() - t)
    return latencies, time.perf_counter_ns() - start


def _row(engine: str, entrypoint: str, mode: str, latencies: Sequence[int], wall_ns: int,
         hit_rate: float | None = None) -> Row:
    p50, p99 = np.percentile(np.asarray(latencies, dtype=np.float64), [50, 99]) / 1e3
    return Row(engine, entrypoint, mode, len(latencies) / (wall_ns / 1e9), float(p50),
               float(p99), hit_rate)


def measure(name: str, engine: PolicyEngine, make: dict[str, Callable[[], dict[str, Any]]],
            decisions: int, warm_set: int) -> list[Row]:
    """Direct, cold-cache and warm-cache runs of each entrypoint on one engine."""
    rows = []
    for entrypoint, new_input in make.items():
        for _ in range(WARMUP):  # connections, first-call paths
            engine.evaluate(entrypoint, new_input())
        latencies, wall = _time(engine, entrypoint, [new_input() for _ in range(decisions)])
        rows.append(_row(name, entrypoint, "none", latencies, wall))

        cold = CachedPolicyEngine(engine, maxsize=decisions + 1)
        latencies, wall = _time(cold, entrypoint, [new_input() for _ in range(decisions)])
        rows.append(_row(name, entrypoint, "cold", latencies, wall,
                         cold.hits / max(1, cold.hits + cold.misses)))

        warm = CachedPolicyEngine(engine, maxsize=warm_set + 1)
        distinct = [new_input() for _ in range(warm_set)]
        for document in distinct:  # the priming pass, not counted
            warm.evaluate(entrypoint, document)
        hits, misses = warm.hits, warm.misses
        inputs = [distinct[i % warm_set] for i in range(decisions)]
        latencies, wall = _time(warm, entrypoint, inputs)
        hits, misses = warm.hits - hits, warm.misses - misses
        rows.append(_row(name, entrypoint, "warm", latencies, wall,
                         hits / max(1, hits + misses)))
    return rows


def _time_threads(engine: PolicyEngine, entrypoint: str,
                  batches: Sequence[Sequence[dict[str, Any]]]) -> tuple[list[int], int]:
    """One thread per batch, released together: every call's latency, the wall time (ns)."""
    results: list[list[int]] = [[] for _ in batches]
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(batches) + 1)

    def call(index: int) -> None:
        barrier.wait()
        try:
            results[index] = _time(engine, entrypoint, batches[index])[0]
        except BaseException as exc:  # re-raised by the main thread
            errors.append(exc)

    workers = [threading.Thread(target=call, args=(i,)) for i in range(len(batches))]
    for worker in workers:
        worker.start()
    barrier.wait()
    start = time.perf_counter_ns()
    for worker in workers:
        worker.join()
    wall = time.perf_counter_ns() - start
    if errors:
        raise errors[0]
    return list(itertools.chain.from_iterable(results)), wall


def measure_threads(name: str, engine: PolicyEngine,
                    make: dict[str, Callable[[], dict[str, Any]]], decisions: int,
                    threads: int) -> list[Row]:
    """``threads`` callers sharing the engine (no cache), ``decisions`` calls in all."""
    rows = []
    for entrypoint, new_input in make.items():
        per_thread = max(1, decisions // threads)
        batches = [[new_input() for _ in range(per_thread)] for _ in range(threads)]
        latencies, wall = _time_threads(engine, entrypoint, batches)
        rows.append(_row(name, entrypoint, f"{threads}", latencies, wall))
    return rows


@contextmanager
def fake_opa_url(in_process: bool) -> Iterator[str]:
    """The URL of a fake OPA server on loopback: in a child process unless ``in_process``."""
    if in_process:
        with running_fake_opa() as (url, _state):
            yield url
        return
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.bench.policy", "--serve-fake-opa"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    assert child.stdin is not None
    assert child.stdout is not None
    try:
        url = child.stdout.readline().strip()
        if not url.startswith("http://127.0.0.1:"):
            raise RuntimeError(f"the fake OPA server did not start (said {url!r})")
        yield url
    finally:
        child.stdin.close()  # the child serves until its stdin closes
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def _serve_fake_opa() -> None:
    """The child process: serve, print the URL, stop when the parent closes stdin."""
    with running_fake_opa() as (url, _state):
        print(url, flush=True)
        sys.stdin.read()


def _short(entrypoint: str) -> str:
    return entrypoint.split("/")[1]


def main() -> None:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--decisions", type=int, default=300,
                        help="timed decisions per engine, entrypoint and mode")
    parser.add_argument("--threads", type=int, default=4,
                        help="callers of the concurrent run; 1 or less skips it")
    parser.add_argument("--warm-set", type=int, default=8,
                        help="distinct inputs repeated in the warm-cache run")
    parser.add_argument("--opa-in-process", action="store_true",
                        help="serve the fake OPA in this process (shares its GIL)")
    parser.add_argument("--serve-fake-opa", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_fake_opa:  # the child process
        _serve_fake_opa()
        return
    if args.decisions < 1 or args.warm_set < 1:
        parser.error("--decisions and --warm-set must be at least 1")

    make = _inputs()
    rows: list[Row] = []
    concurrent: list[Row] = []
    with ExitStack() as stack:
        url = stack.enter_context(fake_opa_url(args.opa_in_process))
        regopy = EmbeddedPolicyEngine(POLICY_DIR, timeout=TIMEOUT)
        stack.callback(regopy.close)
        go = GoPolicyEngine(POLICY_DIR, timeout=TIMEOUT)
        stack.callback(go.close)
        rest = OpaServerPolicyEngine(url, POLICY_DIR, timeout=TIMEOUT, push=True)
        stack.callback(rest.close)
        engines: dict[str, PolicyEngine] = {"regopy": regopy, BASELINE: go, "opa-rest": rest}

        revisions = {name: e.revision for name, e in engines.items()}
        decisions = {(name, ep): e.evaluate(ep, new_input())
                     for name, e in engines.items() for ep, new_input in make.items()}
        cpus = os.cpu_count()
        usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cpus
        print(f"policy revision {revisions[BASELINE]}   CPUs {cpus} ({usable} usable)   "
              f"{args.decisions} decisions per row   warm set {args.warm_set}   OPA REST: fake "
              f"server on 127.0.0.1, {'this' if args.opa_in_process else 'a child'} process")
        if len(set(revisions.values())) != 1:
            print(f"WARNING: the engines run different policies: {revisions}")
        for ep in make:
            allows = {name: (decisions[name, ep] or {}).get("allow") for name in engines}
            if len(set(allows.values())) != 1 or allows[BASELINE] is not True:
                print(f"WARNING: {_short(ep)} decisions differ or deny: {allows}")

        for name, engine in engines.items():
            rows += measure(name, engine, make, args.decisions, args.warm_set)
        if args.threads > 1:
            for name, engine in engines.items():
                concurrent += measure_threads(name, engine, make, args.decisions, args.threads)

    base = {r.entrypoint: r.p50_us for r in rows if r.engine == BASELINE and r.mode == "none"}
    print()
    print(f"{'engine':<9} {'decision':<8} {'cache':<5} {'decisions/s':>12} {'p50 us':>9}"
          f" {'p99 us':>9} {'hits':>6} {'p50/opa-go':>11}")
    for r in rows:
        hits = "" if r.hit_rate is None else f"{r.hit_rate:.0%}"
        print(f"{r.engine:<9} {_short(r.entrypoint):<8} {r.mode:<5} {r.per_second:>12,.0f}"
              f" {r.p50_us:>9,.0f} {r.p99_us:>9,.0f} {hits:>6}"
              f" {r.p50_us / base[r.entrypoint]:>10.2f}x")
    print("(p50/opa-go: the row's p50 over opa-go's without cache, same decision)")
    if concurrent:
        single = {(r.engine, r.entrypoint): r.per_second for r in rows if r.mode == "none"}
        print()
        print(f"{'engine':<9} {'decision':<8} {'callers':<7} {'decisions/s':>12} {'p50 us':>9}"
              f" {'p99 us':>9} {'vs 1 caller':>12}")
        for r in concurrent:
            print(f"{r.engine:<9} {_short(r.entrypoint):<8} {r.mode:<7} {r.per_second:>12,.0f}"
                  f" {r.p50_us:>9,.0f} {r.p99_us:>9,.0f}"
                  f" {r.per_second / single[r.engine, r.entrypoint]:>11.2f}x")
        print("(no cache; p50/p99 include the wait for the engine's one worker thread)")


if __name__ == "__main__":
    main()
