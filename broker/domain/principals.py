"""Who is asking: the authenticated principal and its roles."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class Role(StrEnum):
    """The four roles of DESIGN.md section 1."""

    PROVIDER = "provider"
    CONSUMER = "consumer"
    AUDITOR = "auditor"
    ADMIN = "admin"


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller: token issuer and subject, organisation and roles."""

    iss: str
    sub: str
    org: str
    roles: frozenset[Role]

    def has_role(self, role: Role) -> bool:
        """Whether the token grants ``role``."""
        return role in self.roles

    def as_actor(self) -> dict[str, Any]:
        """The actor object bound into audit entries and policy inputs."""
        return {"iss": self.iss, "sub": self.sub, "org": self.org, "roles": sorted(self.roles)}


@dataclass(frozen=True, slots=True)
class RequestContext:
    """A principal and the server-assigned id of the request it made."""

    principal: Principal
    request_id: str
