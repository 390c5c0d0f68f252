"""Disclosure control on real cell tables: primary rules, complementary suppression checked by
an attacker's linear programme, the differencing guard and the remainder row."""

from __future__ import annotations

import datetime as dt
import itertools
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyroaring import BitMap

from broker.disclosure.attacker import intervals, margin_equations
from broker.disclosure.cells import ENTITIES, CellTable
from broker.disclosure.differencing import LedgerIndex
from broker.disclosure.plan import CellPlan
from broker.disclosure.primary import (
    below_frequency,
    dominance_excess,
    p_percent_excess,
    small_cell_protection,
)
from broker.disclosure.protect import Protected, protect, quantities
from broker.domain.datasets import DatasetSchema, FieldRole, FieldSpec, FieldType
from broker.domain.disclosure import Rules
from broker.domain.ledger import LedgerEntry
from broker.domain.queries import (
    AggregateSpec,
    Dimension,
    Filter,
    FilterOp,
    Measure,
    MeasureFn,
    SuppressionReason,
)
from tests.unit.tables import run_table

SCHEMA = DatasetSchema.of("e", [
    FieldSpec("e", FieldType.STRING, FieldRole.ENTITY),
    FieldSpec("g1", FieldType.STRING, FieldRole.DIMENSION),
    FieldSpec("g2", FieldType.STRING, FieldRole.DIMENSION),
    FieldSpec("x", FieldType.NUMBER, FieldRole.MEASURE),
    FieldSpec("y", FieldType.NUMBER, FieldRole.MEASURE),
])
SUMS = (Measure(MeasureFn.COUNT), Measure(MeasureFn.SUM, "x"), Measure(MeasureFn.SUM, "y"))


def _spec(*dims: str, measures: tuple[Measure, ...] = SUMS, totals: bool = True,
          remainder: bool = False) -> AggregateSpec:
    return AggregateSpec("c", "p", tuple(Dimension(d) for d in dims), measures,
                         totals=totals, remainder=remainder)


def _protect(frame: pd.DataFrame, spec: AggregateSpec, tmp: Path, rules: Rules,
             ledger: LedgerIndex | None = None) -> tuple[CellPlan, CellTable, Protected]:
    plan, table = run_table(frame, spec, SCHEMA, tmp, top=rules.top)
    out = protect(table, plan, rules, ledger=ledger or LedgerIndex(), margins=spec.totals,
                  remainder=spec.remainder)
    return plan, table, out


def _reasons(table: CellTable, out: Protected) -> dict[tuple[object, ...], str | None]:
    return {tuple(table.key(ix).values()): (r.value if r else None) for ix, r in out.released}


