"""Use case: aggregate queries under a usage contract, released through disclosure control."""

from __future__ import annotations

import hashlib
import json
import math
import secrets
import threading
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, time
from typing import Any

import pyarrow as pa
import rfc8785
from pyroaring import BitMap

from audit.entry import AuditEvent, format_ts
from broker.disclosure.cells import CellTable, read_table
from broker.disclosure.differencing import LedgerIndex
from broker.disclosure.levels import RAW_LEVELS, dimension_level, filter_level
from broker.disclosure.plan import SOURCE, CellPlan, plan_aggregate
from broker.disclosure.protect import protect
from broker.disclosure.pseudonyms import Pseudonymizer
from broker.disclosure.scopes import Scopes
from broker.domain.datasets import Dataset
from broker.domain.disclosure import Rules
from broker.domain.errors import BrokerError, PolicyDenied, Unavailable
from broker.domain.ports import (
    Clock,
    DatasetStorage,
    QueryEngine,
    Sealer,
    UnitOfWork,
    UnitOfWorkFactory,
)
from broker.domain.principals import RequestContext
from broker.domain.queries import AggregateSpec, Cell, CellStatus, Release
from broker.domain.slices import Slice
from broker.policy.decisions import FlowDecision, Policies
from broker.services.contracts import contract_resource, in_force_signatures
from broker.services.guard import Guard
from contracts.model import Contract, FieldForm

AGGREGATE = "query.aggregate"
EXPLAIN = "policy.explain"


def result_digest(nonce: str, cells: tuple[Cell, ...], remainder: Cell | None = None) -> str:
    """Salted digest of the released cells: the consumer, who holds the nonce, can prove what
    it received; the audit log alone cannot be used to guess small released values."""
    released: list[Any] = [c.as_json() for c in cells]
    if remainder is not None:
        released.append({"remainder": remainder.as_json()})
    payload = rfc8785.dumps(released)
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
    #: The consented slice the contract is limited to, if any.
    consented: Slice | None = None

    def planned(self, spec: AggregateSpec) -> AggregateSpec:
        """The query as it runs: the slice's row predicate added to the consumer's filters,
        inside the broker, where the consumer can neither see nor remove it."""
        if self.consented is None:
            return spec
        return replace(spec, filters=(*spec.filters, *self.consented.predicate))


