"""Disclosure control of one cell table: primary rules, differencing, complementary suppression.

The order matters. Primary rules and the differencing guard find the sensitive cells; only
then does complementary suppression choose complements, so that a cell withheld because of an
earlier release is protected against this table's margins like any other.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from pyroaring import BitMap

from broker.disclosure.cells import (
    ENTITIES,
    CellTable,
    Index,
    Total,
    ledger_key,
    measure_keys,
    measure_members,
    measure_values,
)
from broker.disclosure.complementary import Pattern, Quantity, suppress_complementary
from broker.disclosure.differencing import WITHHELD, Ledger
from broker.disclosure.plan import CellPlan
from broker.disclosure.primary import (
    below_frequency,
    dominance_excess,
    frequency_k,
    p_percent_excess,
    small_cell_protection,
)
from broker.domain.disclosure import Rules
from broker.domain.queries import SuppressionReason

#: The remainder row: its values, or None with the reason it is withheld.
Pooled = tuple[dict[str, float | int | None] | None, SuppressionReason | None]


@dataclass(frozen=True, slots=True)
class Protected:
    """The outcome for every released position of the table."""

    released: tuple[tuple[Index, SuppressionReason | None], ...]
    ledger: tuple[tuple[str, BitMap], ...]
    unprotectable: bool = False
    remainder: Pooled | None = None
    #: Per field, each cell's protection level (zero where the cell is not sensitive).
    levels: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def counts(self) -> dict[str, int]:
        """Withheld cells by reason."""
        return dict(Counter(r.value for _, r in self.released if r is not None))


def quantities(table: CellTable, rules: Rules, small: np.ndarray) -> dict[str, Quantity]:
    """The additive quantities of the table, with what an attacker knows of each cell.

    Enterprise counts: a cell withheld as too small has between 0 and k-1 enterprises (when
    that is why it was withheld); any other cell has at least k. Magnitudes: their sign.
    """
    k = rules.k_min
    entities = table.entities.astype(float)
    out = {
        ENTITIES: Quantity(
            value=entities,
            lower=np.where(small, 0.0, float(k)),
            upper=np.where(small & (table.entities < k), float(k - 1), np.inf),
        )
    }
    for name, stats in table.fields.items():
        total = np.nan_to_num(stats.total)
        out[name] = Quantity(
            value=total,
            lower=np.where(total >= 0, 0.0, -np.inf),
            upper=np.where(total >= 0, np.inf, 0.0),
        )
    return out


def rare_keys(table: CellTable, plan: CellPlan, rules: Rules,
              opaque: frozenset[str] = frozenset()) -> np.ndarray:
    """Cells keyed by a number or date that fewer than k enterprises have, on a dimension
    without a declared code list: never shown, not even as suppressed.

    Such keys come from the data, so a key alone would tell that some firm has that value (a
    day it reported on, a figure it declared). A value is shown only when its own margin
    passes the frequency rule; the cells it keys are withheld like small cells, so
    complementary suppression keeps them from being derived from the margins. Category
    keys (towns, industries) stay visible as suppressed cells: declare a code list to make
    an empty category look like a small one. Keys of the ``opaque`` dimensions (released as
    pseudonyms) are hidden the same way: a pseudonym per firm would count the firms of any
    cell, suppressed or not.
    """
    hidden = np.zeros(table.shape, dtype=bool)
    k = frequency_k(table)
    totals = tuple(len(d) for d in table.domains)
    for j, keys in enumerate(plan.keysets):
        if keys is not None or not (plan.figures[j] or plan.dimensions[j] in opaque):
            continue
        for position in range(len(table.domains[j])):
            margin = (*totals[:j], position, *totals[j + 1:])
            if k[margin] < rules.k_min:
                view = [slice(None)] * len(totals)
                view[j] = slice(position, position + 1)
                hidden[tuple(view)] = True
    return hidden


@dataclass(frozen=True, slots=True)
class _Sensitive:
    """The cells the primary rules and the differencing guard withhold, each for its reason.

    ``small``: below the frequency rule (keys never shown, see :func:`rare_keys`, included);
    ``dominated``: over a dominance or p% threshold and not small; ``differencing``: a
    population within k-1 enterprises of an earlier release's;
    ``excess``: per field, how far each cell is over the dominance thresholds.
    """

    small: np.ndarray
    dominated: np.ndarray
    differencing: np.ndarray
    excess: dict[str, np.ndarray]

    @property
    def primary(self) -> np.ndarray:
        """Every cell withheld on its own account."""
        cells: np.ndarray = self.small | self.dominated | self.differencing
        return cells


def protect(
    table: CellTable,
    plan: CellPlan,
    rules: Rules,
    *,
    ledger: Ledger,
    margins: bool,
    remainder: bool = False,
    opaque: frozenset[str] = frozenset(),
) -> Protected:
    """Decide every released cell of ``table``: published, or withheld and why.

    ``ledger`` holds the dataset's earlier releases; ``margins`` says whether the consumer
    asked for the totals (they are protected either way); ``remainder`` asks for one more
    row, the withheld table cells taken together, if it passes every rule itself.
    ``opaque`` names the dimensions whose keys are released as pseudonyms (see rare_keys).
    """
    measures = measure_keys(plan)
    hidden = rare_keys(table, plan, rules, opaque)
    released = [ix for ix in table.cells(margins=margins) if not hidden[ix]]
    sensitive = _sensitive(table, rules, hidden, released, ledger, measures)
    pattern = _complements(table, rules, sensitive, ledger, measures)
    reasons = [(index, _reason(index, sensitive, pattern)) for index in released]
    entries = _ledger_entries(table, measures, sensitive, pattern, reasons)
    pooled: Pooled | None = None
    if remainder and pattern.unprotectable:
        pooled = (None, SuppressionReason.COMPLEMENTARY)
    elif remainder:
        withheld = [ix for ix, reason in reasons
                    if reason is not None and not table.is_margin(ix)]
        withheld += [ix for ix in np.ndindex(*table.shape)
                     if hidden[ix] and not table.is_margin(ix)]
        grand = tuple(len(d) for d in table.domains)
        pooled = _remainder(table, plan, rules, withheld, ledger,
                            grand_withheld=bool(pattern.suppressed[grand]))
    levels = {name: level for name, level in _protection(table, rules, sensitive).items()
              if name != ENTITIES}
    return Protected(tuple(reasons), tuple(entries), pattern.unprotectable, pooled, levels)


def _sensitive(table: CellTable, rules: Rules, hidden: np.ndarray, released: list[Index],
               ledger: Ledger, measures: tuple[str, ...]) -> _Sensitive:
    """The primary rules, then the differencing guard on the released cells they pass."""
    small = below_frequency(table, rules) | hidden
    dominance, p_percent = dominance_excess(table, rules), p_percent_excess(table, rules)
    excess = {name: np.maximum(dominance[name], p_percent[name]) for name in table.fields}
    dominated = np.zeros(table.entities.shape, dtype=bool)
    for level in excess.values():
        dominated |= level > 0
    dominated &= ~small
    differencing = np.zeros(table.entities.shape, dtype=bool)
    for index in released:
        if small[index] or dominated[index]:
            continue
        if any(ledger.conflicts(ledger_key(table, index, m), measure_members(table, index, m),
                                rules.k_min)
               for m in measures):
            differencing[index] = True
    return _Sensitive(small, dominated, differencing, excess)


def _earlier_outcomes(table: CellTable, sensitive: _Sensitive, ledger: Ledger,
                      measures: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Cells an earlier release withheld, and cells it published, by their populations.

    Consistency with earlier answers: a cell that was withheld before stays withheld (as a
    complement: it needs no protection of its own, the cells it protected get theirs again),
    and a cell already published is known exactly to the attacker (never a complement).
    """
    withheld_before = np.zeros(table.shape, dtype=bool)
    published_before = np.zeros(table.shape, dtype=bool)
    primary = sensitive.primary
    for index in np.ndindex(*table.shape):
        if primary[index]:
            continue
        sets = [(ledger_key(table, index, m), measure_members(table, index, m))
                for m in measures]
        if any(len(s) and ledger.contains(WITHHELD + key, s) for key, s in sets):
            withheld_before[index] = True
        elif sets and all(ledger.contains(key, s) for key, s in sets):
            published_before[index] = True
    return withheld_before, published_before


