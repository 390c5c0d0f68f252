"""Datasets, their versions and consented slices."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)

from broker.api.schemas.common import In
from broker.domain.datasets import FieldRole, FieldType, Sensitivity
from broker.domain.slices import Slice
from broker.services.datasets import DatasetView, SqlData, VersionView
from broker.services.provider_inputs import DatasetMetaIn


class FieldOut(BaseModel):
    """A declared column as the caller may see it."""

    name: str
    type: FieldType
    role: FieldRole
    sensitivity: Sensitivity
    hierarchy: str | None = None
    codes: list[str] | None = None
    bins: list[float] | None = None
    scale: int | None = Field(default=None, description="Decimal places of a number field: its "
                              "sums are exact and published rounded to them")


class DatasetOut(BaseModel):
    """Catalogue entry: metadata only, never data."""

    id: str
    name: str
    owner_org: str
    entity_field: str
    version: int
    rows: int
    sha256: str
    created_at: datetime
    fields: list[FieldOut]

    @classmethod
    def from_domain(cls, view: DatasetView) -> DatasetOut:
        """Response form of a catalogue view."""
        d = view.dataset
        return cls(
            id=d.id, name=d.name, owner_org=d.owner_org, entity_field=d.schema.entity_field,
            version=d.version, rows=d.rows, sha256=d.sha256, created_at=d.created_at,
            fields=[FieldOut.model_validate(f.as_json()) for f in view.fields],
        )


#: A SQL source as the operator named it in ``BROKER_SQL_SOURCES``.
SourceName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
#: A table, optionally schema-qualified; the source checks that it exists and quotes it.
TableName = Annotated[str, StringConstraints(min_length=1, max_length=256,
                                             pattern=r"^[^\x00-\x1f\x7f]+$")]
#: The text of one query; what it may read is for the service and the source to check.
SqlQuery = Annotated[str, StringConstraints(min_length=1, max_length=65_536)]


class SqlSourceIn(In):
    """Where a SQL import reads from: a configured source and exactly one table or query."""

    # Exactly one of the two, as the schema states it: a client's validator refuses both or
    # neither before the request is sent.
    model_config = ConfigDict(json_schema_extra={"oneOf": [
        {"required": ["table"], "properties": {"table": {"type": "string"},
                                               "query": {"type": "null"}}},
        {"required": ["query"], "properties": {"query": {"type": "string"},
                                               "table": {"type": "null"}}},
    ]})

    name: SourceName = Field(description="A source the operator configured (BROKER_SQL_SOURCES)")
    table: TableName | None = Field(default=None, description="A table (or schema.table)")
    query: SqlQuery | None = Field(default=None, description="One read-only SELECT")

    @model_validator(mode="after")
    def _one_of_table_or_query(self) -> SqlSourceIn:
        if (self.table is None) == (self.query is None):
            raise ValueError("give exactly one of 'table' and 'query'")
        return self

    def to_domain(self) -> SqlData:
        """Domain form."""
        return SqlData(source=self.name, table=self.table, query=self.query)


class DatasetImportIn(DatasetMetaIn):
    """A dataset snapshotted from a SQL source: the upload's ``meta`` fields and the source."""

    source: SqlSourceIn


class VersionImportIn(In):
    """A new version of a dataset, snapshotted from a SQL source."""

    source: SqlSourceIn


class VersionOut(BaseModel):
    """One stored version of a dataset: metadata only."""

    version: int
    rows: int
    sha256: str
    created_at: datetime

    @classmethod
    def from_domain(cls, view: VersionView) -> VersionOut:
        """Response form of a version."""
        return cls(version=view.version, rows=view.rows, sha256=view.sha256,
                   created_at=view.created_at)



class ConsentOut(BaseModel):
    """The consent record of a slice."""

    given_by: str
    given_at: datetime
    scope: str
    reference: str | None


class SliceOut(BaseModel):
    """A published slice."""

    id: str
    dataset_id: str
    name: str
    fields: list[str]
    predicate: list[dict[str, Any]]
    consent: ConsentOut
    created_at: datetime

    @classmethod
    def from_domain(cls, item: Slice) -> SliceOut:
        """Response form."""
        c = item.consent
        return cls(id=item.id, dataset_id=item.dataset_id, name=item.name,
                   fields=list(item.fields), predicate=item.predicate_json(),
                   consent=ConsentOut(given_by=c.given_by, given_at=c.given_at, scope=c.scope,
                                      reference=c.reference),
                   created_at=item.created_at)
