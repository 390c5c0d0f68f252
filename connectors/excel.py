"""Excel workbooks (.xlsx): the first worksheet, its first row the header, cells as CSV text.

An xlsx file is a zip of XML parts, so before a byte is parsed the zip's central directory is
checked: the sizes its members expand to must add up to at most ``expansion_limit`` of the file
size (100 times, at least 16 MiB, at most 2 GiB), which refuses a zip bomb without inflating
it. The sizes it declares are binding: Python's zip reader stops a member at its declared size
and fails on the CRC. The XML is parsed by expat (2.4.1 and later refuse entity-expansion
attacks), and openpyxl never resolves external entities.

Cells become the text a CSV export of the same data holds (see ``connectors.conform.RENDERERS``),
so ``conform`` types a workbook exactly as it types the CSV: numbers as their shortest decimal
text, dates (date-formatted number cells) as ``YYYY-MM-DD`` when at midnight and with their
time otherwise (a date field then refuses them), booleans ``true``/``false``, empty cells
missing. Formula cells give the value Excel last computed (a workbook never computed, as
openpyxl writes them, has none: the cell reads as empty); cells holding an Excel error such as
``#DIV/0!`` are refused. Data row ``n`` is worksheet row ``n + 1``; fully empty rows at the end
are ignored, fully empty rows between data rows are kept (and refused for the missing entity).
"""

from __future__ import annotations

import warnings
import zipfile
import zlib
from collections import defaultdict
from pathlib import Path
from typing import Any, BinaryIO

import pandas as pd
from openpyxl import load_workbook
from openpyxl.utils.exceptions import InvalidFileException

from broker.domain.datasets import DatasetSchema
from broker.domain.errors import BadDataset
from connectors.conform import check_width, conform, numbered_problem, render_cell, text_frame

#: Parts a workbook has at most; real ones have tens.
MAX_MEMBERS = 10_000

#: What openpyxl and zipfile raise on a damaged or hostile workbook (found by flipping bytes
#: of real workbooks): neither wraps its errors. RuntimeError is an encrypted member,
#: NotImplementedError an unknown compression method or zip feature.
_BROKEN = (zipfile.BadZipFile, zlib.error, InvalidFileException, KeyError, ValueError,
           TypeError, IndexError, AttributeError, EOFError, OSError, SyntaxError, RuntimeError,
           NotImplementedError)


def expansion_limit(file_size: int) -> int:
    """Bytes a workbook of ``file_size`` bytes may expand to.

    Real workbooks expand 5 to 20 times (a 50,000-row sheet of typed cells: 14 times); a
    hundredfold is generous for them and stops a zip bomb (a thousand to a million times)
    before a byte of it is inflated. Small files always get 16 MiB, none more than 2 GiB.
    """
    return min(2 << 30, max(16 << 20, 100 * file_size))


def _unreadable() -> BadDataset:
    return BadDataset("The file is not a readable Excel workbook (.xlsx).",
                      [{"column": None, "issue": "not-xlsx"}])


def check_archive(path: Path) -> None:
    """Refuse a file that is not a zip, or whose members would expand past the limit."""
    size = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except _BROKEN as exc:
        raise _unreadable() from exc
    if len(members) > MAX_MEMBERS:
        raise BadDataset("The workbook has too many parts.", [{"column": None,
                                                               "issue": "too-many-parts"}])
    if sum(m.file_size for m in members) > expansion_limit(size):
        raise BadDataset(
            "The workbook would expand past the limit for a file of its size; it is refused "
            "unread.",
            [{"column": None, "issue": "expands-too-much"}],
        )
    names = {m.filename for m in members}
    if "[Content_Types].xml" not in names or "xl/workbook.xml" not in names:
        raise _unreadable()


def _read_sheet(path: Path, schema: DatasetSchema) -> pd.DataFrame:
    with open(path, "rb") as fh:  # a file object: openpyxl would judge a path by its suffix
        return _read_open(fh, schema)


def _read_open(fh: BinaryIO, schema: DatasetSchema) -> pd.DataFrame:
    workbook = load_workbook(fh, read_only=True, data_only=True)
    try:
        if not workbook.worksheets:
            raise _unreadable()
        sheet = workbook.worksheets[0]
        sheet.reset_dimensions()  # the file's own claim of its used range may be wrong
        rows = sheet.iter_rows()
        header = [_header_text(c.value) for c in next(rows, ())]
        while header and not header[-1]:
            header.pop()
        check_width(len(header))
        if not header:
            raise BadDataset("The worksheet is empty.", [{"column": None, "issue": "empty"}])
        width = len(header)
        columns: list[list[str | None]] = [[] for _ in header]
        flagged: dict[tuple[int | None, str], list[int]] = defaultdict(list)
        kept = 0  # data rows up to the last one with a value
        for number, row in enumerate(rows, start=1):
            for i, cell in enumerate(row):
                if cell.value is None:
                    if i < width:
                        columns[i].append(None)
                    continue
                kept = number
                if i >= width:
                    flagged[None, "cell-without-header"].append(number)
                    continue
                text = None
                if cell.data_type == "e":
                    flagged[i, "excel-error"].append(number)
                else:
                    try:
                        text = render_cell(cell.value)
                    except TypeError:  # a duration: not a declared field type
                        flagged[i, "unsupported-value"].append(number)
                columns[i].append(text)
            for i in range(len(row), width):
                columns[i].append(None)
    finally:
        workbook.close()
    if flagged:
        raise BadDataset(
            "Some cells hold Excel errors or unsupported values, or lie outside the header.",
            [numbered_problem(None if i is None or header[i] not in schema.names else header[i],
                              issue, sorted(set(numbers)))
             for (i, issue), numbers in flagged.items()],
        )
    return text_frame(header, [column[:kept] for column in columns])


def _header_text(value: Any) -> str:
    try:
        return render_cell(value) or ""
    except TypeError:
        return ""


def read_xlsx(path: Path, schema: DatasetSchema) -> pd.DataFrame:
    """Read the first worksheet of an .xlsx workbook (first row the header); conform it."""
    check_archive(path)
    # openpyxl's warnings can quote cell values ("the serial value ... is outside the limits
    # for dates"), and nothing of an uploaded file may reach the logs. A process-wide filter,
    # added again on each read (adding it is idempotent): warnings.catch_warnings() is not
    # thread-safe, and uploads are read in a thread pool.
    warnings.filterwarnings("ignore", module="openpyxl")
    try:
        raw = _read_sheet(path, schema)
    except _BROKEN:
        # Not chained: openpyxl's messages can quote the text of the cell it choked on.
        raise _unreadable() from None
    return conform(raw, schema)
