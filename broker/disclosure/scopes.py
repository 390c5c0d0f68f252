"""The period a cell covers, which the differencing guard compares populations within.

The same enterprises in 2025 and in 2026 differ in every row, so subtracting one cell from the
other isolates nobody; but the same period with one enterprise fewer (a filter on town or
sector, or a date range that excludes nothing) is a tracker. A cell's scope is, per date field
of the dataset, the dates its rows may have: the query's date filters and the cell's key on a
date dimension (a month, quarter or year) intersected, then narrowed to the first and last
date that occur in the data. Two ranges that select the same rows thus give the same scope,
and two cells are compared only when their scopes are equal, which they are whenever their
rows differ by whole enterprises alone.
"""

from __future__ import annotations

import bisect
import calendar
import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from broker.domain.queries import Dimension, Filter, FilterOp

Span = tuple[dt.date, dt.date]


def key_span(level: str | None, key: object) -> Span | None:
    """The dates a date-dimension key stands for, or None if it is not a date key."""
    if not isinstance(key, str):
        return None
    try:
        if level in (None, "day"):
            day = dt.date.fromisoformat(key[:10])
            return day, day
        year = int(key[:4])
        if level == "year":
            return dt.date(year, 1, 1), dt.date(year, 12, 31)
        if level == "quarter":
            q = int(key[-1])
            first, last = 3 * q - 2, 3 * q
        else:  # month
            first = last = int(key[5:7])
        end = calendar.monthrange(year, last)[1]
        return dt.date(year, first, 1), dt.date(year, last, end)
    except (ValueError, IndexError):
        return None


@dataclass(frozen=True, slots=True)
class Scopes:
    """How to compute the scope of any cell of one query."""

    dates: Mapping[str, Sequence[dt.date]]          # each date field's dates in the data, sorted
    filtered: Mapping[str, Span]                    # after the query's range and eq filters
    listed: Mapping[str, tuple[dt.date, ...]]       # dates an 'in' filter allows
    dimensions: Mapping[int, tuple[str, str | None]]  # position -> (date field, level)

    @classmethod
    def of(cls, dates: Mapping[str, Sequence[dt.date]], dims: Sequence[Dimension],
           filters: Sequence[Filter]) -> Scopes:
        """Scopes for a query over data whose date fields take the (sorted) ``dates``."""
        spans = {name: (days[0], days[-1]) for name, days in dates.items() if days}
        filtered = dict(spans)
        listed: dict[str, tuple[dt.date, ...]] = {}
        for flt in filters:
            if flt.field not in spans:
                continue
            lo, hi = filtered[flt.field]
            if flt.op is FilterOp.RANGE:
                low, high = flt.value
                lo = max(lo, dt.date.fromisoformat(low)) if low is not None else lo
                hi = min(hi, dt.date.fromisoformat(high)) if high is not None else hi
            elif flt.op is FilterOp.EQ:
                day = dt.date.fromisoformat(flt.value)
                lo, hi = max(lo, day), min(hi, day)
            else:
                days = {dt.date.fromisoformat(v) for v in flt.value}
                listed[flt.field] = tuple(sorted(days & set(listed.get(flt.field, days))))
            filtered[flt.field] = (lo, hi)
        dimensions = {k: (d.field, d.level) for k, d in enumerate(dims) if d.field in spans}
        return cls(dates, filtered, listed, dimensions)

    def of_cell(self, key: Sequence[object | None]) -> str:
        """The scope of the cell whose keys are ``key`` (None where summed over)."""
        parts = []
        for name in sorted(self.filtered):
            lo, hi = self.filtered[name]
            for k, (fname, level) in self.dimensions.items():
                span = key_span(level, key[k]) if fname == name else None
                if span is not None:
                    lo, hi = max(lo, span[0]), min(hi, span[1])
            present = self.dates[name]
            first = bisect.bisect_left(present, lo)
            last = bisect.bisect_right(present, hi) - 1
            if first > last:
                parts.append(f"{name}:none")
                continue
            lo, hi = present[first], present[last]
            days = [d for d in self.listed.get(name, ()) if lo <= d <= hi]
            listed = "|" + ",".join(d.isoformat() for d in days) if name in self.listed else ""
            parts.append(f"{name}:{lo.isoformat()}/{hi.isoformat()}{listed}")
        return ";".join(parts)
