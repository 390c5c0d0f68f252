"""What the query use case keeps of earlier releases: the ledger it protects against, and the
sealed answers it repeats.

An identical computation (same data version, query shape, thresholds and pseudonymized keys)
gets the identical earlier answer, never a fresh one that could differ; the answers are kept
sealed in the database, bound to their row. The ledger of every dataset's released
populations is read incrementally into this process's memory.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import rfc8785

from broker.disclosure.cells import ENTITIES
from broker.disclosure.differencing import LedgerIndex
from broker.disclosure.linked import LinkedSystem
from broker.disclosure.linking import History
from broker.domain.datasets import Dataset
from broker.domain.disclosure import Rules
from broker.domain.ledger import Form, FormEntry
from broker.domain.ports import Sealer, UnitOfWork
from broker.domain.queries import AggregateSpec, Cell


def result_digest(nonce: str, cells: tuple[Cell, ...], remainder: Cell | None = None) -> str:
    """Salted digest of the released cells: the consumer, who holds the nonce, can prove what
    it received; the audit log alone cannot be used to guess small released values."""
    released: list[Any] = [c.as_json() for c in cells]
    if remainder is not None:
        released.append({"remainder": remainder.as_json()})
    payload = rfc8785.dumps(released)
    return hashlib.sha256(bytes.fromhex(nonce) + payload).hexdigest()


def computation_fingerprint(dataset: Dataset, spec: AggregateSpec, rules: Rules,
                            opaque: frozenset[str]) -> str:
    """What identifies a computation: data version, query shape, thresholds and which keys
    are hidden behind pseudonyms, not who asks."""
    body: dict[str, Any] = {
        "dataset": [dataset.id, dataset.version],
        "query": {k: v for k, v in spec.canonical().items() if k not in ("contract_id",
                                                                          "purpose")},
        "rules": asdict(rules),
        "opaque": sorted(opaque),
    }
    return hashlib.sha256(rfc8785.dumps(body)).hexdigest()


@dataclass(frozen=True, slots=True)
class Answer:
    """Released cells (keys in clear, inside the broker) and the remainder row, if asked."""

    cells: tuple[Cell, ...]
    remainder: Cell | None


@dataclass(frozen=True, slots=True)
class ReleaseCache:
    """Earlier answers by computation fingerprint, sealed at rest (their keys are dataset
    values) and bound to their row, so a body cannot be moved to another computation."""

    sealer: Sealer

    def find(self, uow: UnitOfWork, dataset_id: str, fingerprint: str) -> Answer | None:
        """The earlier answer to this computation, or None; ``DatasetUnreadable`` if the
        stored body does not open (it was tampered with: fail closed, never a miss)."""
        sealed = uow.releases.cached(dataset_id, fingerprint)
        if sealed is None:
            return None
        data = json.loads(self.sealer.open(sealed, context=_context(dataset_id, fingerprint)))
        remainder = Cell.from_json(data["remainder"]) if data["remainder"] else None
        return Answer(tuple(Cell.from_json(c) for c in data["cells"]), remainder)

    def keep(self, uow: UnitOfWork, dataset_id: str, fingerprint: str, answer: Answer,
             audit_seq: int) -> None:
        """Store ``answer`` for this computation, tied to the audit entry that released it."""
        body = json.dumps({"cells": [c.as_json() for c in answer.cells],
                           "remainder": answer.remainder.as_json() if answer.remainder
                           else None})
        sealed = self.sealer.seal(body, context=_context(dataset_id, fingerprint))
        uow.releases.cache(dataset_id, fingerprint, sealed, audit_seq)


def _context(dataset_id: str, fingerprint: str) -> str:
    """What a cached answer is bound to: its row, so it cannot be moved to another."""
    return f"release-cache/{dataset_id}/{fingerprint}"


class LedgerCache:
    """This process's copy of each dataset's differencing ledger, brought up to date by id.

    Ledger rows are only written under the audit head lock, so they commit in id order and
    reading "everything after the last id seen" never skips one.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._indexes: dict[str, LedgerIndex] = {}

    def refresh(self, uow: UnitOfWork, dataset_id: str) -> LedgerIndex:
        """The dataset's ledger including every entry committed so far."""
        with self._lock:
            index = self._indexes.setdefault(dataset_id, LedgerIndex())
            index.add(uow.releases.since(dataset_id, index.last_id))
            return index.snapshot()


#: Where the release ledger keeps the forms every dataset shares: counts of enterprises.
COUNTY = "#county"


