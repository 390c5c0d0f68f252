"""A seeded synthetic county economy for demos, tests and benchmarks (DESIGN.md section 7).

A few thousand enterprises with valid USCCs, GB/T 4754-2017 industry classes, towns, land in
mu, monthly electricity, output value, tax, employees and CO2. Skewed on purpose: every
industry has one or two dominant firms (so the dominance rule has something to bite), and some
towns are tiny (so many cells fall under k). Three providers each hold a slice: the grid
company (electricity), the tax bureau (output and tax), and the market regulator (register);
for questions across providers, the natural resources bureau's land register (mu per
enterprise) and the enterprises' own electricity reports, each missing a few enterprises, the
reports disagreeing with the grid's meters for a few firms.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from broker.domain.uscc import make_uscc

DIVISION = "330481"  # county-level administrative division code used in every USCC

#: Towns and their share of enterprises: a few industrial hubs, several tiny townships.
TOWNS: dict[str, float] = {
    "Xiashi": 0.24, "Chang'an": 0.18, "Xucun": 0.14, "Zhouwangmiao": 0.11, "Yanguan": 0.09,
    "Dingqiao": 0.08, "Huangwan": 0.06, "Yuanhua": 0.05, "Haizhou": 0.04, "Jianshan": 0.01,
}

#: GB/T 4754-2017 classes: code -> (name, share of firms, kWh per 10k CNY output, tax rate).
INDUSTRIES: dict[str, tuple[str, float, float, float]] = {
    "C3825": ("Photovoltaic equipment and components", 0.14, 620.0, 0.045),
    "C1713": ("Cotton printing and dyeing", 0.30, 900.0, 0.035),
    "C3856": ("Smart home consumer devices", 0.08, 180.0, 0.055),
    "C3670": ("Auto parts and accessories", 0.26, 350.0, 0.050),
    "C3499": ("Other general-purpose equipment", 0.22, 300.0, 0.050),
}

_NAME_WORDS = ["Hengtai", "Jiahe", "Xinyuan", "Ruifeng", "Tianhong", "Mingda", "Haoyu",
               "Kangsheng", "Longxin", "Zhengtai", "Baoli", "Huachen", "Yongfa", "Dexin"]


@dataclass(frozen=True, slots=True)
class County:
    """The generated economy: one row per enterprise, one row per enterprise-month."""

    enterprises: pd.DataFrame
    monthly: pd.DataFrame


def generate_county(
    *, seed: int = 20261123, enterprises: int = 3000, year: int = 2025, months: int = 12
) -> County:
    """The county for ``seed``; the same arguments always give the same data."""
    rng = np.random.default_rng(seed)
    towns = np.array(list(TOWNS))
    codes = np.array(list(INDUSTRIES))
    town = rng.choice(towns, size=enterprises, p=np.array(list(TOWNS.values())))
    industry = rng.choice(codes, size=enterprises, p=[v[1] for v in INDUSTRIES.values()])
    # Annual output in 10k CNY: lognormal body, plus one or two giants per industry, scaled
    # with the county so that they still dominate a county of many thousand firms.
    output = rng.lognormal(mean=7.0, sigma=1.1, size=enterprises)
    scale = max(1.0, enterprises / 3000)
    for code in codes:
        members = np.flatnonzero(industry == code)
        giants = rng.choice(members, size=min(2, len(members)), replace=False)
        output[giants[0]] *= 3000.0 * scale
        if len(giants) > 1:
            output[giants[1]] *= 60.0 * scale
        town[giants[0]] = "Xiashi" if code != "C3825" else "Yuanhua"
    bodies = rng.choice(100_000_000, size=enterprises, replace=False)
    uscc = [make_uscc(DIVISION, f"{b:08d}") for b in bodies]
    names = [
        f"{town[i]} {_NAME_WORDS[i % len(_NAME_WORDS)]} {INDUSTRIES[industry[i]][0].split()[0]}"
        f" Co., Ltd. No.{i + 1}"
        for i in range(enterprises)
    ]
    firms = pd.DataFrame({
        "uscc": uscc,
        "name": names,
        "town": town,
        "industry": industry,
        "annual_output": output.round(1),
        "land_mu": (output**0.55 * rng.uniform(0.4, 1.2, enterprises)).round(1),
        "employees": np.maximum(3, (output**0.7 * rng.uniform(0.05, 0.15, enterprises))).astype(
            int
        ),
    })
    # Monthly panel; some firms enter during the year.
    first = np.where(rng.random(enterprises) < 0.05, rng.integers(1, months, enterprises), 0)
    firm = np.repeat(np.arange(enterprises), months)
    month = np.tile(np.arange(months), enterprises)
    keep = month >= first[firm]
    firm, month = firm[keep], month[keep]
    season = 1 + 0.15 * np.sin(month % 12 / 12 * 2 * np.pi)
    out = output[firm] / months * season * rng.normal(1.0, 0.08, firm.size).clip(0.6, 1.4)
    intensity = np.array([INDUSTRIES[c][2] for c in industry])[firm]
    rate = np.array([INDUSTRIES[c][3] for c in industry])[firm]
    kwh = out * intensity * rng.uniform(0.9, 1.1, firm.size)
    dates = pd.to_datetime({"year": year + month // 12, "month": month % 12 + 1,
                            "day": 1}).dt.date
    monthly = pd.DataFrame({
        "uscc": np.array(uscc)[firm],
        "month": dates,
        "output_value": out.round(2),
        "electricity_kwh": kwh.round(1),
        "tax_paid": (out * rate * rng.uniform(0.8, 1.2, firm.size)).round(2),
        "co2_t": (kwh * 0.000581).round(3),
    })
    return County(enterprises=firms, monthly=monthly)


@dataclass(frozen=True, slots=True)
class Slice:
    """One provider's dataset: its rows and the ``meta`` it is registered with."""

    provider: str
    frame: pd.DataFrame
    meta: dict[str, Any]


