"""Typed policy decisions over any PolicyEngine; anything malformed fails closed."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from broker.domain.disclosure import Rules
from broker.domain.errors import BrokerError, Unavailable
from broker.domain.ports import PolicyEngine
from broker.domain.principals import Principal
from contracts.model import FieldForm


class Verdict(StrEnum):
    """The flow policy's verdict on one field: a contract's form it may flow in, or deny."""

    CLEAR = FieldForm.CLEAR.value
    GENERALIZE = FieldForm.GENERALIZE.value
    PSEUDONYMIZE = FieldForm.PSEUDONYMIZE.value
    AGGREGATE = FieldForm.AGGREGATE.value
    DENY = "deny"

    @classmethod
    def parse(cls, raw: object) -> Verdict | None:
        """The verdict an engine wrote, or None for one this broker cannot execute."""
        if not isinstance(raw, str):
            return None
        try:
            return cls(raw)
        except ValueError:
            return None

    @classmethod
    def of_form(cls, form: FieldForm) -> Verdict:
        """The verdict that lets a field flow in exactly this contracted form."""
        return cls(form.value)


@dataclass(frozen=True, slots=True)
class AccessDecision:
    """Whether a role/relation check passed, and why not."""

    allow: bool
    reasons: tuple[str, ...]
    revision: str


@dataclass(frozen=True, slots=True)
class FlowDecision:
    """The flow policy's verdict on a query: overall, per field, and the k that applies."""

    allow: bool
    reasons: tuple[str, ...]
    revision: str
    fields: dict[str, Verdict] = field(default_factory=dict)
    field_reasons: dict[str, list[str]] = field(default_factory=dict)
    k: int = 0
    quota_remaining: int = 0
    rules: Rules | None = None


def _reasons(raw: Any) -> tuple[str, ...]:
    if not isinstance(raw, list) or not all(isinstance(r, str) for r in raw):
        raise Unavailable("The policy returned a malformed decision; nothing was released.")
    return tuple(sorted(raw))


