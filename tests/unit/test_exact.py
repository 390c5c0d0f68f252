"""Exact numbers (issue 19): declared scales, values a scale cannot hold, sums in a fixed
order, and rounding on publication."""

from __future__ import annotations

import random
from decimal import Decimal
from typing import Any

import duckdb
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.disclosure.cells import measure_values, published_mean, published_sum
from broker.disclosure.plan import CellPlan, sum_sql
from broker.domain.datasets import DatasetSchema, FieldRole, FieldSpec, FieldType
from broker.domain.errors import BadDataset, InvalidInput
from broker.domain.queries import Measure, MeasureFn
from connectors.conform import conform, conform_table, frame_of, text_frame

#: Text of a number column: plain, exponent, too many decimals, too large, not a number.
SCALED_TOKENS = ["1", "1.5", "1.50", "1.500", "1.505", "-0", "-0.00", "0.1", "1e-2", "1e-3",
                 "1E3", "18978516.12", "999999999999999999.99", "1000000000000000000",
                 "1e18", "1e400", "1e-400", " 2.5", "+1", "inf", "nan", "abc", "0.005",
                 "123456789012345678901", "-7.25", None]


def _schema(scale: int | None = 2, ftype: FieldType = FieldType.NUMBER) -> DatasetSchema:
    return DatasetSchema.of("e", [FieldSpec("e", FieldType.STRING, FieldRole.ENTITY),
                                  FieldSpec("x", ftype, FieldRole.MEASURE, scale=scale)])


@pytest.mark.parametrize("scale", [0, 2, 9])
def test_a_number_declares_a_scale_of_0_to_9_shown_with_the_field(scale: int) -> None:
    spec = _schema(scale).field("x")
    assert spec.as_json()["scale"] == scale
    assert spec.sum_scale == scale


@pytest.mark.parametrize(("scale", "ftype"), [
    (10, FieldType.NUMBER), (-1, FieldType.NUMBER), (True, FieldType.NUMBER),
    (1.5, FieldType.NUMBER), (2, FieldType.INTEGER), (2, FieldType.STRING),
    (0, FieldType.DATE)])
def test_a_scale_out_of_range_or_on_another_type_is_refused(scale: Any,
                                                             ftype: FieldType) -> None:
    with pytest.raises(InvalidInput) as caught:
        _schema(scale, ftype)
    assert caught.value.extensions["fields"] == ["x"]


def test_without_a_scale_the_field_json_is_unchanged_and_integers_sum_exactly() -> None:
    assert "scale" not in _schema(None).field("x").as_json()
    assert _schema(None).field("x").sum_scale is None
    assert _schema(None, FieldType.INTEGER).field("x").sum_scale == 0


def _conform(cells: list[str | None], scale: int = 2) -> pd.DataFrame:
    return conform(text_frame(["e", "x"], [[f"E{i}" for i in range(len(cells))], cells]),
                   _schema(scale))


def test_values_a_scale_cannot_hold_are_refused_by_column_issue_and_count_never_value() -> None:
    cells: list[str | None] = ["1.25", "0.125", "7.001", "1e18", "abc", "3", "98765.4321",
                               "1." + "0" * 100 + "1"]
    with pytest.raises(BadDataset) as caught:
        _conform(cells)
    problems = caught.value.extensions["problems"]
    assert problems == [
        {"column": "x", "issue": "not-number", "rows": [5], "count": 1},
        {"column": "x", "issue": "too-many-decimals", "rows": [2, 3, 7, 8], "count": 4},
        {"column": "x", "issue": "too-large", "rows": [4], "count": 1},
    ]
    said = str(caught.value) + repr(problems)
    assert not any(value in said for value in ("0.125", "7.001", "1e18", "98765"))


def test_scaled_values_are_exact_decimals_trailing_zeros_and_exponents_allowed() -> None:
    frame = _conform(["1.50", "1e-2", "-0.00", "18978516.12", None, "999999999999999999.99"])
    assert str(frame["x"].dtype) == "decimal128(38, 2)[pyarrow]"
    assert frame["x"].tolist()[:4] == [Decimal("1.50"), Decimal("0.01"), Decimal("0.00"),
                                       Decimal("18978516.12")]
    assert pd.isna(frame["x"].iloc[4])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(SCALED_TOKENS), min_size=1, max_size=8),
       st.sampled_from([0, 2, 9]))
