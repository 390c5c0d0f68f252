"""The planner against DuckDB: entity-level aggregation equals a pandas reference."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.disclosure.plan import plan_aggregate, quote
from broker.domain.datasets import DatasetSchema, FieldRole, FieldSpec, FieldType
from broker.domain.errors import InvalidInput
from broker.domain.queries import AggregateSpec, Dimension, Filter, FilterOp, Measure, MeasureFn
from tests.unit.tables import released, run_table

SCHEMA = DatasetSchema.of("e", [
    FieldSpec("e", FieldType.STRING, FieldRole.ENTITY),
    FieldSpec("g", FieldType.STRING, FieldRole.DIMENSION),
    FieldSpec("h", FieldType.INTEGER, FieldRole.DIMENSION),
    FieldSpec("x", FieldType.NUMBER, FieldRole.MEASURE),
    FieldSpec("d", FieldType.DATE, FieldRole.DIMENSION),
])


def _spec(**kw: object) -> AggregateSpec:
    base: dict[str, object] = {"contract_id": "c", "purpose": "p", "group_by": ("g",),
                               "measures": (Measure(MeasureFn.COUNT),)}
    base.update(kw)
    base["group_by"] = tuple(Dimension(g) if isinstance(g, str) else g
                             for g in base["group_by"])  # type: ignore[attr-defined]
    return AggregateSpec(**base)  # type: ignore[arg-type]


def _run(frame: pd.DataFrame, spec: AggregateSpec, tmp: Path
         ) -> dict[tuple[tuple[str, object], ...], dict[str, float | int | None]]:
    plan, table = run_table(frame, spec, SCHEMA, tmp)
    return released(plan, table, margins=spec.totals)


def test_identifiers_are_quoted_and_values_never_pasted() -> None:
    assert quote('a"b') == '"a""b"'
    spec = _spec(filters=(Filter("g", FilterOp.EQ, "x'; DROP TABLE src; --"),))
    plan = plan_aggregate(spec, SCHEMA)
    assert "DROP" not in plan.sql
    assert plan.params == ("x'; DROP TABLE src; --",)


def test_unknown_fields_and_bad_shapes_are_invalid() -> None:
    with pytest.raises(InvalidInput):
        plan_aggregate(_spec(group_by=("nope",)), SCHEMA)
    with pytest.raises(InvalidInput):
        plan_aggregate(_spec(measures=(Measure(MeasureFn.SUM, field="g"),)), SCHEMA)
    with pytest.raises(InvalidInput):
        plan_aggregate(_spec(measures=(Measure(MeasureFn.COUNT), Measure(MeasureFn.COUNT))),
                       SCHEMA)
    with pytest.raises(InvalidInput):
        plan_aggregate(_spec(filters=(Filter("x", FilterOp.RANGE, [None, None]),)), SCHEMA)
    with pytest.raises(InvalidInput):
        plan_aggregate(_spec(filters=(Filter("d", FilterOp.EQ, "not-a-date"),)), SCHEMA)
    with pytest.raises(InvalidInput):
        plan_aggregate(_spec(filters=(Filter("h", FilterOp.EQ, True),)), SCHEMA)


def test_margins_have_keys_without_the_summed_dimension(tmp_path: Path) -> None:
    frame = pd.DataFrame({"e": ["a", "b", "c", "a"], "g": ["G1", "G1", "G2", "G2"],
                          "h": pd.array([1, 2, 1, 1], dtype="Int64"), "x": [1.0, 2.0, 3.0, 4.0],
                          "d": pd.to_datetime(["2025-01-01"] * 4).date})
    spec = _spec(group_by=("g", "h"), totals=True,
                 measures=(Measure(MeasureFn.COUNT), Measure(MeasureFn.SUM, field="x")))
    cells = _run(frame, spec, tmp_path)
    assert cells[()] == {"count": 3, "sum_x": 10.0}
    assert cells[(("g", "G2"),)] == {"count": 2, "sum_x": 7.0}
    assert cells[(("h", 1),)] == {"count": 2, "sum_x": 8.0}  # a counted once
    assert cells[(("g", "G1"), ("h", 2))] == {"count": 1, "sum_x": 2.0}
    # The grid is dense: a combination without enterprises is a cell with none.
    assert cells[(("g", "G2"), ("h", 2))] == {"count": 0, "sum_x": None}


def test_date_filters_and_keys(tmp_path: Path) -> None:
    frame = pd.DataFrame({"e": ["a", "b"], "g": ["G", "G"],
                          "h": pd.array([1, 1], dtype="Int64"), "x": [1.0, 2.0],
                          "d": pd.to_datetime(["2025-01-01", "2025-02-01"]).date})
    spec = _spec(group_by=("d",), filters=(Filter("d", FilterOp.RANGE, ["2025-02-01", None]),))
    cells = _run(frame, spec, tmp_path)
    assert list(cells) == [(("d", "2025-02-01"),)]


rows = st.lists(
    st.tuples(st.sampled_from("abcdef"), st.sampled_from(["G1", "G2", "G3"]),
              st.integers(0, 3), st.floats(-1e6, 1e6, allow_nan=False)),
    min_size=1, max_size=60,
)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=rows, threshold=st.integers(0, 4), totals=st.booleans())
def test_cells_match_a_pandas_reference(tmp_path: Path, data: list[tuple[str, str, int, float]],
                                        threshold: int, totals: bool) -> None:
    frame = pd.DataFrame(data, columns=["e", "g", "h", "x"])
    frame["h"] = frame["h"].astype("Int64")
    frame["d"] = pd.to_datetime("2025-01-01").date()
    spec = _spec(group_by=("g",), filters=(Filter("h", FilterOp.RANGE, [threshold, None]),),
                 measures=(Measure(MeasureFn.COUNT), Measure(MeasureFn.SUM, field="x"),
                           Measure(MeasureFn.MEAN, field="x")), totals=totals)
    cells = _run(frame, spec, tmp_path)
    got = {str(dict(key).get("g", "*")): values for key, values in cells.items()}
    kept = frame[frame["h"] >= threshold]
    expected = {
        str(g): {"count": part["e"].nunique(), "sum_x": part["x"].sum(),
                 "mean_x": part["x"].mean()}
        for g, part in kept.groupby("g")
    }
    if totals and kept.empty:  # the grand total of no rows: zero enterprises
        assert got.pop("*")["count"] == 0
    elif totals:  # the grand total counts each enterprise once
        expected["*"] = {"count": kept["e"].nunique(), "sum_x": kept["x"].sum(),
                         "mean_x": kept["x"].mean()}
    assert set(got) == set(expected)
    for g, values in expected.items():
        assert got[g]["count"] == values["count"]
        assert got[g]["sum_x"] == pytest.approx(values["sum_x"], rel=1e-9, abs=1e-6)
        assert got[g]["mean_x"] == pytest.approx(values["mean_x"], rel=1e-9, abs=1e-6)


def test_measure_fields_are_neither_filters_nor_raw_keys() -> None:
    # A key or a threshold on the figure being protected would single a firm out by it.
    with pytest.raises(InvalidInput, match="bins"):
        plan_aggregate(_spec(group_by=("x",)), SCHEMA)
    with pytest.raises(InvalidInput, match="measure"):
        plan_aggregate(_spec(filters=(Filter("x", FilterOp.RANGE, [None, 10.0]),)), SCHEMA)
    plan_aggregate(_spec(group_by=(Dimension("x", bins=(0.0, 100.0)),)), SCHEMA)
