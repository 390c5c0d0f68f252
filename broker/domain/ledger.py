"""What the release ledger records: for each released measure of a cell, who contributed.

The disclosure engine compares new cells with these entries (``broker.disclosure``); the
store keeps them (``broker.store``); both meet here, in the domain.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyroaring import BitMap


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One released measure of one cell: who contributed to it."""

    id: int
    measure: str
    members: BitMap
