"""Organisations taking part: enterprises, departments, auditors."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum


class OrgKind(StrEnum):
    """What kind of body an organisation is."""

    ENTERPRISE = "enterprise"
    DEPARTMENT = "department"
    AUDITOR = "auditor"


@dataclass(frozen=True, slots=True)
class Organisation:
    """A registered organisation; tokens name it in their ``org`` claim."""

    id: str
    name: str
    kind: OrgKind
    uscc: str | None
    public_key: str | None
    created_at: datetime
