"""Use cases: registering datasets and reading the catalogue."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import pandas as pd
import pyarrow as pa

from broker.disclosure.plan import plan_aggregate
from broker.domain.confusables import check_new_name
from broker.domain.datasets import (
    DATASET_NAME,
    Dataset,
    DatasetSchema,
    DatasetVersion,
    FieldSpec,
    fold_name,
)
from broker.domain.errors import BadDataset, Conflict, InvalidInput
from broker.domain.ports import Clock, DatasetStorage, UnitOfWork, UnitOfWorkFactory
from broker.domain.principals import RequestContext, Role
from broker.domain.queries import AggregateSpec, Filter, Measure, MeasureFn
from broker.domain.slices import SLICE_NAME, Consent, Slice
from broker.services.guard import Guard
from contracts.model import Contract, ContractStatus

#: A reader turns an uploaded file into a typed frame (or the Arrow table of one) that matches
#: the schema, or raises.
Reader = Callable[[Path, DatasetSchema], pd.DataFrame | pa.Table]


class SqlReader(Protocol):
    """Snapshots a table or a read-only query of a SQL database as a conformed frame."""

    def __call__(self, url: str, schema: DatasetSchema, *, table: str | None = ...,
                 query: str | None = ...) -> pd.DataFrame: ...


@dataclass(frozen=True, slots=True)
class FileData:
    """An uploaded file spooled to ``path``, in ``file_format`` (its suffix: csv, xlsx, ...)."""

    path: Path
    file_format: str


@dataclass(frozen=True, slots=True)
class SqlData:
    """A snapshot of a table, or of a read-only query, in a SQL source the operator configured
    (``BROKER_SQL_SOURCES``: name -> SQLAlchemy URL). Exactly one of ``table`` and ``query``."""

    source: str
    table: str | None = None
    query: str | None = None


#: Where a new dataset version's data comes from.
DataSource = FileData | SqlData


#: One stored version of a dataset: its number, rows, content hash and when it came.
VersionView = DatasetVersion


@dataclass(frozen=True, slots=True)
class DatasetView:
    """A catalogue entry as one caller may see it: consumers see only contracted fields."""

    dataset: Dataset
    fields: tuple[FieldSpec, ...]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _frame_sha256(frame: pd.DataFrame) -> str:
    """SHA-256 of a frame's Arrow IPC stream: a content hash for data that had no file."""
    sink = pa.BufferOutputStream()
    table = pa.Table.from_pandas(frame, preserve_index=False)
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return hashlib.sha256(sink.getvalue().to_pybytes()).hexdigest()


def live_contracts(
    contracts: Sequence[Contract], dataset_id: str, now: datetime
) -> list[Contract]:
    """Contracts over a dataset that are offered or active at ``now`` (not revoked, expired)."""
    return [
        c
        for c in contracts
        if c.terms.dataset_id == dataset_id
        and c.status_at(now) in (ContractStatus.OFFERED, ContractStatus.ACTIVE)
    ]


def dataset_resource(
    dataset: Dataset, contracts: Sequence[Contract], now: datetime
) -> dict[str, Any]:
    """The dataset as authz sees it: owner and the organisations it is offered to."""
    live = live_contracts(contracts, dataset.id, now)
    return {
        "kind": "dataset",
        "id": dataset.id,
        "owner_org": dataset.owner_org,
        "offered_to": sorted({c.consumer_org for c in live}),
    }


