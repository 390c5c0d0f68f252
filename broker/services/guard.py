"""Access checks shared by every use case: ask the policy, audit a refusal, raise."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

from audit.entry import AuditEvent
from broker.domain.errors import NotFound, PolicyDenied, Unavailable
from broker.domain.ports import UnitOfWork
from broker.domain.principals import RequestContext
from broker.policy.decisions import AccessDecision, Policies


@dataclass(frozen=True, slots=True)
class Guard:
    """Asks ``broker.authz`` and turns a no into an audited, committed denial."""

    policies: Policies

    def decide(
        self, uow: UnitOfWork, ctx: RequestContext, action: str, resource: Mapping[str, Any]
    ) -> AccessDecision:
        """The authz decision for ``action`` on ``resource`` (no side effects)."""
        registered = uow.orgs.get(ctx.principal.org) is not None
        return self.policies.authorize(ctx.principal, action, resource, registered=registered)

    def require(
        self,
        uow: UnitOfWork,
        ctx: RequestContext,
        action: str,
        resource: Mapping[str, Any],
        **ids: Any,
    ) -> AccessDecision:
        """The decision if it allows; otherwise audit the denial, commit it and raise 403.

        If the policy engine fails the request is refused with 503, and that too is audited.
        """
        try:
            decision = self.decide(uow, ctx, action, resource)
        except Unavailable:
            self._record_denial(uow, ctx, action, ("policy-engine-unavailable",), ids)
            raise
        if not decision.allow:
            self.refuse(uow, ctx, action, decision.reasons, **ids)
        return decision

    def refuse(
        self,
        uow: UnitOfWork,
        ctx: RequestContext,
        action: str,
        reasons: tuple[str, ...],
        **ids: Any,
    ) -> NoReturn:
        """Record a denial durably, then raise PolicyDenied with the policy's reasons."""
        self._record_denial(uow, ctx, action, reasons, ids)
        raise PolicyDenied(reasons)

    def deny(
        self,
        uow: UnitOfWork,
        ctx: RequestContext,
        action: str,
        reasons: tuple[str, ...],
        **ids: Any,
    ) -> None:
        """Record a refusal durably (anything staged is dropped); the caller raises."""
        self._record_denial(uow, ctx, action, reasons, ids)

    def conceal(
        self,
        uow: UnitOfWork,
        ctx: RequestContext,
        action: str,
        reasons: tuple[str, ...],
        what: str,
        **ids: Any,
    ) -> NoReturn:
        """Record an attempt on an object the caller may not see, then answer as if absent.

        The caller learns nothing (the 404 is the same as for a missing object); security staff
        and the object's owner see the attempt in the log.
        """
        self._record_denial(uow, ctx, action, reasons, ids)
        raise NotFound(f"No such {what}.")

    def _record_denial(
        self,
        uow: UnitOfWork,
        ctx: RequestContext,
        action: str,
        reasons: tuple[str, ...],
        ids: dict[str, Any],
    ) -> None:
        uow.rollback()  # nothing staged before a refusal may ride along with its entry
        self._append(uow, ctx, action, allowed=False, reasons=reasons, ids=ids)
        uow.commit()

    def _append(
        self,
        uow: UnitOfWork,
        ctx: RequestContext,
        action: str,
        *,
        allowed: bool,
        reasons: tuple[str, ...],
        ids: dict[str, Any],
    ) -> None:
        uow.audit.append(
            AuditEvent(
                actor=ctx.principal.as_actor(),
                action=action,
                request_id=ctx.request_id,
                allowed=allowed,
                reasons=reasons,
                policy_revision=self.policies.revision,
                **ids,
            )
        )

    def record(self, uow: UnitOfWork, ctx: RequestContext, action: str, **ids: Any) -> None:
        """Append the entry for an allowed action (the caller commits)."""
        self._append(uow, ctx, action, allowed=True, reasons=(), ids=ids)
