"""Who is asking: the authenticated principal and its roles."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from broker.domain.organisations import OrgKind


class Role(StrEnum):
    """The four roles of DESIGN.md section 1."""

    PROVIDER = "provider"
    CONSUMER = "consumer"
    AUDITOR = "auditor"
    ADMIN = "admin"


#: The organisation kinds each role may act for (DESIGN.md section 8, "Identity and limits");
#: ``admin`` acts only for the operator organisation, which has no kind of its own.
ROLE_KINDS: dict[Role, frozenset[OrgKind]] = {
    Role.CONSUMER: frozenset({OrgKind.DEPARTMENT}),
    Role.PROVIDER: frozenset({OrgKind.ENTERPRISE, OrgKind.DEPARTMENT}),
    Role.AUDITOR: frozenset({OrgKind.AUDITOR}),
    Role.ADMIN: frozenset(),
}


def misfit_roles(roles: frozenset[Role], kind: OrgKind | None, *, operator: bool) -> list[Role]:
    """The roles a token may not hold for its organisation: every role needs a registered
    organisation of a kind it fits, and ``admin`` the operator organisation (``operator``);
    the operator organisation holds no other role. ``kind`` is None when the organisation is
    not registered."""
    if operator:
        return sorted(r for r in roles if r is not Role.ADMIN)
    return sorted(r for r in roles if kind is None or kind not in ROLE_KINDS[r])


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