class LinkCache:
    """This process's copy of each dataset's release-audit history (the exact system of
    every quantity and the interval system of every sum), brought up to date from the
    release ledger by id.

    Counts of enterprises are one system for the whole county: an enterprise has one index
    in every dataset (the county entity register) and its presence is the same unknown in
    each, so a count of one provider's firms, a count of another's and a count of firms in
    both are audited together (their forms are kept under ``COUNTY``). Sums stay per dataset:
    their unknowns are that dataset's rows.

    Forms are only recorded under the audit head lock, so they commit in id order; the
    systems are changed only under that lock too (``audit``), and any change that does not
    commit is rolled back, so memory never runs ahead of the database.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = LinkedSystem()
        self._histories: dict[str, History] = {COUNTY: self._new_history()}
        self._last: dict[str, int] = {}

    def _new_history(self) -> History:
        return History(exact={ENTITIES: self._counts})

    @contextmanager
    def audit(self, dataset_id: str) -> Iterator[LinkAudit]:
        """The dataset's history for one release, held until its transaction ends: what the
        release changed stays if it committed (``committed``), and is undone otherwise."""
        with self.audit_many([dataset_id]) as handles:
            yield handles[dataset_id]

    @contextmanager
    def audit_many(self, dataset_ids: Iterable[str]) -> Iterator[dict[str, LinkAudit]]:
        """Several datasets' histories for one release (a cross-source query), held together
        until its transaction ends, each kept or undone as ``audit`` does."""
        with self._lock:
            handles = {d: LinkAudit(self, d) for d in sorted(set(dataset_ids))}
            try:
                yield handles
            finally:
                for handle in handles.values():
                    handle.close()

    def _refresh(self, uow: UnitOfWork, dataset_id: str, sealer: Sealer) -> History:
        self._replay(uow, COUNTY, sealer)
        return self._replay(uow, dataset_id, sealer)

    def _replay(self, uow: UnitOfWork, dataset_id: str, sealer: Sealer) -> History:
        history = self._histories.get(dataset_id)
        if history is None:
            history = self._histories[dataset_id] = self._new_history()
        last = self._last.get(dataset_id, 0)
        for entry in uow.releases.forms_since(dataset_id, last):
            history.replay(opened_form(sealer, dataset_id, entry))
            last = entry.id
        self._last[dataset_id] = last
        return history


def _form_context(dataset_id: str, form: Form) -> str:
    """What a form's sealed numbers are bound to: its dataset, quantity, kind and atoms."""
    atoms = hashlib.sha256(form.atoms.serialize()).hexdigest()
    return f"release-form/{dataset_id}/{form.kind}/{atoms}/{form.quantity}"


def sealed_form(sealer: Sealer, dataset_id: str, form: Form) -> tuple[Form, str | None]:
    """The form as the ledger stores it: its numbers sealed, none left in clear."""
    if form.bounds is None:
        return form, None
    numbers = json.dumps({"low": form.bounds[0], "high": form.bounds[1],
                          "signed": form.signed}, allow_nan=False)
    bare = Form(form.quantity, form.kind, form.atoms)
    return bare, sealer.seal(numbers, context=_form_context(dataset_id, bare))


def opened_form(sealer: Sealer, dataset_id: str, entry: FormEntry) -> Form:
    """The form of a ledger entry with its numbers opened (``DatasetUnreadable`` if they were
    tampered with or moved: fail closed)."""
    form = entry.form
    if entry.numbers is None:
        return form
    data = json.loads(sealer.open(entry.numbers, context=_form_context(dataset_id, form)))
    return Form(form.quantity, form.kind, form.atoms,
                (float(data["low"]), float(data["high"])), bool(data["signed"]))


class LinkAudit:
    """One release's use of a dataset's release-audit history (see LinkCache.audit)."""

    def __init__(self, cache: LinkCache, dataset_id: str) -> None:
        self._cache = cache
        self._dataset_id = dataset_id
        self._history: History | None = None
        self._marks: dict[str, int] = {}
        self._recorded: int | None = None
        self._counts_recorded: int | None = None
        self._done = False

    def load(self, uow: UnitOfWork, quantities: Iterable[str], sealer: Sealer) -> History:
        """The history brought up to date, with systems for each of ``quantities``."""
        history = self._cache._refresh(uow, self._dataset_id, sealer)
        history.ensure(list(quantities))
        self._history, self._marks = history, history.mark()
        return history

    def record(self, uow: UnitOfWork, forms: Iterable[Form], audit_seq: int,
               sealer: Sealer) -> None:
        """Write this release's forms to the ledger (numbers sealed): counts of enterprises
        to the county's, the rest to the dataset's."""
        forms = list(forms)
        own = [f for f in forms if f.quantity != ENTITIES]
        counts = [f for f in forms if f.quantity == ENTITIES]
        self._recorded = uow.releases.add_forms(
            self._dataset_id, [sealed_form(sealer, self._dataset_id, f) for f in own],
            audit_seq)
        if counts:
            self._counts_recorded = uow.releases.add_forms(
                COUNTY, [sealed_form(sealer, COUNTY, f) for f in counts], audit_seq)

    def committed(self) -> None:
        """The release committed: its changes stay."""
        self._done = True
        if self._history is not None:
            self._history.commit()
        if self._recorded is not None:
            self._cache._last[self._dataset_id] = self._recorded
        if self._counts_recorded is not None:
            self._cache._last[COUNTY] = self._counts_recorded

    def close(self) -> None:
        """Undo what an uncommitted release changed."""
        if not self._done and self._history is not None:
            self._history.rollback(self._marks)
