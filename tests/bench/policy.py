"""Benchmark: policy decisions per second and latency on each engine, with and without the cache.

Run: .venv/bin/python -m tests.bench.policy [--decisions N] [--threads T] [--warm-set W]

The engines: regopy (rego-cpp in process, the broker's ``embedded`` engine), opa-go (OPA's own
Go engine in process, the reference) and opa-rest (the ``opa`` adapter over HTTP to the fake
OPA server of tests/fake_opa.py on 127.0.0.1, deciding with the Go engine; by default in a
child process, as a real OPA server would be, so that it does not share the client's GIL).

For the flow decision (the heaviest: the base input of policies/cases/flow.json), its terms
part alone (``broker/flow/terms``: the same input without the moment) and the authz decision (a
consumer reading a dataset offered to it), each engine is timed over N decisions

- none: on the engine itself;
- cold: through CachedPolicyEngine, every input distinct (the flow input's ``now`` and the
  authz caller's ``sub`` change per call, the decision does not), so every call misses;
- warm: through CachedPolicyEngine over W inputs repeated, after one priming pass;

and, with T > 1, by T threads sharing the engine (no cache), for the aggregate throughput.
Latencies are per call (time.perf_counter_ns); the ratio column divides each row's p50 by
the p50 of opa-go without cache on the same entrypoint (the raw OPA engine).

The broker's own flow path (Policies.flow_at, what the query service calls) is timed warm: W
distinct requests (callers) primed once, then N queries, each at its own second and day's count
(so the whole-input digest would miss every time). It prints the engine calls the warm queries
made (0 is the target), the p50 of the whole warm decision (key, cache hit, moment, decision),
and of its parts: building the key, and the cache hit alone (target <= 10 us).

Last, where an uncached regopy flow decision spends its time, step by step on the calling thread
(the input into the interpreter as JSON text, as before, and node by node, as the engine now
does; evaluation; output back), beside opa-go's whole call and the hop to the engines' worker
thread.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime as dt
import itertools
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
from regopy import Input as regopy_input

from broker.domain.datasets import (
    Dataset,
    DatasetSchema,
    FieldRole,
    FieldSpec,
    FieldType,
    Sensitivity,
)
from broker.domain.ports import PolicyEngine
from broker.domain.principals import Principal, Role
from broker.domain.queries import AggregateSpec, Dimension, Measure, MeasureFn
from broker.policy.cache import CachedPolicyEngine
from broker.policy.cases import load_cases
from broker.policy.decisions import Policies
from broker.policy.embedded import EmbeddedPolicyEngine, _exact
from broker.policy.golib import GoPolicyEngine
from broker.policy.inputs import FlowRequest
from broker.policy.opa import OpaServerPolicyEngine
from contracts.model import Contract, ContractStatus, Dominance, FieldForm, Terms
from policies import POLICY_DIR
from tests.fake_opa import running_fake_opa

FLOW = "broker/flow/decision"
TERMS = "broker/flow/terms"
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

    def terms_input() -> dict[str, Any]:
        document = {k: copy.deepcopy(v) for k, v in flow.items() if k not in ("now", "usage")}
        document["principal"]["sub"] = f"analyst-{next(_serial)}"  # not read by the policy
        return document

    def authz_input() -> dict[str, Any]:
        document = copy.deepcopy(authz)
        document["principal"] = {**document["principal"], "iss": "broker-dev",
                                 "sub": f"analyst-{next(_serial)}@econ"}
        return document

    return {FLOW: flow_input, TERMS: terms_input, AUTHZ: authz_input}


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


def flow_requests(count: int) -> list[FlowRequest]:
    """``count`` requests like the flow base case, from domain objects as the query service
    builds them: distinct callers (so distinct terms keys), all allowed."""
    base = json.loads((POLICY_DIR / "cases" / "flow.json").read_text(encoding="utf-8"))["base"]
    fields = base["dataset"]["fields"]
    schema = DatasetSchema.of(base["dataset"]["entity_field"], [
        FieldSpec(name, FieldType(f["type"]), FieldRole(f["role"]), Sensitivity(f["sensitivity"]),
                  f["hierarchy"]) for name, f in fields.items()])
    created = dt.datetime.fromtimestamp(0, dt.UTC)
    dataset = Dataset(id=base["dataset"]["id"], owner_org="grid", name="bench", schema=schema,
                      version=1, rows=1, sha256="0" * 64, created_at=created)
    c = base["contract"]
    forms = {name: FieldForm(form) for name, form in c["fields"].items()
             if form in set(FieldForm)}
    now = dt.datetime.fromtimestamp(base["now"], dt.UTC)
    terms = Terms(dataset_id=c["dataset_id"], purposes=tuple(c["purposes"]), fields=forms,
                  k_min=c["k_min"], dominance=Dominance(**c["dominance"]),
                  valid_from=now - dt.timedelta(days=1), valid_until=now + dt.timedelta(days=365),
                  max_queries_per_day=10**6)
    contract = Contract(id=c["id"], provider_org=c["provider_org"],
                        consumer_org=c["consumer_org"], terms=terms,
                        status=ContractStatus.ACTIVE, created_at=created)
    spec = AggregateSpec(contract_id=c["id"], purpose=base["query"]["purpose"],
                         group_by=(Dimension("town"),), measures=(Measure(MeasureFn.SUM, "kwh"),))
    return [FlowRequest(Principal("broker-dev", f"analyst-{i}", base["principal"]["org"],
                                  frozenset({Role.CONSUMER})),
                        registered=True, now=now, queries_today=0, contract=contract,
                        dataset=dataset, spec=spec) for i in range(count)]


@dataclass(frozen=True, slots=True)
class SplitRow:
    """The broker's warm flow path on one engine."""

    engine: str
    engine_calls: int
    decision_p50_us: float
    key_p50_us: float
    hit_p50_us: float
    allowed: bool


