"""The release audit's linear system against a brute-force rank oracle on random systems."""

from __future__ import annotations

import copy
from fractions import Fraction

from hypothesis import given, settings
from hypothesis import strategies as st
from pyroaring import BitMap64

from broker.disclosure.linked import OWNER_SHIFT, LinkedSystem
from broker.disclosure.linking import publish


def _atom(owner: int, local: int) -> int:
    return owner << OWNER_SHIFT | local


def _rank(rows: list[list[int]]) -> int:
    work = [[Fraction(x) for x in r] for r in rows if any(r)]
    rank = 0
    width = len(work[0]) if work else 0
    for col in range(width):
        pivot = next((i for i in range(rank, len(work)) if work[i][col]), None)
        if pivot is None:
            continue
        work[rank], work[pivot] = work[pivot], work[rank]
        for i in range(len(work)):
            if i != rank and work[i][col]:
                f = work[i][col] / work[rank][col]
                work[i] = [x - f * y for x, y in zip(work[i], work[rank], strict=True)]
        rank += 1
    return rank


def _matrix(forms: list[frozenset[int]], columns: list[int]) -> list[list[int]]:
    return [[1 if a in f else 0 for a in columns] for f in forms]


def _leaks(forms: list[frozenset[int]], atoms: list[int]) -> bool:
    """Brute force: some enterprise's atoms hold a nonzero vector of the forms' span."""
    if not forms:
        return False
    whole = _rank(_matrix(forms, atoms))
    for owner in {a >> OWNER_SHIFT for a in atoms}:
        others = [a for a in atoms if a >> OWNER_SHIFT != owner]
        if _rank(_matrix(forms, others)) < whole:
            return True
    return False


def _in_span(form: frozenset[int], forms: list[frozenset[int]], atoms: list[int]) -> bool:
    return _rank(_matrix([*forms, form], atoms)) == _rank(_matrix(forms, atoms))


ATOMS = [_atom(o, i) for o in range(4) for i in range(3)]
forms_st = st.lists(st.frozensets(st.sampled_from(ATOMS), min_size=1, max_size=8),
                    min_size=1, max_size=12)


@settings(max_examples=300)
@given(forms_st)
def test_a_form_is_published_exactly_when_the_published_set_stays_free_of_disclosure(
    forms: list[frozenset[int]],
) -> None:
    system = LinkedSystem()
    published: list[frozenset[int]] = []
    for form in forms:
        accepted = system.add(form)
        assert accepted == (not _leaks([*published, form], ATOMS))
        if accepted:
            published.append(form)
        assert system.rank == _rank(_matrix(published, ATOMS))
        assert not system.discloses()


@settings(max_examples=200)
@given(forms_st, st.lists(st.frozensets(st.sampled_from(ATOMS), min_size=2, max_size=6),
                          min_size=1, max_size=3))
def test_a_protected_form_never_becomes_derivable(
    forms: list[frozenset[int]], protected: list[frozenset[int]],
) -> None:
    system = LinkedSystem()
    published: list[frozenset[int]] = []
    guarded = [p for p in protected if system.protect(p)]
    for form in forms:
        accepted = system.add(form)
        would = [*published, form]
        expected = not _leaks(would, ATOMS) and not any(
            _in_span(p, would, ATOMS) for p in guarded)
        assert accepted == expected
        if accepted:
            published.append(form)
    for p in guarded:
        assert not system.derivable(p)
        assert not _in_span(p, published, ATOMS)


@settings(max_examples=100)
@given(forms_st)
def test_a_refused_form_leaves_the_system_exactly_as_it_was(forms: list[frozenset[int]]) -> None:
    system = LinkedSystem()
    for form in forms:
        before = copy.deepcopy(system)
        if not system.add(form):
            for name in ("_class_of", "_atoms", "_owner", "_next_class", "_rows", "_residual"):
                assert getattr(system, name) == getattr(before, name), name
            assert {c: h for c, h in system._holding.items() if h} == {
                c: h for c, h in before._holding.items() if h}


def test_a_three_query_tracker_is_refused_at_its_third_query() -> None:
    firms = {name: _atom(o, 0) for o, name in enumerate("pqrstu")}  # p, q, r in town A
    left = {firms["p"], firms["q"], firms["r"], firms["u"]}       # A + lonely u
    both = {firms["p"], firms["q"], firms["r"], firms["s"], firms["t"]}  # A + B
    b = {firms["s"], firms["t"]}
    system = LinkedSystem()
    assert system.add(left)
    assert system.add(both)
    assert not system.add(b)  # (A+u) - (A+B) + B = u


def test_the_year_and_all_but_one_month_are_refused_as_a_pair() -> None:
    lonely = [_atom(9, m) for m in range(12)]  # a firm the December table would leave out
    crowd = [_atom(o, m) for o in range(5) for m in range(12)]
    year = set(crowd) | set(lonely)
    system = LinkedSystem()
    assert system.add(year)
    for month in range(11):
        assert system.add({a for a in year if a & 0xFFFFFF == month})
    assert not system.add({a for a in crowd if a & 0xFFFFFF == 11})


def test_a_form_published_before_is_accepted_but_not_recorded_again() -> None:
    """Asking a table again tells nothing new: the ledger and the interval programme must not
    grow with every repeat of a dashboard."""
    systems = {"f:x": LinkedSystem()}
    cell = {"f:x": BitMap64([1 << OWNER_SHIFT, 2 << OWNER_SHIFT, 3 << OWNER_SHIFT])}
    first = publish(cell, systems)
    assert first is not None
    assert [f.atoms for f in first] == [cell["f:x"]]
    assert publish(cell, systems) == []
    assert systems["f:x"].rank == 1
