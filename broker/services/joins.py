"""Use case: cross-source aggregates, several providers' data joined by enterprise inside the
broker, released through the same disclosure control and release audit as any query."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, replace

from pyroaring import BitMap

from audit.entry import AuditEvent
from broker.disclosure.cells import (
    ENTITIES,
    CellTable,
    ledger_key,
    measure_members,
    read_table,
    set_source_scopes,
)
from broker.disclosure.differencing import SourcesLedger
from broker.disclosure.linking import SourcePart, link_sources
from broker.disclosure.plan import (
    ABS_DIFF,
    DISAGREE,
    CellPlan,
    plan_joined,
    source_relation,
)
from broker.disclosure.protect import repool
from broker.disclosure.scopes import Scopes
from broker.domain.datasets import Dataset, FieldType
from broker.domain.disclosure import Rules
from broker.domain.errors import (
    BrokerError,
    InvalidInput,
    NotFound,
    PolicyDenied,
    Unavailable,
)
from broker.domain.ledger import Form
from broker.domain.ports import UnitOfWork
from broker.domain.principals import RequestContext
from broker.domain.queries import (
    Comparison,
    Dimension,
    Filter,
    JoinedSpec,
    Measure,
    MeasureFn,
    Release,
    SuppressionReason,
    split_qualified,
)
from broker.domain.slices import Slice
from broker.observability.spans import engine_span
from broker.policy.decisions import FlowDecision, Verdict
from broker.policy.inputs import FlowRequest
from broker.services.contracts import contract_resource
from broker.services.queries import (
    AGGREGATE,
    CROSSCHECK,
    EXPLAIN,
    QUOTA_ACTIONS,
    Explanation,
    Prediction,
    QueryService,
    _against_contract,
    _answer,
    _day_start,
    _protect,
    _Protected,
    _stricter,
    _unusable,
    named_target,
    record_denial,
)
from broker.services.releases import Answer, LinkAudit, result_digest
from contracts.model import Contract


@dataclass(frozen=True, slots=True)
class _Source:
    """One source as decided: the contract the alias names (None when the caller may not see
    it), its dataset, and the flow decision on the part of the query that reads it.
    ``target`` is the named contract's dataset even when the caller may not see it, so that
    the provider's audit view shows the attempt."""

    alias: str
    contract_id: str
    contract: Contract | None
    dataset: Dataset | None
    target: tuple[str, int] | None
    decision: FlowDecision
    consented: Slice | None = None

    def usable(self) -> tuple[Contract, Dataset]:
        """The contract and dataset of an allowed source; fail closed without either."""
        if self.contract is None or self.dataset is None:
            raise PolicyDenied(("no-active-contract",))
        return self.contract, self.dataset


@dataclass(frozen=True, slots=True)
class _Decided:
    """Every source's decision and the one decision they make together."""

    sources: tuple[_Source, ...]
    decision: FlowDecision

    def planned(self, spec: JoinedSpec) -> JoinedSpec:
        """The query as it runs: each source's consented slice added to its filters."""
        extra = tuple(Filter(f"{s.alias}.{flt.field}", flt.op, flt.value)
                      for s in self.sources if s.consented is not None
                      for flt in s.consented.predicate)
        return replace(spec, filters=(*spec.filters, *extra)) if extra else spec

    def datasets(self) -> dict[str, Dataset]:
        """Each alias's dataset (allowed decisions only)."""
        return {s.alias: s.usable()[1] for s in self.sources}


@dataclass(frozen=True, slots=True)
class _Computed:
    """The joined cell table, protected against the sources' ledgers as read before the scan
    (``ledger``), with the thresholds and the query it ran with."""

    rules: Rules
    plan: CellPlan
    table: CellTable
    protected: _Protected
    planned: JoinedSpec
    ledger: SourcesLedger


