"""Use case: aggregate queries under a usage contract, released through disclosure control."""

from __future__ import annotations

import secrets
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, time

import pyarrow as pa
from pyroaring import BitMap

from audit.entry import AuditEvent, format_ts
from broker.disclosure.cells import CellTable, Index, measure_keys, read_table
from broker.disclosure.differencing import Ledger, LedgerIndex
from broker.disclosure.linking import History, link
from broker.disclosure.plan import SOURCE, CellPlan, plan_aggregate
from broker.disclosure.protect import Pooled, Protected, protect, repool
from broker.disclosure.pseudonyms import Pseudonymizer
from broker.disclosure.scopes import Scopes
from broker.domain.datasets import Dataset
from broker.domain.disclosure import Rules
from broker.domain.errors import BrokerError, PolicyDenied, Unavailable
from broker.domain.ledger import Form
from broker.domain.levels import RAW_LEVELS, dimension_level
from broker.domain.ports import (
    Clock,
    DatasetStorage,
    QueryEngine,
    Sealer,
    UnitOfWork,
    UnitOfWorkFactory,
)
from broker.domain.principals import RequestContext
from broker.domain.queries import (
    AggregateSpec,
    Cell,
    CellStatus,
    JoinedSpec,
    Release,
    SuppressionReason,
)
from broker.domain.slices import Slice
from broker.observability.spans import engine_span
from broker.policy.decisions import FlowDecision, Policies, Verdict
from broker.policy.inputs import FlowRequest
from broker.services.contracts import contract_resource, in_force_signatures
from broker.services.guard import Guard
from broker.services.releases import (
    Answer,
    LedgerCache,
    LinkCache,
    ReleaseCache,
    computation_fingerprint,
    result_digest,
)
from contracts.model import Contract, FieldForm

AGGREGATE = "query.aggregate"
CROSSCHECK = "query.crosscheck"
EXPLAIN = "policy.explain"
#: A released answer fetched again as a file (the console's downloads); never a release.
DOWNLOAD = "query.download"
#: The actions a contract's daily quota counts.
QUOTA_ACTIONS = (AGGREGATE, CROSSCHECK)


@dataclass(frozen=True, slots=True)
class _Decided:
    """A flow decision and what it was taken on. ``target`` is the dataset of the contract
    named in the request even when the caller may not see it, so the provider's audit view
    shows attempts on its contracts; only ``contract`` and ``dataset`` (visible to the
    caller) reach policy."""

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

    def usable(self) -> tuple[Contract, Dataset]:
        """The contract and dataset an allowed decision was taken on; fail closed when the
        policy allowed without either."""
        if self.contract is None or self.dataset is None:
            raise PolicyDenied(("no-active-contract",))
        return self.contract, self.dataset


@dataclass(frozen=True, slots=True)
class _Protected:
    """A freshly computed answer, what the differencing ledger keeps of it, and the outcome
    per cell it was made from (for the release audit under the lock)."""

    answer: Answer
    ledger_entries: tuple[tuple[str, BitMap], ...]
    outcome: Protected


@dataclass(frozen=True, slots=True)
class _FreshTable:
    """A cell table computed for this request, and its protection against the ledger as it
    stood before the scan (``ledger``)."""

    table: CellTable
    plan: CellPlan
    ledger: LedgerIndex
    protected: _Protected


@dataclass(frozen=True, slots=True)
class _Computation:
    """What the engine work produced: the thresholds and pseudonymized keys it ran with, and
    either the earlier answer to the same computation or a freshly protected table."""

    rules: Rules
    opaque: frozenset[str]
    fingerprint: str
    earlier: Answer | None
    fresh: _FreshTable | None


@dataclass(frozen=True, slots=True)
class Prediction:
    """How a query's cells would come out if it ran now: published, and withheld by reason."""

    published: int
    suppressed: dict[str, int]

    @classmethod
    def of(cls, answer: Answer) -> Prediction:
        """The counts of an answer's cells (the remainder row not counted)."""
        reasons = Counter(c.reason.value for c in answer.cells if c.reason is not None)
        return cls(sum(c.reason is None for c in answer.cells), dict(reasons))


