"""File connectors: every encoding, delimiter and format gives the UTF-8 CSV's typed frame, and
every damaged, hostile or wrong file is refused as a BadDataset that quotes no value."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import os
import random
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openpyxl
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st
from openpyxl.styles import Font
from pydantic import ValidationError

from broker.domain.datasets import DatasetSchema, FieldRole, FieldSpec, FieldType
from broker.domain.errors import BadDataset
from broker.domain.uscc import ALPHABET, is_valid_uscc, make_uscc
from broker.services.provider_inputs import FieldIn
from broker.store.repositories import _field_spec
from connectors.conform import MAX_ROWS_LISTED, conform, invalid_usccs, text_frame
from connectors.delimited import choose_delimiter, read_csv
from connectors.excel import read_xlsx
from connectors.parquet import read_parquet

ENTITY = "统一社会信用代码"
#: Values that occur in the data of the tests below and must never occur in a refusal.
SECRETS = ("绝密镇", "机密公司", "9876543", "机密XYZ")

USCCS = [make_uscc("330481", f"{i:08d}") for i in range(1, 9)]
SAMPLE = pd.DataFrame({
    ENTITY: USCCS,
    "镇": ["许村镇", "长安镇", "周王庙镇", "绝密镇", "许村镇", "袁花镇", "斜桥镇", "长安镇"],
    "企业名称": ["海宁光伏有限公司", "机密公司", None, "浙江纺织印染厂", "智能家居(海宁)",
                "汽配零件厂", "装备制造厂", "许村布艺"],
    "员工": pd.array([12, None, 3, 9876543, 0, -5, 250, 1], dtype="Int64"),
    "用电量": [0.1, 1e-7, 123456789.25, None, 12.0, -0.5, 2.5e10, 1 / 3],
    "成立日期": [dt.date(2001, 1, 31), None, dt.date(1999, 12, 1), dt.date(2024, 2, 29),
             dt.date(2010, 6, 1), dt.date(1970, 1, 1), dt.date(2020, 12, 31),
             dt.date(2015, 7, 15)],
    "高新": pd.array([True, False, None, True, False, True, False, True], dtype="boolean"),
})
SCHEMA = DatasetSchema.of(ENTITY, [
    FieldSpec(ENTITY, FieldType.STRING, FieldRole.ENTITY),
    FieldSpec("镇", FieldType.STRING, FieldRole.DIMENSION),
    FieldSpec("企业名称", FieldType.STRING, FieldRole.IDENTIFIER),
    FieldSpec("员工", FieldType.INTEGER, FieldRole.MEASURE),
    FieldSpec("用电量", FieldType.NUMBER, FieldRole.MEASURE),
    FieldSpec("成立日期", FieldType.DATE, FieldRole.DIMENSION),
    FieldSpec("高新", FieldType.BOOLEAN, FieldRole.DIMENSION),
])


def python_rows(frame: pd.DataFrame) -> list[list[Any]]:
    """The frame's rows as Python values, None where missing."""
    cells = frame.astype(object).where(frame.notna(), None)
    return [list(row) for row in cells.itertuples(index=False)]


def write_csv(path: Path, frame: pd.DataFrame = SAMPLE, **options: Any) -> Path:
    """``frame`` as CSV text (pandas' writer, as a provider would export it)."""
    frame.to_csv(path, index=False, **options)
    return path


def write_xlsx(path: Path, frame: pd.DataFrame = SAMPLE) -> Path:
    """``frame`` as a workbook of typed cells (numbers, dates, booleans, text)."""
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.append(list(frame.columns))
    for row in python_rows(frame):
        sheet.append(row)
    book.save(path)
    return path


def write_parquet(path: Path, frame: pd.DataFrame = SAMPLE, **options: Any) -> Path:
    """``frame`` as typed Parquet (Arrow's types for pandas' dtypes)."""
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path, **options)
    return path


