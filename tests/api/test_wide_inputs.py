"""Wide uploads are refused on their header, and every problem list is capped (issue 18)."""

from __future__ import annotations

import io
import json
import time
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from fastapi.testclient import TestClient

from broker.api.problems import PROBLEM_LIST_LIMIT
from connectors.conform import MAX_COLUMNS
from connectors.delimited import HEADER_SPAN
from tests.conftest import ENERGY_META, World, assert_problem, auth

DECLARED = "uscc,town,name,kwh"


def post_file(world: World, content: bytes, filename: str = "wide.csv") -> dict[str, Any]:
    """Upload ``content`` as grid under the energy meta; the problem it is refused with."""
    r = world.client.post("/v1/datasets", headers=auth(world.grid),
                          files={"file": (filename, content, "text/csv")},
                          data={"meta": json.dumps({**ENERGY_META, "name": "wide"})})
    return assert_problem(r, 422, "bad-dataset")


def test_a_csv_of_100k_columns_is_refused_on_its_header_at_once(world: World) -> None:
    header = DECLARED + "," + ",".join(f"c{i}" for i in range(100_000))
    content = (header + "\n" + ",".join("1" for _ in range(100_004)) + "\n").encode()
    started = time.monotonic()
    body = post_file(world, content)
    assert time.monotonic() - started < 5  # generous: the header alone is read
    assert body["problems"] == [{"column": None, "issue": "too-many-columns",
                                 "limit": MAX_COLUMNS}]
    assert str(MAX_COLUMNS) in str(body["detail"])
    assert len(json.dumps(body)) < 2000


def test_a_header_that_does_not_end_within_its_span_is_refused(world: World) -> None:
    content = (DECLARED + "," + "x" * HEADER_SPAN + "\nE1,A,F,1," + "\n").encode()
    body = post_file(world, content)
    assert body["problems"] == [{"column": None, "issue": "header-too-long",
                                 "limit": HEADER_SPAN}]


def test_a_wide_parquet_file_is_refused_before_it_is_read(world: World) -> None:
    table = pa.table({f"c{i}": pa.array([1], pa.int8()) for i in range(MAX_COLUMNS + 1)})
    buf = io.BytesIO()
    pq.write_table(table, buf)
    body = post_file(world, buf.getvalue(), filename="wide.parquet")
    assert body["problems"][0]["issue"] == "too-many-columns"


def test_dataset_problems_are_capped_and_say_how_many_were_left_out(world: World) -> None:
    extra = 250
    header = DECLARED + "," + ",".join(f"c{i}" for i in range(extra))
    content = (header + "\n" + ",".join("1" for _ in range(extra + 4)) + "\n").encode()
    body = post_file(world, content)
    assert len(body["problems"]) == PROBLEM_LIST_LIMIT
    assert body["omitted"] == {"problems": extra - PROBLEM_LIST_LIMIT}


def test_validation_errors_are_capped_and_say_how_many_were_left_out(client: TestClient,
                                                                       world: World) -> None:
    body = {"id": "newco", "name": "N", "kind": "enterprise",
            **{f"unknown_{i}": i for i in range(300)}}
    r = client.post("/v1/orgs", headers=auth(world.admin), json=body)
    problem = assert_problem(r, 422, "invalid-input")
    assert len(problem["errors"]) == PROBLEM_LIST_LIMIT
    assert problem["omitted"] == {"errors": 300 - PROBLEM_LIST_LIMIT}


def test_a_short_problem_list_has_no_omitted_member(world: World) -> None:
    r = world.client.post("/v1/orgs", headers=auth(world.admin),
                          json={"id": "newco", "name": "N", "kind": "enterprise", "x": 1})
    assert "omitted" not in assert_problem(r, 422, "invalid-input")
