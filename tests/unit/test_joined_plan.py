"""The cross-source plan: each source reduced per enterprise and cell, then joined by
enterprise, checked against a pandas computation of the same definition."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyroaring import BitMap64

from broker.disclosure.cells import CellTable, read_table
from broker.disclosure.linking import History, SourcePart, link_sources
from broker.disclosure.plan import CellPlan, plan_joined, source_relation
from broker.domain.datasets import DatasetSchema, FieldRole, FieldSpec, FieldType
from broker.domain.errors import InvalidInput
from broker.domain.queries import (
    Comparison,
    Dimension,
    Filter,
    FilterOp,
    JoinedSpec,
    Measure,
    MeasureFn,
    SuppressionReason,
)
from connectors.crypto import Keyring, create_master_key
from connectors.engine import DuckDBEngine
from connectors.storage import ParquetStorage

GRID = DatasetSchema.of("uscc", [
    FieldSpec("uscc", FieldType.STRING, FieldRole.ENTITY),
    FieldSpec("town", FieldType.STRING, FieldRole.DIMENSION),
    FieldSpec("month", FieldType.INTEGER, FieldRole.DIMENSION),
    FieldSpec("kwh", FieldType.NUMBER, FieldRole.MEASURE),
])
TAX = DatasetSchema.of("code", [
    FieldSpec("code", FieldType.STRING, FieldRole.ENTITY),
    FieldSpec("industry", FieldType.STRING, FieldRole.DIMENSION),
    FieldSpec("tax", FieldType.NUMBER, FieldRole.MEASURE),
])
LAND = DatasetSchema.of("uscc", [
    FieldSpec("uscc", FieldType.STRING, FieldRole.ENTITY),
    FieldSpec("mu", FieldType.NUMBER, FieldRole.MEASURE),
])
SCHEMAS = {"g": GRID, "t": TAX, "l": LAND}
ENTITY = {"g": "uscc", "t": "code", "l": "uscc"}


Observed = dict[tuple[object, ...], tuple[int, dict[str, float]]]


def _run(tmp: Path, frames: dict[str, pd.DataFrame], spec: JoinedSpec
         ) -> tuple[CellPlan, CellTable]:
    create_master_key(tmp / "master.key")
    storage = ParquetStorage(tmp / "datasets", Keyring(tmp / "master.key"))
    locations = {alias: storage.write(f"d-{alias}", 1, frame, ENTITY[alias])
                 for alias, frame in frames.items()}
    schemas = {alias: SCHEMAS[alias] for alias in frames}
    plan = plan_joined(spec, schemas)
    engine = DuckDBEngine()
    try:
        result = engine.run({source_relation(a): storage.scan(loc)
                             for a, loc in locations.items()}, plan.sql, plan.params)
    finally:
        engine.close()
    return plan, read_table(plan, result)


def _expected(frames: dict[str, pd.DataFrame], dims: list[str], fields: list[str],
              filters: dict[str, list[object]]) -> Observed:
    """Per cell (margins included, None = summed over): the joined enterprises and each
    field's total, by the definition: each source summed per (its keys, enterprise), then
    inner-joined on the enterprise."""
    out: Observed = {}
    for kept in itertools.product([True, False], repeat=len(dims)):
        keep = [d for d, k in zip(dims, kept, strict=True) if k]
        joined = None
        for alias, frame in frames.items():
            rows = frame.rename(columns={ENTITY[alias]: "e"})
            for name, values in filters.items():
                a, f = name.split(".")
                if a == alias:
                    rows = rows[rows[f].isin(values)]
            own_keys = [d.split(".")[1] for d in keep if d.startswith(alias + ".")]
            own_fields = [f.split(".")[1] for f in fields if f.startswith(alias + ".")]
            reduced = rows.groupby([*own_keys, "e"], as_index=False)[own_fields].sum()
            reduced = reduced.rename(columns={c: f"{alias}.{c}" for c in own_keys + own_fields})
            joined = reduced if joined is None else joined.merge(reduced, on="e")
        assert joined is not None
        groups = joined.groupby(keep) if keep else [((), joined)]
        for key, part in groups:
            if part.empty:
                continue
            key = key if isinstance(key, tuple) else (key,)
            full_key = []
            it = iter(key)
            for k in kept:
                full_key.append(next(it) if k else None)
            out[tuple(full_key)] = (part["e"].nunique(),
                                    {f: float(part[f].sum()) for f in fields})
    return out


def _observed(plan: CellPlan, table: CellTable) -> Observed:
    out = {}
    for index in np.ndindex(*table.shape):
        entities = int(table.entities[index])
        if not entities:
            continue
        key = tuple(dom[i] if i < len(dom) else None
                    for dom, i in zip(table.domains, index, strict=True))
        out[key] = (entities, {f: float(table.fields[f].total[index]) for f in plan.fields})
    return out


def _frames(draw: st.DrawFn) -> dict[str, pd.DataFrame]:
    firms = [f"F{i}" for i in range(draw(st.integers(3, 9)))]

    def present() -> list[str]:
        return [f for f in firms if draw(st.booleans())] or firms[:1]

    grid = [{"uscc": f, "town": draw(st.sampled_from(["A", "B"])), "month": m,
             "kwh": float(draw(st.integers(0, 50)))}
            for f in present() for m in range(1, draw(st.integers(1, 4)) + 1)]
    tax = [{"code": f, "industry": draw(st.sampled_from(["x", "y"])),
            "tax": float(draw(st.integers(0, 90)))}
           for f in present() for _ in range(draw(st.integers(1, 2)))]
    land = [{"uscc": f, "mu": float(draw(st.integers(1, 30)))} for f in present()]
    return {"g": pd.DataFrame(grid), "t": pd.DataFrame(tax), "l": pd.DataFrame(land)}


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_joined_cells_match_the_definition(tmp_path_factory: pytest.TempPathFactory,
                                           data: st.DataObject) -> None:
    frames = data.draw(st.composite(_frames)())
    dims = data.draw(st.sampled_from([["g.town"], ["t.industry"], ["g.town", "t.industry"],
                                      ["g.month", "t.industry"], []]))
    filters: dict[str, list[object]] = data.draw(st.sampled_from(
        [{}, {"g.month": [1, 2]}, {"t.industry": ["x"]}]))
    spec = JoinedSpec(
        sources=(("g", "c1"), ("l", "c3"), ("t", "c2")), purpose="p",
        group_by=tuple(Dimension(d) for d in dims),
        measures=(Measure(MeasureFn.COUNT), Measure(MeasureFn.SUM, "g.kwh"),
                  Measure(MeasureFn.RATIO, numerator="t.tax", denominator="l.mu")),
        filters=tuple(Filter(f, FilterOp.IN, v) for f, v in filters.items()))
    plan, table = _run(tmp_path_factory.mktemp("j"), frames, spec)
    expected = _expected(frames, dims, list(plan.fields), filters)
    observed = _observed(plan, table)
    assert observed.keys() == expected.keys()
    for key, (entities, totals) in expected.items():
        assert observed[key][0] == entities, key
        for f, total in totals.items():
            assert math.isclose(observed[key][1][f], total, abs_tol=1e-9), (key, f)


def test_one_firms_many_rows_never_multiply_its_row_elsewhere(tmp_path: Path) -> None:
    grid = pd.DataFrame({"uscc": ["A"] * 12 + ["B"] * 12, "town": "T",
                         "month": list(range(1, 13)) * 2, "kwh": 1.0})
    tax = pd.DataFrame({"code": ["A", "B"], "industry": "x", "tax": [100.0, 10.0]})
    spec = JoinedSpec(sources=(("g", "c1"), ("t", "c2")), purpose="p",
                      group_by=(Dimension("g.town"),),
                      measures=(Measure(MeasureFn.SUM, "t.tax"),
                                Measure(MeasureFn.SUM, "g.kwh")))
    plan, table = _run(tmp_path, {"g": grid, "t": tax}, spec)
    [cell] = list(table.cells(margins=False))
    assert table.values(cell, plan) == {"sum_t.tax": 110.0, "sum_g.kwh": 24.0}
    # the tax rows behind the cell: one atom per firm, not twelve
    assert len(table.fields["t.tax"].atoms.get(table, cell)) == 2
    assert len(table.fields["g.kwh"].atoms.get(table, cell)) == 24


@pytest.mark.parametrize(("change", "named"), [
    ({"group_by": (Dimension("town"),)}, "town"),
    ({"group_by": (Dimension("x.town"),)}, "x.town"),
    ({"measures": (Measure(MeasureFn.SUM, "g.nope"),)}, "g.nope"),
    ({"measures": (Measure(MeasureFn.SUM, "t.industry"),)}, "t.industry"),
    ({"filters": (Filter("t.tax", FilterOp.EQ, 1.0),)}, "t.tax"),
    ({"group_by": (Dimension("g.uscc"),)}, "g.uscc"),
])
def test_bad_fields_are_refused_by_their_qualified_name(change: dict[str, object],
                                                        named: str) -> None:
    spec = JoinedSpec(sources=(("g", "c1"), ("t", "c2")), purpose="p", group_by=(),
                      measures=(Measure(MeasureFn.COUNT),))
    spec = JoinedSpec(**{**{f: getattr(spec, f) for f in spec.__slots__}, **change})
    with pytest.raises(InvalidInput) as caught:
        plan_joined(spec, {"g": GRID, "t": TAX})
    assert caught.value.extensions.get("fields") == [named]


@settings(max_examples=20, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_cross_check_counts_disagreeing_enterprises_and_sums_their_differences(
        tmp_path_factory: pytest.TempPathFactory, data: st.DataObject) -> None:
    frames = data.draw(st.composite(_frames)())
    del frames["l"]
    dims = data.draw(st.sampled_from([["g.town"], ["t.industry"], []]))
    tolerance = data.draw(st.sampled_from([0.0, 10.0, 50.0]))
    spec = JoinedSpec(sources=(("g", "c1"), ("t", "c2")), purpose="p",
                      group_by=tuple(Dimension(d) for d in dims),
                      measures=(Measure(MeasureFn.SUM, "g.kwh"), Measure(MeasureFn.SUM, "t.tax")),
                      compare=Comparison("g.kwh", "t.tax", tolerance))
    plan, table = _run(tmp_path_factory.mktemp("x"), frames, spec)
    grid, tax = frames["g"], frames["t"]
    for index in np.ndindex(*table.shape):
        if not table.entities[index]:
            continue
        key = table.key(index)
        g = grid if "g.town" not in key else grid[grid.town == key["g.town"]]
        t = tax if "t.industry" not in key else tax[tax.industry == key["t.industry"]]
        left, right = g.groupby("uscc").kwh.sum(), t.groupby("code").tax.sum()
        firms = sorted(set(left.index) & set(right.index))
        diffs = [abs(left[f] - right[f]) for f in firms]
        values = table.values(index, plan)
        assert values["compared"] == len(firms)
        assert (values["disagree"] or 0) == sum(
            d > tolerance / 100 * abs(left[f]) for d, f in zip(diffs, firms, strict=True))
        assert math.isclose(float(values["abs_diff_sum"] or 0.0), sum(diffs), abs_tol=1e-9)
    # the disagreement count carries no largest contributions: no dominance on a count
    assert not table.fields["#disagree"].top.any()


def test_a_cell_one_source_withholds_leaves_no_form_in_any_history(tmp_path: Path) -> None:
    grid = pd.DataFrame({"uscc": [f"F{i}" for i in range(6)] * 2, "town": ["A"] * 12,
                         "month": [1] * 6 + [2] * 6, "kwh": [float(i) for i in range(12)]})
    tax = pd.DataFrame({"code": [f"F{i}" for i in range(6)], "industry": "x",
                        "tax": [10.0, 20.0, 30.0, 40.0, 50.0, 60.0]})
    spec = JoinedSpec(sources=(("g", "c1"), ("t", "c2")), purpose="p",
                      group_by=(Dimension("g.town"),),
                      measures=(Measure(MeasureFn.SUM, "g.kwh"), Measure(MeasureFn.SUM, "t.tax")))
    _, table = _run(tmp_path, {"g": grid, "t": tax}, spec)
    [cell] = list(table.cells(margins=False))
    t_atoms = table.fields["t.tax"].atoms.get(table, cell)
    g_atoms = table.fields["g.kwh"].atoms.get(table, cell)
    grid_history, tax_history = History(), History()
    # The tax bureau's own total of five of the six firms is already published: the joined
    # cell's tax would give the sixth firm's tax away.
    tax_history.ensure(["f:tax"]).exact["f:tax"].add(BitMap64(list(t_atoms)[1:]))
    parts = [SourcePart(grid_history, {"g.kwh": "kwh"}, ("f:kwh",)),
             SourcePart(tax_history, {"t.tax": "tax"}, ("f:tax",))]
    released, forms, _ = link_sources(table, parts, [(cell, None)], {})
    assert released == [(cell, SuppressionReason.LINKED)]
    assert forms == [[], []]
    # and the grid's history holds nothing of the cell: it was audited again on the outcome
    assert grid_history.exact["f:kwh"].known(g_atoms) is False
