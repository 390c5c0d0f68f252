"""Attacks on input hardening (issue 18, items 4-6): wide uploads, problem-list caps, strict CSV
quoting, look-alike names (UTS #39), offers of identifiers, OpenAPI strictness and JSON bounds.

Every test asserts that the defence holds (it passes when the broker is safe). A test that
fails marks a hole; see the docstring of each.
"""

from __future__ import annotations

import io
import itertools
import json
import re
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient
from openpyxl import Workbook
from pydantic import SecretStr

from broker.api.limits import MAX_JSON_VALUES
from broker.app import create_app
from broker.settings import Settings
from tests.conftest import (
    ENERGY,
    ENERGY_META,
    SECRET,
    Mint,
    World,
    assert_problem,
    auth,
    contract_terms,
)

#: A value that must never appear in any error: it stands for a row's secret.
MARK = "SECRETVALUE7731"

HEADER = "uscc,town,name,kwh"


def post_file(client: TestClient, token: str, content: bytes, meta: dict[str, Any] | None = None,
              filename: str = "data.csv", kind: str = "text/csv") -> Any:
    """POST ``content`` as a dataset file with ``meta`` (the energy one by default)."""
    return client.post("/v1/datasets", headers=auth(token),
                       files={"file": (filename, content, kind)},
                       data={"meta": json.dumps(meta or {**ENERGY_META, "name": "probe"})})


def lenient(client: TestClient) -> TestClient:
    """The same app (its lifespan already run), answering a server error as the 500 a
    client would see rather than raising it into the test."""
    return TestClient(client.app, raise_server_exceptions=False)


def no_leak(response: Any, *marks: str) -> None:
    for mark in (MARK, *marks):
        assert mark not in response.text, response.text


def catalogue_names(client: TestClient, token: str) -> list[str]:
    r = client.get("/v1/datasets", headers=auth(token))
    assert r.status_code == 200, r.text
    return [d["name"] for d in r.json()]


def meta_with_fields(name: str, *extra: str) -> dict[str, Any]:
    return {"name": name, "entity_field": "uscc",
            "fields": [{"name": "uscc", "type": "string", "role": "entity"},
                       *({"name": n, "type": "string", "role": "dimension"} for n in extra)]}


def frame_for(*extra: str) -> pd.DataFrame:
    data: dict[str, list[str]] = {"uscc": ["E1", "E2"]}
    for n in extra:
        data[n] = ["a", "b"]
    return pd.DataFrame(data)


def csv_of(frame: pd.DataFrame) -> bytes:
    buf = io.StringIO()
    frame.to_csv(buf, index=False)
    return buf.getvalue().encode()


class Grid:
    """A broker with only the provider organisation ``grid`` registered."""

    def __init__(self, client: TestClient, mint: Mint) -> None:
        self.client = client
        self.token = mint("grid", "provider")
        r = client.post("/v1/orgs", headers=auth(mint("broker-ops", "admin")),
                        json={"id": "grid", "name": "Grid", "kind": "enterprise"})
        assert r.status_code == 201, r.text


@pytest.fixture
def grid(client: TestClient, mint: Mint) -> Grid:
    return Grid(client, mint)


# --------------------------------------------------------------------------------------------
# Look-alike names (UTS #39)
# --------------------------------------------------------------------------------------------

#: Pairs that a reader cannot tell apart, each name single-script (or Latin with Han/Hangul,
#: which is allowed), each a valid field and dataset name.
FIELD_LOOKALIKES = {
    # Greek capitals TAU ALPHA CHI IOTA: skeleton(casefold) differs because the case fold
    # turns them into the lowercase Greek letters, which have no Latin prototype.
    "greek-capitals": ("TAXI", "\u03a4\u0391\u03a7\u0399"),
    "cyrillic-capitals": ("HOPE", "\u041d\u041e\u0420\u0415"),
    # Capital I and small l: confusables.txt maps both to l; the fold makes I an i first.
    "capital-I-small-l": ("ID", "lD"),
    "zero-and-O": ("BOX", "B0X"),
    # Han IDEOGRAPHIC NUMBER ZERO (U+3007) for O: Latin with Han is allowed.
    "han-zero": ("TOWN", "T\u3007WN"),
    # HANGUL FILLER (U+3164): a letter (\\w), default-ignorable, renders as nothing; Latin
    # with Hangul is allowed, and it is in no confusable class.
    "hangul-filler": ("town", "town\u3164"),
    "halfwidth-hangul-filler": ("town", "town\uffa0"),
}

#: Pairs the defence is meant to catch (controls: these must keep being refused).
FIELD_CAUGHT = {
    "cyrillic-o": ("town", "t\u043ewn"),
    "kelvin": ("kwh", "\u212awh"),
    "fullwidth": ("town", "\uff54\uff4f\uff57\uff4e"),
    "sharp-s": ("strasse", "stra\u00dfe"),
    "case": ("Town", "town"),
    "all-cyrillic": ("ace", "\u0430\u0441\u0435"),
    "compat-ideograph": ("\u8c48", "\uf900"),
    "dotless-i": ("kind", "k\u0131nd"),
    "math-bold": ("town", "\U0001d42d\U0001d428\U0001d430\U0001d427"),
    "greek-omicron-mixed": ("town", "t\u03bfwn"),
    "rn-m": ("rn", "m"),
}


