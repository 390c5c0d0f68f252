"""A small seeded county for the release-audit attacks, and the attacker's bookkeeping.

The county: 24-40 firms (seeded), each with twelve monthly rows of 2024 (so a mean over a month is a
sum over as many rows as the cell counts firms), in five towns and four industries. Some firms
are alone on purpose:

* ``lonely``: the only firm of town LONE_TOWN;
* ``rare``: the only TEX firm of town RARE_TOWN (its town has many others);
* ``binned``: the only firm whose ``emp`` lies in [75, 80), two declared bin edges.

Every figure is a whole number (so every published sum is exact in a float) and within a factor
of about two of the others of its field, so no cell of three or more firms is dominated and
cells are withheld only for the reasons the attacks are about.

:class:`Attack` asks queries over HTTP, keeps every published cell with the predicate that
selects its rows (an independent reading of the query grammar), and asks the oracle whether the
cells taken together pin any firm. A refusal (403 ``disclosure-refused``) and a withheld cell
are safe outcomes; any other failure is a broken test, not a defence.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np
import pandas as pd
import pytest

from tests.attacks.oracle import COUNT, Number, Published, Row, bounds, find_leaks
from tests.conftest import World, auth, contract_terms, csv_bytes

MONTHS = tuple(f"2024-{m:02d}-01" for m in range(1, 13))
TOWNS = ("Xiashi", "Xucun", "Changan", "Zhouwang")
LONE_TOWN = "Yuanhua"
RARE_TOWN = "Xucun"
INDUSTRIES = ("PV", "TEX", "AUTO", "HOME")
RARE_INDUSTRY = "TEX"
EDGES = (50.0, 75.0, 80.0, 150.0)

FIELDS: list[dict[str, Any]] = [
    {"name": "month", "type": "date", "role": "dimension"},
    {"name": "town", "type": "string", "role": "dimension"},
    {"name": "industry", "type": "string", "role": "dimension"},
    {"name": "emp", "type": "integer", "role": "dimension", "bins": list(EDGES)},
    {"name": "kwh", "type": "number", "role": "measure"},
    {"name": "output", "type": "number", "role": "measure"},
    {"name": "tax", "type": "number", "role": "measure"},
]
MEASURES = ("kwh", "output", "tax")

#: Contract forms: every dimension in clear (any filter spelling), or dates generalised.
CLEAR: dict[str, str] = {"month": "clear", "town": "clear", "industry": "clear",
                         "emp": "generalize", "kwh": "aggregate", "output": "aggregate",
                         "tax": "aggregate"}
GENERAL: dict[str, str] = {**CLEAR, "month": "generalize"}

SUM = [{"fn": "sum", "field": "kwh"}]


@dataclass(frozen=True)
class County:
    """The generated data and its firms of interest."""

    frame: pd.DataFrame
    lonely: str
    rare: str
    binned: str

    def rows(self, version: int = 1) -> list[Row]:
        """The frame's rows as the oracle's unknowns, held by ``version``."""
        return frame_rows(self.frame, frozenset({version}))

    def total(self, measure: str, where: Callable[[pd.DataFrame], Any]) -> float:
        """The true sum of ``measure`` over the rows ``where`` selects."""
        return float(self.frame.loc[where(self.frame), measure].sum())

    def towns_but(self, *excluded: str) -> list[str]:
        """Every town of the county except ``excluded``, in a fixed order."""
        return [t for t in (*TOWNS, LONE_TOWN) if t not in excluded]


def county(seed: int, firms: int | None = None) -> County:
    """A seeded county of 24-40 firms (or ``firms``, at least 22) with twelve monthly rows
    each."""
    rng = np.random.default_rng(seed)
    n = firms if firms is not None else int(rng.integers(24, 41))
    ids = [f"F{seed:03d}{i:03d}" for i in range(n)]
    # Every ordinary town gets at least five firms; LONE_TOWN only the first firm.
    towns = [LONE_TOWN, RARE_TOWN] + [TOWNS[i % len(TOWNS)] for i in range(n - 2)]
    towns[2:] = list(rng.permutation(towns[2:]))
    ordinary = [i for i in INDUSTRIES if i != RARE_INDUSTRY]
    industries = [str(rng.choice(ordinary)), RARE_INDUSTRY]
    for i in range(2, n):
        pool = ordinary if towns[i] == RARE_TOWN else list(INDUSTRIES)
        industries.append(str(rng.choice(pool)))
    binned = next(i for i in range(2, n) if towns[i] != RARE_TOWN)
    emp = []
    for i in range(n):
        value = 77 if i == binned else int(rng.integers(10, 200))
        while i != binned and 75 <= value < 80:
            value = int(rng.integers(10, 200))
        emp.append(value)
    records = []
    for i in range(n):
        base = {m: int(rng.integers(lo, hi)) for m, (lo, hi) in
                {"kwh": (500, 1000), "output": (2000, 4000), "tax": (250, 400)}.items()}
        for month in MONTHS:
            records.append({
                "uscc": ids[i], "month": month, "town": towns[i], "industry": industries[i],
                "emp": emp[i],
                **{m: base[m] + int(rng.integers(-40, 41)) for m in base},
            })
    return County(pd.DataFrame(records), lonely=ids[0], rare=ids[1], binned=ids[binned])


def frame_rows(frame: pd.DataFrame, versions: frozenset[int]) -> list[Row]:
    """Rows of a county-shaped frame for the oracle."""
    return [Row(enterprise=str(r["uscc"]),
                attrs={"month": str(r["month"]), "town": str(r["town"]),
                       "industry": str(r["industry"]), "emp": int(r["emp"])},
                values={m: int(r[m]) for m in MEASURES}, versions=versions)
            for r in frame.to_dict("records")]


def versioned(*frames: pd.DataFrame) -> list[Row]:
    """The distinct rows of several versions (1, 2, ...) of a county, each once, with the
    versions that hold it: a row unchanged between versions is one unknown."""
    held: dict[tuple[Any, ...], set[int]] = {}
    rows: dict[tuple[Any, ...], Row] = {}
    for version, frame in enumerate(frames, start=1):
        for row in frame_rows(frame, frozenset({version})):
            key = (row.enterprise, tuple(sorted(row.attrs.items())),
                   tuple(sorted(row.values.items())))
            rows.setdefault(key, row)
            held.setdefault(key, set()).add(version)
    return [Row(r.enterprise, r.attrs, r.values, frozenset(held[k])) for k, r in rows.items()]


# ---------------------------------------------------------------- reading a query back


def _bin_label(value: float, edges: Sequence[float]) -> str:
    def num(x: float) -> str:
        return str(int(x)) if float(x).is_integer() else repr(float(x))

    if value < edges[0]:
        return f"<{num(edges[0])}"
    for lo, hi in itertools.pairwise(edges):
        if lo <= value < hi:
            return f"[{num(lo)},{num(hi)})"
    return f">={num(edges[-1])}"


def _key(attrs: Mapping[str, object], dim: str | Mapping[str, Any]) -> tuple[str, object]:
    """The key a row gets on one group_by entry."""
    if isinstance(dim, str):
        return dim, attrs[dim]
    name = dim["field"]
    value = attrs[name]
    if "bins" in dim:
        return name, _bin_label(float(value), dim["bins"])  # type: ignore[arg-type]
    level = dim.get("level")
    if level in (None, "day"):
        return name, value
    day = dt.date.fromisoformat(str(value))
    if level == "month":
        return name, f"{day.year}-{day.month:02d}"
    if level == "quarter":
        return name, f"{day.year}-Q{(day.month - 1) // 3 + 1}"
    if level == "year":
        return name, str(day.year)
    raise AssertionError(f"no reading for level {level}")


def _passes(attrs: Mapping[str, object], flt: Mapping[str, Any]) -> bool:
    value = attrs[flt["field"]]
    if flt["op"] == "eq":
        return bool(value == flt["value"])
    if flt["op"] == "in":
        return value in flt["value"]
    low, high = flt["value"]
    return (low is None or value >= low) and (high is None or value <= high)


def selects(body: Mapping[str, Any], key: Mapping[str, Any]) -> Callable[[Row], bool]:
    """The rows a cell of the query ``body`` covers: the filters, and the cell's key on each
    dimension it is not summed over."""
    filters = list(body.get("filters", []))
    dims = [d for d in body.get("group_by", [])
            if (d if isinstance(d, str) else d["field"]) in key]

    def where(row: Row) -> bool:
        if not all(_passes(row.attrs, f) for f in filters):
            return False
        for dim in dims:
            name, value = _key(row.attrs, dim)
            if value != key[name]:
                return False
        return True

    return where


# --------------------------------------------------------------------------- the attack

#: Reasons a cell is withheld for itself, with a protection interval of its own.
PRIMARY = ("min-entities", "dominance")


@dataclass(frozen=True)
class Withheld:
    """A sum withheld for itself: its measure, the rows it covers, why, and the version."""

    measure: str
    where: Callable[[Row], bool]
    reason: str
    version: int = 1

Values = Mapping[str, Any] | None
Cells = dict[tuple[tuple[str, Any], ...], Values]


def keyed(**key: Any) -> tuple[tuple[str, Any], ...]:
    """A cell key as the tuple :meth:`Attack.ask` indexes cells by."""
    return tuple(sorted(key.items()))


@dataclass
class Attack:
    """An attacker's queries against one broker, and every figure they published."""

    world: World
    rows: list[Row]
    cells: list[Published] = field(default_factory=list)
    log: list[str] = field(default_factory=list)
    #: Cells withheld on their own account (too small, dominated): the measure, the rows the
    #: cell covers, why, and the dataset version.
    withheld: list[Withheld] = field(default_factory=list)

    def ask(self, token: str | None = None, *, version: int = 1, opaque: Sequence[str] = (),
            **body: Any) -> Cells | None:
        """Run one aggregate query; its cells by key (None where withheld), or None when the
        query was refused whole (403 disclosure-refused). Published sums and counts are kept,
        except those keyed by an ``opaque`` (pseudonymized) dimension, whose rows the attacker
        does not know."""
        n = len(self.log) + 1
        r = self.world.query(token, **body)
        if r.status_code == 403 and r.json().get("type") == "disclosure-refused":
            self.log.append(f"q{n}: refused")
            return None
        assert r.status_code == 200, f"q{n} failed (not a safe outcome): {r.text}"
        out: Cells = {}
        published = 0
        for cell in r.json()["cells"]:
            key, values = cell["key"], cell["values"]
            out[keyed(**key)] = values
            if values is None:
                if cell.get("reason") in PRIMARY:
                    self.withheld += [
                        Withheld(m["field"], selects(body, key), cell["reason"], version)
                        for m in body.get("measures", []) if m.get("fn") == "sum"]
                continue
            published += 1
            if any(name in key for name in opaque):
                continue
            label = f"q{n}" + ("{" + ",".join(f"{k}={v}" for k, v in key.items()) + "}"
                               if key else "{}")
            for name, value in values.items():
                measure = (COUNT if name == "count" else
                           name.removeprefix("sum_") if name.startswith("sum_") else None)
                if measure is not None and value is not None:
                    self.cells.append(Published(label, measure, value, selects(body, key),
                                                version))
        self.log.append(f"q{n}: {published}/{len(out)} published")
        return out

    def know(self, label: str, measure: str, value: Number, body: Mapping[str, Any],
             key: Mapping[str, Any] | None = None, version: int = 1) -> None:
        """Add a figure the attacker derived from published ones (a mean times its count, a
        ratio times its denominator) as if published, for the cell ``key`` of ``body``."""
        self.cells.append(Published(label, measure, value, selects(body, key or {}), version))

    def assert_intervals_kept(self, protection: float = 0.10, dominance: tuple[int, int] = (2, 85),
                              ) -> None:
        """No withheld sum is bounded, by a linear programme over everything published and
        nonnegativity, inside its protection interval: ``protection`` of its value either side
        for a small cell; for a dominated one, up to the total at which its ``n`` largest
        contributors would hold ``k`` percent, and as far below (the levels the README states)."""
        failures = []
        for w in self.withheld:
            def covered(row: Row, w: Withheld = w) -> bool:
                return w.version in row.versions and w.where(row)

            inside = [r for r in self.rows if covered(r)]
            x = float(sum(r.values[w.measure] for r in inside))
            if w.reason == "dominance":
                per: dict[str, float] = {}
                for r in inside:
                    per[r.enterprise] = per.get(r.enterprise, 0.0) + float(r.values[w.measure])
                top = sum(sorted(per.values(), reverse=True)[: dominance[0]])
                level = max(100.0 * top / dominance[1] - x, 0.0)
            else:
                level = protection * abs(x)
            if level <= 0:
                continue
            low, high = bounds(self.rows, self.cells, None, w.measure, covered)
            slack = 1e-6 * max(1.0, x)
            if low > max(x - level, 0.0) + slack or high < x + level - slack:
                failures.append(f"{w.reason} {w.measure} sum {x:g} (level {level:g}) "
                                f"bounded to [{low:g}, {high:g}]")
        if failures:
            pytest.fail("; ".join(failures) + f" | {'; '.join(self.log)}", pytrace=False)

    def assert_no_leak(self, note: str = "") -> None:
        """No combination of everything published isolates any firm (the message names at
        most one leak per measure, and the queries' outcomes)."""
        leaks = find_leaks(self.rows, self.cells)
        if leaks:
            first = {leak.measure: leak for leak in reversed(leaks)}
            pytest.fail(" // ".join(leak.describe() for leak in first.values())
                        + f" | {'; '.join(self.log)}" + (f" | {note}" if note else ""),
                        pytrace=False)


