"""Complementary suppression by the hypercube method, with protection intervals.

Withholding a sensitive cell is not enough: a row total minus the published cells of the row
gives it back. The table is therefore seen with all its margins, and for every sensitive cell
further cells are withheld so that no combination of published cells and margins (the
attacker's linear programme) pins the cell to an interval narrower than its protection level.

Method: the hypercube heuristic of Repsilber (GHMITER; Giessing and Repsilber, "Tools and
strategies to protect multiple tables with the GHQUAR cell suppression engine", 2002), as
tau-ARGUS and sdcTable (``method = "HYPERCUBE"``) implement it. For a sensitive cell ``a`` in a
d-dimensional table, choose in every dimension one other position ``b_j`` (possibly the
total); the 2^d cells with coordinates from ``{a_j, b_j}`` form a hypercube. Adding +delta and
-delta around it, with signs that keep every margin equation true, moves the sensitive cell by
delta while every cell outside the cube stays put. So if every corner can move by delta
without leaving what the attacker knows about it (non-negative magnitudes, counts of at least
k for cells that passed the frequency rule, at most k-1 for small ones), the attacker cannot
tell the true table from the moved one. A cube protects the cell when it moves it up by the
upper protection level and down by the lower one, so that the attacker's interval contains
the protection interval [x - lower, x + upper] (tau-ARGUS's upper and lower protection
levels, here equal, the lower one capped where the attacker's own bounds stop it: an empty
cell cannot be shown to be less than empty).
Among the cubes that give every protected quantity its level, the one withholding the least
information is taken: cost is the number of enterprises in the cells newly withheld
(tau-ARGUS's "frequency" cost), zero for cells already withheld, so complements are shared.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

Index = tuple[int, ...]

#: Relative slack when comparing an interval width with a protection level in floating point.
_TOLERANCE = 1e-9


@dataclass(frozen=True, slots=True)
class Quantity:
    """One additive quantity over the grid, with what an attacker knows of each cell's range."""

    value: np.ndarray
    lower: np.ndarray
    upper: np.ndarray


@dataclass(frozen=True, slots=True)
class Pattern:
    """The suppression pattern: which cells are withheld, and which of them are complements."""

    suppressed: np.ndarray
    complementary: np.ndarray
    unprotectable: bool = False


def suppress_complementary(
    quantities: Mapping[str, Quantity],
    protection: Mapping[str, np.ndarray],
    primary: np.ndarray,
    cost: np.ndarray,
) -> Pattern:
    """Withhold complements until every sensitive cell keeps its protection interval.

    ``protection[q]`` is each cell's protection level for quantity ``q`` (zero if not
    sensitive for it); ``primary`` marks the cells withheld by the primary rules. If some
    sensitive cell cannot be protected by any hypercube, the whole table is withheld (fail
    closed) and ``unprotectable`` is set.
    """
    suppressed = primary.copy()
    shape = primary.shape
    if not shape:
        return Pattern(suppressed, np.zeros(shape, dtype=bool))
    need = np.zeros(shape)
    for q, level in protection.items():
        scale = np.maximum(np.abs(quantities[q].value), 1.0)
        need = np.maximum(need, np.where(primary, level / scale, 0.0))
    sensitive = [tuple(int(i) for i in ix) for ix in np.argwhere(primary & (need > 0))]
    # Largest protection needs first: their cubes are the hardest to find, and the cells they
    # withhold come free to the cubes of the cells after them.
    sensitive.sort(key=lambda ix: -float(need[ix]))
    for cell in sensitive:
        levels = {q: float(p[cell]) for q, p in protection.items() if p[cell] > 0}
        corners = _cheapest_cube(cell, quantities, levels, suppressed, cost)
        if corners is None:
            everything = np.ones(shape, dtype=bool)
            return Pattern(everything, everything & ~primary, unprotectable=True)
        for corner in corners:
            suppressed[corner] = True
    return Pattern(suppressed, suppressed & ~primary)


def _cheapest_cube(
    cell: Index,
    quantities: Mapping[str, Quantity],
    levels: Mapping[str, float],
    suppressed: np.ndarray,
    cost: np.ndarray,
) -> list[Index] | None:
    """The corners of the least costly feasible hypercube around ``cell``, or None."""
    shape = suppressed.shape
    d = len(shape)
    signs, valid = [], np.ones(shape, dtype=bool)
    for j, size in enumerate(shape):
        total = size - 1
        b = np.arange(size)
        # Along one dimension, two ordinary cells move in opposite directions (their sum
        # stays); a cell and its total move together.
        s = np.where((cell[j] == total) | (b == total), 1.0, -1.0)
        axis = [1] * d
        axis[j] = size
        signs.append(s.reshape(axis))
        valid &= (b != cell[j]).reshape(axis)
    spent = np.zeros(shape)
    up = {q: np.full(shape, np.inf) for q in levels}
    down = {q: np.full(shape, np.inf) for q in levels}
    for corner in itertools.product((0, 1), repeat=d):
        view = tuple(slice(None) if c else slice(cell[j], cell[j] + 1)
                     for j, c in enumerate(corner))
        sign = np.ones([1] * d)
        for j, c in enumerate(corner):
            if c:
                sign = sign * signs[j]
        spent = spent + np.where(suppressed[view], 0.0, cost[view])
        for q in levels:
            qty = quantities[q]
            x, lo, hi = qty.value[view], qty.lower[view], qty.upper[view]
            rise, fall = hi - x, x - lo
            up[q] = np.minimum(up[q], np.where(sign > 0, rise, fall))
            down[q] = np.minimum(down[q], np.where(sign > 0, fall, rise))
    feasible = valid
    for q, level in levels.items():
        qty = quantities[q]
        upper = min(level, float(qty.upper[cell] - qty.value[cell]))
        lower = min(level, float(qty.value[cell] - qty.lower[cell]))
        feasible = feasible & (up[q] >= upper * (1 - _TOLERANCE))
        feasible = feasible & (down[q] >= lower * (1 - _TOLERANCE))
    if not feasible.any():
        return None
    best = np.unravel_index(int(np.argmin(np.where(feasible, spent, np.inf))), shape)
    return [
        tuple(int(best[j]) if c else cell[j] for j, c in enumerate(corner))
        for corner in itertools.product((0, 1), repeat=d)
    ]