def _accepted_field_pairs(grid: Grid, pairs: dict[str, tuple[str, str]]) -> list[str]:
    accepted: list[str] = []
    for label, (a, b) in pairs.items():
        r = post_file(grid.client, grid.token, csv_of(frame_for(a, b)),
                      meta_with_fields(f"pair-{len(accepted)}-{label}", a, b))
        assert r.status_code in (201, 422), r.text
        if r.status_code == 201:
            accepted.append(f"{label}: {a!a} and {b!a}")
    return accepted


def test_lookalike_field_names_refused_controls(grid: Grid) -> None:
    """Two look-alike field names in one dataset: 422 (the cases the defence names)."""
    assert _accepted_field_pairs(grid, FIELD_CAUGHT) == []


def test_lookalike_field_names_refused(grid: Grid) -> None:
    """HOLE when failing: two field names that render alike are both accepted in one dataset,
    so a contract, query or catalogue reader can be led to the wrong one. The skeleton is
    taken of the case fold (``skeleton(casefold(name))``): folding first turns capitals of
    Greek/Cyrillic, capital I and O into lower-case letters whose confusable classes differ
    from those of their look-alikes; and the Hangul fillers are letters in no class."""
    assert _accepted_field_pairs(grid, FIELD_LOOKALIKES) == []


def test_lookalike_dataset_names_refused(grid: Grid) -> None:
    """HOLE when failing: one owner gets two datasets whose names render alike."""
    accepted: list[str] = []
    for label in ("greek-capitals", "capital-I-small-l", "zero-and-O", "hangul-filler"):
        a, b = FIELD_LOOKALIKES[label]
        a, b = f"{label}-{a}", f"{label}-{b}"
        r = post_file(grid.client, grid.token, csv_of(ENERGY), {**ENERGY_META, "name": a})
        assert r.status_code == 201, r.text
        r = post_file(grid.client, grid.token, csv_of(ENERGY), {**ENERGY_META, "name": b})
        assert r.status_code in (201, 422), r.text
        if r.status_code == 201:
            accepted.append(f"{label}: {a!a} and {b!a}")
    assert accepted == []


def test_lookalike_dataset_names_control(grid: Grid) -> None:
    """Cyrillic o, Kelvin sign, fullwidth letters in a dataset name beside the plain one."""
    r = post_file(grid.client, grid.token, csv_of(ENERGY), {**ENERGY_META, "name": "town-kwh"})
    assert r.status_code == 201, r.text
    for name in ("t\u043ewn-kwh", "town-\u212awh", "\uff54own-kwh", "TOWN-KWH"):
        r = post_file(grid.client, grid.token, csv_of(ENERGY), {**ENERGY_META, "name": name})
        assert r.status_code == 422, (name, r.text)


ORG_LOOKALIKES = {
    "zero-width-space": ("GridCo", "Grid\u200bCo"),
    "zero-width-joiner": ("GridCo", "Grid\u200dCo"),
    "soft-hyphen": ("GridCo", "Grid\u00adCo"),
    "word-joiner": ("GridCo", "Grid\u2060Co"),
    "bom-inside": ("GridCo", "Grid\ufeffCo"),
    "tag-character": ("GridCo", "GridCo\U000e0041"),
    "trailing-space": ("Grid Co", "Grid Co "),
    "double-space": ("Grid Co", "Grid  Co"),
    "rtl-override": ("GridCo", "\u202eoCdirG"),
    "greek-capitals": ("TAXI", "\u03a4\u0391\u03a7\u0399"),
    "hangul-filler": ("GridCo", "GridCo\u3164"),
}


def test_lookalike_org_names_refused(client: TestClient, mint: Mint) -> None:
    """HOLE when failing: a second organisation registers under a name that renders exactly as
    an existing one (invisible characters, bidi override, whitespace, capitals of another
    script); auditors and members tell organisations apart by name."""
    admin = mint("broker-ops", "admin")
    accepted: list[str] = []
    for i, (label, (a, b)) in enumerate(ORG_LOOKALIKES.items()):
        r = client.post("/v1/orgs", headers=auth(admin), json={
            "id": f"first-{i}", "name": f"{i} {a}", "kind": "enterprise"})
        assert r.status_code == 201, r.text
        r = client.post("/v1/orgs", headers=auth(admin), json={
            "id": f"second-{i}", "name": f"{i} {b}", "kind": "enterprise"})
        assert r.status_code in (201, 422), r.text
        if r.status_code == 201:
            accepted.append(f"{label}: {a!a} and {b!a}")
    assert accepted == []


