"""The fast upload path: Arrow's CSV reader, ``conform_table`` and the column-wise row hashes
give exactly what pandas, ``conform`` and ``hash_pandas_object`` give, or leave it to them."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.domain.datasets import DatasetSchema, FieldRole, FieldSpec, FieldType
from broker.domain.errors import BadDataset
from broker.domain.uscc import make_uscc
from connectors.conform import conform, conform_table, frame_of, text_frame
from connectors.delimited import (
    _read_pandas,
    check_row_widths,
    detect_encoding,
    read_csv_table,
)
from connectors.storage import _occurrences, row_hashes

USCCS = [make_uscc("330481", f"{i:08d}") for i in range(1, 6)]
KEYS = ("0123456789abcdef", "fedcba9876543210")
BAD_USCC = USCCS[0][:17] + ("0" if USCCS[0][17] != "0" else "1")

#: Text cells that are typed alike, typed differently or refused by subtle rules.
TOKENS: dict[FieldType, list[str | None]] = {
    FieldType.NUMBER: ["1", "-0", "0", "-0.0", "0.0", "1.5", "1e5", "1E-3", " 1", "+1", "inf",
                       "nan", "1,5", ".5", "5.", "1e400", "123456789012345678901", "0x10",
                       "1_000", "\u0661", "9007199254740993", "0.1", "-2.5e-300", "007.5",
                       "1e-400", "-1e-400", "1e-310", "-0e5", "0e5",
                       None],
    FieldType.INTEGER: ["1", "-1", "0", "-0", "1.0", "1e3", "9223372036854775807",
                        "9223372036854775808", "-9223372036854775808", "999999999999999999",
                        "9007199254740993", " 5", "+5", "5.5", "abc", "007", None],
    FieldType.DATE: ["2024-01-01", "2024-1-1", "2024-02-30", "2024-02-29", "1500-01-01",
                     "2300-01-01", "2024-01-01 00:00:00", " 2024-01-01", "20240101",
                     "2024-13-01", "0001-01-01", None],
    FieldType.BOOLEAN: ["true", "TRUE", " yes ", "Y", "0", "1", "maybe", "\uff54rue", "f",
                        None],
    FieldType.STRING: ["a", "b", " ", "\u3000", "许村镇", "C3825", "3825", "Z9999", "E1",
                       *USCCS, BAD_USCC, USCCS[1].lower(), None],
}


def _schema(entity_type: FieldType, codes: bool, uscc: bool) -> DatasetSchema:
    return DatasetSchema.of("e", [
        FieldSpec("e", entity_type, FieldRole.ENTITY),
        FieldSpec("s", FieldType.STRING, FieldRole.DIMENSION,
                  codes=("a", "b", "许村镇") if codes else None),
        FieldSpec("h", FieldType.STRING, FieldRole.DIMENSION,
                  hierarchy="gbt4754" if codes else None),
        FieldSpec("u", FieldType.STRING, FieldRole.IDENTIFIER,
                  format="uscc" if uscc else None),
        FieldSpec("i", FieldType.INTEGER, FieldRole.MEASURE),
        FieldSpec("n", FieldType.NUMBER, FieldRole.MEASURE),
        FieldSpec("d", FieldType.DATE, FieldRole.DIMENSION),
        FieldSpec("b", FieldType.BOOLEAN, FieldRole.DIMENSION),
    ])


def _cells(kind: FieldType, plain: bool) -> st.SearchStrategy[str | None]:
    """Mostly well-formed cells (so that whole columns pass), some of every other kind."""
    good: dict[FieldType, list[str | None]] = {FieldType.NUMBER: ["1.5", "2", "-3.25", "1e3", None],
            FieldType.INTEGER: ["1", "-2", "30", None], FieldType.DATE: ["2024-01-31", None],
            FieldType.BOOLEAN: ["true", "no"], FieldType.STRING: [*USCCS]}
    if plain:
        return st.sampled_from(good[kind])
    return st.one_of(st.sampled_from(good[kind]), st.sampled_from(TOKENS[kind]))


@st.composite
def tables(draw: st.DrawFn) -> tuple[DatasetSchema, dict[str, list[str | None]]]:
    schema = _schema(draw(st.sampled_from([FieldType.STRING, FieldType.INTEGER])),
                     draw(st.booleans()), draw(st.booleans()))
    rows = draw(st.integers(1, 12))
    plain = draw(st.sets(st.sampled_from(schema.names)))
    columns = {}
    for spec in schema.fields:
        kind = FieldType.STRING if spec.name in ("u", "e") and spec.type is FieldType.STRING \
            else spec.type
        cells = _cells(kind, spec.name in plain)
        if spec.name == "s":
            cells = st.sampled_from(["a", "b", "许村镇", None] if spec.name in plain
                                    else TOKENS[FieldType.STRING])
        if spec.name == "h":
            cells = st.sampled_from(["C3825", "3825", None] if spec.name in plain
                                    else TOKENS[FieldType.STRING])
        columns[spec.name] = draw(st.lists(cells, min_size=rows, max_size=rows))
    return schema, columns


def _conformed(schema: DatasetSchema, columns: dict[str, list[str | None]]) -> pa.Table | None:
    """What ``conform`` makes of the columns as a table, or None when it refuses them."""
    try:
        frame = conform(text_frame(list(columns), list(columns.values())), schema)
    except BadDataset:
        return None
    return pa.Table.from_pandas(frame, preserve_index=False)


@settings(max_examples=300, deadline=None)
@given(tables())
def test_conform_table_types_as_conform_does_or_leaves_it_to_conform(
    case: tuple[DatasetSchema, dict[str, list[str | None]]],
) -> None:
    schema, columns = case
    text = pa.table({name: pa.array(cells, type=pa.string()) for name, cells in columns.items()})
    fast = conform_table(text, schema)
    if fast is None:
        return
    slow = _conformed(schema, columns)
    assert slow is not None  # nothing conform refuses passes
    assert fast.equals(slow, check_metadata=True)
    pd.testing.assert_frame_equal(frame_of(fast), conform(
        text_frame(list(columns), list(columns.values())), schema))


def test_conform_table_takes_the_plain_county_columns() -> None:
    schema = _schema(FieldType.STRING, codes=True, uscc=True)
    columns: dict[str, list[str | None]] = {
        "e": [*USCCS[:3]], "s": ["a", None, "许村镇"], "h": ["C3825", "3825", None],
        "u": [USCCS[4], None, USCCS[0]], "i": ["1", None, "-7"], "n": ["1.5", "1e3", None],
        "d": ["2024-01-31", None, "1999-12-01"], "b": ["true", "N", None],
    }
    text = pa.table({name: pa.array(cells, type=pa.string()) for name, cells in columns.items()})
    fast = conform_table(text, schema)
    assert fast is not None
    assert fast.equals(_conformed(schema, columns), check_metadata=True)


@pytest.mark.parametrize("columns", [
    {"e": [None, USCCS[0]]},  # entity missing
    {"e": [" ", USCCS[0]]},  # entity blank
    {"e": [USCCS[0], BAD_USCC]},  # a mistyped code in an entity column of codes
    {"s": ["c", "a"]},  # outside the code list
    {"h": ["C38", "C3825"]},  # outside the hierarchy
    {"u": [BAD_USCC, USCCS[0]]},  # declared format, wrong check character
    {"i": ["1.5", "2"]}, {"n": ["x", "1"]}, {"d": ["2024-02-30", None]}, {"b": ["maybe", "1"]},
])
def test_conform_table_leaves_every_refusal_to_conform(columns: dict[str, list[str | None]]
                                                       ) -> None:
    schema = _schema(FieldType.STRING, codes=True, uscc=True)
    base: dict[str, list[str | None]] = {
        "e": [*USCCS[:2]], "s": ["a", "b"], "h": ["C3825", "3825"], "u": [*USCCS[2:4]],
        "i": ["1", "2"], "n": ["1.5", "2"], "d": ["2024-01-31", "2024-02-01"],
        "b": ["true", "false"]}
    base.update(columns)
    text = pa.table({name: pa.array(cells, type=pa.string()) for name, cells in base.items()})
    assert conform_table(text, schema) is None
    assert _conformed(schema, base) is None


CSV_TEXTS = [
    "e,s,h,u,i,n,d,b\n{0},a,C3825,{1},1,1.5,2024-01-31,true\n{1},b,,,,,,\n",
    "\ufeffe;s;h;u;i;n;d;b\r\n{0};a;C3825;{1};1;1.5;2024-01-31;true\r\n",
    'e,s,h,u,i,n,d,b\n"{0}","a","C3825","{1}","1","1.5","2024-01-31","yes"\n',
    "e,s,h,u,i,n,d,b\n{0},a,C3825,{1},1,1.5,2024-01-31,true,extra\n",  # too many cells
    "e,s,h,u,i,n,d,b\n{0},a,C3825\n",  # too few cells: pandas pads them
    "e,s,h,u,i,n,d,b\n",  # no data rows
    "s,e,h,u,i,n,d,b,e\n",  # a repeated column
    "e,s,h,u,i,n,d\n{0},a,C3825,{1},1,1.5,2024-01-31\n",  # a missing column
    "e,s,h,u,i,n,d,b\n{0},\"a\nb\",C3825,{1},1,1.5,2024-01-31,true\n",  # a line break in a cell
    'e,s,h,u,i,n,d,b\n{0},"a""b",C3825,{1},1,1.5,2024-01-31,true\n',
    "e,s,h,u,i,n,d,b\n\n{0},a,C3825,{1},1,1.5,2024-01-31,true\n\n",  # blank lines
    'e,s,h,u,i,n,d,b\n{0},"",C3825,"",1,"",2024-01-31,""\n',  # quoted empty cells
    "e,s,h,u,i,n,d,b\n{0} ,a ,C3825, {1},1 ,1.5 ,2024-01-31 ,true \n",  # spaces around cells
    " e,s,h,u,i,n,d,b\n{0},a,C3825,{1},1,1.5,2024-01-31,true\n",  # a space in the header
    "e,s,h,u,i,n,d,b\n{0},a,C3825,{1},1,1.5,2024-01-31,true",  # no final line break
    "e,s,h,u,i,n,d,b\r{0},a,C3825,{1},1,1.5,2024-01-31,true\r",  # old Mac line breaks
    "",
]


@pytest.mark.parametrize("text", CSV_TEXTS)
@pytest.mark.parametrize("encoding", ["utf-8", "gbk"])
def test_the_arrow_csv_path_reads_as_the_pandas_path(text: str, encoding: str,
                                                     tmp_path: Path) -> None:
    schema = _schema(FieldType.STRING, codes=False, uscc=True)
    path = tmp_path / "x.csv"
    path.write_bytes(text.replace("\ufeff", "" if encoding == "gbk" else "\ufeff").format(
        USCCS[0], USCCS[1]).encode(encoding))

    def outcome(read: Any) -> Any:
        try:
            return read()
        except BadDataset as exc:
            return exc.extensions, str(exc)

    def slow() -> pa.Table:
        encoding = detect_encoding(path)
        head = path.read_text(encoding).lstrip("\ufeff")
        delimiter = ";" if ";" in head.split("\n")[0] else ","
        frame = _read_pandas(path, encoding, delimiter, schema)
        check_row_widths(path, encoding, delimiter)  # where pandas pads short rows
        return pa.Table.from_pandas(frame, preserve_index=False)

    fast, reference = outcome(lambda: read_csv_table(path, schema)), outcome(slow)
    if isinstance(reference, pa.Table):
        assert fast.equals(reference, check_metadata=True)
    else:
        assert fast == reference


@pytest.mark.parametrize("cells", [
    ["123456789012345678901", "1"], ["9223372036854775808"], ["18446744073709551616", "5"],
    ["-9223372036854775809", None], ["9007199254740993", "1"], ["9007199254740993", None],
    ["-0", "1"], ["-0.0", "1.5"], ["1e400"], ["1e-400", "2"], ["4.9e-324"], ["00", "-00"],
])
@pytest.mark.parametrize("kind", [FieldType.NUMBER, FieldType.INTEGER])
def test_conform_table_reads_edge_numbers_as_conform_or_leaves_them(
    cells: list[str | None], kind: FieldType
) -> None:
    schema = DatasetSchema.of("e", [FieldSpec("e", FieldType.STRING, FieldRole.ENTITY),
                                    FieldSpec("x", kind, FieldRole.MEASURE)])
    columns: dict[str, list[str | None]] = {"e": ["A"] * len(cells), "x": cells}
    text = pa.table({name: pa.array(c, type=pa.string()) for name, c in columns.items()})
    fast = conform_table(text, schema)
    if fast is not None:
        slow = _conformed(schema, columns)
        assert slow is not None
        assert fast.equals(slow, check_metadata=True)


def _frame_with_missing_values() -> pd.DataFrame:
    return pd.DataFrame({
        "e": pd.array(["A", "A", "B", None, "A"], dtype="string"),
        "i": pd.array([1, None, 3, 1, 1], dtype="Int64"),
        "n": [1.5, np.nan, -0.0, 1.5, 1.5],
        "d": np.array([dt.date(2024, 1, 1), None, dt.date(1999, 1, 2), None,
                       dt.date(2024, 1, 1)], dtype=object),
        "b": pd.array([True, None, False, True, True], dtype="boolean"),
    })


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.permutations(range(5)), st.booleans())
def test_row_hashes_are_pandas_row_hashes_of_conforms_frame(order: list[int],
                                                            chunked: bool) -> None:
    frame = _frame_with_missing_values().iloc[order].reset_index(drop=True)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    if chunked:
        table = pa.concat_tables([table.slice(0, 2), table.slice(2)])
    for key, hashes in zip(KEYS, row_hashes(table, KEYS), strict=True):
        expected = pd.util.hash_pandas_object(frame, index=False, hash_key=key).to_numpy()
        np.testing.assert_array_equal(hashes, expected)


def test_occurrences_count_identical_rows_of_an_enterprise_in_order() -> None:
    rng = np.random.default_rng(7)
    keys = pd.DataFrame({"e": rng.integers(0, 3, 400).astype("uint32"),
                         "h1": rng.integers(0, 5, 400).astype("uint64"),
                         "h2": rng.integers(0, 2, 400).astype("uint64")})
    keys.loc[::7, "h1"] = np.arange(100, 100 + len(keys.loc[::7]), dtype="uint64")
    np.testing.assert_array_equal(_occurrences(keys),
                                  keys.groupby(["e", "h1", "h2"]).cumcount().to_numpy())


def test_occurrences_count_identical_rows_among_a_million_distinct_hashes() -> None:
    rng = np.random.default_rng(11)
    rows = 1 << 20
    keys = pd.DataFrame({"e": rng.integers(0, 5000, rows).astype("uint32"),
                         "h1": rng.integers(0, 2**64 - 1, rows, dtype="uint64"),
                         "h2": rng.integers(0, 2**64 - 1, rows, dtype="uint64")})
    copies = rng.choice(rows, 300, replace=False)
    for column in keys.columns:  # identical rows
        keys.loc[copies[150:], column] = keys.loc[copies[:150], column].to_numpy()
    keys.loc[copies[:20], "e"] = 1  # and some identical hashes of other enterprises
    np.testing.assert_array_equal(_occurrences(keys),
                                  keys.groupby(["e", "h1", "h2"]).cumcount().to_numpy())


def test_a_read_csv_tables_row_hashes_are_those_of_the_pandas_paths_frame(tmp_path: Path
                                                                          ) -> None:
    schema = _schema(FieldType.STRING, codes=True, uscc=True)
    path = tmp_path / "x.csv"
    path.write_text("e,s,h,u,i,n,d,b\n" + "".join(
        f"{USCCS[i % 3]},{'ab'[i % 2]},C3825,{USCCS[4] if i % 4 else ''},{i if i % 5 else ''},"
        f"{i / 7 if i % 6 else ''},2024-01-{i % 28 + 1:02d},{'ty'[i % 2] if i % 3 else ''}\n"
        for i in range(200)), encoding="utf-8")
    table = read_csv_table(path, schema)
    frame = _read_pandas(path, "utf-8-sig", ",", schema)
    for key, hashes in zip(KEYS, row_hashes(table, KEYS), strict=True):
        np.testing.assert_array_equal(
            hashes, pd.util.hash_pandas_object(frame, index=False, hash_key=key).to_numpy())
