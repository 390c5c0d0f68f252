"""Release-audit attacks spread over consumers, contracts and dataset versions (patterns 21-29
of test_release_audit_attacks' list; same conventions).

The ledger of releases is kept per dataset for all consumers, so colluding departments (21-23)
and one department's several contracts (24-25) meet the same faults as one consumer does.
26-27: a field pseudonymized under one contract and released in clear under another on the
same dataset; the pseudonyms are matched back to the clear keys by their per-group sums (the
safe outcomes there are an offer refused, or no pseudonym matched to exactly one key).
28-29: a new dataset version as one side of a differencing pair.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.attacks.county import (
    CLEAR,
    FIELDS,
    GENERAL,
    LONE_TOWN,
    MONTHS,
    RARE_TOWN,
    SUM,
    TOWNS,
    Attack,
    County,
    combine,
    county,
    figure,
    new_version,
    offer,
    total_of,
    versioned,
)
from tests.attacks.oracle import exact
from tests.conftest import World

IN_RARE_TOWN = {"field": "town", "op": "eq", "value": RARE_TOWN}
NOT_RARE = {"field": "industry", "op": "in", "value": ["PV", "AUTO", "HOME"]}
YEAR = [{"field": "month", "level": "year"}]
QUARTERS = [{"field": "month", "level": "quarter"}]


def _two_departments(world: World, seed: int, econ: dict[str, str],
                     env: dict[str, str]) -> tuple[County, str, str]:
    """The county of ``seed``, with a contract on it for each department."""
    data = county(seed)
    did = world.add_dataset(data.frame, FIELDS, name=f"county-{seed}")
    return data, world.contract_for(did, fields=econ), world.contract_for(
        did, consumer="env", fields=env)


# ------------------------------------------------------------ two colluding departments


# Before the release audit this leaked: econ: Xucun 2024 -> 59,512 kWh; env: Xucun without TEX by
# quarter -> 11,861 + 11,970 + 11,893 + 11,968; all published: 11,820 kWh is F081001's year
# (Xucun's only TEX firm)
def test_two_departments_asking_the_year_and_the_quarters_do_not_isolate_a_firm(
        world: World) -> None:
    """econ: RARE_TOWN's year; env: RARE_TOWN without TEX by quarter. Pooled: the TEX firm."""
    data, mine, theirs = _two_departments(world, 81, GENERAL, GENERAL)
    atk = Attack(world, data.rows())
    year = atk.ask(contract_id=mine, measures=SUM, filters=[IN_RARE_TOWN], group_by=YEAR)
    parts = atk.ask(world.env, contract_id=theirs, measures=SUM,
                    filters=[IN_RARE_TOWN, NOT_RARE], group_by=QUARTERS)
    atk.assert_no_leak()
    truth = exact(data.total("kwh", lambda f: f.uscc == data.rare))
    assert combine((1, figure(year, month="2024")), (-1, total_of(parts))) != truth


# Before the release audit this leaked: econ: towns [Xiashi, Yuanhua] -> 92,914 kWh; env: [Xiashi,
# Xucun] -> 178,495 and [Xucun] -> 96,154; all published: 10,573 kWh is F082000's year (alone in
# Yuanhua)
def test_two_departments_splitting_a_tracker_do_not_isolate_a_firm(world: World) -> None:
    """econ: A + L; env: A + B and B. (A + L) - (A + B) + B = L."""
    data, mine, theirs = _two_departments(world, 82, CLEAR, CLEAR)
    atk = Attack(world, data.rows())
    a, b = TOWNS[0], TOWNS[1]
    q = [figure(atk.ask(contract_id=mine, measures=SUM,
                        filters=[{"field": "town", "op": "in", "value": [a, LONE_TOWN]}]))]
    for towns in ([a, b], [b]):
        q.append(figure(atk.ask(world.env, contract_id=theirs, measures=SUM,
                                filters=[{"field": "town", "op": "in", "value": towns}])))
    atk.assert_no_leak()
    truth = exact(data.total("kwh", lambda f: f.uscc == data.lonely))
    assert combine((1, q[0]), (-1, q[1]), (1, q[2])) != truth


def test_a_pair_one_firm_apart_asked_by_two_departments_is_not_both_published(
        world: World) -> None:
    """Regression guard: econ's RARE_TOWN year and env's RARE_TOWN year without TEX."""
    data, mine, theirs = _two_departments(world, 83, GENERAL, GENERAL)
    atk = Attack(world, data.rows())
    year = atk.ask(contract_id=mine, measures=SUM, filters=[IN_RARE_TOWN], group_by=YEAR)
    rest = atk.ask(world.env, contract_id=theirs, measures=SUM,
                   filters=[IN_RARE_TOWN, NOT_RARE], group_by=YEAR)
    atk.assert_no_leak()
    truth = exact(data.total("kwh", lambda f: f.uscc == data.rare))
    assert combine((1, figure(year, month="2024")), (-1, figure(rest, month="2024"))) != truth


# ---------------------------------------------------------- two contracts of one department

EVERY_MONTH = {"field": "month", "op": "in", "value": list(MONTHS)}
WHOLE_YEAR = {"field": "month", "op": "range", "value": ["2024-01-01", "2024-12-31"]}