@dataclass(frozen=True, slots=True)
class Explanation:
    """A dry run: the flow decision, and when it allows, the predicted outcome."""

    decision: FlowDecision
    predicted: Prediction | None = None


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
    ledgers: LedgerCache = field(default_factory=LedgerCache)
    links: LinkCache = field(default_factory=LinkCache)

    @property
    def answers(self) -> ReleaseCache:
        """Earlier answers, sealed with this service's sealer."""
        return ReleaseCache(self.sealer)

    def aggregate(self, ctx: RequestContext, spec: AggregateSpec) -> Release:
        """Decide, compute (or reuse an earlier answer), then commit the release: audited,
        committed, and only then returned.

        The decision is taken twice: once before the scan, and again inside the transaction
        that appends the release entry, with the audit head locked first, so a revocation or
        an exhausted quota that happens while the engine works still stops the answer, and the
        daily quota is exact under concurrency. The differencing guard works the same way:
        the table is protected against the ledger as read before the scan, and if another
        release entered the ledger meanwhile, protected again under the lock.
        """
        decided = self._decide_to_run(ctx, spec)
        computation = self._compute_or_reuse(ctx, spec, decided)
        return self._commit_release(ctx, spec, decided, computation)

    def _decide_to_run(self, ctx: RequestContext, spec: AggregateSpec) -> _Decided:
        """The flow decision before any work; a denial is audited and raised."""
        with self.uow() as uow:
            decided = self._decide(uow, ctx, spec, AGGREGATE)
        decided.usable()
        return decided

    def _compute_or_reuse(self, ctx: RequestContext, spec: AggregateSpec,
                          decided: _Decided) -> _Computation:
        """Plan the query; reuse the earlier answer to the same computation, or run the
        engine and protect the cell table against the ledger. A failure is audited."""
        try:
            return self._computation(spec, decided)
        except BrokerError as exc:
            self._record_failure(ctx, spec, decided, AGGREGATE, exc.slug)
            raise
        except Exception:
            self._record_failure(ctx, spec, decided, AGGREGATE, "engine-failed")
            raise

    def _computation(self, spec: AggregateSpec, decided: _Decided) -> _Computation:
        """The earlier answer to the same computation, or a fresh table protected against the
        differencing ledger as it stands."""
        contract, dataset = decided.usable()
        rules = _stricter(decided.decision.rules, contract)
        opaque = frozenset(f for f, v in decided.decision.fields.items()
                           if v is Verdict.PSEUDONYMIZE)
        planned = decided.planned(spec)
        fingerprint = computation_fingerprint(dataset, planned, rules, opaque)
        plan = plan_aggregate(planned, dataset.schema, top=rules.top)
        with self.uow(read_only=True) as uow:
            earlier = self.answers.find(uow, dataset.id, fingerprint)
            ledger = self.ledgers.refresh(uow, dataset.id)
        if earlier is not None:
            return _Computation(rules, opaque, fingerprint, earlier, None)
        result, scopes = self._run(plan, dataset, planned)
        table = read_table(plan, result, scopes)
        return _Computation(rules, opaque, fingerprint, None, _FreshTable(
            table, plan, ledger, _protect(table, plan, rules, ledger, spec, opaque)))

    def _commit_release(self, ctx: RequestContext, spec: AggregateSpec, decided: _Decided,
                        computation: _Computation) -> Release:
        """Under the audit head lock: decide again, settle the answer, append the release
        entry, enter the ledger and the answer cache, and commit before returning."""
        _, dataset = decided.usable()
        decision, rules = decided.decision, computation.rules
        nonce = secrets.token_hex(16)
        with self.uow() as uow, self.links.audit(dataset.id) as systems:
            uow.audit.lock()
            self._decide(uow, ctx, spec, AGGREGATE)
            answer, protected = self._settled_answer(uow, spec, dataset, computation)
            forms: list[Form] = []
            pooled_entries: list[tuple[str, BitMap]] = []
            if protected is not None and computation.fresh is not None:
                fresh = computation.fresh
                answer, forms, pooled_entries = _linked(
                    fresh.table, fresh.plan, spec, protected,
                    systems.load(uow, measure_keys(fresh.plan), self.sealer),
                    rules, self.ledgers.refresh(uow, dataset.id))
            # The stored answer keeps the keys in clear (inside the broker); each consumer's
            # copy gets its own contract's pseudonyms.
            released = _pseudonymized(self.pseudonyms, spec, decision, answer.cells)
            release = Release(
                query_id=ctx.request_id,
                cells=released,
                k=rules.k_min,
                policy_revision=decision.revision,
                field_verdicts=decision.fields,
                result_nonce=nonce,
                remainder=answer.remainder,
            )
            receipt = uow.audit.append(
                replace(
                    self._event(ctx, spec, decided, AGGREGATE),
                    disclosure={
                        "k": rules.k_min,
                        "cells_published": release.cells_published,
                        "cells_suppressed": release.cells_suppressed,
                        "result_digest": result_digest(nonce, released, answer.remainder),
                    },
                )
            )
            if protected is not None:
                uow.releases.add(dataset.id, (*protected.ledger_entries, *pooled_entries),
                                 receipt.seq)
                systems.record(uow, forms, receipt.seq, self.sealer)
                self.answers.keep(uow, dataset.id, computation.fingerprint, answer,
                                  receipt.seq)
            uow.commit()
            systems.committed()
        return replace(release, receipt=receipt)

    def _settled_answer(self, uow: UnitOfWork, spec: AggregateSpec, dataset: Dataset,
                        computation: _Computation) -> tuple[Answer, _Protected | None]:
        """The answer to release, with the lock held: an earlier answer to the same
        computation if there is one now, else the fresh table, protected again if another
        release entered the ledger since it was protected (with what to enter in the ledger)."""
        earlier = computation.earlier
        if earlier is None:
            earlier = self.answers.find(uow, dataset.id, computation.fingerprint)
        if earlier is not None:
            return earlier, None
        fresh = computation.fresh
        if fresh is None:  # unreachable: either an earlier answer or a fresh one exists
            raise Unavailable("No answer was computed; nothing was released.")
        ledger = self.ledgers.refresh(uow, dataset.id)
        protected = fresh.protected
        if ledger.last_id != fresh.ledger.last_id:
            protected = _protect(fresh.table, fresh.plan, computation.rules, ledger, spec,
                                 computation.opaque)
        return protected.answer, protected

    def record_invalid(self, ctx: RequestContext, action: str) -> None:
        """A query the API schema refused, on the record as the caller's refused ``action``
        (nothing of its body: it did not parse)."""
        with self.uow() as uow:
            uow.audit.append(AuditEvent(
                actor=ctx.principal.as_actor(), action=action, request_id=ctx.request_id,
                allowed=False, reasons=("invalid-input",),
                policy_revision=self.policies.revision))
            uow.commit()

    def quota_left(self, ctx: RequestContext, contract_ids: Sequence[str]) -> dict[str, int]:
        """Queries left today under each of the caller's own contracts among ``contract_ids``
        (as the flow policy counts them); a contract the caller is not the consumer of is left
        out. Read-only: the contracts' read is the caller's to audit."""
        now = self.clock()
        left: dict[str, int] = {}
        with self.uow(read_only=True) as uow:
            for contract_id in contract_ids:
                contract = uow.contracts.get(contract_id)
                if contract is None or contract.consumer_org != ctx.principal.org or not (
                        self.guard.decide(uow, ctx, "contract.read",
                                          contract_resource(contract)).allow):
                    continue
                used = uow.audit.count_released(contract.id, QUOTA_ACTIONS, _day_start(now))
                left[contract.id] = max(0, contract.terms.max_queries_per_day - used)
        return left

    def record_download(self, ctx: RequestContext, contract_id: str | None) -> None:
        """A download of an answer already released to the caller under ``contract_id``, on
        the record (nothing is released again); ``None`` when the caller holds no such answer,
        which is concealed as absent (the same audited 404 whether it never existed, expired,
        or was another principal's)."""
        with self.uow() as uow:
            if contract_id is None:
                self.guard.conceal(uow, ctx, DOWNLOAD, ("not-found",), "result")
            target = named_target(uow, contract_id)
            self.guard.record(uow, ctx, DOWNLOAD, contract_id=contract_id,
                              dataset_id=target[0] if target else None,
                              version=target[1] if target else None)
            uow.commit()

    def explain(self, ctx: RequestContext, spec: AggregateSpec) -> Explanation:
        """The decision a query would get and, when allowed, how its cells would come out if
        it ran now; nothing released, nothing recorded but the dry run's audit entry."""
        with self.uow() as uow:
            self.guard.require(uow, ctx, EXPLAIN, {"kind": "query"},
                               contract_id=spec.contract_id)
            decided = self._decide(uow, ctx, spec, EXPLAIN, refuse=False)
            event = self._event(ctx, spec, decided, EXPLAIN)
            if decided.decision.allow and decided.dataset is not None:
                # Only once every field is known to be contracted, so that validation errors
                # cannot tell uncontracted fields from absent ones.
                try:
                    plan_aggregate(decided.planned(spec), decided.dataset.schema)
                except BrokerError as exc:
                    uow.audit.append(replace(event, allowed=False, reasons=(exc.slug,)))
                    uow.commit()
                    raise
            uow.audit.append(event)
            uow.commit()
        decision = decided.decision
        if not decision.allow or decided.contract is None:
            return Explanation(decision)
        rules = _stricter(decision.rules, decided.contract)
        return Explanation(replace(decision, k=rules.k_min, rules=rules),
                           self._predict(spec, decided))

    def _predict(self, spec: AggregateSpec, decided: _Decided) -> Prediction:
        """How the query's cells would come out now: the earlier answer to the same
        computation if there is one, else the table protected and audited against everything
        published, every change of the release audit then undone."""
        _, dataset = decided.usable()
        computation = self._computation(spec, decided)
        if computation.earlier is not None:
            return Prediction.of(computation.earlier)
        fresh = computation.fresh
        if fresh is None:  # unreachable: either an earlier answer or a fresh one exists
            raise Unavailable("No answer was computed.")
        with self.uow(read_only=True) as uow, self.links.audit(dataset.id) as systems:
            answer, _, _ = _linked(fresh.table, fresh.plan, spec, fresh.protected,
                                   systems.load(uow, measure_keys(fresh.plan), self.sealer),
                                   computation.rules, fresh.ledger)
        return Prediction.of(answer)

    def _run(self, plan: CellPlan, dataset: Dataset, spec: AggregateSpec
             ) -> tuple[pa.Table, Scopes]:
        """Run the plan over the dataset version, decrypted in memory only; with the date
        spans that scope the differencing guard."""
        with self.uow(read_only=True) as uow:
            location = uow.datasets.version_path(dataset.id, dataset.version)
        scopes = Scopes.of(self.storage.dates(location, plan.periods), spec.group_by,
                           spec.filters)
        relations = {SOURCE: self.storage.scan(location)}  # decrypted in memory only
        with engine_span(type(self.engine).__name__, dataset.id) as rows:
            result = self.engine.run(relations, plan.sql, plan.params)
            rows(result.num_rows)
        return result, scopes

    def _decide(
        self,
        uow: UnitOfWork,
        ctx: RequestContext,
        spec: AggregateSpec,
        action: str,
        *,
        refuse: bool = True,
    ) -> _Decided:
        """The flow decision; a denial (when ``refuse``) or an engine failure is audited."""
        target = self._target(uow, spec)
        try:
            decided = self._evaluate(uow, ctx, spec, target)
        except Unavailable:
            unknown = _Decided(None, None, target, FlowDecision(False, (), self.policies.revision))
            self._deny(uow, ctx, spec, unknown, action, ("policy-engine-unavailable",))
            raise
        if refuse and not decided.decision.allow:
            self._deny(uow, ctx, spec, decided, action, decided.decision.reasons)
            raise PolicyDenied(decided.decision.reasons, fields=decided.decision.field_reasons)
        return decided

    @staticmethod
    def _target(uow: UnitOfWork, spec: AggregateSpec) -> tuple[str, int] | None:
        return named_target(uow, spec.contract_id)

    def _evaluate(
        self,
        uow: UnitOfWork,
        ctx: RequestContext,
        spec: AggregateSpec,
        target: tuple[str, int] | None,
    ) -> _Decided:
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
            usage = uow.audit.count_released(contract.id, QUOTA_ACTIONS, _day_start(now))
        request = FlowRequest(
            ctx.principal, registered=uow.orgs.get(ctx.principal.org) is not None, now=now,
            queries_today=usage, contract=contract, dataset=dataset, spec=spec)
        decision = _against_contract(self.policies.flow_at(request), contract, dataset, spec)
        consented = None
        if decision.allow and contract is not None:
            # Checked after the policy allowed, so a denial keeps the policy's reasons; only a
            # contract both parties' registered keys signed, as it now stands, is used.
            consented = uow.slices.get(contract.terms.slice_id) if contract.terms.slice_id else None
            refusal = _unusable(uow, contract, consented)
            if refusal is not None:
                decision = replace(decision, allow=False, reasons=(refusal,), rules=None)
        return _Decided(contract, dataset, target, decision, consented)

    def _event(
        self, ctx: RequestContext, spec: AggregateSpec, decided: _Decided, action: str
    ) -> AuditEvent:
        """The audit entry of this request: who, what, on which data, decided how."""
        return AuditEvent(
            actor=ctx.principal.as_actor(),
            action=action,
            request_id=ctx.request_id,
            allowed=decided.decision.allow,
            reasons=decided.decision.reasons,
            policy_revision=decided.decision.revision,
            dataset_id=decided.target[0] if decided.target else None,
            version=decided.target[1] if decided.target else None,
            contract_id=spec.contract_id if decided.target else None,
            purpose=spec.purpose,
            query_fp=spec.fingerprint(),
            fields=tuple(sorted({use["field"] for use in spec.field_uses()})),
        )

    def _deny(
        self,
        uow: UnitOfWork,
        ctx: RequestContext,
        spec: AggregateSpec,
        decided: _Decided,
        action: str,
        reasons: tuple[str, ...],
    ) -> None:
        record_denial(uow, self._event(ctx, spec, decided, action), reasons)

    def _record_failure(
        self, ctx: RequestContext, spec: AggregateSpec, decided: _Decided, action: str,
        reason: str,
    ) -> None:
        """An allowed query that could not be answered: on the record, in its own transaction."""
        with self.uow() as uow:
            self._deny(uow, ctx, spec, decided, action, (reason,))


