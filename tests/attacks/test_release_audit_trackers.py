"""Release-audit attacks with three or more queries, over several tables, and through means
and ratios (patterns 12-20 of test_release_audit_attacks' list; same conventions).

12-15 are trackers (F3: only pairs of releases are compared), 16 the pairwise case that holds,
17-18 pin cells withheld by one table through other, overlapping tables (F4: complementary
suppression protects one table at a time), 19-20 reach a firm through a mean times its count
and a ratio times its published denominator (F2 underneath).
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any

from tests.attacks.county import (
    GENERAL,
    INDUSTRIES,
    LONE_TOWN,
    RARE_TOWN,
    SUM,
    TOWNS,
    Attack,
    combine,
    figure,
    setup,
    total_of,
)
from tests.attacks.oracle import bounds, exact
from tests.conftest import World

A, B, C, D = TOWNS
COUNT_ONLY = [{"fn": "count"}]


def _in_towns(*towns: str) -> list[dict[str, Any]]:
    return [{"field": "town", "op": "in", "value": list(towns)}]


# ------------------------------------------------------------------ F3: trackers


# Before the release audit this leaked: town in [Xiashi, Yuanhua] -> 73,908 kWh, [Xiashi, Xucun]
# -> 144,974, [Xucun] -> 80,336, all published: 73,908 - 144,974 + 80,336 = 9,270 kWh, F061000's
# year (alone in Yuanhua)
def test_a_three_query_tracker_does_not_isolate_the_only_firm_of_a_town(world: World) -> None:
    """(A + L) - (A + B) + B = L, each pair at least k firms apart."""
    data, _, cid = setup(world, seed=61)
    atk = Attack(world, data.rows())
    q = [figure(atk.ask(contract_id=cid, measures=SUM, filters=_in_towns(*towns)))
         for towns in ((A, LONE_TOWN), (A, B), (B,))]
    atk.assert_no_leak()
    truth = exact(data.total("kwh", lambda f: f.uscc == data.lonely))
    assert combine((1, q[0]), (-1, q[1]), (1, q[2])) != truth


# Before the release audit this leaked: towns [Yuanhua, Xiashi, Xucun] -> 150,884 kWh, [Yuanhua,
# Changan, Zhouwang] -> 120,094, all -> 260,274, all published: 150,884 + 120,094 - 260,274 =
# 10,704, F062000's year
def test_denning_s_general_tracker_does_not_isolate_the_only_firm_of_a_town(
        world: World) -> None:
    """q(L or T) + q(L or not T) - q(all), T = towns A and B: each pair k or more apart."""
    data, _, cid = setup(world, seed=62)
    atk = Attack(world, data.rows())
    with_t = figure(atk.ask(contract_id=cid, measures=SUM, filters=_in_towns(LONE_TOWN, A, B)))
    without_t = figure(atk.ask(contract_id=cid, measures=SUM,
                               filters=_in_towns(LONE_TOWN, C, D)))
    everything = figure(atk.ask(contract_id=cid, measures=SUM))
    atk.assert_no_leak()
    truth = exact(data.total("kwh", lambda f: f.uscc == data.lonely))
    assert combine((1, with_t), (1, without_t), (-1, everything)) != truth


# Before the release audit this leaked: [Xiashi, Xucun, Yuanhua] 148,942 - [Xiashi, Changan]
# 125,279 - [Xucun, Zhouwang] 134,390 + [Changan, Zhouwang] 119,061, all published: 8,334 kWh,
# F063000's year
def test_a_four_query_tracker_does_not_isolate_the_only_firm_of_a_town(world: World) -> None:
    """(A+B+L) - (A+C) - (B+D) + (C+D) = L; every pair of the four is k or more apart."""
    data, _, cid = setup(world, seed=63)
    atk = Attack(world, data.rows())
    q = [figure(atk.ask(contract_id=cid, measures=SUM, filters=_in_towns(*towns)))
         for towns in ((A, B, LONE_TOWN), (A, C), (B, D), (C, D))]
    atk.assert_no_leak()
    truth = exact(data.total("kwh", lambda f: f.uscc == data.lonely))
    assert combine((1, q[0]), (-1, q[1]), (-1, q[2]), (1, q[3])) != truth


# Before the release audit this leaked: counts [Xiashi, Yuanhua] 9 - [Xiashi, Xucun] 17 + [Xucun]
# 9 = 1, all published: Yuanhua holds exactly one enterprise (F064000)
def test_a_three_query_tracker_on_counts_does_not_reveal_a_town_of_one(world: World) -> None:
    """Counts of distinct enterprises: (A + L) - (A + B) + B = 1."""
    data, _, cid = setup(world, seed=64)
    atk = Attack(world, data.rows())
    q = [figure(atk.ask(contract_id=cid, measures=COUNT_ONLY, filters=_in_towns(*towns)),
                "count") for towns in ((A, LONE_TOWN), (A, B), (B,))]
    atk.assert_no_leak()
    assert combine((1, q[0]), (-1, q[1]), (1, q[2])) != 1


def test_counts_one_firm_apart_are_not_both_published(world: World) -> None:
    """Regression guard: count of A + L, then count of A (one firm apart, same spelling)."""
    data, _, cid = setup(world, seed=65)
    atk = Attack(world, data.rows())
    q = [figure(atk.ask(contract_id=cid, measures=COUNT_ONLY, filters=_in_towns(*towns)),
                "count") for towns in ((A, LONE_TOWN), (A,))]
    atk.assert_no_leak()
    assert combine((1, q[0]), (-1, q[1])) != 1


# ------------------------------------------- F4: suppression across overlapping tables


# Before the release audit this leaked: town table: Yuanhua and its complement Changan withheld,
# total 317,298 and three towns published; industry table over [Changan, Xiashi]: all four
# industries published (161,419): Changan = 73,234, Yuanhua = 10,489 kWh, F041000's year; LP
# interval [10489, 10489]
def test_a_later_table_over_a_withheld_complement_does_not_pin_the_small_cell(
        world: World) -> None:
    """The town table withholds LONE_TOWN (one firm) and a complement W; a later table by
    industry over W and a published town P has W + P as its total: W, then L, follow."""
    data, _, cid = setup(world, seed=41)
    atk = Attack(world, data.rows())
    towns = atk.ask(contract_id=cid, measures=SUM, group_by=["town"], totals=True) or {}
    withheld = [dict(k)["town"] for k, v in towns.items()
                if k and v is None and dict(k)["town"] != LONE_TOWN]
    shown = [dict(k)["town"] for k, v in towns.items() if k and v is not None]
    for w in withheld:
        atk.ask(contract_id=cid, measures=SUM, group_by=["industry"], totals=True,
                filters=_in_towns(w, *shown[:1]))
    low, high = bounds(atk.rows, atk.cells, data.lonely, "kwh")
    atk.assert_no_leak(note=f"LP interval of {data.lonely}'s year: [{low:g}, {high:g}]")
    assert low < high
    atk.assert_intervals_kept()


# Before the release audit this leaked: by town: Changan and Yuanhua withheld, total 322,539; by
# town without AUTO: Changan 48,897; by town within AUTO: Changan 27,359 (all published): 322,539
# - 74,262 - 87,926 - 74,176 - 48,897 - 27,359 = 9,919 kWh, F044000's year; LP interval [9919,
# 9919]
def test_three_overlapping_town_tables_do_not_pin_a_withheld_cell(world: World) -> None:
    """By town; by town without the lonely firm's industry; by town within it. Each table is
    protected alone; a withheld town's two parts are published in the other two."""
    data, _, cid = setup(world, seed=44)
    atk = Attack(world, data.rows())
    own = str(data.frame.loc[data.frame.uscc == data.lonely, "industry"].iloc[0])
    others = [i for i in INDUSTRIES if i != own]
    for filters in ([], [{"field": "industry", "op": "in", "value": others}],
                    [{"field": "industry", "op": "eq", "value": own}]):
        atk.ask(contract_id=cid, measures=SUM, group_by=["town"], totals=True, filters=filters)
    low, high = bounds(atk.rows, atk.cells, data.lonely, "kwh")
    atk.assert_no_leak(note=f"LP interval of {data.lonely}'s year: [{low:g}, {high:g}]")
    assert low < high
    atk.assert_intervals_kept()


