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


def _corners(cell: Index, best: tuple[int, ...]) -> list[Index]:
    return [tuple(int(best[j]) if c else cell[j] for j, c in enumerate(corner))
            for corner in itertools.product((0, 1), repeat=len(cell))]


def _cheapest_cube(
    cell: Index,
    quantities: Mapping[str, Quantity],
    levels: Mapping[str, float],
    suppressed: np.ndarray,
    cost: np.ndarray,
) -> list[Index] | None:
    """The corners of the cubes that protect ``cell``: the least costly one that does alone,
    or else several that share no corner but ``cell``, or None if even they cannot.

    Cubes that share only the sensitive cell can be moved at once: their movements of the
    cell add up while each other corner moves by its own cube's amount only, so their
    capacities add (within the sensitive cell's own bounds).
    """
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
    up = {q: np.full(shape, np.inf) for q in levels}    # how far the other corners let the
    down = {q: np.full(shape, np.inf) for q in levels}  # cell move up, and down
    for corner in itertools.product((0, 1), repeat=d):
        if not any(corner):
            continue  # the sensitive cell itself: its own bounds are checked below
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
    needs = {}
    for q, level in levels.items():
        qty = quantities[q]
        rise = float(qty.upper[cell] - qty.value[cell])
        fall = float(qty.value[cell] - qty.lower[cell])
        needs[q] = (min(level, rise), min(level, fall))
    feasible = valid.copy()
    for q, (upper, lower) in needs.items():
        feasible &= up[q] >= upper * (1 - _TOLERANCE)
        feasible &= down[q] >= lower * (1 - _TOLERANCE)
    if feasible.any():
        best = np.unravel_index(int(np.argmin(np.where(feasible, spent, np.inf))), shape)
        return _corners(cell, tuple(int(i) for i in best))
    return _cube_union(cell, quantities, valid, up, down, needs)


#: At most this many cubes are combined to protect one quantity of one cell, each way.
MAX_CUBES = 32


def _cube_union(
    cell: Index,
    quantities: Mapping[str, Quantity],
    valid: np.ndarray,
    up: Mapping[str, np.ndarray],
    down: Mapping[str, np.ndarray],
    needs: Mapping[str, tuple[float, float]],
) -> list[Index] | None:
    """Corners of several cubes whose movements of ``cell`` add up to its protection; None
    if no such combination is found.

    The attacker's maximum and minimum are separate problems, and so is each quantity: for
    each, cubes are taken roomiest first, each moving the cell by what its corners have left
    once the cubes already taken have moved them (a corner moves the same way in every cube
    around one cell: its sign follows from its coordinates).
    """
    shape = valid.shape
    totals = [size - 1 for size in shape]

    def sign_of(corner: Index) -> float:
        sign = 1.0
        for j, (a, b) in enumerate(zip(cell, corner, strict=True)):
            if a != b and a != totals[j] and b != totals[j]:
                sign = -sign
        return sign

    chosen: set[Index] = {cell}
    for q, (upper, lower) in needs.items():
        qty = quantities[q]
        for rising, need, capacity in ((True, upper, up[q]), (False, lower, down[q])):
            if need <= 0:
                continue
            used: dict[Index, float] = {}
            got, taken = 0.0, 0
            for flat in np.argsort(-np.where(valid, capacity, 0.0), axis=None, kind="stable"):
                if taken >= MAX_CUBES or not valid.flat[flat] or capacity.flat[flat] <= 0:
                    break
                best = tuple(int(i) for i in np.unravel_index(int(flat), shape))
                corners = _corners(cell, best)
                delta = need - got
                for corner in corners:
                    moves_up = (sign_of(corner) > 0) == rising
                    room = (float(qty.upper[corner] - qty.value[corner]) if moves_up
                            else float(qty.value[corner] - qty.lower[corner]))
                    delta = min(delta, room - used.get(corner, 0.0))
                if delta <= 0:
                    continue
                for corner in corners:
                    used[corner] = used.get(corner, 0.0) + delta
                chosen.update(corners)
                got += delta
                taken += 1
                if got >= need * (1 - _TOLERANCE):
                    break
            if got < need * (1 - _TOLERANCE):
                return None
    return sorted(chosen)
