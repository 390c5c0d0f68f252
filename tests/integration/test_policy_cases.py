"""The decision cases in policies/cases, on every engine: regopy in process, the OPA Go engine
in process, and the OPA REST adapter over loopback HTTP (to the Go engine behind the test
fixture server). Each case must get its expected decision, and every engine the same whole
decision; a generated corpus of inputs must get the same decision everywhere too."""

from __future__ import annotations

import copy
import json
import os
import re
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from broker.domain.ports import PolicyEngine
from broker.policy.bundle import PolicySources
from broker.policy.cases import DecisionCase, load_cases, merge_patch
from broker.policy.conformance import canonical, check_case
from broker.policy.decisions import Limits, moment
from broker.policy.embedded import EmbeddedPolicyEngine
from broker.policy.golib import GoPolicyEngine
from broker.policy.opa import OpaServerPolicyEngine
from policies import POLICY_DIR
from tests.fake_opa import running_fake_opa
from tests.integration.policy_inputs import flow_inputs

CASES = load_cases(POLICY_DIR)


@pytest.fixture(scope="module")
def engines() -> Iterator[list[PolicyEngine]]:
    """All three engines, the REST one pushed its policies over HTTP."""
    with running_fake_opa() as (url, _):
        rest = OpaServerPolicyEngine(url, POLICY_DIR, push=True, timeout=60.0)
        # A long deadline: the concurrency test queues dozens of calls on each engine's one
        # worker, and on a loaded machine the wait alone could pass the default two seconds.
        found: list[PolicyEngine] = [EmbeddedPolicyEngine(POLICY_DIR, timeout=60.0),
                                     GoPolicyEngine(POLICY_DIR, timeout=60.0), rest]
        yield found
        rest.close()


def test_every_file_and_entrypoint_has_cases() -> None:
    files = {c.file for c in CASES}
    assert {"authz.json", "flow.json", "query.json"} <= files
    assert {c.entrypoint for c in CASES} == {"broker/authz/decision", "broker/flow/decision",
                                           "broker/flow/terms", "broker/query/decision"}


@pytest.mark.parametrize("case", CASES, ids=[f"{c.file}:{c.name}" for c in CASES])
def test_decision_case_on_every_engine(engines: list[PolicyEngine], case: DecisionCase) -> None:
    outcome = check_case(engines, case)
    assert not outcome.errors, outcome.errors
    assert not outcome.wrong, outcome.wrong
    assert not outcome.disagreement, outcome.disagreement


