"""Conform a raw table of strings to a declared dataset schema, or say exactly why not.

The problems name columns, issues and 1-based data row numbers; they never quote a value, so a
rejected upload leaks nothing into errors or logs.

Every reader (CSV, Excel, Parquet, SQL) hands ``conform`` the same thing: cells as the text a
CSV of the data holds (``render_cell``, ``text_frame``), so the same data gives the same typed
frame whatever it came in.

Unified social credit codes (GB 32100-2015) are checked where a field declares ``format:
"uscc"``, and in the entity field when it declares no format and more than half of its values
have the USCC shape: an entity column of codes with a typo in one row is refused (``bad-uscc``)
rather than let a mistyped enterprise become a separate one; entities that are not codes at all
("E1") are left alone.
"""

from __future__ import annotations

import datetime as dt
import decimal
import os
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from broker.domain.datasets import (
    DECIMAL_PRECISION,
    HIERARCHY_CODES,
    MAX_INTEGER_DIGITS,
    DatasetSchema,
    FieldSpec,
    FieldType,
)
from broker.domain.errors import BadDataset
from broker.domain.uscc import ALPHABET

#: How many row numbers a problem lists per column; the count says how many there are in all.
MAX_ROWS_LISTED = 5

#: The most columns a file may have. A dataset declares at most 200 fields and every column must
#: be declared, so a wider file is refused on its header, before its rows are parsed: a 600 KB
#: file of 100,000 one-letter columns would otherwise be parsed whole and answered with one
#: problem per column.
MAX_COLUMNS = 2000

#: Formats a string field may declare; values of a declared format are checked one by one.
FORMATS = frozenset({"uscc"})

#: The shape of a unified social credit code (GB 32100-2015): 18 characters of its 31-letter
#: alphabet (digits and upper-case letters but I, O, S, V, Z). The check character is tested
#: separately; the shape alone decides whether an undeclared entity column holds USCCs.
USCC_SHAPE = r"[0-9A-HJ-NPQRTUW-Y]{18}"

_TRUE = {"true", "t", "yes", "y", "1"}
_FALSE = {"false", "f", "no", "n", "0"}


def _rows(mask: pd.Series[bool]) -> list[int]:
    positions = np.flatnonzero(mask.to_numpy())
    return [int(p) + 1 for p in positions[:MAX_ROWS_LISTED]]


def rows_problem(column: str | None, issue: str, mask: pd.Series[bool]) -> dict[str, Any]:
    """A problem naming ``column``, ``issue`` and the first flagged 1-based data rows."""
    return {"column": column, "issue": issue, "rows": _rows(mask), "count": int(mask.sum())}


def numbered_problem(column: str | None, issue: str, rows: Sequence[int]) -> dict[str, Any]:
    """A problem naming ``column``, ``issue`` and the first of ``rows`` (1-based, ascending)."""
    return {"column": column, "issue": issue, "rows": list(rows[:MAX_ROWS_LISTED]),
            "count": len(rows)}


def text_frame(header: Sequence[str], columns: Sequence[Sequence[str | None]]) -> pd.DataFrame:
    """A raw table as the CSV reader makes it (every cell text, missing as NA), for conform."""
    frame = pd.DataFrame(dict(enumerate(columns)), dtype=str)
    frame.columns = pd.Index(list(header), dtype=object)
    return frame


def _render_datetime(value: dt.datetime) -> str:
    # A naive midnight is a date; any other time, or any time zone (a date field stores none),
    # keeps its time, which a date field then refuses.
    if value.tzinfo is None and value.time() == dt.time(0):
        return value.date().isoformat()
    return value.isoformat(sep=" ")


