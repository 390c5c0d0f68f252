"""Primary suppression rules applied to each cell on its own."""

from __future__ import annotations

from collections.abc import Sequence

from broker.disclosure.cells import CellStats
from broker.domain.queries import Cell, CellStatus, SuppressionReason


def is_below_frequency(cell: CellStats, k_min: int) -> bool:
    """Frequency (threshold) rule: fewer than ``k_min`` distinct enterprises contribute.

    The unit is the enterprise, not the row: an enterprise with thirty monthly rows is one
    contributor; and it is counted per measure, so enterprises that reported nothing for a
    field cannot make up the numbers for one that did. This is the minimum-frequency rule of
    the ESSnet SDC handbook (Hundepool et al., *Statistical Disclosure Control*, 2012,
    section 4.2.1), k_min set by the contract.
    """
    return cell.k < k_min


def apply_frequency_rule(cells: Sequence[CellStats], k_min: int) -> list[Cell]:
    """Release each cell or suppress it (no values, no count) with reason ``min-entities``."""
    released = []
    for cell in cells:
        if is_below_frequency(cell, k_min):
            released.append(
                Cell(key=cell.key, values=None, status=CellStatus.SUPPRESSED,
                     reason=SuppressionReason.MIN_ENTITIES)
            )
        else:
            released.append(Cell(key=cell.key, values=cell.values, status=CellStatus.PUBLISHED))
    return released

