"""SQL repositories: rows in, domain objects out. Table rows never leave this package."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import fields as dataclass_fields
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar, cast

from pyroaring import BitMap, BitMap64
from sqlalchemy import Table, insert
from sqlalchemy import func as sa_func
from sqlalchemy import select as sa_select
from sqlmodel import Session, SQLModel, select

from broker.domain.datasets import (
    Dataset,
    DatasetSchema,
    DatasetVersion,
    FieldRole,
    FieldSpec,
    FieldType,
    Sensitivity,
)
from broker.domain.errors import Conflict, NotFound
from broker.domain.indicators import FieldOf, Indicator
from broker.domain.ledger import Form, FormEntry, LedgerEntry
from broker.domain.organisations import Organisation, OrgKind
from broker.domain.slices import Consent, Slice
from broker.store.tables import (
    ContractRow,
    DatasetRow,
    DatasetVersionRow,
    IndicatorRow,
    OrgRow,
    ReleaseCacheRow,
    ReleasedSetRow,
    ReleaseFormRow,
    SliceRow,
)
from contracts.model import Contract, ContractStatus, Dominance, Terms


def aware(value: datetime) -> datetime:
    """Datetimes come back naive from SQLite; everything stored is UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _maybe_aware(value: datetime | None) -> datetime | None:
    return aware(value) if value is not None else None


RowT = TypeVar("RowT", bound=SQLModel)
DomainT = TypeVar("DomainT")


class _SqlRepository(ABC, Generic[RowT, DomainT]):
    """A repository over one table: rows by primary key and in a stated order, as domain
    objects."""

    #: The table, and the columns its listings are ordered by.
    row_type: type[RowT]
    order_by: tuple[Any, ...]

    def __init__(self, session: Session) -> None:
        self.session = session

    def _by_key(self, key: str) -> DomainT | None:
        """The object stored under this primary key, if any."""
        row = self.session.get(self.row_type, key)
        return self._to_domain(row) if row else None

    def _listed(self, *where: Any) -> list[DomainT]:
        """The objects whose rows match ``where`` (all of them without), in order."""
        rows = self.session.exec(
            select(self.row_type).where(*where).order_by(*self.order_by)).all()
        return [self._to_domain(r) for r in rows]

    @abstractmethod
    def _to_domain(self, row: RowT) -> DomainT:
        """The domain object a row stores."""


class SqlOrgRepository(_SqlRepository[OrgRow, Organisation]):
    """Organisations in SQL."""

    row_type = OrgRow
    order_by = (OrgRow.id,)

    def add(self, org: Organisation) -> None:
        """Insert a new organisation."""
        self.session.add(
            OrgRow(
                id=org.id,
                name=org.name,
                kind=org.kind.value,
                uscc=org.uscc,
                public_key=org.public_key,
                created_at=org.created_at,
            )
        )
        self.session.flush()

    def get(self, org_id: str) -> Organisation | None:
        """The organisation with this id, if any."""
        return self._by_key(org_id)

    def all(self) -> list[Organisation]:
        """All organisations by id."""
        return self._listed()

    def _to_domain(self, row: OrgRow) -> Organisation:
        return Organisation(
            id=row.id,
            name=row.name,
            kind=OrgKind(row.kind),
            uscc=row.uscc,
            public_key=row.public_key,
            created_at=aware(row.created_at),
        )


