"""Organisations: registration and listing."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import (
    BaseModel,
    StringConstraints,
)

from broker.api.schemas.common import (
    In,
    OrgId,
    Text,
    Uscc,
)
from broker.domain.organisations import Organisation, OrgKind


class OrgIn(In):
    """An organisation to register."""

    id: OrgId
    name: Text
    kind: OrgKind
    uscc: Uscc | None = None
    public_key: Annotated[str, StringConstraints(max_length=4096)] | None = None


class OrgOut(BaseModel):
    """A registered organisation."""

    id: str
    name: str
    kind: OrgKind
    uscc: str | None
    public_key: str | None
    created_at: datetime

    @classmethod
    def from_domain(cls, org: Organisation) -> OrgOut:
        """Response form of an organisation."""
        return cls(id=org.id, name=org.name, kind=org.kind, uscc=org.uscc,
                   public_key=org.public_key, created_at=org.created_at)