@dataclass(frozen=True, slots=True)
class QueryService:
    """Runs aggregate queries; raw rows never leave the broker, only released cells.

    Every outcome is audited: a release, a policy denial, a query the planner rejects after the
    policy allowed it, an engine failure, and an unavailable policy engine.
    """

    uow: UnitOfWorkFactory
    guard: Guard
    policies: Policies
    storage: DatasetStorage
    engine: QueryEngine
    clock: Clock
    pseudonyms: Pseudonymizer
    sealer: Sealer  # the release cache holds dataset values: sealed at rest
    ledgers: LedgerCache = field(default_factory=lambda: LedgerCache())

    def aggregate(self, ctx: RequestContext, spec: AggregateSpec) -> Release:
        """Decide, compute, protect, audit (committed), then return.

        The decision is taken twice: once before the scan, and again inside the transaction
        that appends the release entry, with the audit head locked first, so a revocation or
        an exhausted quota that happens while the engine works still stops the answer, and the
        daily quota is exact under concurrency. The differencing guard works the same way:
        the table is protected against the ledger as read before the scan, and if another
        release entered the ledger meanwhile, protected again under the lock.
        """
        with self.uow() as uow:
            first = self._decide(uow, ctx, spec, AGGREGATE)
        if first.contract is None or first.dataset is None:  # the policy allowed; fail closed
            raise PolicyDenied(("no-active-contract",))
        dataset, decision = first.dataset, first.decision
        rules = _stricter(decision.rules, first.contract)
        opaque = frozenset(f for f, v in decision.fields.items() if v == "pseudonymize")
        runs = first.planned(spec)
        fingerprint = _computation_fp(dataset, runs, rules, opaque)

        try:
            plan = plan_aggregate(runs, dataset.schema, top=rules.top)
            with self.uow(read_only=True) as uow:
                earlier = uow.releases.cached(dataset.id, fingerprint)
                ledger = self.ledgers.refresh(uow, dataset.id)
            if earlier is not None:  # a tampered entry fails here, on the record
                _decode(self.sealer, dataset.id, fingerprint, earlier)
            outcome = None
            if earlier is None:
                result, scopes = self._run(plan, dataset, runs)
                table = read_table(plan, result, scopes)
                outcome = _protect(table, plan, rules, ledger, spec, opaque)
        except BrokerError as exc:
            self._record_failure(ctx, spec, first, AGGREGATE, exc.slug)
            raise
        except Exception:
            self._record_failure(ctx, spec, first, AGGREGATE, "engine-failed")
            raise
        nonce = secrets.token_hex(16)

        with self.uow() as uow:
            uow.audit.lock()
            self._decide(uow, ctx, spec, AGGREGATE)
            if earlier is None:
                earlier = uow.releases.cached(dataset.id, fingerprint)
            if earlier is None and outcome is not None:
                seen = ledger.last_id
                ledger = self.ledgers.refresh(uow, dataset.id)
                if ledger.last_id != seen:
                    outcome = _protect(table, plan, rules, ledger, spec, opaque)
            if earlier is not None:
                cells, remainder = _decode(self.sealer, dataset.id, fingerprint, earlier)
            elif outcome is not None:
                cells, remainder = outcome.cells, outcome.remainder
            else:  # unreachable: either an earlier answer or a fresh one exists
                raise Unavailable("No answer was computed; nothing was released.")
            # The stored answer keeps the keys in clear (inside the broker); each consumer's
            # copy gets its own contract's pseudonyms.
            released = _pseudonymized(self.pseudonyms, spec, decision, cells)
            release = Release(
                query_id=ctx.request_id,
                cells=released,
                k=rules.k_min,
                policy_revision=decision.revision,
                field_verdicts=decision.fields,
                result_nonce=nonce,
                remainder=remainder,
            )
            receipt = uow.audit.append(
                replace(
                    self._event(ctx, spec, first, AGGREGATE),
                    disclosure={
                        "k": rules.k_min,
                        "cells_published": release.cells_published,
                        "cells_suppressed": release.cells_suppressed,
                        "result_digest": result_digest(nonce, released, remainder),
                    },
                )
            )
            if outcome is not None and earlier is None:
                uow.releases.add(dataset.id, outcome.ledger, receipt.seq)
                body = _encode(self.sealer, dataset.id, fingerprint, cells, remainder)
                uow.releases.cache(dataset.id, fingerprint, body, receipt.seq)
            uow.commit()
        return replace(release, receipt=receipt)

    def explain(self, ctx: RequestContext, spec: AggregateSpec) -> FlowDecision:
        """The decision a query would get; nothing computed or released, the dry run audited."""
        with self.uow() as uow:
            self.guard.require(uow, ctx, EXPLAIN, {"kind": "query"},
                               contract_id=spec.contract_id)
            result = self._decide(uow, ctx, spec, EXPLAIN, refuse=False)
            event = self._event(ctx, spec, result, EXPLAIN)
            if result.decision.allow and result.dataset is not None:
                # Only once every field is known to be contracted, so that validation errors
                # cannot tell uncontracted fields from absent ones.
                try:
                    plan_aggregate(result.planned(spec), result.dataset.schema)
                except BrokerError as exc:
                    uow.audit.append(replace(event, allowed=False, reasons=(exc.slug,)))
                    uow.commit()
                    raise
            uow.audit.append(event)
            uow.commit()
        decision = result.decision
        if decision.allow and result.contract is not None:
            rules = _stricter(decision.rules, result.contract)
            decision = replace(decision, k=rules.k_min, rules=rules)
        return decision

    def _run(self, plan: CellPlan, dataset: Dataset, spec: AggregateSpec
             ) -> tuple[pa.Table, Scopes]:
        with self.uow(read_only=True) as uow:
            location = uow.datasets.version_path(dataset.id, dataset.version)
        scopes = Scopes.of(self.storage.dates(location, plan.periods), spec.group_by,
                           spec.filters)
        relations = {SOURCE: self.storage.scan(location)}  # decrypted in memory only
        return self.engine.run(relations, plan.sql, plan.params), scopes

    def _decide(
        self,
        uow: UnitOfWork,
        ctx: RequestContext,
        spec: AggregateSpec,
        action: str,
        *,
        refuse: bool = True,
    ) -> _Context:
        """The flow decision; a denial (when ``refuse``) or an engine failure is audited."""
        target = self._target(uow, spec)
        try:
            result = self._evaluate(uow, ctx, spec, target)
        except Unavailable:
            unknown = _Context(None, None, target, FlowDecision(False, (), self.policies.revision))
            self._deny(uow, ctx, spec, unknown, action, ("policy-engine-unavailable",))
            raise
        if refuse and not result.decision.allow:
            self._deny(uow, ctx, spec, result, action, result.decision.reasons)
            raise PolicyDenied(result.decision.reasons, fields=result.decision.field_reasons)
        return result

    @staticmethod
    def _target(uow: UnitOfWork, spec: AggregateSpec) -> tuple[str, int] | None:
        requested = uow.contracts.get(spec.contract_id)
        named = (uow.datasets.get(requested.terms.dataset_id, requested.terms.dataset_version)
                 if requested else None)
        return (named.id, named.version) if named else None

    def _evaluate(
        self,
        uow: UnitOfWork,
        ctx: RequestContext,
        spec: AggregateSpec,
        target: tuple[str, int] | None,
    ) -> _Context:
        contract = uow.contracts.get(spec.contract_id)
        if contract is not None and not self.guard.decide(
            uow, ctx, "contract.read", contract_resource(contract)
        ).allow:
            contract = None  # another organisation's contract is treated as absent
        dataset = (uow.datasets.get(contract.terms.dataset_id, contract.terms.dataset_version)
                   if contract else None)
        now = self.clock()
        usage = 0
        if contract is not None:
            usage = uow.audit.count_released(contract.id, AGGREGATE, _day_start(now))
        document: dict[str, Any] = {
            "principal": {
                **ctx.principal.as_actor(),
                "registered": uow.orgs.get(ctx.principal.org) is not None,
            },
            # Whole seconds, so that a repeated decision is a cache hit; the contract's window
            # is rounded inwards to match (Contract.policy_view), which never admits more.
            "now": math.floor(now.timestamp()),
            "usage": {"queries_today": usage},
            "contract": contract.policy_view(now) if contract else None,
            "dataset": _dataset_view(dataset),
            "query": _query_view(spec, dataset),
        }
        decision = _against_contract(self.policies.flow(document), contract, dataset, spec)
        consented = None
        if decision.allow and contract is not None:
            # Checked after the policy allowed, so a denial keeps the policy's reasons; only a
            # contract both parties' registered keys signed, as it now stands, is used.
            consented = uow.slices.get(contract.terms.slice_id) if contract.terms.slice_id else None
            refusal = _unusable(uow, contract, consented)
            if refusal is not None:
                decision = replace(decision, allow=False, reasons=(refusal,), rules=None)
        return _Context(contract, dataset, target, decision, consented)

    def _event(
        self, ctx: RequestContext, spec: AggregateSpec, result: _Context, action: str
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
            fields=tuple(sorted({use["field"] for use in spec.field_uses()})),
        )

    def _deny(
        self,
        uow: UnitOfWork,
        ctx: RequestContext,
        spec: AggregateSpec,
        result: _Context,
        action: str,
        reasons: tuple[str, ...],
    ) -> None:
        uow.rollback()
        event = self._event(ctx, spec, result, action)
        uow.audit.append(replace(event, allowed=False, reasons=reasons))
        uow.commit()

    def _record_failure(
        self, ctx: RequestContext, spec: AggregateSpec, result: _Context, action: str,
        reason: str,
    ) -> None:
        """An allowed query that could not be answered: on the record, in its own transaction."""
        with self.uow() as uow:
            self._deny(uow, ctx, spec, result, action, (reason,))


