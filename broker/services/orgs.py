"""Use cases: registering and listing organisations."""

from __future__ import annotations

from dataclasses import dataclass, field

from broker.domain.confusables import check_new_name
from broker.domain.datasets import fold_name
from broker.domain.errors import Conflict, InvalidInput, PolicyDenied
from broker.domain.names import ORG_ID
from broker.domain.organisations import Organisation, OrgKind
from broker.domain.ports import Clock, OrgKeyring, UnitOfWorkFactory
from broker.domain.principals import RequestContext, misfit_roles
from broker.domain.uscc import is_valid_uscc
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
    #: The operator organisation (``BROKER_OPERATOR_ORG``): the only home of ``admin``.
    operator_org: str = "broker-ops"
    #: Kinds of registered organisations, read once each: an organisation's kind never
    #: changes and organisations are never removed, so a cached kind is never stale.
    _kinds: dict[str, OrgKind] = field(default_factory=dict, repr=False, init=False)

    def check_operator(self) -> None:
        """Refuse to start when the operator organisation's id is a registered organisation's
        (a database from before the setting changed): its members' roles would not mean what
        its registration says."""
        with self.uow(read_only=True) as uow:
            if uow.orgs.get(self.operator_org) is not None:
                raise RuntimeError(
                    f"BROKER_OPERATOR_ORG is '{self.operator_org}', which is a registered "
                    "organisation here; choose another id for the operator.")

    def admit(self, ctx: RequestContext) -> None:
        """Refuse a token whose roles do not fit its organisation (DESIGN.md section 8):
        the refusal is audited and committed, then raised as a 403 with the reason
        ``role-not-allowed-for-org``. A signed token is not enough: an enterprise's token
        claiming ``auditor``, or an unregistered organisation's claiming ``admin``, acts
        for nobody."""
        p = ctx.principal
        operator = p.org == self.operator_org
        kind = None if operator else self._kind(p.org)
        misfits = misfit_roles(p.roles, kind, operator=operator)
        if not misfits:
            return
        reasons = ("role-not-allowed-for-org",) + (
            ("org-not-registered",) if kind is None and not operator else ())
        with self.uow() as uow:
            self.guard.deny(uow, ctx, "token.admit", reasons)
        held = ("the operator organisation" if operator else "an unregistered organisation"
                if kind is None else f"an organisation of kind '{kind}'")
        raise PolicyDenied(reasons, detail=(
            f"The token's role(s) {', '.join(misfits)} may not act for {held}; nothing was "
            "done. Consumers act for departments, providers for enterprises or departments, "
            "auditors for auditing bodies, and admin only for the operator organisation."))

    def _kind(self, org_id: str) -> OrgKind | None:
        """The registered kind of ``org_id``, None if it is not registered."""
        kind = self._kinds.get(org_id)
        if kind is None:
            with self.uow(read_only=True) as uow:
                org = uow.orgs.get(org_id)
            if org is None:
                return None
            kind = self._kinds.setdefault(org_id, org.kind)
        return kind

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
            if uscc is not None and not is_valid_uscc(uscc):
                raise InvalidInput("The USCC is not a unified social credit code with a valid "
                                   "check character.", fields=["uscc"])
            if org_id == self.operator_org:
                raise Conflict("This id is the operator organisation's, which exists without "
                               "registration.")
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
