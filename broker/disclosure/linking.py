"""Which cells of a protected table may be published, given everything published before.

Each cell releases one linear form per quantity it carries (see ``broker.disclosure.linked``):
the count of distinct enterprises is the form over its enterprises, one unknown each whatever
rows of it the cell covers (an attacker who knows that firms report every month equates their
presence in any two periods, so the audit does too); a sum, a mean or a ratio
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
            members = np.frombuffer(table.members.get(index).to_array(), dtype=np.uint32)
            forms[q] = BitMap64((members.astype(np.uint64) << np.uint64(OWNER_SHIFT)).tolist())
        else:
            forms[q] = table.fields[q.removeprefix("f:")].atoms.get(table, index)
    return forms


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