def _protect(table: CellTable, plan: CellPlan, rules: Rules, ledger: Ledger,
             spec: AggregateSpec | JoinedSpec, opaque: frozenset[str]) -> _Protected:
    protected = protect(table, plan, rules, ledger=ledger, margins=spec.totals,
                        remainder=spec.remainder, opaque=opaque)
    answer = _answer(table, plan, spec, protected.released, protected.remainder)
    return _Protected(answer, protected.ledger, protected)


def _answer(table: CellTable, plan: CellPlan, spec: AggregateSpec | JoinedSpec,
            released: Sequence[tuple[Index, SuppressionReason | None]],
            pooled: Pooled | None) -> Answer:
    """The cells and the remainder row as released: values only where nothing withholds."""
    cells = tuple(
        Cell(key=table.key(index), values=None, status=CellStatus.SUPPRESSED, reason=reason)
        if reason is not None
        else Cell(key=table.key(index), values=table.values(index, plan),
                  status=CellStatus.PUBLISHED)
        for index, reason in released
    )
    remainder = None
    if spec.remainder and pooled is not None:
        values, reason = pooled
        remainder = (Cell(key={}, values=None, status=CellStatus.SUPPRESSED, reason=reason)
                     if reason is not None
                     else Cell(key={}, values=values, status=CellStatus.PUBLISHED))
    return Answer(cells, remainder)


