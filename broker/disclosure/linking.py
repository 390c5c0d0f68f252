"""Which cells of a protected table may be published, given everything published before.

Each cell releases one linear form per quantity it carries (see ``broker.disclosure.linked``):
the count of distinct enterprises is the form over its enterprises, one unknown each whatever
rows of it the cell covers (an attacker who knows that firms report every month equates their
presence in any two periods, so the audit does too); a sum, a mean or a ratio
releases the sum of each field it uses, the form over the rows with a value. A mean is that
sum divided by the number of values, which the attacker is assumed to know; a ratio is two
sums. So a cell is checked by the forms of every quantity it carries.

Two checks, in this order:

1. **Exact** (simulatable). The cells withheld as too small or dominated are registered first
   as protected forms (no later release may make their totals derivable), then the published
   candidates are added one by one, table cells before margins, each with all its forms or
   none; a cell whose forms would disclose an enterprise or a protected form is withheld as
   ``linked``. This looks at no value: only at which rows and enterprises each cell covers and
   at what is already published.
2. **Intervals** (``broker.disclosure.intervals``). With the table's published sums and their
   values added, no protected sum of the history (this table's included) may be bounded by
   linear programming inside its protection interval. If one would be, the published cells that
   share atoms with the narrowed sums are withheld as ``linked`` and the table is audited
   again; if that is not enough, every cell not published before is withheld. So is every
   cell the table would add when the check would need more than ``MAX_SOLVES`` programmes
   or ``MAX_SECONDS``: doubt withholds, and a query never waits on an ever longer history.
   A protected sum that earlier releases had already narrowed when it was registered keeps
   the interval it had then (what is public cannot be taken back; it must not narrow
   further).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
from pyroaring import BitMap64

from broker.disclosure.cells import ENTITIES, CellTable, Index
from broker.disclosure.intervals import Budget, IntervalSystem, OverBudget
from broker.disclosure.linked import OWNER_SHIFT, LinkedSystem
from broker.domain.ledger import PROTECTED, PUBLISHED, Form
from broker.domain.queries import SuppressionReason

#: Reasons that make a cell's own total something to protect.
_SENSITIVE = frozenset({SuppressionReason.MIN_ENTITIES, SuppressionReason.DOMINANCE})

Outcome = tuple[Index, SuppressionReason | None]

#: Rounds that withhold only the most binding cells before the interval check withholds
#: every cell touching a narrowed sum, and as many again before it withholds everything the
#: table would add (each round audits the whole table again).
_ROUNDS = 8


@dataclass(slots=True)
class History:
    """Everything published from one dataset, per quantity: the exact system of every
    quantity, and the interval system of every sum."""

    exact: dict[str, LinkedSystem] = field(default_factory=dict)
    intervals: dict[str, IntervalSystem] = field(default_factory=dict)

    def ensure(self, quantities: Sequence[str]) -> History:
        """The systems of ``quantities`` created where missing."""
        for q in quantities:
            self.exact.setdefault(q, LinkedSystem())
            if q != ENTITIES:
                self.intervals.setdefault(q, IntervalSystem())
        return self

    def replay(self, form: Form) -> None:
        """Apply a form the ledger holds."""
        protected = form.kind == PROTECTED
        self.exact.setdefault(form.quantity, LinkedSystem()).replay(form.atoms,
                                                                      protected=protected)
        if form.bounds is not None:
            system = self.intervals.setdefault(form.quantity, IntervalSystem())
            system.signed |= form.signed
            if protected:
                system.protect(form.atoms, *form.bounds)
            else:
                system.publish(form.atoms, form.bounds[0])
            system.commit()

    def mark(self) -> dict[str, int]:
        """A point to roll every system back to."""
        marks = {f"e{q}": s.mark() for q, s in self.exact.items()}
        marks.update({f"i{q}": s.mark() for q, s in self.intervals.items()})
        return marks

    def rollback(self, marks: Mapping[str, int]) -> None:
        """Undo every change since ``marks`` (all changes where a system has no mark)."""
        for q, s in self.exact.items():
            s.rollback(marks.get(f"e{q}", 0))
        for q, i in self.intervals.items():
            i.rollback(marks.get(f"i{q}", 0))

    def commit(self) -> None:
        """Keep every change."""
        for s in self.exact.values():
            s.commit()
        for i in self.intervals.values():
            i.commit()


@dataclass(frozen=True, slots=True)
class Linked:
    """The outcome of the release audit for one table."""

    released: list[Outcome]
    forms: list[Form]
    #: Whether the remainder row (if asked) may be published.
    remainder: bool


def cell_forms(table: CellTable, index: Index, quantities: Sequence[str]
               ) -> dict[str, BitMap64]:
    """The forms one cell (table cell or margin) releases, by quantity."""
    forms: dict[str, BitMap64] = {}
    for q in quantities:
        if q == ENTITIES:
            members = np.frombuffer(table.members.get(index).to_array(), dtype=np.uint32)
            forms[q] = BitMap64((members.astype(np.uint64) << np.uint64(OWNER_SHIFT)).tolist())
        else:
            forms[q] = table.fields[q.removeprefix("f:")].atoms.get(table, index)
    return forms


def link(
    table: CellTable,
    quantities: Sequence[str],
    released: Sequence[Outcome],
    history: History,
    levels: Mapping[str, np.ndarray],
    *,
    remainder: bool = False,
    budget: Budget | None = None,
    sensitive: frozenset[SuppressionReason] = frozenset(),
) -> Linked:
    """The released cells with those that would disclose withheld as ``linked``, and the
    forms to record; ``history`` is changed in place (roll it back to undo).

    ``levels`` are the protection levels of the table's sensitive cells per field;
    ``remainder`` asks whether the withheld table cells pooled may be published too;
    ``budget`` is the release's (one of its own by default); cells withheld for a reason in
    ``sensitive`` are protected like small and dominated ones.
    """
    history.ensure(quantities)
    table_values = _Values(table)
    budget = budget if budget is not None else Budget()
    forms = _protect(table, quantities, released, history, levels, table_values, budget,
                     _SENSITIVE | sensitive)
    candidates = [i for i, (_, reason) in enumerate(released) if reason is None]
    everything = {*candidates, len(released)}  # the remainder's place is len(released)
    forced: set[int] = set()
    # Withholding more only removes equations, so after a round only the sums it found
    # narrowed are checked again; the answer is returned only after a round checked all.
    suspects: dict[str, set[int]] | None = None
    rounds = 0
    exact = _ExactPass(table, quantities, released, history, table_values)
    ranks = {q: history.exact[q].rank for q in quantities}
    while True:
        if budget.expired:  # doubt: withhold everything this table would add
            forced |= everything
        marks = {q: s.mark() for q, s in history.intervals.items()}
        starts = {q: len(s.published) for q, s in history.intervals.items()}
        decided, added = exact.run(forced)
        pooled = None
        if remainder and len(released) not in forced:
            pooled = _pooled(table, quantities, decided, history, table_values)
            added += [(form, len(released)) for form in pooled or []]
        owners: dict[str, list[int]] = {}
        for form, owner in added:
            if form.bounds is not None:
                system = history.intervals[form.quantity]
                system.signed |= form.signed
                system.publish(form.atoms, form.bounds[0])
                owners.setdefault(form.quantity, []).append(owner)
        try:
            narrowed = _narrowed(history, quantities, ranks, starts, suspects, budget)
            if not narrowed and suspects is not None:
                suspects = None
                narrowed = _narrowed(history, quantities, ranks, starts, None, budget)
        except OverBudget:  # doubt: withhold everything this table would add
            _rollback_intervals(history, marks)
            forced |= everything
            continue
        if not narrowed:
            return Linked(decided, forms + [form for form, _ in added], pooled is not None)
        suspects = {q: set(found) for q, found in narrowed.items()}
        _rollback_intervals(history, marks)
        # Withhold what binds the failed bounds; failing that (or after a few rounds, each
        # of which audits the table again), what touches the narrowed sums; failing that,
        # everything this table would add.
        rounds += 1
        blamed = {owners[q][position - starts[q]] for q, found in narrowed.items()
                  for binding in found.values() for position in binding}
        touching = _touching(table, quantities, released, candidates, narrowed, history)
        steps = ([blamed] if rounds <= _ROUNDS else []) + (
            [blamed | touching] if rounds <= 2 * _ROUNDS else []) + [everything]
        for more in steps:
            if more - forced:
                forced |= more
                break


@dataclass(frozen=True, slots=True)
class SourcePart:
    """One source of a cross-source table as its own dataset's history sees it: the table's
    fields it holds (qualified name -> the dataset's own name) and the quantities it keeps."""

    history: History
    fields: Mapping[str, str]
    quantities: tuple[str, ...]


def link_sources(table: CellTable, parts: Sequence[SourcePart], released: Sequence[Outcome],
                 levels: Mapping[str, np.ndarray], *, remainder: bool = False,
                 passes: int = 4) -> tuple[list[Outcome], list[list[Form]], bool]:
    """The release audit of a cross-source table against each source dataset's history.

    A joined cell's sum of one source's field is a sum over that dataset's rows (its atoms),
    and its count a form over enterprises numbered as in every dataset (the county
    register); so each source's quantities are audited in that dataset's history, under the
    dataset's own field names, where they meet every single-source release of it. A cell
    one source withholds is withheld for all; when a later source withholds more, every
    source is audited again on the final outcome, so no history records a form of a cell
    that is not published (after ``passes``, the forms of cells withheld later stay
    recorded: the history then believes more is published, which only withholds more).
    Returns the outcome, each part's forms to record, and whether the remainder may go.
    """
    marks = [part.history.mark() for part in parts]
    current, pooled = list(released), remainder
    budget = Budget()  # one for the whole release: past it, every source withholds what is new
    for attempt in range(passes):
        start, start_pooled = current, pooled
        forms: list[list[Form]] = []
        for part in parts:
            view = replace(table, fields={own: table.fields[name]
                                          for name, own in part.fields.items()})
            own_levels = {own: levels[name] for name, own in part.fields.items()
                          if name in levels}
            # Cells a source's ledger withheld are protected too: a joined cell withheld for
            # differencing after protection (a cross-check's sub-populations) has no
            # complements of its own.
            linked = link(view, part.quantities, current, part.history, own_levels,
                          remainder=pooled, budget=budget,
                          sensitive=frozenset({SuppressionReason.DIFFERENCING}))
            current, pooled = linked.released, pooled and linked.remainder
            forms.append(linked.forms)
        if (current == start and pooled == start_pooled) or attempt + 1 == passes:
            return current, forms, pooled
        for part, mark in zip(parts, marks, strict=True):
            part.history.rollback(mark)
    raise AssertionError("unreachable")  # pragma: no cover


def _protect(table: CellTable, quantities: Sequence[str], released: Sequence[Outcome],
             history: History, levels: Mapping[str, np.ndarray], values: _Values,
             budget: Budget, sensitive: frozenset[SuppressionReason] = _SENSITIVE
             ) -> list[Form]:
    """Register the table's sensitive cells as protected forms, exact and interval; a
    protection interval that earlier releases already narrow is kept as it now stands
    (unless the budget runs out first: then every interval is kept whole, which can only
    make later releases withhold more)."""
    forms: list[Form] = []
    pending: list[tuple[str, int]] = []
    for index, reason in released:
        if reason not in sensitive:
            continue
        for q, atoms in cell_forms(table, index, quantities).items():
            if not atoms or not history.exact[q].protect(atoms):
                continue
            if q == ENTITIES:
                forms.append(Form(q, PROTECTED, atoms))
                continue
            name = q.removeprefix("f:")
            x, level = values.total(name, index), float(levels[name][index])
            system = history.intervals[q]
            system.signed |= values.signed(name)
            system.protect(atoms, x - level, x + level)
            pending.append((q, len(system.protected) - 1))
    try:
        for q in sorted({q for q, _ in pending}):
            history.intervals[q].settle([pid for p, pid in pending if p == q], budget)
    except OverBudget:
        pass
    for q, pid in pending:
        system = history.intervals[q]
        kept = system.protected[pid]
        forms.append(Form(q, PROTECTED, kept.atoms, (kept.low, kept.high), system.signed))
    return forms


def _rollback_intervals(history: History, marks: Mapping[str, int]) -> None:
    for q, mark in marks.items():
        history.intervals[q].rollback(mark)


class _ExactPass:
    """The exact audit of one table: table cells before margins, each published with all its
    forms or withheld as ``linked``; cells in ``forced`` are withheld as ``linked`` outright.

    A later round that withholds more starts again at the first cell it changes: the exact
    systems are rolled back to their state before that cell (every earlier cell's outcome
    stays the same, since it was decided on what came before it), and the remainder row, if
    any, which comes after every cell, is rolled back with them.
    """

    def __init__(self, table: CellTable, quantities: Sequence[str],
                 released: Sequence[Outcome], history: History, values: _Values) -> None:
        self._table, self._quantities = table, quantities
        self._released, self._history = released, history
        self._order = sorted(range(len(released)),
                             key=lambda i: table.is_margin(released[i][0]))
        self._position = {i: k for k, i in enumerate(self._order)}
        self._position[len(released)] = len(self._order)  # the remainder: after every cell
        self._marks: list[dict[str, int]] = []  # before each position, and after the last
        self._done: list[tuple[SuppressionReason | None, list[tuple[Form, int]]]] = []
        self._forced: set[int] = set()
        self._values = values

    def run(self, forced: set[int]) -> tuple[list[Outcome], list[tuple[Form, int]]]:
        """Every cell's outcome, and the forms published with their cell's position in
        ``released``."""
        new = forced - self._forced
        self._forced = set(forced)
        start = min((self._position[i] for i in new), default=len(self._marks))
        if start < len(self._marks):
            for q, mark in self._marks[start].items():
                self._history.exact[q].rollback(mark)
            del self._marks[start:], self._done[start:]
        for k in range(len(self._done), len(self._order)):
            self._marks.append(self._mark())
            i = self._order[k]
            index, reason = self._released[i]
            published: list[tuple[Form, int]] = []
            if reason is None:
                added = None if i in forced else publish(
                    cell_forms(self._table, index, self._quantities), self._history.exact)
                if added is None:
                    reason = SuppressionReason.LINKED
                else:
                    published = [(self._values.valued(form, index), i) for form in added]
            self._done.append((reason, published))
        if len(self._marks) == len(self._order):
            self._marks.append(self._mark())
        decided = {i: self._done[k][0] for k, i in enumerate(self._order)}
        return ([(self._released[i][0], decided[i]) for i in range(len(self._released))],
                [pair for _, forms in self._done for pair in forms])

    def _mark(self) -> dict[str, int]:
        return {q: self._history.exact[q].mark() for q in self._quantities}


def _pooled(table: CellTable, quantities: Sequence[str], decided: Sequence[Outcome],
            history: History, values: _Values) -> list[Form] | None:
    """The forms of the withheld table cells pooled (the remainder row), published if the
    exact audit allows, else None."""
    shown = {ix for ix, reason in decided if reason is None}
    withheld = [ix for ix in np.ndindex(*table.shape)
                if not table.is_margin(ix) and ix not in shown]
    rest: dict[str, BitMap64] = {q: BitMap64() for q in quantities}
    for index in withheld:
        for q, atoms in cell_forms(table, index, quantities).items():
            rest[q] |= atoms
    added = publish(rest, history.exact)
    if added is None:
        return None
    out = []
    for form in added:
        if form.quantity == ENTITIES:
            out.append(form)
            continue
        name = form.quantity.removeprefix("f:")
        total = values.pooled(name, withheld)
        out.append(Form(form.quantity, form.kind, form.atoms, (total, total),
                        values.signed(name)))
    return out


def _narrowed(history: History, quantities: Sequence[str], ranks: Mapping[str, int],
              starts: Mapping[str, int], suspects: Mapping[str, set[int]] | None,
              budget: Budget) -> dict[str, dict[int, set[int]]]:
    """The protected sums the release narrows by quantity (of ``suspects`` only, unless
    None), each with the sums of this release that bind it: only where the release added
    rank (a form in the span of the earlier ones moves no bound)."""
    out: dict[str, dict[int, set[int]]] = {}
    for q in quantities:
        if q == ENTITIES or history.exact[q].rank == ranks[q]:
            continue
        system = history.intervals[q]
        which = (range(len(system.protected)) if suspects is None
                 else sorted(suspects.get(q, ())))
        hit = system.culprits(which, since=starts[q], budget=budget)
        if hit:
            out[q] = hit
    return out


def _touching(table: CellTable, quantities: Sequence[str], released: Sequence[Outcome],
              candidates: Sequence[int], narrowed: Mapping[str, Mapping[int, set[int]]],
              history: History) -> set[int]:
    """The candidate cells whose sums share atoms with a narrowed protected sum."""
    out = set()
    for i in candidates:
        forms = cell_forms(table, released[i][0], quantities)
        for q, pids in narrowed.items():
            system = history.intervals[q]
            if any(forms[q].intersect(system.protected[pid].atoms) for pid in pids):
                out.add(i)
                break
    return out


def publish(cell: Mapping[str, BitMap64], systems: Mapping[str, LinkedSystem]
            ) -> list[Form] | None:
    """Add every form of one cell, or none of them: the forms to record, or None when the
    cell would disclose (every system then as it was). A form published before exactly (the
    same atoms, so the same value) is not recorded again: it tells nothing new, and the
    ledger and the interval programme do not grow when a dashboard is asked again."""
    marks = {q: systems[q].mark() for q in cell}
    new = []
    for q, atoms in cell.items():
        if not atoms:
            continue
        if not systems[q].known(atoms):
            new.append(Form(q, PUBLISHED, atoms))
        if not systems[q].add(atoms):
            for p, mark in marks.items():
                systems[p].rollback(mark)
            return None
    return new


class _Values:
    """The table's sums per cell, and whether a field has negative contributions (worked
    out once per field: it is asked for every published form)."""

    def __init__(self, table: CellTable) -> None:
        self._table = table
        self._signed: dict[str, bool] = {}

    def total(self, name: str, index: Index) -> float:
        return float(np.nan_to_num(self._table.fields[name].total[index]))

    def pooled(self, name: str, indices: Sequence[Index]) -> float:
        """The sum of the field over ``indices``: exact sums added exactly, doubles by
        ``math.fsum`` (correctly rounded), so it does not depend on the cells' order."""
        stats = self._table.fields[name]
        if stats.exact is not None:
            return float(sum(stats.sum_at(ix) for ix in indices))
        return math.fsum(float(np.nan_to_num(stats.total[ix])) for ix in indices)

    def signed(self, name: str) -> bool:
        if name not in self._signed:
            stats = self._table.fields[name]
            total = np.nan_to_num(stats.total)
            self._signed[name] = bool(np.any(
                stats.abs_total - total > 1e-9 * np.maximum(np.abs(total), 1.0)))
        return self._signed[name]

    def valued(self, form: Form, index: Index) -> Form:
        """``form`` with its published value (sums only)."""
        if form.quantity == ENTITIES:
            return form
        name = form.quantity.removeprefix("f:")
        value = self.total(name, index)
        return Form(form.quantity, form.kind, form.atoms, (value, value), self.signed(name))