def test_identical_org_names_refused(client: TestClient, mint: Mint) -> None:
    """HOLE when failing: two organisations under exactly the same name. ``confusable_with``
    skips names equal to the new one (``o != name``), and nothing else compares names."""
    admin = mint("broker-ops", "admin")
    r = client.post("/v1/orgs", headers=auth(admin), json={"id": "grid", "name": "State Grid",
                                                            "kind": "enterprise"})
    assert r.status_code == 201, r.text
    r = client.post("/v1/orgs", headers=auth(admin), json={"id": "grid-2", "name": "State Grid",
                                                            "kind": "enterprise"})
    assert r.status_code in (409, 422), r.text


def test_lookalike_org_names_control(client: TestClient, mint: Mint) -> None:
    admin = mint("broker-ops", "admin")
    for org_id, name, status in [("first", "Grid Co", 201), ("second", "Grid\u00a0Co", 422),
                                 ("third", "\uff27rid Co", 422), ("fourth", "Gr\u0456d Co", 422)]:
        r = client.post("/v1/orgs", headers=auth(admin), json={"id": org_id, "name": name,
                                                                "kind": "enterprise"})
        assert r.status_code == status, (name, r.text)


def test_org_name_control_characters_no_5xx(client: TestClient, mint: Mint) -> None:
    """NUL, newlines and lone surrogates (as JSON escapes) in an organisation name: never 5xx."""
    admin = mint("broker-ops", "admin")
    for i, name in enumerate(["a\u0000b", "a\nb\rc", "\ud800x", "\udfff"]):
        body = json.dumps({"id": f"ctl-{i}", "name": name, "kind": "enterprise"})
        r = client.post("/v1/orgs", headers={**auth(admin), "content-type": "application/json"},
                        content=body.encode())
        assert r.status_code < 500, (name, r.text)


# --------------------------------------------------------------------------------------------
# Offers
# --------------------------------------------------------------------------------------------

OFFERS: list[dict[str, str]] = [
    {"uscc": "clear"}, {"uscc": "aggregate"}, {"uscc": "generalize"},
    {"name": "clear"}, {"NAME": "clear"}, {"Name": "pseudonymize", "name": "clear"},
    {"USCC": "clear"}, {"uscc\u3164": "clear"}, {"\uff4eame": "clear"},
]


def test_offer_identifier_or_entity_refused(world: World) -> None:
    """The entity field only pseudonymized, an identifier never in clear; a name differing by
    case, form or an invisible letter does not sneak the field through."""
    did = world.energy_copy()
    for fields in OFFERS:
        r = world.client.post("/v1/contracts", headers=auth(world.grid),
                              json=contract_terms(did, fields=fields))
        assert r.status_code == 422, (fields, r.text)


# --------------------------------------------------------------------------------------------
# CSV quoting, encodings, widths
# --------------------------------------------------------------------------------------------

GOOD_ROWS = [f"E{i},A,Firm {i},{i}.0" for i in range(1, 6)]


def rows_csv(*rows: str, header: str = HEADER, newline: str = "\n", end: str = "\n") -> bytes:
    return (newline.join([header, *rows]) + end).encode()


BAD_QUOTING = {
    "unterminated-last-no-newline": rows_csv(*GOOD_ROWS, f'E9,A,"{MARK},1.0', end=""),
    "unterminated-last-newline": rows_csv(*GOOD_ROWS, f'E9,A,"{MARK},1.0'),
    "unterminated-middle": rows_csv(GOOD_ROWS[0], f'E9,A,"{MARK},1.0', *GOOD_ROWS[1:]),
    "text-after-quote": rows_csv(*GOOD_ROWS, f'E9,A,"Firm"{MARK},1.0'),
    "text-after-quote-crlf": rows_csv(*GOOD_ROWS, f'E9,A,"Firm"{MARK},1.0', newline="\r\n",
                                      end="\r\n"),
    "bom-unterminated": b"\xef\xbb\xbf" + rows_csv(*GOOD_ROWS, f'E9,A,"{MARK},1.0', end=""),
    "quote-in-header": rows_csv(*GOOD_ROWS, header='uscc,town,"name,kwh'),
    "gbk-unterminated": (HEADER + "\n" + "\n".join(GOOD_ROWS) + "\nE9,\u4e1c\u57ce,\""
                         + MARK + "\u516c\u53f8,1.0").encode("gbk"),
    "gbk-text-after-quote": (HEADER + "\n" + "\n".join(GOOD_ROWS) + "\nE9,\u4e1c\u57ce,\""
                             "\u516c\u53f8\"" + MARK + ",1.0\n").encode("gbk"),
    "semicolon-unterminated": rows_csv(*(r.replace(",", ";") for r in GOOD_ROWS),
                                       f'E9;A;"{MARK};1.0', header=HEADER.replace(",", ";")),
    "lone-cr-in-unterminated": rows_csv(*GOOD_ROWS, f'E9,A,"{MARK}\r,1.0', end=""),
}


def test_broken_quoting_refused(grid: Grid) -> None:
    """A quote left open or text after a closing quote: 422 naming the row, nothing stored,
    no cell quoted."""
    for label, content in BAD_QUOTING.items():
        r = post_file(grid.client, grid.token, content)
        assert r.status_code == 422, (label, r.text)
        body = assert_problem(r, 422, "bad-dataset")
        no_leak(r, "Firm", "\u516c\u53f8")
        assert body.get("problems"), body
    assert catalogue_names(grid.client, grid.token) == []