def _linked(table: CellTable, plan: CellPlan, spec: AggregateSpec, protected: _Protected,
            history: History, rules: Rules, ledger: Ledger
            ) -> tuple[Answer, list[Form], list[tuple[str, BitMap]]]:
    """The answer after the release audit against everything published from the dataset:
    cells that would disclose withheld as ``linked``, the forms to record, and what the
    differencing ledger keeps of the remainder row (pooled again over every cell the audit
    left unpublished)."""
    pooled = protected.outcome.remainder
    asked = spec.remainder and pooled is not None and pooled[1] is None
    linked = link(table, measure_keys(plan), protected.outcome.released, history,
                  protected.outcome.levels, remainder=asked)
    entries: list[tuple[str, BitMap]] = []
    if asked and not linked.remainder:
        pooled = (None, SuppressionReason.LINKED)
    elif asked:
        pooled, entries = repool(table, plan, rules, linked.released, ledger)
    return _answer(table, plan, spec, linked.released, pooled), linked.forms, entries


def _pseudonymized(pseudonyms: Pseudonymizer, spec: AggregateSpec, decision: FlowDecision,
                   cells: tuple[Cell, ...]) -> tuple[Cell, ...]:
    """Keys of the fields the policy lets out pseudonymized, replaced; the cells then ordered by
    their released keys, since the order of a code list would otherwise undo the pseudonyms."""
    hidden = {d.field: d for d in spec.group_by
              if decision.fields.get(d.field) is Verdict.PSEUDONYMIZE}
    if not hidden:
        return cells
    out = pseudonyms.cells(spec.contract_id, cells, hidden)
    return tuple(sorted(out, key=lambda c: (len(c.key), sorted((k, str(v))
                                                                for k, v in c.key.items()))))


def named_target(uow: UnitOfWork, contract_id: str) -> tuple[str, int] | None:
    """The dataset (id, version) of the contract a request names, whoever may see it: the
    provider's audit view then shows attempts on its contracts."""
    requested = uow.contracts.get(contract_id)
    named = (uow.datasets.get(requested.terms.dataset_id, requested.terms.dataset_version)
             if requested else None)
    return (named.id, named.version) if named else None


def record_denial(uow: UnitOfWork, event: AuditEvent, reasons: tuple[str, ...]) -> None:
    """Whatever the unit staged undone, the refusal appended and committed."""
    uow.rollback()
    uow.audit.append(replace(event, allowed=False, reasons=reasons))
    uow.commit()


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


def _day_start(now: datetime) -> str:
    return format_ts(datetime.combine(now.date(), time.min, tzinfo=now.tzinfo))


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
                or (form is FieldForm.PSEUDONYMIZE) != (verdict is Verdict.PSEUDONYMIZE)):
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