def _object(raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise Unavailable("The policy returned a malformed decision; nothing was released.")
    return raw


#: The verdicts under which a field may be used each way. Group keys and filters see values
#: (clear, or coarser when generalized; a pseudonym stands in for a key); statistics see only
#: sums, whatever form the field may otherwise take, except a pseudonym's.
PERMITS: dict[str, frozenset[Verdict]] = {
    "dimension": frozenset({Verdict.CLEAR, Verdict.GENERALIZE, Verdict.PSEUDONYMIZE}),
    "filter": frozenset({Verdict.CLEAR, Verdict.GENERALIZE}),
    "measure": frozenset({Verdict.CLEAR, Verdict.GENERALIZE, Verdict.AGGREGATE}),
}


def _whole(raw: Any) -> Any:
    """A whole number as int (engines differ in writing 7 or 7.0); anything else unchanged."""
    if isinstance(raw, float) and raw.is_integer():
        return int(raw)
    return raw


def _number(raw: Any, low: float, high: float) -> float:
    if (not isinstance(raw, int | float) or isinstance(raw, bool) or not math.isfinite(raw)
            or not low <= raw <= high):
        raise Unavailable("The policy returned malformed disclosure rules; nothing was released.")
    return float(raw)


def _rules(raw: Any, k: int) -> Rules:
    """The disclosure thresholds the policy set; anything malformed fails closed."""
    rules = _object(raw)
    n = _number(rules.get("dominance_n"), 1, 10)
    if not n.is_integer():
        raise Unavailable("The policy returned malformed disclosure rules; nothing was released.")
    return Rules(
        k_min=k,
        dominance_n=int(n),
        dominance_k=_number(rules.get("dominance_k"), 1e-9, 100),
        p_percent=_number(rules.get("p_percent"), 0, 100),
        protection_percent=_number(rules.get("protection_percent"), 0, 100),
    )


def query_uses(query: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(field, use) for every use the policy view of a query makes (as broker.flow derives)."""
    uses = [(d["field"], "dimension") for d in query.get("group_by", [])]
    uses += [(f, "measure") for m in query.get("measures", []) for f in m["fields"]]
    uses += [(flt["field"], "filter") for flt in query.get("filters", [])]
    return uses


def _use_mismatches(document: Mapping[str, Any],
                    verdicts: Mapping[str, Verdict | None]) -> set[str]:
    """Reasons the verdicts do not cover how the query uses each field (empty when they do).

    ``verdicts`` holds None for a verdict the broker cannot execute: it covers no use.
    """
    query = document.get("query")
    reasons: set[str] = set()
    for name, use in query_uses(query) if isinstance(query, Mapping) else []:
        if name not in verdicts:
            reasons.add("field-verdict-missing")
        elif verdicts[name] is not Verdict.DENY and verdicts[name] not in PERMITS[use]:
            reasons.add("verdict-use-mismatch")
    return reasons


@dataclass(frozen=True, slots=True)
class Policies:
    """The broker's questions to its policies, phrased in domain terms."""

    engine: PolicyEngine

    @property
    def revision(self) -> str:
        """Revision of the loaded policies."""
        return self.engine.revision

    def _evaluate(self, entrypoint: str, document: Mapping[str, Any]) -> dict[str, Any]:
        """The engine's answer as an object; any engine failure is Unavailable (fail closed)."""
        try:
            raw = _object(self.engine.evaluate(entrypoint, document))
        except BrokerError:
            raise
        except Exception as exc:
            raise Unavailable("The policy engine failed; nothing was released.") from exc
        if raw.get("revision") != self.revision:
            # The engine runs other policies than the ones this broker records in its audit
            # entries (an OPA server with a stale bundle, say): no decision can be trusted.
            raise Unavailable("The policy engine runs another policy revision; nothing was "
                              "released.")
        return raw

    def probe(self) -> str:
        """Ask the engine itself (past any cache) for a decision; its revision, or Unavailable.

        Readiness uses this: an engine that is down, slow or on other policies is not ready.
        """
        engine = getattr(self.engine, "engine", self.engine)
        _reasons(Policies(engine)._evaluate("broker/authz/decision",
                                            {"action": "readiness-probe"}).get("reasons"))
        return self.revision

    def authorize(
        self,
        principal: Principal,
        action: str,
        resource: Mapping[str, Any] | None = None,
        *,
        registered: bool,
    ) -> AccessDecision:
        """Ask ``broker.authz`` whether ``principal`` may do ``action`` on ``resource``."""
        raw = self._evaluate(
            "broker/authz/decision",
            {
                "action": action,
                "principal": {**principal.as_actor(), "registered": registered},
                "resource": dict(resource or {}),
            },
        )
        allow = raw.get("allow")
        reasons = _reasons(raw.get("reasons"))
        return AccessDecision(allow=allow is True and not reasons, reasons=reasons,
                              revision=self.revision)

    def flow(self, document: Mapping[str, Any]) -> FlowDecision:
        """Ask ``broker.flow`` which fields of a query may flow, and in which form."""
        raw = self._evaluate("broker/flow/decision", document)
        reasons = _reasons(raw.get("reasons"))
        fields = _object(raw.get("fields"))
        field_reasons = _object(raw.get("field_reasons"))
        k = _whole(raw.get("k"))
        parsed = {str(name): Verdict.parse(v) for name, v in fields.items()}
        per_field = {str(name): list(_reasons(v)) for name, v in field_reasons.items()}
        # Belt and braces against an engine that evaluates one rule wrongly: a decision that
        # allows while any field is denied, or with a verdict this broker cannot execute, or
        # with a k below 2, is a denial.
        field_denials = {r for rs in per_field.values() for r in rs}
        if any(v is Verdict.DENY and not per_field.get(f) for f, v in parsed.items()):
            field_denials.add("field-denied")
        if None in parsed.values():
            field_denials.add("unsupported-field-verdict")
        if raw.get("allow") is True:
            field_denials |= _use_mismatches(document, parsed)
        # A verdict this broker cannot execute lets nothing of its field flow.
        verdicts = {name: v if v is not None else Verdict.DENY for name, v in parsed.items()}
        quota = _whole(raw.get("quota_remaining"))
        if (not isinstance(k, int) or isinstance(k, bool) or not isinstance(quota, int)
                or isinstance(quota, bool)):
            raise Unavailable("The policy returned a malformed decision; nothing was released.")
        allow = raw.get("allow") is True and not reasons and not field_denials
        if raw.get("allow") is True and allow and k < 2:
            allow, field_denials = False, {"k-below-floor"}
        rules = _rules(raw.get("disclosure"), k) if allow else None
        return FlowDecision(
            allow=allow,
            reasons=tuple(sorted(set(reasons) | field_denials)) if not allow else (),
            revision=self.revision,
            fields=verdicts,
            field_reasons=per_field,
            k=k,
            quota_remaining=quota,
            rules=rules,
        )