def _field(name: str, type_: str, role: str, sensitivity: str = "L1", *,
           scale: int | None = None) -> dict[str, Any]:
    field: dict[str, Any] = {"name": name, "type": type_, "role": role,
                             "sensitivity": sensitivity}
    # Money in yuan to the fen, energy and land to the precision they are metered: declared,
    # so that their sums are exact decimals, the same whatever file or order they came in.
    if scale is not None:
        field["scale"] = scale
    # The county's code lists: every town and every industry class of its economy is a key
    # of every table, so an empty cell looks like a suppressed one.
    if name == "town":
        field["codes"] = list(TOWNS)
    elif name == "industry":
        field.update(hierarchy="gbt4754", codes=list(INDUSTRIES))
    return field


def _panel(county: County, provider: str, name: str, grade: str,
           *measures: dict[str, Any]) -> Slice:
    """A provider's monthly rows by enterprise (``grade`` its sensitivity), with each
    enterprise's town and industry, and the ``measures`` (declared with ``_field``)."""
    frame = county.monthly.merge(county.enterprises[["uscc", "town", "industry"]], on="uscc")
    frame = frame[["uscc", "town", "industry", "month", *(m["name"] for m in measures)]]
    return Slice(provider, frame, {
        "name": name,
        "entity_field": "uscc",
        "fields": [
            _field("uscc", "string", "entity", grade),
            _field("town", "string", "dimension"),
            _field("industry", "string", "dimension"),
            _field("month", "date", "dimension"),
            *measures,
        ],
    })


def grid_slice(county: County) -> Slice:
    """The grid company's monthly electricity by enterprise."""
    return _panel(county, "grid-company", "electricity-2025", "L2",
                  _field("electricity_kwh", "number", "measure", "L2", scale=1))


def tax_slice(county: County) -> Slice:
    """The tax bureau's monthly output value and tax paid by enterprise."""
    return _panel(county, "tax-bureau", "tax-2025", "L3",
                  _field("output_value", "number", "sensitive", "L3", scale=2),
                  _field("tax_paid", "number", "sensitive", "L3", scale=2))


def register_slice(county: County) -> Slice:
    """The market regulator's enterprise register: names, land and staff."""
    frame = county.enterprises[["uscc", "name", "town", "industry", "land_mu", "employees"]]
    return Slice("market-regulator", frame, {
        "name": "enterprise-register",
        "entity_field": "uscc",
        "fields": [
            _field("uscc", "string", "entity", "L2"),
            _field("name", "string", "identifier", "L2"),
            _field("town", "string", "dimension"),
            _field("industry", "string", "dimension"),
            _field("land_mu", "number", "measure", scale=1),
            _field("employees", "integer", "measure"),
        ],
    })


def land_slice(county: County, *, seed: int = 7) -> Slice:
    """The natural resources bureau's land register: industrial land in mu per enterprise
    (about 2% of enterprises are not in it: land leased from another firm)."""
    rng = np.random.default_rng(seed)
    firms = county.enterprises
    kept = firms[rng.random(len(firms)) >= 0.02]
    frame = pd.DataFrame({"uscc": kept["uscc"], "land_mu": kept["land_mu"]})
    return Slice("natural-resources-bureau", frame, {
        "name": "land-register",
        "entity_field": "uscc",
        "fields": [_field("uscc", "string", "entity", "L2"),
                   _field("land_mu", "number", "measure", "L2", scale=1)],
    })


#: Share of enterprises whose own electricity report is far from the grid's meters.
MISREPORTING_SHARE = 0.03


def self_reported_slice(county: County, *, seed: int = 11) -> Slice:
    """The enterprises' own yearly electricity reports, every enterprise's: within 3% of the
    grid's meters (reading dates, rounding), 20-40% off for about three firms in a
    hundred."""
    rng = np.random.default_rng(seed)
    metered = county.monthly.groupby("uscc", sort=True)["electricity_kwh"].sum()
    reported = np.ones(len(metered), dtype=bool)
    factor = 1 + rng.uniform(-0.03, 0.03, len(metered))
    off = rng.random(len(metered)) < MISREPORTING_SHARE
    factor[off] = 1 + rng.choice([-1, 1], off.sum()) * rng.uniform(0.2, 0.4, off.sum())
    frame = pd.DataFrame({"uscc": metered.index[reported],
                          "reported_kwh": (metered.to_numpy() * factor)[reported].round(0)})
    return Slice("enterprise-reports", frame, {
        "name": "self-reported-electricity-2025",
        "entity_field": "uscc",
        "fields": [_field("uscc", "string", "entity", "L2"),
                   _field("reported_kwh", "number", "measure", "L2", scale=0)],
    })
