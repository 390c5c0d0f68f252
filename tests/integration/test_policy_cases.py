"""The decision cases in policies/cases (input -> expected), run on every available engine."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from broker.domain.ports import PolicyEngine
from broker.policy.embedded import EmbeddedPolicyEngine
from policies import POLICY_DIR

CASES = [
    (entry, case)
    for entry, name in (("broker/authz/decision", "authz"), ("broker/flow/decision", "flow"))
    for case in json.loads((POLICY_DIR / "cases" / f"{name}.json").read_text())
]

ENGINES: dict[str, Callable[[], PolicyEngine]] = {
    "regopy": lambda: EmbeddedPolicyEngine(POLICY_DIR),
}


@pytest.fixture(scope="module", params=sorted(ENGINES))
def engine(request: pytest.FixtureRequest) -> PolicyEngine:
    return ENGINES[request.param]()


@pytest.mark.parametrize(("entrypoint", "case"), CASES, ids=[c["name"] for _, c in CASES])
def test_decision_case(engine: PolicyEngine, entrypoint: str, case: dict[str, Any]) -> None:
    got = engine.evaluate(entrypoint, case["input"])
    for key, expected in case["expect"].items():
        assert got[key] == expected, f"{case['name']}: {key}"


def test_revision_is_a_stable_content_hash() -> None:
    a, b = EmbeddedPolicyEngine(POLICY_DIR), EmbeddedPolicyEngine(POLICY_DIR)
    assert a.revision == b.revision
    assert len(a.revision) == 16
