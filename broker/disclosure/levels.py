"""Generalisation levels: coarser keys for a dimension, as SQL and for code lists.

A consumer may group by a field at a coarser level than it is stored in: a date by month,
quarter or year; a GB/T 4754-2017 industry code by class, group, division or section; a number
by declared bins. Coarser keys put more enterprises in each cell, which is the cheapest way to
publish more and suppress less (the "global recoding" of Hundepool et al., *Statistical
Disclosure Control*, 2012, section 4.2). Every expression here is built from quoted, schema
checked column names and constants of this module; bin edges and labels are bound parameters.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from broker.domain.datasets import FieldSpec, FieldType
from broker.domain.errors import InvalidInput
from broker.domain.levels import DATE_LEVELS, HIERARCHIES

MAX_BINS = 32
_DIGITS = {"class": 4, "group": 3, "division": 2}

#: GB/T 4754-2017 sections by their first and last two-digit division.
GBT4754_SECTIONS: tuple[tuple[str, int, int], ...] = (
    ("A", 1, 5), ("B", 6, 12), ("C", 13, 43), ("D", 44, 46), ("E", 47, 50), ("F", 51, 52),
    ("G", 53, 60), ("H", 61, 62), ("I", 63, 65), ("J", 66, 69), ("K", 70, 70), ("L", 71, 72),
    ("M", 73, 75), ("N", 76, 79), ("O", 80, 82), ("P", 83, 83), ("Q", 84, 85), ("R", 86, 90),
    ("S", 91, 96), ("T", 97, 97),
)

def section_of(division: int) -> str | None:
    """The GB/T 4754-2017 section letter of a two-digit division, or None if it has none."""
    for letter, first, last in GBT4754_SECTIONS:
        if first <= division <= last:
            return letter
    return None


def generalise_gbt4754(code: str, level: str) -> str | None:
    """``code`` (e.g. 'C3825' or '3825') at ``level``: 'C382', 'C38' or 'C'."""
    digits = code.lstrip("ABCDEFGHIJKLMNOPQRST")
    prefix = code[: len(code) - len(digits)]
    if not digits[:2].isdigit():
        return None
    if level == "section":
        return section_of(int(digits[:2]))
    return prefix + digits[: _DIGITS[level]]


@dataclass(frozen=True, slots=True)
class Generalisation:
    """How one dimension is keyed: the SQL expression, its parameters, and its fixed keys."""

    sql: str
    params: tuple[Any, ...]
    keys: tuple[Any, ...] | None = None  # every possible key, when a code list fixes them


def bin_labels(edges: Sequence[float]) -> tuple[str, ...]:
    """Labels of the bins cut by ``edges``: '<e0', '[e0,e1)', ..., '>=em'."""
    labels = [f"<{_num(edges[0])}"]
    labels += [f"[{_num(lo)},{_num(hi)})" for lo, hi in itertools.pairwise(edges)]
    labels.append(f">={_num(edges[-1])}")
    return tuple(labels)


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def check_bins(edges: Sequence[Any], field: str) -> tuple[float, ...]:
    """Bin edges as floats; InvalidInput unless 1 to MAX_BINS finite, strictly rising numbers."""
    ok = (
        0 < len(edges) <= MAX_BINS
        and all(isinstance(e, int | float) and not isinstance(e, bool) for e in edges)
        and all(math.isfinite(e) for e in edges)
        and all(a < b for a, b in itertools.pairwise(edges))
    )
    if not ok:
        raise InvalidInput(
            f"bins takes 1 to {MAX_BINS} finite, strictly increasing edges.", fields=[field]
        )
    return tuple(float(e) for e in edges)


def generalisation(
    spec: FieldSpec, column: str, level: str | None, bins: Sequence[Any] | None
) -> Generalisation:
    """The key expression for grouping ``spec`` (quoted as ``column``) at ``level`` or ``bins``."""
    if bins is not None:
        if level is not None:
            raise InvalidInput("A dimension takes a level or bins, not both.", fields=[spec.name])
        if not spec.type.is_numeric:
            raise InvalidInput("bins need a numeric field.", fields=[spec.name])
        edges = check_bins(bins, spec.name)
        labels = bin_labels(edges)
        whens = " ".join(f"WHEN {column} < ? THEN ?" for _ in edges)
        params: list[Any] = []
        for edge, label in zip(edges, labels, strict=False):
            params += [edge, label]
        params.append(labels[-1])
        return Generalisation(
            f"CASE WHEN {column} IS NULL THEN NULL {whens} ELSE ? END", tuple(params), labels
        )
    if level is None:
        keys = (False, True) if spec.type is FieldType.BOOLEAN else spec.codes
        return Generalisation(column, (), keys)
    if spec.type is FieldType.DATE:
        if level not in DATE_LEVELS:
            raise InvalidInput(f"Date levels are {', '.join(DATE_LEVELS)}.", fields=[spec.name])
        if level == "day":
            return Generalisation(column, ())
        expr = {
            "month": f"strftime({column}, '%Y-%m')",
            "quarter": f"strftime({column}, '%Y') || '-Q' || CAST(quarter({column}) AS VARCHAR)",
            "year": f"strftime({column}, '%Y')",
        }[level]
        return Generalisation(expr, ())
    levels = HIERARCHIES.get(spec.hierarchy or "")
    if spec.type is not FieldType.STRING or levels is None or level not in levels:
        raise InvalidInput(
            "This field has no such level; strings generalise only along a declared hierarchy.",
            fields=[spec.name],
        )
    keys = _codes_at(spec.codes, level)
    if level == "class":
        return Generalisation(column, (), keys)
    digits = f"ltrim({column}, 'ABCDEFGHIJKLMNOPQRST')"
    if level == "section":
        division = f"TRY_CAST(left({digits}, 2) AS INTEGER)"
        whens = " ".join(
            f"WHEN {division} BETWEEN {first} AND {last} THEN '{letter}'"
            for letter, first, last in GBT4754_SECTIONS
        )
        return Generalisation(f"CASE {whens} END", (), keys)
    prefix = f"left({column}, length({column}) - length({digits}))"
    return Generalisation(f"{prefix} || left({digits}, {_DIGITS[level]})", (), keys)


def _codes_at(codes: tuple[str, ...] | None, level: str) -> tuple[Any, ...] | None:
    if codes is None:
        return None
    out = dict.fromkeys(generalise_gbt4754(c, level) for c in codes)
    return tuple(c for c in out if c is not None)
