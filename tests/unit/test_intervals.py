"""The interval audit: linear programming over published sums, against protection intervals."""

from __future__ import annotations

import pytest
from pyroaring import BitMap64

from broker.disclosure.intervals import Budget, IntervalSystem, OverBudget


def _atoms(*ids: int) -> BitMap64:
    return BitMap64(ids)


def test_a_published_pair_bounds_a_withheld_part_by_its_partner() -> None:
    """a + b = 110 with b >= 0 bounds a (100) above by 110: inside [90, 110 + epsilon)."""
    system = IntervalSystem()
    system.protect(_atoms(1), 90.0, 110.0)
    system.publish(_atoms(1, 2), 110.0)
    assert system.narrowed([0]) == [0]
    wide = IntervalSystem()
    wide.protect(_atoms(1), 90.0, 110.0)
    wide.publish(_atoms(1, 2), 200.0)
    assert wide.narrowed([0]) == []


def test_without_a_sign_nothing_is_bounded_by_a_sum_of_two() -> None:
    system = IntervalSystem(signed=True)
    system.protect(_atoms(1), 90.0, 110.0)
    system.publish(_atoms(1, 2), 110.0)
    assert system.narrowed([0]) == []


def test_bounds_come_from_chains_of_sums_not_only_those_holding_the_form() -> None:
    """a + b = 1000 (a = 900) and b + c = 120: b <= 120, so a >= 880, above 900 - 90."""
    system = IntervalSystem()
    system.protect(_atoms(1), 810.0, 990.0)
    system.publish(_atoms(1, 2), 1000.0)
    assert system.narrowed([0]) == []
    system.publish(_atoms(2, 3), 120.0)
    assert system.narrowed([0]) == [0]


def test_an_interval_already_narrowed_is_kept_as_it_stands_then_guarded() -> None:
    system = IntervalSystem()
    system.publish(_atoms(1, 2), 105.0)
    system.protect(_atoms(1), 90.0, 110.0)
    system.settle([0])
    kept = system.protected[0]
    assert kept.low == 90.0
    assert 104.9 < kept.high < 105.0
    assert system.narrowed([0]) == []
    system.publish(_atoms(2, 3), 3.0)  # b <= 3: a >= 102, above the low end 90
    assert system.narrowed([0]) == [0]


def test_rollback_forgets_what_was_added_since_the_mark() -> None:
    system = IntervalSystem()
    system.protect(_atoms(1), 90.0, 110.0)
    mark = system.mark()
    system.publish(_atoms(1, 2), 110.0)
    system.rollback(mark)
    assert system.published == []
    assert system.narrowed([0]) == []


def test_atoms_of_many_forms_are_grouped_exactly() -> None:
    """Atoms covered by the same forms are one variable; the bounds are those of the rows."""
    system = IntervalSystem()
    system.protect(_atoms(*range(0, 5)), 45.0, 55.0)          # five rows of 10
    system.publish(_atoms(*range(0, 10)), 100.0)               # with five more rows
    system.publish(_atoms(*range(5, 10), *range(20, 30)), 60.0)  # those five and ten more
    # the five others are at most 60, so the five are at least 40: [40, 100] holds [45, 55]
    assert system.narrowed([0]) == []
    system.publish(_atoms(*range(20, 30)), 15.0)  # now the five others are exactly 45
    assert system.narrowed([0]) == [0]


def test_a_check_that_would_take_more_programmes_than_the_budget_stops() -> None:
    system = IntervalSystem()
    system.protect(_atoms(1), 90.0, 110.0)
    system.publish(_atoms(1, 2), 200.0)
    with pytest.raises(OverBudget):
        system.culprits([0], budget=Budget(left=1))
    assert system.culprits([0], budget=Budget(left=10)) == {}


def test_a_check_past_its_time_stops() -> None:
    system = IntervalSystem()
    system.protect(_atoms(1), 90.0, 110.0)
    system.publish(_atoms(1, 2), 200.0)
    with pytest.raises(OverBudget):
        system.culprits([0], budget=Budget(until=0.0))


def test_the_programme_kept_between_checks_follows_rollbacks() -> None:
    system = IntervalSystem()
    system.protect(_atoms(1), 90.0, 110.0)
    system.publish(_atoms(1, 2), 200.0)
    assert system.narrowed([0]) == []
    mark = system.mark()
    system.publish(_atoms(2), 90.0)  # a = 110 exactly
    assert system.narrowed([0]) == [0]
    system.rollback(mark)
    assert system.narrowed([0]) == []
    system.publish(_atoms(2, 3), 150.0)  # b <= 150 only: a >= 50
    assert system.narrowed([0]) == []


def test_a_larger_number_scales_the_kept_programme_again() -> None:
    system = IntervalSystem()
    system.protect(_atoms(1), 90.0, 110.0)
    system.publish(_atoms(1, 2), 110.0)
    assert system.narrowed([0]) == [0]
    system.publish(_atoms(5, 6), 1e9)
    assert system.narrowed([0]) == [0]
    wide = IntervalSystem()
    wide.protect(_atoms(1), 90.0, 110.0)
    wide.publish(_atoms(1, 2), 130.0)
    assert wide.narrowed([0]) == []
    wide.publish(_atoms(5, 6), 1e3)  # scale 1024: every row scaled again, same answer
    assert wide.narrowed([0]) == []
    # the tolerance is 1e-8 of the largest number: at 1e12 it is 10,000, more than a
    # clears 110 by, so the bound counts as narrowed (doubt withholds)
    wide.publish(_atoms(7, 8), 1e12)
    assert wide.narrowed([0]) == [0]


def test_sums_that_admit_no_nonnegative_point_are_doubt_until_rolled_back() -> None:
    """Atoms are taken as nonnegative only when the field has no negative contribution, so a
    programme without a nonnegative point is numerical trouble: every sum counts as narrowed."""
    system = IntervalSystem()
    system.protect(_atoms(1), 10.0, 200.0)
    system.publish(_atoms(1, 2), 300.0)
    assert system.narrowed([0]) == []
    mark = system.mark()
    system.publish(_atoms(3, 4), 10.0)
    system.publish(_atoms(3), 20.0)  # the fourth would be -10
    assert system.narrowed([0]) == [0]
    system.rollback(mark)
    assert system.narrowed([0]) == []


def test_a_form_whose_classes_a_later_form_splits_keeps_all_of_them() -> None:
    """a + b + c = 10 and c + d = 3 put a + b in [7, 10]; protecting b alone after a + b
    splits the class {a, b} within the same check, and a + b must still count both."""
    system = IntervalSystem()
    system.publish(_atoms(1, 2, 3), 10.0)
    system.publish(_atoms(3, 4), 3.0)
    system.protect(_atoms(1, 2), 6.0, 9.5)
    system.protect(_atoms(2), 1.0, 2.0)
    assert 0 in system.narrowed([0, 1])


def test_zero_stays_possible_only_relative_to_the_sum_itself() -> None:
    """x0 is at least 5; a lower end below zero asks that zero stay possible, and an
    unrelated large total must not make 5 look like zero."""
    system = IntervalSystem()
    system.publish(_atoms(0, 1), 30.0)
    system.publish(_atoms(1, 2), 25.0)
    system.publish(_atoms(5, 6), 1e9)
    system.protect(_atoms(0), -1.0, 15.0)
    assert system.narrowed([0]) == [0]
