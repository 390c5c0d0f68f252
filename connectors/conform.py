"""Conform a raw table of strings to a declared dataset schema, or say exactly why not.

The problems name columns, issues and 1-based data row numbers; they never quote a value, so a
rejected upload leaks nothing into errors or logs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from broker.domain.datasets import HIERARCHY_CODES, DatasetSchema, FieldSpec, FieldType
from broker.domain.errors import BadDataset

#: How many row numbers a problem lists per column; the count says how many there are in all.
MAX_ROWS_LISTED = 5

_TRUE = {"true", "t", "yes", "y", "1"}
_FALSE = {"false", "f", "no", "n", "0"}


def _rows(mask: pd.Series[bool]) -> list[int]:
    positions = np.flatnonzero(mask.to_numpy())
    return [int(p) + 1 for p in positions[:MAX_ROWS_LISTED]]


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


def conform(raw: pd.DataFrame, schema: DatasetSchema) -> pd.DataFrame:
    """Typed copy of ``raw`` (all columns strings, missing as NA) in declared column order."""
    header = [str(c) for c in raw.columns]
    declared = set(schema.names)
    if not declared & set(header):
        # Most likely a file without a header row, whose first row would be data: say so
        # without quoting any of it.
        raise BadDataset("The file's first row names none of the declared fields; it needs a "
                         "header row.", [{"column": None, "issue": "header-missing"}])
    problems: list[dict[str, Any]] = [
        {"column": c, "issue": "missing"} for c in schema.names if c not in header
    ]
    # Undeclared header cells are named by position only: a header cell may hold data.
    problems += [{"column": None, "position": i + 1, "issue": "undeclared"}
                 for i, c in enumerate(header) if c not in declared]
    if problems:
        raise BadDataset("The file's columns do not match the declared fields.", problems)
    if raw.empty:
        raise BadDataset("The file has no data rows.")
    out: dict[str, pd.Series[Any]] = {}
    for spec in schema.fields:
        column = raw[spec.name].reset_index(drop=True)
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
        out[spec.name] = values
    if problems:
        raise BadDataset("Some values do not match the declared field types.", problems)
    return pd.DataFrame(out)
