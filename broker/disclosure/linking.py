"""Which cells of a protected table may be published, given everything published before.

Each cell releases one linear form per quantity it carries (see ``broker.disclosure.linked``):
the count of distinct enterprises is the form over its enterprises' presences (see
:func:`presences`); a sum, a mean or a ratio
releases the sum of each field it uses, the form over the rows with a value. A mean is that
sum divided by the number of values, which the attacker is assumed to know; a ratio is two
sums. So a cell is checked by the forms of every quantity it carries.

The order is fixed: the cells withheld as too small or dominated are registered first as
protected forms (no later release may make their totals derivable), then the published
candidates are added one by one, table cells before margins, each with all its forms or none;
a cell whose forms would disclose an enterprise or a protected form is withheld as
``linked``. Nothing here looks at a value: only at which rows and enterprises each cell covers
and at what is already published (simulatable).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from pyroaring import BitMap64

from broker.disclosure.cells import ENTITIES, CellTable, Index
from broker.disclosure.linked import OWNER_SHIFT, LinkedSystem
from broker.domain.ledger import PROTECTED, PUBLISHED, Form
from broker.domain.queries import SuppressionReason

#: Reasons that make a cell's own total something to protect.
_SENSITIVE = frozenset({SuppressionReason.MIN_ENTITIES, SuppressionReason.DOMINANCE})

def cell_forms(table: CellTable, index: Index, quantities: Sequence[str]
               ) -> dict[str, BitMap64]:
    """The forms one cell (table cell or margin) releases, by quantity."""
    forms: dict[str, BitMap64] = {}
    for q in quantities:
        if q == ENTITIES:
            forms[q] = presences(table.rows.get(table, index))
        else:
            forms[q] = table.fields[q.removeprefix("f:")].atoms.get(table, index)
    return forms


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, element-wise on unsigned 64-bit integers (wrapping)."""
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def presences(rows: BitMap64) -> BitMap64:
    """The count's form over the rows ``rows``: one unknown per enterprise and the set of its
    rows the cell covers ("enterprise e has rows among these"), named by its enterprise and a
    24-bit hash of that set.

    Two cells that cover the same rows of an enterprise share its unknown; cells that cover
    other rows of it (another year, say) do not, since its presence there is another fact. Two
    sets of one enterprise whose hashes collide share an unknown: that links more, never
    less, so it can only withhold more.
    """
    atoms = np.frombuffer(rows.to_array(), dtype=np.uint64)  # sorted
    if not atoms.size:
        return BitMap64()
    owners = atoms >> np.uint64(OWNER_SHIFT)
    starts = np.r_[0, np.flatnonzero(np.diff(owners)) + 1]
    # An order-free hash of each enterprise's set: the sum of its atoms' splitmix64 mixes
    # (wrapping), its top 24 bits kept.
    digests = np.add.reduceat(_mix(atoms), starts) >> np.uint64(64 - OWNER_SHIFT)
    out = BitMap64((owners[starts] << np.uint64(OWNER_SHIFT) | digests).tolist())
    return out


def link(
    table: CellTable,
    quantities: Sequence[str],
    released: Sequence[tuple[Index, SuppressionReason | None]],
    systems: Mapping[str, LinkedSystem],
) -> tuple[list[tuple[Index, SuppressionReason | None]], list[Form]]:
    """The released cells with those that would disclose withheld as ``linked``, and the
    forms to record; ``systems`` (one per quantity) are changed in place."""
    forms: list[Form] = []
    for index, reason in released:
        if reason in _SENSITIVE:
            for q, atoms in cell_forms(table, index, quantities).items():
                if atoms and systems[q].protect(atoms):
                    forms.append(Form(q, PROTECTED, atoms))
    out: list[tuple[Index, SuppressionReason | None]] = []
    order = sorted(range(len(released)), key=lambda i: table.is_margin(released[i][0]))
    decided: dict[int, SuppressionReason | None] = {}
    for i in order:
        index, reason = released[i]
        if reason is None:
            published = publish(cell_forms(table, index, quantities), systems)
            if published is None:
                reason = SuppressionReason.LINKED
            else:
                forms += published
        decided[i] = reason
    out = [(released[i][0], decided[i]) for i in range(len(released))]
    return out, forms


def publish(cell: Mapping[str, BitMap64], systems: Mapping[str, LinkedSystem]
            ) -> list[Form] | None:
    """Add every form of one cell, or none of them: the forms to record, or None when the
    cell would disclose (every system then as it was)."""
    marks = {q: systems[q].mark() for q in cell}
    for q, atoms in cell.items():
        if atoms and not systems[q].add(atoms):
            for p, mark in marks.items():
                systems[p].rollback(mark)
            return None
    return [Form(q, PUBLISHED, atoms) for q, atoms in cell.items() if atoms]
