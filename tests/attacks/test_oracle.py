"""The derivability oracle on hand-made cases, and against a brute-force rank computation."""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable, Collection, Sequence
from fractions import Fraction

import pytest

from tests.attacks.oracle import (
    COUNT,
    InconsistentRelease,
    Published,
    Row,
    bounds,
    check_consistent,
    evaluate,
    find_leak,
    find_leaks,
)


def _firms(towns: dict[str, list[int]]) -> list[Row]:
    """One row per firm: town -> that town's firms' values; firms named T0, T1, ..."""
    return [Row(f"{town}{i}", {"town": town}, {"v": v})
            for town, values in towns.items() for i, v in enumerate(values)]


def _everything(row: Row) -> bool:
    return True


def _in(*towns: str) -> Callable[[Row], bool]:
    return _where(town=set(towns))


def _where(**allowed: Collection[object]) -> Callable[[Row], bool]:
    """Rows whose every named attribute takes one of the allowed values."""
    def where(row: Row) -> bool:
        return all(row.attrs[name] in values for name, values in allowed.items())

    return where


def _cell(rows: Sequence[Row], label: str, where: Callable[[Row], bool],
          measure: str = "v") -> Published:
    """A cell published with its true value."""
    if measure == COUNT:
        value: int = len({r.enterprise for r in rows if where(r)})
    else:
        value = sum(int(r.values[measure]) for r in rows if where(r))
    return Published(label, measure, value, where)


ROWS = _firms({"A": [10, 11, 12], "B": [20, 21, 22], "C": [137]})


def test_a_three_query_tracker_is_found_with_its_combination() -> None:
    cells = [_cell(ROWS, "A+C", _in("A", "C")), _cell(ROWS, "A+B", _in("A", "B")),
             _cell(ROWS, "B", _in("B"))]
    leak = find_leak(ROWS, cells)
    assert leak is not None
    assert leak.enterprise == "C0"
    assert leak.value == leak.truth == Fraction(137)
    assert leak.partial_sum
    assert leak.combination == {"A+C": 1, "A+B": -1, "B": 1}
    assert evaluate(cells, leak.combination) == 137
    assert "C0's v derivable exactly" in leak.describe()


def test_a_four_query_tracker_is_found() -> None:
    rows = _firms({"A": [1, 2, 3], "B": [4, 5, 6], "C": [7, 8, 9], "D": [10, 11, 12],
                   "L": [99]})
    cells = [_cell(rows, "ABL", _in("A", "B", "L")), _cell(rows, "AC", _in("A", "C")),
             _cell(rows, "BD", _in("B", "D")), _cell(rows, "CD", _in("C", "D"))]
    leak = find_leak(rows, cells)
    assert leak is not None
    assert (leak.enterprise, leak.value) == ("L0", Fraction(99))
    assert leak.combination == {"ABL": 1, "AC": -1, "BD": -1, "CD": 1}


def test_a_protected_table_is_not_flagged() -> None:
    """Towns A and B and the total: C (two firms) follows, but no single firm does."""
    rows = _firms({"A": [10, 11, 12], "B": [20, 21, 22], "C": [30, 31]})
    cells = [_cell(rows, "A", _in("A")), _cell(rows, "B", _in("B")),
             _cell(rows, "all", _everything), _cell(rows, "A+C", _in("A", "C"))]
    assert find_leaks(rows, cells) == []
    # ... while the two firms' sum is pinned, and each one only bounded.
    assert bounds(rows, cells, "C0", "v") == (0.0, 61.0)


def test_a_pair_one_firm_apart_is_flagged_and_one_k_apart_is_not() -> None:
    assert find_leak(ROWS, [_cell(ROWS, "A+C", _in("A", "C")), _cell(ROWS, "A", _in("A"))])
    assert find_leak(ROWS, [_cell(ROWS, "A+B", _in("A", "B")), _cell(ROWS, "A", _in("A"))]) \
        is None


def test_a_partial_sum_over_some_of_a_firms_rows_is_found() -> None:
    """A year and eleven months: the one firm with a December row is pinned for December."""
    rows = [Row(f"F{i}", {"m": m}, {"v": 100 + i + m}) for i in range(4) for m in range(1, 12)]
    rows.append(Row("F0", {"m": 12}, {"v": 555}))
    cells = [_cell(rows, "year", _everything),
             _cell(rows, "jan-nov", lambda r: int(str(r.attrs["m"])) <= 11)]
    leak = find_leak(rows, cells)
    assert leak is not None
    assert (leak.enterprise, leak.value, len(leak.rows)) == ("F0", Fraction(555), 1)
    assert leak.rows[0][0].attrs == {"m": 12}


def test_counts_are_a_system_of_their_own() -> None:
    rows = _firms({"A": [1, 1, 1], "B": [1, 1, 1], "C": [1]})
    cells = [_cell(rows, "A+C", _in("A", "C"), COUNT), _cell(rows, "A+B", _in("A", "B"), COUNT),
             _cell(rows, "B", _in("B"), COUNT), _cell(rows, "A+C sum", _in("A", "C"))]
    leak = find_leak(rows, cells)
    assert leak is not None
    assert (leak.enterprise, leak.measure, leak.value) == ("C0", COUNT, Fraction(1))
    assert "counted alone" in leak.describe()
    # A firm with several rows is counted once.
    twice = [*rows, Row("A0", {"town": "A"}, {"v": 5})]
    check_consistent(twice, [_cell(twice, "A", _in("A"), COUNT)])
    assert _cell(twice, "A", _in("A"), COUNT).value == 3


