"""Delimited text files: find the encoding and the delimiter, read every cell as text, conform.

Chinese enterprise systems export CSV in UTF-8 (often with Excel's byte-order mark) or in GBK;
GB18030 is a superset of GBK, so a GBK file is read as GB18030. The encoding is decided by
strict incremental decoding of the whole file in blocks (UTF-8 first, then GB18030), each pass
stopping at the first block that does not decode: a large binary file is refused after its
first block.

Arrow's multi-threaded reader then parses the file (a GB18030 one from its UTF-8 text, held in
memory, as the parsed table is) and ``conform_table`` checks it on each column's distinct
values. A file that either finds fault with is read again by pandas, as a stream, and
``conform`` refuses it row by row (or types what ``conform_table`` left to it), so a refusal
is the same whichever reader met the fault first.

The delimiter is one of ``,`` ``;`` tab ``|``: the one whose split of the header row names the
most declared fields (ties, and headers naming none, go to the comma).
"""

from __future__ import annotations

import codecs
import csv
import io
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Literal

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv

from broker.domain.datasets import DatasetSchema
from broker.domain.errors import BadDataset
from connectors.conform import (
    MAX_ROWS_LISTED,
    check_width,
    conform,
    conform_table,
    frame_of,
)

_LINE = re.compile(r"line (\d+)")

#: Delimiters tried, in order of preference when they tie.
DELIMITERS = (",", ";", "\t", "|")
#: Bytes decoded at a time while deciding the encoding.
BLOCK = 1 << 20
#: Text of the file's start in which the header row must be complete.
HEADER_SPAN = 1 << 16
#: Bytes Arrow parses at a time (each block on a thread of its pool).
_ARROW_BLOCK = 4 << 20


def detect_encoding(path: Path) -> str:
    """``"utf-8-sig"`` or ``"gb18030"``: the first of the two that decodes all of ``path``.

    A file that decodes as UTF-8 up to an incomplete character at its very end, after other
    non-ASCII UTF-8 text, is a UTF-8 file cut short, not GB18030: it is refused rather than
    read as mojibake. NUL bytes never occur in text in either encoding; a file with one is
    binary and refused at once.
    """
    decoded = _decodes(path, "utf-8")
    if decoded == "cut-short":
        raise BadDataset("The file ends in the middle of a UTF-8 character: it was cut short.",
                         [{"column": None, "issue": "truncated"}])
    if decoded == "yes":
        return "utf-8-sig"
    if _decodes(path, "gb18030") == "yes":
        return "gb18030"
    raise _not_text()


def _decodes(path: Path, encoding: str) -> Literal["yes", "no", "cut-short"]:
    """Whether ``path`` decodes strictly in ``encoding``: "yes", "no", or "cut-short" (only
    an incomplete character at the very end, after other non-ASCII text, is wrong)."""
    decoder = codecs.getincrementaldecoder(encoding)("strict")
    non_ascii = False
    with open(path, "rb") as fh:
        while True:
            block = fh.read(BLOCK)
            if b"\0" in block:
                raise _not_text()
            try:
                non_ascii = not decoder.decode(block, final=not block).isascii() or non_ascii
            except UnicodeDecodeError:
                return "cut-short" if not block and non_ascii else "no"
            if not block:
                return "yes"


def _not_text() -> BadDataset:
    return BadDataset("The file is not text in UTF-8 or GB18030.",
                      [{"column": None, "issue": "not-text"}])


@contextmanager
def _text(path: Path, encoding: str) -> Iterator[IO[str]]:
    """The file as text, without a leading byte-order mark (UTF-8's or GB18030's)."""
    with open(path, encoding=encoding, errors="strict", newline="") as fh:
        if fh.read(1) != "\ufeff":
            fh.seek(0)
        yield fh


def choose_delimiter(head: str, schema: DatasetSchema) -> str:
    """The delimiter whose split of the first record of ``head`` names the most declared
    fields; the comma on a tie or when none names any."""
    declared = set(schema.names)
    best, best_count = ",", 0
    for delimiter in DELIMITERS:
        try:
            cells = next(csv.reader(io.StringIO(head), delimiter=delimiter), [])
        except csv.Error:
            continue
        count = len(declared.intersection(cells))
        if count > best_count:
            best, best_count = delimiter, count
    return best


