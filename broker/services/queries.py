"""Use case: aggregate queries under a usage contract, released through disclosure control."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, replace
from datetime import datetime, time
from typing import Any, NoReturn

import rfc8785

from audit.entry import AuditEvent, format_ts
from broker.disclosure.cells import read_cells
from broker.disclosure.plan import plan_aggregate
from broker.disclosure.primary import apply_frequency_rule, count_reasons
from broker.domain.datasets import Dataset
from broker.domain.errors import PolicyDenied, Unavailable
from broker.domain.ports import Clock, DatasetStorage, QueryEngine, UnitOfWork, UnitOfWorkFactory
from broker.domain.principals import RequestContext
from broker.domain.queries import AggregateSpec, Cell, Release
from broker.policy.decisions import FlowDecision, Policies
from broker.services.contracts import contract_resource
from broker.services.guard import Guard
from contracts.model import Contract

ACTION = "query.aggregate"


def result_digest(nonce: str, cells: tuple[Cell, ...]) -> str:
    """Salted digest of the released cells: the consumer, who holds the nonce, can prove what
    it received; the audit log alone cannot be used to guess small released values."""
    payload = rfc8785.dumps([c.as_json() for c in cells])
    return hashlib.sha256(bytes.fromhex(nonce) + payload).hexdigest()


@dataclass(frozen=True, slots=True)
class _Context:
    """What a decision was taken on. ``target`` is the dataset of the contract named in the
    request even when the caller may not see it, so the provider's audit view shows attempts
    on its contracts; only ``contract`` and ``dataset`` (visible to the caller) reach policy."""

    contract: Contract | None
    dataset: Dataset | None
    target: tuple[str, int] | None
    decision: FlowDecision


@dataclass(frozen=True, slots=True)
class QueryService:
    """Runs aggregate queries; raw rows never leave the broker, only released cells."""

    uow: UnitOfWorkFactory
    guard: Guard
    policies: Policies
    storage: DatasetStorage
    engine: QueryEngine
    clock: Clock

    def aggregate(self, ctx: RequestContext, spec: AggregateSpec) -> Release:
        """Decide, compute, protect, audit (committed), then return.

        The decision is taken twice: once before the scan, and again inside the transaction
        that appends the release entry, so a revocation or an exhausted quota that happens
        while the engine works still stops the answer; appends are serialised, so the daily
        quota is exact under concurrency.
        """
        with self.uow() as uow:
            first = self._decide(uow, ctx, spec)
            if not first.decision.allow:
                self._refuse(uow, ctx, spec, first)
        if first.contract is None or first.dataset is None:  # the policy allowed; fail closed
            raise PolicyDenied(("no-active-contract",))
        dataset, decision = first.dataset, first.decision

        plan = plan_aggregate(spec, dataset.schema)
        with self.uow() as uow:
            location = uow.datasets.version_path(dataset.id, dataset.version)
        rows = self.engine.run(self.storage.resolve(location), plan.sql, plan.params,
                               plan.columns)
        cells = tuple(apply_frequency_rule(read_cells(plan, rows), decision.k))
        nonce = secrets.token_hex(16)

        with self.uow() as uow:
            second = self._decide(uow, ctx, spec)
            if not second.decision.allow:
                self._refuse(uow, ctx, spec, second)
            release = Release(
                query_id=ctx.request_id,
                cells=cells,
                k=decision.k,
                policy_revision=decision.revision,
                field_verdicts=decision.fields,
                result_nonce=nonce,
                suppressed=count_reasons(cells),
            )
            receipt = uow.audit.append(
                AuditEvent(
                    actor=ctx.principal.as_actor(),
                    action=ACTION,
                    request_id=ctx.request_id,
                    allowed=True,
                    policy_revision=decision.revision,
                    dataset_id=dataset.id,
                    version=dataset.version,
                    contract_id=first.contract.id,
                    purpose=spec.purpose,
                    query_fp=spec.fingerprint(),
                    disclosure={
                        "k": decision.k,
                        "cells_published": release.cells_published,
                        "cells_suppressed": release.cells_suppressed,
                        "result_digest": result_digest(nonce, cells),
                    },
                )
            )
            uow.commit()
        return replace(release, receipt=receipt)

    def explain(self, ctx: RequestContext, spec: AggregateSpec) -> FlowDecision:
        """The decision a query would get; nothing computed or released, the dry run audited."""
        with self.uow() as uow:
            result = self._decide(uow, ctx, spec)
            if result.decision.allow and result.dataset is not None:
                # Only once every field is known to be contracted, so that validation errors
                # cannot tell uncontracted fields from absent ones.
                plan_aggregate(spec, result.dataset.schema)
            uow.audit.append(self._event(ctx, spec, result, action="policy.explain"))
            uow.commit()
            return result.decision

    def _decide(self, uow: UnitOfWork, ctx: RequestContext, spec: AggregateSpec) -> _Context:
        """The flow decision for ``spec``; an engine failure is audited, then 503."""
        try:
            return self._evaluate(uow, ctx, spec)
        except Unavailable:
            uow.audit.append(AuditEvent(
                actor=ctx.principal.as_actor(), action=ACTION, request_id=ctx.request_id,
                allowed=False, reasons=("policy-engine-unavailable",),
                policy_revision=self.policies.revision, purpose=spec.purpose,
                query_fp=spec.fingerprint()))
            uow.commit()
            raise

    def _evaluate(self, uow: UnitOfWork, ctx: RequestContext, spec: AggregateSpec) -> _Context:
        requested = uow.contracts.get(spec.contract_id)
        target = None
        if requested is not None:
            named = uow.datasets.get(requested.dataset_id)
            target = (named.id, named.version) if named else None
        contract = requested
        if contract is not None and not self.guard.decide(
            uow, ctx, "contract.read", contract_resource(contract)
        ).allow:
            contract = None  # another organisation's contract is treated as absent
        dataset = uow.datasets.get(contract.dataset_id) if contract else None
        now = self.clock()
        usage = 0
        if contract is not None:
            usage = uow.audit.count_released(contract.id, ACTION, _day_start(now))
        document: dict[str, Any] = {
            "principal": {
                **ctx.principal.as_actor(),
                "registered": uow.orgs.get(ctx.principal.org) is not None,
            },
            "now": now.timestamp(),
            "usage": {"queries_today": usage},
            "contract": contract.policy_view(now) if contract else None,
            "dataset": _dataset_view(dataset),
            "query": {"purpose": spec.purpose, "uses": spec.field_uses()},
        }
        return _Context(contract, dataset, target, self.policies.flow(document))

    def _event(
        self, ctx: RequestContext, spec: AggregateSpec, result: _Context, *, action: str
    ) -> AuditEvent:
        return AuditEvent(
            actor=ctx.principal.as_actor(),
            action=action,
            request_id=ctx.request_id,
            allowed=result.decision.allow,
            reasons=result.decision.reasons,
            policy_revision=result.decision.revision,
            dataset_id=result.target[0] if result.target else None,
            version=result.target[1] if result.target else None,
            contract_id=spec.contract_id if result.target else None,
            purpose=spec.purpose,
            query_fp=spec.fingerprint(),
        )

    def _refuse(
        self, uow: UnitOfWork, ctx: RequestContext, spec: AggregateSpec, result: _Context
    ) -> NoReturn:
        uow.audit.append(self._event(ctx, spec, result, action=ACTION))
        uow.commit()
        raise PolicyDenied(result.decision.reasons, fields=result.decision.field_reasons)


def _day_start(now: datetime) -> str:
    return format_ts(datetime.combine(now.date(), time.min, tzinfo=now.tzinfo))


def _dataset_view(dataset: Dataset | None) -> dict[str, Any] | None:
    if dataset is None:
        return None
    return {
        "id": dataset.id,
        "entity_field": dataset.schema.entity_field,
        "fields": {
            f.name: {"type": f.type.value, "role": f.role.value,
                     "sensitivity": f.sensitivity.value}
            for f in dataset.schema.fields
        },
    }