class SqlDatasetRepository(_SqlRepository[DatasetRow, Dataset]):
    """Datasets and versions in SQL."""

    row_type = DatasetRow
    order_by = (DatasetRow.created_at, DatasetRow.id)

    def add(self, dataset: Dataset, *, path: str) -> None:
        """Insert a dataset with its first version."""
        self.session.add(
            DatasetRow(
                id=dataset.id,
                owner_org=dataset.owner_org,
                name=dataset.name,
                entity_field=dataset.schema.entity_field,
                fields=[f.as_json() for f in dataset.schema.fields],
                latest_version=dataset.version,
                created_at=dataset.created_at,
            )
        )
        self.session.flush()
        self._add_version_row(dataset, path)

    def get(self, dataset_id: str, version: int | None = None) -> Dataset | None:
        """The dataset at ``version`` (default: its latest), if both exist."""
        row = self.session.get(DatasetRow, dataset_id)
        if row is None or (version is not None and not 1 <= version <= row.latest_version):
            return None
        return self._to_domain(row, version)

    def add_version(self, dataset: Dataset, *, path: str) -> None:
        """Store ``dataset.version`` as the next version, if no other writer took it first."""
        row = self.session.get(DatasetRow, dataset.id, with_for_update=True)
        if row is None or row.latest_version != dataset.version - 1:
            raise Conflict("Another version of this dataset was registered meanwhile; "
                           "send yours again.")
        row.latest_version = dataset.version
        self.session.add(row)
        self._add_version_row(dataset, path)

    def _add_version_row(self, dataset: Dataset, path: str) -> None:
        self.session.add(
            DatasetVersionRow(
                dataset_id=dataset.id,
                version=dataset.version,
                rows=dataset.rows,
                sha256=dataset.sha256,
                location=path,
                created_at=dataset.created_at,
            )
        )
        self.session.flush()

    def versions(self, dataset_id: str) -> list[DatasetVersion]:
        """Every version of a dataset, oldest first."""
        rows = self.session.exec(
            select(DatasetVersionRow)
            .where(DatasetVersionRow.dataset_id == dataset_id)
            .order_by(DatasetVersionRow.version)  # type: ignore[arg-type]
        ).all()
        return [DatasetVersion(r.version, r.rows, r.sha256, aware(r.created_at)) for r in rows]

    def find(self, owner_org: str, name: str) -> Dataset | None:
        """The owner's dataset with this name, if any."""
        row = self.session.exec(
            select(DatasetRow).where(DatasetRow.owner_org == owner_org, DatasetRow.name == name)
        ).first()
        return self._to_domain(row) if row else None

    def all(self) -> list[Dataset]:
        """Every dataset, oldest first."""
        return self._listed()

    def version_path(self, dataset_id: str, version: int) -> str:
        """Storage location of one version."""
        row = self._version(dataset_id, version)
        if row is None:
            raise NotFound("No such dataset version.")
        return row.location

    def _version(self, dataset_id: str, version: int) -> DatasetVersionRow | None:
        return self.session.exec(
            select(DatasetVersionRow).where(
                DatasetVersionRow.dataset_id == dataset_id, DatasetVersionRow.version == version
            )
        ).first()

    def _to_domain(self, row: DatasetRow, at: int | None = None) -> Dataset:
        version = self._version(row.id, at or row.latest_version)
        if version is None:  # the two rows are written in one transaction
            raise NotFound("No such dataset version.")
        return Dataset(
            id=row.id,
            owner_org=row.owner_org,
            name=row.name,
            schema=DatasetSchema(
                entity_field=row.entity_field,
                fields=tuple(_field_spec(f) for f in row.fields),
            ),
            version=version.version,
            rows=version.rows,
            sha256=version.sha256,
            created_at=aware(row.created_at),
        )


def _field_spec(data: dict[str, Any]) -> FieldSpec:
    return FieldSpec(
        name=data["name"],
        type=FieldType(data["type"]),
        role=FieldRole(data["role"]),
        sensitivity=Sensitivity(data["sensitivity"]),
        hierarchy=data.get("hierarchy"),
        codes=tuple(data["codes"]) if data.get("codes") is not None else None,
        bins=tuple(data["bins"]) if data.get("bins") is not None else None,
        format=data.get("format"),
        scale=data.get("scale"),
    )