def read_csv(path: Path, schema: DatasetSchema) -> pd.DataFrame:
    """Parse a delimited text file (UTF-8 or GB18030; , ; tab or |) with a header; conform it."""
    return frame_of(read_csv_table(path, schema))


def read_csv_table(path: Path, schema: DatasetSchema) -> pa.Table:
    """``read_csv`` as an Arrow table (``pa.Table.from_pandas`` of its frame).

    Arrow's multi-threaded reader parses the file, every cell as text, and ``conform_table``
    checks and types it; a file either finds fault with (not well-formed as Arrow reads it,
    or any value ``conform_table`` leaves to ``conform``) is read again by pandas and
    conformed by ``conform``, which refuses it with the problems it has, row by row, or types
    it. Nothing Arrow says reaches a message: its errors can quote a row.
    """
    decoded = _decodes(path, "utf-8")
    # GB18030 is decoded once, in C, to UTF-8 for Arrow (whose own transcoding runs in Python
    # on one thread), which also proves the file is GB18030.
    utf8 = _gb18030_as_utf8(path) if decoded == "no" else None
    if decoded == "yes" or utf8 is not None:
        encoding = "utf-8-sig" if decoded == "yes" else "gb18030"
    else:
        encoding = detect_encoding(path)  # refuses the file, saying why
    with _text(path, encoding) as fh:
        head = fh.read(HEADER_SPAN)
    delimiter = choose_delimiter(head, schema)
    names = header_cells(head, delimiter)
    quoted = _has_quote(path) if utf8 is None else _has_quote(utf8)
    if quoted:
        check_quoting(path, encoding, delimiter)
    table = _parse_arrow(path if utf8 is None else utf8, delimiter, names, quoted=quoted)
    conformed = conform_table(table, schema) if table is not None else None
    if conformed is not None:
        return conformed
    frame = _read_pandas(path, encoding, delimiter, schema)  # refuses it if its values are bad
    check_row_widths(path, encoding, delimiter)
    return pa.Table.from_pandas(frame, preserve_index=False)


def check_row_widths(path: Path, encoding: str, delimiter: str) -> None:
    """Refuse rows with fewer or more cells than the header (blank lines aside): pandas would
    pad a short row with empty cells, so a last row cut short would be stored as if whole.
    The rows named are data rows (1 after the header), the first ``MAX_ROWS_LISTED``."""
    bad: list[int] = []
    count = width = 0
    with _text(path, encoding) as fh:
        reader = csv.reader(fh, delimiter=delimiter)
        try:
            width = len(next(reader, []))  # the header's cells
            for row, cells in enumerate(reader, start=1):
                if cells and len(cells) != width:
                    count += 1
                    if len(bad) < MAX_ROWS_LISTED:
                        bad.append(row)
        except csv.Error as exc:  # a cell over the csv module's limit (never quoted here)
            raise BadDataset("A cell of the file is too long.",
                             [{"column": None, "issue": "cell-too-long"}]) from exc
    if count:
        raise BadDataset(
            f"{count} row(s) of the file do not have the header's {width} cells.",
            [{"column": None, "issue": "wrong-cell-count", "rows": bad, "count": count}])


#: ``csv.Error`` messages (the csv module's own words, never a cell) and the issue each is.
_QUOTING_ISSUES = (("unexpected end of data", "unterminated-quote"),
                   ("expected after", "text-after-quote"),
                   ("field larger than field limit", "cell-too-long"))


def check_quoting(path: Path, encoding: str, delimiter: str) -> None:
    """Refuse a file whose quoting is broken: a quoted cell that is never closed (the rest of
    the file would be one cell, or the last row silently cut short), or one followed by more
    text before the next delimiter or line end.

    Arrow and pandas both take such files in some cases and read them differently, so the
    file is first read by the csv module in strict mode. The row named is the data row (1
    after the header) where the faulty record begins; 0 is the header.
    """
    records = 0
    with _text(path, encoding) as fh:
        try:
            for _ in csv.reader(fh, delimiter=delimiter, strict=True):
                records += 1
        except csv.Error as exc:
            issue = next((issue for text, issue in _QUOTING_ISSUES if text in str(exc)),
                         "malformed-csv")
            raise BadDataset("The file is not well-formed CSV: its quoting is broken.",
                             [{"column": None, "issue": issue, "rows": [records]}]) from exc