#: Cell values as text, exactly as a CSV of the same data holds them: integers in decimal,
#: floats as the shortest text that reads back as the same double (as pandas writes them; NaN
#: stays a value, which conform refuses as it refuses the text "nan" in a CSV), booleans as
#: "true"/"false", dates as ISO 8601. Looked up by exact type first (a bool is an int to
#: isinstance), then by the first base type in this order (a datetime is also a date).
#: Types without an entry are not tabular data (bytes, arrays, JSON) and are refused.
RENDERERS: dict[type, Callable[[Any], str | None]] = {
    bool: lambda v: "true" if v else "false",
    str: lambda v: str.__str__(v) or None,  # an empty string is missing, as an empty CSV cell
    int: int.__repr__,
    float: float.__repr__,
    decimal.Decimal: str,
    dt.datetime: _render_datetime,
    dt.date: dt.date.isoformat,
    dt.time: dt.time.isoformat,
    uuid.UUID: str,
}


def render_cell(value: Any) -> str | None:
    """``value`` as CSV text (None when missing); TypeError for a type that is not data."""
    if value is None:
        return None
    render = RENDERERS.get(type(value))
    if render is None:
        kind = next((k for k in RENDERERS if isinstance(value, k)), None)
        if kind is None:
            raise TypeError(type(value).__name__)
        render = RENDERERS[kind]
    return render(value)


def _integer(raw: pd.Series[Any]) -> tuple[pd.Series[Any], pd.Series[bool]]:
    numbers = pd.to_numeric(raw, errors="coerce")
    bad = numbers.notna() & ~np.isfinite(numbers.astype("float64"))
    bad |= numbers.notna() & (numbers.astype("float64") % 1 != 0)
    bad |= numbers.abs() > 2**63 - 1
    bad |= raw.notna() & numbers.isna()
    return numbers.where(~bad).astype("Int64"), bad


def _number(raw: pd.Series[Any]) -> tuple[pd.Series[Any], pd.Series[bool]]:
    numbers = pd.to_numeric(raw, errors="coerce").astype("float64")
    bad = (raw.notna() & numbers.isna()) | (numbers.notna() & ~np.isfinite(numbers))
    return numbers.where(~bad), bad


#: Exact decimal arithmetic for checking scaled values: enough digits for any text a number
#: column takes (a value beyond them is refused as too large before it is rounded).
_EXACT = decimal.Context(prec=DECIMAL_PRECISION + 40, traps=[decimal.InvalidOperation])
_LIMIT = decimal.Decimal(10) ** MAX_INTEGER_DIGITS


def decimal_type(scale: int) -> pa.Decimal128Type:
    """The Arrow type of a number declared with ``scale`` decimal places."""
    return pa.decimal128(DECIMAL_PRECISION, scale)


def _scaled_value(text: str, quantum: decimal.Decimal) -> tuple[decimal.Decimal | None, str]:
    """One present value of a scaled number: (value, "") or (None, the issue)."""
    try:
        value = decimal.Decimal(text.strip())  # exact, whatever its length
    except (decimal.InvalidOperation, ValueError):
        return None, "not-number"
    if not value.is_finite():
        return None, "not-number"
    if abs(value) >= _LIMIT:
        return None, "too-large"
    exact = value.quantize(quantum, context=_EXACT)
    if exact != value:
        return None, "too-many-decimals"
    return exact + 0, ""  # + 0: a negative zero is zero


def scaled(raw: pd.Series[Any], scale: int) -> tuple[pd.Series[Any], dict[str, pd.Series[bool]]]:
    """A number column declared with ``scale`` decimal places, as exact decimals, and the rows
    of each issue: ``not-number`` (as ``_number`` says), ``too-many-decimals`` (a value the
    scale cannot hold without rounding) and ``too-large`` (18 digits or more before the point).

    Values are checked on their distinct texts; none is ever rounded: a value the declared
    scale cannot hold is refused rather than changed.
    """
    _, bad = _number(raw)
    quantum = decimal.Decimal(1).scaleb(-scale)
    present = raw.notna() & ~bad
    checked = {text: _scaled_value(str(text), quantum) for text in raw[present].unique()}
    issues = {"not-number": bad.copy(), "too-many-decimals": pd.Series(False, index=raw.index),
              "too-large": pd.Series(False, index=raw.index)}
    for issue in ("not-number", "too-many-decimals", "too-large"):
        texts = [t for t, (_, found) in checked.items() if found == issue]
        if texts:
            issues[issue] |= present & raw.isin(texts)
    good = {t: v for t, (v, _) in checked.items() if v is not None}
    values = [good.get(t) if ok else None for t, ok in zip(raw, present, strict=True)]
    return pd.Series(values, dtype=pd.ArrowDtype(decimal_type(scale)), index=raw.index), issues


