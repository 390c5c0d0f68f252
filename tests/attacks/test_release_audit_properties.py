"""Property: whatever a department asks, in whatever order, nothing it is given pins a firm.

Random seeded counties (one firm alone in its town, one alone in its industry within a town)
and random sequences of ordinary queries (towns, industries, months and quarters, with town
filters and month ranges, sums and counts, with and without margins), asked over HTTP; the
independent oracle then looks for any linear combination of everything published that
isolates one firm's rows, and bounds every sum withheld as too small or dominated by linear
programming: none may fall inside its protection interval. Each example uses a dataset of its
own.
"""

from __future__ import annotations

import uuid
from dataclasses import replace
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.attacks.county import (
    CLEAR,
    FIELDS,
    INDUSTRIES,
    LONE_TOWN,
    MONTHS,
    TOWNS,
    Attack,
    County,
    county,
)
from tests.conftest import World

DIMENSIONS = ["town", "industry", {"field": "month", "level": "quarter"},
              {"field": "month", "level": "month"}]
MEASURES = [[{"fn": "sum", "field": "kwh"}], [{"fn": "count"}],
            [{"fn": "count"}, {"fn": "sum", "field": "output"}]]


@st.composite
def queries(draw: st.DrawFn) -> dict[str, Any]:
    """One ordinary query of the county."""
    group_by = draw(st.lists(st.sampled_from(range(len(DIMENSIONS))), max_size=2,
                             unique_by=lambda i: 2 if i >= 2 else i))
    body: dict[str, Any] = {"group_by": [DIMENSIONS[i] for i in group_by],
                            "measures": draw(st.sampled_from(MEASURES)),
                            "totals": draw(st.booleans())}
    filters = []
    towns = draw(st.lists(st.sampled_from([*TOWNS, LONE_TOWN]), max_size=4, unique=True))
    if towns:
        filters.append({"field": "town", "op": "in", "value": towns})
    industries = draw(st.lists(st.sampled_from(INDUSTRIES), max_size=3, unique=True))
    if industries:
        filters.append({"field": "industry", "op": "in", "value": industries})
    if draw(st.booleans()):
        first = draw(st.integers(0, 11))
        last = draw(st.integers(first, 11))
        filters.append({"field": "month", "op": "range",
                        "value": [MONTHS[first], MONTHS[last]]})
    body["filters"] = filters
    return body


def _ask_everything(world: World, data: County, asked: list[dict[str, Any]]) -> None:
    """Ask every query of ``asked`` on a dataset of its own; nothing published may pin a
    firm or narrow a withheld sum inside its protection interval."""
    did = world.add_dataset(data.frame, FIELDS, name=f"county-{uuid.uuid4().hex[:12]}")
    cid = world.contract_for(did, fields=dict(CLEAR))
    attack = Attack(world, data.rows())
    for body in asked:
        attack.ask(contract_id=cid, **body)
    attack.assert_no_leak()
    attack.assert_intervals_kept()


@settings(max_examples=25, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                   HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), asked=st.lists(queries(), min_size=2, max_size=6))
def test_no_sequence_of_ordinary_queries_isolates_a_firm(
        world: World, seed: int, asked: list[dict[str, Any]]) -> None:
    data = county(seed)
    _ask_everything(world, data, asked)


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                   HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), asked=st.lists(queries(), min_size=2, max_size=6),
       skew=st.lists(st.tuples(st.integers(0, 39), st.sampled_from([1, 10, 40])),
                     min_size=1, max_size=4),
       tiny=st.lists(st.integers(0, 39), max_size=8))
def test_no_sequence_of_queries_over_skewed_firms_narrows_a_withheld_sum(
        world: World, seed: int, asked: list[dict[str, Any]], skew: list[tuple[int, int]],
        tiny: list[int]) -> None:
    """Some firms tens of times bigger than the rest and some tiny ones: the shapes where a
    later table's published cells can bound a withheld total closely without pinning it."""
    data = county(seed)
    frame = data.frame.copy()
    firms = list(dict.fromkeys(frame["uscc"]))
    for i, factor in skew:
        at = frame["uscc"] == firms[i % len(firms)]
        frame.loc[at, ["kwh", "output"]] *= factor
    for i in tiny:
        at = frame["uscc"] == firms[i % len(firms)]
        frame.loc[at, ["kwh", "output"]] //= 20
    data = replace(data, frame=frame)
    _ask_everything(world, data, asked)