@settings(max_examples=int(os.environ.get("BROKER_PROPERTY_EXAMPLES", "150")),
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(document=flow_inputs())
def test_engines_agree_on_generated_inputs(engines: list[PolicyEngine],
                                           document: dict[str, Any]) -> None:
    """Random, partly malformed inputs (missing keys, wrong types, unknown fields and levels):
    the three engines must give the same whole decision, or all fail."""
    answers = []
    for engine in engines:
        try:
            answers.append(canonical(engine.evaluate("broker/flow/decision", document)))
        except Exception as exc:
            answers.append(f"error {type(exc).__name__}")
    assert len(set(answers)) == 1, answers
    if not answers[0].startswith("error"):
        for engine in engines:
            assert composed(engine, document) == answers[0], getattr(engine, "name", "?")


def composed(engine: PolicyEngine, document: dict[str, Any]) -> str:
    """The whole flow decision as the broker puts it together: ``broker/flow/terms`` on the
    input without its moment, then the moment part in Python (broker.policy.decisions.moment)."""
    terms = dict(engine.evaluate("broker/flow/terms", {
        k: v for k, v in document.items() if k not in ("now", "usage")}))
    usage = document.get("usage")
    count: Any = usage.get("queries_today") if isinstance(usage, dict) else None
    # Whatever the input holds, of any type: moment() must treat it as the policy does.
    now: Any = document.get("now")
    reasons, quota = moment(Limits.parse(terms.pop("limits")), now, count)
    terms.update(allow=terms["allow"] is True and not reasons,
                 reasons=sorted(set(terms["reasons"]) | reasons), quota_remaining=quota)
    return canonical(terms)


FLOW_CASES = [c for c in CASES if c.entrypoint == "broker/flow/decision"]
BASE_CASE = "sum by town under an active contract"


@pytest.mark.parametrize("case", FLOW_CASES, ids=[c.name for c in FLOW_CASES])
def test_terms_and_moment_make_the_whole_flow_decision(engines: list[PolicyEngine],
                                                       case: DecisionCase) -> None:
    """On every engine and every flow case: the cached terms part, completed by the moment
    part the broker computes per query, is exactly the one-call decision."""
    for engine in engines:
        assert composed(engine, case.input) == canonical(
            engine.evaluate("broker/flow/decision", case.input)), getattr(engine, "name", "?")


def _moments() -> list[tuple[Any, Any, dict[str, Any]]]:
    """(now, queries_today, contract patch) around every limit, and limits of every kind."""
    grid: list[tuple[Any, Any, dict[str, Any]]] = [
        (now, used, {}) for now in (999, 1000, 1001, 1999, 2000, 2001, None, "1500")
        for used in (0, 9, 10, 11, None)]
    grid += [(1500, 3, {"valid_from": bad}) for bad in (None, "1000", True, 999.5, 1500)]
    grid += [(1500, 3, {"valid_until": bad}) for bad in (None, "2000", 1500, 1500.5, 2.5e9)]
    grid += [(1500, 3, {"max_queries_per_day": bad})
             for bad in (None, "10", 3, 4, 3.0, 0, -1, False)]
    return grid


@pytest.mark.parametrize(("now", "used", "patch"), _moments())
def test_the_moment_part_matches_the_policy_around_every_limit(
        engines: list[PolicyEngine], now: Any, used: Any, patch: dict[str, Any]) -> None:
    document = copy.deepcopy(next(c.input for c in FLOW_CASES if c.name == BASE_CASE))
    if now is None:
        del document["now"]
    else:
        document["now"] = now
    document["usage"] = {} if used is None else {"queries_today": used}
    document["contract"].update(patch)
    whole = [canonical(e.evaluate("broker/flow/decision", document)) for e in engines]
    assert len(set(whole)) == 1, whole
    for engine in engines:
        assert composed(engine, document) == whole[0], getattr(engine, "name", "?")


def test_a_missing_action_is_unknown_on_every_engine(engines: list[PolicyEngine]) -> None:
    """The first disagreement the cross-engine run found: `not grants[input.action]` is true
    on regopy and undefined on OPA when the action is missing."""
    for engine in engines:
        assert engine.evaluate("broker/authz/decision", {})["reasons"] == ["unknown-action"]


def test_revision_is_a_stable_content_hash(engines: list[PolicyEngine]) -> None:
    revisions = {e.revision for e in engines} | {PolicySources.load(POLICY_DIR).revision}
    assert len(revisions) == 1
    (revision,) = revisions
    assert re.fullmatch(r"[0-9a-f]{16}", revision)
    for engine in engines:
        assert engine.evaluate("broker/flow/decision", {})["revision"] == revision


def test_revision_changes_with_any_policy_file(tmp_path: Any) -> None:
    import shutil

    copy = tmp_path / "policies"
    shutil.copytree(POLICY_DIR, copy)
    before = PolicySources.load(copy).revision
    case_file = copy / "cases" / "authz.json"
    case_file.write_text(case_file.read_text() + " ")
    assert PolicySources.load(copy).revision != before


#: Built-ins whose value does not follow from the input: a policy calling one could not be
#: cached by input digest, nor give the same answer on two engines.
NON_DETERMINISTIC = re.compile(
    r"\b(time\.now_ns|http\.send|rand\.intn|uuid\.rfc4122|opa\.runtime|net\.lookup_ip_addr"
    r"|crypto\.x509\.parse_and_verify_certificates)\b")


def test_policies_are_pure_functions_of_their_input() -> None:
    for name, text in PolicySources.load(POLICY_DIR).modules.items():
        assert not NON_DETERMINISTIC.search(text), name


def test_merge_patch_follows_rfc_7396() -> None:
    # RFC 7396, appendix A, a selection.
    assert merge_patch({"a": "b"}, {"a": "c"}) == {"a": "c"}
    assert merge_patch({"a": "b"}, {"b": "c"}) == {"a": "b", "b": "c"}
    assert merge_patch({"a": "b"}, {"a": None}) == {}
    assert merge_patch({"a": [{"b": "c"}]}, {"a": [1]}) == {"a": [1]}
    assert merge_patch({"e": None}, {"a": 1}) == {"e": None, "a": 1}
    assert merge_patch([1, 2], {"a": "b", "c": None}) == {"a": "b"}
    assert merge_patch({}, {"a": {"bb": {"ccc": None}}}) == {"a": {"bb": {}}}


def test_the_bundle_alone_decides_every_case_as_the_source_does(tmp_path: Any) -> None:
    """Load only what the OPA bundle holds (as OPA would) into the Go engine: same decisions,
    and every package and data document lies under a root the manifest claims."""
    import json
    import tarfile

    from opa_bindings import OpaEngine

    from broker.policy.bundle_file import write_bundle

    target = tmp_path / "bundle.tar.gz"
    revision = write_bundle(POLICY_DIR, target)
    with tarfile.open(target) as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]
    manifest = json.loads(files.pop(".manifest"))
    data = json.loads(files.pop("data.json"))
    assert manifest["revision"] == revision
    roots = set(manifest["roots"])
    assert set(data) <= roots
    engine = OpaEngine()
    for name, text in files.items():
        package = re.search(r"^package\s+([\w.]+)", text.decode(), re.MULTILINE)
        assert package is not None
        assert package.group(1).split(".")[0] in roots, name
        assert not name.endswith("_test.rego")
        engine.add_policy(name, text.decode())
    engine.add_data(data)
    for case in CASES:
        got = engine.eval_document(case.entrypoint.replace("/", "."), case.input)
        assert not case.mismatches(got), case.name
        assert got["revision"] == revision
    engine.close()