class LedgerCache:
    """This process's copy of each dataset's differencing ledger, brought up to date by id.

    Ledger rows are only written under the audit head lock, so they commit in id order and
    reading "everything after the last id seen" never skips one.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._indexes: dict[str, LedgerIndex] = {}

    def refresh(self, uow: UnitOfWork, dataset_id: str) -> LedgerIndex:
        """The dataset's ledger including every entry committed so far."""
        with self._lock:
            index = self._indexes.setdefault(dataset_id, LedgerIndex())
            index.add(uow.releases.since(dataset_id, index.last_id))
            return index.snapshot()


@dataclass(frozen=True, slots=True)
class _Outcome:
    cells: tuple[Cell, ...]
    remainder: Cell | None
    ledger: tuple[tuple[str, BitMap], ...]


def _protect(table: CellTable, plan: CellPlan, rules: Rules, ledger: LedgerIndex,
             spec: AggregateSpec, opaque: frozenset[str]) -> _Outcome:
    protected = protect(table, plan, rules, ledger=ledger, margins=spec.totals,
                        remainder=spec.remainder, opaque=opaque)
    cells = tuple(
        Cell(key=table.key(index), values=None, status=CellStatus.SUPPRESSED, reason=reason)
        if reason is not None
        else Cell(key=table.key(index), values=table.values(index, plan),
                  status=CellStatus.PUBLISHED)
        for index, reason in protected.released
    )
    remainder = None
    if spec.remainder and protected.remainder is not None:
        values, reason = protected.remainder
        remainder = (Cell(key={}, values=None, status=CellStatus.SUPPRESSED, reason=reason)
                     if reason is not None
                     else Cell(key={}, values=values, status=CellStatus.PUBLISHED))
    return _Outcome(cells, remainder, protected.ledger)