def _date(raw: pd.Series[Any]) -> tuple[pd.Series[Any], pd.Series[bool]]:
    dates = pd.to_datetime(raw, format="%Y-%m-%d", errors="coerce")
    bad = raw.notna() & dates.isna()
    return dates.dt.date.where(dates.notna(), None), bad


def _boolean(raw: pd.Series[Any]) -> tuple[pd.Series[Any], pd.Series[bool]]:
    lowered = raw.str.strip().str.lower()
    values = lowered.map(lambda v: True if v in _TRUE else False if v in _FALSE else None)
    bad = raw.notna() & values.isna()
    return values.astype("boolean"), bad


def _string(raw: pd.Series[Any]) -> tuple[pd.Series[Any], pd.Series[bool]]:
    return raw.astype("string"), pd.Series(False, index=raw.index)


_CONVERTERS: dict[FieldType, Callable[[pd.Series[Any]], tuple[pd.Series[Any], pd.Series[bool]]]] = {
    FieldType.STRING: _string,
    FieldType.INTEGER: _integer,
    FieldType.NUMBER: _number,
    FieldType.DATE: _date,
    FieldType.BOOLEAN: _boolean,
}


def _outside_codes(values: pd.Series[Any], spec: FieldSpec) -> pd.Series[bool] | None:
    """Present values that are not in the field's declared code list or hierarchy."""
    if spec.codes is None and spec.hierarchy is None:
        return None
    present = values.notna()
    if spec.codes is not None:
        return present & ~values.isin(spec.codes)
    pattern = HIERARCHY_CODES[spec.hierarchy or ""].pattern
    return present & ~values.fillna("").str.fullmatch(pattern)


_USCC_VALUE = np.full(256, -1, dtype=np.int64)
_USCC_VALUE[np.frombuffer(ALPHABET.encode("ascii"), dtype=np.uint8)] = np.arange(len(ALPHABET))
_USCC_WEIGHTS = np.array([pow(3, i, 31) for i in range(17)], dtype=np.int64)


def _has_uscc_shape(values: pd.Series[Any]) -> pd.Series[bool]:
    return values.str.fullmatch(USCC_SHAPE).fillna(False).astype(bool)


def invalid_usccs(values: pd.Series[Any]) -> pd.Series[bool]:
    """Present values that are not valid USCCs (``broker.domain.uscc.is_valid_uscc``, for a
    whole column at once: the check character is the mod-31 weighted sum of GB 32100)."""
    shaped = _has_uscc_shape(values)
    codes = values[shaped].to_numpy(dtype=object)
    valid = np.zeros(len(values), dtype=bool)
    if len(codes):
        chars = np.frombuffer("".join(codes).encode("ascii"), dtype=np.uint8).reshape(-1, 18)
        digits = _USCC_VALUE[chars]
        check = (31 - (digits[:, :17] @ _USCC_WEIGHTS) % 31) % 31
        valid[shaped.to_numpy()] = check == digits[:, 17]
    return values.notna() & ~pd.Series(valid, index=values.index)


def _is_uscc_field(values: pd.Series[Any], spec: FieldSpec, schema: DatasetSchema) -> bool:
    """Declared ``format: uscc``; or the entity field, undeclared, mostly shaped like USCCs
    (an entity column of USCCs with a few typos is then checked, not silently let through)."""
    if spec.format is not None:
        return spec.format == "uscc"
    if spec.name != schema.entity_field or spec.type is not FieldType.STRING:
        return False
    present = int(values.notna().sum())
    return present > 0 and int(_has_uscc_shape(values).sum()) * 2 > present