@dataclass(frozen=True, slots=True)
class JoinedQueries:
    """Cross-source aggregates through the query service's stores, policies and engine.

    The decision is one over every source: each contract must be the caller's, in force, for
    the purpose, signed as it stands, and grant ``linkable``; each source's fields pass its
    own contract's verdicts; the strictest thresholds of the contracts apply. Like any query
    it is decided again under the audit head lock, audited whatever its outcome, and its
    cells pass the release audit of every source's dataset.
    """

    queries: QueryService

    def aggregate(self, ctx: RequestContext, spec: JoinedSpec) -> Release:
        """Decide, compute, audit against every source's history, append the entry, commit;
        only then return."""
        return self._release(ctx, spec, AGGREGATE)

    def crosscheck(self, ctx: RequestContext, spec: JoinedSpec,
                   indicator: str | None = None) -> Release:
        """Compare two sources of one figure per cell: the enterprises compared, those whose
        values differ by more than the tolerance (in percent of the authoritative, left,
        value; an enterprise with no value on a side disagrees) and the sum of absolute
        differences; under every rule an aggregate is held to, and never which enterprise.

        With ``indicator``, the left field is the indicator's source and the right one of
        its checks, found among the sources' datasets (``spec.compare`` then only carries
        the tolerance).
        """
        if indicator is not None:
            try:
                spec = self._resolved(ctx, spec, indicator)
            except BrokerError as exc:  # an indicator probed against contracts: on the record
                with self.queries.uow() as uow:
                    self._refuse_undecided(uow, ctx, spec, CROSSCHECK, exc.slug)
                raise
        return self._release(ctx, spec, CROSSCHECK)

    def _resolved(self, ctx: RequestContext, spec: JoinedSpec, indicator_id: str
                  ) -> JoinedSpec:
        """The cross-check of an indicator: which source holds its authoritative field and
        which a check. A source the caller may not see resolves to nothing, and the
        decision then refuses the query as any other."""
        q = self.queries
        tolerance = spec.compare.tolerance_pct if spec.compare else 0.0
        with q.uow(read_only=True) as uow:
            found = uow.indicators.get(indicator_id)
            datasets = {}
            for alias, contract_id in spec.sources:
                contract = uow.contracts.get(contract_id)
                if contract is not None and q.guard.decide(
                        uow, ctx, "contract.read", contract_resource(contract)).allow:
                    datasets[alias] = contract.terms.dataset_id
        if found is None:
            raise NotFound("There is no such indicator.")
        if len(datasets) < len(spec.sources):
            return replace(spec, measures=(Measure(MeasureFn.COUNT),), compare=None)
        left = [a for a, d in datasets.items() if d == found.source.dataset_id]
        checks = {c.dataset_id: c.field for c in found.checks}
        right = [a for a, d in datasets.items() if d in checks]
        if len(left) != 1 or len(right) != 1:
            raise InvalidInput("The sources must be the indicator's source and one of its "
                               "checks.", fields=["sources"])
        lhs = f"{left[0]}.{found.source.field}"
        rhs = f"{right[0]}.{checks[datasets[right[0]]]}"
        return replace(spec, measures=(Measure(MeasureFn.SUM, lhs), Measure(MeasureFn.SUM, rhs)),
                       compare=Comparison(lhs, rhs, tolerance, indicator_id))

    def _release(self, ctx: RequestContext, spec: JoinedSpec, action: str) -> Release:
        q = self.queries
        with q.uow() as uow:
            decided = self._decide(uow, ctx, spec, action)
        computed = self._computed_or_recorded(ctx, spec, decided, action)
        nonce = secrets.token_hex(16)
        datasets = decided.datasets()
        with q.uow() as uow, q.links.audit_many(d.id for d in datasets.values()) as handles:
            uow.audit.lock()
            again = self._decide(uow, ctx, spec, action)
            # The entry names what the answer was computed on (the first decision's datasets
            # and versions); the second only has to allow it, and with the same datasets.
            if [s.dataset.id if s.dataset else None for s in again.sources] != [
                    s.dataset.id if s.dataset else None for s in decided.sources]:
                raise Unavailable("A source changed while the query ran; nothing was "
                                  "released.")
            # Protected again if a source's ledger grew since the scan (another release).
            ledger = self._ledger(uow, spec, computed.plan, datasets)
            protected = computed.protected
            if any(ledger.ledgers[a].last_id != computed.ledger.ledgers[a].last_id
                   for a in datasets):
                protected = _protected(computed.table, computed.plan, computed.rules, ledger,
                                       computed.planned)
            parts = self._parts(uow, spec, computed, datasets, handles)
            answer, forms, entries = _audited(computed, protected, ledger, spec, parts)
            cells = answer.cells  # no pseudonymized key: a join refuses them
            release = Release(
                query_id=ctx.request_id, cells=cells, k=computed.rules.k_min,
                policy_revision=again.decision.revision,
                field_verdicts=decided.decision.fields, result_nonce=nonce,
                remainder=answer.remainder)
            receipt = uow.audit.append(replace(
                self._event(ctx, spec, decided, action),
                disclosure={"k": computed.rules.k_min,
                            "cells_published": release.cells_published,
                            "cells_suppressed": release.cells_suppressed,
                            "result_digest": result_digest(nonce, cells, answer.remainder)}))
            for alias, dataset in datasets.items():
                handles[dataset.id].record(uow, forms[alias], receipt.seq, q.sealer)
                uow.releases.add(dataset.id, entries[alias], receipt.seq)
            uow.commit()
            for handle in handles.values():
                handle.committed()
        return replace(release, receipt=receipt)

    def explain(self, ctx: RequestContext, spec: JoinedSpec) -> Explanation:
        """The decision the query would get, per ``alias.field``, and when allowed how its
        cells would come out now; nothing released, the dry run audited."""
        q = self.queries
        with q.uow() as uow:
            q.guard.require(uow, ctx, EXPLAIN, {"kind": "query"},
                            contract_id=spec.sources[0][1])
            decided = self._decide(uow, ctx, spec, EXPLAIN, refuse=False)
            event = self._event(ctx, spec, decided, EXPLAIN)
            if decided.decision.allow:
                try:
                    plan_joined(decided.planned(spec),
                                {a: d.schema for a, d in decided.datasets().items()})
                except BrokerError as exc:
                    uow.audit.append(replace(event, allowed=False, reasons=(exc.slug,)))
                    uow.commit()
                    raise
            uow.audit.append(event)
            uow.commit()
        decision = decided.decision
        if not decision.allow:
            return Explanation(decision)
        computed = self._compute(spec, decided)
        datasets = decided.datasets()
        with q.uow(read_only=True) as uow, \
                q.links.audit_many(d.id for d in datasets.values()) as handles:
            answer, _, _ = _audited(computed, computed.protected, computed.ledger, spec,
                                    self._parts(uow, spec, computed, datasets, handles))
        return Explanation(decision, Prediction.of(answer))

    # -- deciding ----------------------------------------------------------------------------

    def _decide(self, uow: UnitOfWork, ctx: RequestContext, spec: JoinedSpec, action: str,
                *, refuse: bool = True) -> _Decided:
        """Every source's flow decision and their combination; a denial (when ``refuse``) or
        an unavailable policy engine is audited."""
        q = self.queries
        try:
            sources = tuple(self._source(uow, ctx, spec, alias) for alias in spec.aliases)
        except Unavailable:
            self._refuse_undecided(uow, ctx, spec, action, "policy-engine-unavailable")
            raise
        decided = _Decided(sources, _combined(sources, q.policies.revision))
        if refuse and not decided.decision.allow:
            record_denial(uow, self._event(ctx, spec, decided, action), decided.decision.reasons)
            raise PolicyDenied(decided.decision.reasons,
                               fields=decided.decision.field_reasons)
        return decided

    def _refuse_undecided(self, uow: UnitOfWork, ctx: RequestContext, spec: JoinedSpec,
                          action: str, reason: str) -> None:
        """A query refused before any decision was taken: on the record, each source named
        by the dataset of the contract its alias names."""
        revision = self.queries.policies.revision
        unknown = _Decided(tuple(_Source(a, c, None, None, named_target(uow, c),
                                         FlowDecision(False, (), revision))
                                 for a, c in spec.sources),
                           FlowDecision(False, (reason,), revision))
        record_denial(uow, self._event(ctx, spec, unknown, action), (reason,))

    def _source(self, uow: UnitOfWork, ctx: RequestContext, spec: JoinedSpec,
                alias: str) -> _Source:
        q = self.queries
        contract_id = spec.contract_of(alias)
        part = spec.part(alias)
        contract = uow.contracts.get(contract_id)
        target = named_target(uow, contract_id)
        if contract is not None and not q.guard.decide(
                uow, ctx, "contract.read", contract_resource(contract)).allow:
            contract = None  # another organisation's contract is treated as absent
        dataset = (uow.datasets.get(contract.terms.dataset_id, contract.terms.dataset_version)
                   if contract else None)
        now = q.clock()
        usage = (uow.audit.count_released(contract.id, QUOTA_ACTIONS, _day_start(now))
                 if contract is not None else 0)
        request = FlowRequest(
            ctx.principal, registered=uow.orgs.get(ctx.principal.org) is not None, now=now,
            queries_today=usage, contract=contract, dataset=dataset, spec=part)
        decision = _against_contract(q.policies.flow_at(request), contract, dataset, part)
        consented = None
        if decision.allow and contract is not None:
            consented = uow.slices.get(contract.terms.slice_id) if contract.terms.slice_id \
                else None
            refusal = _unusable(uow, contract, consented)
            if refusal is None and not contract.terms.linkable:
                refusal = "contract-not-linkable"
            if refusal is None and any(decision.fields.get(d.field) is Verdict.PSEUDONYMIZE
                                       for d in part.group_by):
                # Grouped beside another source's attributes, a pseudonym's cells line up
                # with keys in clear (the same town in another dataset): never in a join.
                refusal = "pseudonym-not-joinable"
            if refusal is not None:
                decision = replace(decision, allow=False, reasons=(refusal,), rules=None)
        return _Source(alias, contract_id, contract, dataset, target, decision, consented)

    def _event(self, ctx: RequestContext, spec: JoinedSpec, decided: _Decided,
               action: str) -> AuditEvent:
        """The audit entry: who, which sources (each source's dataset, version and contract,
        the dataset named even when the caller may not see the contract), decided how."""
        return AuditEvent(
            actor=ctx.principal.as_actor(), action=action, request_id=ctx.request_id,
            allowed=decided.decision.allow, reasons=decided.decision.reasons,
            policy_revision=decided.decision.revision, purpose=spec.purpose,
            query_fp=spec.fingerprint(),
            fields=tuple(sorted({use["field"] for use in spec.field_uses()})),
            sources=tuple({"alias": s.alias,
                           "dataset_id": s.target[0] if s.target else None,
                           "version": s.target[1] if s.target else None,
                           "contract_id": s.contract_id if s.target else None}
                          for s in decided.sources))

    # -- computing ---------------------------------------------------------------------------

    def _computed_or_recorded(self, ctx: RequestContext, spec: JoinedSpec,
                              decided: _Decided, action: str) -> _Computed:
        """The protected joined table; a failure after the policy allowed is audited."""
        q = self.queries
        try:
            return self._compute(spec, decided)
        except BrokerError as exc:
            reason = exc.slug
            failure: BaseException = exc
        except Exception as exc:
            reason, failure = "engine-failed", exc
        with q.uow() as uow:
            record_denial(uow, self._event(ctx, spec, decided, action), (reason,))
        raise failure

    def _compute(self, spec: JoinedSpec, decided: _Decided) -> _Computed:
        """Plan, run the join on the engine over the decrypted versions, and protect the
        cell table (k, dominance, complementary suppression) under the strictest rules."""
        q = self.queries
        rules = _strictest([_stricter(s.decision.rules, s.usable()[0])
                            for s in decided.sources])
        datasets = decided.datasets()
        planned = decided.planned(spec)
        plan = plan_joined(planned, {a: d.schema for a, d in datasets.items()},
                           top=rules.top)
        with q.uow(read_only=True) as uow:
            locations = {a: uow.datasets.version_path(d.id, d.version)
                         for a, d in datasets.items()}
        relations = {source_relation(a): q.storage.scan(loc)  # decrypted in memory only
                     for a, loc in locations.items()}
        with engine_span(type(q.engine).__name__,
                         ",".join(sorted(d.id for d in datasets.values()))) as rows:
            result = q.engine.run(relations, plan.sql, plan.params)
            rows(result.num_rows)
        table = read_table(plan, result)
        set_source_scopes(table, self._scopes(planned, datasets, locations))
        with q.uow(read_only=True) as uow:
            ledger = self._ledger(uow, spec, plan, datasets)
        return _Computed(rules, plan, table, _protected(table, plan, rules, ledger, planned),
                         planned, ledger)

    def _ledger(self, uow: UnitOfWork, spec: JoinedSpec, plan: CellPlan,
                datasets: dict[str, Dataset]) -> SourcesLedger:
        """Every source's differencing ledger as it stands, seen as one under the joined
        table's keys."""
        return SourcesLedger({a: self.queries.ledgers.refresh(uow, d.id)
                              for a, d in datasets.items()},
                             _owners(spec, plan, datasets))

    def _scopes(self, planned: JoinedSpec, datasets: dict[str, Dataset],
                locations: dict[str, str]) -> dict[str, Scopes]:
        """Per source with date fields, how to compute a cell's period in its rows."""
        out = {}
        for alias, dataset in datasets.items():
            periods = tuple(f.name for f in dataset.schema.fields if f.type is FieldType.DATE)
            if not periods:
                continue
            dims = [Dimension(own, d.level, d.bins) if where == alias else Dimension("#other")
                    for d in planned.group_by for where, own in [split_qualified(d.field)]]
            filters = [Filter(own, f.op, f.value) for f in planned.filters
                       for where, own in [split_qualified(f.field)] if where == alias]
            out[alias] = Scopes.of(self.queries.storage.dates(locations[alias], periods),
                                   dims, filters)
        return out

    def _parts(self, uow: UnitOfWork, spec: JoinedSpec, computed: _Computed,
               datasets: dict[str, Dataset], handles: dict[str, LinkAudit]
               ) -> dict[str, SourcePart]:
        """Each source's share of the table and its dataset's history, brought up to date."""
        q = self.queries
        counted = any(m.fn is MeasureFn.COUNT for m in computed.plan.measures)
        names: dict[str, dict[str, str]] = {alias: {} for alias in datasets}
        for name, (alias, own) in _owners(spec, computed.plan, datasets).items():
            if name in computed.table.fields:
                names[alias][name] = own
        parts = {}
        for alias, dataset in datasets.items():
            quantities = (ENTITIES,) * counted + tuple(f"f:{o}" for o in names[alias].values())
            history = handles[dataset.id].load(uow, quantities, q.sealer)
            parts[alias] = SourcePart(history, names[alias], quantities)
        return parts


