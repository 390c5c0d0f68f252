"""Policy decisions fail closed whatever the engine answers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from broker.domain.disclosure import Rules
from broker.domain.errors import Unavailable
from broker.domain.principals import Principal, Role
from broker.policy.decisions import Policies, Verdict
from contracts.model import FieldForm


class FakeEngine:
    """Answers whatever it is told to, like a misbehaving engine would."""

    def __init__(self, answer: Any) -> None:
        self.answer = answer

    @property
    def revision(self) -> str:
        return "fake"

    def evaluate(self, entrypoint: str, input: Mapping[str, Any]) -> Any:  # noqa: ARG002
        if isinstance(self.answer, Exception):
            raise self.answer
        if isinstance(self.answer, dict):
            return {"revision": "fake", **self.answer}
        return self.answer


RULES = {"k": 5, "dominance_n": 2, "dominance_k": 85, "p_percent": 0, "protection_percent": 10}
OK = {"allow": True, "reasons": [], "fields": {"town": "clear"}, "field_reasons": {}, "k": 5,
      "quota_remaining": 3, "disclosure": RULES}
#: The query the decisions above are about: grouped by town, no measure field.
QUERY = {"query": {"group_by": [{"field": "town", "level": "raw"}], "measures": [],
                   "filters": []}}


def test_a_consistent_allow_is_an_allow() -> None:
    decision = Policies(FakeEngine(OK)).flow(QUERY)
    assert decision.allow
    assert decision.reasons == ()
    assert decision.k == 5
    assert decision.rules == Rules(k_min=5, dominance_n=2, dominance_k=85.0)


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ({**OK, "fields": {"name": "deny"}}, "field-denied"),
        ({**OK, "fields": {"name": "deny"}, "field_reasons": {"name": ["x-y"]}}, "x-y"),
        ({**OK, "fields": {"town": "publish"}}, "unsupported-field-verdict"),
        ({**OK, "fields": {"town": "aggregate"}}, "verdict-use-mismatch"),
        ({**OK, "fields": {}}, "field-verdict-missing"),
        ({**OK, "k": 1}, "k-below-floor"),
        ({**OK, "allow": "yes"}, None),
    ],
)
def test_an_inconsistent_allow_is_a_denial(answer: dict[str, Any], reason: str | None) -> None:
    decision = Policies(FakeEngine(answer)).flow(QUERY)
    assert not decision.allow
    if reason:
        assert reason in decision.reasons


def test_verdicts_are_the_contract_forms_and_deny() -> None:
    assert {v.value for v in Verdict} == {f.value for f in FieldForm} | {"deny"}
    assert all(Verdict.of_form(form).value == form.value for form in FieldForm)
    assert Verdict.parse("pseudonymize") is Verdict.PSEUDONYMIZE
    assert [Verdict.parse(raw) for raw in ("publish", "", None, 1, ["clear"])] == [None] * 5


def test_the_engines_verdicts_are_parsed_once_into_the_enum() -> None:
    fields = {"town": "clear", "kwh": "aggregate"}
    query = {"query": {**QUERY["query"], "measures": [{"fn": "sum", "fields": ["kwh"]}]}}
    decision = Policies(FakeEngine({**OK, "fields": fields})).flow(query)
    assert decision.allow
    assert decision.fields == {"town": Verdict.CLEAR, "kwh": Verdict.AGGREGATE}
    assert all(type(v) is Verdict for v in decision.fields.values())


def test_a_verdict_the_broker_cannot_execute_denies_its_field() -> None:
    decision = Policies(FakeEngine({**OK, "fields": {"town": "publish"}})).flow(QUERY)
    assert not decision.allow
    assert decision.reasons == ("unsupported-field-verdict", "verdict-use-mismatch")
    assert decision.fields == {"town": Verdict.DENY}


MALFORMED: list[Any] = [None, [], "allow", {"allow": True}, {**OK, "reasons": "none"},
             RuntimeError("engine crashed")]


@pytest.mark.parametrize("answer", [
    *MALFORMED, {**OK, "k": "5"}, {**OK, "k": 5.5}, {**OK, "quota_remaining": None},
    {**OK, "fields": []}, {**OK, "disclosure": None}, {**OK, "revision": "other"},
    {**OK, "disclosure": {**RULES, "dominance_n": 2.5}},
    {**OK, "disclosure": {**RULES, "dominance_k": 0}},
    {**OK, "disclosure": {**RULES, "p_percent": -1}},
    {**OK, "disclosure": {**RULES, "protection_percent": "10"}},
])
def test_a_malformed_flow_answer_or_engine_error_is_unavailable(answer: Any) -> None:
    with pytest.raises(Unavailable):
        Policies(FakeEngine(answer)).flow({})


@pytest.mark.parametrize("answer", MALFORMED)
def test_a_malformed_authz_answer_or_engine_error_is_unavailable(answer: Any) -> None:
    with pytest.raises(Unavailable):
        Policies(FakeEngine(answer)).authorize(
            Principal("i", "s", "o", frozenset({Role.ADMIN})), "org.register", registered=True)