def expected(tmp_path: Path) -> pd.DataFrame:
    """The reference: the sample read from a plain UTF-8 comma CSV."""
    return read_csv(write_csv(tmp_path / "reference.csv"), SCHEMA)


def refused(read: Callable[[Path, DatasetSchema], pd.DataFrame], path: Path,
            schema: DatasetSchema = SCHEMA) -> BadDataset:
    """The BadDataset reading ``path`` raises, checked to quote none of the secrets."""
    with pytest.raises(BadDataset) as caught:
        read(path, schema)
    assert_quotes_nothing(caught.value)
    return caught.value


def assert_quotes_nothing(error: BadDataset) -> None:
    """Neither the detail nor the problems of ``error`` hold a value of the data."""
    said = f"{error}{error.detail}{json.dumps(error.extensions, ensure_ascii=False)}"
    for secret in SECRETS:
        assert secret not in said
    for problem in error.extensions["problems"]:
        assert problem["issue"]


def issues(error: BadDataset) -> set[str]:
    """The issue slugs of a refusal."""
    return {p["issue"] for p in error.extensions["problems"]}


def problem(error: BadDataset, issue: str) -> dict[str, Any]:
    """The one problem with ``issue``."""
    found: list[dict[str, Any]] = [p for p in error.extensions["problems"]
                                    if p["issue"] == issue]
    assert len(found) == 1
    return found[0]


# --- the same data through every reader ------------------------------------------------------


def _gbk_semicolon(path: Path) -> Path:
    write_csv(path, encoding="gbk", sep=";")
    with pytest.raises(UnicodeDecodeError):
        path.read_bytes().decode("utf-8")  # the test means something only if it is not UTF-8
    return path


def _gb18030_bom_tab(path: Path) -> Path:
    text = SAMPLE.to_csv(index=False, sep="\t")
    path.write_bytes("\ufeff".encode("gb18030") + text.encode("gb18030"))
    return path


def _dictionary_parquet(path: Path) -> Path:
    frame = SAMPLE.assign(镇=SAMPLE["镇"].astype("category"))
    return write_parquet(path, frame, compression="zstd")


def _small_row_groups_parquet(path: Path) -> Path:
    return write_parquet(path, row_group_size=3)


def _other_types_parquet(path: Path) -> Path:
    table = pa.Table.from_pandas(SAMPLE, preserve_index=False)
    dates = pd.to_datetime(SAMPLE["成立日期"]).astype("datetime64[us]")
    table = (table.set_column(3, "员工", table.column("员工").cast(pa.int32()))
             .set_column(5, "成立日期", pa.array(dates, pa.timestamp("us")))
             .set_column(1, "镇", table.column("镇").cast(pa.string())))
    pq.write_table(table, path)
    return path


WRITERS: dict[str, Callable[[Path], Path]] = {
    "utf8-bom": lambda p: write_csv(p.with_suffix(".csv"), encoding="utf-8-sig"),
    "gbk-semicolon": lambda p: _gbk_semicolon(p.with_suffix(".csv")),
    "gb18030-bom-tab": lambda p: _gb18030_bom_tab(p.with_suffix(".tsv")),
    "pipe": lambda p: write_csv(p.with_suffix(".csv"), sep="|"),
    "quoted-header-crlf": lambda p: write_csv(p.with_suffix(".csv"), quoting=csv.QUOTE_ALL,
                                              lineterminator="\r\n"),
    "xlsx": lambda p: write_xlsx(p.with_suffix(".xlsx")),
    "parquet": lambda p: write_parquet(p.with_suffix(".parquet")),
    "parquet-dictionary": lambda p: _dictionary_parquet(p.with_suffix(".parquet")),
    "parquet-row-groups": lambda p: _small_row_groups_parquet(p.with_suffix(".parquet")),
    "parquet-int32-timestamp": lambda p: _other_types_parquet(p.with_suffix(".parquet")),
}
READERS: dict[str, Callable[[Path, DatasetSchema], pd.DataFrame]] = {
    ".csv": read_csv, ".tsv": read_csv, ".xlsx": read_xlsx, ".parquet": read_parquet,
}


