"""SQLModel tables. Portable SQL only: the same tables run on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, DateTime, Index, LargeBinary, Text, UniqueConstraint
from sqlmodel import Field, SQLModel


class OrgRow(SQLModel, table=True):
    """A registered organisation."""

    __tablename__ = "orgs"

    id: str = Field(primary_key=True, max_length=64)
    name: str = Field(max_length=200)
    kind: str = Field(max_length=16)
    uscc: str | None = Field(default=None, max_length=18)
    public_key: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    created_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))


class DatasetRow(SQLModel, table=True):
    """A dataset's catalogue entry; its data lives in versions."""

    __tablename__ = "datasets"
    __table_args__ = (UniqueConstraint("owner_org", "name"),)

    id: str = Field(primary_key=True, max_length=36)
    owner_org: str = Field(foreign_key="orgs.id", index=True, max_length=64)
    name: str = Field(max_length=128)
    entity_field: str = Field(max_length=63)
    fields: list[dict[str, Any]] = Field(sa_column=Column(JSON, nullable=False))
    latest_version: int
    created_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))


class DatasetVersionRow(SQLModel, table=True):
    """One immutable version of a dataset's data."""

    __tablename__ = "dataset_versions"
    __table_args__ = (UniqueConstraint("dataset_id", "version"),)

    id: int | None = Field(default=None, primary_key=True)
    dataset_id: str = Field(foreign_key="datasets.id", index=True, max_length=36)
    version: int
    rows: int
    sha256: str = Field(max_length=64)
    location: str = Field(max_length=512)
    created_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))


class ContractRow(SQLModel, table=True):
    """A usage contract."""

    __tablename__ = "contracts"

    id: str = Field(primary_key=True, max_length=36)
    dataset_id: str = Field(foreign_key="datasets.id", index=True, max_length=36)
    provider_org: str = Field(foreign_key="orgs.id", index=True, max_length=64)
    consumer_org: str = Field(foreign_key="orgs.id", index=True, max_length=64)
    purposes: list[str] = Field(sa_column=Column(JSON, nullable=False))
    fields: dict[str, str] = Field(sa_column=Column(JSON, nullable=False))
    k_min: int
    dominance_n: int
    dominance_k: float
    dominance_p: float = 0.0
    valid_from: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    valid_until: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    max_queries_per_day: int
    status: str = Field(max_length=16)
    created_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    accepted_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )
    revoked_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )


class AuditEntryRow(SQLModel, table=True):
    """One ledger entry: canonical body plus columns derived from it for filtering.

    ``seq`` is the primary key and ``prev_hash`` is unique: two writers that raced past the head
    lock could not both commit the same position (a fork).
    """

    __tablename__ = "audit_entries"

    seq: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    ts: str = Field(index=True, max_length=32)
    action: str = Field(index=True, max_length=64)
    actor_sub: str | None = Field(default=None, index=True, max_length=256)
    actor_org: str | None = Field(default=None, index=True, max_length=64)
    dataset_id: str | None = Field(default=None, index=True, max_length=36)
    contract_id: str | None = Field(default=None, index=True, max_length=36)
    allowed: bool | None = Field(default=None)
    body: str = Field(sa_column=Column(Text, nullable=False))
    leaf_hash: str = Field(max_length=64, unique=True)
    prev_hash: str = Field(max_length=64, unique=True)


class AuditHeadRow(SQLModel, table=True):
    """The single row every append locks: current size and last leaf hash."""

    __tablename__ = "audit_head"

    id: int = Field(primary_key=True)
    size: int
    head_hash: str = Field(max_length=64)


class ReleasedSetRow(SQLModel, table=True):
    """The differencing ledger: who contributed to one released measure of one cell.

    ``members`` is a serialised roaring bitmap of dense entity indices (never entity ids).
    """

    __tablename__ = "released_sets"
    __table_args__ = (Index("ix_released_sets_dataset_id_id", "dataset_id", "id"),)

    id: int | None = Field(default=None, primary_key=True)
    dataset_id: str = Field(max_length=36)
    measure: str = Field(max_length=1024)
    size: int
    members: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    audit_seq: int


class ReleaseCacheRow(SQLModel, table=True):
    """An earlier answer, returned identically when the same computation is asked again."""

    __tablename__ = "release_cache"

    dataset_id: str = Field(primary_key=True, max_length=36)
    fingerprint: str = Field(primary_key=True, max_length=64)
    body: str = Field(sa_column=Column(Text, nullable=False))
    audit_seq: int
