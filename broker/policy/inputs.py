"""The input documents the Rego policies decide on, built from domain objects.

The policies see the structure of a request, never a row value or a filter value: a query as
its fields, uses and how coarse each use is; a dataset as its fields' types, roles and
sensitivity levels; a contract as its terms and status at the moment of the decision.

A flow decision has two parts (policies/broker/flow.rego). The terms part is decided on
:meth:`FlowRequest.terms_document`, which is built from :meth:`FlowRequest.key` and nothing
else: two requests with equal keys get the same document, so the same terms decision under
one policy revision, and the key can stand in for the document in the decision cache. The
moment part needs only the current second and the day's count (:meth:`FlowRequest.document`
adds them for the whole ``broker/flow/decision``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from broker.domain.datasets import Dataset
from broker.domain.levels import dimension_level, filter_level
from broker.domain.principals import Principal
from broker.domain.queries import AggregateSpec
from contracts.model import Contract, ContractStatus

#: The shapes a terms document is built from: flat tuples of strings, numbers and tuples,
#: cheap to hash and compare, in the order :func:`_terms_document` reads them. Enumerations
#: enter as their plain string values (``str()`` of a StrEnum: faster than ``.value``, and an
#: enum member's own hash is computed in Python).
PrincipalShape = tuple[str, str, str, tuple[str, ...]]
ContractShape = tuple[Any, ...]
DatasetShape = tuple[str, str, tuple[tuple[str, str, str, str, str | None], ...]]
QueryShape = tuple[str, tuple[tuple[str, str], ...], tuple[tuple[str, tuple[str, ...]], ...],
                   tuple[tuple[str, str, str], ...]]
FlowKey = tuple[PrincipalShape, bool, ContractShape | None, DatasetShape | None, QueryShape]


@dataclass(frozen=True, slots=True)
class FlowRequest:
    """What ``broker.flow`` decides a query on, at one moment."""

    principal: Principal
    registered: bool
    now: datetime
    queries_today: int
    contract: Contract | None
    dataset: Dataset | None
    spec: AggregateSpec

    @property
    def second(self) -> int:
        """The current second, rounded down; the contract's window is rounded inwards to
        match (contract_view), which never admits more. Whole seconds, so that a repeated
        decision within a second is the same."""
        return math.floor(self.now.timestamp())

    @property
    def key(self) -> FlowKey:
        """Everything the terms document is built from, and nothing of the moment but the
        contract's status at it (which changes once, when the contract expires)."""
        return (
            _principal_shape(self.principal),
            self.registered,
            _contract_shape(self.contract, self.contract.status_at(self.now))
            if self.contract else None,
            _dataset_shape(self.dataset) if self.dataset else None,
            _query_shape(self.spec, self.dataset),
        )

    def terms_document(self) -> dict[str, Any]:
        """The document ``broker/flow/terms`` decides on: a function of :attr:`key` alone."""
        return _terms_document(self.key)

    def document(self) -> dict[str, Any]:
        """The document ``broker/flow/decision`` decides on: the terms and the moment."""
        return {**self.terms_document(), "now": self.second,
                "usage": {"queries_today": self.queries_today}}


def flow_input(
    principal: Principal,
    *,
    registered: bool,
    now: datetime,
    queries_today: int,
    contract: Contract | None,
    dataset: Dataset | None,
    spec: AggregateSpec,
) -> dict[str, Any]:
    """The document ``broker.flow`` decides a query on."""
    return FlowRequest(principal, registered, now, queries_today, contract, dataset,
                       spec).document()


def _principal_shape(principal: Principal) -> PrincipalShape:
    return (principal.iss, principal.sub, principal.org,
            tuple(sorted(str(role) for role in principal.roles)))


