"""The release audit: everything published from a dataset, as one system of exact linear forms.

A published number is a linear form over the data's *atoms*. For a sum (and so for a mean or a
ratio, which release what they are computed from) the atoms are the rows with a value, each an
unknown worth that row's figure; for a count of distinct enterprises they are the enterprises,
each worth one. A cell is the set of atoms it covers: two spellings of a filter that select the
same rows give the same form, padding with values that select nothing changes nothing, and a
year is the sum of its months. An atom belongs to one enterprise (``owner``).

An attacker holding every published number (all consumers together, all versions) knows every
vector of their span ``V``. An enterprise's figures are disclosed exactly when ``V`` holds a
nonzero vector supported on that enterprise's atoms alone (Chin and Ozsoyoglu's Audit Expert,
with one "individual" per enterprise and several unknowns each). This module keeps ``V``
exactly and refuses any new form that would make that happen; it also keeps a list of
*protected* forms (cells withheld as too small or dominated) that must never enter ``V``.

How, exactly and incrementally:

* Atoms covered by the same published forms can never be told apart; they are grouped into
  *classes* (the coarsest partition every published form is a union of), refined as new forms
  arrive. A class holding atoms of two enterprises belongs to nobody (mixed); a vector of ``V``
  is constant on every class, so only a class of one owner ("pure") can carry a disclosure.
* ``V`` is held as a reduced basis over the classes: each row has a pivot class where every
  other row is zero (a mixed class is preferred as pivot: it never carries a disclosure). All
  arithmetic is in integers (fraction-free: each row is divided by the gcd of its entries),
  never in floating point or modular arithmetic, so no rounding or unlucky prime can hide a
  disclosure.
* With ``R`` in that form, ``P_e`` the pivot columns owned by ``e`` and ``F`` the free columns,
  ``V`` holds a vector on ``e``'s classes alone iff the rows of ``P_e``, restricted to the free
  columns not owned by ``e``, are linearly dependent (the null space of the published system
  then cannot move ``e``'s values in every direction). A new form ``v`` discloses ``e`` iff it
  lies in the span plus ``e``'s classes; only the few enterprises that own ``v``'s least-held
  class, or a row holding it, can qualify, so each form is checked against a handful of small
  systems, not the whole span.
* A protected form is derivable iff it reduces to zero against ``R``; its residual is kept and
  reduced again only when a new pivot appears in it.

Every change is journalled: a form that would disclose is rolled back and leaves the system as
it was. Whether a form is accepted depends only on which atoms each form covers and on what was
published before, never on a value, so a refusal tells nothing but the refusal (simulatable
auditing, Kenthapadi, Mishra and Nissim 2005).
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np
from pyroaring import BitMap64

#: An atom id is ``owner << OWNER_SHIFT | local``: the owner can be read off the id.
OWNER_SHIFT = 24
#: The owner of a class that holds atoms of more than one enterprise.
MIXED = -1

Vector = dict[int, int]


@dataclass(frozen=True, slots=True)
class _RowWas:
    pivot: int
    old: Vector | None


@dataclass(frozen=True, slots=True)
class _ResidualWas:
    form: int
    old: Vector | None


@dataclass(frozen=True, slots=True)
class _Split:
    kept: int
    new: int
    owner_before: int


@dataclass(frozen=True, slots=True)
class _NewClass:
    cls: int


@dataclass(frozen=True, slots=True)
class _NewProtected:
    form: int


@dataclass(frozen=True, slots=True)
class _Seen:
    digest: bytes


_Change = _RowWas | _ResidualWas | _Split | _NewClass | _NewProtected | _Seen


def _digest(atoms: BitMap64) -> bytes:
    """A name for exactly this set of atoms (128 bits of BLAKE2b of its serialisation)."""
    return hashlib.blake2b(atoms.serialize(), digest_size=16).digest()


def owner_of(atom: int) -> int:
    """The enterprise an atom belongs to."""
    return atom >> OWNER_SHIFT


def _normalised(v: Vector, pivot: int) -> Vector:
    """``v`` divided by the gcd of its entries, its pivot entry positive."""
    g = 0
    for x in v.values():
        g = math.gcd(g, x)
    if v[pivot] < 0:
        g = -g
    return v if g == 1 else {c: x // g for c, x in v.items()}


def _combine(a: int, v: Vector, b: int, w: Vector) -> Vector:
    """``a*v - b*w`` without zero entries."""
    out = {c: a * x for c, x in v.items()}
    for c, x in w.items():
        y = out.get(c, 0) - b * x
        if y:
            out[c] = y
        else:
            out.pop(c, None)
    return out


def _proportional(w: Vector, v: Vector) -> bool:
    """Whether ``w`` is a nonzero multiple of ``v`` (same support, one ratio)."""
    if w.keys() != v.keys():
        return False
    c = next(iter(v))
    return all(w[c] * v[d] == v[c] * w[d] for d in v)


def _independent_rows(rows: list[Vector]) -> bool:
    """Whether sparse integer ``rows`` are linearly independent over the rationals."""
    core = _peeled(dict(enumerate(rows)))
    if not core:
        return True
    columns = sorted({c for row in core.values() for c in row})
    return _independent([[row.get(c, 0) for c in columns] for row in core.values()])


def _peeled(rows: dict[int, Vector]) -> dict[int, Vector]:
    """``rows`` less every row that has a column no other remaining row has, repeatedly.

    A row with such a private column is independent of the others (no combination of them can
    cancel that entry), so the rows are independent iff what remains (the core) is; most
    systems peel away whole and need no elimination at all.
    """
    if any(not row for row in rows.values()):
        return rows  # an all-zero row: dependent at once, let the rank say so
    left = dict(rows)
    counts = Counter(c for row in left.values() for c in row)
    while left:
        peel = [r for r, row in left.items() if any(counts[c] == 1 for c in row)]
        if not peel:
            break
        for r in peel:
            counts.subtract(left.pop(r).keys())
    return left


#: A prime below 2**31, so that products of two residues fit in a signed 64-bit integer.
_PRIME = 2_147_483_629


def _independent(rows: list[list[int]]) -> bool:
    """Whether integer ``rows`` are linearly independent over the rationals.

    First modulo a prime, vectorised: the rank of an integer matrix modulo any prime is at most
    its rank over the rationals (every minor that vanishes over the integers vanishes modulo
    p), so full rank modulo p proves independence. Only a deficient rank modulo p, which may
    be an accident of the prime, is decided again in exact rational arithmetic. An error of the
    modular test can therefore only send a case to the exact test, never declare independent
    rows that are not, and never release a form that discloses.
    """
    if not rows:
        return True
    if len(rows) > len(rows[0]):
        return False
    if _rank_mod_prime(rows) == len(rows):
        return True
    return _rank_exact(rows) == len(rows)


def _rank_mod_prime(rows: list[list[int]]) -> int:
    a = np.array([[x % _PRIME for x in r] for r in rows], dtype=np.int64)
    rank = 0
    for col in range(a.shape[1]):
        nonzero = np.nonzero(a[rank:, col])[0]
        if nonzero.size == 0:
            continue
        pivot = rank + int(nonzero[0])
        if pivot != rank:
            a[[rank, pivot]] = a[[pivot, rank]]
        inverse = pow(int(a[rank, col]), _PRIME - 2, _PRIME)
        a[rank] = a[rank] * inverse % _PRIME
        below = a[rank + 1:, col].copy()
        a[rank + 1:] = (a[rank + 1:] - below[:, None] * a[rank]) % _PRIME
        rank += 1
        if rank == a.shape[0]:
            break
    return rank


def _rank_exact(rows: list[list[int]]) -> int:
    work = [[Fraction(x) for x in r] for r in rows]
    rank, width = 0, len(work[0])
    for col in range(width):
        pivot = next((i for i in range(rank, len(work)) if work[i][col]), None)
        if pivot is None:
            continue
        work[rank], work[pivot] = work[pivot], work[rank]
        for i in range(rank + 1, len(work)):
            if work[i][col]:
                f = work[i][col] / work[rank][col]
                work[i] = [x - f * y for x, y in zip(work[i], work[rank], strict=True)]
        rank += 1
        if rank == len(work):
            break
    return rank


@dataclass(slots=True)
class LinkedSystem:
    """The span of everything published of one quantity, and the forms it must never contain."""

    #: atom -> class; class -> its atoms; class -> owner (MIXED for several).
    _class_of: dict[int, int] = field(default_factory=dict)
    _atoms: dict[int, set[int]] = field(default_factory=dict)
    _owner: dict[int, int] = field(default_factory=dict)
    _next_class: int = 0
    #: The reduced echelon basis: pivot class -> row; class -> pivots of rows holding it.
    _rows: dict[int, Vector] = field(default_factory=dict)
    _holding: dict[int, set[int]] = field(default_factory=dict)
    #: owner -> pivot classes it owns.
    _pivots_of: dict[int, set[int]] = field(default_factory=dict)
    #: protected forms: id -> residual against the basis; class -> ids whose residual holds it.
    _residual: dict[int, Vector] = field(default_factory=dict)
    _protected_at: dict[int, set[int]] = field(default_factory=dict)
    _next_protected: int = 0
    #: protected forms whose residual is zero: derivable (only ever non-empty mid-change)
    _derived: set[int] = field(default_factory=set)
    _journal: list[_Change] = field(default_factory=list)
    #: digests of the forms already published (and, prefixed b"p", protected): a repeat is
    #: in the span (or registered) already, nothing to check.
    _seen: set[bytes] = field(default_factory=set)
    #: forms published (independent or not), for figures and tests.
    published: int = 0

    # ------------------------------------------------------------------ public surface

    @property
    def rank(self) -> int:
        """The dimension of what is known."""
        return len(self._rows)

    @property
    def classes(self) -> int:
        """How many classes the published forms split the atoms into."""
        return len(self._atoms)

    def mark(self) -> int:
        """A point to roll back to."""
        return len(self._journal)

    def rollback(self, mark: int) -> None:
        """Undo every change since ``mark``."""
        while len(self._journal) > mark:
            self._undo(self._journal.pop())

    def commit(self) -> None:
        """Forget the journal: what was added stays."""
        self._journal.clear()

    def add(self, atoms: Iterable[int]) -> bool:
        """Publish the form summing ``atoms`` unless that (with everything published before)
        discloses an enterprise or a protected form; True if published, else nothing changed."""
        atoms = atoms if isinstance(atoms, BitMap64) else BitMap64(atoms)
        digest = _digest(atoms)
        if digest in self._seen:  # published before: in the span already
            self.published += 1
            return True
        mark = self.mark()
        residual = self._reduced(self._vector(atoms))
        if residual and self._would_disclose(residual):
            self.rollback(mark)
            return False
        if residual:
            self._insert(residual)
        self._seen.add(digest)
        self._journal.append(_Seen(digest))
        self.published += 1
        return True

    def known(self, atoms: BitMap64) -> bool:
        """Whether exactly this form was published before (in the span, nothing to record)."""
        return _digest(atoms) in self._seen

    def replay(self, atoms: Iterable[int], *, protected: bool = False) -> None:
        """Apply a form the ledger already holds, accepted when it was recorded: the same
        changes as then, without the checks."""
        atoms = atoms if isinstance(atoms, BitMap64) else BitMap64(atoms)
        self._seen.add((b"p" if protected else b"") + _digest(atoms))
        residual = self._reduced(self._vector(atoms))
        if residual and protected:
            pid = self._next_protected
            self._next_protected += 1
            self._set_residual(pid, residual)
        elif residual:
            self._insert(residual)
            self.published += 1
        self.commit()

    def derivable(self, atoms: Iterable[int]) -> bool:
        """Whether the form summing ``atoms`` is already known (in the span), changing nothing."""
        wanted = set(atoms)
        if not wanted:
            return True
        if any(a not in self._class_of for a in wanted):
            return False
        by_class: dict[int, int] = {}
        for a in wanted:
            c = self._class_of[a]
            by_class[c] = by_class.get(c, 0) + 1
        if any(n != len(self._atoms[c]) for c, n in by_class.items()):
            return False  # it splits a class: no published form can say that
        return not self._reduced(dict.fromkeys(by_class, 1))

    def protect(self, atoms: Iterable[int]) -> bool:
        """Keep the form summing ``atoms`` underivable from now on; False if it already is
        derivable (nothing is then registered).

        Refining the classes by a form that is not published changes no vector of the span,
        so it cannot disclose anything by itself.
        """
        atoms = atoms if isinstance(atoms, BitMap64) else BitMap64(atoms)
        digest = b"p" + _digest(atoms)
        if digest in self._seen:  # protected already
            return False
        mark = self.mark()
        residual = self._reduced(self._vector(atoms))
        if not residual:
            self.rollback(mark)
            return False
        self._seen.add(digest)
        self._journal.append(_Seen(digest))
        pid = self._next_protected
        self._next_protected += 1
        self._journal.append(_NewProtected(pid))
        self._set_residual(pid, residual)
        return True

    def discloses(self) -> bool:
        """Whether the span now holds a protected form or a vector on one enterprise's
        classes alone: the invariant every accepted change keeps (a full check, for tests)."""
        if self._derived:
            return True
        return any(self._isolates(owner) for owner in set(self._owner.values())
                   if owner != MIXED)

    # ------------------------------------------------------------------ classes

    def _vector(self, atoms: Iterable[int]) -> Vector:
        """The form over classes, refining the classes so that the form is a union of them."""
        fresh: list[int] = []
        inside: dict[int, set[int]] = {}
        for a in atoms:
            c = self._class_of.get(a)
            if c is None:
                fresh.append(a)
            else:
                inside.setdefault(c, set()).add(a)
        vector: Vector = {}
        for c, part in inside.items():
            if len(part) < len(self._atoms[c]):
                c = self._split(c, part)
            vector[c] = 1
        if fresh:
            vector[self._new_class(fresh)] = 1
        return vector

    def _new_class(self, atoms: list[int]) -> int:
        c = self._next_class
        self._next_class += 1
        owners = {owner_of(a) for a in atoms}
        owner = owners.pop() if len(owners) == 1 else MIXED
        self._atoms[c] = set(atoms)
        self._owner[c] = owner
        for a in atoms:
            self._class_of[a] = c
        self._journal.append(_NewClass(c))
        return c

    def _split(self, c: int, part: set[int]) -> int:
        """Split class ``c`` into ``part`` and the rest; returns the class of ``part``.

        The part that stays mixed keeps the old id, so a mixed pivot stays a pivot; rows and
        residuals get the new class with the old class's coefficient.
        """
        rest = self._atoms[c] - part
        owner_before = self._owner[c]
        owner_part, owner_rest = self._owner_of_atoms(part), self._owner_of_atoms(rest)
        # keep = the part that keeps id c
        keep_is_part = owner_part == MIXED and owner_rest != MIXED
        moved = rest if keep_is_part else part
        new = self._next_class
        self._next_class += 1
        self._atoms[c] -= moved
        self._atoms[new] = set(moved)
        for a in moved:
            self._class_of[a] = new
        self._owner[c] = owner_part if keep_is_part else owner_rest
        self._owner[new] = owner_rest if keep_is_part else owner_part
        self._journal.append(_Split(c, new, owner_before))
        for pivot in list(self._holding.get(c, ())):
            row = self._rows[pivot]
            self._set_row(pivot, {**row, new: row[c]})
        for pid in list(self._protected_at.get(c, ())):
            residual = self._residual[pid]
            self._set_residual(pid, {**residual, new: residual[c]})
        self._move_pivot(c, owner_before, self._owner[c])
        return c if keep_is_part else new

    def _move_pivot(self, c: int, before: int, after: int) -> None:
        """File pivot ``c`` under its owner after a split changed it."""
        if c in self._rows and before != after:
            self._pivots_of.get(before, set()).discard(c)
            self._pivots_of.setdefault(after, set()).add(c)

    @staticmethod
    def _owner_of_atoms(atoms: set[int]) -> int:
        owners = {owner_of(a) for a in atoms}
        return owners.pop() if len(owners) == 1 else MIXED

    # ------------------------------------------------------------------ the basis

    def _reduced(self, vector: Vector) -> Vector:
        """``vector`` with every pivot column eliminated (zero iff it is in the span)."""
        v = dict(vector)
        for c in [c for c in v if c in self._rows]:
            x = v.get(c)
            if x:
                row = self._rows[c]
                v = _combine(row[c], v, x, row)
        if not v:
            return v
        return _normalised(v, next(iter(v)))

    def _insert(self, v: Vector) -> None:
        """Add the reduced, nonzero ``v`` to the basis, keeping every pivot column zero in every
        other row. Its pivot is a mixed class if it has one, else the class fewest rows hold
        (the least fill-in)."""
        pivot = min(v, key=lambda c: (self._owner[c] != MIXED, len(self._holding.get(c, ())), c))
        v = _normalised(v, pivot)
        for other in list(self._holding.get(pivot, ())):
            row = self._rows[other]
            self._set_row(other, _normalised(_combine(v[pivot], row, row[pivot], v), other))
        self._set_row(pivot, v)
        for pid in list(self._protected_at.get(pivot, ())):
            residual = self._residual[pid]
            reduced = _combine(v[pivot], residual, residual[pivot], v)
            self._set_residual(pid, _normalised(reduced, next(iter(reduced))) if reduced
                               else reduced)

    def _set_row(self, pivot: int, row: Vector | None) -> None:
        old = self._rows.get(pivot)
        self._journal.append(_RowWas(pivot, old))
        self._place_row(pivot, old, row)

    def _place_row(self, pivot: int, old: Vector | None, row: Vector | None) -> None:
        before, after = (old or {}).keys(), (row or {}).keys()
        for c in before - after:  # set differences of key views run in C
            self._holding[c].discard(pivot)
        for c in after - before:
            self._holding.setdefault(c, set()).add(pivot)
        owner = self._owner[pivot]
        if row is None:
            self._rows.pop(pivot, None)
            self._pivots_of.get(owner, set()).discard(pivot)
        else:
            self._rows[pivot] = row
            if old is None:
                self._pivots_of.setdefault(owner, set()).add(pivot)

    def _set_residual(self, pid: int, residual: Vector | None) -> None:
        old = self._residual.get(pid)
        self._journal.append(_ResidualWas(pid, old))
        self._place_residual(pid, old, residual)

    def _place_residual(self, pid: int, old: Vector | None, residual: Vector | None) -> None:
        before, after = (old or {}).keys(), (residual or {}).keys()
        for c in before - after:
            self._protected_at[c].discard(pid)
        for c in after - before:
            self._protected_at.setdefault(c, set()).add(pid)
        if residual is None:
            self._residual.pop(pid, None)
        else:
            self._residual[pid] = residual
        if residual is None or residual:
            self._derived.discard(pid)
        else:
            self._derived.add(pid)

    # ------------------------------------------------------------------ the checks

    def _would_disclose(self, v: Vector) -> bool:
        """Whether adding the reduced, nonzero ``v`` to the span would make a protected form
        derivable or hold a vector on one enterprise's classes alone.

        With the span free of both before (the invariant), a protected form's residual ``w``
        becomes derivable iff it is a multiple of ``v``; and enterprise ``e`` is disclosed iff
        ``v`` lies in span + e's classes, i.e. iff ``v``, restricted to the free classes of
        everyone else, is a combination of ``e``'s pivot rows restricted the same way. Every
        such ``e`` owns ``v``'s least-held class or a pivot row holding it.
        """
        anchor = min(v, key=lambda c: (len(self._holding.get(c, ())), c))
        for pid in self._protected_at.get(anchor, ()):
            if _proportional(self._residual[pid], v):
                return True
        candidates = {self._owner[p] for p in self._holding.get(anchor, ())}
        candidates.add(self._owner[anchor])
        candidates.discard(MIXED)
        return any(self._explains(owner, v) for owner in candidates)

    def _explains(self, owner: int, v: Vector) -> bool:
        """Whether ``v`` is in the span plus ``owner``'s classes (see _would_disclose)."""
        target = {c: x for c, x in v.items() if self._owner[c] != owner}
        if not target:
            return True
        # Only ``owner``'s rows that share a class with the target, directly or through each
        # other, can combine into it: the rest, independent and on other classes, cannot
        # cancel among themselves.
        mine = self._pivots_of.get(owner, set())
        component: dict[int, Vector] = {}
        frontier, seen = list(target), set(target)
        while frontier:
            for p in self._holding.get(frontier.pop(), set()) & mine:
                if p in component or p not in self._rows or self._owner[p] != owner:
                    continue
                row = {c: x for c, x in self._rows[p].items()
                       if c not in self._rows and self._owner[c] != owner}
                component[p] = row
                fresh = row.keys() - seen
                seen |= fresh
                frontier.extend(fresh)
        held = {c for row in component.values() for c in row}
        if any(c not in held for c in target):
            return False
        return not _independent_rows([*component.values(), target])

    def _restricted_rows(self, owner: int) -> dict[int, Vector]:
        """``owner``'s pivot rows restricted to the free classes of everyone else."""
        pivots = [p for p in self._pivots_of.get(owner, ())
                  if p in self._rows and self._owner[p] == owner]
        return {p: {c: x for c, x in self._rows[p].items()
                    if c not in self._rows and self._owner[c] != owner}
                for p in pivots}

    def _isolates(self, owner: int) -> bool:
        """Whether the span holds a nonzero vector on ``owner``'s classes alone: whether the
        rows of ``owner``'s pivots, restricted to the free classes of everyone else, are
        linearly dependent."""
        rows = self._restricted_rows(owner)
        return bool(rows) and not _independent_rows(list(rows.values()))

    # ------------------------------------------------------------------ undo

    def _undo(self, change: _Change) -> None:
        if isinstance(change, _RowWas):
            self._place_row(change.pivot, self._rows.get(change.pivot), change.old)
        elif isinstance(change, _ResidualWas):
            self._place_residual(change.form, self._residual.get(change.form), change.old)
        elif isinstance(change, _Split):
            c, new = change.kept, change.new
            for a in self._atoms.pop(new):
                self._class_of[a] = c
                self._atoms[c].add(a)
            self._owner.pop(new)
            self._move_pivot(c, self._owner[c], change.owner_before)
            self._owner[c] = change.owner_before
            self._holding.pop(new, None)
            self._protected_at.pop(new, None)
            self._next_class -= 1
        elif isinstance(change, _NewClass):
            for a in self._atoms.pop(change.cls):
                del self._class_of[a]
            self._owner.pop(change.cls)
            self._holding.pop(change.cls, None)
            self._protected_at.pop(change.cls, None)
            self._next_class -= 1
        elif isinstance(change, _Seen):
            self._seen.discard(change.digest)
        else:
            self._next_protected -= 1