def _pseudonymized(pseudonyms: Pseudonymizer, spec: AggregateSpec, decision: FlowDecision,
                   cells: tuple[Cell, ...]) -> tuple[Cell, ...]:
    """Keys of the fields the policy lets out pseudonymized, replaced; the cells then ordered by
    their released keys, since the order of a code list would otherwise undo the pseudonyms."""
    hidden = {d.field: d for d in spec.group_by if decision.fields.get(d.field) == "pseudonymize"}
    if not hidden:
        return cells
    out = pseudonyms.cells(spec.contract_id, cells, hidden)
    return tuple(sorted(out, key=lambda c: (len(c.key), sorted((k, str(v))
                                                                for k, v in c.key.items()))))


def _stricter(rules: Rules | None, contract: Contract) -> Rules:
    """The policy's thresholds, never laxer than the contract's own (fail closed)."""
    if rules is None:
        raise Unavailable("The policy set no disclosure rules; nothing was released.")
    return Rules(
        k_min=max(rules.k_min, contract.terms.k_min),
        dominance_n=max(rules.dominance_n, contract.terms.dominance.n),
        dominance_k=min(rules.dominance_k, contract.terms.dominance.k),
        p_percent=max(rules.p_percent, contract.terms.dominance.p),
        protection_percent=rules.protection_percent,
    )


def _computation_fp(dataset: Dataset, spec: AggregateSpec, rules: Rules,
                    opaque: frozenset[str]) -> str:
    """What identifies a computation: data version, query shape, thresholds and which keys
    are hidden behind pseudonyms, not who asks."""
    body: dict[str, Any] = {
        "dataset": [dataset.id, dataset.version],
        "query": {k: v for k, v in spec.canonical().items() if k not in ("contract_id",
                                                                          "purpose")},
        "rules": asdict(rules),
        "opaque": sorted(opaque),
    }
    return hashlib.sha256(rfc8785.dumps(body)).hexdigest()


