"""Use cases: registering and listing organisations."""

from __future__ import annotations

from dataclasses import dataclass

from broker.domain.confusables import check_new_name
from broker.domain.datasets import fold_name
from broker.domain.errors import Conflict, InvalidInput
from broker.domain.names import ORG_ID
from broker.domain.organisations import Organisation, OrgKind
from broker.domain.ports import Clock, OrgKeyring, UnitOfWorkFactory
from broker.domain.principals import RequestContext
from broker.services.guard import Guard
from contracts.terms import BadKey, encode_public_key, parse_public_key


@dataclass(frozen=True, slots=True)
class OrgService:
    """Organisation registry (the operator's job)."""

    uow: UnitOfWorkFactory
    guard: Guard
    clock: Clock
    #: Where the broker keeps keys for organisations registered without one (embedded demo);
    #: None in production, where every organisation brings its own public key.
    keyring: OrgKeyring | None = None

    def register(
        self,
        ctx: RequestContext,
        *,
        org_id: str,
        name: str,
        kind: OrgKind,
        uscc: str | None = None,
        public_key: str | None = None,
    ) -> Organisation:
        """Register an organisation so its members' tokens can act for it.

        ``public_key`` is the Ed25519 key the organisation signs contracts with (PEM or base64
        of the raw 32 bytes; stored as base64). Without one, the broker generates and holds a
        key for it when it keeps a keyring (embedded demo); otherwise the organisation cannot
        sign, and no contract of it can come into force until it registers a key.
        """
        if public_key is not None:
            try:
                public_key = encode_public_key(parse_public_key(public_key))
            except BadKey as exc:
                raise InvalidInput(str(exc), fields=["public_key"]) from exc
        with self.uow() as uow:
            self.guard.require(uow, ctx, "org.register", {})
            if not ORG_ID.fullmatch(org_id):
                raise InvalidInput("Organisation ids are 2-63 lowercase letters, digits or '-'.")
            if uow.orgs.get(org_id) is not None:
                raise Conflict("An organisation with this id is already registered.")
            # Members and auditors tell organisations apart by name: no two may look alike.
            check_new_name(name, [o.name for o in uow.orgs.all()], "Organisation",
                           key=fold_name)
            if public_key is None and self.keyring is not None:
                public_key = self.keyring.create(org_id)
            org = Organisation(
                id=org_id,
                name=name,
                kind=kind,
                uscc=uscc,
                public_key=public_key,
                created_at=self.clock(),
            )
            uow.orgs.add(org)
            self.guard.record(uow, ctx, "org.register")
            uow.commit()
            return org

    def list(self, ctx: RequestContext) -> list[Organisation]:
        """The directory of organisations, for the operator and registered organisations."""
        with self.uow() as uow:
            self.guard.require(uow, ctx, "org.read", {"kind": "org"})
        with self.uow(read_only=True) as uow:
            return uow.orgs.all()