@pytest.mark.parametrize("spelling", [
    pytest.param("in-every-month"),
    "range-whole-year",
])
def test_one_department_with_two_contracts_does_not_isolate_a_firm(
        world: World, spelling: str) -> None:
    """Contract 1 (dates generalised): RARE_TOWN's year. Contract 2 (dates in clear): the
    same town without TEX over the same twelve months, filtered by a list or a range."""
    data = county(84)
    did = world.add_dataset(data.frame, FIELDS, name="county-84")
    coarse = world.contract_for(did, fields=dict(GENERAL))
    fine = world.contract_for(did, fields=dict(CLEAR))
    atk = Attack(world, data.rows())
    year = atk.ask(contract_id=coarse, measures=SUM, filters=[IN_RARE_TOWN], group_by=YEAR)
    months = EVERY_MONTH if spelling == "in-every-month" else WHOLE_YEAR
    rest = atk.ask(contract_id=fine, measures=SUM, filters=[IN_RARE_TOWN, NOT_RARE, months])
    atk.assert_no_leak()
    truth = exact(data.total("kwh", lambda f: f.uscc == data.rare))
    assert combine((1, figure(year, month="2024")), (-1, figure(rest))) != truth


# ------------------------------------------------------- pseudonyms under another contract


@pytest.mark.parametrize("consumer", ["econ", "env"])
def test_pseudonyms_under_one_contract_are_not_linked_to_clear_keys_under_another(
        world: World, consumer: str) -> None:
    """Towns pseudonymized for econ, in clear for ``consumer`` on the same dataset: each
    pseudonym's sum equals one town's sum. Safe: an offer refused, or no pseudonym matched to
    exactly one town (cells withheld or refused)."""
    data = county(85)
    did = world.add_dataset(data.frame, FIELDS, name="county-85")
    hidden = offer(world, did, "econ", {**CLEAR, "town": "pseudonymize"})
    clear = offer(world, did, consumer, CLEAR)
    if hidden is None or clear is None:
        return  # the broker refused one of the offers: a safe outcome
    atk = Attack(world, data.rows())
    masked = atk.ask(contract_id=hidden, measures=SUM, group_by=["town"],
                     opaque=["town"]) or {}
    token = world.econ if consumer == "econ" else world.env
    named = atk.ask(token, contract_id=clear, measures=SUM, group_by=["town"]) or {}
    atk.assert_no_leak()
    sums = {dict(k)["town"]: v["sum_kwh"] for k, v in named.items() if k and v is not None}
    linked = {}
    for key, values in masked.items():
        if not key or values is None:
            continue
        towns = [t for t, s in sums.items() if s == values["sum_kwh"]]
        if len(towns) == 1:
            linked[dict(key)["town"]] = towns[0]
    truth = data.frame.groupby("town")["kwh"].sum().to_dict()
    assert not linked, f"pseudonyms linked back: {linked}; true sums {truth}"


# ------------------------------------------------------------------------ dataset versions


# Before the release audit this leaked: county year 2024 on version 1 -> 355,436 kWh, on version 2
# -> 356,462, both published (same firms, same period): 1,026 kWh is F086001's late December row
def test_a_late_row_in_a_new_version_is_not_the_difference_of_two_totals(world: World) -> None:
    """Version 1 lacks one firm's December row; version 2 adds it. The county's year before
    and after is the same cell over the same firms, so the difference is that row."""
    data = county(86)
    late = data.rare
    v2 = data.frame
    v1 = v2[~((v2.uscc == late) & (v2.month == MONTHS[-1]))].reset_index(drop=True)
    did = world.add_dataset(v1, FIELDS, name="county-late")
    cid = world.contract_for(did, fields=dict(GENERAL))
    atk = Attack(world, versioned(v1, v2))
    body: dict[str, Any] = {"contract_id": cid, "measures": SUM, "group_by": YEAR}
    before = atk.ask(version=1, **body)
    assert new_version(world, did, v2) == 2
    after = atk.ask(version=2, **body)
    atk.assert_no_leak()
    truth = exact(data.total("kwh", lambda f: (f.uscc == late) & (f.month == MONTHS[-1])))
    assert combine((1, figure(after, month="2024")),
                   (-1, figure(before, month="2024"))) != truth


def test_a_firm_moved_to_another_town_in_a_new_version_is_not_isolated(world: World) -> None:
    """Version 2 corrects one firm's town from A to B. A's year before and after: one firm
    apart. A pinned contract keeps answering on version 1 after version 2 exists."""
    data = county(87)
    a, b = TOWNS[2], TOWNS[3]
    moved = str(data.frame[data.frame.town == a].uscc.iloc[0])
    v1 = data.frame
    v2 = v1.assign(town=v1.town.where(v1.uscc != moved, b))
    did = world.add_dataset(v1, FIELDS, name="county-moved")
    latest = world.contract_for(did, fields=dict(GENERAL))
    pinned = world.contract_for(did, consumer="env", fields=dict(GENERAL), dataset_version=1)
    atk = Attack(world, versioned(v1, v2))
    town = {"field": "town", "op": "eq", "value": a}
    before = atk.ask(contract_id=latest, version=1, measures=SUM, filters=[town],
                     group_by=YEAR)
    assert new_version(world, did, v2) == 2
    after = atk.ask(contract_id=latest, version=2, measures=SUM, filters=[town],
                    group_by=YEAR)
    atk.ask(world.env, contract_id=pinned, version=1, measures=SUM, group_by=YEAR,
            filters=[{"field": "town", "op": "eq", "value": b}])
    atk.ask(contract_id=latest, version=2, measures=SUM, group_by=YEAR,
            filters=[{"field": "town", "op": "eq", "value": b}])
    atk.assert_no_leak()
    truth = exact(data.total("kwh", lambda f: f.uscc == moved))
    assert combine((1, figure(before, month="2024")),
                   (-1, figure(after, month="2024"))) != truth
