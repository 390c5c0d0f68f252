"""Hypothesis strategies for flow-policy inputs: mostly well-formed, sometimes not at all."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

FIELDS = ["uscc", "town", "industry", "month", "name", "kwh", "tax", "employees", "ghost"]
ROLES = ["entity", "dimension", "measure", "quasi_identifier", "identifier", "sensitive", "odd"]
TYPES = ["string", "integer", "number", "date", "boolean"]
LEVELS = ["L1", "L2", "L3", "L4", "L9"]
FORMS = ["aggregate", "clear", "generalize", "pseudonymize", "plain"]
GRAINS = ["raw", "day", "month", "quarter", "year", "class", "group", "division", "section",
          "bins", "aggregate", "weird"]
FNS = ["count", "sum", "mean", "ratio", "max"]
PURPOSES = ["energy-planning", "tax-analysis", "marketing"]

#: A value of the wrong type now and then, where the policy expects a number or a string.
odd = st.one_of(st.none(), st.booleans(), st.text(max_size=3), st.lists(st.integers(), max_size=2))


def _maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(strategy, strategy, strategy, odd)


field_spec = st.fixed_dictionaries({
    "type": st.sampled_from(TYPES), "role": st.sampled_from(ROLES),
    "hierarchy": st.sampled_from([None, "gbt4754", "other"]),
}, optional={"sensitivity": _maybe(st.sampled_from(LEVELS))})

contract = st.fixed_dictionaries({
    "id": st.just("c1"),
    "status": st.sampled_from(["active", "active", "offered", "revoked", "expired"]),
    "consumer_org": st.sampled_from(["econ", "econ", "tax"]),
    "valid_from": _maybe(st.integers(900, 1100)),
    "valid_until": _maybe(st.integers(1400, 2100)),
    "max_queries_per_day": _maybe(st.integers(0, 5)),
    "purposes": st.lists(st.sampled_from(PURPOSES), max_size=2, unique=True),
    "k_min": _maybe(st.one_of(st.integers(0, 15), st.sampled_from([2.5, 7.0, 1e3]))),
    "dominance": st.fixed_dictionaries({"n": _maybe(st.integers(0, 4)),
                                        "k": _maybe(st.integers(50, 99)),
                                        "p": _maybe(st.integers(0, 20))}),
    "fields": st.dictionaries(st.sampled_from(FIELDS), st.sampled_from(FORMS), max_size=8),
})

#: Entries of a query may lack a key or carry one of the wrong type.
dimension = st.fixed_dictionaries({"field": st.sampled_from(FIELDS)},
                                  optional={"level": _maybe(st.sampled_from(GRAINS))})
measure = st.fixed_dictionaries({}, optional={
    "fn": _maybe(st.sampled_from(FNS)),
    "fields": st.one_of(st.lists(st.sampled_from(FIELDS), max_size=2), st.sampled_from(FIELDS)),
})
filt = st.fixed_dictionaries({"field": st.sampled_from(FIELDS),
                              "op": st.sampled_from(["eq", "in", "range"])},
                             optional={"level": _maybe(st.sampled_from(GRAINS))})

query = st.fixed_dictionaries({
    "purpose": st.sampled_from(PURPOSES),
    "group_by": st.lists(dimension, max_size=5),
    "measures": st.lists(measure, max_size=3),
    "filters": st.lists(filt, max_size=3),
})


@st.composite
def flow_inputs(draw: st.DrawFn) -> dict[str, Any]:
    """One input for broker.flow; any top-level part may be missing."""
    document: dict[str, Any] = {
        "principal": {"org": draw(st.sampled_from(["econ", "tax"])),
                      "roles": draw(st.lists(st.sampled_from(["consumer", "provider"]),
                                             max_size=2)),
                      "registered": draw(st.sampled_from([True, True, False, "yes"]))},
        "now": draw(_maybe(st.integers(900, 2100))),
        "usage": {"queries_today": draw(_maybe(st.integers(0, 6)))},
        "contract": draw(st.one_of(st.none(), contract, contract, contract)),
        "dataset": {"entity_field": "uscc",
                    "fields": draw(st.dictionaries(st.sampled_from(FIELDS), field_spec,
                                                   max_size=8))},
        "query": draw(query),
    }
    for key in draw(st.lists(st.sampled_from(sorted(document)), max_size=2, unique=True)):
        del document[key]
    return document
