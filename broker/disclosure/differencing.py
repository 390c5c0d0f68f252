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
from collections.abc import Iterable
from dataclasses import dataclass, field

from pyroaring import BitMap

from broker.domain.ledger import LedgerEntry

#: Ledger key prefix of withheld cells.
WITHHELD = "withheld|"


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