def _complements(table: CellTable, rules: Rules, sensitive: _Sensitive, ledger: Ledger,
                 measures: tuple[str, ...]) -> Pattern:
    """The suppression pattern: the sensitive cells, those withheld before, and complements
    enough that the table's margins pin none of them inside its protection interval."""
    withheld_before, published_before = _earlier_outcomes(table, sensitive, ledger, measures)
    protection = _protection(table, rules, sensitive)
    known = quantities(table, rules, sensitive.small)
    for quantity in known.values():  # a published cell's value is known exactly
        quantity.lower[published_before] = quantity.value[published_before]
        quantity.upper[published_before] = quantity.value[published_before]
    return suppress_complementary(known, protection, sensitive.primary | withheld_before,
                                  cost=table.entities.astype(float) + 1.0)


def _protection(table: CellTable, rules: Rules, sensitive: _Sensitive) -> dict[str, np.ndarray]:
    """Each sensitive cell's protection level per quantity (zero elsewhere)."""
    withheld_small = sensitive.small | sensitive.differencing
    levels = small_cell_protection(table, rules)
    protection = {q: np.where(withheld_small, level, 0.0) for q, level in levels.items()}
    for name, level in sensitive.excess.items():
        protection[name] = np.maximum(protection[name],
                                      np.where(sensitive.dominated, level, 0.0))
    return protection