def _p50_us(latencies: Sequence[int]) -> float:
    return float(np.percentile(np.asarray(latencies, dtype=np.float64), 50) / 1e3)


def measure_split(name: str, engine: PolicyEngine, decisions: int, warm_set: int) -> SplitRow:
    """Policies.flow_at warm: every query at another second and count, no engine call."""
    counting = _Counting(engine)
    cache = CachedPolicyEngine(counting, warm_set + 1)
    policies = Policies(cache)
    distinct = flow_requests(warm_set)
    for request in distinct:  # the priming pass, not counted
        policies.flow_at(request)
    calls = counting.calls
    queries = [dataclasses.replace(distinct[i % warm_set],
                                   now=distinct[0].now + dt.timedelta(seconds=i + 0.5),
                                   queries_today=i % 1000) for i in range(decisions)]
    latencies, allowed = [], True
    for request in queries:
        t = time.perf_counter_ns()
        decision = policies.flow_at(request)
        latencies.append(time.perf_counter_ns() - t)
        allowed = allowed and decision.allow
    keys = []
    for request in queries:
        t = time.perf_counter_ns()
        key = request.key
        keys.append(time.perf_counter_ns() - t)
    cached = ("broker/flow/terms", key)
    hits = []
    for _ in range(decisions):
        t = time.perf_counter_ns()
        cache.remember(cached, _never)
        hits.append(time.perf_counter_ns() - t)
    return SplitRow(name, counting.calls - calls, _p50_us(latencies), _p50_us(keys),
                    _p50_us(hits), allowed)


def _never() -> Any:
    raise AssertionError("a warm query reached the engine")


class _Counting:
    """Counts the evaluations that reach the engine."""

    def __init__(self, engine: PolicyEngine) -> None:
        self.engine = engine
        self.calls = 0

    @property
    def revision(self) -> str:
        return self.engine.revision

    def evaluate(self, entrypoint: str, input: Mapping[str, Any]) -> Any:
        self.calls += 1
        return self.engine.evaluate(entrypoint, input)


def profile_regopy(regopy: EmbeddedPolicyEngine, go: GoPolicyEngine,
                   make: dict[str, Callable[[], dict[str, Any]]], decisions: int
                   ) -> list[tuple[str, str, float]]:
    """Per entrypoint, the p50 (us) of each step of an uncached decision, on this thread."""
    interpreter = regopy._interpreter  # the engine's own, used here with its worker idle
    rows = []
    for entrypoint in (FLOW, TERMS):
        steps: dict[str, list[int]] = {
            "input, JSON text": [], "input, node by node": [], "evaluate": [],
            "output to Python": [], "opa-go eval_document": [], "worker hop": []}
        for _ in range(decisions):
            document = make[entrypoint]()
            t0 = time.perf_counter_ns()
            interpreter.set_input_term(json.dumps(document, allow_nan=False))
            t1 = time.perf_counter_ns()
            if _exact(document):  # what the engine does
                interpreter.set_input(regopy_input(document))
            t2 = time.perf_counter_ns()
            output = interpreter.query_bundle_entrypoint(regopy._bundle, entrypoint)
            t3 = time.perf_counter_ns()
            json.loads(output.expressions().json())
            t4 = time.perf_counter_ns()
            go._engine.eval_document(entrypoint.replace("/", "."), document)
            t5 = time.perf_counter_ns()
            regopy._call(_nothing)
            t6 = time.perf_counter_ns()
            for step, ns in zip(steps, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5),
                                strict=True):
                steps[step].append(ns)
        rows += [(entrypoint, step, _p50_us(ns)) for step, ns in steps.items()]
    return rows


def _nothing() -> None:
    return None


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
    return _short_ep(entrypoint)


def _short_ep(entrypoint: str) -> str:
    """flow, terms or authz."""
    parts = entrypoint.split("/")
    return parts[2] if parts[2] != "decision" else parts[1]


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
        split = [measure_split(name, engine, args.decisions, args.warm_set)
                 for name, engine in engines.items()]
        steps = profile_regopy(regopy, go, make, args.decisions)

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
    print()
    print("The broker's flow path warm (Policies.flow_at): each query at another second and "
          "day's count")
    print(f"{'engine':<9} {'engine calls':>12} {'decision p50 us':>16} {'key p50 us':>11}"
          f" {'hit p50 us':>11} {'allowed':>8}")
    for sr in split:
        print(f"{sr.engine:<9} {sr.engine_calls:>12} {sr.decision_p50_us:>16.1f}"
              f" {sr.key_p50_us:>11.1f} {sr.hit_p50_us:>11.1f} {sr.allowed!s:>8}")
    print("(decision: key + cache hit + moment + FlowDecision; hit: the cache lookup alone;"
          " target <= 10 us)")
    ratio = {ep: next(r.p50_us for r in rows if r.engine == "regopy" and r.mode == "none"
                      and r.entrypoint == ep) / base[ep] for ep in (FLOW, TERMS)}
    print(f"uncached regopy / opa-go p50: flow {ratio[FLOW]:.2f}x, terms {ratio[TERMS]:.2f}x"
          " (target <= 1.5x)")
    print()
    print("Where an uncached decision's time goes, p50 us per step on this thread:")
    for entrypoint, step, p50 in steps:
        print(f"  {_short_ep(entrypoint):<6} {step:<22} {p50:>9,.1f}")


if __name__ == "__main__":
    main()
