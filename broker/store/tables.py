"""SQLModel tables. Portable SQL only: the same tables run on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Computed,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.expression import ColumnElement
from sqlmodel import Field, SQLModel

#: A 64-bit integer column that stays SQLite's INTEGER (64-bit already, and the only type that
#: makes a primary key the auto-numbered rowid).
WIDE = BigInteger().with_variant(Integer(), "sqlite")


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
    rows: int = Field(sa_column=Column(WIDE, nullable=False))
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
    suspended_at: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True), nullable=True)
    )
    dataset_version: int | None = None
    slice_id: str | None = Field(default=None, foreign_key="slices.id", max_length=36)
    result_retention_days: int
    linkable: bool = False
    provider_signature: str | None = Field(default=None, max_length=128)
    consumer_signature: str | None = Field(default=None, max_length=128)


class SliceRow(SQLModel, table=True):
    """A consented slice of a dataset: fields, a row predicate and the consent behind it."""

    __tablename__ = "slices"
    __table_args__ = (UniqueConstraint("dataset_id", "name"),)

    id: str = Field(primary_key=True, max_length=36)
    dataset_id: str = Field(foreign_key="datasets.id", index=True, max_length=36)
    name: str = Field(max_length=128)
    fields: list[str] = Field(sa_column=Column(JSON, nullable=False))
    predicate: list[dict[str, Any]] = Field(sa_column=Column(JSON, nullable=False))
    consent: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))


class IndicatorRow(SQLModel, table=True):
    """An indicator of the catalogue: its authoritative field and the fields that check it."""

    __tablename__ = "indicators"

    id: str = Field(primary_key=True, max_length=63)
    name: str = Field(max_length=200)
    unit: str = Field(max_length=50)
    definition: str = Field(sa_column=Column(Text, nullable=False))
    source: dict[str, str] = Field(sa_column=Column(JSON, nullable=False))
    checks: list[dict[str, str]] = Field(sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))


class EntryField(ColumnElement[Any]):
    """A value read out of the entry's JSON body, as the database computes it.

    The filter columns of ``audit_entries`` are generated from ``body`` by the database itself,
    so they can never say something the hashed body does not: an insider who wants to hide an
    entry from a provider's view has to change the body, and that breaks the hashes.
    """

    inherit_cache = True

    def __init__(self, *path: str, boolean: bool = False) -> None:
        self.path = path
        self.boolean = boolean
        self.type = Boolean() if boolean else Text()


@compiles(EntryField, "sqlite")
def _entry_field_sqlite(element: EntryField, _compiler: Any, **_kw: Any) -> str:
    path = "".join(f"[{step}]" if step.isdigit() else f".{step}" for step in element.path)
    return f"json_extract(body, '${path}')"


@compiles(EntryField, "postgresql")
def _entry_field_postgresql(element: EntryField, _compiler: Any, **_kw: Any) -> str:
    value = f"((body)::jsonb #>> '{{{','.join(element.path)}}}')"
    return f"({value})::boolean" if element.boolean else value


def _generated(*path: str, boolean: bool = False, index: bool = True) -> Any:
    kind: Any = Boolean() if boolean else Text()
    return Field(default=None, sa_column=Column(
        kind, Computed(EntryField(*path, boolean=boolean), persisted=True), index=index))


class AuditEntryRow(SQLModel, table=True):
    """One ledger entry: canonical body, its leaf hash and the hash it chains to.

    ``seq`` is the primary key and ``prev_hash`` is unique: two writers that raced past the head
    lock could not both commit the same position (a fork). Triggers (see ``store.db``) refuse
    UPDATE and DELETE. The filter columns are generated from the body by the database.
    """

    __tablename__ = "audit_entries"
    # The source columns are set only on cross-source entries: partial indexes, so that
    # every other append writes no index entry for them.
    __table_args__ = tuple(
        Index(f"ix_audit_entries_source{n}_{kind}_id", f"source{n}_{kind}_id",
              sqlite_where=text(f"source{n}_{kind}_id IS NOT NULL"),
              postgresql_where=text(f"source{n}_{kind}_id IS NOT NULL"))
        for n in range(4) for kind in ("dataset", "contract"))

    seq: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    body: str = Field(sa_column=Column(Text, nullable=False))
    leaf_hash: str = Field(max_length=64, unique=True)
    prev_hash: str = Field(max_length=64, unique=True)
    ts: str | None = _generated("ts")
    action: str | None = _generated("action")
    actor_sub: str | None = _generated("actor", "sub")
    actor_org: str | None = _generated("actor", "org")
    dataset_id: str | None = _generated("resource", "dataset_id")
    contract_id: str | None = _generated("resource", "contract_id")
    # Not indexed: nearly every entry is allowed, and an index on it lured SQLite's planner
    # away from the contract's index (a contract's daily count scanned every allowed entry).
    allowed: bool | None = _generated("decision", "allowed", boolean=True, index=False)
    # A cross-source query's sources (at most MAX_SOURCES), so that each provider's view and
    # each contract's quota find it (partial indexes, see __table_args__).
    source0_dataset_id: str | None = _generated("resource", "sources", "0", "dataset_id",
                                                   index=False)
    source0_contract_id: str | None = _generated("resource", "sources", "0", "contract_id",
                                                   index=False)
    source1_dataset_id: str | None = _generated("resource", "sources", "1", "dataset_id",
                                                   index=False)
    source1_contract_id: str | None = _generated("resource", "sources", "1", "contract_id",
                                                   index=False)
    source2_dataset_id: str | None = _generated("resource", "sources", "2", "dataset_id",
                                                   index=False)
    source2_contract_id: str | None = _generated("resource", "sources", "2", "contract_id",
                                                   index=False)
    source3_dataset_id: str | None = _generated("resource", "sources", "3", "dataset_id",
                                                   index=False)
    source3_contract_id: str | None = _generated("resource", "sources", "3", "contract_id",
                                                   index=False)


#: The generated columns naming each source of a cross-source entry.
SOURCE_DATASET_COLUMNS = tuple(f"source{n}_dataset_id" for n in range(4))
SOURCE_CONTRACT_COLUMNS = tuple(f"source{n}_contract_id" for n in range(4))


class AuditNodeRow(SQLModel, table=True):
    """A perfect subtree hash of the Merkle tree (level >= 1; level 0 is the leaf hashes).

    Written with the entry that completes it, so any proof needs O(log n) look-ups.
    """

    __tablename__ = "audit_nodes"

    level: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    idx: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    hash: str = Field(max_length=64)


class AuditHeadRow(SQLModel, table=True):
    """The single row every append locks: size, last leaf hash and the tree's frontier."""

    __tablename__ = "audit_head"

    id: int = Field(primary_key=True)
    size: int = Field(sa_column=Column(BigInteger, nullable=False))
    head_hash: str = Field(max_length=64)
    frontier: str = Field(default="", sa_column=Column(Text, nullable=False, server_default=""))