class SqlContractRepository(_SqlRepository[ContractRow, Contract]):
    """Contracts in SQL."""

    row_type = ContractRow
    order_by = (ContractRow.created_at, ContractRow.id)

    def add(self, contract: Contract) -> None:
        """Insert a new contract."""
        self.session.add(self._to_row(contract))
        self.session.flush()

    def save(self, contract: Contract) -> None:
        """Store a contract's new state."""
        self.session.merge(self._to_row(contract))
        self.session.flush()

    def get(self, contract_id: str) -> Contract | None:
        """The contract with this id, if any."""
        return self._by_key(contract_id)

    def all(self) -> list[Contract]:
        """Every contract, oldest first."""
        return self._listed()

    @staticmethod
    def _to_row(c: Contract) -> ContractRow:
        return ContractRow(
            id=c.id,
            provider_org=c.provider_org,
            consumer_org=c.consumer_org,
            **_term_columns(c.terms),
            status=c.status.value,
            created_at=c.created_at,
            accepted_at=c.accepted_at,
            revoked_at=c.revoked_at,
            suspended_at=c.suspended_at,
            provider_signature=c.provider_signature,
            consumer_signature=c.consumer_signature,
        )

    def _to_domain(self, row: ContractRow) -> Contract:
        return Contract(
            id=row.id,
            provider_org=row.provider_org,
            consumer_org=row.consumer_org,
            terms=_terms_of(row),
            status=ContractStatus(row.status),
            created_at=aware(row.created_at),
            accepted_at=_maybe_aware(row.accepted_at),
            revoked_at=_maybe_aware(row.revoked_at),
            suspended_at=_maybe_aware(row.suspended_at),
            provider_signature=row.provider_signature,
            consumer_signature=row.consumer_signature,
        )


#: The terms a contract row keeps in columns of their own names; dominance is three columns.
_TERM_COLUMNS = tuple(term.name for term in dataclass_fields(Terms) if term.name != "dominance")


def _term_columns(terms: Terms) -> dict[str, Any]:
    """The terms as ``ContractRow`` columns: one per term, ``dominance_n``/``_k``/``_p``."""
    record = terms.as_record()
    dominance = record.pop("dominance")
    return {**record, **{f"dominance_{name}": value for name, value in dominance.items()}}


def _terms_of(row: ContractRow) -> Terms:
    """The terms kept in a contract row's columns (datetimes back as UTC)."""
    record: dict[str, Any] = {"dominance": {
        rule.name: getattr(row, f"dominance_{rule.name}") for rule in dataclass_fields(Dominance)}}
    for name in _TERM_COLUMNS:
        value = getattr(row, name)
        record[name] = aware(value) if isinstance(value, datetime) else value
    return Terms.from_record(record)


class SqlSliceRepository(_SqlRepository[SliceRow, Slice]):
    """Consented slices in SQL."""

    row_type = SliceRow
    order_by = (SliceRow.created_at, SliceRow.id)

    def add(self, item: Slice) -> None:
        """Insert a new slice; its name must be free within the dataset."""
        if self.session.exec(select(SliceRow).where(
                SliceRow.dataset_id == item.dataset_id, SliceRow.name == item.name)).first():
            raise Conflict("This dataset already has a slice with this name.")
        self.session.add(SliceRow(
            id=item.id, dataset_id=item.dataset_id, name=item.name, fields=list(item.fields),
            predicate=item.predicate_json(), consent=item.consent.as_json(),
            created_at=item.created_at))
        self.session.flush()

    def get(self, slice_id: str) -> Slice | None:
        """The slice with this id, if any."""
        return self._by_key(slice_id)

    def of_dataset(self, dataset_id: str) -> list[Slice]:
        """The slices of one dataset, oldest first."""
        return self._listed(SliceRow.dataset_id == dataset_id)

    def _to_domain(self, row: SliceRow) -> Slice:
        owner = self.session.get(DatasetRow, row.dataset_id)
        return Slice(
            id=row.id, dataset_id=row.dataset_id, owner_org=owner.owner_org if owner else "",
            name=row.name, fields=tuple(row.fields),
            predicate=Slice.predicate_from_json(row.predicate),
            consent=Consent.from_json(row.consent), created_at=aware(row.created_at))


