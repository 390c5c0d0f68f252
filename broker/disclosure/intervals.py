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
the classes. A point of that programme putting a protected sum beyond an end of its interval
proves that end kept; HiGHS finds such points by maximising (minimising) the sum of the forms
still open, and, where that proves none, the first open form alone, which is then its exact
bound. The programme is scaled so that its largest number is at most one, and every doubt (an
infeasible or failed solve, a bound within the solver's tolerance of the interval) counts as
narrowed: an error can only make the broker withhold more.

The programme lives as long as the history (``_Live``): a release refines the classes (new
columns), adds its sums (new rows, deleted again if it is rolled back) and solves on from the
last basis, so its cost follows what it adds and how far the optimum moves, not the history's
size alone.

Only what can have changed is checked: protected forms registered by this release, and, when a
release publishes a form outside the span of the earlier ones, every protected form of the
quantity (a form in the span adds no information, so no bound moves).
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import highspy
import numpy as np
from pyroaring import BitMap64
from scipy import sparse

#: A bound counts as narrowed unless it clears the interval by this much of the programme's
#: scale (a hundred times HiGHS's feasibility tolerance on the scaled programme): doubt
#: withholds.
_SLACK = 1e-8
#: HiGHS's feasibility tolerances on the scaled programme (its defaults are 1e-7): the
#: programme's coefficients are all one and its numbers at most one, so it stays well within
#: what double precision resolves, and a hundred times below ``_SLACK``.
_TOLERANCE = 1e-10


#: Every class lies within [-_BOX, _BOX] (within [0, _BOX] where atoms are not negative) on
#: the scaled programme, whose published and protected numbers are at most one: no solve is
#: unbounded, so every solve yields a point. The box only shrinks what the attacker may
#: reach, so it can only make a bound look narrower (withhold more), and no interval end
#: lies near it.
_BOX = 64.0
#: Where atoms are not negative, a least value this close to zero, relative to the form's
#: own interval (and within ``_SLACK`` of the programme's scale), counts as zero.
_ZERO = 1e-6

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
    _live: _Live = field(default_factory=lambda: _Live(), repr=False, compare=False)

    def mark(self) -> int:
        """A point to roll back to."""
        self._marks.append((len(self.published), len(self.protected), self.signed))
        return len(self._marks) - 1

    def rollback(self, mark: int) -> None:
        """Forget what was added since ``mark``."""
        published, protected, signed = self._marks[mark]
        del self.published[published:], self.protected[protected:], self._marks[mark:]
        self.signed = signed
        self._live.truncate(published)

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
        try:
            return self._check(checked, since, budget)
        except _Broken:  # build the programme again on the next check; doubt for now
            self._live = _Live()
            raise OverBudget from None

    def _check(self, checked: list[int], since: int, budget: Budget) -> dict[int, _Found]:
        live = self._live
        forms = [self.protected[p] for p in checked]
        live.sync(self.published, self.signed,
                  max(max(abs(f.low), abs(f.high)) for f in forms))
        supports = live.supports([f.atoms for f in forms])
        scale = live.scale
        objectives = sparse.csr_matrix(
            (np.ones(sum(len(s) for s in supports)),
             np.concatenate(supports),
             np.concatenate([[0], np.cumsum([len(s) for s in supports])])),
            shape=(len(forms), live.columns))
        high = np.array([f.high for f in forms]) / scale
        low = np.array([f.low for f in forms]) / scale
        size = np.maximum(np.abs(high), high - low)
        failed_high = _failures(live, objectives, high, size, budget, maximise=True)
        failed_low = _failures(live, objectives, low, size, budget, maximise=False)
        out = {}
        for position in sorted(failed_high.keys() | failed_low.keys()):
            binding: set[int] = set()
            for found in (failed_low.get(position), failed_high.get(position)):
                duals = None if found is None else found[1]
                if duals is None:
                    continue
                weight = np.abs(duals[since:])
                if len(weight) and weight.max() > 1e-9:  # the most binding new sum
                    binding.add(since + int(weight.argmax()))
            low_found = failed_low.get(position, (-math.inf, None))[0]
            high_found = failed_high.get(position, (math.inf, None))[0]
            out[checked[position]] = _Found(low_found * scale, high_found * scale, scale,
                                            binding)
        return out


def _failures(live: _Live, objectives: sparse.csr_matrix, ends: np.ndarray,
              size: np.ndarray, budget: Budget, *, maximise: bool
              ) -> dict[int, tuple[float, np.ndarray | None]]:
    """The forms (rows of ``objectives``) whose greatest (least) value over everything
    published does not clear the upper (lower) end ``ends`` of their protection interval,
    each with that value and the duals of the published sums at it.

    A bound counts as kept only if it clears the end by ``_SLACK``, except that where atoms
    are not negative a lower end at or below zero asks only that zero stay possible (the
    least value is then a vertex on the bound zero): a least value within ``_ZERO`` of the
    form's own ``size`` (its interval's reach), and within ``_SLACK``, is taken as zero.

    A point consistent with everything published that puts a form beyond its target proves
    that form's side kept, so each solve certifies every form it happens to carry far
    enough: first a solve for the sum of all forms still open, and when that certifies
    none, a solve for the first open form alone, which either certifies it or is its exact
    bound. Most protected sums are far from narrowed, so most checks cost one programme per
    side, not one per sum. A failed solve is doubt: the form counts as narrowed.
    """
    failed: dict[int, tuple[float, np.ndarray | None]] = {}
    by_column = objectives.T.tocsr()
    is_open = np.ones(objectives.shape[0], dtype=bool)
    together = True
    while is_open.any():
        open_ = np.flatnonzero(is_open)
        first = open_[0]
        weights = is_open.astype(float) if together else np.zeros(len(is_open))
        weights[first] = 1.0
        costs = by_column @ weights
        value, point, duals = live.solve(costs, maximise=maximise, budget=budget)
        kept = np.zeros(len(open_), dtype=bool)
        if point is not None:
            reached = (objectives @ point)[open_]
            if maximise:
                kept = reached >= ends[open_] + _SLACK
            else:
                wanted = ends[open_]
                zero = np.minimum(_SLACK, _ZERO * size[open_])
                kept = reached <= (wanted - _SLACK if live.free else
                                   np.where(wanted <= 0.0, zero, wanted - _SLACK))
        elif not together and math.isinf(value):
            kept[0] = True  # unbounded: nothing bounds it on this side
        if not together and not kept[0]:
            failed[int(first)] = (value, duals)
            kept[0] = True
        # together again once a solve carries more than its own form
        together = bool(kept.any()) if together else int(kept.sum()) > 1
        is_open[open_[kept]] = False
    return failed


@dataclass(frozen=True, slots=True)
class _Found:
    low: float
    high: float
    scale: float
    binding: set[int]


class _Partition:
    """The atoms of every form seen so far, grouped into classes: atoms that every form seen
    covers alike, whose sum is one variable of the attacker's programme.

    A form is made a union of classes by splitting each class it covers in part. A finer
    partition than needed changes no bound (the two halves of a split class enter every
    earlier sum alike), so splits are never undone, and each form costs work in its own
    size, not in the history's.
    """

    def __init__(self) -> None:
        self.atoms = np.zeros(0, dtype=np.uint64)  # sorted
        self.classes = np.zeros(0, dtype=np.int64)  # the class of each atom
        self.sizes = np.zeros(0, dtype=np.int64)  # atoms per class
        #: How many refinements split a class, and for each class the count when it was
        #: last split (-1: never): a form that is a union of classes stays one, with the
        #: same classes, until a class it covers is split.
        self.splits = 0
        self.split_at = np.zeros(0, dtype=np.int64)

    @property
    def count(self) -> int:
        return len(self.sizes)

    def refine(self, atoms: BitMap64) -> tuple[np.ndarray, int]:
        """Split classes so that ``atoms`` is a union of classes: the class each new class
        was split from, and how many new classes (numbered before the split ones) hold only
        atoms no earlier form covered."""
        values = np.frombuffer(atoms.to_array(), dtype=np.uint64)
        if not len(values):
            return np.zeros(0, dtype=np.int64), 0
        fresh = 0
        where = np.searchsorted(self.atoms, values)
        known = where < len(self.atoms)
        known[known] = self.atoms[where[known]] == values[known]
        if not known.all():  # atoms no form covered yet: one new class, in no sum so far
            new = values[~known]
            merged = np.concatenate([self.atoms, new])
            order = np.argsort(merged, kind="stable")
            self.atoms = merged[order]
            self.classes = np.concatenate(
                [self.classes, np.full(len(new), self.count, dtype=np.int64)])[order]
            self.sizes = np.append(self.sizes, len(new))
            self.split_at = np.append(self.split_at, -1)
            fresh = 1
            where = np.searchsorted(self.atoms, values)
        covered = self.classes[where]
        seen, counts = np.unique(covered, return_counts=True)
        part = counts < self.sizes[seen]
        parents = seen[part]
        if len(parents):
            self.split_at[parents] = self.splits
            self.splits += 1
            first = self.count
            moved = np.isin(covered, parents)
            self.classes[where[moved]] = first + np.searchsorted(parents, covered[moved])
            self.sizes[parents] -= counts[part]
            self.sizes = np.append(self.sizes, counts[part])
            self.split_at = np.append(self.split_at, np.full(len(parents), -1))
        return parents, fresh

    def support(self, atoms: BitMap64) -> np.ndarray:
        """The classes of ``atoms``, every one of which some refinement has seen."""
        values = np.frombuffer(atoms.to_array(), dtype=np.uint64)
        return np.unique(self.classes[np.searchsorted(self.atoms, values)])


class _Broken(Exception):
    """HiGHS refused a change to the programme: it no longer matches what was published."""


def _ok(result: Any) -> Any:
    """``result`` of a HiGHS call, or ``_Broken`` when it reports an error."""
    status = result[0] if isinstance(result, tuple) else result
    if status == highspy.HighsStatus.kError:
        raise _Broken
    return result


def _quietly_started() -> None:
    """Start HiGHS once with the process's standard output closed: its first instance prints
    a banner there, which would land in the middle of a command's output."""
    sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:  # no standard output at all: nothing to keep clean
        highspy.Highs()  # type: ignore[no-untyped-call]  # highspy: no annotations
        return
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 1)
            highspy.Highs()  # type: ignore[no-untyped-call]  # highspy: no annotations
    finally:
        os.dup2(saved, 1)
        os.close(saved)