@pytest.mark.parametrize("writer", WRITERS)
def test_every_encoding_delimiter_and_format_gives_the_csv_frame(tmp_path: Path,
                                                                writer: str) -> None:
    path = WRITERS[writer](tmp_path / "data")
    frame = READERS[path.suffix](path, SCHEMA)
    pd.testing.assert_frame_equal(frame, expected(tmp_path))


def test_the_reference_frame_is_typed_as_declared(tmp_path: Path) -> None:
    frame = expected(tmp_path)
    assert list(frame.columns) == list(SCHEMA.names)
    assert frame["员工"].dtype == "Int64"
    assert frame["用电量"].tolist()[:3] == [0.1, 1e-7, 123456789.25]
    assert frame["成立日期"][3] == dt.date(2024, 2, 29)
    assert frame["高新"].isna().tolist() == SAMPLE["高新"].isna().tolist()
    assert frame["镇"][3] == "绝密镇"
    assert frame["企业名称"].isna().sum() == 1


def test_byte_order_mark_is_not_part_of_the_first_name(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "bom.csv", encoding="utf-8-sig", quoting=csv.QUOTE_ALL)
    assert path.read_bytes().startswith(b'\xef\xbb\xbf"')
    pd.testing.assert_frame_equal(read_csv(path, SCHEMA), expected(tmp_path))


def test_delimiter_is_the_one_naming_most_declared_fields(tmp_path: Path) -> None:
    for sep in (",", ";", "\t", "|"):
        path = write_csv(tmp_path / "d.csv", sep=sep, quoting=csv.QUOTE_ALL)
        pd.testing.assert_frame_equal(read_csv(path, SCHEMA), expected(tmp_path))
    # A quoted header cell holding another delimiter does not sway the choice.
    assert choose_delimiter(f'"{ENTITY}";"镇,企业名称,员工";"用电量"\n', SCHEMA) == ";"
    assert choose_delimiter(f'{ENTITY}|"a;b;c"|镇\n', SCHEMA) == "|"
    assert choose_delimiter("a;b,c\n", SCHEMA) == ","  # names none: the comma
    assert choose_delimiter(f"{ENTITY};镇,员工,用电量\n", SCHEMA) == ","  # 2 against 1


def test_a_one_column_file_ties_to_the_comma(tmp_path: Path) -> None:
    schema = DatasetSchema.of(ENTITY, [FieldSpec(ENTITY, FieldType.STRING, FieldRole.ENTITY)])
    path = tmp_path / "one.csv"
    path.write_text(f"{ENTITY}\n{USCCS[0]}\n{USCCS[1]}\n", encoding="utf-8")
    assert read_csv(path, schema)[ENTITY].tolist() == USCCS[:2]


def test_excel_ignores_trailing_empty_rows_and_renders_times(tmp_path: Path) -> None:
    path = write_xlsx(tmp_path / "t.xlsx")
    book = openpyxl.load_workbook(path)
    sheet = book.active
    for row in range(sheet.max_row + 1, sheet.max_row + 4):  # styled but empty cells
        sheet.cell(row=row, column=2).font = Font(bold=True)
    book.save(path)
    pd.testing.assert_frame_equal(read_xlsx(path, SCHEMA), expected(tmp_path))
    # A date cell with a time of day is not a date.
    sheet.cell(row=3, column=6).value = dt.datetime(2001, 1, 31, 13, 30)  # noqa: DTZ001
    book.save(path)
    error = refused(read_xlsx, path)
    assert problem(error, "not-date") == {"column": "成立日期", "issue": "not-date",
                                          "rows": [2], "count": 1}


# --- values that do not match the declaration ------------------------------------------------