# ------------------------------------------------------ means and ratios: their parts

IN_RARE_TOWN = {"field": "town", "op": "eq", "value": RARE_TOWN}
NOT_RARE = {"field": "industry", "op": "in", "value": ["PV", "AUTO", "HOME"]}
MEAN_COUNT = [{"fn": "mean", "field": "kwh"}, {"fn": "count"}]


# Before the release audit this leaked: Xucun's mean x count for Jan 8,686 + Feb 8,429 + Mar 8,583
# kWh less its Q1 without TEX (mean x count x 3) 23,218 = 2,480 kWh, F071001's Q1 (its year
# likewise); and the counts Jan 11 - Q1 without TEX 10 = 1 single it out
def test_a_monthly_mean_times_its_count_less_quarterly_means_does_not_isolate_a_firm(
        world: World) -> None:
    """Monthly mean x count of RARE_TOWN are its monthly sums (one row per firm and month);
    quarterly mean x count x 3 of the town without TEX: the difference is the TEX firm."""
    data, _, cid = setup(world, seed=71, forms=GENERAL)
    atk = Attack(world, data.rows())
    derived = []
    for filters, level, rows_per_firm in (([IN_RARE_TOWN], "month", 1),
                                          ([IN_RARE_TOWN, NOT_RARE], "quarter", 3)):
        body: dict[str, Any] = {"contract_id": cid, "measures": MEAN_COUNT, "filters": filters,
                                "group_by": [{"field": "month", "level": level}]}
        parts: list[Fraction | None] = []
        for key, values in (atk.ask(**body) or {}).items():
            if not key:
                continue
            mean, count = (None, None) if values is None else (values["mean_kwh"],
                                                               values["count"])
            if mean is None or count is None:
                parts.append(None)
                continue
            kwh = exact(mean).limit_denominator(1000) * count * rows_per_firm
            atk.know(f"q{len(atk.log)}{dict(key)}:mean*count", "kwh", kwh, body, dict(key))
            parts.append(kwh)
        derived.append(combine(*((1, p) for p in parts)) if parts else None)
    atk.assert_no_leak()
    truth = exact(data.total("kwh", lambda f: f.uscc == data.rare))
    assert combine((1, derived[0]), (-1, derived[1])) != truth


