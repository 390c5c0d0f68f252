"""The release audit's second half: how far linear programming over everything published
narrows a withheld total.

The exact audit (``broker.disclosure.linked``) keeps every protected total out of the span of
the published forms: no combination gives it. An attacker also knows inequalities, above all
that magnitudes are not negative, and a linear programme over all published sums bounds a
withheld total to an interval even when no combination gives it exactly (the interval
disclosure that complementary suppression guards against within one table, by protection
intervals). This module guards the whole history the same way: every protected sum keeps the
interval ``[x - lower, x + upper]`` its own table's rules demanded (its protection interval),
and a release is accepted only if, with it, the attacker's bounds for every protected sum of
the quantity still contain that interval.

Unlike the exact audit this needs numbers: each published sum's value (which the attacker has
anyway) and each protected sum's protection interval (kept sealed at rest). So, like
complementary suppression within a table, whether a cell is withheld here depends on withheld
totals, and a cell withheld for it tells what a complement tells: that publishing it would
narrow some withheld total too far.

How. The atoms of all forms are grouped into classes (atoms covered by exactly the same forms;
their sum is one variable, nonnegative when every atom is). Published forms are equations over
the classes; for each protected form to check, HiGHS minimises and maximises its sum. The
programme is scaled so that its largest number is one, and every doubt (an infeasible or failed
solve, a bound within the solver's tolerance of the interval) counts as narrowed: an error can
only make the broker withhold more.

Only what can have changed is checked: protected forms registered by this release, and, when a
release publishes a form outside the span of the earlier ones, every protected form of the
quantity (a form in the span adds no information, so no bound moves).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import highspy
import numpy as np
from pyroaring import BitMap64
from scipy import sparse

#: A bound counts as narrowed unless it clears the interval by this much of the programme's
#: scale (HiGHS's feasibility tolerance is 1e-7 on the scaled programme): doubt withholds.
_SLACK = 1e-6


#: The most programmes one release may solve; past it the release withholds everything it
#: would add rather than wait (``broker.disclosure.linking``). At 3,000 enterprises x 36
#: months one solve takes a few milliseconds, so this bounds the check at seconds.
MAX_SOLVES = 1000
#: The most seconds one release's audit may take before it withholds what it would add.
MAX_SECONDS = 10.0


class OverBudget(Exception):
    """The interval check would take more programmes or time than one release may spend."""


@dataclass(slots=True)
class Budget:
    """The programmes one release may still solve, and until when (monotonic clock)."""

    left: int = MAX_SOLVES
    until: float = field(default_factory=lambda: time.monotonic() + MAX_SECONDS)

    @property
    def expired(self) -> bool:
        """Whether the time is up."""
        return time.monotonic() > self.until

    def spend(self) -> None:
        """Count one solve; ``OverBudget`` if none is left or the time is up."""
        if self.left <= 0 or self.expired:
            raise OverBudget
        self.left -= 1


@dataclass(frozen=True, slots=True)
class Bounded:
    """A form of the interval audit: its atoms, and ``[low, high]``: the value itself for a
    published sum, the protection interval for a protected one."""

    atoms: BitMap64
    low: float
    high: float


@dataclass(slots=True)
class IntervalSystem:
    """Every published sum of one quantity with its value, and every protected sum with the
    interval the attacker's bounds must keep containing."""

    published: list[Bounded] = field(default_factory=list)
    protected: list[Bounded] = field(default_factory=list)
    #: Whether some contribution was ever negative: then no sign is assumed for any atom.
    signed: bool = False
    _marks: list[tuple[int, int, bool]] = field(default_factory=list)

    def mark(self) -> int:
        """A point to roll back to."""
        self._marks.append((len(self.published), len(self.protected), self.signed))
        return len(self._marks) - 1

    def rollback(self, mark: int) -> None:
        """Forget what was added since ``mark``."""
        published, protected, signed = self._marks[mark]
        del self.published[published:], self.protected[protected:], self._marks[mark:]
        self.signed = signed

    def commit(self) -> None:
        """Keep what was added."""
        self._marks.clear()

    def publish(self, atoms: BitMap64, value: float) -> None:
        """Record a published sum and its value."""
        self.published.append(Bounded(atoms, value, value))

    def protect(self, atoms: BitMap64, low: float, high: float) -> None:
        """Record a withheld sum whose bounds must keep containing ``[low, high]``."""
        self.protected.append(Bounded(atoms, low, high))

    def narrowed(self, which: Iterable[int]) -> list[int]:
        """Of the protected forms at positions ``which``, those whose bounds over everything
        published no longer contain their protection interval."""
        return list(self.culprits(which))

    def culprits(self, which: Iterable[int], since: int = 0, budget: Budget | None = None
                 ) -> dict[int, set[int]]:
        """The narrowed forms among ``which``, each with the published sums from position
        ``since`` on that bind the bound it fails (nonzero dual value in the attacker's
        programme): withholding those is what can widen it again. Raises ``OverBudget``
        when ``budget`` runs out first."""
        found = self._narrowed(list(which), since, budget or Budget())
        return {pid: f.binding for pid, f in found.items()}

    def settle(self, which: Iterable[int], budget: Budget | None = None) -> None:
        """Newly protected forms that earlier releases already narrow keep the interval they
        have now, shrunk by a margin so that the check passes until something narrows it
        further (what is public cannot be taken back)."""
        for pid, found in self._narrowed(list(which), 0, budget or Budget()).items():
            form = self.protected[pid]
            margin = 4 * _SLACK * found.scale
            low, high = found.low, found.high
            if math.isnan(low) or math.isnan(high):  # no programme solves: exact audit only
                low, high = form.low, form.low
            self.protected[pid] = Bounded(form.atoms, max(form.low, low + margin),
                                          min(form.high, high - margin))

    def _narrowed(self, which: list[int], since: int, budget: Budget) -> dict[int, _Found]:
        checked = [pid for pid in which if self.protected[pid].high > self.protected[pid].low]
        if not checked or not self.published:
            return {}
        forms = [b.atoms for b in self.published] + [self.protected[p].atoms for p in checked]
        classes = _classes(forms)
        rows, cols = classes.incidence
        n_pub = len(self.published)
        take = rows < n_pub
        a_eq = sparse.csc_matrix((np.ones(int(take.sum())), (rows[take], cols[take])),
                                 shape=(n_pub, classes.count))
        values = np.array([b.low for b in self.published], dtype=float)
        scale = max(1.0, float(np.abs(values).max(initial=0.0)),
                    *(max(abs(self.protected[p].low), abs(self.protected[p].high))
                      for p in checked))
        programme = _Programme(a_eq, values / scale, budget, signed=self.signed)
        objectives = sparse.csr_matrix(
            (np.ones(int((~take).sum())), (rows[~take] - n_pub, cols[~take])),
            shape=(len(checked), classes.count))
        suspects = _suspects(programme, objectives, [self.protected[p] for p in checked],
                             scale)
        out = {}
        for position in suspects:
            pid = checked[position]
            form = self.protected[pid]
            support = cols[rows == n_pub + position]
            low, low_duals = programme.optimum(support, maximise=False)
            high, high_duals = programme.optimum(support, maximise=True)
            failed = []
            if not _keeps_low(low, form.low / scale, signed=self.signed):
                failed.append(low_duals)
            if not high >= form.high / scale + _SLACK:
                failed.append(high_duals)
            if failed:
                binding: set[int] = set()
                for duals in failed:
                    weight = np.abs(duals[since:])
                    if len(weight) and weight.max() > 1e-9:  # the most binding new sum
                        binding.add(since + int(weight.argmax()))
                out[pid] = _Found(low * scale, high * scale, scale, binding)
        return out