def check_width(columns: int) -> None:
    """Refuse a file of more than ``MAX_COLUMNS`` columns before anything else is read."""
    if columns > MAX_COLUMNS:
        raise BadDataset(
            f"The file has more than {MAX_COLUMNS} columns; it is refused on its header "
            "(every column must be a declared field).",
            [{"column": None, "issue": "too-many-columns", "limit": MAX_COLUMNS}])


def _header_problems(header: list[str], schema: DatasetSchema) -> list[dict[str, Any]]:
    declared = set(schema.names)
    problems: list[dict[str, Any]] = [
        {"column": c, "issue": "missing"} for c in schema.names if c not in header
    ]
    # Undeclared header cells are named by position only: a header cell may hold data.
    problems += [{"column": None, "position": i + 1, "issue": "undeclared"}
                 for i, c in enumerate(header) if c not in declared]
    seen: set[str] = set()
    for i, c in enumerate(header):
        if c in seen and c in declared:
            problems.append({"column": c, "position": i + 1, "issue": "duplicate"})
        seen.add(c)
    problems += [{"column": spec.name, "issue": "unknown-format"}
                 for spec in schema.fields if spec.format is not None
                 and spec.format not in FORMATS]
    return problems


def conform(raw: pd.DataFrame, schema: DatasetSchema) -> pd.DataFrame:
    """Typed copy of ``raw`` (all columns strings, missing as NA) in declared column order."""
    check_width(len(raw.columns))
    header = [str(c) for c in raw.columns]
    declared = set(schema.names)
    if not declared & set(header):
        # Most likely a file without a header row, whose first row would be data: say so
        # without quoting any of it.
        raise BadDataset("The file's first row names none of the declared fields; it needs a "
                         "header row.", [{"column": None, "issue": "header-missing"}])
    problems = _header_problems(header, schema)
    if problems:
        raise BadDataset("The file's columns do not match the declared fields.", problems)
    if raw.empty:
        raise BadDataset("The file has no data rows.")
    out: dict[str, pd.Series[Any]] = {}
    for spec in schema.fields:
        column = raw[spec.name].reset_index(drop=True)
        if spec.type is FieldType.NUMBER and spec.scale is not None:
            values, issues = scaled(column, spec.scale)
            problems += [rows_problem(spec.name, issue, rows)
                         for issue, rows in issues.items() if rows.any()]
        else:
            values, bad = _CONVERTERS[spec.type](column)
            if bad.any():
                problems.append(
                    {
                        "column": spec.name,
                        "issue": f"not-{spec.type.value}",
                        "rows": _rows(bad),
                        "count": int(bad.sum()),
                    }
                )
        if spec.name == schema.entity_field:
            empty = values.isna()
            if spec.type is FieldType.STRING:
                empty |= values.fillna("").str.strip() == ""
            if empty.any():
                problems.append(
                    {
                        "column": spec.name,
                        "issue": "entity-missing",
                        "rows": _rows(empty),
                        "count": int(empty.sum()),
                    }
                )
        outside = _outside_codes(values, spec)
        if outside is not None and outside.any():
            problems.append(
                {
                    "column": spec.name,
                    "issue": "not-in-codes" if spec.codes is not None else "not-in-hierarchy",
                    "rows": _rows(outside),
                    "count": int(outside.sum()),
                }
            )
        if _is_uscc_field(values, spec, schema):
            invalid = invalid_usccs(column)
            if invalid.any():
                problems.append(rows_problem(spec.name, "bad-uscc", invalid))
        out[spec.name] = values
    if problems:
        raise BadDataset("Some values do not match the declared field types.", problems)
    return pd.DataFrame(out)


#: Threads that conform columns at once.
THREADS = min(4, os.cpu_count() or 1)

