"""In-memory fakes of the ports whose real adapters need the SQL database (Cosmic Python).

A :class:`FakeUnitOfWorkFactory` holds what a database would hold; each unit of work it opens
works on a private copy of that, so ``commit`` really publishes the unit's changes and
``rollback`` (or leaving the block without committing) really drops them. Writers are one at a
time, as on SQLite: a write unit opened while another is open raises :class:`WriterBusy`
(SQLite would make it wait for the open one, which is waiting for it). The audit log
builds real entries with the ``audit`` package (canonical bytes, leaf hashes, the hash chain
and the Merkle tree), so receipts, ``count_released``, proofs and verification behave as on
the real store.

Everything else the use cases need runs for real in tests: the embedded Rego engine on
``policies/``, DuckDB, the encrypted Parquet storage, the sealer, the pseudonymizer and the
organisation keyring (on a temporary directory).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Generic, Protocol, Self, TypeVar

from pyroaring import BitMap, BitMap64

from audit import merkle
from audit.entry import GENESIS_HASH, AuditEvent, build_entry, encode, format_ts, leaf_hash
from audit.verify import Chunk, Head
from broker.domain.datasets import Dataset, DatasetVersion
from broker.domain.errors import Conflict, NotFound, Unavailable
from broker.domain.indicators import Indicator
from broker.domain.ledger import Form, FormEntry, LedgerEntry
from broker.domain.organisations import Organisation
from broker.domain.ports import AuditQuery, Clock, PolicyEngine, StoredCheckpoint
from broker.domain.queries import Receipt
from broker.domain.slices import Slice
from contracts.model import Contract, Dominance, FieldForm, Terms


class ManualClock:
    """A Clock that stands still until the test moves it."""

    def __init__(self, now: datetime) -> None:
        if now.tzinfo is None:
            raise ValueError("the clock tells aware (UTC) time")
        self.now = now

    def __call__(self) -> datetime:
        """The time the test last set."""
        return self.now

    def advance(self, by: timedelta) -> None:
        """Move the clock forward by ``by``."""
        self.now += by


class WriterBusy(RuntimeError):
    """A write unit of work opened inside another's block: on SQLite it would wait for the
    writer lock the open unit holds until it timed out."""


class ReadOnlyWrite(RuntimeError):
    """A write in a read-only unit of work (PostgreSQL refuses it in a READ ONLY transaction)."""


class UniqueViolation(RuntimeError):
    """A row whose key is already stored (the database's unique constraint)."""


@dataclass(frozen=True, slots=True)
class StoredEntry:
    """One audit entry as stored: its seq, canonical bytes, leaf hash and the previous leaf
    hash (the columns of the SQL table)."""

    seq: int
    body: bytes
    leaf_hash: str
    prev_hash: str

    @property
    def entry(self) -> dict[str, Any]:
        """The entry object, parsed from its bytes."""
        parsed: dict[str, Any] = json.loads(self.body)
        return parsed


@dataclass(frozen=True, slots=True)
class StoredDataset:
    """A catalogue row (the dataset as first registered) and its versions with locations."""

    dataset: Dataset
    versions: tuple[tuple[DatasetVersion, str], ...]


@dataclass
class StoreState:
    """Everything a database would hold. Stored values are frozen dataclasses, replaced and
    never changed in place, so a copy of each container is a snapshot that later writes to
    the original do not reach."""

    orgs: dict[str, Organisation] = field(default_factory=dict)
    datasets: dict[str, StoredDataset] = field(default_factory=dict)
    slices: dict[str, Slice] = field(default_factory=dict)
    indicators: dict[str, Indicator] = field(default_factory=dict)
    contracts: dict[str, Contract] = field(default_factory=dict)
    entries: list[StoredEntry] = field(default_factory=list)
    nodes: dict[merkle.Node, bytes] = field(default_factory=dict)
    #: The head row: the tree (its size is the log's) and the last leaf hash.
    tree: merkle.Frontier = field(default_factory=merkle.Frontier)
    head_hash: str = GENESIS_HASH
    checkpoints: dict[int, StoredCheckpoint] = field(default_factory=dict)
    #: (dataset id, ledger entry, seq of the audit entry of its release)
    released: list[tuple[str, LedgerEntry, int]] = field(default_factory=list)
    #: (dataset id, computation fingerprint) -> (sealed answer, seq of its audit entry)
    answers: dict[tuple[str, str], tuple[str, int]] = field(default_factory=dict)
    #: (dataset id, release-audit form, seq of the audit entry of its release)
    forms: list[tuple[str, FormEntry, int]] = field(default_factory=list)

    def copy(self) -> StoreState:
        """A snapshot of this state."""
        return StoreState(
            orgs=dict(self.orgs), datasets=dict(self.datasets), slices=dict(self.slices),
            indicators=dict(self.indicators),
            contracts=dict(self.contracts), entries=list(self.entries), nodes=dict(self.nodes),
            tree=self.tree.copy(), head_hash=self.head_hash, checkpoints=dict(self.checkpoints),
            released=list(self.released), answers=dict(self.answers), forms=list(self.forms),
        )


class Working:
    """The state one unit of work reads and writes; the repositories reach it through here,
    so that a rollback swaps it for a fresh snapshot under all of them at once."""

    def __init__(self, state: StoreState, *, read_only: bool) -> None:
        self.state = state
        self.read_only = read_only

    def writable(self) -> StoreState:
        """The state, for a write; ReadOnlyWrite in a read-only unit."""
        if self.read_only:
            raise ReadOnlyWrite("a read-only unit of work cannot write")
        return self.state


class _Identified(Protocol):
    @property
    def id(self) -> str: ...


ItemT = TypeVar("ItemT", bound=_Identified)


class _FakeTable(Generic[ItemT]):
    """A repository over one dict of the state, keyed by the items' ids: a subclass names the
    dict (``table``, a StoreState field) and what an item is called (``noun``)."""

    table: str
    noun: str

    def __init_subclass__(cls, *, table: str, noun: str) -> None:
        super().__init_subclass__()
        cls.table, cls.noun = table, noun

    def __init__(self, working: Working) -> None:
        self.working = working

    def _rows(self, *, write: bool = False) -> dict[str, ItemT]:
        state = self.working.writable() if write else self.working.state
        rows: dict[str, ItemT] = getattr(state, self.table)
        return rows

    def add(self, item: ItemT) -> None:
        """Insert a new item; UniqueViolation if its id is taken."""
        rows = self._rows(write=True)
        if item.id in rows:
            raise UniqueViolation(f"{self.noun} {item.id}")
        rows[item.id] = item

    def get(self, item_id: str) -> ItemT | None:
        """The item with this id, if any."""
        return self._rows().get(item_id)


class FakeOrgRepository(_FakeTable[Organisation], table="orgs", noun="organisation"):
    """Organisations in memory."""

    def all(self) -> list[Organisation]:
        """All organisations by id."""
        return sorted(self._rows().values(), key=lambda o: o.id)


class FakeDatasetRepository:
    """Datasets and their versions in memory; like the SQL rows, the catalogue entry keeps
    the name, schema and creation time of the first version."""

    def __init__(self, working: Working) -> None:
        self.working = working

    def add(self, dataset: Dataset, *, path: str) -> None:
        """Insert a dataset with its first version."""
        datasets = self.working.writable().datasets
        if dataset.id in datasets or self.find(dataset.owner_org, dataset.name) is not None:
            raise UniqueViolation(f"dataset {dataset.id} ({dataset.owner_org}/{dataset.name})")
        datasets[dataset.id] = StoredDataset(dataset, ((_version_of(dataset), path),))

    def add_version(self, dataset: Dataset, *, path: str) -> None:
        """Store ``dataset.version`` as the next version, if no other writer took it first."""
        datasets = self.working.writable().datasets
        stored = datasets.get(dataset.id)
        if stored is None or len(stored.versions) != dataset.version - 1:
            raise Conflict("Another version of this dataset was registered meanwhile; "
                           "send yours again.")
        datasets[dataset.id] = replace(
            stored, versions=(*stored.versions, (_version_of(dataset), path)))

    def get(self, dataset_id: str, version: int | None = None) -> Dataset | None:
        """The dataset at ``version`` (default: its latest), if both exist."""
        stored = self.working.state.datasets.get(dataset_id)
        if stored is None or (version is not None and not 1 <= version <= len(stored.versions)):
            return None
        return _at(stored, version or len(stored.versions))

    def find(self, owner_org: str, name: str) -> Dataset | None:
        """The owner's dataset with this name, if any."""
        for stored in self.working.state.datasets.values():
            if stored.dataset.owner_org == owner_org and stored.dataset.name == name:
                return _at(stored, len(stored.versions))
        return None

    def all(self) -> list[Dataset]:
        """Every dataset at its latest version, oldest first."""
        found = [_at(s, len(s.versions)) for s in self.working.state.datasets.values()]
        return sorted(found, key=lambda d: (d.created_at, d.id))

    def versions(self, dataset_id: str) -> list[DatasetVersion]:
        """Every version of a dataset, oldest first."""
        stored = self.working.state.datasets.get(dataset_id)
        return [v for v, _ in stored.versions] if stored else []

    def version_path(self, dataset_id: str, version: int) -> str:
        """Storage location of one version."""
        stored = self.working.state.datasets.get(dataset_id)
        if stored is None or not 1 <= version <= len(stored.versions):
            raise NotFound("No such dataset version.")
        return stored.versions[version - 1][1]


def _version_of(dataset: Dataset) -> DatasetVersion:
    return DatasetVersion(dataset.version, dataset.rows, dataset.sha256, dataset.created_at)


def _at(stored: StoredDataset, version: int) -> Dataset:
    found, _ = stored.versions[version - 1]
    return replace(stored.dataset, version=found.version, rows=found.rows, sha256=found.sha256)


class FakeSliceRepository:
    """Consented slices in memory."""

    def __init__(self, working: Working) -> None:
        self.working = working

    def add(self, item: Slice) -> None:
        """Insert a new slice; its name must be free within the dataset."""
        slices = self.working.writable().slices
        if any(s.dataset_id == item.dataset_id and s.name == item.name
               for s in slices.values()):
            raise Conflict("This dataset already has a slice with this name.")
        slices[item.id] = item

    def get(self, slice_id: str) -> Slice | None:
        """The slice with this id, if any."""
        return self.working.state.slices.get(slice_id)

    def of_dataset(self, dataset_id: str) -> list[Slice]:
        """The slices of one dataset, oldest first."""
        found = [s for s in self.working.state.slices.values() if s.dataset_id == dataset_id]
        return sorted(found, key=lambda s: (s.created_at, s.id))


class FakeIndicatorRepository:
    """The indicator catalogue in memory."""

    def __init__(self, working: Working) -> None:
        self.working = working

    def add(self, indicator: Indicator) -> None:
        """Insert a new indicator; its id must be free."""
        indicators = self.working.writable().indicators
        if indicator.id in indicators:
            raise Conflict("An indicator with this id already exists.")
        indicators[indicator.id] = indicator

    def get(self, indicator_id: str) -> Indicator | None:
        """The indicator with this id, if any."""
        return self.working.state.indicators.get(indicator_id)

    def all(self) -> list[Indicator]:
        """The catalogue by id."""
        return [self.working.state.indicators[i] for i in sorted(self.working.state.indicators)]


class FakeContractRepository(_FakeTable[Contract], table="contracts", noun="contract"):
    """Usage contracts in memory."""

    def save(self, contract: Contract) -> None:
        """Store a contract's new state."""
        self._rows(write=True)[contract.id] = contract

    def all(self) -> list[Contract]:
        """Every contract, oldest first."""
        return sorted(self._rows().values(), key=lambda c: (c.created_at, c.id))


class FakeAuditLog:
    """The ledger in memory, appended to with the real entry encoding, hashes and tree.

    One unit of work writes at a time here, so ``lock`` has nobody to wait for.
    """

    def __init__(self, working: Working, clock: Clock) -> None:
        self.working = working
        self.clock = clock

    def lock(self) -> None:
        """Take the head lock (a no-op: writers are already one at a time)."""

    def append(self, event: AuditEvent) -> Receipt:
        """Write the next entry after the head, chained to it, and the tree nodes it completes;
        move the head."""
        state = self.working.writable()
        seq, prev = state.tree.size + 1, state.head_hash
        body = encode(build_entry(event, seq=seq, ts=self.clock(), prev_hash=prev))
        digest = leaf_hash(body)
        for level, idx, node in state.tree.add(bytes.fromhex(digest)):
            state.nodes[(level, idx)] = node
        state.entries.append(StoredEntry(seq, body, digest, prev))
        state.head_hash = digest
        return Receipt(seq=seq, leaf_hash=digest)

    def count_released(self, contract_id: str, actions: tuple[str, ...], since: str) -> int:
        """How many allowed entries of ``actions`` a contract has had since ``since`` (ISO
        ts), as its source or as one of a cross-source query's."""
        return sum(
            1 for e in (s.entry for s in self.working.state.entries)
            if contract_id in [e["resource"]["contract_id"],
                               *(src["contract_id"] for src in e["resource"].get("sources", ()))]
            and e["action"] in actions
            and e["decision"]["allowed"] is True and e["ts"] >= since
        )

    def entries(self, query: AuditQuery) -> list[dict[str, Any]]:
        """Entries matching ``query`` in seq order, each with its leaf hash."""
        found: list[dict[str, Any]] = [{"entry": s.entry, "leaf_hash": s.leaf_hash}
                                       for s in self.working.state.entries
                                       if s.seq > query.after_seq]
        return [item for item in found if _matches(item["entry"], query)][: query.limit]

    def entry(self, seq: int) -> tuple[dict[str, Any], str] | None:
        """One entry and its leaf hash."""
        for stored in self.working.state.entries:
            if stored.seq == seq:
                return stored.entry, stored.leaf_hash
        return None

    def chunks(self, size: int = 65536, *, through: int | None = None) -> Iterator[Chunk]:
        """Every stored entry (up to seq ``through``) in seq order, in chunks."""
        entries = [s for s in self.working.state.entries if through is None or s.seq <= through]
        for start in range(0, len(entries), size):
            part = entries[start:start + size]
            yield Chunk([s.body for s in part], [s.seq for s in part],
                        [s.leaf_hash for s in part], [s.prev_hash for s in part])

    def all_nodes(self, size: int = 65536) -> Iterator[tuple[int, int, str]]:  # noqa: ARG002
        """Every stored perfect node above the leaves, by level and index."""
        for (level, idx), node in sorted(self.working.state.nodes.items()):
            yield level, idx, node.hex()

    def head(self) -> Head:
        """What the head row would claim."""
        state = self.working.state
        return Head(state.tree.size, state.head_hash, state.tree.to_bytes())

    def frontier(self) -> merkle.Frontier:
        """The tree as of the last append."""
        return self.working.state.tree.copy()

    def nodes(self, wanted: Iterable[merkle.Node]) -> dict[merkle.Node, bytes]:
        """The stored perfect-subtree hashes asked for (level 0 from the entries)."""
        state = self.working.state
        leaves = {s.seq - 1: s.leaf_hash for s in state.entries}
        found: dict[merkle.Node, bytes] = {}
        for level, idx in set(wanted):
            if level == 0 and idx in leaves:
                found[(level, idx)] = bytes.fromhex(leaves[idx])
            elif level > 0 and (level, idx) in state.nodes:
                found[(level, idx)] = state.nodes[(level, idx)]
            else:
                raise Unavailable("The audit tree is missing nodes; no proof can be given.")
        return found

    def add_checkpoint(self, size: int, root: bytes, note: str) -> bool:
        """Store a signed checkpoint; False if one of that size is already stored."""
        checkpoints = self.working.writable().checkpoints
        if size in checkpoints:
            return False
        checkpoints[size] = StoredCheckpoint(size, root.hex(), format_ts(self.clock()), note)
        return True

    def checkpoints(self, after_size: int = -1, limit: int | None = None,
                    newest_first: bool = False) -> list[StoredCheckpoint]:
        """Stored checkpoints by size (newest first: those below ``after_size``, if given)."""
        stored = sorted(self.working.state.checkpoints.values(), key=lambda c: c.size,
                        reverse=newest_first)
        if newest_first:
            stored = [c for c in stored if after_size < 0 or c.size < after_size]
        else:
            stored = [c for c in stored if c.size > after_size]
        return stored if limit is None else stored[:limit]

    def checkpoint(self, size: int) -> StoredCheckpoint | None:
        """The checkpoint of exactly ``size`` entries."""
        return self.working.state.checkpoints.get(size)

    def latest_checkpoint(self) -> StoredCheckpoint | None:
        """The checkpoint of the most entries."""
        found = self.checkpoints(newest_first=True, limit=1)
        return found[0] if found else None


def _matches(entry: Mapping[str, Any], query: AuditQuery) -> bool:
    """Whether an entry passes every filter ``query`` sets (as the SQL store filters)."""
    actor, resource = entry["actor"], entry["resource"]
    dataset_id = resource["dataset_id"]
    return all((
        query.actor is None or actor.get("sub") == query.actor,
        query.org is None or actor.get("org") == query.org,
        query.dataset_ids is None or dataset_id in query.dataset_ids,
        not query.about_datasets or dataset_id is not None,
        query.contract_id is None or resource["contract_id"] == query.contract_id,
        query.action is None or entry["action"] == query.action,
        query.since is None or entry["ts"] >= query.since,
        query.until is None or entry["ts"] < query.until,
        query.allowed is None or entry["decision"]["allowed"] is query.allowed,
    ))


class FakeReleaseLedger:
    """Released populations and earlier answers in memory; ids count up across datasets."""

    def __init__(self, working: Working) -> None:
        self.working = working

    def since(self, dataset_id: str, after_id: int) -> list[LedgerEntry]:
        """Ledger entries of ``dataset_id`` added after ``after_id``, oldest first (copies, as
        a database hands out)."""
        return [LedgerEntry(e.id, e.measure, BitMap(e.members))
                for owner, e, _ in self.working.state.released
                if owner == dataset_id and e.id > after_id]

    def add(self, dataset_id: str, entries: Iterable[tuple[str, BitMap]], audit_seq: int) -> None:
        """Record the populations of a release's published measures."""
        released = self.working.writable().released
        for measure, members in entries:
            released.append((dataset_id, LedgerEntry(len(released) + 1, measure,
                                                     BitMap(members)), audit_seq))

    def forms_since(self, dataset_id: str, after_id: int) -> list[FormEntry]:
        """The release audit's forms of ``dataset_id`` after ``after_id`` (copies)."""
        return [FormEntry(e.id, Form(e.form.quantity, e.form.kind, BitMap64(e.form.atoms)),
                          e.numbers)
                for owner, e, _ in self.working.state.forms
                if owner == dataset_id and e.id > after_id]

    def add_forms(self, dataset_id: str, forms: Iterable[tuple[Form, str | None]],
                  audit_seq: int) -> int:
        """Record a release's forms with their sealed numbers; the dataset's last form id
        afterwards."""
        stored = self.working.writable().forms
        for form, numbers in forms:
            entry = FormEntry(len(stored) + 1, Form(form.quantity, form.kind,
                                                    BitMap64(form.atoms)), numbers)
            stored.append((dataset_id, entry, audit_seq))
        return max((e.id for owner, e, _ in stored if owner == dataset_id), default=0)

    def cached(self, dataset_id: str, fingerprint: str) -> str | None:
        """The stored answer to an identical computation, if there was one."""
        found = self.working.state.answers.get((dataset_id, fingerprint))
        return found[0] if found is not None else None

    def cache(self, dataset_id: str, fingerprint: str, body: str, audit_seq: int) -> None:
        """Keep an answer for identical repeats."""
        answers = self.working.writable().answers
        if (dataset_id, fingerprint) in answers:
            raise UniqueViolation(f"answer {dataset_id}/{fingerprint}")
        answers[(dataset_id, fingerprint)] = (body, audit_seq)


class FakeUnitOfWork:
    """One transaction over the in-memory store: changes stay private until ``commit``."""

    orgs: FakeOrgRepository
    datasets: FakeDatasetRepository
    contracts: FakeContractRepository
    audit: FakeAuditLog
    releases: FakeReleaseLedger
    slices: FakeSliceRepository

    def __init__(self, factory: FakeUnitOfWorkFactory, *, read_only: bool = False) -> None:
        self.factory = factory
        self.read_only = read_only
        self.working = Working(StoreState(), read_only=read_only)
        self.orgs = FakeOrgRepository(self.working)
        self.datasets = FakeDatasetRepository(self.working)
        self.contracts = FakeContractRepository(self.working)
        self.audit = FakeAuditLog(self.working, factory.clock)
        self.releases = FakeReleaseLedger(self.working)
        self.slices = FakeSliceRepository(self.working)
        self.indicators = FakeIndicatorRepository(self.working)

    def __enter__(self) -> Self:
        if not self.read_only:
            if self.factory.writer is not None:
                raise WriterBusy("a write unit of work was opened inside another's block")
            self.factory.writer = self
        self.rollback()  # begin on the state as committed now
        return self

    def __exit__(self, *exc: object) -> None:
        self.working.state = StoreState()  # whatever was not committed is gone
        if self.factory.writer is self:
            self.factory.writer = None

    def commit(self) -> None:
        """Publish this unit's changes; the unit goes on from what it published."""
        if self.read_only:
            return  # nothing was written (writes raise ReadOnlyWrite)
        self.factory.committed = self.working.state
        self.factory.commits += 1
        self.rollback()

    def rollback(self) -> None:
        """Drop everything not yet committed and go on from the committed state."""
        self.working.state = self.factory.committed.copy()


class FakeUnitOfWorkFactory:
    """What a database holds (``committed``), and the unit-of-work factory over it."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.committed = StoreState()
        self.commits = 0
        self.writer: FakeUnitOfWork | None = None

    def __call__(self, *, read_only: bool = False) -> FakeUnitOfWork:
        """A new unit of work; it begins when its block is entered."""
        return FakeUnitOfWork(self, read_only=read_only)

    def audit_entries(self) -> list[dict[str, Any]]:
        """Every committed audit entry, oldest first."""
        return [s.entry for s in self.committed.entries]


class SwitchablePolicyEngine:
    """A real policy engine that the test can take down: then every evaluation fails, as an
    OPA server that stopped answering would."""

    def __init__(self, engine: PolicyEngine) -> None:
        self.engine = engine
        self.down = False

    @property
    def revision(self) -> str:
        """Revision of the wrapped engine's policies."""
        return self.engine.revision

    def evaluate(self, entrypoint: str, input: Mapping[str, Any]) -> Any:
        """The wrapped engine's answer; ConnectionError while down."""
        if self.down:
            raise ConnectionError("the policy engine does not answer")
        return self.engine.evaluate(entrypoint, input)


def contract_terms(dataset_id: str, *, starts: datetime, **terms: Any) -> Terms:
    """Terms for a contract on the energy test data, valid from ``starts`` for 30 days.

    The one place tests build contract terms: when their constructor changes, change this.
    """
    values: dict[str, Any] = {
        "purposes": ("energy-planning",),
        # The identifier goes pseudonymized: offers refuse it in clear (issue 18).
        "fields": {"town": FieldForm.CLEAR, "kwh": FieldForm.AGGREGATE,
                   "name": FieldForm.PSEUDONYMIZE},
        "k_min": 3,
        "dominance": Dominance(),
        "valid_from": starts,
        "valid_until": starts + timedelta(days=30),
        "max_queries_per_day": 100,
        **terms,
    }
    return Terms(dataset_id=dataset_id, **values)
