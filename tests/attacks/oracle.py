"""An exact derivability oracle for released cells, independent of the broker's code.

The attacker's view: every published cell is a known linear form over the data. For a sum
measure the unknowns ("atoms") are the data's rows, one per (enterprise, distinct row), whose
values are that row's figure; a cell is the sum of the atoms its predicate selects. For the
count of distinct enterprises the unknowns are the enterprises, each worth one; a cell counts
the enterprises with at least one row its predicate selects.

An enterprise's figure leaks when some linear combination of published cells equals a nonzero
vector supported on that enterprise's atoms alone: the combination's value is then a linear
form of that enterprise's rows (their partial sum, when the coefficients are equal), exactly.
With ``A`` the cells-by-atoms incidence matrix and ``A_e``, ``A_o`` its columns for enterprise
``e`` and for every other enterprise, such a combination exists if and only if
``rank(A) > rank(A_o)``, i.e. some column of ``A_e`` lies outside the column span of ``A_o``.

How it is decided, exactly (integers and ``fractions.Fraction`` only, never a float):

* atoms covered by the same cells form one column; a column two enterprises share can never be
  isolated, so each distinct column is owned by one enterprise or by nobody;
* the cells-by-columns matrix, augmented with the identity, is brought to reduced row echelon
  form once by fraction-free Gauss-Jordan elimination (integer rows divided by their gcd);
* a row-space vector supported on enterprise ``e``'s columns can only combine the reduced rows
  whose pivot is one of ``e``'s columns, and must vanish on every non-pivot column of anyone
  else: ``e`` leaks iff those few rows, restricted to those columns, are linearly dependent
  (a small rational elimination per candidate); the dependency, read through the identity
  part, is the combination of published cells, and its value is checked against the truth.

Cost: the elimination is about ``rank * m * (d + m)`` integer operations for ``m`` cells of
one measure over ``d`` distinct columns (shared panels collapse to few columns), then a
``|pivots of e| x d`` rational elimination per candidate enterprise. About 0.1 s for 144 cells
over 1,440 rows in county-shaped tables; the worst case, 150 random cells over 720 distinct
columns, takes a few seconds. The attacks here publish a few dozen cells per measure.

A positive-valued data set makes the LP view agree with the linear one: if nonnegativity pins a
firm's total (``bounds`` gives lo == hi) while every true value is strictly positive, the
functional is constant near the truth, hence on the whole affine solution set, hence in the
row space. ``bounds`` (scipy HiGHS) is for "how far is it narrowed" checks.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np
from scipy.optimize import linprog

#: The measure name of the count of distinct enterprises.
COUNT = "count"

Number = int | float | Fraction


@dataclass(frozen=True)
class Row:
    """One distinct row of the data: whose it is, what describes it, its figures, and which
    dataset versions hold it (a row unchanged between versions is one unknown)."""

    enterprise: str
    attrs: Mapping[str, object]
    values: Mapping[str, Number]
    versions: frozenset[int] = frozenset({1})


@dataclass(frozen=True)
class Published:
    """One published figure: the sum of ``measure`` (or the count of enterprises, COUNT) over
    the rows of ``version`` that ``where`` selects."""

    label: str
    measure: str
    value: Number
    where: Callable[[Row], bool]
    version: int = 1


@dataclass(frozen=True)
class Leak:
    """A combination of published cells that is a linear form of one enterprise's rows."""

    enterprise: str
    measure: str
    combination: dict[str, Fraction]             # cell label -> coefficient
    published: dict[str, Fraction]               # cell label -> its published value
    rows: tuple[tuple[Row, Fraction], ...]       # the enterprise's rows and their weights
    value: Fraction                              # what the combination evaluates to
    truth: Fraction                              # the same form on the true rows

    @property
    def partial_sum(self) -> bool:
        """Whether every weight is one: the value is the plain sum of those rows."""
        return all(w == 1 for _, w in self.rows)

    def describe(self) -> str:
        """A one-paragraph account of the derivation, for assertion messages."""
        terms = " ".join(f"{'+' if c > 0 else '-'} {_fmt(abs(c))}*[{label}={_fmt(v)}]"
                         for (label, c), v in zip(self.combination.items(),
                                                  self.published.values(), strict=True))
        rows = ", ".join(f"{_fmt(w)}*{dict(r.attrs)}" for r, w in self.rows[:2])
        more = f" (+{len(self.rows) - 2} rows)" if len(self.rows) > 2 else ""
        what = "partial sum" if self.partial_sum else "linear form"
        if self.measure == COUNT:
            return (f"{self.enterprise} counted alone: {terms.lstrip('+ ')} = "
                    f"{_fmt(self.value)} enterprise, the firm of {dict(self.rows[0][0].attrs)}")
        return (f"{self.enterprise}'s {self.measure} derivable exactly: {terms.lstrip('+ ')} "
                f"= {_fmt(self.value)}, the {what} of its rows {rows}{more} "
                f"(true value {_fmt(self.truth)})")