def test_two_firms_always_together_are_never_told_apart() -> None:
    rows = _firms({"A": [10, 11, 12], "P": [5, 6]})
    cells = [_cell(rows, "A+P", _in("A", "P")), _cell(rows, "A", _in("A"))]
    assert find_leaks(rows, cells) == []


def test_a_row_changed_between_versions_gives_a_linear_form() -> None:
    """The same total before and after one firm's correction: its new minus its old value."""
    same = [Row(f"F{i}", {"m": 1}, {"v": 10 + i}, frozenset({1, 2})) for i in range(4)]
    old = Row("F9", {"m": 1}, {"v": 40}, frozenset({1}))
    new = Row("F9", {"m": 1}, {"v": 47}, frozenset({2}))
    rows = [*same, old, new]
    cells = [Published("v1", "v", 86, _everything, version=1),
             Published("v2", "v", 93, _everything, version=2)]
    leak = find_leak(rows, cells)
    assert leak is not None
    assert leak.enterprise == "F9"
    assert not leak.partial_sum
    assert sorted(w for _, w in leak.rows) == [-1, 1]
    assert abs(leak.value) == 7


def test_an_inconsistent_release_is_reported() -> None:
    cells = [Published("A", "v", 34, _in("A"))]
    with pytest.raises(InconsistentRelease, match=r"\[A\] v published 34"):
        find_leaks(ROWS, cells)


def test_bounds_pin_a_tracked_firm_and_stay_open_for_an_unpublished_one() -> None:
    cells = [_cell(ROWS, "A+C", _in("A", "C")), _cell(ROWS, "A+B", _in("A", "B")),
             _cell(ROWS, "B", _in("B"))]
    assert bounds(ROWS, cells, "C0", "v") == pytest.approx((137.0, 137.0))
    low, high = bounds(ROWS, cells[1:], "C0", "v")
    assert (low, high) == (0.0, math.inf)


# ------------------------------------------------- against a brute-force rational rank


def _rank(matrix: list[list[Fraction]]) -> int:
    m = [row[:] for row in matrix]
    rank = 0
    cols = len(m[0]) if m else 0
    for c in range(cols):
        pivot = next((r for r in range(rank, len(m)) if m[r][c] != 0), None)
        if pivot is None:
            continue
        m[rank], m[pivot] = m[pivot], m[rank]
        for r in range(len(m)):
            if r != rank and m[r][c] != 0:
                f = m[r][c] / m[rank][c]
                m[r] = [x - f * y for x, y in zip(m[r], m[rank], strict=True)]
        rank += 1
    return rank


def _brute(rows: Sequence[Row], cells: Sequence[Published]) -> set[str]:
    """Enterprises e with rank(A) > rank(A without e's columns), by the definition."""
    full = [[Fraction(int(c.where(r))) for r in rows] for c in cells]
    out = set()
    for ent in {r.enterprise for r in rows}:
        keep = [i for i, r in enumerate(rows) if r.enterprise != ent]
        if _rank(full) > _rank([[row[i] for i in keep] for row in full]):
            out.add(ent)
    return out


@pytest.mark.parametrize("seed", range(40))
def test_the_oracle_agrees_with_the_definition_on_random_systems(seed: int) -> None:
    rng = random.Random(seed)
    groups = [f"g{i}" for i in range(rng.randint(3, 6))]
    rows = [Row(f"E{rng.randint(0, 7)}", {"g": rng.choice(groups), "i": i},
                {"v": rng.randint(1, 50)}) for i in range(rng.randint(6, 14))]
    cells = []
    for n in range(rng.randint(1, 7)):
        chosen = frozenset(rng.sample(groups, rng.randint(1, len(groups))))
        cells.append(_cell(rows, f"c{n}", _where(g=chosen)))
    found = {leak.enterprise for leak in find_leaks(rows, cells)}
    assert found == _brute(rows, cells)
    for leak in find_leaks(rows, cells):
        assert evaluate(cells, leak.combination) == leak.truth
        assert {r.enterprise for r, _ in leak.rows} == {leak.enterprise}


def test_a_county_sized_panel_with_over_a_hundred_cells_is_decided() -> None:
    """Size check: 120 firms x 12 months, town-by-month and industry-by-month tables."""
    rows = [Row(f"F{f}", {"t": f % 7, "i": f % 5, "m": m}, {"v": 100 + f + m})
            for f in range(120) for m in range(12)]
    cells = []
    for t, m in itertools.product(range(7), range(12)):
        cells.append(_cell(rows, f"t{t}m{m}", _where(t={t}, m={m})))
    for i, m in itertools.product(range(5), range(12)):
        cells.append(_cell(rows, f"i{i}m{m}", _where(i={i}, m={m})))
    assert find_leaks(rows, cells) == []
