"""Parquet files: checked before they are read, rendered to CSV text, conformed like a CSV.

The magic bytes at both ends and the footer length are checked first, so junk and truncated
files are refused without a parser trace. Then what the footer declares is bounded before any
data page is read: the uncompressed size of all column chunks (``MAX_EXPANDED``) and rows times
columns (``MAX_CELLS``). Strings are read dictionary-encoded and their decoded size is added up
from the dictionary before they are expanded: a long string repeated in every row (a
"dictionary bomb") is refused, not built. These bounds are absolute, not a multiple of the file
size as for xlsx: dictionary and run-length encoding legitimately shrink repetitive columns
(a town in every row) far more than a hundredfold.

Columns become the text a CSV of the same data holds, and ``conform`` types them exactly as it
types that CSV: integers and decimals in decimal, floats as Python prints them (float32 as the
shortest text of the float32), booleans ``true``/``false``, dates ``YYYY-MM-DD``, timestamps as
dates when at midnight and with their time otherwise (a date field then refuses them), empty
strings missing. Nested and binary columns (list, struct, map, binary, time, duration, ...)
are refused by name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from broker.domain.datasets import DatasetSchema
from broker.domain.errors import BadDataset
from connectors.conform import check_width, conform, render_cell, text_frame

MAGIC = b"PAR1"
#: Bytes the column chunks may expand to, and decoded text may take.
MAX_EXPANDED = 2 << 30
#: Cells (rows times columns) a file may hold: the SQL reader's default row limit (5 million)
#: times ten columns.
MAX_CELLS = 50_000_000


def _not_parquet(issue: str = "not-parquet") -> BadDataset:
    return BadDataset("The file is not a readable Parquet file.", [{"column": None,
                                                                    "issue": issue}])


def check_file(path: Path) -> None:
    """Refuse a file without Parquet's magic at both ends or with an impossible footer."""
    size = path.stat().st_size
    if size < 3 * len(MAGIC):
        raise _not_parquet()
    with open(path, "rb") as fh:
        head = fh.read(4)
        fh.seek(-8, 2)
        tail = fh.read(8)
    if head != MAGIC:
        raise _not_parquet()
    if tail[4:] != MAGIC:  # the footer is at the end: a file cut short has lost it
        raise _not_parquet("truncated")
    if int.from_bytes(tail[:4], "little") > size - 3 * len(MAGIC):
        raise _not_parquet("truncated")


def _is_supported(kind: pa.DataType) -> bool:
    if pa.types.is_dictionary(kind):
        return _is_supported(kind.value_type) and not pa.types.is_dictionary(kind.value_type)
    return bool(
        pa.types.is_string(kind) or pa.types.is_large_string(kind)
        or pa.types.is_string_view(kind) or pa.types.is_integer(kind)
        or pa.types.is_floating(kind) or pa.types.is_boolean(kind) or pa.types.is_date(kind)
        or pa.types.is_timestamp(kind) or pa.types.is_decimal(kind) or pa.types.is_null(kind)
    )


def _is_text(kind: pa.DataType) -> bool:
    return bool(pa.types.is_string(kind) or pa.types.is_large_string(kind)
                or pa.types.is_string_view(kind))


def _render(column: pa.ChunkedArray) -> Any:
    """The column as CSV text: a pandas Series or list of str, None/NaN where missing."""
    kind = column.type
    if pa.types.is_dictionary(kind):
        column = column.cast(kind.value_type)
        kind = column.type
    if pa.types.is_null(kind):
        return [None] * len(column)
    if _is_text(kind):
        column = pc.if_else(pc.equal(column, ""), pa.scalar(None, kind), column)
    elif pa.types.is_float16(kind):
        column = column.cast(pa.float32()).cast(pa.string())
    elif pa.types.is_float32(kind):
        column = column.cast(pa.string())  # the shortest text of the float32, as pandas writes
    elif pa.types.is_floating(kind) or pa.types.is_timestamp(kind):
        return [render_cell(v) for v in column.to_pylist()]
    else:  # integers, decimals, booleans, dates: Arrow prints them as CSV holds them
        column = column.cast(pa.string())
    return column.to_pandas()


def _check_declared_size(file: pq.ParquetFile) -> None:
    meta = file.metadata
    expanded = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
    if expanded > MAX_EXPANDED or meta.num_rows * max(meta.num_columns, 1) > MAX_CELLS:
        raise BadDataset("The Parquet file would expand past the limit; it is refused unread.",
                         [{"column": None, "issue": "expands-too-much"}])


def _read_bounded(file: pq.ParquetFile) -> pa.Table:
    """All row groups, strings dictionary-encoded, refused once decoded strings pass the
    limit."""
    total = 0
    groups = []
    for i in range(file.metadata.num_row_groups):
        group = file.read_row_group(i, use_pandas_metadata=False)
        for column in group.columns:
            if pa.types.is_dictionary(column.type) and _is_text(column.type.value_type):
                for chunk in column.chunks:
                    lengths = pc.binary_length(chunk.dictionary)
                    total += pc.sum(pc.take(lengths, chunk.indices)).as_py() or 0
        if total > MAX_EXPANDED:
            raise BadDataset("The Parquet file's text would expand past the limit.",
                             [{"column": None, "issue": "expands-too-much"}])
        groups.append(group)
    if not groups:
        return file.schema_arrow.empty_table()
    return pa.concat_tables(groups)


def read_parquet(path: Path, schema: DatasetSchema) -> pd.DataFrame:
    """Read a Parquet file (flat columns of text, numbers, booleans, dates); conform it."""
    check_file(path)
    try:
        arrow = pq.read_schema(path)
        check_width(len(arrow))
        text = [f.name for f in arrow if _is_text(f.type)]
        file = pq.ParquetFile(path, read_dictionary=text)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise _not_parquet() from exc
    with file:
        declared = set(schema.names)
        unsupported = [
            {"column": f.name, "issue": "unsupported-type"} if f.name in declared
            else {"column": None, "position": i + 1, "issue": "unsupported-type"}
            for i, f in enumerate(arrow) if not _is_supported(f.type)
        ]
        if unsupported:
            raise BadDataset("Some columns are not flat text, number, boolean or date columns.",
                             unsupported)
        _check_declared_size(file)
        try:
            table = _read_bounded(file)
        except (pa.ArrowException, OSError, ValueError) as exc:
            raise _not_parquet() from exc
    raw = text_frame(table.column_names, [_render(c) for c in table.columns])
    return conform(raw, schema)
