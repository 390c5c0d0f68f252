"""Every decision case on every engine: each must give its expected decision, and all engines
must give the same whole decision. A security decision that differs between the laptop and
production is a bug nobody sees; this is where it is seen."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from broker.domain.ports import PolicyEngine
from broker.policy.cases import DecisionCase


@dataclass(frozen=True, slots=True)
class CaseOutcome:
    """What went wrong with one case: per engine, expected keys it got wrong or its error;
    and whether the engines disagreed on the whole decision."""

    case: DecisionCase
    wrong: dict[str, dict[str, Any]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    disagreement: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """No engine wrong, none failing, all agreeing."""
        return not (self.wrong or self.errors or self.disagreement)


def canonical(decision: Any) -> str:
    """A decision as comparable text: arrays (Rego sets) sorted, keys sorted, and whole
    numbers as integers (regopy writes 7.0 where OPA writes 7 for the same value)."""
    return json.dumps(_sorted_sets(decision), sort_keys=True)


def _sorted_sets(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _sorted_sets(v) for k, v in value.items()}
    if isinstance(value, list):
        items = [_sorted_sets(v) for v in value]
        return sorted(items, key=lambda v: json.dumps(v, sort_keys=True))
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def check_case(engines: Sequence[PolicyEngine], case: DecisionCase) -> CaseOutcome:
    """Evaluate ``case`` on every engine and compare."""
    outcome = CaseOutcome(case)
    answers: dict[str, str] = {}
    for engine in engines:
        name = str(getattr(engine, "name", type(engine).__name__))
        try:
            decision = engine.evaluate(case.entrypoint, case.input)
        except Exception as exc:
            outcome.errors[name] = f"{type(exc).__name__}: {exc}"
            continue
        answers[name] = canonical(decision)
        wrong = case.mismatches(decision)
        if wrong:
            outcome.wrong[name] = wrong
    if len(set(answers.values())) > 1:
        outcome.disagreement.update(answers)
    return outcome


def check_all(engines: Sequence[PolicyEngine], cases: Sequence[DecisionCase]
              ) -> list[CaseOutcome]:
    """Every case on every engine."""
    return [check_case(engines, c) for c in cases]
