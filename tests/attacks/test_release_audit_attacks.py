"""Attacks on the release audit: no firm's figure may follow from several answers together.

The requirement: an answer must be safe in combination with everything already released from
the same data, to every consumer; a department, or two colluding, must not derive any
enterprise's figure from several answers. Each attack builds its own seeded county
(tests/attacks/county.py: 20-60 firms, monthly rows, five towns, four industries, one firm
alone in a town, one alone in its industry within a town, one alone between two declared bin
edges), asks its queries over HTTP, keeps every published cell of every query and consumer,
and asks the exact oracle (tests/attacks/oracle.py) whether any combination of them is a
linear form of one firm's rows. Where the attack is a specific arithmetic, the test also
checks that this arithmetic does not give the true figure.

Safe outcomes, all accepted: a cell withheld (any reason, "linked" included), a query refused
whole (403 ``disclosure-refused``), an offer refused (4xx at POST /v1/contracts). Anything
else that stops a query (a 422, another 403) fails the test: it would make the attack vacuous.
Every attack must hold. Those marked "leaked" below recovered a firm's exact figure before
the release audit (broker/disclosure/linked.py) was wired in; the comments above their tests
keep the numbers. The others held before too and guard against regressions.

Attack patterns and the fault each targets (F1: the differencing guard compares how a query
is written, not which rows it covers; F2: date levels are never linked; F3: only pairs of
releases are compared; F4: complementary suppression protects one table at a time):

This file
  1. month filter ``eq`` then ``in`` over S and S less a one-firm town (F1)            leaked
  2. ``range`` then the same months as an ``in`` list (F1)                              leaked
  3. ``in`` then ``in`` padded with a date that holds no rows (F1)                      leaked
  4. ``eq`` then a ``range`` around it: same rows, same label (F1)                      holds
  5. declared bins moved across one firm, [75] then [80], same period (F1)             holds
  6. the same bins, the month filter spelled ``eq`` then ``in`` (F1)                    leaked
  7. the same bins, one query by year, the other by quarter (F1 + F2)                   leaked
  8. a town's year less its quarters without one industry (F2)                          leaked
  9. a town's year less its months without one industry (F2)                            leaked
 10. a town's year less Q1-Q3 and October-December without one industry (F2)           leaked
 11. a town's year and its year without one industry, same level (F2)                   holds
test_release_audit_trackers.py
 12. three-query tracker (A+L) - (A+B) + B (F3)                                         leaked
 13. Denning's general tracker q(L|T) + q(L|~T) - q(all) (F3)                           leaked
 14. four-query tracker (A+B+L) - (A+C) - (B+D) + (C+D) (F3)                            leaked
 15. three-query tracker on counts of distinct enterprises (F3, counts)                 leaked
 16. counts of A+L and A, one firm apart (F3, counts)                                   holds
 17. a later table over a withheld complement and a published town pins it (F4)        leaked
 18. three overlapping ordinary tables (town; town without an industry; town within
     it) pin the withheld cells; LP interval of the firm collapses to a point (F4)     leaked
 19. monthly means x counts less quarterly means x counts x 3 (F2 through means)       leaked
 20. ratio(tax, output) x sum(output) = tax, less quarterly tax (F2 through ratios)    leaked
test_release_audit_parties.py
 21. two colluding departments: one asks the year, the other the quarters (F2)         leaked
 22. two colluding departments split a three-query tracker (F3)                         leaked
 23. two departments ask a pair one firm apart, same spelling (F1)                     holds
 24. one department, two contracts: year under one, an ``in`` list of all months
     without one industry under the other (F1)                                          leaked
 25. the same with a ``range`` over the whole year (F1)                                 holds
 26. towns pseudonymized for one contract, in clear for another of the same
     department: pseudonyms linked back by their sums                                   leaked
 27. the same across two departments                                                   leaked
 28. a new dataset version adds one firm's late December row: the year before and
     after are the same cell, their difference the row (F1: same population)          leaked
 29. a new version moves one firm to another town; a pinned contract still answers on
     version 1 (F1 across versions)                                                     holds
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.attacks.county import (
    GENERAL,
    LONE_TOWN,
    RARE_TOWN,
    SUM,
    Attack,
    combine,
    figure,
    setup,
    total_of,
)
from tests.attacks.oracle import exact
from tests.conftest import World

# ------------------------------------------------ F1: spellings of the same rows

DAY = "2024-03-01"
QUARTER = ["2024-01-01", "2024-02-01", "2024-03-01"]

SPELLINGS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "eq-then-in": ({"field": "month", "op": "eq", "value": DAY},
                   {"field": "month", "op": "in", "value": [DAY]}),
    "range-then-in": ({"field": "month", "op": "range", "value": ["2024-01-01", "2024-03-31"]},
                      {"field": "month", "op": "in", "value": QUARTER}),
    "in-then-padded-in": ({"field": "month", "op": "in", "value": [DAY]},
                          {"field": "month", "op": "in", "value": [DAY, "2024-03-15"]}),
    "eq-then-range": ({"field": "month", "op": "eq", "value": DAY},
                      {"field": "month", "op": "range", "value": ["2024-02-15", "2024-03-20"]}),
}


@pytest.mark.parametrize("spelling", [
    pytest.param("eq-then-in"),
    pytest.param("range-then-in"),
    pytest.param("in-then-padded-in"),
    "eq-then-range",
])
def test_a_date_filter_spelled_another_way_does_not_isolate_the_only_firm_of_a_town(
        world: World, spelling: str) -> None:
    """S (every town) and S less LONE_TOWN (one firm), the date filter written two ways."""
    data, _, cid = setup(world, seed=11)
    first, second = SPELLINGS[spelling]
    atk = Attack(world, data.rows())
    whole = figure(atk.ask(contract_id=cid, measures=SUM, filters=[first]))
    rest = figure(atk.ask(contract_id=cid, measures=SUM, filters=[
        second, {"field": "town", "op": "in", "value": data.towns_but(LONE_TOWN)}]))
    atk.assert_no_leak()
    months = QUARTER if spelling == "range-then-in" else [DAY]
    truth = data.total("kwh", lambda f: (f.uscc == data.lonely) & f.month.isin(months))
    assert combine((1, whole), (-1, rest)) != exact(truth)


# ------------------------------------------------------ F1: bin edges moved by one firm

LOW, HIGH = [{"field": "emp", "bins": [75.0]}], [{"field": "emp", "bins": [80.0]}]


def test_bin_edges_moved_across_one_firm_do_not_isolate_it(world: World) -> None:
    """'<75' of edges [75] and '<80' of edges [80]: the cells are one firm apart."""
    data, _, cid = setup(world, seed=12)
    atk = Attack(world, data.rows())
    low = atk.ask(contract_id=cid, measures=SUM, group_by=LOW, totals=True)
    high = atk.ask(contract_id=cid, measures=SUM, group_by=HIGH, totals=True)
    atk.assert_no_leak()
    truth = data.total("kwh", lambda f: f.uscc == data.binned)
    assert combine((1, figure(high, emp="<80")), (-1, figure(low, emp="<75"))) != exact(truth)


# Before the release audit this leaked: emp bins [75] at month eq 2024-03-01 -> '<75' 7,645 kWh;
# bins [80] at month in [2024-03-01] -> '<80' 8,424; both published: 779 kWh is F013002's March
# (emp 77)
def test_bin_edges_moved_across_one_firm_under_another_month_spelling_do_not_isolate_it(
        world: World) -> None:
    """The same bins, one query filtered to March with eq, the other with in."""
    data, _, cid = setup(world, seed=13)
    atk = Attack(world, data.rows())
    low = atk.ask(contract_id=cid, measures=SUM, group_by=LOW,
                  filters=[{"field": "month", "op": "eq", "value": DAY}])
    high = atk.ask(contract_id=cid, measures=SUM, group_by=HIGH,
                   filters=[{"field": "month", "op": "in", "value": [DAY]}])
    atk.assert_no_leak()
    truth = data.total("kwh", lambda f: (f.uscc == data.binned) & (f.month == DAY))
    assert combine((1, figure(high, emp="<80")), (-1, figure(low, emp="<75"))) != exact(truth)


# Before the release audit this leaked: emp bins [75] by year -> '<75' 2024 71,768 kWh; bins [80]
# by quarter -> '<80' 20,226 + 20,420 + 20,340 + 20,330; all published: 9,548 kWh is F014004's
# year (emp 77)
def test_bin_edges_moved_across_one_firm_at_another_date_level_do_not_isolate_it(
        world: World) -> None:
    """'<75' by year, then '<80' by quarter: the four quarters less the year are one firm."""
    data, _, cid = setup(world, seed=14, forms=GENERAL)
    atk = Attack(world, data.rows())
    year = atk.ask(contract_id=cid, measures=SUM,
                   group_by=[*LOW, {"field": "month", "level": "year"}])
    quarters = atk.ask(contract_id=cid, measures=SUM,
                       group_by=[*HIGH, {"field": "month", "level": "quarter"}])
    atk.assert_no_leak()
    truth = data.total("kwh", lambda f: f.uscc == data.binned)
    parts = [(1, figure(quarters, emp="<80", month=f"2024-Q{q}")) for q in range(1, 5)]
    assert combine(*parts, (-1, figure(year, emp="<75", month="2024"))) != exact(truth)


# ------------------------------------------------------- F2: levels are never linked

NOT_RARE = {"field": "industry", "op": "in", "value": ["PV", "AUTO", "HOME"]}
IN_RARE_TOWN = {"field": "town", "op": "eq", "value": RARE_TOWN}


@pytest.mark.parametrize("level", [
    pytest.param("quarter"),
    pytest.param("month"),
])
def test_a_towns_year_less_its_periods_without_one_industry_does_not_isolate_that_firm(
        world: World, level: str) -> None:
    """Year total of RARE_TOWN, less its quarterly (or monthly) totals without TEX."""
    data, _, cid = setup(world, seed=21, forms=GENERAL)
    atk = Attack(world, data.rows())
    year = atk.ask(contract_id=cid, measures=SUM, filters=[IN_RARE_TOWN],
                   group_by=[{"field": "month", "level": "year"}])
    parts = atk.ask(contract_id=cid, measures=SUM, filters=[IN_RARE_TOWN, NOT_RARE],
                    group_by=[{"field": "month", "level": level}])
    atk.assert_no_leak()
    truth = data.total("kwh", lambda f: f.uscc == data.rare)
    assert combine((1, figure(year, month="2024")), (-1, total_of(parts))) != exact(truth)


# Before the release audit this leaked: Xucun 2024 -> 97,877 kWh; without TEX, Q1-Q3 -> 22,856 +
# 22,992 + 22,797 and Oct-Dec -> 7,556 + 7,662 + 7,546; all published: 6,468 kWh is F022001's year
# (only TEX firm)
def test_year_quarters_and_months_mixed_do_not_isolate_the_only_firm_of_an_industry(
        world: World) -> None:
    """Year of RARE_TOWN; without TEX: Q1-Q3 by quarter and October-December by month."""
    data, _, cid = setup(world, seed=22, forms=GENERAL)
    atk = Attack(world, data.rows())
    year = atk.ask(contract_id=cid, measures=SUM, filters=[IN_RARE_TOWN],
                   group_by=[{"field": "month", "level": "year"}])
    early = atk.ask(contract_id=cid, measures=SUM,
                    group_by=[{"field": "month", "level": "quarter"}],
                    filters=[IN_RARE_TOWN, NOT_RARE, {"field": "month", "op": "range",
                                                      "value": ["2024-01-01", "2024-09-30"]}])
    late = atk.ask(contract_id=cid, measures=SUM, group_by=[{"field": "month", "level": "month"}],
                   filters=[IN_RARE_TOWN, NOT_RARE, {"field": "month", "op": "range",
                                                     "value": ["2024-10-01", "2024-12-31"]}])
    atk.assert_no_leak()
    truth = data.total("kwh", lambda f: f.uscc == data.rare)
    assert combine((1, figure(year, month="2024")), (-1, total_of(early)),
                   (-1, total_of(late))) != exact(truth)


def test_a_towns_year_and_its_year_without_one_industry_are_not_both_published(
        world: World) -> None:
    """Regression guard: year of RARE_TOWN and year of RARE_TOWN without TEX, same level."""
    data, _, cid = setup(world, seed=23, forms=GENERAL)
    atk = Attack(world, data.rows())
    year = atk.ask(contract_id=cid, measures=SUM, filters=[IN_RARE_TOWN],
                   group_by=[{"field": "month", "level": "year"}])
    rest = atk.ask(contract_id=cid, measures=SUM, filters=[IN_RARE_TOWN, NOT_RARE],
                   group_by=[{"field": "month", "level": "year"}])
    atk.assert_no_leak()
    truth = data.total("kwh", lambda f: f.uscc == data.rare)
    assert combine((1, figure(year, month="2024")),
                   (-1, figure(rest, month="2024"))) != exact(truth)
