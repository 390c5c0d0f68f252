"""Answers the console has shown a department, kept for a short while so that it can download
them without asking again, and the files they are written to (CSV, Excel).

A download must never run the query a second time: that would be a second release and a second
use of the contract's daily quota. So the answer the results page showed is kept here, in the
server's memory only (never on disk), under its query id AND the principal it was released to;
anyone else asking for the same id finds nothing (the route answers 404 and audits the attempt).
An answer is forgotten after ``TTL_SECONDS`` or when ``MAX_ANSWERS`` newer ones have come.
With several worker processes each holds its own answers: a download that reaches another
worker finds none and the department runs the query again (the identical repeat gets the same
answer from the release cache).

Withheld cells are written as withheld, with their reason, in every format: never a number,
never an empty cell that a spreadsheet would sum as zero.
"""

from __future__ import annotations

import csv
import io
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from openpyxl import Workbook
from openpyxl.styles import Font

from broker.domain.principals import Principal
from broker.domain.queries import Cell, CellStatus, JsonScalar, Release

TTL_SECONDS = 30 * 60
MAX_ANSWERS = 512
#: What a spreadsheet would read as a formula at the start of a text cell (CSV injection):
#: such text is written with a leading apostrophe, as OWASP advises.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")

Owner = tuple[str, str, str]


def owner_of(principal: Principal) -> Owner:
    """Whose an answer is: the issuer, subject and organisation it was released to."""
    return (principal.iss, principal.sub, principal.org)


@dataclass(frozen=True, slots=True)
class Shown:
    """An answer as the results page showed it: the release and the columns it has."""

    release: Release
    dimensions: tuple[str, ...]
    measures: tuple[str, ...]
    contract_id: str
    purpose: str


class ReleasedAnswers:
    """Answers released through the console, by (principal, query id), for a short while."""

    def __init__(self, *, ttl: float = TTL_SECONDS, size: int = MAX_ANSWERS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl, self._size, self._clock = ttl, size, clock
        self._kept: OrderedDict[tuple[Owner, str], tuple[float, Shown]] = OrderedDict()
        self._lock = threading.Lock()

    def keep(self, principal: Principal, shown: Shown) -> None:
        """Keep ``shown`` for the principal it was released to."""
        with self._lock:
            self._expire()
            self._kept[(owner_of(principal), shown.release.query_id)] = (self._clock(), shown)
            while len(self._kept) > self._size:
                self._kept.popitem(last=False)

    def find(self, principal: Principal, query_id: str) -> Shown | None:
        """The answer released to ``principal`` under ``query_id``, if it is still kept."""
        with self._lock:
            self._expire()
            found = self._kept.get((owner_of(principal), query_id))
            return found[1] if found is not None else None

    def _expire(self) -> None:
        oldest = self._clock() - self._ttl
        while self._kept:
            key, (at, _) = next(iter(self._kept.items()))
            if at >= oldest:
                break
            del self._kept[key]


@dataclass(frozen=True, slots=True)
class Labels:
    """The words a file is written with, in the page's language."""

    total: str
    withheld: str
    status: str
    reason: str
    published: str
    reasons: dict[str, str]


def key_text(value: JsonScalar, present: bool, total: str) -> JsonScalar:
    """A cell key's value as written: the total's label where the cell is a margin."""
    return value if present else total


def _rows(shown: Shown, labels: Labels) -> list[list[JsonScalar]]:
    header: list[JsonScalar] = [*shown.dimensions, *shown.measures, labels.status,
                                labels.reason]
    rows: list[list[JsonScalar]] = [header]
    for cell in shown.release.cells:
        rows.append(_row(cell, shown, labels))
    return rows


def _row(cell: Cell, shown: Shown, labels: Labels) -> list[JsonScalar]:
    keys = [key_text(cell.key.get(d), d in cell.key, labels.total) for d in shown.dimensions]
    if cell.status is CellStatus.PUBLISHED and cell.values is not None:
        values: list[JsonScalar] = [cell.values.get(m) for m in shown.measures]
        return [*keys, *values, labels.published, ""]
    reason = cell.reason.value if cell.reason is not None else ""
    marked = f"{labels.withheld}: {labels.reasons.get(reason, reason)}"
    return [*keys, *([marked] * len(shown.measures)), labels.withheld, reason]


def _safe_text(value: JsonScalar) -> JsonScalar:
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def to_csv(shown: Shown, labels: Labels) -> bytes:
    """The answer as CSV, UTF-8 with a byte order mark (so Excel reads Chinese)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    for row in _rows(shown, labels):
        writer.writerow(["" if v is None else _safe_text(v) for v in row])
    return buffer.getvalue().encode("utf-8-sig")


def to_xlsx(shown: Shown, labels: Labels, *, sheet: str) -> bytes:
    """The answer as an Excel workbook: one sheet, a bold header row, numbers as numbers and
    withheld cells as text naming their reason."""
    book = Workbook(write_only=False)
    ws = book.active
    assert ws is not None  # noqa: S101 - a new workbook has its sheet
    ws.title = sheet[:31]
    rows: Sequence[list[JsonScalar]] = _rows(shown, labels)
    for row in rows:
        ws.append([_safe_text(v) for v in row])
    for cell in ws[1]:
        cell.font = Font(bold=True)
    buffer = io.BytesIO()
    book.save(buffer)
    return buffer.getvalue()