def _reason(index: Index, sensitive: _Sensitive, pattern: Pattern) -> SuppressionReason | None:
    """Why the cell at ``index`` is withheld, or None when it is published."""
    if pattern.unprotectable:
        # Withheld whole, all for the same reason: which cells were small is itself what an
        # attacker would combine with the margins.
        return SuppressionReason.COMPLEMENTARY
    if sensitive.small[index]:
        return SuppressionReason.MIN_ENTITIES
    if sensitive.dominated[index]:
        return SuppressionReason.DOMINANCE
    if sensitive.differencing[index]:
        return SuppressionReason.DIFFERENCING
    if pattern.suppressed[index]:
        return SuppressionReason.COMPLEMENTARY
    return None


def _ledger_entries(table: CellTable, measures: tuple[str, ...], sensitive: _Sensitive,
                    pattern: Pattern, reasons: list[tuple[Index, SuppressionReason | None]]
                    ) -> list[tuple[str, BitMap]]:
    """What the ledger keeps of this release: every published cell's populations, and every
    withheld cell of the grid, shown or not, since the pattern relies on all of them."""
    entries = [(ledger_key(table, index, m), measure_members(table, index, m))
               for index, reason in reasons if reason is None for m in measures]
    for index in np.ndindex(*table.shape):
        if pattern.suppressed[index] or sensitive.small[index]:
            for m in measures:
                members = measure_members(table, index, m)
                if len(members):
                    entries.append((WITHHELD + ledger_key(table, index, m), members))
    return entries


def _union(table: CellTable, cells: list[Index], measure: str) -> BitMap:
    return BitMap.union(BitMap(), *(measure_members(table, ix, measure) for ix in cells))


def repool(table: CellTable, plan: CellPlan, rules: Rules,
           released: Sequence[tuple[Index, SuppressionReason | None]], ledger: Ledger
           ) -> tuple[Pooled, list[tuple[str, BitMap]]]:
    """The remainder row once every cell's outcome is final (after the release audit, which
    may withhold more than protection did): every table cell not published, pooled and held
    to every rule again, and what the differencing ledger keeps of it when published.

    The row must pool exactly the cells that are not published: pooled over fewer, the grand
    total less the published cells less the row would give back the cells left out.
    """
    published = {index for index, reason in released if reason is None}
    grand = tuple(len(d) for d in table.domains)
    withheld = [ix for ix in np.ndindex(*table.shape)
                if not table.is_margin(ix) and ix not in published]
    grand_withheld = any(index == grand and reason is not None for index, reason in released)
    pooled = _remainder(table, plan, rules, withheld, ledger, grand_withheld=grand_withheld)
    entries = ([(ledger_key(table, grand, m), _union(table, withheld, m))
                for m in measure_keys(plan)] if pooled[1] is None else [])
    return pooled, entries


def _remainder(
    table: CellTable,
    plan: CellPlan,
    rules: Rules,
    withheld: list[Index],
    ledger: Ledger,
    *,
    grand_withheld: bool,
) -> Pooled:
    """The withheld table cells pooled into one row, held to every rule.

    It equals the grand total minus the published cells, so it tells nothing the protected
    table does not, unless the grand total itself is withheld: then it is withheld too.
    Enterprise counts are exact (bitmap unions). Largest contributions are bounded above by
    the sum of each cell's largest ones (an enterprise's pooled contribution is the sum of its
    contributions to the cells), so the dominance rules err towards withholding.
    """
    if grand_withheld:
        return None, SuppressionReason.COMPLEMENTARY
    members = _union(table, withheld, ENTITIES)
    stats: dict[str, tuple[Total, int, int]] = {}
    k = len(members)
    for name, stats_of in table.fields.items():
        contributors = len(_union(table, withheld, f"f:{name}"))
        k = min(k, contributors)
        # exact sums add exactly; doubles by math.fsum, correctly rounded: in any order the same
        total: Total = (sum(stats_of.sum_at(ix) for ix in withheld) if stats_of.exact is not None
                        else math.fsum(np.nan_to_num(stats_of.total[ix]) for ix in withheld))
        stats[name] = (total, int(sum(stats_of.values[ix] for ix in withheld)), contributors)
        abs_total = float(sum(stats_of.abs_total[ix] for ix in withheld))
        top_n = float(sum(stats_of.top[ix][: rules.dominance_n].sum() for ix in withheld))
        top_1 = float(sum(stats_of.top[ix][0] for ix in withheld))
        top_2 = float(sum(stats_of.top[ix][:2].sum() for ix in withheld))
        if k >= rules.k_min and abs_total > 0 and (
            top_n > rules.dominance_k / 100.0 * abs_total
            or (rules.p_percent > 0
                and abs_total - top_2 < rules.p_percent / 100.0 * min(top_1, abs_total))
        ):
            return None, SuppressionReason.DOMINANCE
    if k < rules.k_min:
        return None, SuppressionReason.MIN_ENTITIES
    grand = tuple(len(d) for d in table.domains)  # the pooled rows lie within its span
    if any(ledger.conflicts(ledger_key(table, grand, m), _union(table, withheld, m),
                            rules.k_min)
           for m in measure_keys(plan)):
        return None, SuppressionReason.DIFFERENCING
    return measure_values(plan, len(members), stats), None
