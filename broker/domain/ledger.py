"""What the release ledger records: for each released measure of a cell, who contributed.

The disclosure engine compares new cells with these entries (``broker.disclosure``); the
store keeps them (``broker.store``); both meet here, in the domain.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyroaring import BitMap, BitMap64


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One released measure of one cell: who contributed to it."""

    id: int
    measure: str
    members: BitMap


#: The kinds of form in the release ledger: published, or withheld and to be kept underivable.
PUBLISHED = "published"
PROTECTED = "protected"


@dataclass(frozen=True, slots=True)
class Form:
    """One linear form of the release audit: a quantity (``#entities``, or ``f:<field>``),
    published or protected, and the atoms it sums over (``broker.disclosure.linked``)."""

    quantity: str
    kind: str
    atoms: BitMap64
    #: For sums: a published form's value (twice), a protected form's protection interval;
    #: ``signed`` when the field has negative contributions (no sign is assumed).
    bounds: tuple[float, float] | None = None
    signed: bool = False


@dataclass(frozen=True, slots=True)
class FormEntry:
    """A form as the ledger holds it, with its place in the ledger's order."""

    id: int
    form: Form
    #: The form's numbers (``bounds``, ``signed``) as the ledger keeps them: sealed.
    numbers: str | None = None
