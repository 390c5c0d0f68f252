"""Use cases: registering datasets and reading the catalogue."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd

from broker.domain.datasets import DATASET_NAME, Dataset, DatasetSchema, FieldSpec
from broker.domain.errors import BadDataset, Conflict, InvalidInput
from broker.domain.ports import Clock, DatasetStorage, UnitOfWork, UnitOfWorkFactory
from broker.domain.principals import RequestContext, Role
from broker.services.guard import Guard
from contracts.model import Contract, ContractStatus

#: A reader turns an uploaded file into a typed frame that matches the schema, or raises.
Reader = Callable[[Path, DatasetSchema], pd.DataFrame]


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


def live_contracts(
    contracts: Sequence[Contract], dataset_id: str, now: datetime
) -> list[Contract]:
    """Contracts over a dataset that are offered or active at ``now`` (not revoked, expired)."""
    return [
        c
        for c in contracts
        if c.dataset_id == dataset_id
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

    def register(
        self,
        ctx: RequestContext,
        *,
        name: str,
        entity_field: str,
        fields: Sequence[FieldSpec],
        file: Path,
        file_format: str,
    ) -> DatasetView:
        """Check the file against its declared schema and store it as version 1.

        Nothing is stored unless the file conforms, the name is free and the audit entry
        commits; a stored file whose transaction fails is removed again.
        """
        self.authorize_register(ctx)
        if not DATASET_NAME.fullmatch(name):
            raise InvalidInput("Dataset names are 1-128 letters, digits, '_', '.' or '-'.")
        schema = DatasetSchema.of(entity_field, fields)
        reader = self.readers.get(file_format)
        if reader is None:
            raise BadDataset(f"Unsupported file format; use one of: {', '.join(self.formats())}.")
        frame = reader(file, schema)
        sha256 = _sha256(file)
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
                uow.datasets.add(dataset, path=location)
                self.guard.record(
                    uow, ctx, "dataset.register", dataset_id=dataset.id, version=dataset.version
                )
                uow.commit()
        except BaseException:
            self.storage.entity_index(dataset.id).unlink(missing_ok=True)  # version 1 only
            self.storage.remove(location)
            raise
        return DatasetView(dataset, dataset.schema.fields)

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
            for name in c.fields
        }
        return DatasetView(dataset, tuple(f for f in dataset.schema.fields if f.name in offered))