def _owners(spec: JoinedSpec, plan: CellPlan, datasets: dict[str, Dataset]
            ) -> dict[str, tuple[str, str]]:
    """Each field of the joined table: the alias of its source and the name that source's
    history and ledger know it by. A cross-check's figures are one unknown per enterprise of
    a pair of fields: kept by the authoritative source, one quantity per pair (and per
    tolerance for the count of those who disagree)."""
    if spec.compare is None:
        return {f: split_qualified(f) for f in plan.fields}
    left, own = split_qualified(spec.compare.left)
    right, checked = split_qualified(spec.compare.right)
    pair = f"#check:{datasets[right].id}:{own}:{checked}"
    return {DISAGREE: (left, f"{pair}:disagree@{spec.compare.tolerance_pct!r}"),
            ABS_DIFF: (left, f"{pair}:abs"),
            # the sub-populations, in the ledger only, whatever the tolerance
            DISAGREEING[2:]: (left, f"{pair}:disagreeing"),
            AGREEING[2:]: (left, f"{pair}:agreeing"),
            spec.compare.left: (left, own), spec.compare.right: (right, checked)}


def _protected(table: CellTable, plan: CellPlan, rules: Rules, ledger: SourcesLedger,
               planned: JoinedSpec) -> _Protected:
    """Primary rules, the differencing guard against every source's ledger, complementary
    suppression; for a cross-check, its two sub-populations held to the same rules."""
    protected = _protect(table, plan, rules, ledger, planned, frozenset())
    if planned.compare is not None:
        protected = _subgroups_withheld(table, protected, ledger, rules.k_min)
    return protected