class InconsistentRelease(AssertionError):
    """A published value differs from what its predicate selects in the true rows: the test's
    model of the query (or the broker's arithmetic) is wrong."""


def _fmt(x: Fraction) -> str:
    return str(x.numerator) if x.denominator == 1 else f"{float(x):.6g}"


def exact(x: Number) -> Fraction:
    """A published number as an exact rational (floats exactly, as their binary value)."""
    return Fraction(x)


# --------------------------------------------------------------------- the linear system


@dataclass
class _System:
    """One measure's published cells and the columns of its unknowns."""

    measure: str
    cells: list[Published]
    #: per unknown: (enterprise, its rows, its column over ``cells``, its true value)
    unknowns: list[tuple[str, tuple[Row, ...], tuple[int, ...], Fraction]] = field(
        default_factory=list)


def _systems(rows: Sequence[Row], cells: Sequence[Published]) -> list[_System]:
    by_measure: dict[str, list[Published]] = {}
    for cell in cells:
        by_measure.setdefault(cell.measure, []).append(cell)
    out = []
    for measure, group in by_measure.items():
        system = _System(measure, group)
        if measure == COUNT:
            owners: dict[str, list[Row]] = {}
            for row in rows:
                owners.setdefault(row.enterprise, []).append(row)
            for ent, own in owners.items():
                column = tuple(int(any(c.version in r.versions and c.where(r) for r in own))
                               for c in group)
                if any(column):
                    system.unknowns.append((ent, tuple(own), column, Fraction(1)))
        else:
            for row in rows:
                column = tuple(int(c.version in row.versions and c.where(row)) for c in group)
                if any(column):
                    if measure not in row.values:
                        raise InconsistentRelease(f"a row selected for {measure} has no such "
                                                  f"value: {row}")
                    system.unknowns.append((row.enterprise, (row,), column,
                                            exact(row.values[measure])))
        out.append(system)
    return out


def check_consistent(rows: Sequence[Row], cells: Sequence[Published]) -> None:
    """Raise InconsistentRelease unless every published value equals the truth exactly."""
    for system in _systems(rows, cells):
        for i, cell in enumerate(system.cells):
            truth = sum((u[3] for u in system.unknowns if u[2][i]), Fraction(0))
            if exact(cell.value) != truth:
                raise InconsistentRelease(f"[{cell.label}] {system.measure} published "
                                          f"{cell.value}, the rows it selects hold {truth}")


# ------------------------------------------------- exact fraction-free Gauss-Jordan

Vector = tuple[int, ...]