def _firms(rows: list[tuple[str, str, str, float]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["e", "g1", "g2", "x"])
    frame["y"] = 1.0
    return frame


# ------------------------------------------------------------------------- primary rules


def test_an_enterprise_with_many_rows_is_one_contributor(tmp_path: Path) -> None:
    # Thirty monthly rows of one firm plus two more firms: three enterprises, not 32 rows.
    rows = [("big", "a", "x", 1.0)] * 30 + [("s1", "a", "x", 1.0), ("s2", "a", "x", 1.0)]
    _, table, out = _protect(_firms(rows), _spec("g1", totals=False), tmp_path, Rules(k_min=4))
    assert table.entities[(0,)] == 3
    assert _reasons(table, out) == {("a",): "min-entities"}


def test_a_dominant_firm_withholds_a_cell_of_twelve(tmp_path: Path) -> None:
    # One photovoltaic giant makes 90% of its town's output among twelve firms.
    rows = [("giant", "t", "pv", 900.0)] + [(f"f{i}", "t", "pv", 100.0 / 11) for i in range(11)]
    _, table, out = _protect(_firms(rows), _spec("g1", totals=False), tmp_path, Rules(k_min=5))
    assert table.entities[(0,)] == 12
    assert _reasons(table, out) == {("t",): "dominance"}
    excess = dominance_excess(table, Rules(k_min=5))["x"][(0,)]
    assert excess == pytest.approx(100 * (900 + 100 / 11) / 85 - 1000)


@pytest.mark.parametrize(("n", "k", "sensitive"), [(2, 85, False), (1, 35, True), (1, 50, False),
                                                   (3, 85, True), (2, 60, True)])
def test_dominance_parameters_come_from_the_rules(tmp_path: Path, n: int, k: float,
                                                  sensitive: bool) -> None:
    # Shares 40, 30, 20, 10: top-2 70%, top-3 90%, top-1 40%.
    rows = [(f"f{i}", "t", "x", v) for i, v in enumerate([40.0, 30.0, 20.0, 10.0])]
    rules = Rules(k_min=2, dominance_n=n, dominance_k=k)
    _, table, out = _protect(_firms(rows), _spec("g1", totals=False), tmp_path, rules)
    assert (_reasons(table, out)[("t",)] == "dominance") is sensitive


def test_the_p_percent_rule_protects_the_largest_from_the_second(tmp_path: Path) -> None:
    # x1 = 50, x2 = 45, rest 5: the second-largest learns x1 to within 5 = 10% of x1.
    rows = [("a", "t", "x", 50.0), ("b", "t", "x", 45.0), ("c", "t", "x", 3.0),
            ("d", "t", "x", 2.0)]
    spec = _spec("g1", totals=False)
    lax = Rules(k_min=2, dominance_k=99.9)
    _, table, out = _protect(_firms(rows), spec, tmp_path / "a", lax)
    assert _reasons(table, out) == {("t",): None}
    strict = Rules(k_min=2, dominance_k=99.9, p_percent=15)
    _, table, out = _protect(_firms(rows), spec, tmp_path / "b", strict)
    assert _reasons(table, out) == {("t",): "dominance"}
    assert p_percent_excess(table, strict)["x"][(0,)] == pytest.approx(0.15 * 50 - 5)


def test_negative_contributions_count_by_size_for_dominance(tmp_path: Path) -> None:
    rows = [("loss", "t", "x", -900.0)] + [(f"f{i}", "t", "x", 10.0) for i in range(9)]
    _, table, out = _protect(_firms(rows), _spec("g1", totals=False), tmp_path, Rules(k_min=3))
    assert _reasons(table, out) == {("t",): "dominance"}


# ----------------------------------------------------------- complementary suppression


def test_a_lone_small_cell_takes_a_complement_in_its_row_and_column(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    rows: list[tuple[str, str, str, float]] = []
    n = 0
    for a, b in itertools.product("abc", "xyz"):
        for _ in range(2 if (a, b) == ("a", "x") else 6):
            rows.append((f"e{n}", a, b, float(rng.uniform(10, 20))))
            n += 1
    _, table, out = _protect(_firms(rows), _spec("g1", "g2"), tmp_path, Rules(k_min=3))
    reasons = _reasons(table, out)
    assert reasons[("a", "x")] == "min-entities"
    row = [reasons[("a", b)] for b in "yz"] + [reasons[("a",)]]
    col = [reasons[(a, "x")] for a in "bc"] + [reasons[("x",)]]
    assert "complementary" in row
    assert "complementary" in col
    assert reasons[()] is None  # the grand total survives a four-cell hypercube


def _attacker_check(table: CellTable, out: Protected, rules: Rules) -> None:
    """No withheld sensitive cell can be narrowed below its protection level."""
    published = np.zeros(table.entities.shape, dtype=bool)
    reason_of = dict(out.released)
    # Margins the query did not release count as published: another query can ask for them.
    for ix in np.ndindex(*table.shape):
        published[ix] = reason_of.get(ix) is None
    small = below_frequency(table, rules)
    withheld_small = np.zeros(table.shape, dtype=bool)
    for ix, reason in reason_of.items():
        withheld_small[ix] = reason in (SuppressionReason.MIN_ENTITIES,
                                        SuppressionReason.DIFFERENCING)
    levels = small_cell_protection(table, rules)
    dom = dominance_excess(table, rules)
    pp = p_percent_excess(table, rules)
    qty = quantities(table, rules, small)
    for q, quantity in qty.items():
        need = np.where(withheld_small, levels[q], 0.0)
        if q != ENTITIES:
            need = np.maximum(need, np.where(~published & ~small,
                                             np.maximum(dom[q], pp[q]), 0.0))
        targets = [tuple(int(i) for i in ix) for ix in np.argwhere(~published & (need > 0))]
        if not targets:
            continue
        exact = q != ENTITIES or _counts_add_up(table)
        for ix, (lo, hi) in intervals(quantity, published, targets, exact=exact).items():
            # The attacker's interval contains the protection interval, as far as the
            # attacker's own bounds on the cell allow it to reach.
            x = quantity.value[ix]
            upper = min(need[ix], quantity.upper[ix] - x)
            lower = min(need[ix], x - quantity.lower[ix])
            slack = 1e-6 * max(1.0, abs(x))
            assert hi >= x + upper - slack, (q, ix, lo, hi, x, need[ix])
            assert lo <= x - lower + slack, (q, ix, lo, hi, x, need[ix])


def _counts_add_up(table: CellTable) -> bool:
    return all(table.entities[t] == sum(table.entities[m] for m in ms)
               for t, ms in margin_equations(table.shape))


firm_rows = st.lists(
    st.tuples(st.sampled_from("abcd"), st.sampled_from("xyz"),
              st.one_of(st.floats(0, 100), st.floats(500, 5000)),
              st.floats(-50, 50)),
    min_size=1, max_size=45,
)


@settings(max_examples=int(os.environ.get("BROKER_PROPERTY_EXAMPLES", "60")), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=firm_rows, k=st.integers(2, 5), dom_k=st.sampled_from([70.0, 85.0]),
       p=st.sampled_from([0.0, 10.0]))
def test_property_published_tables_withstand_the_attacker(
    tmp_path_factory: pytest.TempPathFactory, data: list[tuple[str, str, float, float]],
    k: int, dom_k: float, p: float,
) -> None:
    frame = pd.DataFrame(
        [(f"e{i}", a, b, x, y) for i, (a, b, x, y) in enumerate(data)],
        columns=["e", "g1", "g2", "x", "y"])
    rules = Rules(k_min=k, dominance_k=dom_k, p_percent=p)
    _, table, out = _protect(frame, _spec("g1", "g2"), tmp_path_factory.mktemp("t"), rules)
    small = below_frequency(table, rules)
    dom = dominance_excess(table, rules)
    pp = p_percent_excess(table, rules)
    for ix, reason in out.released:
        if reason is None:
            # Published: at least k enterprises, and no field above the dominance threshold.
            assert table.entities[ix] >= k
            assert not small[ix]
            for name, stats in table.fields.items():
                top = stats.top[ix][: rules.dominance_n].sum()
                assert top <= dom_k / 100 * stats.abs_total[ix] + 1e-9 or stats.abs_total[ix] == 0
                assert dom[name][ix] == 0
                assert pp[name][ix] == 0
    if out.unprotectable:  # withheld whole, every cell alike
        assert {r for _, r in out.released} == {SuppressionReason.COMPLEMENTARY}
    else:
        _attacker_check(table, out, rules)


def test_a_table_with_no_protection_possible_is_withheld_whole(tmp_path: Path) -> None:
    # One firm in each of two cells of a row whose total (2 = k) is publishable: known to lie
    # in [0, k-1] each and to add up to 2, both cells would be pinned whatever is withheld.
    rows = [("a1", "a", "x", 5.0), ("a2", "a", "y", 7.0)]
    _, table, out = _protect(_firms(rows), _spec("g1", "g2"), tmp_path, Rules(k_min=2))
    assert out.unprotectable
    assert set(_reasons(table, out).values()) == {"complementary"}


# ---------------------------------------------------------------------- differencing guard


def test_the_ledger_finds_sets_that_differ_by_fewer_than_k() -> None:
    ledger = LedgerIndex()
    ledger.add([LedgerEntry(1, "#entities", BitMap(range(100))),
                LedgerEntry(2, "f:x", BitMap(range(50)))])
    snapshot = ledger.snapshot()
    ledger.add([LedgerEntry(3, "#entities", BitMap(range(500)))])
    assert (snapshot.last_id, ledger.last_id) == (2, 3)
    assert ledger.conflicts("#entities", BitMap(range(99)), 5)         # one fewer
    assert ledger.conflicts("#entities", BitMap(range(1, 101)), 5)     # one swapped: 2 apart
    assert not ledger.conflicts("#entities", BitMap(range(100)), 5)    # identical
    assert not ledger.conflicts("#entities", BitMap(range(95)), 5)     # five apart
    assert not ledger.conflicts("f:y", BitMap(range(99)), 5)           # another measure
    assert not snapshot.conflicts("#entities", BitMap(range(499)), 5)  # added after it
    assert ledger.conflicts("#entities", BitMap(range(499)), 5)


def test_a_cell_one_enterprise_away_from_an_earlier_release_is_withheld(tmp_path: Path) -> None:
    rows = [(f"e{i}", "a" if i else "b", "x", 10.0 + i) for i in range(12)]
    rows[0] = ("e0", "b", "x", 100.0)  # enough to hide a's share of the known total
    frame = _firms(rows)
    frame.loc[0, "y"] = 10.0
    rules = Rules(k_min=3)
    ledger = LedgerIndex()
    # First release: everyone (grand total only).
    _, _, first = _protect(frame, _spec(), tmp_path / "1", rules, ledger)
    assert [r for _, r in first.released] == [None]
    ledger.add(LedgerEntry(i + 1, m, members) for i, (m, members) in enumerate(first.ledger))
    # Second: by town, where town a is everyone but e0. Withheld as differencing.
    _, table, second = _protect(frame, _spec("g1", totals=False), tmp_path / "2", rules, ledger)
    assert _reasons(table, second) == {("a",): "differencing", ("b",): "min-entities"}
    # Asked for on its own, a withheld cell stays withheld.
    ledger.add(LedgerEntry(100 + i, m, members) for i, (m, members) in enumerate(second.ledger))
    alone = AggregateSpec("c", "p", (), SUMS, filters=(Filter("g1", FilterOp.EQ, "b"),))
    _, table, third = _protect(frame, alone, tmp_path / "3", rules, ledger)
    assert _reasons(table, third) == {(): "min-entities"}


# ----------------------------------------------------------------------------- remainder


def test_the_remainder_pools_withheld_cells_and_obeys_every_rule(tmp_path: Path) -> None:
    rows = []
    n = 0
    for town, firms in [("a", 8), ("b", 8), ("c", 2), ("d", 2), ("e", 2)]:
        for _ in range(firms):
            rows.append((f"e{n}", town, "x", 10.0 + n % 3))
            n += 1
    spec = _spec("g1", totals=False, remainder=True)
    _, table, out = _protect(_firms(rows), spec, tmp_path, Rules(k_min=3))
    assert out.remainder is not None
    values, reason = out.remainder
    withheld = [ix for ix, r in out.released if r is not None]
    assert reason is None
    assert values is not None
    assert values["count"] == sum(int(table.entities[ix]) for ix in withheld) >= 3
    assert values["sum_x"] == pytest.approx(sum(float(table.fields["x"].total[ix])
                                                for ix in withheld))
    # Nothing withheld: an empty pool has too few enterprises to say anything.
    big = [r for r in rows if r[1] in ("a", "b")]
    _, _, out = _protect(_firms(big), spec, tmp_path / "s", Rules(k_min=3))
    assert all(r is None for _, r in out.released)
    assert out.remainder == (None, SuppressionReason.MIN_ENTITIES)


PANEL = DatasetSchema.of("e", [
    FieldSpec("e", FieldType.STRING, FieldRole.ENTITY),
    FieldSpec("g1", FieldType.STRING, FieldRole.DIMENSION),
    FieldSpec("d", FieldType.DATE, FieldRole.DIMENSION),
    FieldSpec("x", FieldType.NUMBER, FieldRole.MEASURE),
])


def _panel() -> pd.DataFrame:
    # Twelve firms in 2025 and 2026, and one more that enters in 2026.
    rows = [(f"e{i}", "a", dt.date(year, 6, 1), 10.0 + i)
            for year in (2025, 2026) for i in range(12)]
    rows.append(("new", "b", dt.date(2026, 6, 1), 5.0))
    return pd.DataFrame(rows, columns=["e", "g1", "d", "x"])


def _release(frame: pd.DataFrame, spec: AggregateSpec, tmp: Path,
             ledger: LedgerIndex) -> dict[tuple[object, ...], str | None]:
    plan, table = run_table(frame, spec, PANEL, tmp)
    out = protect(table, plan, Rules(k_min=3), ledger=ledger, margins=spec.totals)
    ledger.add(LedgerEntry(ledger.last_id + i + 1, m, members)
               for i, (m, members) in enumerate(out.ledger))
    return _reasons(table, out)


def test_the_same_firms_in_another_year_are_not_a_tracker(tmp_path: Path) -> None:
    ledger = LedgerIndex()
    by_year = AggregateSpec("c", "p", (Dimension("d", level="year"),), SUMS[:2])
    assert _release(_panel(), by_year, tmp_path / "1", ledger) == {
        ("2025",): None, ("2026",): None}
    # 2026 has the 2025 firms plus one: but every row differs, so nothing is withheld.
    again = AggregateSpec("c", "p", (Dimension("d", level="year"),),
                          (Measure(MeasureFn.COUNT, alias="n"), Measure(MeasureFn.SUM, "x")))
    assert _release(_panel(), again, tmp_path / "2", ledger) == {
        ("2025",): None, ("2026",): None}


def test_a_vacuous_date_range_does_not_hide_a_tracker(tmp_path: Path) -> None:
    ledger = LedgerIndex()
    total = AggregateSpec("c", "p", (), SUMS[:2],
                          filters=(Filter("d", FilterOp.RANGE, ["2026-01-01", None]),))
    assert _release(_panel(), total, tmp_path / "1", ledger) == {(): None}
    # 2026 again, through a range that excludes nothing more, less the one firm in town b.
    tracker = AggregateSpec("c", "p", (), SUMS[:2], filters=(
        Filter("d", FilterOp.RANGE, ["2025-07-01", "2100-01-01"]),
        Filter("g1", FilterOp.EQ, "a")))
    assert _release(_panel(), tracker, tmp_path / "2", ledger) == {(): "differencing"}


def test_a_rare_day_is_never_shown_even_as_suppressed(tmp_path: Path) -> None:
    # Three firms report on 1 June, one firm alone on 17 June: that key would say so.
    frame = pd.DataFrame({"e": ["a", "b", "c", "lone"], "g1": "t",
                          "d": [dt.date(2025, 6, 1)] * 3 + [dt.date(2025, 6, 17)],
                          "x": [1.0, 2.0, 3.0, 4.0]})
    by_day = AggregateSpec("c", "p", (Dimension("d"),), SUMS[:2], totals=True)
    plan, table = run_table(frame, by_day, PANEL, tmp_path / "day")
    out = protect(table, plan, Rules(k_min=3), ledger=LedgerIndex(), margins=True)
    keys = [table.key(ix) for ix, _ in out.released]
    assert {"d": "2025-06-17"} not in keys
    assert {"d": "2025-06-01"} in keys
    # The total minus 1 June would give the lone firm: one of them is withheld.
    reasons = {tuple(table.key(ix).values()): r for ix, r in out.released}
    assert SuppressionReason.COMPLEMENTARY in (reasons[("2025-06-01",)], reasons[()])
    # By month the key is a period, not a firm's day: shown.
    by_month = AggregateSpec("c", "p", (Dimension("d", level="month"),), SUMS[:2])
    plan, table = run_table(frame, by_month, PANEL, tmp_path / "month")
    out = protect(table, plan, Rules(k_min=3), ledger=LedgerIndex(), margins=False)
    assert [table.key(ix) for ix, _ in out.released] == [{"d": "2025-06"}]