def _with(frame: pd.DataFrame, row: int, column: str, value: Any) -> pd.DataFrame:
    changed = frame.astype({column: object}).copy()
    changed.loc[row, column] = value
    return changed


@pytest.mark.parametrize("suffix", [".csv", ".xlsx", ".parquet"])
def test_wrong_types_are_refused_by_row_without_the_value(tmp_path: Path, suffix: str) -> None:
    bad = _with(SAMPLE, 2, "员工", "机密XYZ")
    path = tmp_path / f"bad{suffix}"
    if suffix == ".parquet":
        write_parquet(path, bad.astype({"员工": str}))
    else:
        {".csv": write_csv, ".xlsx": write_xlsx}[suffix](path, bad)
    error = refused(READERS[suffix], path)
    assert problem(error, "not-integer") == {"column": "员工", "issue": "not-integer",
                                             "rows": [3], "count": 1}


def test_several_problems_are_listed_with_at_most_five_rows_each(tmp_path: Path) -> None:
    rows = pd.concat([SAMPLE] * 3, ignore_index=True).astype({"用电量": object})
    rows["用电量"] = "机密XYZ"
    rows.loc[4, ENTITY] = None
    error = refused(read_csv, write_csv(tmp_path / "many.csv", rows))
    assert problem(error, "not-number")["rows"] == list(range(1, MAX_ROWS_LISTED + 1))
    assert problem(error, "not-number")["count"] == len(rows)
    assert problem(error, "entity-missing")["rows"] == [5]


def test_missing_entity_values_are_refused(tmp_path: Path) -> None:
    for suffix, write in ((".csv", write_csv), (".xlsx", write_xlsx),
                          (".parquet", write_parquet)):
        path = write(tmp_path / f"m{suffix}", _with(SAMPLE, 5, ENTITY, None))
        error = refused(READERS[suffix], path)
        assert problem(error, "entity-missing")["rows"] == [6]


def test_a_wrong_uscc_check_character_is_refused(tmp_path: Path) -> None:
    code = USCCS[3]
    wrong = code[:-1] + next(c for c in ALPHABET if c != code[-1])
    for suffix, write in ((".csv", write_csv), (".xlsx", write_xlsx),
                          (".parquet", write_parquet)):
        path = write(tmp_path / f"u{suffix}", _with(SAMPLE, 3, ENTITY, wrong))
        error = refused(READERS[suffix], path)
        assert error.extensions["problems"] == [
            {"column": ENTITY, "issue": "bad-uscc", "rows": [4], "count": 1}]
        assert wrong not in str(error.extensions)


def test_an_entity_of_usccs_with_one_malformed_code_is_refused(tmp_path: Path) -> None:
    error = refused(read_csv, write_csv(tmp_path / "u.csv", _with(SAMPLE, 6, ENTITY, "E1")))
    assert problem(error, "bad-uscc")["rows"] == [7]


def test_entities_that_are_not_usccs_are_not_checked(tmp_path: Path) -> None:
    frame = SAMPLE.assign(**{ENTITY: [f"E{i}" for i in range(len(SAMPLE))]})
    assert read_csv(write_csv(tmp_path / "e.csv", frame), SCHEMA)[ENTITY].tolist()[:2] == [
        "E0", "E1"]


def test_a_declared_uscc_field_is_checked_even_when_not_the_entity(tmp_path: Path) -> None:
    schema = DatasetSchema.of(ENTITY, [
        *SCHEMA.fields, FieldSpec("母公司", FieldType.STRING, FieldRole.DIMENSION, format="uscc")])
    parents = pd.Series([USCCS[0], None, "E1", *USCCS[3:]], dtype=object)
    frame = SAMPLE.assign(母公司=parents)
    error = refused(read_csv, write_csv(tmp_path / "p.csv", frame), schema)
    assert error.extensions["problems"] == [
        {"column": "母公司", "issue": "bad-uscc", "rows": [3], "count": 1}]
    frame = SAMPLE.assign(母公司=pd.Series([USCCS[0], None, *USCCS[2:]], dtype=object))
    assert read_csv(write_csv(tmp_path / "p.csv", frame), schema)["母公司"].isna().sum() == 1


