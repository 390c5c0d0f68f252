"""How coarse a use of a field is, in the words the policies use.

A date grouped by month, a GB/T 4754 code by division, a number in declared bins, a date range
aligned on quarters: each names a level of a hierarchy. The policies decide on these names
(``broker.policy.inputs``); the planner computes the keys they stand for
(``broker.disclosure.levels``).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from broker.domain.datasets import FieldSpec, FieldType
from broker.domain.queries import Dimension

#: Levels of each hierarchy, finest first; the first is the stored value itself.
DATE_LEVELS = ("day", "month", "quarter", "year")
GBT4754_LEVELS = ("class", "group", "division", "section")

#: Hierarchies a string field may declare.
HIERARCHIES = {"gbt4754": GBT4754_LEVELS}

#: Levels that are the stored value itself, or may be as fine: grouping there is in clear.
#: "free-bins" are bins off the provider's declared grid: narrow enough, they single out
#: exact values ([7, 8) on an integer), so they generalise nothing.
RAW_LEVELS = frozenset({"raw", "day", "class", "free-bins"})
_NAMED_LEVELS = frozenset(DATE_LEVELS) | {lv for levels in HIERARCHIES.values() for lv in levels}


def dimension_level(dim: Dimension, spec: FieldSpec | None) -> str:
    """How coarse a dimension's keys are, as the policies name it: ``bins`` (edges all on the
    field's declared grid), ``free-bins`` (any other edges), a level of the field's hierarchy,
    or ``raw``. An unknown level name counts as raw (the planner refuses it once the policy
    has spoken)."""
    if dim.bins is not None:
        declared = spec.bins if spec is not None else None
        if declared is not None and set(dim.bins) <= set(declared):
            return "bins"
        return "free-bins"
    if dim.level in _NAMED_LEVELS:
        return dim.level
    return "raw"


def _period_start(day: dt.date) -> str:
    """The coarsest date level whose periods start on ``day``."""
    if day.day != 1:
        return "day"
    if day.month == 1:
        return "year"
    return "quarter" if day.month in (4, 7, 10) else "month"


def _period_end(day: dt.date) -> str:
    """The coarsest date level whose periods end on ``day``."""
    if (day + dt.timedelta(days=1)).day != 1:
        return "day"
    if day.month == 12:
        return "year"
    return "quarter" if day.month in (3, 6, 9) else "month"


def filter_level(op: str, value: Any, ftype: FieldType) -> str:
    """The coarsest level a filter is aligned with: what it lets a consumer tell apart.

    A date ``range`` whose ends fall on period boundaries (the first day of a month, quarter or
    year; the last day of one) reveals nothing finer than that period; anything else, and every
    filter on a non-date field, is ``raw``. Malformed values are ``raw`` too: the planner
    rejects them once the policy has spoken.
    """
    if ftype is not FieldType.DATE or op != "range":
        return "raw"
    if not isinstance(value, list) or len(value) != 2 or value == [None, None]:
        return "raw"
    found: list[str] = []
    for bound, align in zip(value, (_period_start, _period_end), strict=True):
        if bound is None:
            continue
        try:
            found.append(align(dt.date.fromisoformat(bound)))
        except (TypeError, ValueError):
            return "raw"
    return min(found, key=DATE_LEVELS.index)