def _model(matrix: sparse.csc_matrix, row_lower: np.ndarray, row_upper: np.ndarray, *,
           signed: bool) -> highspy.Highs:
    """A HiGHS model of the rows of ``matrix`` between their bounds, over columns that are
    nonnegative unless ``signed``, with no objective yet."""
    rows, cols = matrix.shape
    highs = highspy.Highs()  # type: ignore[no-untyped-call]  # highspy: no annotations
    highs.setOptionValue("output_flag", False)
    lp = highspy.HighsLp()
    lp.num_col_, lp.num_row_ = cols, rows
    lp.col_cost_ = np.zeros(cols)
    lp.col_lower_ = np.full(cols, -highspy.kHighsInf if signed else 0.0)
    lp.col_upper_ = np.full(cols, highspy.kHighsInf)
    lp.row_lower_ = np.where(np.isinf(row_lower), -highspy.kHighsInf, row_lower)
    lp.row_upper_ = np.where(np.isinf(row_upper), highspy.kHighsInf, row_upper)
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.start_ = matrix.indptr
    lp.a_matrix_.index_ = matrix.indices
    lp.a_matrix_.value_ = matrix.data
    highs.passModel(lp)
    return highs


def _keeps_low(low: float, wanted: float, *, signed: bool) -> bool:
    """Whether the attacker's lower bound ``low`` leaves ``wanted`` possible.

    Where the atoms are not negative, a protection interval reaching below zero asks only that
    zero stay possible: the solver's minimum is then a vertex on the bound zero, compared with
    a tolerance in the lenient direction (a true minimum above zero by less than a millionth
    of the largest published sum is taken as zero). Everywhere else the tolerance is strict.
    """
    if not signed and wanted <= 0.0:
        return low <= _SLACK
    return low <= wanted - _SLACK