@given(st.lists(st.one_of(st.none(), st.text(alphabet=ALPHABET + "abc中", max_size=19),
                          st.builds(make_uscc, st.text(alphabet="0123456789", min_size=6,
                                                       max_size=6),
                                    st.text(alphabet="0123456789ABC", min_size=8,
                                            max_size=8))),
                max_size=20))
def test_the_column_check_agrees_with_is_valid_uscc(values: list[str | None]) -> None:
    invalid = invalid_usccs(text_frame(["x"], [values])["x"])
    assert invalid.tolist() == [v is not None and not is_valid_uscc(v) for v in values]


def test_format_is_declared_stored_and_restored() -> None:
    spec = FieldIn(name="母公司", type=FieldType.STRING, role=FieldRole.DIMENSION,
                   format="uscc").to_domain()
    assert spec.format == "uscc"
    assert spec.as_json()["format"] == "uscc"
    assert _field_spec(spec.as_json()) == spec
    assert "format" not in FieldSpec("x", FieldType.STRING, FieldRole.DIMENSION).as_json()
    with pytest.raises(ValidationError):
        FieldIn.model_validate({"name": "x", "type": "string", "role": "dimension",
                                "format": "iban"})


def test_an_unknown_format_is_refused_not_ignored(tmp_path: Path) -> None:
    schema = DatasetSchema.of(ENTITY, [
        *SCHEMA.fields[:-1], FieldSpec("高新", FieldType.BOOLEAN, FieldRole.DIMENSION,
                                       format="iban")])
    assert issues(refused(read_csv, write_csv(tmp_path / "f.csv"), schema)) == {"unknown-format"}


def test_duplicated_columns_are_refused_by_position(tmp_path: Path) -> None:
    raw = text_frame([ENTITY, "镇", "镇"], [USCCS[:1], ["绝密镇"], ["x"]])
    schema = DatasetSchema.of(ENTITY, SCHEMA.fields[:2])
    with pytest.raises(BadDataset) as caught:
        conform(raw, schema)
    assert caught.value.extensions["problems"] == [
        {"column": "镇", "position": 3, "issue": "duplicate"}]


# --- damaged and hostile files ---------------------------------------------------------------