@pytest.mark.parametrize("cached", [False, True])
def test_concurrent_callers_each_get_their_own_decision(engines: list[PolicyEngine],
                                                        cached: bool) -> None:
    """Eight threads over every case at once: regopy keeps its input as interpreter state,
    so a decision evaluated against another caller's input would show up here."""
    from concurrent.futures import ThreadPoolExecutor

    from broker.policy.cache import CachedPolicyEngine

    for engine in engines:
        subject: PolicyEngine = CachedPolicyEngine(engine, 64) if cached else engine
        expected = [canonical(engine.evaluate(c.entrypoint, c.input)) for c in CASES]
        work = [i % len(CASES) for i in range(6 * len(CASES))]
        def decide(i: int, on: PolicyEngine = subject) -> str:
            return canonical(on.evaluate(CASES[i].entrypoint, CASES[i].input))

        with ThreadPoolExecutor(max_workers=8) as pool:
            got = list(pool.map(decide, work))
        assert got == [expected[i] for i in work], getattr(engine, "name", "?")


def test_an_integer_beyond_64_bits_is_decided_alike(engines: list[PolicyEngine]) -> None:
    """regopy takes its input node by node, where ctypes would wrap such an integer: it must
    go the JSON way instead, and every engine decide the same."""
    base = next(c.input for c in FLOW_CASES if c.name == BASE_CASE)
    for big in (2**63, -(2**63) - 1, 2**70):
        document = merge_patch(base, {"usage": {"queries_today": big}})
        answers = {canonical(e.evaluate("broker/flow/decision", document)) for e in engines}
        assert len(answers) == 1, answers


def test_a_string_holding_a_nul_is_decided_alike(engines: list[PolicyEngine]) -> None:
    """regopy's node-by-node input cuts a string at a NUL: such input goes the JSON way, and
    "org\\x00other" is not taken for "org"."""
    base = next(c.input for c in FLOW_CASES if c.name == BASE_CASE)
    org = base["contract"]["consumer_org"]
    document = merge_patch(base, {"principal": {"org": org + "\x00other"}})
    answers = {canonical(e.evaluate("broker/flow/decision", document)) for e in engines}
    assert len(answers) == 1, answers
    assert json.loads(answers.pop())["reasons"] == ["consumer-not-party"]


def _statements(text: str) -> list[tuple[str, str]]:
    """(head rule name, whole text) of every top-level statement of a Rego module."""
    statements: list[tuple[str, str]] = []
    for line in text.splitlines():
        code = line.split("#", 1)[0]
        if not code.strip():
            continue
        head = re.match(r"(?:default\s+)?([a-z_][a-z0-9_]*)", code)
        if head and not line[0].isspace() and head.group(1) not in ("package", "import"):
            statements.append((head.group(1), code))
        elif statements and (line[0].isspace() or code.startswith(("}", "]", ")"))):
            statements[-1] = (statements[-1][0], statements[-1][1] + "\n" + code)
    return statements


def test_the_terms_part_reads_no_moment_by_construction() -> None:
    """Statically: nothing ``broker.flow.terms`` depends on reads input.now or input.usage (so
    the broker may cache it whatever the moment), and broker.query reads neither at all."""
    modules = PolicySources.load(POLICY_DIR).modules
    moment = re.compile(r"\binput\s*\.\s*(now|usage)\b|\binput\s*\[")
    assert not moment.search(modules["broker/query.rego"])
    statements = _statements(modules["broker/flow.rego"])
    rules = {name for name, _ in statements}
    uses: dict[str, set[str]] = {}
    reads_moment: set[str] = set()
    for name, text in statements:
        body = re.sub(r'"(?:[^"\\]|\\.)*"', '""', text.split(name, 1)[1])  # no strings
        uses.setdefault(name, set()).update(
            w for w in re.findall(r"(?<![.\w])([a-z_][a-z0-9_]*)\b", body) if w in rules)
        if moment.search(text):
            reads_moment.add(name)
    assert reads_moment == {"started", "ended_after_now", "quota_remaining"}
    seen, todo = set(), ["terms"]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(uses.get(name, ()))
    assert "terms_deny" in seen
    assert "limits" in seen
    assert not seen & (reads_moment | {"deny", "allow", "decision"}), seen & reads_moment