def test_broken_quoting_names_the_row(grid: Grid) -> None:
    r = post_file(grid.client, grid.token, rows_csv(*GOOD_ROWS, f'E9,A,"{MARK},1.0', end=""))
    body = assert_problem(r, 422, "bad-dataset")
    assert body["problems"][0]["rows"] == [6], body


GOOD_QUOTING = {
    "crlf-inside-quotes": rows_csv(*GOOD_ROWS, 'E9,A,"Firm\r\n9",1.0', newline="\r\n",
                                   end="\r\n"),
    "escaped-quotes": rows_csv(*GOOD_ROWS, 'E9,A,"Firm ""9""",1.0'),
    "bom-quoted-header": b"\xef\xbb\xbf" + rows_csv(*GOOD_ROWS, header='"uscc",town,name,kwh'),
    "quoted-last-no-newline": rows_csv(*GOOD_ROWS, 'E9,A,"Firm 9","1.0"', end=""),
    "gbk-quoted": (HEADER + "\n" + "\n".join(GOOD_ROWS) + "\nE9,\u4e1c\u57ce,\"\u516c,\u53f8\""
                   ",1.0\n").encode("gbk"),
}


def test_good_quoting_accepted(grid: Grid) -> None:
    for i, (label, content) in enumerate(GOOD_QUOTING.items()):
        r = post_file(grid.client, grid.token, content, {**ENERGY_META, "name": f"good-{i}"})
        assert r.status_code == 201, (label, r.text)
        assert r.json()["rows"] == (5 if label.startswith("bom") else 6), label


def test_short_row_refused(grid: Grid) -> None:
    """HOLE when failing: a row with fewer cells than the header (a file cut short after a
    delimiter, or a stray line) is stored with the missing cells as nulls, while a row with
    one cell too many is refused: Arrow refuses both, then pandas pads the short one."""
    for content in (rows_csv(*GOOD_ROWS, "E9,A", end=""), rows_csv(*GOOD_ROWS, "E9,A,Fi"),
                    rows_csv(GOOD_ROWS[0], "E9", *GOOD_ROWS[1:])):
        r = post_file(grid.client, grid.token, content)
        assert r.status_code == 422, r.text


def test_nul_byte_refused(world: World) -> None:
    for content in (rows_csv(*GOOD_ROWS, f"E9,A,{MARK}\x00,1.0"),
                    rows_csv(*GOOD_ROWS, f'E9,A,"{MARK}\x00",1.0')):
        r = post_file(world.client, world.grid, content)
        assert_problem(r, 422, "bad-dataset")
        no_leak(r)


def test_long_cells_no_leak_no_5xx(world: World) -> None:
    """A 300 KB cell, quoted and not: stored or refused, never quoted, never 5xx."""
    cell = MARK * 20_000
    for row in (f'E9,A,"{cell}",1.0', f"E9,A,{cell},1.0", f"E9,A,Firm,{cell}",
                f'E9,A,Firm,"{cell}"'):
        r = post_file(world.client, world.grid, rows_csv(*GOOD_ROWS, row))
        assert r.status_code in (201, 422), r.text[:500]
        no_leak(r)


def test_bad_values_never_quoted(world: World) -> None:
    """Type errors, entity missing, encoding errors: the problem names rows, never values."""
    cases = [
        rows_csv(*GOOD_ROWS, f"E9,A,Firm,{MARK}"),
        rows_csv(*GOOD_ROWS, f"E9,A,Firm,1.0,{MARK}"),
        rows_csv(*GOOD_ROWS, f"E9,A,Firm,1.0,{MARK}", header="uscc,town,name,kwh,"),
        rows_csv(*GOOD_ROWS, f",A,{MARK},1.0"),
        rows_csv(*GOOD_ROWS, header=f"uscc,town,name,kwh,{MARK}"),
        rows_csv(*GOOD_ROWS, header=f"uscc,town,{MARK},kwh"),
        rows_csv(*GOOD_ROWS, header=f"{MARK}\n" + HEADER),
        rows_csv(*GOOD_ROWS) + f"E9,A,{MARK}".encode() + b"\xff\xfe,1.0\n",
        rows_csv(*GOOD_ROWS) + "E9,A,\u00e9".encode() + MARK.encode() + b"\xc3",
    ]
    for content in cases:
        r = post_file(world.client, world.grid, content)
        assert 400 <= r.status_code < 500, r.text
        no_leak(r)


def test_bad_values_not_quoted_typed_fields(world: World) -> None:
    meta = {"name": "typed", "entity_field": "uscc", "fields": [
        {"name": "uscc", "type": "string", "role": "entity", "format": "uscc"},
        {"name": "d", "type": "date", "role": "dimension"},
        {"name": "b", "type": "boolean", "role": "dimension"},
        {"name": "i", "type": "integer", "role": "measure"},
        {"name": "c", "type": "string", "role": "dimension", "codes": ["x", "y"]},
    ]}
    rows = [f"{MARK}1,2026-01-01,true,1,x", f"91110000{MARK[:9]}X,{MARK},true,1,x",
            f"911100001000000000,2026-01-01,{MARK},1,x",
            "911100001000000000,2026-01-01,true,9" + "9" * 30 + ",x",
            f"911100001000000000,2026-01-01,true,1,{MARK}"]
    r = post_file(world.client, world.grid, rows_csv(*rows, header="uscc,d,b,i,c"), meta)
    assert 400 <= r.status_code < 500, r.text
    no_leak(r, "9" * 30)