class SqlIndicatorRepository(_SqlRepository[IndicatorRow, Indicator]):
    """The indicator catalogue in SQL."""

    row_type = IndicatorRow
    order_by = (IndicatorRow.id,)

    def add(self, indicator: Indicator) -> None:
        """Insert a new indicator; its id must be free."""
        if self.session.get(IndicatorRow, indicator.id) is not None:
            raise Conflict("An indicator with this id already exists.")
        self.session.add(IndicatorRow(
            id=indicator.id, name=indicator.name, unit=indicator.unit,
            definition=indicator.definition,
            source={"dataset_id": indicator.source.dataset_id, "field": indicator.source.field},
            checks=[{"dataset_id": c.dataset_id, "field": c.field} for c in indicator.checks],
            created_at=indicator.created_at))
        self.session.flush()

    def get(self, indicator_id: str) -> Indicator | None:
        """The indicator with this id, if any."""
        return self._by_key(indicator_id)

    def all(self) -> list[Indicator]:
        """The catalogue by id."""
        return self._listed()

    def _to_domain(self, row: IndicatorRow) -> Indicator:
        return Indicator(
            id=row.id, name=row.name, unit=row.unit, definition=row.definition,
            source=FieldOf(**row.source), checks=tuple(FieldOf(**c) for c in row.checks),
            created_at=aware(row.created_at))


_RELEASED_SETS = cast(Table, ReleasedSetRow.__table__)  # type: ignore[attr-defined]
_RELEASE_FORMS = cast(Table, ReleaseFormRow.__table__)  # type: ignore[attr-defined]


class SqlReleaseLedger:
    """The differencing ledger and the cache of earlier answers, in SQL."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def since(self, dataset_id: str, after_id: int) -> list[LedgerEntry]:
        """Ledger entries of ``dataset_id`` added after ``after_id``, oldest first."""
        table = _RELEASED_SETS
        rows = self.session.execute(
            sa_select(table.c.id, table.c.measure, table.c.members)
            .where(table.c.dataset_id == dataset_id, table.c.id > after_id)
            .order_by(table.c.id)
        ).all()
        return [LedgerEntry(int(r.id), r.measure, BitMap.deserialize(r.members)) for r in rows]

    def add(self, dataset_id: str, entries: Iterable[tuple[str, BitMap]], audit_seq: int) -> None:
        """Record the populations of a release's published measures."""
        rows = [{"dataset_id": dataset_id, "measure": measure, "size": len(members),
                 "members": members.serialize(), "audit_seq": audit_seq}
                for measure, members in entries]
        if rows:  # one executemany, not an ORM object per row
            self.session.execute(insert(_RELEASED_SETS), rows)

    def forms_since(self, dataset_id: str, after_id: int) -> list[FormEntry]:
        """The release audit's forms of ``dataset_id`` recorded after ``after_id``, in order."""
        table = _RELEASE_FORMS
        rows = self.session.execute(
            sa_select(table.c.id, table.c.quantity, table.c.kind, table.c.atoms,
                      table.c.numbers)
            .where(table.c.dataset_id == dataset_id, table.c.id > after_id)
            .order_by(table.c.id)
        ).all()
        return [FormEntry(int(r.id), Form(r.quantity, r.kind, BitMap64.deserialize(r.atoms)),
                          r.numbers) for r in rows]

    def add_forms(self, dataset_id: str, forms: Iterable[tuple[Form, str | None]],
                  audit_seq: int) -> int:
        """Record a release's forms, each with its sealed numbers; the id of the last form of
        the dataset afterwards."""
        rows = [{"dataset_id": dataset_id, "quantity": f.quantity, "kind": f.kind,
                 "atoms": f.atoms.serialize(), "numbers": numbers, "audit_seq": audit_seq}
                for f, numbers in forms]
        if rows:
            self.session.execute(insert(_RELEASE_FORMS), rows)
        table = _RELEASE_FORMS
        last = self.session.execute(
            sa_select(sa_func.max(table.c.id)).where(table.c.dataset_id == dataset_id)
        ).scalar_one()
        return int(last or 0)

    def cached(self, dataset_id: str, fingerprint: str) -> str | None:
        """The stored answer to an identical computation, if there was one."""
        row = self.session.get(ReleaseCacheRow, (dataset_id, fingerprint))
        return row.body if row is not None else None

    def cache(self, dataset_id: str, fingerprint: str, body: str, audit_seq: int) -> None:
        """Keep an answer for identical repeats."""
        self.session.add(ReleaseCacheRow(dataset_id=dataset_id, fingerprint=fingerprint,
                                         body=body, audit_seq=audit_seq))
        self.session.flush()