def test_the_fast_path_types_scaled_numbers_as_conform_does_or_leaves_them(
        cells: list[str | None], scale: int) -> None:
    entities = [f"E{i}" for i in range(len(cells))]
    text = pa.table({"e": pa.array(entities, type=pa.string()),
                     "x": pa.array(cells, type=pa.string())})
    fast = conform_table(text, _schema(scale))
    try:
        slow = conform(text_frame(["e", "x"], [entities, cells]), _schema(scale))
    except BadDataset:
        assert fast is None  # nothing conform refuses passes
        return
    if fast is not None:
        assert fast.equals(pa.Table.from_pandas(slow, preserve_index=False),
                           check_metadata=True)
        pd.testing.assert_frame_equal(frame_of(fast), slow)


def test_ordered_double_sums_do_not_depend_on_row_order_plain_sums_do() -> None:
    values = [0.1] * 2000 + [1234567.89] * 300 + [1e-7] * 500 + [7e12, 3.3333333] * 50
    db = duckdb.connect(config={"threads": 2})
    plain, ordered, exact = set(), set(), set()
    for seed in range(6):
        random.Random(seed).shuffle(values)
        db.register("t", pa.table({"x": values, "d": [Decimal(str(v)).quantize(Decimal(
            "0.0000001")) for v in values]}))
        plain.add(db.execute("SELECT SUM(x) FROM t").fetchall()[0][0])
        ordered.add(db.execute(f"SELECT {sum_sql('x', False)} FROM t").fetchall()[0][0])  # noqa: S608
        exact.add(db.execute(
            f"SELECT {sum_sql('CAST(d AS DECIMAL(38, 7))', True)} FROM t").fetchall()[0][0])  # noqa: S608
        db.unregister("t")
    assert len(plain) > 1  # the data does expose non-associativity
    assert len(ordered) == 1
    assert len(exact) == 1


def test_sums_are_published_rounded_to_the_declared_scale() -> None:
    assert published_sum(0.30000000000000004, 2) == 0.3
    assert published_sum(Decimal("18978516.12"), 2) == 18978516.12
    assert repr(published_sum(Decimal("18978516.12"), 2)) == "18978516.12"
    assert published_sum(Decimal("2.675"), 2) == 2.68  # half to even on the exact value
    assert repr(published_sum(Decimal("-0.001"), 2)) == "0.0"
    assert published_sum(12, None) == 12
    assert isinstance(published_sum(12, None), int)
    assert published_sum(2**60 + 1, None) == float(2**60)  # beyond I-JSON: the nearest double
    assert repr(published_sum(-0.0, None)) == "0.0"
    assert repr(published_mean(-0.0, 2, None)) == "0.0"
    wide = Decimal("12345678901234567890123456789012.34")  # 34 digits: beyond the default 28
    assert published_sum(wide, 2) == float(wide)
    assert published_mean(wide, 2, 2) == float(wide / 2)


def test_means_of_a_scaled_number_keep_two_more_decimals() -> None:
    assert published_mean(Decimal("10.00"), 3, 2) == 3.3333
    assert published_mean(Decimal("10.00"), 3, 0) == 3.33
    assert published_mean(10, 3, None) == 10 / 3
    assert published_mean(2**60 + 1, 1, None) == float(2**60)


def test_measure_values_round_by_the_plan_scales() -> None:
    plan = CellPlan(sql="", params=(), dimensions=(), keysets=(),
                    measures=(Measure(MeasureFn.SUM, "x"), Measure(MeasureFn.MEAN, "x"),
                              Measure(MeasureFn.SUM, "y"),
                              Measure(MeasureFn.RATIO, numerator="x", denominator="y")),
                    fields=("x", "y"), top=2, exact=(1, 0), scales=(1, None))
    values = measure_values(plan, 3, {"x": (Decimal("10.0"), 3, 3), "y": (7, 2, 2)})
    assert values == {"sum_x": 10.0, "mean_x": 3.333, "sum_y": 7, "ratio_x_y": 10 / 7}
