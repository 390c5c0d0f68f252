"""The input documents the Rego policies decide on, built from domain objects.

The policies see the structure of a request, never a row value or a filter value: a query as
its fields, uses and how coarse each use is; a dataset as its fields' types, roles and
sensitivity levels; a contract as its terms and status at the moment of the decision.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

from broker.domain.datasets import Dataset
from broker.domain.levels import dimension_level, filter_level
from broker.domain.principals import Principal
from broker.domain.queries import AggregateSpec
from contracts.model import Contract


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
    return {
        "principal": {**principal.as_actor(), "registered": registered},
        # Whole seconds, so that a repeated decision is a cache hit; the contract's window
        # is rounded inwards to match (contract_view), which never admits more.
        "now": math.floor(now.timestamp()),
        "usage": {"queries_today": queries_today},
        "contract": contract_view(contract, now) if contract else None,
        "dataset": dataset_view(dataset),
        "query": query_view(spec, dataset),
    }


def query_view(spec: AggregateSpec, dataset: Dataset | None) -> dict[str, Any]:
    """The query as the policies see it: its structure and how coarse each use is, never a
    filter value."""
    fields = {f.name: f for f in dataset.schema.fields} if dataset else {}
    types = {name: f.type for name, f in fields.items()}
    return {
        "purpose": spec.purpose,
        "group_by": [{"field": d.field, "level": dimension_level(d, fields.get(d.field))}
                     for d in spec.group_by],
        "measures": [{"fn": m.fn.value, "fields": list(m.fields)} for m in spec.measures],
        "filters": [
            {"field": f.field, "op": f.op.value,
             "level": filter_level(f.op.value, f.value, types[f.field])
             if f.field in types else "raw"}
            for f in spec.filters
        ],
    }


def dataset_view(dataset: Dataset | None) -> dict[str, Any] | None:
    """The dataset as the policies see it: the entity field and each field's declared type,
    role, sensitivity level and hierarchy."""
    if dataset is None:
        return None
    return {
        "id": dataset.id,
        "entity_field": dataset.schema.entity_field,
        "fields": {
            f.name: {"type": f.type.value, "role": f.role.value,
                     "sensitivity": f.sensitivity.value, "hierarchy": f.hierarchy}
            for f in dataset.schema.fields
        },
    }


def contract_view(contract: Contract, now: datetime) -> dict[str, Any]:
    """The contract as the Rego policies see it: its terms and status at ``now``, times as
    epoch seconds."""
    terms = contract.terms.as_record()
    return {
        "id": contract.id,
        "dataset_id": terms["dataset_id"],
        "provider_org": contract.provider_org,
        "consumer_org": contract.consumer_org,
        "status": contract.status_at(now).value,
        "purposes": terms["purposes"],
        "fields": terms["fields"],
        "k_min": terms["k_min"],
        "dominance": terms["dominance"],
        # Whole seconds, rounded inwards: the policy compares them with the current second
        # rounded down, and the window it sees is never wider than the agreed one.
        "valid_from": math.ceil(contract.terms.valid_from.timestamp()),
        "valid_until": math.floor(contract.terms.valid_until.timestamp()),
        "max_queries_per_day": terms["max_queries_per_day"],
    }
