"""Ports: what the use cases need from the outside world.

Adapters implement these Protocols (``broker.store`` for SQL, ``broker.policy`` for Rego,
``connectors`` for dataset files and the query engine); tests may substitute fakes.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, Self, runtime_checkable

from pyroaring import BitMap

from audit import merkle
from audit.entry import AuditEvent
from audit.verify import Chunk, Head
from broker.domain.datasets import Dataset, DatasetVersion
from broker.domain.indicators import Indicator
from broker.domain.ledger import Form, FormEntry, LedgerEntry
from broker.domain.organisations import Organisation
from broker.domain.principals import RequestContext
from broker.domain.queries import Receipt
from broker.domain.slices import Slice
from contracts.model import Contract

if TYPE_CHECKING:  # the engines' data types, named in signatures only
    import pandas as pd
    import pyarrow as pa
    import pyarrow.dataset as ds


@dataclass(frozen=True, slots=True)
class AuditQuery:
    """Filters for reading the audit log; every given filter must match."""

    actor: str | None = None
    org: str | None = None
    dataset_ids: Sequence[str] | None = None
    action: str | None = None
    since: str | None = None
    until: str | None = None
    allowed: bool | None = None
    contract_id: str | None = None
    about_datasets: bool = False  # only entries about a dataset (the providers' access view)
    after_seq: int = 0
    limit: int = 100


@dataclass(frozen=True, slots=True)
class StoredCheckpoint:
    """A signed checkpoint as stored: tree size, root (hex), when it was signed, the note."""

    size: int
    root: str
    ts: str
    note: str


@runtime_checkable
class RefusalRecorder(Protocol):
    """Where a refusal made before any use case ran (a rate limit) goes on the record."""

    def record_refusal(self, ctx: RequestContext, action: str, reasons: tuple[str, ...]) -> None:
        """Append and commit a denied entry for ``ctx``."""


class OrgRepository(Protocol):
    """Registered organisations."""

    def add(self, org: Organisation) -> None: ...
    def get(self, org_id: str) -> Organisation | None: ...
    def all(self) -> list[Organisation]: ...


class DatasetRepository(Protocol):
    """Dataset catalogue entries and their stored versions."""

    def add(self, dataset: Dataset, *, path: str) -> None: ...
    def add_version(self, dataset: Dataset, *, path: str) -> None: ...
    def get(self, dataset_id: str, version: int | None = None) -> Dataset | None: ...
    def find(self, owner_org: str, name: str) -> Dataset | None: ...
    def all(self) -> list[Dataset]: ...
    def versions(self, dataset_id: str) -> list[DatasetVersion]: ...
    def version_path(self, dataset_id: str, version: int) -> str: ...


class SliceRepository(Protocol):
    """Consented slices of datasets."""

    def add(self, item: Slice) -> None: ...
    def get(self, slice_id: str) -> Slice | None: ...
    def of_dataset(self, dataset_id: str) -> list[Slice]: ...


class IndicatorRepository(Protocol):
    """The indicator catalogue."""

    def add(self, indicator: Indicator) -> None: ...
    def get(self, indicator_id: str) -> Indicator | None: ...
    def all(self) -> list[Indicator]: ...


class ContractRepository(Protocol):
    """Usage contracts."""

    def add(self, contract: Contract) -> None: ...
    def get(self, contract_id: str) -> Contract | None: ...
    def save(self, contract: Contract) -> None: ...
    def all(self) -> list[Contract]: ...


class AuditLog(Protocol):
    """The append-only ledger as a store sees it.

    ``append`` serialises writers (one head row locked per transaction) and returns the receipt;
    ``lock`` takes that lock early, for a decision that must see every earlier append (quotas);
    the entry becomes durable when the unit of work commits, which must happen before any value
    covered by the entry is served.
    """

    def lock(self) -> None: ...
    def append(self, event: AuditEvent) -> Receipt: ...
    def count_released(self, contract_id: str, actions: tuple[str, ...], since: str) -> int: ...
    def entries(self, query: AuditQuery) -> list[dict[str, Any]]: ...
    def entry(self, seq: int) -> tuple[dict[str, Any], str] | None: ...
    def chunks(self, size: int = ..., *, through: int | None = ...) -> Iterator[Chunk]: ...
    def all_nodes(self, size: int = ...) -> Iterator[tuple[int, int, str]]: ...
    def head(self) -> Head: ...
    def frontier(self) -> merkle.Frontier: ...
    def nodes(self, wanted: Iterable[merkle.Node]) -> dict[merkle.Node, bytes]: ...
    def add_checkpoint(self, size: int, root: bytes, note: str) -> bool: ...
    def checkpoints(self, after_size: int = ..., limit: int | None = ...,
                    newest_first: bool = ...) -> list[StoredCheckpoint]: ...
    def checkpoint(self, size: int) -> StoredCheckpoint | None: ...
    def latest_checkpoint(self) -> StoredCheckpoint | None: ...


class ReleaseLedger(Protocol):
    """Earlier releases per dataset: populations for the differencing guard, the release
    audit's forms (``add_forms`` returns the dataset's last form id, read in the same
    transaction), and answers."""

    def since(self, dataset_id: str, after_id: int) -> list[LedgerEntry]: ...
    def add(self, dataset_id: str, entries: Iterable[tuple[str, BitMap]],
            audit_seq: int) -> None: ...
    def forms_since(self, dataset_id: str, after_id: int) -> list[FormEntry]: ...
    def add_forms(self, dataset_id: str, forms: Iterable[tuple[Form, str | None]],
                  audit_seq: int) -> int: ...
    def cached(self, dataset_id: str, fingerprint: str) -> str | None: ...
    def cache(self, dataset_id: str, fingerprint: str, body: str, audit_seq: int) -> None: ...


class UnitOfWork(Protocol):
    """One transaction over every repository; nothing is stored unless ``commit`` is called."""

    @property
    def orgs(self) -> OrgRepository: ...
    @property
    def datasets(self) -> DatasetRepository: ...
    @property
    def contracts(self) -> ContractRepository: ...
    @property
    def audit(self) -> AuditLog: ...
    @property
    def releases(self) -> ReleaseLedger: ...
    @property
    def slices(self) -> SliceRepository: ...
    @property
    def indicators(self) -> IndicatorRepository: ...

    def __enter__(self) -> Self: ...
    def __exit__(self, *exc: object) -> None: ...
    def commit(self) -> None: ...
    def rollback(self) -> None: ...


class Lease(Protocol):
    """The right of one process among several to do a job (see ``broker.store.leases``)."""

    def held(self) -> bool:
        """Whether this process holds it now (taking it if free)."""
        ...

    def release(self) -> None:
        """Give it up."""
        ...


class UnitOfWorkFactory(Protocol):
    """Opens a new unit of work; a ``read_only`` one reads a snapshot and blocks no writer."""

    def __call__(self, *, read_only: bool = False) -> UnitOfWork: ...


class OrgKeyring(Protocol):
    """Ed25519 keys the broker holds for organisations (embedded demo mode only)."""

    def create(self, org_id: str) -> str: ...
    def sign(self, org_id: str, message: bytes) -> str | None: ...


class PolicyEngine(Protocol):
    """Evaluates a Rego entrypoint (``package/rule``) over an input document."""

    @property
    def revision(self) -> str: ...

    def evaluate(self, entrypoint: str, input: Mapping[str, Any]) -> Any: ...


class DatasetStorage(Protocol):
    """Where dataset versions live at rest (encrypted; see ``connectors.storage``).

    ``read`` (a table) and ``scan`` (a lazy dataset for the engine) decrypt a version in
    memory only, and raise ``DatasetUnreadable`` when the stored bytes, their key file or the
    key do not authenticate: callers fail closed.
    """

    def write(self, dataset_id: str, version: int, frame: pd.DataFrame | pa.Table,
              entity_field: str) -> str: ...
    def read(self, location: str, columns: Sequence[str] | None = None) -> pa.Table: ...
    def scan(self, location: str) -> ds.Dataset: ...
    def entity_index(self, dataset_id: str) -> Path: ...
    def drop_indexes(self, dataset_id: str) -> None: ...
    def dates(self, location: str, fields: Sequence[str]) -> dict[str, tuple[date, ...]]: ...
    def remove(self, location: str) -> None: ...
    def resolve(self, location: str) -> Path: ...


class QueryEngine(Protocol):
    """Runs a planned statement over named in-memory Arrow relations; returns an Arrow table."""

    def run(
        self,
        relations: Mapping[str, pa.Table | ds.Dataset],
        sql: str,
        params: Sequence[Any],
    ) -> pa.Table: ...


class Sealer(Protocol):
    """Authenticated encryption of small texts kept in the database (the release cache).

    ``context`` says where the text is stored; ``open`` returns the text only for the same
    context and untouched bytes, and otherwise raises ``DatasetUnreadable`` (never a miss:
    an entry that does not open was tampered with).
    """

    def seal(self, plaintext: str, *, context: str) -> str: ...
    def open(self, sealed: str, *, context: str) -> str: ...


class Clock(Protocol):
    """Current UTC time; injected so tests can move it."""

    def __call__(self) -> datetime: ...


def utc_now() -> datetime:
    """The system clock in UTC: the Clock outside tests."""
    return datetime.now(UTC)
