"""The flow decision in two parts: the terms part cached by a cheap key, the moment part per
query. Caching must never change a decision: the key determines the document, the moment is
applied on every query, and nothing that failed is remembered."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from broker.domain.datasets import Dataset, DatasetSchema, FieldRole, FieldSpec, FieldType
from broker.domain.datasets import Sensitivity as S
from broker.domain.errors import Unavailable
from broker.domain.principals import Principal, Role
from broker.domain.queries import (
    AggregateSpec,
    Dimension,
    Filter,
    FilterOp,
    Measure,
    MeasureFn,
)
from broker.policy.cache import CachedPolicyEngine
from broker.policy.decisions import Limits, Policies, moment
from broker.policy.embedded import EmbeddedPolicyEngine
from broker.policy.inputs import FlowRequest
from contracts.model import Contract, ContractStatus, Dominance, FieldForm, Terms
from policies import POLICY_DIR

T0 = datetime(2026, 3, 1, tzinfo=UTC)
SCHEMA = DatasetSchema.of("uscc", [
    FieldSpec("uscc", FieldType.STRING, FieldRole.ENTITY, S.L2),
    FieldSpec("town", FieldType.STRING, FieldRole.DIMENSION),
    FieldSpec("kwh", FieldType.NUMBER, FieldRole.MEASURE, S.L2),
])
DATASET = Dataset(id="d1", owner_org="grid", name="energy", schema=SCHEMA, version=1, rows=10,
                  sha256="0" * 64, created_at=T0)
TERMS = Terms(dataset_id="d1", purposes=("energy-planning",),
              fields={"town": FieldForm.CLEAR, "kwh": FieldForm.AGGREGATE}, k_min=5,
              dominance=Dominance(), valid_from=T0, valid_until=T0 + timedelta(days=30),
              max_queries_per_day=3)
CONTRACT = Contract(id="c1", provider_org="grid", consumer_org="econ", terms=TERMS,
                    status=ContractStatus.ACTIVE, created_at=T0)
SPEC = AggregateSpec(contract_id="c1", purpose="energy-planning",
                     group_by=(Dimension("town"),), measures=(Measure(MeasureFn.SUM, "kwh"),))
ANALYST = Principal(iss="broker-dev", sub="analyst", org="econ",
                    roles=frozenset({Role.CONSUMER}))


def request(**changes: Any) -> FlowRequest:
    base = FlowRequest(ANALYST, registered=True, now=T0 + timedelta(days=1, seconds=0.5),
                       queries_today=0, contract=CONTRACT, dataset=DATASET, spec=SPEC)
    return dataclasses.replace(base, **changes)


class Counting:
    """A real engine that counts its evaluations, and can be made to fail or lie."""

    def __init__(self, engine: EmbeddedPolicyEngine) -> None:
        self.engine = engine
        self.calls: list[str] = []
        self.fail: Exception | None = None
        self.answer: Any = None

    @property
    def revision(self) -> str:
        return self.engine.revision

    def evaluate(self, entrypoint: str, input: Mapping[str, Any]) -> Any:
        self.calls.append(entrypoint)
        if self.fail is not None:
            raise self.fail
        if self.answer is not None:
            return self.answer
        return self.engine.evaluate(entrypoint, input)


@pytest.fixture(scope="module")
def regopy() -> Iterator[EmbeddedPolicyEngine]:
    engine = EmbeddedPolicyEngine(POLICY_DIR)
    yield engine
    engine.close()


@pytest.fixture
def counting(regopy: EmbeddedPolicyEngine) -> Counting:
    return Counting(regopy)


@pytest.fixture
def policies(counting: Counting) -> Policies:
    return Policies(CachedPolicyEngine(counting, 100))


def test_the_terms_document_is_a_function_of_the_key() -> None:
    same = request(now=T0 + timedelta(days=2), queries_today=2)
    assert same.key == request().key
    assert same.terms_document() == request().terms_document()
    full = request().document()
    assert {k: v for k, v in full.items() if k not in ("now", "usage")} == \
        request().terms_document()
    assert full["now"] == int((T0 + timedelta(days=1)).timestamp())
    assert full["usage"] == {"queries_today": 0}


@pytest.mark.parametrize("changed", [
    {"principal": dataclasses.replace(ANALYST, org="tax")},
    {"principal": dataclasses.replace(ANALYST, roles=frozenset({Role.PROVIDER}))},
    {"registered": False},
    {"contract": None},
    {"contract": dataclasses.replace(CONTRACT, status=ContractStatus.SUSPENDED)},
    {"contract": dataclasses.replace(CONTRACT, terms=dataclasses.replace(TERMS, k_min=9))},
    {"contract": dataclasses.replace(CONTRACT, terms=dataclasses.replace(
        TERMS, fields={"town": FieldForm.GENERALIZE, "kwh": FieldForm.AGGREGATE}))},
    {"contract": dataclasses.replace(CONTRACT, terms=dataclasses.replace(
        TERMS, max_queries_per_day=4))},
    {"now": T0 + timedelta(days=31)},  # past the window: the status the key holds expires
    {"dataset": None},
    {"dataset": dataclasses.replace(DATASET, schema=DatasetSchema.of("uscc", [
        *SCHEMA.fields[:2], dataclasses.replace(SCHEMA.fields[2], sensitivity=S.L4)]))},
    {"spec": dataclasses.replace(SPEC, purpose="tax-audit")},
    {"spec": dataclasses.replace(SPEC, group_by=(Dimension("town", level="raw"),
                                                 Dimension("kwh", bins=(1.0, 2.0))))},
    {"spec": dataclasses.replace(SPEC, filters=(Filter("town", FilterOp.EQ, "A"),))},
])
def test_whatever_the_terms_document_reads_changes_the_key(changed: dict[str, Any]) -> None:
    other = request(**changed)
    assert other.terms_document() != request().terms_document()
    assert other.key != request().key


def test_a_filter_value_is_not_in_the_key() -> None:
    a = request(spec=dataclasses.replace(SPEC, filters=(Filter("town", FilterOp.EQ, "A"),)))
    b = request(spec=dataclasses.replace(SPEC, filters=(Filter("town", FilterOp.EQ, "B"),)))
    assert a.key == b.key


def test_a_warm_query_asks_no_engine_and_counts_the_moment(policies: Policies,
                                                           counting: Counting) -> None:
    first = policies.flow_at(request())
    assert first.allow
    assert first.quota_remaining == 3
    assert counting.calls == ["broker/flow/terms"]
    for used, left in ((1, 2), (2, 1)):
        later = policies.flow_at(request(queries_today=used,
                                         now=T0 + timedelta(days=1, hours=used)))
        assert later.allow
        assert later.quota_remaining == left
    exhausted = policies.flow_at(request(queries_today=3))
    assert not exhausted.allow
    assert exhausted.reasons == ("daily-quota-exhausted",)
    assert exhausted.rules is None
    assert counting.calls == ["broker/flow/terms"]  # every one of them from the cache


@pytest.mark.parametrize("moment_of", [
    {"queries_today": 0}, {"queries_today": 3}, {"queries_today": 7},
    {"now": T0 - timedelta(seconds=1)}, {"now": T0}, {"now": T0 + timedelta(seconds=0.5)},
    {"now": T0 + timedelta(days=30) - timedelta(seconds=0.5)},
    {"now": T0 + timedelta(days=30)}, {"now": T0 + timedelta(days=40), "queries_today": 3},
    {"contract": dataclasses.replace(CONTRACT, status=ContractStatus.SUSPENDED),
     "now": T0 + timedelta(days=31)},
    {"contract": None}, {"registered": False, "queries_today": 5},
])
def test_the_split_decision_is_the_one_call_decision(
        policies: Policies, regopy: EmbeddedPolicyEngine, moment_of: dict[str, Any]) -> None:
    warm = request(**moment_of)
    policies.flow_at(dataclasses.replace(warm, now=warm.now + timedelta(seconds=0.2)))
    assert policies.flow_at(warm) == Policies(regopy).flow(warm.document())


def test_an_engine_failure_is_not_remembered(policies: Policies, counting: Counting) -> None:
    counting.fail = ConnectionError("down")
    with pytest.raises(Unavailable):
        policies.flow_at(request())
    counting.fail = None
    assert policies.flow_at(request()).allow
    assert counting.calls == ["broker/flow/terms"] * 2


@pytest.mark.parametrize("answer", [
    {"allow": True, "reasons": [], "fields": {}, "field_reasons": {}, "k": 5,
     "limits": None, "disclosure": {}, "revision": "0000000000000000"},  # other policies
    {"allow": True, "reasons": [], "fields": {}, "field_reasons": {}, "k": "5", "limits": None},
    {"allow": True, "reasons": [], "fields": {}, "field_reasons": {}, "k": 5,
     "limits": {"valid_from": "0"}},
    ["not", "an", "object"],
])
def test_a_malformed_or_foreign_answer_is_refused_and_not_remembered(
        policies: Policies, counting: Counting, answer: Any) -> None:
    if isinstance(answer, dict) and "revision" not in answer:
        answer = {**answer, "revision": counting.revision}
    counting.answer = answer
    for _ in range(2):
        with pytest.raises(Unavailable):
            policies.flow_at(request())
    assert counting.calls == ["broker/flow/terms"] * 2


def test_a_remembered_decision_cannot_be_changed_by_its_holder(policies: Policies) -> None:
    first = policies.flow_at(request())
    first.fields["town"] = "deny"  # type: ignore[assignment]
    first.field_reasons["town"] = ["made-up"]
    again = policies.flow_at(request())
    assert again.fields["town"] == "clear"
    assert "town" not in again.field_reasons


class Revised:
    """An engine whose policies can be replaced under the cache."""

    revision = "a"

    def evaluate(self, entrypoint: str, input: Mapping[str, Any]) -> Any:  # noqa: ARG002
        raise AssertionError("remember() computes; it does not evaluate")


def test_a_new_revision_misses_and_the_cache_stays_bounded() -> None:
    engine = Revised()
    cache = CachedPolicyEngine(engine, 2)
    assert cache.remember("k", lambda: 1) == 1
    assert cache.remember("k", lambda: 2) == 1
    engine.revision = "b"
    assert cache.remember("k", lambda: 3) == 3
    cache.remember("k2", lambda: 4)
    assert cache.remember("k", lambda: 5) == 3  # the most recently used stays
    cache.remember("k3", lambda: 6)
    assert cache.remember("k2", lambda: 7) == 7  # the least recently used went
    assert (cache.hits, cache.misses) == (2, 5)


def test_the_moment_without_limits_adds_nothing() -> None:
    assert moment(None, 0, 0) == (frozenset(), 0)
    assert moment(Limits(None, None, None), 5, 0) == (
        frozenset({"contract-not-yet-valid", "contract-expired", "daily-quota-exhausted"}), 0)
    assert moment(Limits(0, 10, 3), 10, 1) == (frozenset({"contract-expired"}), 2)
    assert moment(Limits(0, 10, 3), 9, 3) == (frozenset({"daily-quota-exhausted"}), 0)


@pytest.mark.parametrize("limits", ["missing", None])
def test_an_allowing_answer_without_limits_for_a_contract_is_refused(
        policies: Policies, counting: Counting, regopy: EmbeddedPolicyEngine,
        limits: Any) -> None:
    """Without limits the moment would add no reason: the quota and the window would never
    be checked. The policy always writes them when there is a contract, so their absence is
    a malformed answer."""
    real = regopy.evaluate("broker/flow/terms", request().document())
    assert real["allow"] is True
    answer = {k: v for k, v in real.items() if k != "limits"}
    if limits is None:
        answer["limits"] = None
    counting.answer = answer
    with pytest.raises(Unavailable):
        policies.flow_at(request(queries_today=99))