class AuditCheckpointRow(SQLModel, table=True):
    """A signed checkpoint (C2SP signed note) of the tree at ``size`` entries."""

    __tablename__ = "audit_checkpoints"

    size: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    root: str = Field(max_length=64)
    ts: str = Field(max_length=32)
    note: str = Field(sa_column=Column(Text, nullable=False))


class ReleasedSetRow(SQLModel, table=True):
    """The differencing ledger: who contributed to one released measure of one cell.

    ``members`` is a serialised roaring bitmap of dense entity indices (never entity ids).
    """

    __tablename__ = "released_sets"
    __table_args__ = (Index("ix_released_sets_dataset_id_id", "dataset_id", "id"),)

    id: int | None = Field(default=None, sa_column=Column(WIDE, primary_key=True))
    dataset_id: str = Field(max_length=36)
    measure: str = Field(max_length=1024)
    size: int
    members: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    audit_seq: int = Field(sa_column=Column(WIDE, nullable=False))


class ReleaseFormRow(SQLModel, table=True):
    """The release audit's ledger: one linear form published or protected (see
    ``broker.disclosure.linked``). ``atoms`` is a serialised 64-bit roaring bitmap of atom ids
    (entity index and row number, never a value)."""

    __tablename__ = "release_forms"
    __table_args__ = (Index("ix_release_forms_dataset_id_id", "dataset_id", "id"),)

    id: int | None = Field(default=None, sa_column=Column(WIDE, primary_key=True))
    dataset_id: str = Field(max_length=36)
    quantity: str = Field(max_length=1024)
    kind: str = Field(max_length=16)
    atoms: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    #: A sum's value or protection interval, sealed (``Sealer``), bound to dataset and atoms.
    numbers: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    audit_seq: int = Field(sa_column=Column(WIDE, nullable=False))


class ReleaseCacheRow(SQLModel, table=True):
    """An earlier answer, returned identically when the same computation is asked again."""

    __tablename__ = "release_cache"

    dataset_id: str = Field(primary_key=True, max_length=36)
    fingerprint: str = Field(primary_key=True, max_length=64)
    body: str = Field(sa_column=Column(Text, nullable=False))
    audit_seq: int = Field(sa_column=Column(WIDE, nullable=False))