def test_truncated_files_are_refused(tmp_path: Path) -> None:
    whole = write_csv(tmp_path / "w.csv").read_bytes()
    cut = whole.index("绝密镇".encode()) + 1  # inside a three-byte character
    (tmp_path / "cut.csv").write_bytes(whole[:cut])
    assert issues(refused(read_csv, tmp_path / "cut.csv")) == {"truncated"}
    quoted = write_csv(tmp_path / "q.csv", quoting=csv.QUOTE_ALL).read_bytes()
    (tmp_path / "cut.csv").write_bytes(quoted[: quoted.index(b"1e-07") + 2])
    # cut inside a quoted cell
    assert issues(refused(read_csv, tmp_path / "cut.csv")) == {"unterminated-quote"}
    for suffix, write, issue in ((".xlsx", write_xlsx, "not-xlsx"),
                                 (".parquet", write_parquet, "truncated")):
        whole = write(tmp_path / f"w{suffix}").read_bytes()
        for keep in (len(whole) // 2, len(whole) - 1, 10):
            (tmp_path / f"cut{suffix}").write_bytes(whole[:keep])
            found = issues(refused(READERS[suffix], tmp_path / f"cut{suffix}"))
            assert found in ({issue}, {"not-parquet"})


def test_a_ragged_row_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    lines = write_csv(tmp_path / "w.csv").read_text(encoding="utf-8").splitlines()
    lines[3] += ",机密XYZ,more"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert problem(refused(read_csv, path), "malformed-csv")["rows"] == [4]


@pytest.mark.parametrize("suffix", [".csv", ".xlsx", ".parquet"])
def test_random_junk_is_refused(tmp_path: Path, suffix: str) -> None:
    junk = random.Random(7).randbytes(100_000)
    (tmp_path / f"junk{suffix}").write_bytes(junk)
    error = refused(READERS[suffix], tmp_path / f"junk{suffix}")
    assert issues(error) == {{".csv": "not-text", ".xlsx": "not-xlsx",
                              ".parquet": "not-parquet"}[suffix]}


@pytest.mark.parametrize("suffix", [".csv", ".xlsx", ".parquet"])
def test_damaged_files_are_read_or_refused_never_crash(tmp_path: Path, suffix: str) -> None:
    write = {".csv": write_csv, ".xlsx": write_xlsx, ".parquet": write_parquet}[suffix]
    whole = write(tmp_path / f"w{suffix}").read_bytes()
    rng = random.Random(11)
    path = tmp_path / f"damaged{suffix}"
    for _ in range(300):
        damaged = bytearray(whole)
        for _ in range(rng.choice([1, 3, 10])):
            damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        path.write_bytes(damaged)
        try:
            READERS[suffix](path, SCHEMA)
        except BadDataset as error:  # and nothing else escapes
            assert_quotes_nothing(error)


def test_text_with_nul_bytes_is_binary(tmp_path: Path) -> None:
    path = tmp_path / "nul.csv"
    path.write_bytes(write_csv(tmp_path / "w.csv").read_bytes().replace(b"\n", b"\n\0", 1))
    assert issues(refused(read_csv, path)) == {"not-text"}


def test_an_empty_file_is_refused(tmp_path: Path) -> None:
    for suffix in READERS:
        (tmp_path / f"empty{suffix}").write_bytes(b"")
        assert issues(refused(READERS[suffix], tmp_path / f"empty{suffix}"))


def _bytes_read() -> int | None:
    """Bytes this process has read through system calls so far (Linux), or None."""
    try:
        text = Path("/proc/self/io").read_text()
    except OSError:
        return None
    return int(next(line.split()[1] for line in text.splitlines() if line.startswith("rchar")))


@pytest.mark.parametrize("suffix", [".csv", ".xlsx", ".parquet"])
def test_a_two_gigabyte_junk_file_is_refused_after_reading_little(tmp_path: Path,
                                                                  suffix: str) -> None:
    path = tmp_path / f"huge{suffix}"
    with open(path, "wb") as fh:
        fh.write(os.urandom(4096))
        fh.truncate(2**31)  # sparse: no disk is used for the rest
    before = _bytes_read()
    error = refused(READERS[suffix], path)
    after = _bytes_read()
    assert issues(error) == {{".csv": "not-text", ".xlsx": "not-xlsx",
                              ".parquet": "not-parquet"}[suffix]}
    if before is not None and after is not None:
        assert after - before < 8 << 20  # refused after a block, not after a scan


def _xlsx_with(tmp_path: Path, extra: dict[str, bytes] | None = None,
               replace: dict[str, Callable[[zipfile.ZipFile], None]] | None = None) -> Path:
    """The sample workbook rewritten with members added or replaced."""
    source = write_xlsx(tmp_path / "src.xlsx")
    target = tmp_path / "out.xlsx"
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w",
                                                         zipfile.ZIP_DEFLATED) as out:
        for info in src.infolist():
            if replace and info.filename in replace:
                replace[info.filename](out)
            else:
                out.writestr(info, src.read(info))
        for name, data in (extra or {}).items():
            out.writestr(name, data)
    return target