#: Text that ``pd.to_numeric`` and Arrow's cast read as the same double (checked in the tests):
#: optional minus, digits, optional fraction, optional exponent. Anything else (spaces, a plus
#: sign, "inf", thousands separators) is left to ``conform``, which types or refuses it.
_PLAIN_NUMBER = r"^-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]{1,3})?$"
#: Integers both read exactly: up to 18 digits, or 15 when the column has missing cells (pandas
#: then reads the column as doubles, which hold 15 digits exactly).
_PLAIN_INTEGER = r"^-?[0-9]{1,18}$"
_PLAIN_INTEGER_WITH_MISSING = r"^-?[0-9]{1,15}$"

#: The Arrow type of each field type in a conformed table (what ``pa.Table.from_pandas`` makes
#: of conform's frame), and one value of conform's pandas type, for the pandas metadata.
_ARROW_TYPES = {
    FieldType.STRING: pa.large_string(),
    FieldType.INTEGER: pa.int64(),
    FieldType.NUMBER: pa.float64(),
    FieldType.DATE: pa.date32(),
    FieldType.BOOLEAN: pa.bool_(),
}
_SAMPLES: dict[FieldType, Callable[[], Any]] = {
    FieldType.STRING: lambda: pd.array(["x"], dtype="string"),
    FieldType.INTEGER: lambda: pd.array([1], dtype="Int64"),
    FieldType.NUMBER: lambda: np.array([1.0]),
    FieldType.DATE: lambda: np.array([dt.date(2000, 1, 1)], dtype=object),
    FieldType.BOOLEAN: lambda: pd.array([True], dtype="boolean"),
}


def _sample(spec: FieldSpec) -> Any:
    if spec.type is FieldType.NUMBER and spec.scale is not None:
        return pd.Series([decimal.Decimal(1)], dtype=pd.ArrowDtype(decimal_type(spec.scale)))
    return _SAMPLES[spec.type]()


def table_schema(schema: DatasetSchema) -> pa.Schema:
    """The Arrow schema of a conformed table, with the pandas metadata that
    ``pa.Table.from_pandas`` gives conform's frame (so both store and read back alike)."""
    sample = pd.DataFrame({spec.name: _sample(spec) for spec in schema.fields})
    return pa.Schema.from_pandas(sample, preserve_index=False)


def _pandas_type(kind: pa.DataType) -> Any:
    if pa.types.is_decimal(kind):
        return pd.ArrowDtype(kind)
    return {pa.large_string(): pd.StringDtype(), pa.string(): pd.StringDtype(),
            pa.int64(): pd.Int64Dtype(), pa.bool_(): pd.BooleanDtype()}.get(kind)


def frame_of(table: pa.Table) -> pd.DataFrame:
    """A conformed table as the frame ``conform`` makes of the same data."""
    frame: pd.DataFrame = table.to_pandas(types_mapper=_pandas_type)
    return frame


def conform_table(table: pa.Table, schema: DatasetSchema) -> pa.Table | None:
    """``conform`` for a table of text (missing cells null), column by column and on each
    column's distinct values: the conformed table when every check passes, else ``None``.

    Only data that passes every check of ``conform`` in the same way is conformed here (the
    text-to-type rules are ``conform``'s own, run on the distinct values, or Arrow casts
    limited to text both read alike); on ``None`` the caller runs ``conform``, which says
    what is wrong, or types what was left to it.
    """
    header = table.column_names
    if (len(set(header)) != len(header) or set(header) != set(schema.names)
            or table.num_rows == 0
            or any(spec.format is not None and spec.format not in FORMATS
                   for spec in schema.fields)):
        return None
    if not all(pa.types.is_string(c.type) or pa.types.is_large_string(c.type)
               for c in table.columns):
        return None

    def typed(spec: FieldSpec) -> pa.ChunkedArray | None:
        try:
            return _conform_array(table.column(spec.name), spec, schema)
        except (pa.ArrowException, ValueError, TypeError):  # never shown: it quotes values
            return None

    with ThreadPoolExecutor(THREADS) as pool:  # Arrow's kernels run outside the GIL
        columns = list(pool.map(typed, schema.fields))
    if any(c is None for c in columns):
        return None
    return pa.Table.from_arrays(columns, schema=table_schema(schema))


