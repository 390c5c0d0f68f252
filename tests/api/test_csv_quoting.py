"""CSV quoting is strict: a quote left open, or text after a closing quote, is refused."""

from __future__ import annotations

import json

import pytest

from tests.conftest import ENERGY_META, World, assert_problem, auth

HEADER = "uscc,town,name,kwh\n"


@pytest.mark.parametrize(("rows", "issue", "row"), [
    # The case of issue 18: the last row ends inside an open quote, without a line end.
    ('E1,A,F,1\nE2,B,"G",2\nE3,B,G,"3', "unterminated-quote", 3),
    ('E1,A,F,1\nE2,B,G,"2\n', "unterminated-quote", 2),
    ('E1,A,"F,1\nE2,B,G,2\nE3,B,G,3\n', "unterminated-quote", 1),
    ('E1,A,"F"x,1\nE2,B,G,2\n', "text-after-quote", 1),
])
def test_broken_quoting_is_refused_and_nothing_is_stored(world: World, rows: str, issue: str,
                                                          row: int) -> None:
    before = world.client.get("/v1/datasets", headers=auth(world.grid)).json()
    r = world.client.post("/v1/datasets", headers=auth(world.grid),
                          files={"file": ("q.csv", (HEADER + rows).encode(), "text/csv")},
                          data={"meta": json.dumps({**ENERGY_META, "name": "quoted"})})
    body = assert_problem(r, 422, "bad-dataset")
    assert body["problems"] == [{"column": None, "issue": issue, "rows": [row]}]
    assert world.client.get("/v1/datasets", headers=auth(world.grid)).json() == before


def test_well_quoted_cells_with_delimiters_quotes_and_line_breaks_are_read(world: World) -> None:
    rows = 'E1,A,"F ""x"", y",1\nE2,B,"G\nH",2\nE3,B,"K",3\n'
    r = world.client.post("/v1/datasets", headers=auth(world.grid),
                          files={"file": ("q.csv", (HEADER + rows).encode(), "text/csv")},
                          data={"meta": json.dumps({**ENERGY_META, "name": "quoted"})})
    assert r.status_code == 201, r.text
    assert r.json()["rows"] == 3