def _encode(sealer: Sealer, dataset_id: str, fingerprint: str, cells: tuple[Cell, ...],
            remainder: Cell | None) -> str:
    """A release-cache body: the answer as JSON, sealed for its row (keys are dataset values)."""
    body = json.dumps({"cells": [c.as_json() for c in cells],
                       "remainder": remainder.as_json() if remainder else None})
    return sealer.seal(body, context=_cache_context(dataset_id, fingerprint))


def _decode(sealer: Sealer, dataset_id: str, fingerprint: str, sealed: str
            ) -> tuple[tuple[Cell, ...], Cell | None]:
    """The answer in a release-cache body; ``DatasetUnreadable`` if it does not open."""
    data = json.loads(sealer.open(sealed, context=_cache_context(dataset_id, fingerprint)))
    remainder = Cell.from_json(data["remainder"]) if data["remainder"] else None
    return tuple(Cell.from_json(c) for c in data["cells"]), remainder



def _cache_context(dataset_id: str, fingerprint: str) -> str:
    """What a cached answer is bound to: its row, so it cannot be moved to another."""
    return f"release-cache/{dataset_id}/{fingerprint}"


def _day_start(now: datetime) -> str:
    return format_ts(datetime.combine(now.date(), time.min, tzinfo=now.tzinfo))


def _query_view(spec: AggregateSpec, dataset: Dataset | None) -> dict[str, Any]:
    """The query as the policies see it: its structure and how coarse each use is, never a
    filter value."""
    fields = {f.name: f for f in dataset.schema.fields} if dataset else {}
    types = {name: f.type for name, f in fields.items()}
    return {
        "purpose": spec.purpose,
        "group_by": [{"field": d.field, "level": dimension_level(d, fields.get(d.field))}
                     for d in spec.group_by],
        "measures": [{"fn": m.fn.value, "fields": list(m.fields)} for m in spec.measures],
        "filters": [
            {"field": f.field, "op": f.op.value,
             "level": filter_level(f.op.value, f.value, types[f.field])
             if f.field in types else "raw"}
            for f in spec.filters
        ],
    }


def _against_contract(decision: FlowDecision, contract: Contract | None,
                      dataset: Dataset | None, spec: AggregateSpec) -> FlowDecision:
    """The policy's verdicts checked against the contract's forms, as a second line.

    A field the contract lets out only generalized must be grouped at a coarser level; one it
    lets out only pseudonymized must get the pseudonymize verdict; an aggregate-only field is
    never a key. An allow that breaks this is turned into a denial.
    """
    if not decision.allow or contract is None or dataset is None:
        return decision
    declared = {f.name: f for f in dataset.schema.fields}
    for d in spec.group_by:
        form = contract.terms.fields.get(d.field)
        verdict = decision.fields.get(d.field)
        if (form is None or form is FieldForm.AGGREGATE
                or (form is FieldForm.GENERALIZE
                    and dimension_level(d, declared.get(d.field)) in RAW_LEVELS)
                or (form is FieldForm.PSEUDONYMIZE) != (verdict == "pseudonymize")):
            return replace(decision, allow=False, reasons=("verdict-contract-mismatch",),
                           rules=None)
    return decision


def _unusable(uow: UnitOfWork, contract: Contract, consented: Slice | None) -> str | None:
    """Why an allowed contract still may not be used, or None: a signature that does not
    verify, or a slice that is missing or no longer covers the contracted fields."""
    if not in_force_signatures(uow, contract):
        return "contract-signature-invalid"
    if contract.terms.slice_id is not None and (
        consented is None or consented.dataset_id != contract.terms.dataset_id
        or not set(contract.terms.fields) <= set(consented.fields)
    ):
        return "slice-unavailable"
    return None


def _dataset_view(dataset: Dataset | None) -> dict[str, Any] | None:
    if dataset is None:
        return None
    return {
        "id": dataset.id,
        "entity_field": dataset.schema.entity_field,
        "fields": {
            f.name: {"type": f.type.value, "role": f.role.value,
                     "sensitivity": f.sensitivity.value, "hierarchy": f.hierarchy}
            for f in dataset.schema.fields
        },
    }