def _gb18030_as_utf8(path: Path) -> pa.Buffer | None:
    """The file decoded strictly as GB18030, in blocks, and encoded in UTF-8; None when it
    does not decode or holds a NUL byte."""
    decoder = codecs.getincrementaldecoder("gb18030")("strict")
    parts = []
    try:
        with open(path, "rb") as fh:
            while True:
                block = fh.read(BLOCK)
                if b"\0" in block:
                    return None
                parts.append(decoder.decode(block, final=not block).encode("utf-8"))
                if not block:
                    return pa.py_buffer(b"".join(parts))
    except UnicodeDecodeError:
        return None


def _has_quote(source: Path | pa.Buffer) -> bool:
    """Whether the file (or the buffer) holds a double quote anywhere."""
    with pa.BufferReader(source) if isinstance(source, pa.Buffer) else open(source, "rb") as fh:
        return any(b'"' in block for block in iter(lambda: fh.read(BLOCK), b""))


def _parse_arrow(source: Path | pa.Buffer, delimiter: str, names: list[str], *, quoted: bool
                 ) -> pa.Table | None:
    """Every cell of the file as text (empty cells null), or None when Arrow cannot parse it.

    ``names`` are the header's cells as the csv module reads them; should Arrow read the
    header otherwise, a column it names differently is typed by its guess, which
    ``conform_table`` does not take. Only a file with quotes (``quoted``) can have a line
    break inside a cell; Arrow splits one without them into blocks at any line break, which
    is much faster."""
    try:
        return pa_csv.read_csv(
            source if isinstance(source, Path) else pa.BufferReader(source),
            read_options=pa_csv.ReadOptions(block_size=_ARROW_BLOCK),
            parse_options=pa_csv.ParseOptions(delimiter=delimiter, newlines_in_values=quoted),
            convert_options=pa_csv.ConvertOptions(
                column_types=dict.fromkeys(names, pa.large_string()), strings_can_be_null=True,
                null_values=[""], quoted_strings_can_be_null=True),
        )
    except (pa.ArrowException, OSError, ValueError, UnicodeDecodeError):
        return None


def header_cells(head: str, delimiter: str) -> list[str]:
    """The header row's cells as the csv module reads them from ``head`` (the file's first
    ``HEADER_SPAN`` characters), refusing a file that is too wide before it is parsed.

    A header of more than ``MAX_COLUMNS`` cells is refused, and so is one that does not end
    within ``head``: declared names are short (at most 200 of at most 63 characters), so a
    longer first row is not a header, and its width could not be told without reading on.
    """
    lines = io.StringIO(head)
    try:
        cells = next(csv.reader(lines, delimiter=delimiter), [])
    except csv.Error:
        cells = []
    check_width(len(cells))
    ended = head[:lines.tell()].endswith(("\n", "\r"))
    if len(head) >= HEADER_SPAN and not ended:
        raise BadDataset(f"The header row is longer than {HEADER_SPAN} characters.",
                         [{"column": None, "issue": "header-too-long", "limit": HEADER_SPAN}])
    return cells


def _read_pandas(path: Path, encoding: str, delimiter: str, schema: DatasetSchema
                 ) -> pd.DataFrame:
    try:
        with _text(path, encoding) as fh:
            raw = pd.read_csv(
                # UTF-8 is parsed from the bytes (pandas drops the BOM), GB18030 as text.
                path if encoding == "utf-8-sig" else fh,
                encoding=encoding,
                sep=delimiter,
                dtype=str,
                keep_default_na=False,
                na_values=[""],
                engine="c",
                on_bad_lines="error",
            )
    except UnicodeDecodeError as exc:  # the file changed since its encoding was decided
        raise _not_text() from exc
    except pd.errors.EmptyDataError as exc:
        raise BadDataset("The file is empty.", [{"column": None, "issue": "empty"}]) from exc
    except (pd.errors.ParserError, csv.Error, ValueError) as exc:
        lines = [int(n) for n in _LINE.findall(str(exc))][:1]
        raise BadDataset(
            "The file is not well-formed CSV.",
            [{"column": None, "issue": "malformed-csv", "rows": lines}],
        ) from exc
    return conform(raw, schema)