def test_a_zip_bomb_is_refused_before_it_is_inflated(tmp_path: Path) -> None:
    def bomb(out: zipfile.ZipFile) -> None:
        info = zipfile.ZipInfo("xl/worksheets/sheet1.xml")
        info.compress_type = zipfile.ZIP_DEFLATED
        with out.open(info, "w") as fh:
            fh.write(b'<worksheet xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/'
                     b'main"><sheetData>')
            block = b" " * (1 << 20)
            for _ in range(64):
                fh.write(block)
            fh.write(b"</sheetData></worksheet>")

    path = _xlsx_with(tmp_path, replace={"xl/worksheets/sheet1.xml": bomb})
    assert path.stat().st_size < 1 << 20
    before = _bytes_read()
    assert issues(refused(read_xlsx, path)) == {"expands-too-much"}
    after = _bytes_read()
    if before is not None and after is not None:
        assert after - before < 4 << 20


_SHEET = ('<?xml version="1.0"?>{doctype}<worksheet xmlns="http://schemas.openxmlformats.org/'
          'spreadsheetml/2006/main"><sheetData><row r="1"><c r="A1" t="inlineStr"><is><t>'
          + ENTITY + '</t></is></c></row><row r="2"><c r="A2" t="inlineStr"><is><t>{cell}</t>'
          '</is></c></row></sheetData></worksheet>')
_LAUGHS = "".join(f'<!ENTITY {b} "{("&" + a + ";") * 10}">'
                  for a, b in zip("abcdefgh", "bcdefghi", strict=True))


@pytest.mark.parametrize(("doctype", "cell"), [
    ("", USCCS[0]),
    ('<!DOCTYPE w [<!ENTITY e SYSTEM "file://{secret}">]>', "&e;"),  # external entity
    ('<!DOCTYPE w [<!ENTITY a "' + USCCS[0] + '">' + _LAUGHS + "]>", "&i;"),  # 10^8 copies
])
def test_a_sheet_never_resolves_external_or_exploding_entities(tmp_path: Path, doctype: str,
                                                               cell: str) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("机密XYZ", encoding="utf-8")
    sheet = _SHEET.format(doctype=doctype.format(secret=secret), cell=cell).encode()
    path = _xlsx_with(tmp_path, replace={
        "xl/worksheets/sheet1.xml": lambda out: out.writestr("xl/worksheets/sheet1.xml", sheet)})
    schema = DatasetSchema.of(ENTITY, SCHEMA.fields[:1])
    if not doctype:
        assert read_xlsx(path, schema)[ENTITY].tolist() == [USCCS[0]]
    else:
        assert issues(refused(read_xlsx, path, schema)) == {"not-xlsx"}


def test_a_member_larger_than_its_declared_size_is_refused(tmp_path: Path) -> None:
    data = bytearray(write_xlsx(tmp_path / "w.xlsx").read_bytes())
    name = b"xl/worksheets/sheet1.xml"
    shrunk = 0
    entry = data.find(b"PK\x01\x02")
    while entry != -1:  # central directory entries: shrink the sheet's declared size
        length = int.from_bytes(data[entry + 28:entry + 30], "little")
        if data[entry + 46:entry + 46 + length] == name:
            data[entry + 24:entry + 28] = (100).to_bytes(4, "little")
            shrunk += 1
        entry = data.find(b"PK\x01\x02", entry + 1)
    assert shrunk == 1
    (tmp_path / "lying.xlsx").write_bytes(data)
    assert issues(refused(read_xlsx, tmp_path / "lying.xlsx")) == {"not-xlsx"}