def setup(world: World, seed: int, forms: Mapping[str, str] = CLEAR,
          firms: int | None = None) -> tuple[County, str, str]:
    """The county of ``seed`` uploaded, and an active contract for econ: (county, dataset id,
    contract id)."""
    data = county(seed, firms)
    did = world.add_dataset(data.frame, FIELDS, name=f"county-{seed}")
    cid = world.contract_for(did, fields=dict(forms))
    return data, did, cid


def offer(world: World, dataset_id: str, consumer: str, forms: Mapping[str, str],
          **terms: Any) -> str | None:
    """Offer and accept a contract; None when the broker refuses either step (a 4xx)."""
    r = world.client.post("/v1/contracts", headers=auth(world.grid), json=contract_terms(
        dataset_id, consumer_org=consumer, fields=dict(forms), **terms))
    if 400 <= r.status_code < 500:
        return None
    assert r.status_code == 201, r.text
    cid: str = r.json()["id"]
    token = world.econ if consumer == "econ" else world.env
    r = world.client.post(f"/v1/contracts/{cid}/accept", headers=auth(token))
    if 400 <= r.status_code < 500:
        return None
    assert r.status_code == 200, r.text
    return cid


def new_version(world: World, dataset_id: str, frame: pd.DataFrame) -> int:
    """Upload ``frame`` as the next version of the dataset; its number."""
    r = world.client.post(f"/v1/datasets/{dataset_id}/versions", headers=auth(world.grid),
                          files={"file": ("v.csv", csv_bytes(frame), "text/csv")})
    assert r.status_code == 201, r.text
    version: int = r.json()["version"]
    return version


def figure(cells: Cells | None, name: str = "sum_kwh", **key: Any) -> Fraction | None:
    """One released figure as an exact rational; None when the query was refused, or the cell
    withheld or absent."""
    values = None if cells is None else cells.get(keyed(**key))
    if values is None or values.get(name) is None:
        return None
    return Fraction(values[name])


def combine(*terms: tuple[int, Fraction | None]) -> Fraction | None:
    """A signed sum of released figures, or None if any of them is missing."""
    if any(v is None for _, v in terms):
        return None
    return Fraction(sum((c * (v or 0) for c, v in terms), Fraction(0)))


def total_of(cells: Cells | None, name: str = "sum_kwh") -> Fraction | None:
    """The sum of a table's non-margin cells, or None if any is missing."""
    if cells is None:
        return None
    parts = [figure(cells, name, **dict(key)) for key in cells if key]
    return combine(*((1, p) for p in parts)) if parts else None
