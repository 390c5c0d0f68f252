"""Frequency rule: fewer than k_min distinct enterprises => suppressed with no values."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from broker.disclosure.cells import CellStats
from broker.disclosure.primary import apply_frequency_rule
from broker.domain.queries import CellStatus


def test_cell_with_fewer_than_k_enterprises_is_suppressed_without_values() -> None:
    cells = [CellStats({"t": "A"}, 4, {"count": 4, "sum_x": 10.0}),
             CellStats({"t": "B"}, 5, {"count": 5, "sum_x": 11.0})]
    released = apply_frequency_rule(cells, 5)
    assert released[0].status is CellStatus.SUPPRESSED
    assert released[0].values is None
    assert released[0].as_json() == {"key": {"t": "A"}, "values": None, "status": "suppressed",
                                     "reason": "min-entities"}
    assert released[1].values == {"count": 5, "sum_x": 11.0}
    assert sum(c.status is CellStatus.SUPPRESSED for c in released) == 1


@given(st.lists(st.integers(0, 50), max_size=40), st.integers(2, 20))
def test_published_cells_always_have_at_least_k_entities(counts: list[int], k: int) -> None:
    cells = [CellStats({"i": i}, n, {"count": n}) for i, n in enumerate(counts)]
    for cell, out in zip(cells, apply_frequency_rule(cells, k), strict=True):
        assert (out.status is CellStatus.PUBLISHED) == (cell.entities >= k)
        if out.status is CellStatus.SUPPRESSED:
            assert out.values is None


def test_a_measure_with_fewer_than_k_contributors_suppresses_the_cell() -> None:
    # Ten enterprises in the cell, but only one reported the field being summed.
    cell = CellStats({"t": "C"}, 10, {"count": 10, "sum_x": 500.0}, contributors={"x": 1})
    (out,) = apply_frequency_rule([cell], 5)
    assert out.status is CellStatus.SUPPRESSED
    assert out.values is None