def test_wide_csv_small_answer(grid: Grid) -> None:
    """A wide header: refused fast with a small document whose lists are capped; ``omitted``
    adds up to the number of undeclared columns."""
    for columns in (1999, 2000, 2001, 100_000):
        header = HEADER + "," + ",".join(f"c{i}" for i in range(columns - 4))
        r = post_file(grid.client, grid.token, rows_csv(*GOOD_ROWS, header=header))
        body = assert_problem(r, 422, "bad-dataset")
        assert len(r.content) < 20_000, len(r.content)
        if columns > 2000:
            assert body["problems"][0]["issue"] in ("too-many-columns", "header-too-long"), body
        else:
            assert len(body["problems"]) == 100
            assert body["omitted"]["problems"] == columns - 4 - 100, body["omitted"]


def test_header_span(world: World) -> None:
    """The header must end within 64 KiB: one char under passes the check, one over is
    refused on its header."""
    span = 1 << 16
    base = "uscc,town,name,kwh,"
    # A header of exactly span-1 characters plus its newline, with an undeclared long column.
    ok = base + "x" * (span - 1 - len(base))
    r = post_file(world.client, world.grid, rows_csv(*GOOD_ROWS, header=ok))
    body = assert_problem(r, 422, "bad-dataset")
    assert body["problems"][0]["issue"] != "header-too-long", body
    over = base + "x" * (span + 1 - len(base))
    r = post_file(world.client, world.grid, rows_csv(*GOOD_ROWS, header=over))
    body = assert_problem(r, 422, "bad-dataset")
    assert body["problems"][0]["issue"] == "header-too-long", body
    # A BOM does not push a header over the span by one.
    r = post_file(world.client, world.grid, b"\xef\xbb\xbf" + rows_csv(*GOOD_ROWS, header=ok))
    body = assert_problem(r, 422, "bad-dataset")
    assert body["problems"][0]["issue"] != "header-too-long", body


def test_header_split_by_quoted_newline(world: World) -> None:
    """A quoted header cell holding 70k newlines and 3,000 delimiters: the width check and
    the span check both see it; no 5xx, small answer."""
    cell = '"' + ",\n" * 3000 + '"'
    r = post_file(world.client, world.grid, rows_csv(*GOOD_ROWS, header=HEADER + "," + cell))
    assert 400 <= r.status_code < 500, r.text[:300]
    assert len(r.content) < 20_000


def test_many_bad_rows_small_answer(world: World) -> None:
    """10,000 rows each bad in every typed column: the document stays small and counts all."""
    rows = [f",A,Firm,{MARK}" for _ in range(10_000)]
    r = post_file(world.client, world.grid, rows_csv(*rows))
    body = assert_problem(r, 422, "bad-dataset")
    assert len(r.content) < 5_000, len(r.content)
    counts = {p["issue"]: p.get("count") for p in body["problems"]}
    assert counts.get("not-number") == 10_000, body
    assert counts.get("entity-missing") == 10_000, body
    no_leak(r)


def test_many_broken_quotes(world: World) -> None:
    rows = [f'E{i},A,"x"{MARK},1' for i in range(5000)]
    r = post_file(world.client, world.grid, rows_csv(*rows))
    assert_problem(r, 422, "bad-dataset")
    assert len(r.content) < 5_000
    no_leak(r)


def _xlsx(rows: list[list[Any]]) -> bytes:
    wb = Workbook()
    ws = wb.active
    assert ws is not None
    for row in rows:
        ws.append(row)
    buf = io.BytesIO()
    wb.save(buf)
    return buf.getvalue()


XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"


def test_xlsx_wide_rows(world: World) -> None:
    """2,001 columns in the header, or only in row 2 (a narrow header): both refused with a
    small document; cells outside the header never quoted."""
    head: list[Any] = ["uscc", "town", "name", "kwh"]
    wide_header = _xlsx([head + [f"c{i}" for i in range(1997)], ["E1", "A", "F", 1.0]])
    r = post_file(world.client, world.grid, wide_header, filename="d.xlsx", kind=XLSX)
    body = assert_problem(r, 422, "bad-dataset")
    assert body["problems"][0]["issue"] == "too-many-columns", body
    first: list[Any] = ["E1", "A", "F", 1.0, *([MARK] * 1997)]
    wide_row = _xlsx([head, first, *([f"E{i}", "A", "F", 1.0, MARK] for i in range(2, 400))])
    r = post_file(world.client, world.grid, wide_row, filename="d.xlsx", kind=XLSX)
    assert_problem(r, 422, "bad-dataset")
    assert len(r.content) < 5_000, len(r.content)
    no_leak(r)
    # A header whose last cell is far out (XFD): its width is the cell's column.
    far = _xlsx([head + [None] * 5000 + ["tail"], ["E1", "A", "F", 1.0]])
    r = post_file(world.client, world.grid, far, filename="d.xlsx", kind=XLSX)
    body = assert_problem(r, 422, "bad-dataset")