def _suspects(programme: _Programme, objectives: sparse.csr_matrix, forms: list[Bounded],
              scale: float) -> list[int]:
    """The positions of ``forms`` that may be narrowed, found by group tests.

    One programme asks whether a single point consistent with everything published
    puts every form of a group at or beyond the upper end of its interval (another, the
    lower end); if so, no form of the group is narrowed on that side. A group that fails
    is halved until the forms that fail alone are left: those are solved one by one.
    Most protected sums are far from narrowed, so most checks cost two programmes, not
    two per sum. Any doubt (a failed solve) only sends a group down to single forms.
    """
    signed = programme.signed()
    high = np.array([f.high for f in forms]) / scale + _SLACK
    low = np.array([f.low for f in forms]) / scale
    low = np.where(low <= 0.0, _SLACK, low - _SLACK) if not signed else low - _SLACK
    everything = list(range(len(forms)))
    upward = _failing(everything, lambda group: programme.feasible(
        objectives[group], high[group], np.full(len(group), np.inf)))
    downward = _failing(everything, lambda group: programme.feasible(
        objectives[group], np.full(len(group), -np.inf), low[group]))
    return sorted(set(upward) | set(downward))


def _failing(items: list[int], passes: Callable[[list[int]], bool]) -> list[int]:
    """The items that fail ``passes`` alone, testing groups and halving those that fail."""
    if not items or passes(items):
        return []
    if len(items) == 1:
        return items
    middle = len(items) // 2
    return _failing(items[:middle], passes) + _failing(items[middle:], passes)


@dataclass(frozen=True, slots=True)
class _Found:
    low: float
    high: float
    scale: float
    binding: set[int]