#: The ledger measures of a cross-check's two sub-populations (see ``_subgroups_withheld``).
DISAGREEING, AGREEING = f"f:{DISAGREE}-set", f"f:{DISAGREE}-agreeing-set"


def _subgroups_withheld(table: CellTable, protected: _Protected, ledger: SourcesLedger,
                        k: int) -> _Protected:
    """A cross-check cell splits its enterprises into those that disagree and those that
    agree: each is a population whose attribute the cell tells, so each is held to the rules
    of a cell. Fewer than k in either (every firm disagreeing, or one firm alone) is
    withheld as ``min-entities``. Either set within 1..k-1 enterprises of one released
    before for the same pair of fields at any tolerance (a sweep of tolerances, nested
    sets), or the very same set beside other compared firms (so that the firms added all
    disagree, or all agree), is withheld as ``differencing``; the sets of published cells
    enter the ledger. So is a cell published: never which firm, nor a group's unanimity."""
    released = []
    entries: list[tuple[str, BitMap]] = []
    for index, reason in protected.outcome.released:
        if reason is None:
            members = table.members.get(index)
            disagreeing = measure_members(table, index, f"f:{DISAGREE}")
            sets = [(ledger_key(table, index, DISAGREEING), disagreeing),
                    (ledger_key(table, index, AGREEING), members - disagreeing)]
            repeat = ledger.contains(ledger_key(table, index, ENTITIES), members)
            if any(len(found) < k for _, found in sets):
                reason = SuppressionReason.MIN_ENTITIES
            elif any(ledger.conflicts(key, found, k)
                     or (ledger.contains(key, found) and not repeat) for key, found in sets):
                reason = SuppressionReason.DIFFERENCING
            else:
                entries += sets
        released.append((index, reason))
    outcome = replace(protected.outcome, released=tuple(released))
    return replace(protected, outcome=outcome,
                   ledger_entries=(*protected.ledger_entries, *entries))