def _all(mask: pa.ChunkedArray) -> bool:
    """Whether every present value of a boolean array is true (none present: true)."""
    return bool(pc.all(mask, min_count=0).as_py() is not False)


def _conform_array(array: pa.ChunkedArray, spec: FieldSpec, schema: DatasetSchema
                   ) -> pa.ChunkedArray | None:
    if spec.type is not FieldType.STRING and (
            spec.format is not None or spec.codes is not None or spec.hierarchy is not None
            or (spec.name == schema.entity_field and array.null_count)
            # conform types a date column without a date as timestamps
            or (spec.type is FieldType.DATE and array.null_count == len(array))):
        return None  # left to conform (a schema refuses most of these)
    if spec.type is FieldType.NUMBER and spec.scale is not None:
        # Arrow's cast refuses a value the scale cannot hold (no rounding), and one too wide
        if not _all(pc.match_substring_regex(array, _PLAIN_NUMBER)):
            return None
        exact = pc.cast(array, decimal_type(spec.scale))
        if not _all(pc.less(pc.abs(exact), pa.scalar(_LIMIT, type=exact.type))):
            return None  # refused by conform, which says so
        return exact
    if spec.type is FieldType.NUMBER:
        if not _all(pc.match_substring_regex(array, _PLAIN_NUMBER)):
            return None
        numbers = pc.cast(array, pa.float64())
        floats = numbers.to_numpy()  # missing as NaN
        if np.isinf(floats).any() or (np.signbit(floats) & (floats == 0)).any():
            return None  # refused by conform; or a negative zero, which pandas may read as 0
        return numbers
    if spec.type is FieldType.INTEGER:
        pattern = _PLAIN_INTEGER_WITH_MISSING if array.null_count else _PLAIN_INTEGER
        if not _all(pc.match_substring_regex(array, pattern)):
            return None
        return pc.cast(array, pa.int64())
    # The rest are checked and typed on their distinct values, by conform's own rules.
    distinct = pc.unique(array).drop_null()
    raw = pd.Series(distinct.to_pylist(), dtype="str")
    values, bad = _CONVERTERS[spec.type](raw)
    if bad.any():
        return None
    if spec.name == schema.entity_field and (array.null_count or (
            spec.type is FieldType.STRING and (values.fillna("").str.strip() == "").any())):
        return None
    outside = _outside_codes(values, spec)
    if outside is not None and outside.any():
        return None
    if spec.type is FieldType.STRING:
        if _is_uscc_field_by_distinct(array, raw, spec, schema) and invalid_usccs(raw).any():
            return None
        return pc.cast(array, pa.large_string())
    typed = pa.array(values.tolist(), type=_ARROW_TYPES[spec.type])  # no value is missing
    return pc.take(typed, pc.index_in(array, value_set=distinct))


def _is_uscc_field_by_distinct(array: pa.ChunkedArray, raw: pd.Series[Any], spec: FieldSpec,
                               schema: DatasetSchema) -> bool:
    """``_is_uscc_field`` for a column and its distinct values ``raw``: rows are counted only
    when some distinct values have the USCC shape and some do not."""
    if spec.format is not None:
        return spec.format == "uscc"
    present = len(array) - int(array.null_count)
    if spec.name != schema.entity_field or present == 0:
        return False
    shaped = _has_uscc_shape(raw).to_numpy()
    if shaped.all() or not shaped.any():
        return bool(shaped.any())
    indices = pc.index_in(array, value_set=pa.array(raw.tolist(), type=array.type))
    counts = np.bincount(indices.drop_null().to_numpy(), minlength=len(raw))
    return int(counts[shaped].sum()) * 2 > present
