"""The differencing guard: no two releases may differ by fewer than k enterprises.

Two cells whose populations differ by one enterprise give its value by subtraction, even when
each has hundreds of enterprises (Denning, Denning and Schwartz, "The tracker: a threat to
statistical database security", ACM TODS 1979; Google Ads Data Hub's "difference checks" exist
for this). Every published cell is entered in a ledger per dataset, across all consumers so
colluding departments are covered too: for each released measure (the enterprise count, or a
field's sum), the set of contributing enterprises as a roaring bitmap of their dense indices.
A new cell of the same measure whose set differs from a ledger entry by 1 to k-1 enterprises
(symmetric difference) is withheld with reason ``differencing``.

Withheld cells are entered too (under ``WITHHELD`` + key): a later cell with exactly the
same population and scope is withheld again, so a complement or a small cell cannot be asked
for on its own; and a cell whose population was published before is known to the attacker,
so it cannot serve as a complement.

Candidates are found by cardinality first: two sets can differ by fewer than k elements only
if their sizes do, so each measure's entries are kept sorted by size.
"""
from __future__ import annotations

import bisect
import heapq
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from pyroaring import BitMap

from broker.domain.ledger import LedgerEntry

#: Ledger key prefix of withheld cells.
WITHHELD = "withheld|"


class Ledger(Protocol):
    """What protection asks of the released populations: an exact set, a near one."""

    def contains(self, measure: str, members: BitMap) -> bool: ...
    def conflicts(self, measure: str, members: BitMap, k: int) -> bool: ...


@dataclass(frozen=True, slots=True)
class SourcesLedger:
    """The ledgers of a cross-source query's datasets seen as one, under the joined table's
    keys: a measure ``f:alias.field`` is that source's ``f:field``, the count is every
    source's count, and a cell's scope is a JSON object of each source's own scope (see
    ``joined_scopes``). A joined population is compared with every population each source
    released of the same measure and period, single-source or joined, by any consumer."""

    ledgers: Mapping[str, LedgerIndex]
    #: Each field of the joined table: (alias, the name its source's ledger knows it by).
    fields: Mapping[str, tuple[str, str]]

    def own(self, key: str) -> list[tuple[str, str]]:
        """(alias, key in that source's ledger) for a joined table's ledger key."""
        withheld = key.startswith(WITHHELD)
        measure, _, scope = key.removeprefix(WITHHELD).partition("@")
        scopes: dict[str, str] = json.loads(scope) if scope else {}
        if measure.startswith("f:"):
            alias, name = self.fields[measure[2:]]
            targets = [(alias, f"f:{name}")]
        else:
            targets = [(alias, measure) for alias in sorted(self.ledgers)]
        prefix = WITHHELD if withheld else ""
        return [(alias, prefix + (f"{m}@{scopes[alias]}" if scopes.get(alias) else m))
                for alias, m in targets]

    def contains(self, measure: str, members: BitMap) -> bool:
        """Whether some source released (or withheld) exactly this population."""
        return any(self.ledgers[a].contains(key, members) for a, key in self.own(measure))

    def conflicts(self, measure: str, members: BitMap, k: int) -> bool:
        """Whether some source released a population within 1..k-1 of this one."""
        return any(self.ledgers[a].conflicts(key, members, k) for a, key in self.own(measure))

    def entries(self, entries: Iterable[tuple[str, BitMap]]
                ) -> dict[str, list[tuple[str, BitMap]]]:
        """A joined release's ledger entries, per source under its own keys."""
        out: dict[str, list[tuple[str, BitMap]]] = {a: [] for a in self.ledgers}
        for key, members in entries:
            for alias, own in self.own(key):
                out[alias].append((own, members))
        return out


@dataclass(slots=True)
class LedgerIndex:
    """The released entity sets of one dataset, by measure and size, for quick comparison.

    Per measure, sizes and sets are kept sorted by size in a pair of tuples that is replaced,
    never changed in place, so a :meth:`snapshot` stays valid while the index grows.
    """

    last_id: int = 0
    _by_measure: dict[str, tuple[tuple[int, ...], tuple[BitMap, ...]]] = field(
        default_factory=dict)

    def add(self, entries: Iterable[LedgerEntry]) -> None:
        """Index ``entries``; ids only move ``last_id`` forward."""
        fresh: dict[str, list[tuple[int, BitMap]]] = {}
        for entry in entries:
            fresh.setdefault(entry.measure, []).append((len(entry.members), entry.members))
            self.last_id = max(self.last_id, entry.id)
        for measure, items in fresh.items():
            sizes, sets = self._by_measure.get(measure, ((), ()))
            items.sort(key=lambda item: item[0])
            merged = list(heapq.merge(zip(sizes, sets, strict=True), items,
                                      key=lambda item: item[0]))
            self._by_measure[measure] = (tuple(s for s, _ in merged),
                                         tuple(m for _, m in merged))

    def snapshot(self) -> LedgerIndex:
        """A copy that later additions to this index do not change."""
        return LedgerIndex(self.last_id, dict(self._by_measure))

    def __len__(self) -> int:
        return sum(len(sizes) for sizes, _ in self._by_measure.values())

    def contains(self, measure: str, members: BitMap) -> bool:
        """Whether exactly this set of ``measure`` is in the ledger."""
        if measure not in self._by_measure:
            return False
        sizes, sets = self._by_measure[measure]
        n = len(members)
        lo, hi = bisect.bisect_left(sizes, n), bisect.bisect_right(sizes, n)
        return any(sets[i] == members for i in range(lo, hi))

    def conflicts(self, measure: str, members: BitMap, k: int) -> bool:
        """Whether ``members`` differs from some released set of ``measure`` by 1..k-1."""
        if measure not in self._by_measure or k <= 1:
            return False
        sizes, sets = self._by_measure[measure]
        n = len(members)
        lo = bisect.bisect_left(sizes, n - k + 1)
        hi = bisect.bisect_right(sizes, n + k - 1)
        return any(0 < members.symmetric_difference_cardinality(sets[i]) < k
                   for i in range(lo, hi))