_quietly_started()  # at import, before any thread of the broker writes


def _highs() -> highspy.Highs:
    highs = highspy.Highs()  # type: ignore[no-untyped-call]  # highspy: no annotations
    highs.setOptionValue("output_flag", False)
    for option in ("primal_feasibility_tolerance", "dual_feasibility_tolerance"):
        highs.setOptionValue(option, _TOLERANCE)
    return highs


class _Live:
    """The attacker's programme for one quantity, kept from one release to the next: the
    classes as columns and the published sums as rows, with HiGHS's last basis, so that a
    release adds its rows and columns and warm-starts from where the last check ended.

    Row ``i`` is published sum ``i``; rolling a release back deletes its rows. Values are
    divided by a power of two at least as large as every number of the programme (so its
    largest number is at most one); when a larger number comes, every row is scaled again.
    """

    def __init__(self) -> None:
        self.partition = _Partition()
        #: One model per side (least, greatest): each warm-starts from its own last basis,
        #: which the next check of the same side needs few pivots from.
        self.models = (_highs(), _highs())
        self.values: list[float] = []  # the unscaled value of each row
        self.scale = 1.0
        #: Whether columns are free: when the field has negative contributions.
        self.free = False
        #: id(atoms) -> (atoms, the partition's split count then, its classes)
        self._supports: dict[int, tuple[BitMap64, int, np.ndarray]] = {}

    @property
    def columns(self) -> int:
        return self.partition.count

    def refine(self, atoms: BitMap64) -> None:
        """Make ``atoms`` a union of classes, adding a column for every new class."""
        self._grow(*self.partition.refine(atoms))

    def supports(self, forms: Sequence[BitMap64]) -> list[np.ndarray]:
        """The classes of each of ``forms``, once every one of them has split the classes it
        needs to (a later form may split a class an earlier one covers). A form's classes are
        kept while no class has been split since."""
        kept, partition = self._supports, self.partition

        def current(atoms: BitMap64) -> tuple[BitMap64, int, np.ndarray] | None:
            hit = kept.get(id(atoms))
            if hit is None or hit[0] is not atoms:
                return None
            if len(hit[2]) and partition.split_at[hit[2]].max() >= hit[1]:
                return None  # a class it covers was split since
            return hit

        for atoms in forms:
            if current(atoms) is None:
                self.refine(atoms)
        out = []
        fresh: dict[int, tuple[BitMap64, int, np.ndarray]] = {}
        for atoms in forms:
            hit = current(atoms) or (atoms, partition.splits, partition.support(atoms))
            fresh[id(atoms)] = hit
            out.append(hit[2])
        self._supports = fresh
        return out

    def _grow(self, parents: np.ndarray, fresh: int) -> None:
        bound = -_BOX if self.free else 0.0
        for highs in self.models:
            if fresh:  # numbered before the split ones (see _Partition.refine)
                _ok(highs.addCols(fresh, np.zeros(fresh), np.full(fresh, bound),
                                  np.full(fresh, _BOX), 0, np.zeros(fresh, np.int32),
                                  np.zeros(0, np.int32), np.zeros(0)))
            if len(parents):
                n, columns = len(parents), parents.astype(np.int32)
                nnz = _ok(highs.getCols(n, columns))[-1]
                _, starts, index, value = _ok(highs.getColsEntries(n, columns))
                _ok(highs.addCols(n, np.zeros(n), np.full(n, bound), np.full(n, _BOX),
                                  nnz, starts, index[:nnz], value[:nnz]))

    def sync(self, published: Sequence[Bounded], signed: bool, largest: float) -> None:
        """Bring the rows up to ``published`` (already cut back by ``truncate``), the scale
        up to ``largest`` and the columns' sign up to ``signed``."""
        new = published[len(self.values):]
        needed = max([largest, *(abs(b.low) for b in new), self.scale])
        if needed > self.scale:
            self.scale = float(2.0 ** math.ceil(math.log2(needed)))
            if self.values:
                scaled = np.array(self.values) / self.scale
                for highs in self.models:  # highspy's stubs lack changeRowsBounds
                    _ok(highs.changeRowsBounds(len(scaled),  # type: ignore[attr-defined]
                                               np.arange(len(scaled), dtype=np.int32),
                                               scaled, scaled))
        if new:
            for b in new:  # every split first: a row takes its classes once they are final
                self.refine(b.atoms)
            supports = [self.partition.support(b.atoms) for b in new]
            starts = np.concatenate([[0], np.cumsum([len(s) for s in supports])[:-1]])
            index = np.concatenate(supports).astype(np.int32)
            scaled = np.array([b.low for b in new]) / self.scale
            for highs in self.models:
                _ok(highs.addRows(len(new), scaled, scaled, len(index),
                                  starts.astype(np.int32), index, np.ones(len(index))))
            self.values.extend(b.low for b in new)
        self._set_free(signed)

    def truncate(self, rows: int) -> None:
        """Forget the rows from ``rows`` on."""
        if rows < len(self.values):
            gone = np.arange(rows, len(self.values), dtype=np.int32)
            for highs in self.models:
                _ok(highs.deleteRows(len(gone), gone))
            del self.values[rows:]

    def _set_free(self, free: bool) -> None:
        if free != self.free and self.columns:
            n = self.columns
            for highs in self.models:
                _ok(highs.changeColsBounds(n, np.arange(n, dtype=np.int32),
                                           np.full(n, -_BOX if free else 0.0),
                                           np.full(n, _BOX)))
        self.free = free

    def solve(self, costs: np.ndarray, *, maximise: bool, budget: Budget
              ) -> tuple[float, np.ndarray | None, np.ndarray | None]:
        """The greatest or least ``costs`` times the columns: the value (infinite where
        unbounded, NaN where no solve succeeds), the point reaching it and the duals of the
        rows (None where there is none)."""
        highs = self.models[maximise]
        # From the last basis the primal simplex goes on in tens or hundreds of pivots where
        # the dual would redo a thousand (measured); the very first solve has no basis, and
        # the dual simplex is quicker from nothing.
        _ok(highs.setOptionValue("simplex_strategy", 4 if highs.getBasis().valid else 1))
        _ok(highs.changeColsCost(len(costs), np.arange(len(costs), dtype=np.int32), costs))
        _ok(highs.changeObjectiveSense(highspy.ObjSense.kMaximize if maximise
                                       else highspy.ObjSense.kMinimize))
        budget.spend()
        highs.run()  # warm: from the basis of the last solve
        status = highs.getModelStatus()
        if status == highspy.HighsModelStatus.kOptimal:
            solution = highs.getSolution()
            point = np.asarray(solution.col_value)
            # A point is proof only if it keeps every published sum and every bound well
            # within the margin the checks demand; HiGHS's tolerance is scaled internally.
            rows = np.abs(np.asarray(solution.row_value) - np.array(self.values) / self.scale)
            low = -_BOX if self.free else 0.0
            off = max(float(rows.max(initial=0.0)),
                      float(np.maximum(low - point, point - _BOX).max(initial=0.0)))
            if off <= _SLACK / 10:
                return (float(highs.getInfo().objective_function_value), point,
                        np.asarray(solution.row_dual))
        elif status == highspy.HighsModelStatus.kUnbounded:
            return (math.inf if maximise else -math.inf), None, None
        # Doubt: narrowed, every sum binding. Infeasible is doubt too: every published sum
        # holds at the true values, and atoms are taken as nonnegative only when the field
        # has no negative contribution, so only numerical trouble can make it so.
        return math.nan, None, np.ones(len(self.values))