@dataclass(frozen=True, slots=True)
class DatasetService:
    """Dataset registration and the catalogue."""

    uow: UnitOfWorkFactory
    guard: Guard
    storage: DatasetStorage
    readers: dict[str, Reader]
    clock: Clock
    #: Reads a table or a read-only query of a configured SQL source (connectors.sql).
    sql_reader: SqlReader | None = None
    sql_sources: Mapping[str, str] = field(default_factory=dict)

    def register(
        self,
        ctx: RequestContext,
        *,
        name: str,
        entity_field: str,
        fields: Sequence[FieldSpec],
        data: DataSource,
    ) -> DatasetView:
        """Check the data against its declared schema and store it as version 1.

        Nothing is stored unless the data conforms, the name is free and the audit entry
        commits; a stored version whose transaction fails is removed again.
        """
        self.authorize_register(ctx)
        if not DATASET_NAME.fullmatch(name):
            raise InvalidInput("Dataset names are 1-128 letters, digits, '_', '.' or '-'.")
        schema = DatasetSchema.of(entity_field, fields)
        frame, sha256 = self._load(data, schema)
        dataset = Dataset(
            id=str(uuid.uuid4()),
            owner_org=ctx.principal.org,
            name=name,
            schema=schema,
            version=1,
            rows=len(frame),
            sha256=sha256,
            created_at=self.clock(),
        )
        location = self.storage.write(dataset.id, dataset.version, frame, schema.entity_field)
        try:
            with self.uow() as uow:
                if uow.datasets.find(ctx.principal.org, name) is not None:
                    raise Conflict("You already have a dataset with this name.")
                check_new_name(name, [d.name for d in uow.datasets.all()
                                      if d.owner_org == ctx.principal.org],
                               "Dataset", key=fold_name)
                uow.datasets.add(dataset, path=location)
                self.guard.record(
                    uow, ctx, "dataset.register", dataset_id=dataset.id, version=dataset.version
                )
                uow.commit()
        except BaseException:
            self.storage.drop_indexes(dataset.id)  # version 1 only
            self.storage.remove(location)
            raise
        return DatasetView(dataset, dataset.schema.fields)

    def add_version(self, ctx: RequestContext, dataset_id: str, data: DataSource) -> DatasetView:
        """Store new data of an owned dataset as its next version (same declared schema).

        Contracts that are not pinned to a version answer from the new one at once; the
        registration is audited. Data identical to the latest version is refused (409).
        """
        with self.uow() as uow:
            latest = self._owned(uow, ctx, dataset_id, "dataset.version")
        frame, sha256 = self._load(data, latest.schema)
        if sha256 == latest.sha256:
            raise Conflict(f"This data is identical to version {latest.version}.",
                           version=latest.version)
        dataset = replace(latest, version=latest.version + 1, rows=len(frame), sha256=sha256,
                          created_at=self.clock())
        location = self.storage.write(dataset.id, dataset.version, frame,
                                      dataset.schema.entity_field)
        try:
            with self.uow() as uow:
                uow.datasets.add_version(dataset, path=location)
                self.guard.record(uow, ctx, "dataset.version", dataset_id=dataset.id,
                                  version=dataset.version)
                uow.commit()
        except BaseException:
            self.storage.remove(location)
            raise
        return DatasetView(dataset, dataset.schema.fields)

    def authorize_version(self, ctx: RequestContext, dataset_id: str) -> None:
        """Refuse (audited; 404 for another's dataset) a caller who may not add a version of
        this dataset, before any upload is read."""
        with self.uow() as uow:
            self._owned(uow, ctx, dataset_id, "dataset.version")

    def versions(self, ctx: RequestContext, dataset_id: str) -> list[VersionView]:
        """Every version of a dataset the caller may see (number, rows, hash, time)."""
        self.get(ctx, dataset_id)
        with self.uow(read_only=True) as uow:
            return uow.datasets.versions(dataset_id)

    def publish_slice(
        self,
        ctx: RequestContext,
        dataset_id: str,
        *,
        name: str,
        fields: Sequence[str],
        predicate: Sequence[Filter],
        consent: Consent,
    ) -> Slice:
        """Publish a consented slice of an owned dataset: fields, row predicate, consent.

        The predicate is checked as a query filter would be (fields, operators, value types);
        the entity field is always part of a slice (it is what the enterprises are counted by)
        but never needs naming.
        """
        with self.uow() as uow:
            dataset = self._owned(uow, ctx, dataset_id, "slice.publish")
            if not SLICE_NAME.fullmatch(name):
                raise InvalidInput("Slice names are 1-128 letters, digits, '_', '.' or '-'.")
            chosen = tuple(dict.fromkeys(fields))
            unknown = sorted(f for f in chosen if not dataset.schema.has_field(f))
            if unknown:
                raise InvalidInput("The slice lists fields the dataset does not have.",
                                   fields=unknown)
            if dataset.schema.entity_field in chosen:
                raise InvalidInput("The entity field is part of every slice; do not list it.",
                                   fields=[dataset.schema.entity_field])
            if consent.given_at > self.clock():
                raise InvalidInput("Consent cannot be given in the future.")
            plan_aggregate(AggregateSpec(contract_id="", purpose="", group_by=(),
                                         measures=(Measure(MeasureFn.COUNT),),
                                         filters=tuple(predicate)), dataset.schema)
            item = Slice(id=str(uuid.uuid4()), dataset_id=dataset.id,
                         owner_org=dataset.owner_org, name=name, fields=chosen,
                         predicate=tuple(predicate), consent=consent, created_at=self.clock())
            uow.slices.add(item)
            self.guard.record(uow, ctx, "slice.publish", dataset_id=dataset.id,
                              version=dataset.version)
            uow.commit()
            return item

    def slices(self, ctx: RequestContext, dataset_id: str) -> list[Slice]:
        """The slices of a dataset: all for its owner and auditors; a consumer sees those its
        contracts name."""
        view = self.get(ctx, dataset_id)
        p = ctx.principal
        with self.uow(read_only=True) as uow:
            found = uow.slices.of_dataset(dataset_id)
            if p.org == view.dataset.owner_org or p.roles & {Role.AUDITOR, Role.ADMIN}:
                return found
            named = {c.terms.slice_id for c in live_contracts(uow.contracts.all(), dataset_id,
                                                              self.clock())
                     if c.consumer_org == p.org}
            return [s for s in found if s.id in named]

    def _owned(self, uow: UnitOfWork, ctx: RequestContext, dataset_id: str,
               action: str) -> Dataset:
        """The caller's own dataset (latest version); others' are 404 or 403, audited."""
        dataset = uow.datasets.get(dataset_id)
        if dataset is None:
            self.guard.conceal(uow, ctx, action, ("not-found",), "dataset",
                               dataset_id=dataset_id)
        resource = dataset_resource(dataset, uow.contracts.all(), self.clock())
        seen = self.guard.decide(uow, ctx, "dataset.read", resource)
        if not seen.allow:
            self.guard.conceal(uow, ctx, action, seen.reasons, "dataset",
                               dataset_id=dataset.id, version=dataset.version)
        self.guard.require(uow, ctx, action, resource, dataset_id=dataset.id,
                           version=dataset.version)
        return dataset

    def _load(self, data: DataSource, schema: DatasetSchema
              ) -> tuple[pd.DataFrame | pa.Table, str]:
        """The conformed frame and its content hash (of the file's bytes, or of a SQL
        snapshot's Arrow IPC stream)."""
        if isinstance(data, FileData):
            reader = self.readers.get(data.file_format)
            if reader is None:
                raise BadDataset("Unsupported file format; use one of: "
                                 f"{', '.join(self.formats())}.")
            with ThreadPoolExecutor(1) as pool:  # hashlib hashes outside the GIL
                sha256 = pool.submit(_sha256, data.path)
                return reader(data.path, schema), sha256.result()
        url = self.sql_sources.get(data.source)
        if url is None or self.sql_reader is None:
            raise InvalidInput("No SQL source of this name is configured.",
                               sources=sorted(self.sql_sources))
        if (data.table is None) == (data.query is None):
            raise InvalidInput("Name exactly one of table and query.")
        frame = self.sql_reader(url, schema, table=data.table, query=data.query)
        return frame, _frame_sha256(frame)

    def authorize_register(self, ctx: RequestContext) -> None:
        """Refuse (audited, 403) a caller who may not register datasets, before any upload."""
        with self.uow() as uow:
            self.guard.require(uow, ctx, "dataset.register",
                               {"kind": "dataset", "owner_org": ctx.principal.org})

    def formats(self) -> list[str]:
        """The file formats this service can read."""
        return sorted(self.readers)

    def list(self, ctx: RequestContext) -> list[DatasetView]:
        """Every dataset the caller may see, with the fields it may see."""
        with self.uow(read_only=True) as uow:
            contracts = uow.contracts.all()
            return [
                view
                for dataset in uow.datasets.all()
                if (view := self._view(uow, ctx, dataset, contracts)) is not None
            ]

    def get(self, ctx: RequestContext, dataset_id: str) -> DatasetView:
        """One catalogue entry; 404 when absent or not visible (that attempt is audited)."""
        with self.uow(read_only=True) as uow:
            dataset = uow.datasets.get(dataset_id)
            view = self._view(uow, ctx, dataset, uow.contracts.all()) if dataset else None
        if view is None:
            ids = {"dataset_id": dataset.id, "version": dataset.version} if dataset else {}
            with self.uow() as uow:
                self.guard.conceal(uow, ctx, "dataset.read", ("not-visible",), "dataset",
                                   **ids)
        return view

    def _view(
        self,
        uow: UnitOfWork,
        ctx: RequestContext,
        dataset: Dataset,
        contracts: Sequence[Contract],
    ) -> DatasetView | None:
        now = self.clock()
        resource = dataset_resource(dataset, contracts, now)
        if not self.guard.decide(uow, ctx, "dataset.read", resource).allow:
            return None
        p = ctx.principal
        if p.org == dataset.owner_org or p.roles & {Role.AUDITOR, Role.ADMIN}:
            return DatasetView(dataset, dataset.schema.fields)
        offered = {
            name
            for c in live_contracts(contracts, dataset.id, now)
            if c.consumer_org == p.org
            for name in c.terms.fields
        }
        return DatasetView(dataset, tuple(f for f in dataset.schema.fields if f.name in offered))
