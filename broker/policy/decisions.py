"""Typed policy decisions over any PolicyEngine; anything malformed fails closed."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from broker.domain.disclosure import Rules
from broker.domain.errors import BrokerError, Unavailable
from broker.domain.ports import PolicyEngine
from broker.domain.principals import Principal
from broker.policy.cache import CachedPolicyEngine
from broker.policy.inputs import FlowRequest
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
        """Ask ``broker.flow`` which fields of a query may flow, and in which form: the whole
        decision, terms and moment, in one engine call."""
        raw = self._evaluate("broker/flow/decision", document)
        terms = FlowTerms.parse(raw, document, self.revision)
        # The engine's own allow and reasons already include the moment's.
        return terms.at(frozenset(), raw.get("quota_remaining"))

    def flow_at(self, request: FlowRequest) -> FlowDecision:
        """The same decision as :meth:`flow` on ``request.document()``: the terms part from
        the cache (keyed by ``request.key`` and the policy revision) or ``broker/flow/terms``,
        then the moment part (:func:`moment`) on the current second and the day's count."""
        cache = self.engine
        if isinstance(cache, CachedPolicyEngine):
            # Asked of the wrapped engine: the parsed terms are kept here, not their JSON.
            inner = Policies(cache.engine)
            terms = cache.remember(("broker/flow/terms", request.key),
                                   lambda: inner._flow_terms(request))
        else:
            terms = self._flow_terms(request)
        reasons, quota = moment(terms.limits, request.second, request.queries_today)
        return terms.at(reasons, quota)

    def _flow_terms(self, request: FlowRequest) -> FlowTerms:
        """The terms part, from the engine."""
        document = request.terms_document()
        raw = self._evaluate("broker/flow/terms", document)
        terms = FlowTerms.parse(raw, document, self.revision)
        # The policy writes the limits whenever there is a contract; without them the moment
        # would add no reason and the window and quota would go unchecked: fail closed.
        if terms.limits is None and isinstance(document.get("contract"), Mapping):
            raise Unavailable(_MALFORMED)
        return terms


_MALFORMED = "The policy returned a malformed decision; nothing was released."


@dataclass(frozen=True, slots=True)
class Limits:
    """The contract's limits the moment is judged against, as the policy read them: each a
    number, or None for one that is missing or not a number (and so never met)."""

    valid_from: int | float | None
    valid_until: int | float | None
    max_queries_per_day: int | float | None

    @classmethod
    def parse(cls, raw: Any) -> Limits | None:
        """The limits an engine wrote (None without a contract); anything else fails closed."""
        if raw is None:
            return None
        limits = _object(raw)
        values = [_whole(limits.get(name)) for name in
                  ("valid_from", "valid_until", "max_queries_per_day")]
        if not all(v is None or _is_number(v) for v in values):
            raise Unavailable(_MALFORMED)
        return cls(*values)