def test_a_zip_that_is_not_a_workbook_is_refused(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("hello.txt", "机密XYZ")
    (tmp_path / "z.xlsx").write_bytes(buffer.getvalue())
    assert issues(refused(read_xlsx, tmp_path / "z.xlsx")) == {"not-xlsx"}


def test_a_workbook_with_a_damaged_sheet_is_refused(tmp_path: Path) -> None:
    def damaged(out: zipfile.ZipFile) -> None:
        out.writestr("xl/worksheets/sheet1.xml", b"<worksheet><sheetData><row><c t='s'><v>x")

    path = _xlsx_with(tmp_path, replace={"xl/worksheets/sheet1.xml": damaged})
    assert issues(refused(read_xlsx, path)) == {"not-xlsx"}


def test_excel_error_cells_and_cells_outside_the_header_are_refused(tmp_path: Path) -> None:
    path = write_xlsx(tmp_path / "e.xlsx")
    book = openpyxl.load_workbook(path)
    sheet = book.active
    sheet.cell(row=3, column=5).value = "#DIV/0!"
    sheet.cell(row=5, column=12).value = "机密XYZ"
    sheet.cell(row=6, column=6).value = 98765432109  # a date serial past the year 9999
    sheet.cell(row=6, column=6).number_format = "yyyy-mm-dd"
    book.save(path)
    with warnings.catch_warnings(record=True) as said:
        error = refused(read_xlsx, path)
    assert not [w for w in said if "98765432109" in str(w.message)]  # nothing to the logs
    assert error.extensions["problems"] == [
        {"column": "用电量", "issue": "excel-error", "rows": [2], "count": 1},
        {"column": None, "issue": "cell-without-header", "rows": [4], "count": 1},
        {"column": "成立日期", "issue": "excel-error", "rows": [5], "count": 1},
    ]


def test_parquet_nested_columns_are_refused_by_name(tmp_path: Path) -> None:
    table = pa.Table.from_pandas(SAMPLE, preserve_index=False)
    table = table.set_column(1, "镇", pa.array([["绝密镇"]] * len(SAMPLE)))
    pq.write_table(table, tmp_path / "n.parquet")
    error = refused(read_parquet, tmp_path / "n.parquet")
    assert error.extensions["problems"] == [{"column": "镇", "issue": "unsupported-type"}]


def test_a_parquet_dictionary_bomb_is_refused_before_it_is_expanded(tmp_path: Path) -> None:
    rows = 4_096
    big = random.Random(3).randbytes(1 << 19).hex()  # 1 MiB of text, incompressible
    names = pa.DictionaryArray.from_arrays(pa.array([0] * rows, pa.int32()), pa.array([big]))
    frame = pd.concat([SAMPLE] * (rows // len(SAMPLE)), ignore_index=True)
    table = pa.Table.from_pandas(frame, preserve_index=False).set_column(2, "企业名称", names)
    pq.write_table(table, tmp_path / "b.parquet")
    assert (tmp_path / "b.parquet").stat().st_size < 2 << 20  # 4 GiB of text once expanded
    assert issues(refused(read_parquet, tmp_path / "b.parquet")) == {"expands-too-much"}


def test_parquet_timestamps_with_a_time_of_day_are_not_dates(tmp_path: Path) -> None:
    path = _other_types_parquet(tmp_path / "t.parquet")
    table = pq.read_table(path)
    stamps = table.column("成立日期").to_pylist()
    stamps[2] = dt.datetime(1999, 12, 1, 0, 0, 1)  # noqa: DTZ001
    pq.write_table(table.set_column(5, "成立日期", pa.array(stamps, pa.timestamp("us"))), path)
    assert problem(refused(read_parquet, path), "not-date")["rows"] == [3]


def test_parquet_nan_is_refused_like_the_text_nan(tmp_path: Path) -> None:
    table = pa.Table.from_pandas(SAMPLE, preserve_index=False)
    table = table.set_column(4, "用电量", pa.array([float("nan")] + [1.0] * (len(SAMPLE) - 1),
                                                   from_pandas=False))
    pq.write_table(table, tmp_path / "nan.parquet")
    assert problem(refused(read_parquet, tmp_path / "nan.parquet"), "not-number")["rows"] == [1]
    path = write_csv(tmp_path / "nan.csv", _with(SAMPLE, 0, "用电量", "nan"))
    assert problem(refused(read_csv, path), "not-number")["rows"] == [1]