def _audited(computed: _Computed, protected: _Protected, ledger: SourcesLedger,
             spec: JoinedSpec, parts: dict[str, SourcePart]
             ) -> tuple[Answer, dict[str, list[Form]], dict[str, list[tuple[str, BitMap]]]]:
    """The answer after the release audit of every source; each source's forms, and its
    differencing ledger's entries (the remainder pooled again over every unpublished cell)."""
    outcome = protected.outcome
    pooled = outcome.remainder
    asked = spec.remainder and pooled is not None and pooled[1] is None
    aliases = sorted(parts)
    released, forms, remainder = link_sources(
        computed.table, [parts[a] for a in aliases], outcome.released, outcome.levels,
        remainder=asked)
    pooled_entries: list[tuple[str, BitMap]] = []
    if asked and not remainder:
        pooled = (None, SuppressionReason.LINKED)
    elif asked:
        pooled, pooled_entries = repool(computed.table, computed.plan, computed.rules,
                                        released, ledger)
    answer = _answer(computed.table, computed.plan, spec, released, pooled)
    entries = ledger.entries([*protected.ledger_entries, *pooled_entries])
    return answer, dict(zip(aliases, forms, strict=True)), entries


def _combined(sources: tuple[_Source, ...], revision: str) -> FlowDecision:
    """One decision over every source: allowed only if each is and the sources are distinct
    datasets; verdicts and reasons per ``alias.field``; the strictest k; the least quota."""
    reasons = sorted({r for s in sources for r in s.decision.reasons})
    allow = all(s.decision.allow for s in sources)
    if allow and len({s.dataset.id for s in sources if s.dataset}) != len(sources):
        allow, reasons = False, ["sources-not-distinct"]
    rules = None
    if allow:
        rules = _strictest([s.decision.rules for s in sources if s.decision.rules])
    return FlowDecision(
        allow=allow, reasons=() if allow else tuple(reasons), revision=revision,
        fields={f"{s.alias}.{f}": v for s in sources for f, v in s.decision.fields.items()},
        field_reasons={f"{s.alias}.{f}": r for s in sources
                       for f, r in s.decision.field_reasons.items()},
        k=max(s.decision.k for s in sources),
        quota_remaining=min(s.decision.quota_remaining for s in sources),
        rules=rules)


def _strictest(rules: list[Rules]) -> Rules:
    """The strictest of several contracts' thresholds: each rule at its strictest."""
    if not rules:
        raise Unavailable("The policy set no disclosure rules; nothing was released.")
    return Rules(
        k_min=max(r.k_min for r in rules),
        dominance_n=max(r.dominance_n for r in rules),
        dominance_k=min(r.dominance_k for r in rules),
        p_percent=max(r.p_percent for r in rules),
        protection_percent=max(r.protection_percent for r in rules),
    )