def _normalised(v: list[int]) -> list[int]:
    g = math.gcd(*v)
    return [x // g for x in v] if g > 1 else v


def _gauss_jordan(columns: Sequence[Vector], m: int) -> tuple[list[list[int]], list[int]]:
    """Reduced row echelon form of the m x d matrix with these ``columns``, augmented with the
    m x m identity that records which combination of cells each row is. Integer rows, each
    divided by its gcd (a row's pivot is any nonzero integer, not 1); every pivot column is
    zero in every other row. Returns the r nonzero rows and their pivot columns."""
    d = len(columns)
    rows = [[col[i] for col in columns] + [int(i == j) for j in range(m)] for i in range(m)]
    pivots: list[int] = []
    for c in range(d):
        r = len(pivots)
        found = next((i for i in range(r, m) if rows[i][c]), None)
        if found is None:
            continue
        rows[r], rows[found] = rows[found], rows[r]
        top = rows[r]
        a = top[c]
        for i in range(m):
            b = rows[i][c]
            if i != r and b:
                rows[i] = _normalised([a * x - b * y for x, y in zip(rows[i], top,
                                                                    strict=True)])
        pivots.append(c)
        if len(pivots) == m:
            break
    return rows[:len(pivots)], pivots


def _dependency(vectors: Sequence[Sequence[int]]) -> list[Fraction] | None:
    """Coefficients c, not all zero, with sum_k c_k vectors[k] = 0, or None if the vectors are
    independent (rational elimination that records each reduced vector's provenance)."""
    basis: list[tuple[int, list[Fraction], list[Fraction]]] = []
    n = len(vectors)
    for k, v in enumerate(vectors):
        w = [Fraction(x) for x in v]
        made = [Fraction(int(j == k)) for j in range(n)]
        for pivot, b, pb in basis:
            if w[pivot]:
                f = w[pivot] / b[pivot]
                w = [x - f * y for x, y in zip(w, b, strict=True)]
                made = [x - f * y for x, y in zip(made, pb, strict=True)]
        lead = next((i for i, x in enumerate(w) if x), None)
        if lead is None:
            return made
        basis.append((lead, w, made))
    return None


def _isolating(owners: Sequence[str | None], columns: Sequence[Vector], m: int
               ) -> dict[str, list[Fraction]]:
    """Per enterprise that some combination isolates, one such combination of the cells.

    ``columns`` are the distinct columns, ``owners`` the one enterprise each belongs to (None
    when several share it). With R the reduced rows and I_e the rows whose pivot column is e's,
    a row-space vector supported on e's columns is sum_{i in I_e} c_i R_i (its entry on pivot
    i is c_i times the pivot, so only I_e may take part) vanishing on every non-pivot column
    of another owner: it exists iff those restricted rows are linearly dependent.
    """
    rows, pivots = _gauss_jordan(columns, m)
    d = len(columns)
    pivot_set = set(pivots)
    free_elsewhere: dict[str | None, list[int]] = {}
    out: dict[str, list[Fraction]] = {}
    candidates: dict[str, list[int]] = {}
    for i, c in enumerate(pivots):
        owner = owners[c]
        if owner is not None:
            candidates.setdefault(owner, []).append(i)
    free = [c for c in range(d) if c not in pivot_set]
    for ent, mine in sorted(candidates.items()):
        cols = free_elsewhere.setdefault(ent, [c for c in free if owners[c] != ent])
        cols = [c for c in cols if any(rows[i][c] for i in mine)]
        dep = _dependency([[rows[i][c] for c in cols] for i in mine])
        if dep is not None:
            out[ent] = [sum((ck * rows[i][d + j] for ck, i in zip(dep, mine, strict=True)),
                            Fraction(0)) for j in range(m)]
    return out


# ---------------------------------------------------------------------------- queries


def find_leaks(rows: Sequence[Row], cells: Sequence[Published]) -> list[Leak]:
    """Every (enterprise, measure) for which a combination of ``cells`` isolates the
    enterprise; the values are first checked against the truth (InconsistentRelease)."""
    check_consistent(rows, cells)
    leaks: list[Leak] = []
    for system in _systems(rows, cells):
        owners: dict[Vector, set[str]] = {}
        for ent, _, column, _ in system.unknowns:
            owners.setdefault(column, set()).add(ent)
        # Shared columns first: they take the pivots where they can, leaving fewer candidates.
        ordered = sorted(owners.items(), key=lambda item: len(item[1]) == 1)
        columns = [column for column, _ in ordered]
        owner = [next(iter(ents)) if len(ents) == 1 else None for _, ents in ordered]
        for ent, y in sorted(_isolating(owner, columns, len(system.cells)).items()):
            leaks.append(_leak(system, ent, y))
    return leaks


def _leak(system: _System, ent: str, y: list[Fraction]) -> Leak:
    weights = [(rows, sum((yi * ci for yi, ci in zip(y, column, strict=True)), Fraction(0)),
                truth)
               for e, rows, column, truth in system.unknowns if e == ent]
    weights = [w for w in weights if w[1] != 0]
    scale = weights[0][1]
    if all(w == scale for _, w, _ in weights):
        y = [yi / scale for yi in y]           # a plain partial sum
        weights = [(rows, w / scale, t) for rows, w, t in weights]
    value = sum((yi * exact(c.value) for yi, c in zip(y, system.cells, strict=True)),
                Fraction(0))
    truth = sum((w * t for _, w, t in weights), Fraction(0))
    if value != truth:  # impossible once the values are consistent
        raise InconsistentRelease(f"derivation for {ent} gives {value}, truth {truth}")
    combination: dict[str, Fraction] = {}
    published: dict[str, Fraction] = {}
    for yi, cell in zip(y, system.cells, strict=True):
        if yi:
            combination[cell.label] = combination.get(cell.label, Fraction(0)) + yi
            published[cell.label] = exact(cell.value)
    return Leak(ent, system.measure, combination, published,
                tuple((r, w) for rows, w, _ in weights for r in rows[:1]), value, truth)


def find_leak(rows: Sequence[Row], cells: Sequence[Published]) -> Leak | None:
    """The first leak :func:`find_leaks` finds, or None when no enterprise is isolated."""
    leaks = find_leaks(rows, cells)
    return leaks[0] if leaks else None


def evaluate(cells: Sequence[Published], combination: Mapping[str, Number]) -> Fraction:
    """The value of a combination of published cells, by label (each label once)."""
    by_label = {c.label: c for c in cells}
    return sum((exact(coef) * exact(by_label[label].value)
                for label, coef in combination.items()), Fraction(0))


# ------------------------------------------------------------------------ LP narrowing


def bounds(rows: Sequence[Row], cells: Sequence[Published], enterprise: str | None,
           measure: str, target: Callable[[Row], bool] | None = None) -> tuple[float, float]:
    """The interval an attacker's linear programme gives for ``enterprise``'s sum of the sum
    measure ``measure`` over its rows that ``target`` selects (all its rows by default; every
    enterprise's when ``enterprise`` is None), from the published cells of that measure and
    nonnegativity of every value. Floats (HiGHS); ``math.inf`` when unbounded above."""
    group = [c for c in cells if c.measure == measure]
    wanted = {id(r) for r in rows
              if (enterprise is None or r.enterprise == enterprise)
              and (target is None or target(r))}
    if not wanted:
        return 0.0, 0.0
    columns: dict[tuple[int, ...], int] = {}
    variables: list[tuple[tuple[int, ...], bool]] = []
    for row in rows:
        column = tuple(int(c.version in row.versions and c.where(row)) for c in group)
        is_target = id(row) in wanted
        if is_target:
            variables.append((column, True))
        elif any(column) and column not in columns:
            columns[column] = len(variables)
            variables.append((column, False))
    a_eq = np.array([[v[0][i] for v in variables] for i in range(len(group))], dtype=float)
    b_eq = np.array([float(c.value) for c in group], dtype=float)
    objective = np.array([1.0 if t else 0.0 for _, t in variables])
    out = []
    for sign in (1.0, -1.0):
        res = linprog(sign * objective, A_eq=a_eq if len(group) else None,
                      b_eq=b_eq if len(group) else None, bounds=(0, None), method="highs")
        if res.status == 3:  # unbounded
            out.append(math.inf if sign < 0 else -math.inf)
        elif res.status != 0:
            raise InconsistentRelease(f"the published cells admit no solution: {res.message}")
        elif res.fun is None:
            raise InconsistentRelease(f"HiGHS gave no optimum: {res.message}")
        else:
            out.append(sign * float(res.fun))
    return out[0], out[1]