# Before the release audit this leaked: Xucun 2024 ratio(tax, output) x sum(output) = 41,342 yuan
# of tax; Xucun without TEX by quarter: 9,370 + 9,497 + 9,437 + 9,339, all published: 3,699 yuan
# is F072001's tax
def test_a_ratio_times_its_published_denominator_does_not_isolate_a_firm(world: World) -> None:
    """ratio(tax, output) x sum(output) of RARE_TOWN's year is its tax; its quarters without
    TEX (sums of tax) leave the TEX firm's tax."""
    data, _, cid = setup(world, seed=72, forms=GENERAL)
    atk = Attack(world, data.rows())
    year: dict[str, Any] = {"contract_id": cid, "filters": [IN_RARE_TOWN],
                            "group_by": [{"field": "month", "level": "year"}]}
    rate = figure(atk.ask(**year, measures=[{"fn": "ratio", "numerator": "tax",
                                             "denominator": "output"}]),
                  "ratio_tax_output", month="2024")
    output = figure(atk.ask(**year, measures=[{"fn": "sum", "field": "output"}]),
                    "sum_output", month="2024")
    tax = None
    if rate is not None and output is not None:
        tax = exact(round(float(rate) * float(output)))  # whole yuan: exact
        atk.know("ratio*output", "tax", tax, year, {"month": "2024"})
    quarters = atk.ask(contract_id=cid, measures=[{"fn": "sum", "field": "tax"}],
                       filters=[IN_RARE_TOWN, NOT_RARE],
                       group_by=[{"field": "month", "level": "quarter"}])
    atk.assert_no_leak()
    truth = exact(data.total("tax", lambda f: f.uscc == data.rare))
    assert combine((1, tax), (-1, total_of(quarters, "sum_tax"))) != truth