def _contract_shape(contract: Contract, status: ContractStatus) -> ContractShape:
    terms = contract.terms
    dominance = terms.dominance
    return (
        contract.id, terms.dataset_id, contract.provider_org, contract.consumer_org,
        str(status), tuple(terms.purposes),
        tuple((name, str(form)) for name, form in terms.fields.items()),
        terms.k_min, (dominance.n, dominance.k, dominance.p),
        # Whole seconds, rounded inwards: the policy compares them with the current second
        # rounded down, and the window it sees is never wider than the agreed one.
        math.ceil(terms.valid_from.timestamp()), math.floor(terms.valid_until.timestamp()),
        terms.max_queries_per_day,
    )


def _dataset_shape(dataset: Dataset) -> DatasetShape:
    return (dataset.id, dataset.schema.entity_field,
            tuple((f.name, str(f.type), str(f.role), str(f.sensitivity), f.hierarchy)
                  for f in dataset.schema.fields))


def _query_shape(spec: AggregateSpec, dataset: Dataset | None) -> QueryShape:
    fields = {f.name: f for f in dataset.schema.fields} if dataset else {}
    return (
        spec.purpose,
        tuple((d.field, dimension_level(d, fields.get(d.field))) for d in spec.group_by),
        tuple((m.fn.value, m.fields) for m in spec.measures),
        tuple((f.field, f.op.value,
               filter_level(f.op.value, f.value, fields[f.field].type)
               if f.field in fields else "raw")
              for f in spec.filters),
    )


def _terms_document(key: FlowKey) -> dict[str, Any]:
    principal, registered, contract, dataset, query = key
    iss, sub, org, roles = principal
    return {
        "principal": {"iss": iss, "sub": sub, "org": org, "roles": list(roles),
                      "registered": registered},
        "contract": _contract_document(contract) if contract else None,
        "dataset": _dataset_document(dataset) if dataset else None,
        "query": _query_document(query),
    }


def _contract_document(shape: ContractShape) -> dict[str, Any]:
    (id_, dataset_id, provider_org, consumer_org, status, purposes, forms, k_min,
     (n, k, p), valid_from, valid_until, max_queries) = shape
    return {
        "id": id_, "dataset_id": dataset_id, "provider_org": provider_org,
        "consumer_org": consumer_org, "status": status, "purposes": list(purposes),
        "fields": dict(forms), "k_min": k_min, "dominance": {"n": n, "k": k, "p": p},
        "valid_from": valid_from, "valid_until": valid_until,
        "max_queries_per_day": max_queries,
    }


def _dataset_document(shape: DatasetShape) -> dict[str, Any]:
    id_, entity_field, fields = shape
    return {
        "id": id_,
        "entity_field": entity_field,
        "fields": {name: {"type": type_, "role": role, "sensitivity": sensitivity,
                          "hierarchy": hierarchy}
                   for name, type_, role, sensitivity, hierarchy in fields},
    }


def _query_document(shape: QueryShape) -> dict[str, Any]:
    purpose, group_by, measures, filters = shape
    return {
        "purpose": purpose,
        "group_by": [{"field": f, "level": level} for f, level in group_by],
        "measures": [{"fn": fn, "fields": list(fields)} for fn, fields in measures],
        "filters": [{"field": f, "op": op, "level": level} for f, op, level in filters],
    }


def query_view(spec: AggregateSpec, dataset: Dataset | None) -> dict[str, Any]:
    """The query as the policies see it: its structure and how coarse each use is, never a
    filter value."""
    return _query_document(_query_shape(spec, dataset))


def dataset_view(dataset: Dataset | None) -> dict[str, Any] | None:
    """The dataset as the policies see it: the entity field and each field's declared type,
    role, sensitivity level and hierarchy."""
    return _dataset_document(_dataset_shape(dataset)) if dataset else None


def contract_view(contract: Contract, now: datetime) -> dict[str, Any]:
    """The contract as the Rego policies see it: its terms and status at ``now``, times as
    epoch seconds."""
    return _contract_document(_contract_shape(contract, contract.status_at(now)))