def _is_number(value: Any) -> bool:
    """Rego's is_number: JSON numbers only (a bool is not one)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def moment(limits: Limits | None, second: int, queries_today: int
           ) -> tuple[frozenset[str], int | float]:
    """The moment part of ``broker.flow``: its reasons and the quota left.

    This mirrors ``moment_denials`` and ``quota_left`` in policies/broker/flow.rego, which stay
    the definition: ``broker/flow/decision`` is decided with them, and the conformance tests
    check on every engine that the terms part with this function gives that whole decision,
    over every flow case and around every limit. Without a contract (``limits`` None) the
    moment adds nothing and no quota is left, as the policy says.
    """
    if limits is None:
        return frozenset(), 0
    reasons = set()
    t, n = second, queries_today
    if not (_is_number(t) and limits.valid_from is not None and t >= limits.valid_from):
        reasons.add("contract-not-yet-valid")
    if not (_is_number(t) and limits.valid_until is not None and t < limits.valid_until):
        reasons.add("contract-expired")
    quota: int | float = 0
    if limits.max_queries_per_day is not None and _is_number(n):
        quota = limits.max_queries_per_day - n
    if not quota > 0:
        reasons.add("daily-quota-exhausted")
    return frozenset(reasons), quota


@dataclass(frozen=True, slots=True)
class FlowTerms:
    """A flow decision checked and parsed up to what the moment adds: immutable, so one copy
    serves every query with the same terms key."""

    allow: bool
    reasons: frozenset[str]
    revision: str
    verdicts: Mapping[str, Verdict]
    field_reasons: Mapping[str, tuple[str, ...]]
    #: Field denials that hold whatever the moment (a denied field without a reason, a verdict
    #: this broker cannot execute), and those that hold only when the policy allows.
    field_denials: frozenset[str]
    use_mismatches: frozenset[str]
    k: int
    rules: Rules | None
    limits: Limits | None

    @classmethod
    def parse(cls, raw: Mapping[str, Any], document: Mapping[str, Any],
              revision: str) -> FlowTerms:
        """Check an engine's ``broker/flow/terms`` or ``broker/flow/decision`` answer."""
        reasons = _reasons(raw.get("reasons"))
        fields = _object(raw.get("fields"))
        field_reasons = _object(raw.get("field_reasons"))
        k = _whole(raw.get("k"))
        if not isinstance(k, int) or isinstance(k, bool):
            raise Unavailable(_MALFORMED)
        parsed = {str(name): Verdict.parse(v) for name, v in fields.items()}
        per_field = {str(name): _reasons(v) for name, v in field_reasons.items()}
        # Belt and braces against an engine that evaluates one rule wrongly: a decision that
        # allows while any field is denied, or with a verdict this broker cannot execute, or
        # with a k below 2, is a denial.
        field_denials = {r for rs in per_field.values() for r in rs}
        if any(v is Verdict.DENY and not per_field.get(f) for f, v in parsed.items()):
            field_denials.add("field-denied")
        if None in parsed.values():
            field_denials.add("unsupported-field-verdict")
        try:
            rules: Rules | None = _rules(raw.get("disclosure"), k)
        except Unavailable:
            rules = None  # refused below, only if the decision allows
        return cls(
            allow=raw.get("allow") is True,
            reasons=frozenset(reasons),
            revision=revision,
            # A verdict this broker cannot execute lets nothing of its field flow.
            verdicts=MappingProxyType({name: v if v is not None else Verdict.DENY
                                       for name, v in parsed.items()}),
            field_reasons=MappingProxyType(per_field),
            field_denials=frozenset(field_denials),
            use_mismatches=frozenset(_use_mismatches(document, parsed)),
            k=k,
            rules=rules,
            limits=Limits.parse(raw.get("limits")),
        )

    def at(self, moment_reasons: frozenset[str], quota_remaining: Any) -> FlowDecision:
        """The decision once the moment's reasons and quota are added."""
        quota = _whole(quota_remaining)
        if not isinstance(quota, int) or isinstance(quota, bool):
            raise Unavailable(_MALFORMED)
        policy_allows = self.allow and not moment_reasons
        reasons = self.reasons | moment_reasons
        field_denials = self.field_denials | self.use_mismatches if policy_allows \
            else self.field_denials
        allow = policy_allows and not reasons and not field_denials
        if allow and self.k < 2:
            allow, field_denials = False, frozenset({"k-below-floor"})
        if allow and self.rules is None:
            raise Unavailable("The policy returned malformed disclosure rules; nothing was "
                              "released.")
        return FlowDecision(
            allow=allow,
            reasons=tuple(sorted(reasons | field_denials)) if not allow else (),
            revision=self.revision,
            fields=dict(self.verdicts),
            field_reasons={name: list(rs) for name, rs in self.field_reasons.items()},
            k=self.k,
            quota_remaining=quota,
            rules=self.rules if allow else None,
        )