class _Programme:
    """The attacker's programme over the classes, solved for one objective after another
    (HiGHS warm-starts each from the last basis)."""

    def __init__(self, a_eq: sparse.csc_matrix, b_eq: np.ndarray, budget: Budget, *,
                 signed: bool) -> None:
        self._budget = budget
        self._rows, self._cols = a_eq.shape
        self._signed = signed
        self._a_eq, self._b_eq = a_eq, b_eq
        self._highs = self._model(signed=signed)
        self._support = np.zeros(0, dtype=np.int64)

    def _model(self, *, signed: bool) -> highspy.Highs:
        return _model(self._a_eq, self._b_eq, self._b_eq, signed=signed)

    def signed(self) -> bool:
        """Whether no sign is assumed: set once everything published admits no point with
        every atom nonnegative (some atom is negative after all)."""
        if not self._signed:
            self._budget.spend()
            self._highs.run()
            if self._highs.getModelStatus() == highspy.HighsModelStatus.kInfeasible:
                self._signed = True
                self._highs = self._model(signed=True)
                self._support = np.zeros(0, dtype=np.int64)
        return self._signed

    def feasible(self, rows: sparse.csr_matrix, lower: np.ndarray, upper: np.ndarray) -> bool:
        """Whether a point consistent with everything published also keeps every sum of
        ``rows`` within ``[lower, upper]`` (False when the solve fails: doubt)."""
        highs = self._highs
        if len(self._support):  # no objective: any point will do
            highs.changeColsCost(len(self._support), self._support,
                                 np.zeros(len(self._support)))
            self._support = np.zeros(0, dtype=np.int64)
        added = sparse.csr_matrix(rows)
        highs.addRows(added.shape[0],
                      np.where(np.isinf(lower), -highspy.kHighsInf, lower),
                      np.where(np.isinf(upper), highspy.kHighsInf, upper),
                      added.nnz, added.indptr[:-1].astype(np.int32),
                      added.indices.astype(np.int32), added.data)
        try:
            self._budget.spend()
            highs.run()  # warm: from the basis of the last solve
            return bool(highs.getModelStatus() == highspy.HighsModelStatus.kOptimal)
        finally:
            extra = np.arange(self._rows, self._rows + added.shape[0], dtype=np.int32)
            highs.deleteRows(len(extra), extra)

    def optimum(self, support: np.ndarray, *, maximise: bool) -> tuple[float, np.ndarray]:
        """The least or greatest sum of the classes ``support`` (infinite where unbounded,
        NaN where no solve succeeds), with the duals of the published sums."""
        highs = self._highs
        if len(self._support):
            highs.changeColsCost(len(self._support), self._support,
                                 np.zeros(len(self._support)))
        highs.changeColsCost(len(support), support, np.ones(len(support)))
        self._support = support
        highs.changeObjectiveSense(highspy.ObjSense.kMaximize if maximise
                                   else highspy.ObjSense.kMinimize)
        self._budget.spend()
        highs.run()
        status = highs.getModelStatus()
        if status == highspy.HighsModelStatus.kOptimal:
            value = float(highs.getInfo().objective_function_value)
            return value, np.asarray(highs.getSolution().row_dual)
        if status == highspy.HighsModelStatus.kUnbounded:
            return (math.inf if maximise else -math.inf), np.zeros(self._rows)
        if status == highspy.HighsModelStatus.kInfeasible and not self._signed:
            # some atom is negative after all: assume no sign from here on
            self._signed = True
            self._highs, self._support = self._model(signed=True), np.zeros(0, dtype=np.int64)
            return self.optimum(support, maximise=maximise)
        return math.nan, np.ones(self._rows)  # doubt: narrowed, every sum binding


@dataclass(frozen=True, slots=True)
class _Classes:
    count: int
    #: (form position, class) for every class a form covers.
    incidence: tuple[np.ndarray, np.ndarray]


def _classes(forms: Sequence[BitMap64]) -> _Classes:
    """The atoms of ``forms`` grouped by which forms cover them.

    Each atom gets a signature, two sums of random weights of the forms holding it (added in
    the order of the forms, so equal sets of forms give equal sums); atoms with equal
    signatures form a class. Atoms with different forms could only share a signature by
    coincidence; the partition is then verified (every form must be a union of whole classes)
    and, if it is not, every atom is its own class: exact, only slower.
    """
    universe = np.frombuffer(BitMap64.union(BitMap64(), *forms).to_array(), dtype=np.uint64)
    arrays = [np.frombuffer(f.to_array(), dtype=np.uint64) for f in forms]
    sizes = np.array([len(a) for a in arrays], dtype=np.int64)
    owner = np.repeat(np.arange(len(forms)), sizes)
    atom = np.searchsorted(universe, np.concatenate(arrays)) if arrays else owner
    rng = np.random.default_rng(0x5EED)
    weights = rng.random((2, len(forms)))
    s1 = np.bincount(atom, weights=weights[0][owner], minlength=len(universe))
    s2 = np.bincount(atom, weights=weights[1][owner], minlength=len(universe))
    _, cls = np.unique(np.stack([s1, s2], axis=1), axis=0, return_inverse=True)
    cls = cls.reshape(-1)
    count = int(cls.max()) + 1 if len(cls) else 0
    incidence = sparse.coo_matrix((np.ones(len(atom)), (owner, cls[atom])),
                                  shape=(len(forms), count)).tocsr()
    incidence.sum_duplicates()
    rows = np.repeat(np.arange(len(forms)), np.diff(incidence.indptr))
    cols = incidence.indices
    if not np.array_equal(incidence.data, np.bincount(cls, minlength=count)[cols]):
        count = len(universe)  # a coincidence: one class per atom
        incidence = sparse.coo_matrix((np.ones(len(atom)), (owner, atom)),
                                      shape=(len(forms), count)).tocsr()
        incidence.sum_duplicates()
        rows = np.repeat(np.arange(len(forms)), np.diff(incidence.indptr))
        cols = incidence.indices
    return _Classes(count, (rows.astype(np.int64), cols.astype(np.int64)))