def _parquet(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def test_parquet_wide_and_nested(world: World) -> None:
    cols = {"uscc": ["E1"], "town": ["A"], "name": ["F"], "kwh": [1.0]}
    wide = pa.table({**cols, **{f"c{i}": [MARK] for i in range(1997)}})
    r = post_file(world.client, world.grid, _parquet(wide), filename="d.parquet",
                  kind="application/octet-stream")
    body = assert_problem(r, 422, "bad-dataset")
    assert body["problems"][0]["issue"] == "too-many-columns", body
    no_leak(r)
    nested = pa.table({"uscc": ["E1"], "town": ["A"],
                       "name": pa.array([{"a": MARK, "b": [1, 2]}]), "kwh": [1.0]})
    r = post_file(world.client, world.grid, _parquet(nested), filename="d.parquet",
                  kind="application/octet-stream")
    assert_problem(r, 422, "bad-dataset")
    no_leak(r)
    # A struct whose leaves number over 2,000 while the top level has 4 columns.
    leaves = pa.array([{f"f{i}": MARK for i in range(2500)}])
    deep = pa.table({"uscc": ["E1"], "town": ["A"], "name": leaves, "kwh": [1.0]})
    r = post_file(world.client, world.grid, _parquet(deep), filename="d.parquet",
                  kind="application/octet-stream")
    assert_problem(r, 422, "bad-dataset")
    assert len(r.content) < 5_000
    no_leak(r)


def test_meta_part_abuse(world: World) -> None:
    """The multipart ``meta``: not UTF-8, deeply nested, 10k fields: 4xx, small, no 5xx."""
    content = csv_of(ENERGY)
    metas: list[bytes] = [
        b'{"name": "\xff\xfe", "entity_field": "uscc", "fields": []}',
        b"[" * 200_000 + b"]" * 200_000,
        json.dumps({**ENERGY_META, "fields": [{"name": f"f{i}", "type": "bogus", "role": "x"}
                                              for i in range(10_000)]}).encode(),
        json.dumps({**ENERGY_META, "x": 1}).replace("1}", "1" + "0" * 5000 + "}").encode(),
        b'{"name": NaN}',
    ]
    for meta in metas:
        r = world.client.post("/v1/datasets", headers=auth(world.grid),
                              files={"file": ("d.csv", content, "text/csv"),
                                     "meta": (None, meta, "application/json")})
        assert 400 <= r.status_code < 500, r.text[:300]
        assert len(r.content) < 30_000, len(r.content)


# --------------------------------------------------------------------------------------------
# JSON bodies
# --------------------------------------------------------------------------------------------

def _json_post(world: World, path: str, raw: bytes, token: str | None = None) -> Any:
    return lenient(world.client).post(path, headers={**auth(token or world.econ),
                                            "content-type": "application/json"}, content=raw)


def test_json_value_bound_exact(world: World) -> None:
    """Exactly 50,000 counted values passes the bound; 50,001 is 413."""
    def body(separators: int) -> bytes:
        # {"contract_id": ..., "filters": [0,0,...]} : one "{", one "[", one ",", plus commas.
        n = separators - 3
        return (b'{"contract_id": "x", "filters": [' + b",".join([b"0"] * (n + 1)) + b"]}")
    r = _json_post(world, "/v1/queries/aggregate", body(MAX_JSON_VALUES))
    assert r.status_code == 422, r.text[:300]
    r = _json_post(world, "/v1/queries/aggregate", body(MAX_JSON_VALUES + 1))
    assert_problem(r, 413, "payload-too-large")


MALFORMED_JSON = [
    b"[" * 45_000 + b"]" * 45_000,
    b'{"a":' * 45_000 + b"1" + b"}" * 45_000,
    b'{"contract_id": "x", "filters": ' + b"[" * 40_000 + b"]" * 40_000 + b"}",
    b'{"contract_id": ' + b"9" * 5000 + b"}",
    b'{"contract_id": "x", "purpose": "p", "measures": [{"fn": "count"}], "filters": '
    b'[{"field": "town", "op": "eq", "value": ' + b"9" * 5000 + b"}]}",
    b'{"contract_id": "x", "purpose": "p", "measures": [{"fn": "count"}], "filters": '
    b'[{"field": "town", "op": "eq", "value": 1e400}]}',
    b'{"contract_id": "x", "purpose": "p", "measures": [{"fn": "count"}], "filters": '
    b'[{"field": "town", "op": "eq", "value": NaN}]}',
    b'{"contract_id": "x", "purpose": "p", "measures": [{"fn": "count"}], "filters": '
    b'[{"field": "town", "op": "eq", "value": -Infinity}]}',
    b'\xff\xfe{"a": 1}',
    b'{"contract_id": "\xc3\x28"}',
    b'{"contract_id": "\\ud800"}',
    b"\xef\xbb\xbf{}",
    b"",
    b"null",
]


def test_json_malformed_no_5xx(world: World) -> None:
    """Deep nesting under the value bound, huge numbers, NaN, bad encodings: 4xx, never 5xx."""
    for raw in MALFORMED_JSON:
        for path in ("/v1/queries/aggregate", "/v1/policy/explain", "/v1/orgs"):
            r = _json_post(world, path, raw, world.admin if path == "/v1/orgs" else None)
            assert 400 <= r.status_code < 500, (path, raw[:60], r.status_code, r.text[:300])


CONTRACT_PATCHES: list[dict[str, str]] = [
    {"k_min": "NAN"}, {"k_min": "1e400"}, {"k_min": "9" * 5000},
    {"max_queries_per_day": "1e400"}, {"dominance": '{"n": 1, "k": NaN}'},
    {"dominance": '{"n": 1, "k": Infinity}'}, {"dominance": '{"n": 1, "k": 1e400}'},
    {"dominance": '{"n": ' + "9" * 4000 + ', "k": 50}'},
]


def test_contract_numbers_no_5xx(world: World) -> None:
    """Non-finite or huge numbers in an offer: 422."""
    did = world.energy_copy()
    for patch in CONTRACT_PATCHES:
        terms = {k: v for k, v in contract_terms(did).items() if k not in patch}
        raw = json.dumps(terms)
        for key, literal in patch.items():
            raw = raw[:-1] + f', "{key}": {literal}' + "}"
        r = _json_post(world, "/v1/contracts", raw.encode(), world.grid)
        assert r.status_code == 422, (patch, r.text[:300])


def test_duplicate_keys_do_not_split_meaning(world: World) -> None:
    """Duplicate keys: the broker must see one value (the last, as Python does) consistently;
    the offer that is signed must show the value that was checked."""
    did = world.energy_copy()
    terms = contract_terms(did)
    raw = json.dumps(terms)[:-1] + ', "fields": {"name": "clear"}}'
    r = _json_post(world, "/v1/contracts", raw.encode(), world.grid)
    assert r.status_code == 422, r.text[:300]


# --------------------------------------------------------------------------------------------
# since/until and unknown parameters
# --------------------------------------------------------------------------------------------

DATE_TIMES: list[tuple[str, bool | None]] = [
    ("2026-01-01T00:00:00Z", True), ("2026-01-01t00:00:00z", True),
    ("2026-01-01T00:00:00.123456789+08:00", True),
    ("2016-12-31T23:59:60Z", None), ("0000-01-01T00:00:00Z", False),
    ("0001-01-01T00:00:00+23:59", None), ("9999-12-31T23:59:59-23:59", None),
    ("2026-01-01T00:00:00+25:00", False), ("2026-01-01T00:00:00+99:99", False),
    ("2026-02-30T00:00:00Z", False), ("2026-13-01T00:00:00Z", False),
    ("2026-01-01T24:00:00Z", False), ("\uff12\uff10\uff12\uff16-01-01T00:00:00Z", False),
    ("\u0662\u0660\u0662\u0666-01-01T00:00:00Z", False), ("2026-01-01T00:00:00Z\n", False),
    ("1700000000", False), ("2026-01-01", False), ("2026-01-01T00:00:00", False),
    ("2026-01-01 00:00:00Z", False), ("2026-01-01T00:00:00.1234567890Z", False),
    ("+2026-01-01T00:00:00Z", False), ("2026-01-01T00:00:00-00:00", None),
]


def test_since_until_forms(world: World) -> None:
    """RFC 3339 only; anything else 422; ``None``: either is fine; never 5xx. HOLE when
    failing on ``0001-01-01T00:00:00+23:59`` or ``9999-12-31T23:59:59-23:59``: both match
    the RFC 3339 pattern and parse, then ``format_ts`` converts them to UTC, which leaves
    ``datetime``'s range (OverflowError), answered 500."""
    failures = []
    for (value, ok), param in itertools.product(DATE_TIMES, ("since", "until")):
        r = lenient(world.client).get("/v1/audit/entries", headers=auth(world.auditor),
                                      params={param: value})
        if r.status_code >= 500 or (ok is True and r.status_code != 200) or (
                ok is False and r.status_code != 422):
            failures.append((param, value, r.status_code))
    assert failures == []


def _concrete(path: str, world: World) -> str:
    values = {"dataset_id": world.dataset["id"], "contract_id": world.contract["id"],
              "seq": "1"}
    return re.sub(r"\{(\w+)(:\w+)?\}", lambda m: values.get(m.group(1), "x"), path)


def test_unknown_query_parameters_every_get(world: World) -> None:
    """Every GET operation (and HEAD) refuses a parameter it does not take with 422, whether
    or not the caller may use the route; never 5xx."""
    paths = [p for p, ops in world.client.get("/openapi.json").json()["paths"].items()
             if "get" in ops]
    assert len(paths) > 10
    failures: set[tuple[str, str, int]] = set()
    for path in paths:
        if path in ("/healthz", "/readyz", "/metrics"):
            continue
        url = _concrete(path, world)
        for token in (world.auditor, world.grid, world.econ):
            for params in ({"bogus": "1"}, {"since ": "x"}, {"": "x"}, {"cursor[]": "1"},
                           {"\u0000": "1"}):
                r = lenient(world.client).get(url, headers=auth(token), params=params)
                if r.status_code >= 500 or r.status_code not in (401, 403, 404, 422, 429):
                    failures.add((path, next(iter(params)), r.status_code))
    assert sorted(failures) == []


def test_repeated_query_parameter(world: World) -> None:
    """A parameter given twice (``since`` twice, one of each form): 422 or one value used;
    never 5xx."""
    r = world.client.get("/v1/audit/entries?since=2026-01-01T00:00:00Z&since=1700000000",
                         headers=auth(world.auditor))
    assert r.status_code in (200, 422), r.text
    r = world.client.get("/v1/audit/entries?limit=1&limit=" + "9" * 5000,
                         headers=auth(world.auditor))
    assert r.status_code in (200, 422), r.text


def test_tokenless_body_401_before_body(world: World) -> None:
    """No token with a body on a route: 401 (not 413 or 422), even for a huge or broken body."""
    for path, raw in (("/v1/queries/aggregate", b"[" * 60_000),
                      ("/v1/contracts", b"\xff" * 1000),
                      ("/v1/datasets", b"--x\r\n")):
        r = world.client.post(path, content=raw, headers={"content-type": "application/json"})
        assert_problem(r, 401, "unauthenticated")


def test_options_and_405_allow(world: World) -> None:
    """OPTIONS and wrong methods never advertise a method the path does not serve."""
    for path in ("/v1/datasets/import", "/v1/datasets", "/v1/orgs", "/v1/queries/aggregate",
                 f"/v1/datasets/{world.dataset['id']}"):
        r = world.client.request("DELETE", path, headers=auth(world.grid))
        assert r.status_code == 405, (path, r.text)
        allowed = {m.strip() for m in r.headers["allow"].split(",") if m.strip()}
        for method in allowed - {"HEAD"}:
            probe = world.client.request(method, path, headers=auth(world.grid))
            assert probe.status_code != 405, (path, method)


def test_json_bound_not_bypassed_by_content_type(world: World) -> None:
    """HOLE when failing: the 50,000-value bound is skipped when the media type carries a
    trailing control character that ``str.strip`` removes and ``bytes.strip`` keeps
    (``application/json\\x1f``, also \\x1c-\\x1e): ``limits._is_json`` says "not JSON", FastAPI
    (``email.message``'s parse of the header) says JSON and parses the whole body on the
    event loop, which the bound exists to prevent."""
    body = b'{"contract_id": "x", "filters": [' + b",".join([b"0"] * 200_000) + b"]}"
    for media in (b"application/json", b"application/json\x1f", b"application/json\x1c",
                  b"application/json\x1e"):
        r = lenient(world.client).post("/v1/queries/aggregate", content=body,
                                       headers={**auth(world.econ), "content-type": media})
        assert r.status_code == 413, (media, r.status_code, r.text[:200])


def test_unknown_query_parameters_on_post(world: World) -> None:
    """HOLE when failing: a POST operation takes an unknown query parameter silently (only the
    audit router has ``refuse_unknown_query``)."""
    body = {"contract_id": world.contract["id"], "purpose": "energy-planning",
            "measures": [{"fn": "count"}]}
    r = lenient(world.client).post("/v1/queries/aggregate?bogus=1", headers=auth(world.econ),
                                   json=body)
    assert r.status_code == 422, r.text[:200]


def test_nul_on_postgres_no_5xx(tmp_path: Path, postgres_url: str, mint: Mint) -> None:
    """HOLE when failing: a NUL (the JSON escape \\u0000) in free text on PostgreSQL, which
    cannot store one in text or JSONB, is a 500: an organisation's name, an audit filter, a
    query's filter value, a contract's purpose text. Each must be a 4xx."""
    settings = Settings(data_dir=tmp_path / "pg", jwt_secret=SecretStr(SECRET),
                        database_url=postgres_url)
    failures = []
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        world = World(client, mint)
        json_headers = {"content-type": "application/json"}
        body = json.dumps({"id": "nul-org", "name": "Grid\u0000Co", "kind": "enterprise"})
        r = client.post("/v1/orgs", headers={**auth(world.admin), **json_headers},
                        content=body.encode())
        if not 400 <= r.status_code < 500:
            failures.append(("org name", r.status_code))
        r = client.get("/v1/audit/entries", headers=auth(world.auditor),
                       params={"actor": "a\u0000b"})
        if r.status_code >= 500:
            failures.append(("audit actor", r.status_code))
        r = world.query(filters=[{"field": "town", "op": "eq", "value": "A\u0000"}])
        if r.status_code >= 500:
            failures.append(("query filter value", r.status_code))
        r = world.query(purpose="energy\u0000planning")
        if r.status_code >= 500:
            failures.append(("query purpose", r.status_code))
    assert failures == []
