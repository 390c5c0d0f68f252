"""Second round of attacks on the field-flow policy, aimed at the first round's fixes.

Same conventions as test_policy_attacks: each test states the safe behaviour; a test marked
``xfail(strict=True)`` documents an attack that succeeds today (a real leak), every other test
is a defence that held. Attacked: keyed pseudonyms and the hiding of rare pseudonymized keys,
declared bins and date levels against differencing across queries, the release cache across
contracts, and the field-name collision check against DuckDB's identifier folding.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import pytest

from tests.conftest import World, assert_problem, auth, contract_terms, released, upload

SUM = [{"fn": "sum", "field": "kwh"}, {"fn": "count"}]





def _by_key(r: Any, field: str) -> dict[Any, Any]:
    """Released values of a one-dimension table by key (None where withheld); margins too."""
    return {k.get(field, "total"): v for k, v, _ in released(r)}


def _kwh(values: Any) -> float | None:
    return None if values is None else float(values["sum_kwh"])


# ------------------------------------- differencing across queries: (b) and (e)

TOWNS = pd.DataFrame({"uscc": [f"E{i}" for i in range(10)],
                      "town": ["A"] * 5 + ["B"] * 4 + ["C"],      # E9 is alone in town C
                      "kwh": [100.0, 101, 102, 103, 104, 105, 106, 107, 108, 137]})


# Before the release audit this leaked: the differencing guard compares releases pairwise: three
# cells (A+C) - (A+B) + B, each pair >= k apart, isolate one firm
def test_a_three_query_tracker_does_not_isolate_one_firm(world: World) -> None:
    did = world.add_dataset(TOWNS, [
        {"name": "town", "type": "string", "role": "dimension"},
        {"name": "kwh", "type": "number", "role": "measure", "bins": [50.0, 120.0]}])
    cid = world.contract_for(did, fields={"town": "clear", "kwh": "generalize"})

    def total(*towns: str) -> float | None:
        r = world.query(contract_id=cid, measures=SUM,
                        filters=[{"field": "town", "op": "in", "value": list(towns)}])
        return _kwh(released(r)[0][1])

    # Narrowing a declared bin (or any cell) to the one firm of town C directly is withheld ...
    r = world.query(contract_id=cid, group_by=[{"field": "kwh", "bins": [120.0]}], measures=SUM,
                    filters=[{"field": "town", "op": "eq", "value": "C"}])
    assert all(v is None for _, v, _ in released(r))
    # ... and so is a two-query difference (A+C vs A: one firm apart) once A+C is out.
    a_c, a_b, b = total("A", "C"), total("A", "B"), total("B")
    assert total("A") is None
    # Found here: {"town" in [A,C]} -> 647.0, {in [A,B]} -> 936.0, {in [B]} -> 426.0, all
    # published, and 647 - 936 + 426 = 137.0 is E9's exact kwh, a generalize-form measure.
    assert None in (a_c, a_b, b) or (a_c or 0) - (a_b or 0) + (b or 0) != 137.0


DAYS = pd.DataFrame({"uscc": [f"E{i}" for i in range(7)],
                     "day": ["2025-01-15", "2025-03-15", "2025-05-15", "2025-07-15",
                             "2025-09-15", "2025-11-15", "2025-12-10"],  # E6 alone in December
                     "kwh": [100.0, 101, 102, 103, 104, 105, 137]})


# Before the release audit this leaked: the differencing guard compares only cells of equal date
# scope, so nested aligned ranges (year vs Jan-Nov) isolate December
def test_nested_date_ranges_do_not_isolate_the_only_firm_of_a_month(world: World) -> None:
    did = world.add_dataset(DAYS, [{"name": "day", "type": "date", "role": "dimension"},
                                 {"name": "kwh", "type": "number", "role": "measure"}])
    cid = world.contract_for(did, fields={"day": "generalize", "kwh": "aggregate"})
    by_month = _by_key(world.query(contract_id=cid, measures=SUM, totals=True,
                                   group_by=[{"field": "day", "level": "month"}]), "day")
    assert by_month["2025-12"] is None  # the month itself is withheld (min-entities)

    def within(low: str, high: str) -> Any:
        r = world.query(contract_id=cid, measures=SUM,
                        filters=[{"field": "day", "op": "range", "value": [low, high]}])
        assert r.json()["policy"]["fields"]["day"] == "generalize"
        return released(r)[0][1]

    year, to_november = within("2025-01-01", "2025-12-31"), within("2025-01-01", "2025-11-30")
    # Found here: {"sum_kwh": 752.0, "count": 7} and {"sum_kwh": 615.0, "count": 6}: both
    # period-aligned, both published; the difference is E6's kwh, 137.0.
    assert year is None or to_november is None or year["sum_kwh"] - to_november["sum_kwh"] != 137


#: kwh with declared edges 20 and 30: three firms below 20, six in [20,30), and in >=30 one
#: dominant firm (300 of 360: the (2, 85%) rule withholds that bin).
DOMINANT = pd.DataFrame({"uscc": [f"E{i}" for i in range(12)],
                         "kwh": [19.0, 19, 19] + [25.0] * 6 + [300.0, 30, 30]})


# Before the release audit this leaked: complementary suppression protects each table alone:
# '>=20' of edges [20] less '[20,30)' of edges [20,30] is the dominated bin
def test_declared_bin_subsets_do_not_undo_a_dominance_suppression(world: World) -> None:
    did = world.add_dataset(DOMINANT, [
        {"name": "kwh", "type": "number", "role": "measure", "bins": [20.0, 30.0]}])
    cid = world.contract_for(did, fields={"kwh": "generalize"})
    fine = _by_key(world.query(contract_id=cid, measures=SUM, totals=True,
                               group_by=[{"field": "kwh", "bins": [20.0, 30.0]}]), "kwh")
    assert fine[">=30"] is None  # dominance, '<20' its complement
    coarse = _by_key(world.query(contract_id=cid, measures=SUM, totals=True,
                                 group_by=[{"field": "kwh", "bins": [20.0]}]), "kwh")
    assert coarse["<20"] is None  # the complement stays withheld (a defence that held) ...
    # ... but found here: [20,30) -> 150.0 in the first answer, >=20 -> 510.0 in the second:
    # 510 - 150 = 360.0, the dominated bin's total, to the unit.
    upper, middle = _kwh(coarse[">=20"]), _kwh(fine["[20,30)"])
    assert upper is None or middle is None or upper - middle != 360.0


def test_declared_bin_subsets_cannot_difference_a_small_bin(world: World) -> None:
    """Two firms in [20,30): every pair of edge subsets that brackets it is 2 < k apart."""
    frame = pd.DataFrame({"uscc": [f"E{i}" for i in range(12)],
                          "kwh": [10.0, 11, 12, 13, 14, 21, 22, 30, 31, 32, 33, 34]})
    did = world.add_dataset(frame, [
        {"name": "kwh", "type": "number", "role": "measure", "bins": [20.0, 30.0]}])
    cid = world.contract_for(did, fields={"kwh": "generalize"})
    seen: dict[str, float | None] = {}
    for edges in ([20.0, 30.0], [20.0], [30.0]):
        r = world.query(contract_id=cid, measures=SUM, totals=True, remainder=True,
                        group_by=[{"field": "kwh", "bins": edges}])
        for key, values in _by_key(r, "kwh").items():
            seen[f"{key}{edges}"] = _kwh(values)
    assert seen["[20,30)[20.0, 30.0]"] is None
    lower = (seen["<30[30.0]"], seen["<20[20.0]"])
    upper = (seen[">=20[20.0]"], seen[">=30[30.0]"])
    assert None in lower
    assert None in upper


# ------------------------------------------------------------ pseudonyms: (a)


def test_bins_on_a_pseudonymized_number_are_refused(world: World) -> None:
    """Found by this suite: single-edge bins at 4, 7 and 10 gave counts {3, 9}, {6, 6},
    {9, 3}; only one monotone reading fits, which tells which pseudonym is '<x'. A
    pseudonymized field is now grouped by its stored values only."""
    frame = pd.DataFrame({"uscc": [f"E{i}" for i in range(12)], "emp": list(range(1, 13))})
    did = world.add_dataset(frame, [{"name": "emp", "type": "integer", "role": "dimension"}])
    cid = world.contract_for(did, fields={"emp": "pseudonymize"})
    for edge in (4.0, 7.0, 10.0):
        r = world.query(contract_id=cid, group_by=[{"field": "emp", "bins": [edge]}])
        assert r.status_code == 403, r.text
        assert r.json()["reasons"] == ["pseudonymized-field-not-regrouped"]


def test_a_null_value_of_a_pseudonymized_field_is_not_released_in_clear(world: World) -> None:
    """Found by this suite: {"bank": null} -> {"count": 4} came out beside two ps_ keys."""
    frame = pd.DataFrame({"uscc": [f"E{i}" for i in range(12)],
                          "bank": ["X"] * 4 + ["Y"] * 4 + [None] * 4})
    did = world.add_dataset(frame, [{"name": "bank", "type": "string", "role": "dimension"}])
    cid = world.contract_for(did, fields={"bank": "pseudonymize"})
    cells = released(world.query(contract_id=cid, group_by=["bank"]))
    assert len(cells) == 3
    assert all(str(k["bank"]).startswith("ps_") for k, _, _ in cells)


def test_hierarchy_levels_of_a_pseudonymized_code_are_refused(world: World) -> None:
    """Found by this suite: class counts [5, 4, 4] and division counts [8, 5], laid on the
    public code list, unmasked every pseudonym. Only the stored level is allowed now."""
    codes = ["C3825", "C3826", "C1711"]
    frame = pd.DataFrame({"uscc": [f"E{i}" for i in range(13)],
                          "ind": ["C3825"] * 4 + ["C3826"] * 4 + ["C1711"] * 5})
    did = world.add_dataset(frame, [{"name": "ind", "type": "string", "role": "dimension",
                                   "hierarchy": "gbt4754", "codes": codes}])
    cid = world.contract_for(did, fields={"ind": "pseudonymize"})
    for level in ("class", "group", "division", "section"):
        r = world.query(contract_id=cid, group_by=[{"field": "ind", "level": level}])
        assert r.status_code == 403, r.text
        assert r.json()["reasons"] == ["pseudonymized-field-not-regrouped"]
    raw = world.query(contract_id=cid, group_by=["ind"])
    assert raw.status_code == 200, raw.text
    assert all(str(c["key"]["ind"]).startswith("ps_") for c in raw.json()["cells"])


# ------------------------------------------------------------ release cache: (c)


def test_the_release_cache_never_hands_one_contracts_answer_to_another(world: World) -> None:
    """The same computation under contracts with other forms or thresholds: the answer
    cached in clear for the first is recomputed or re-keyed for each of the others."""
    did = world.add_dataset(TOWNS, [{"name": "town", "type": "string", "role": "dimension"},
                                  {"name": "kwh", "type": "number", "role": "measure"}])
    body: dict[str, Any] = {"group_by": ["town"], "measures": SUM, "totals": True}
    clear = world.contract_for(did, fields={"town": "clear", "kwh": "aggregate"})
    first = _by_key(world.query(contract_id=clear, **body), "town")
    assert first["A"] == {"sum_kwh": 510.0, "count": 5}
    # Pseudonyms of a field another contract lets out in clear are refused at the offer (the
    # per-town sums would match them up); pseudonym contracts get a dataset of their own.
    refused = world.client.post("/v1/contracts", headers=auth(world.grid), json=contract_terms(
        did, fields={"town": "pseudonymize", "kwh": "aggregate"}))
    assert assert_problem(refused, 409, "conflict")["reasons"] == ["pseudonym-linkable"]
    hidden = world.add_dataset(TOWNS, [{"name": "town", "type": "string", "role": "dimension"},
                                     {"name": "kwh", "type": "number", "role": "measure"}])
    keyed = world.contract_for(hidden, fields={"town": "pseudonymize", "kwh": "aggregate"})
    other = world.contract_for(hidden, fields={"town": "pseudonymize", "kwh": "aggregate"})
    mine = world.query(contract_id=keyed, **body)
    theirs = world.query(contract_id=other, **body)
    for r in (mine, theirs):
        assert '"A"' not in r.text
        assert '"B"' not in r.text
        assert '"C"' not in r.text
    ps = {k["town"] for k, _, _ in released(mine) if "town" in k}
    assert ps
    assert not ps & {k["town"] for k, _, _ in released(theirs) if "town" in k}
    strict = world.contract_for(did, k_min=6, fields={"town": "clear", "kwh": "aggregate"})
    assert _by_key(world.query(contract_id=strict, **body), "town")["A"] is None
    tight = world.contract_for(did, consumer="env", dominance={"n": 1, "k": 20.0},
                      fields={"town": "clear", "kwh": "aggregate"})
    r = world.client.post("/v1/queries/aggregate", headers=auth(world.env), json={
        "contract_id": tight, "purpose": "energy-planning", **body})
    assert _by_key(r, "town")["A"] is None  # one firm of town A holds over 20%


# ------------------------------------------------------- field-name folding: (d)


@pytest.mark.parametrize(("one", "two"), [
    ("stra\u00dfe", "strasse"),           # German sharp s: casefold gives 'ss'
    ("\u212awh", "kwh"),                   # Kelvin sign: NFKC gives 'K'
    ("\u03c3um", "\u03c2um"),              # Greek final sigma
    ("\u03a3um", "\u03c2um"),
    ("\ufb00x", "ffx"),                    # ligature
    ("\u017fx", "sx"),                     # long s
])
def test_names_equal_after_nfkc_and_casefold_are_refused(world: World, one: str,
                                                         two: str) -> None:
    """Refused even though DuckDB (which folds ASCII case only) would keep them apart: the
    check errs towards refusing."""
    meta = {"name": "fold", "entity_field": "uscc", "fields": [
        {"name": "uscc", "type": "string", "role": "entity"},
        {"name": one, "type": "string", "role": "identifier", "sensitivity": "L3"},
        {"name": two, "type": "string", "role": "dimension"}]}
    frame = pd.DataFrame({"uscc": ["E1", "E2"], one: ["s1", "s2"], two: ["d", "d"]})
    r = upload(world.client, world.grid, frame, meta)
    assert r.status_code == 422, r.text
    assert "s1" not in r.text


@pytest.mark.parametrize("twin", ["\u0131d", "\u0131D"])
def test_dotless_i_names_are_refused_as_lookalikes(world: World, twin: str) -> None:
    """Dotless i is not folded to 'i' by NFKC+casefold, but it looks like one (UTS #39
    confusables): beside `id` the upload is refused, naming both (issue 18)."""
    frame = pd.DataFrame({"uscc": [f"E{i}" for i in range(6)],
                          twin: [f"Secret {i}" for i in range(6)], "id": ["x"] * 6})
    meta = {"name": "twins", "entity_field": "uscc", "fields": [
        {"name": "uscc", "type": "string", "role": "entity"},
        {"name": twin, "type": "string", "role": "identifier", "sensitivity": "L3"},
        {"name": "id", "type": "string", "role": "dimension"}]}
    body = assert_problem(upload(world.client, world.grid, frame, meta), 422, "invalid-input")
    assert body["reasons"] == ["confusable-names"]
    assert body["fields"] == sorted([twin, "id"])
    assert "Secret" not in str(body)


@pytest.mark.parametrize("twin", ["\u0130d", "\u0130D"])
def test_dotted_capital_i_names_pass_the_check_and_the_engine_keeps_them_apart(
        world: World, twin: str) -> None:
    """Dotted capital I keeps its dot through NFKC, casefolding and the skeleton, and DuckDB
    does not fold it to 'i': the upload is accepted, and a query on the contracted `id`
    reads `id`, never the identifier."""
    frame = pd.DataFrame({"uscc": [f"E{i}" for i in range(6)],
                          twin: [f"Secret {i}" for i in range(6)], "id": ["x"] * 6})
    did = world.add_dataset(frame, [
        {"name": twin, "type": "string", "role": "identifier", "sensitivity": "L3"},
        {"name": "id", "type": "string", "role": "dimension"}])
    cid = world.contract_for(did, fields={"id": "clear"})
    r = world.query(contract_id=cid, group_by=["id"])
    assert [k for k, _, _ in released(r)] == [{"id": "x"}]
    assert "Secret" not in r.text
    assert world.query(contract_id=cid, group_by=[twin]).status_code == 403


# ------------------------------------------------------------- field flow: (e)


@pytest.fixture
def graded(world: World) -> str:
    frame = pd.DataFrame({"uscc": [f"E{i}" for i in range(12)], "emp": list(range(1, 13)),
                          "day": [f"2025-{m:02d}-15" for m in range(1, 13)],
                          "kwh": [float(10 + i) for i in range(12)]})
    did = world.add_dataset(frame, [
        {"name": "emp", "type": "integer", "role": "dimension", "bins": [4.0, 8.0]},
        {"name": "day", "type": "date", "role": "dimension"},
        {"name": "kwh", "type": "number", "role": "measure", "bins": [15.0]}])
    return world.contract_for(did, fields={"emp": "generalize", "day": "generalize",
                                         "kwh": "clear"})


@pytest.mark.parametrize("body", [
    {"group_by": [{"field": "emp", "bins": [4.0, 8.0, 9.0]}]},     # a superset of the grid
    {"group_by": [{"field": "emp", "bins": [4.5]}]},
    {"group_by": [{"field": "kwh", "bins": [15.0, 16.0]}]},        # a clear measure, off grid
    {"group_by": [{"field": "emp", "level": "year"}]},
    {"group_by": [{"field": "day", "level": "group"}]},
    {"filters": [{"field": "emp", "op": "range", "value": [4, 7]}]},
    {"filters": [{"field": "emp", "op": "in", "value": [4, 5, 6, 7]}]},
    {"filters": [{"field": "kwh", "op": "range", "value": [15.0, None]}]},
    {"filters": [{"field": "day", "op": "in", "value": ["2025-01-15"]}]},
    {"filters": [{"field": "day", "op": "eq", "value": "2025-01-15"}]},
    {"filters": [{"field": "day", "op": "range", "value": ["2025-01-01", "2025-01-15"]}]},
])
def test_generalize_forms_take_only_their_grid_and_levels(world: World, graded: str,
                                                          body: dict[str, Any]) -> None:
    r = world.query(contract_id=graded, **body)
    assert r.status_code in (403, 422), r.text


def test_declared_grids_and_aligned_ranges_flow_generalized(world: World, graded: str) -> None:
    for body in ({"group_by": [{"field": "emp", "bins": [8.0]}]},
                 {"group_by": [{"field": "kwh", "bins": [15.0]}]},
                 {"group_by": [{"field": "day", "level": "quarter"}],
                  "filters": [{"field": "day", "op": "range",
                               "value": ["2025-04-01", "2025-12-31"]}]}):
        r = world.query(contract_id=graded, **body)
        assert r.status_code == 200, r.text
        assert set(r.json()["policy"]["fields"].values()) <= {"generalize", "clear"}
