"""The attacker's linear programme: how narrowly published cells and margins pin a withheld one.

This is the audit that complementary suppression must pass (the "attacker problem" of
Fischetti and Salazar-Gonzalez, "Models and algorithms for optimizing cell suppression in
tabular data with linear constraints", JASA 2000). The attacker knows every published cell,
every margin equation of the table and the bounds each withheld cell is known to lie in, and
solves min and max of a withheld cell by linear programming (HiGHS through scipy).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
from scipy.optimize import linprog
from scipy.sparse import coo_matrix

from broker.disclosure.complementary import Index, Quantity


def margin_equations(shape: tuple[int, ...]) -> Iterator[tuple[Index, list[Index]]]:
    """Every equation of a table with margins: (total cell, the cells it sums)."""
    for j, size in enumerate(shape):
        others = [range(n) for k, n in enumerate(shape) if k != j]
        for rest in np.ndindex(*[len(r) for r in others]) if others else [()]:
            def at(position: int, rest: tuple[int, ...] = rest, j: int = j) -> Index:
                return (*rest[:j], position, *rest[j:])
            yield at(size - 1), [at(v) for v in range(size - 1)]


def intervals(
    quantity: Quantity,
    published: np.ndarray,
    targets: Iterable[Index],
    *,
    exact: bool = True,
) -> dict[Index, tuple[float, float]]:
    """The attacker's [min, max] for each target cell.

    With ``exact`` the margins are equations (sums); otherwise, as for distinct counts along a
    dimension an enterprise can span, each margin lies between its largest cell and their sum.
    """
    shape = published.shape
    hidden = [tuple(int(i) for i in ix) for ix in np.argwhere(~published)]
    column = {ix: n for n, ix in enumerate(hidden)}
    rows_eq: list[tuple[list[tuple[int, float]], float]] = []
    rows_ub: list[tuple[list[tuple[int, float]], float]] = []
    value = quantity.value

    def linear(terms: list[tuple[Index, float]]) -> tuple[list[tuple[int, float]], float]:
        coefs, rhs = [], 0.0
        for ix, c in terms:
            if ix in column:
                coefs.append((column[ix], c))
            else:
                rhs -= c * float(value[ix])
        return coefs, rhs

    for total, members in margin_equations(shape):
        if exact:
            coefs, rhs = linear([(total, 1.0)] + [(m, -1.0) for m in members])
            if coefs:
                rows_eq.append((coefs, rhs))
            continue
        coefs, rhs = linear([(total, 1.0)] + [(m, -1.0) for m in members])  # total <= sum
        if coefs:
            rows_ub.append((coefs, rhs))
        for m in members:  # member <= total
            coefs, rhs = linear([(m, 1.0), (total, -1.0)])
            if coefs:
                rows_ub.append((coefs, rhs))

    def matrix(rows: list[tuple[list[tuple[int, float]], float]]) -> tuple[Any, Any]:
        if not rows:
            return None, None
        r, c, v = [], [], []
        for n, (coefs, _) in enumerate(rows):
            for col, coef in coefs:
                r.append(n)
                c.append(col)
                v.append(coef)
        a = coo_matrix((np.array(v), (np.array(r), np.array(c))),
                       shape=(len(rows), len(hidden))).tocsr()
        return a, np.array([rhs for _, rhs in rows])

    a_eq, b_eq = matrix(rows_eq)
    a_ub, b_ub = matrix(rows_ub)
    bounds = [
        (None if not np.isfinite(quantity.lower[ix]) else float(quantity.lower[ix]),
         None if not np.isfinite(quantity.upper[ix]) else float(quantity.upper[ix]))
        for ix in hidden
    ]
    out = {}
    for target in targets:
        objective = np.zeros(len(hidden))
        objective[column[target]] = 1.0
        ends = []
        for sign in (1.0, -1.0):
            res = linprog(sign * objective, A_ub=a_ub, b_ub=b_ub, A_eq=a_eq, b_eq=b_eq,
                          bounds=bounds, method="highs")
            if res.status == 3:  # unbounded
                ends.append(-sign * np.inf)
            elif res.status != 0:
                raise RuntimeError(f"attacker LP failed: {res.message}")
            else:
                ends.append(sign * float(res.fun or 0.0))
        out[target] = (ends[0], ends[1])
    return out
