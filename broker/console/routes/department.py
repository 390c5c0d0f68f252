"""A department's pages (role ``consumer``): the contracts in force and what each allows, the
query builder with its dry run, the answer as a table and a chart with every withheld cell
named as withheld, downloads of that same answer, and its receipt.

Every page calls the use cases the API calls (``ContractService``, ``QueryService``,
``AuditService``) with the logged-in principal: the console shows a department nothing the
API would not, and another organisation's contract is the use cases' audited 404. A query is
read from the form into the API's own request model (``broker.services.query_inputs``), so it
is validated exactly as ``POST /v1/queries/aggregate`` validates it.
"""

from __future__ import annotations

import json
import re
import secrets
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Depends, Form, Request
from pydantic import ValidationError
from starlette.datastructures import FormData
from starlette.responses import Response

from broker.console.answers import Labels, ReleasedAnswers, Shown, to_csv, to_xlsx
from broker.console.deps import AuditDep, ContractsDep, DatasetsDep, QueriesDep
from broker.console.i18n import _
from broker.console.web import (
    ConsoleRoute,
    ConsumerPage,
    Page,
    check_csrf,
    redirect,
    render,
    require,
)
from broker.domain.datasets import FieldSpec, FieldType
from broker.domain.errors import BrokerError, InvalidInput, NotFound
from broker.domain.levels import DATE_LEVELS, HIERARCHIES
from broker.domain.principals import Role
from broker.domain.queries import AggregateSpec, CellStatus
from broker.services.contracts import ContractService, ContractView
from broker.services.datasets import DatasetService
from broker.services.queries import AGGREGATE, EXPLAIN, Explanation, QueryService
from broker.services.query_inputs import AggregateIn
from contracts.model import ContractStatus, FieldForm

router = APIRouter(route_class=ConsoleRoute, include_in_schema=False)


#: The most rows of each kind the builder takes (the API's own limits).
MAX_FILTERS, MAX_MEASURES, MAX_GROUPS = 16, 16, 4
#: Separators of an ``in`` filter's values: ASCII or full-width comma.
_LIST_SEPARATORS = re.compile("[,\uff0c]")

_answers_lock = threading.Lock()


def released_answers(request: Request) -> ReleasedAnswers:
    """The answers this app has shown departments (made with the first one)."""
    state = request.app.state
    with _answers_lock:
        found = getattr(state, "department_answers", None)
        if not isinstance(found, ReleasedAnswers):
            found = ReleasedAnswers()
            state.department_answers = found
    return found


AnswersDep = Annotated[ReleasedAnswers, Depends(released_answers)]


# -- words ------------------------------------------------------------------------------------


def withheld_reasons() -> dict[str, str]:
    """Why a cell is withheld, in the page's language."""
    return {
        "min-entities": _("Too few enterprises in the cell"),
        "dominance": _("One or two enterprises dominate the cell"),
        "complementary": _("Withheld so that another withheld cell cannot be worked out"),
        "differencing": _("Would reveal an enterprise by difference with an earlier answer"),
        "linked": _("Would reveal an enterprise together with earlier answers"),
    }


def verdicts() -> dict[str, str]:
    """A field's verdict (the form it may flow in), in the page's language."""
    return {"clear": _("clear"), "generalize": _("generalised only"),
            "pseudonymize": _("pseudonymised"), "aggregate": _("aggregated only"),
            "deny": _("denied")}


def policy_reasons() -> dict[str, str]:
    """The commonest policy reasons, in the page's language (others show their code)."""
    return {
        "purpose-not-in-contract": _("The purpose is not one the contract allows"),
        "field-not-in-contract": _("The field is not in the contract"),
        "field-aggregate-only": _("The field may only be aggregated, not grouped or filtered"),
        "generalization-required": _("The field must be grouped at a coarser level"),
        "daily-quota-exhausted": _("Today's query quota is used up"),
        "contract-expired": _("The contract has expired"),
        "contract-not-active": _("The contract is not in force"),
        "no-active-contract": _("No contract in force"),
        "measure-not-numeric": _("Only numbers can be summed or averaged"),
        "filter-on-identifier": _("Identifiers cannot be filtered on"),
        "too-many-dimensions": _("Too many group-by fields"),
    }


def statuses() -> dict[str, str]:
    """Contract statuses, in the page's language."""
    return {"offered": _("offered"), "active": _("active"), "suspended": _("suspended"),
            "revoked": _("revoked"), "expired": _("expired")}


def measure_fns() -> dict[str, str]:
    """The statistics the builder offers."""
    return {"count": _("Count of enterprises"), "sum": _("Sum"), "mean": _("Mean"),
            "ratio": _("Ratio of sums")}


def filter_ops() -> dict[str, str]:
    """The filter operators the builder offers."""
    return {"eq": _("equals"), "in": _("one of (comma-separated)"),
            "range": _("between (inclusive)")}


def level_names() -> dict[str, str]:
    """Levels of a hierarchy, in the page's language."""
    return {"": _("as stored"), "day": _("day"), "month": _("month"), "quarter": _("quarter"),
            "year": _("year"), "group": _("GB/T 4754 group"),
            "division": _("GB/T 4754 division"), "section": _("GB/T 4754 section"),
            "bins": _("declared bins")}


# -- what a contract allows -------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Offered:
    """One field of a contract as the builder offers it: its form, type and group-by levels
    (empty when it cannot be a group-by key)."""

    name: str
    form: str
    type: str
    levels: tuple[str, ...]
    bins: tuple[float, ...] | None

    @property
    def numeric(self) -> bool:
        return self.type in (FieldType.INTEGER.value, FieldType.NUMBER.value)


def _levels(form: FieldForm, spec: FieldSpec | None) -> tuple[str, ...]:
    """The group-by levels a field's form allows ("" is the stored value itself)."""
    if form is FieldForm.AGGREGATE or spec is None:
        return ()
    if form is FieldForm.PSEUDONYMIZE:
        return ("",)
    coarser: tuple[str, ...] = ()
    if spec.type is FieldType.DATE:
        coarser = DATE_LEVELS[1:]
    elif spec.hierarchy in HIERARCHIES:
        coarser = HIERARCHIES[spec.hierarchy][1:]
    elif spec.bins:
        coarser = ("bins",)
    if form is FieldForm.GENERALIZE:
        return coarser
    return ("", *coarser)


def offered_fields(view: ContractView, schema: Mapping[str, FieldSpec]) -> list[Offered]:
    """The contract's fields, with what the dataset declares of each (as the caller sees it)."""
    out = []
    for name, form in sorted(view.contract.terms.fields.items()):
        spec = schema.get(name)
        out.append(Offered(name=name, form=form.value,
                           type=spec.type.value if spec is not None else "",
                           levels=_levels(form, spec),
                           bins=spec.bins if spec is not None else None))
    return out


def _schema(datasets: DatasetService, page: Page, dataset_id: str) -> dict[str, FieldSpec]:
    """The fields of a contract's dataset the caller may see."""
    return {f.name: f for f in datasets.get(page.context, dataset_id).fields}


def _in_force(contracts: Sequence[ContractView], org: str) -> list[ContractView]:
    return [c for c in contracts
            if c.status is ContractStatus.ACTIVE and c.contract.consumer_org == org]


# -- contracts --------------------------------------------------------------------------------

@router.get("/contracts/in-force")
def contracts_in_force(page: ConsumerPage, contracts: ContractsDep, datasets: DatasetsDep,
                       queries: QueriesDep, done: str | None = None) -> Response:
    """The department's contracts: offers to accept, those in force with what each allows and
    today's quota left, and the rest."""
    org = page.context.principal.org
    mine = [c for c in contracts.list(page.context) if c.contract.consumer_org == org]
    offered = [c for c in mine if c.status is ContractStatus.OFFERED]
    active = [c for c in mine if c.status is ContractStatus.ACTIVE]
    others = [c for c in mine if c.status not in (ContractStatus.OFFERED,
                                                  ContractStatus.ACTIVE)]
    left = queries.quota_left(page.context, [c.contract.id for c in active])
    return render(page, "department/contracts.html", offered=offered, active=active,
                  others=others, quota_left=left, forms=verdicts(), statuses=statuses(),
                  names=_dataset_names(page, datasets),
                  accepted=done == "accepted")


@router.post("/contracts/{contract_id}/accept", dependencies=[Depends(check_csrf)])
def accept_contract(page: ConsumerPage, contract_id: UUID, contracts: ContractsDep,
                    signature: Annotated[str | None, Form(max_length=200)] = None) -> Response:
    """Accept an offer made to the department, with its signature over the terms (or the one
    the broker makes with the department's key it holds, in embedded mode)."""
    contracts.accept(page.context, str(contract_id), signature.strip() or None
                     if signature is not None else None)
    return redirect(page, "/contracts/in-force?done=accepted")


# -- the query builder ------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Builder:
    """What the builder offers under one contract."""

    view: ContractView
    fields: list[Offered]

    @property
    def groupable(self) -> list[Offered]:
        return [f for f in self.fields if f.levels]

    @property
    def numeric(self) -> list[Offered]:
        return [f for f in self.fields if f.numeric and f.form != FieldForm.PSEUDONYMIZE.value]

    @property
    def filterable(self) -> list[Offered]:
        return [f for f in self.fields if f.form != FieldForm.AGGREGATE.value]

    def field(self, name: str) -> Offered | None:
        return next((f for f in self.fields if f.name == name), None)


def _builder(page: Page, contract_id: str | None, contracts: ContractService,
             datasets: DatasetService) -> Builder | None:
    """The builder's choices under ``contract_id`` (None when none is chosen); another
    organisation's contract is the use case's audited 404."""
    if not contract_id:
        return None
    view = contracts.get(page.context, contract_id)
    schema = _schema(datasets, page, view.contract.terms.dataset_id)
    return Builder(view, offered_fields(view, schema))


def _contract_id(value: str | None) -> str | None:
    """A contract id named in a form or a link (None for none chosen); a malformed one is
    refused before any use case sees it."""
    if not value:
        return None
    try:
        return str(UUID(value))
    except ValueError:
        raise InvalidInput(_("Choose a contract first.")) from None


def _choices(page: Page, contracts: ContractService) -> list[ContractView]:
    return _in_force(contracts.list(page.context), page.context.principal.org)


def _dataset_names(page: Page, datasets: DatasetService) -> dict[str, str]:
    """The names of the datasets the caller may see, by id."""
    return {v.dataset.id: v.dataset.name for v in datasets.list(page.context)}


def _words() -> dict[str, Any]:
    return {"fns": measure_fns(), "ops": filter_ops(), "level_names": level_names(),
            "forms": verdicts()}


def _row_id() -> str:
    return secrets.token_hex(4)


@router.get("/query")
def query_builder(page: ConsumerPage, contracts: ContractsDep, datasets: DatasetsDep,
                  contract: str | None = None) -> Response:
    """The query builder: a contract in force, a purpose, group-by fields, filters, measures."""
    builder = _builder(page, _contract_id(contract), contracts, datasets)
    return render(page, "department/query.html", choices=_choices(page, contracts),
                  names=_dataset_names(page, datasets), builder=builder, row_id=_row_id,
                  result=None, explained=None, error=None, **_words())


@router.get("/query/fields")
def query_fields(page: ConsumerPage, contracts: ContractsDep, datasets: DatasetsDep,
                 contract: str | None = None) -> Response:
    """The builder's field choices under a contract (HTMX swaps them in on a change)."""
    builder = _builder(page, _contract_id(contract), contracts, datasets)
    return render(page, "department/_fields.html", builder=builder, row_id=_row_id,
                  **_words())


@router.get("/query/rows/{kind}")
def query_row(page: ConsumerPage, kind: str, contracts: ContractsDep, datasets: DatasetsDep,
              contract: UUID) -> Response:
    """One more filter or measure row of the builder."""
    if kind not in ("filter", "measure"):
        raise InvalidInput("No such row.")
    builder = _builder(page, str(contract), contracts, datasets)
    return render(page, f"department/_{kind}_row.html", builder=builder, n=_row_id(),
                  **_words())


def _value(text: str, offered: Offered | None) -> Any:
    """A filter value typed as its field is (an integer field's value as an integer...)."""
    text = text.strip()
    kind = offered.type if offered is not None else ""
    try:
        if kind == FieldType.INTEGER.value:
            return int(text)
        if kind == FieldType.NUMBER.value:
            return float(text)
    except ValueError:
        raise InvalidInput(_("Filter on %(field)s: give a number.",
                             field=offered.name if offered else "")) from None
    if kind == FieldType.BOOLEAN.value:
        if text.lower() in ("true", "1", "yes", "是"):
            return True
        if text.lower() in ("false", "0", "no", "否"):
            return False
        raise InvalidInput(_("Filter on %(field)s: give true or false.",
                             field=offered.name if offered else ""))
    return text


def _strings(form: FormData, name: str) -> list[str]:
    return [v for v in form.getlist(name) if isinstance(v, str)]


def query_body(form: FormData, builder: Builder) -> dict[str, Any]:
    """The builder's form as the API's aggregate request body."""
    group_by: list[Any] = []
    for name in _strings(form, "group_by")[:MAX_GROUPS + 1]:
        offered = builder.field(name)
        level = form.get(f"level.{name}")
        level = level if isinstance(level, str) else ""
        if level == "bins" and offered is not None and offered.bins:
            group_by.append({"field": name, "bins": list(offered.bins)})
        elif level:
            group_by.append({"field": name, "level": level})
        else:
            group_by.append(name)
    measures: list[dict[str, Any]] = []
    fns, fields, denominators = (_strings(form, "measure_fn"), _strings(form, "measure_field"),
                                 _strings(form, "measure_denominator"))
    for i, fn in enumerate(fns[:MAX_MEASURES + 1]):
        field = fields[i] if i < len(fields) else ""
        if fn == "count":
            measures.append({"fn": "count"})
        elif fn == "ratio":
            denominator = denominators[i] if i < len(denominators) else ""
            measures.append({"fn": "ratio", "numerator": field or None,
                             "denominator": denominator or None})
        elif fn:
            measures.append({"fn": fn, "field": field or None})
    filters: list[dict[str, Any]] = []
    names, ops = _strings(form, "filter_field"), _strings(form, "filter_op")
    values, ends = _strings(form, "filter_value"), _strings(form, "filter_to")
    for i, name in enumerate(names[:MAX_FILTERS + 1]):
        if not name:
            continue
        op = ops[i] if i < len(ops) else "eq"
        offered = builder.field(name)
        text = values[i] if i < len(values) else ""
        value: Any
        if op == "in":
            value = [_value(v, offered) for v in _LIST_SEPARATORS.split(text) if v.strip()]
        elif op == "range":
            value = [_value(text, offered), _value(ends[i] if i < len(ends) else "", offered)]
        else:
            value = _value(text, offered)
        filters.append({"field": name, "op": op, "value": value})
    purpose = form.get("purpose")
    return {"contract_id": builder.view.contract.id,
            "purpose": purpose if isinstance(purpose, str) else "",
            "group_by": group_by, "measures": measures, "filters": filters,
            "totals": form.get("totals") == "on"}


def _spec(page: Page, queries: QueryService, body: dict[str, Any], action: str
          ) -> AggregateSpec:
    """The body read by the API's request model; a body it refuses is on the record as the
    API's refusals are (nothing of it is logged), and answered without its values."""
    try:
        return AggregateIn.model_validate(body).to_domain()
    except ValidationError as exc:
        queries.record_invalid(page.context, action)
        where = sorted({".".join(str(p) for p in e["loc"][:1]) for e in exc.errors()})
        raise InvalidInput(_("Please check: %(parts)s.", parts=", ".join(where))) from None


def _is_htmx(request: Request) -> bool:
    return request.headers.get("hx-request") == "true"


async def posted_form(request: Request) -> FormData:
    """The request's form (read once; the CSRF check has read it already)."""
    return await request.form()


FormDep = Annotated[FormData, Depends(posted_form)]


def _submitted(form: FormData, page: Page, contracts: ContractService,
               datasets: DatasetService) -> tuple[FormData, Builder]:
    named = form.get("contract")
    contract = _contract_id(named if isinstance(named, str) else None)
    builder = _builder(page, contract, contracts, datasets)
    if builder is None:
        raise InvalidInput(_("Choose a contract first."))
    return form, builder


def _answer_page(page: Page, request: Request, contracts: ContractService,
                 datasets: DatasetService, builder: Builder | None, status: int = 200,
                 **values: Any) -> Response:
    """The results (a fragment for HTMX, else the builder page with them under it)."""
    words = {**_words(), "reasons": withheld_reasons(), "policy_reasons": policy_reasons()}
    values = {"result": None, "explained": None, "error": None, **values}
    if _is_htmx(request):
        return render(page, "department/_results.html", status=status,
                      headers={"X-Console-Fragment": "1"}, **words, **values)
    return render(page, "department/query.html", status=status,
                  choices=_choices(page, contracts), names=_dataset_names(page, datasets),
                  builder=builder, row_id=_row_id, **words, **values)


def _refused(exc: BrokerError) -> dict[str, Any]:
    return {"title": exc.title, "detail": exc.detail,
            "reasons": [str(r) for r in exc.extensions.get("reasons", ())],
            "fields": {str(k): [str(r) for r in v] for k, v in
                       dict(exc.extensions.get("fields") or {}).items()}
            if isinstance(exc.extensions.get("fields"), Mapping) else {}}


@router.post("/query/explain", dependencies=[Depends(check_csrf)])
def explain_query(page: ConsumerPage, request: Request, posted: FormDep,
                  contracts: ContractsDep, datasets: DatasetsDep, queries: QueriesDep
                  ) -> Response:
    """The dry run: each field's verdict with its reasons, and the cells that would be
    withheld if the query ran now; nothing is released and no quota is used."""
    form, builder = _submitted(posted, page, contracts, datasets)
    try:
        spec = _spec(page, queries, query_body(form, builder), EXPLAIN)
        explained = queries.explain(page.context, spec)
    except BrokerError as exc:
        if not _is_htmx(request):
            raise
        return _answer_page(page, request, contracts, datasets, builder, status=exc.status,
                            error=_refused(exc))
    return _answer_page(page, request, contracts, datasets, builder,
                        explained=_explained(explained))


def _explained(explanation: Explanation) -> dict[str, Any]:
    d, p = explanation.decision, explanation.predicted
    return {"allow": d.allow, "reasons": list(d.reasons),
            "fields": {name: v.value for name, v in sorted(d.fields.items())},
            "field_reasons": d.field_reasons, "k": d.k, "quota_remaining": d.quota_remaining,
            "rules": d.rules, "revision": d.revision,
            "predicted": None if p is None else {"published": p.published,
                                                 "suppressed": dict(sorted(p.suppressed.items()))}}


@router.post("/query/run", dependencies=[Depends(check_csrf)])
def run_query(page: ConsumerPage, request: Request, posted: FormDep, contracts: ContractsDep,
              datasets: DatasetsDep, queries: QueriesDep, answers: AnswersDep) -> Response:
    """Run the query: the answer as a table and a chart, withheld cells named as withheld with
    their reason, the suppressed counts, the policy revision and the receipt."""
    form, builder = _submitted(posted, page, contracts, datasets)
    try:
        spec = _spec(page, queries, query_body(form, builder), AGGREGATE)
        release = queries.aggregate(page.context, spec)
    except BrokerError as exc:
        if not _is_htmx(request):
            raise
        return _answer_page(page, request, contracts, datasets, builder, status=exc.status,
                            error=_refused(exc))
    request.app.state.metrics.cells_withheld(release.suppressed)
    shown = Shown(release=release, dimensions=spec.dimensions,
                  measures=tuple(m.name for m in spec.measures),
                  contract_id=spec.contract_id, purpose=spec.purpose)
    answers.keep(page.context.principal, shown)
    return _answer_page(page, request, contracts, datasets, builder, result=_result(shown))


def _key_label(cell_key: Mapping[str, Any], dimensions: Sequence[str]) -> str:
    if not dimensions:
        return _("All")
    return " / ".join(str(cell_key[d]) if d in cell_key else _("Total") for d in dimensions)


def _result(shown: Shown) -> dict[str, Any]:
    """The answer as the results page shows it, with the chart of its published figures."""
    release = shown.release
    labels = [_key_label(c.key, shown.dimensions) for c in release.cells]
    # Each measure on its own axis: a count beside a sum of millions would be invisible.
    datasets = [{"label": name, "yAxisID": f"y{i}",
                 "data": [c.values.get(name) if c.status is CellStatus.PUBLISHED
                          and c.values is not None else None for c in release.cells]}
                for i, name in enumerate(shown.measures)]
    scales = {f"y{i}": {"type": "linear", "position": "left" if i == 0 else "right",
                        "title": {"display": True, "text": name},
                        "grid": {"drawOnChartArea": i == 0}}
              for i, name in enumerate(shown.measures)}
    chart = {"type": "bar", "data": {"labels": labels, "datasets": datasets},
             "options": {"scales": scales,
                         "plugins": {"title": {"display": True,
                                               "text": _("Published figures by cell")}}}}
    receipt = release.receipt
    return {"shown": shown, "release": release, "chart": chart,
            "published": release.cells_published, "withheld": release.cells_suppressed,
            "suppressed": dict(sorted(release.suppressed.items())),
            "receipt": receipt, "receipt_json": json.dumps(
                {"seq": receipt.seq, "leaf_hash": receipt.leaf_hash} if receipt else {})}


# -- downloads and the receipt ----------------------------------------------------------------

def _labels() -> Labels:
    return Labels(total=_("Total"), withheld=_("Withheld"), status=_("Status"),
                  reason=_("Reason"), published=_("Published"), reasons=withheld_reasons())


def _kept(page: Page, answers: ReleasedAnswers, queries: QueryService, query_id: str) -> Shown:
    """The answer released to this principal under ``query_id``: the same 404 (audited) for
    one that never was, has been forgotten, or was released to someone else."""
    found = answers.find(page.context.principal, query_id)
    queries.record_download(page.context, found.contract_id if found is not None else None)
    if found is None:  # record_download has raised the audited NotFound already
        raise NotFound("No such result.")
    return found


@router.get("/query/results/{query_id}.csv")
def download_csv(page: ConsumerPage, query_id: str, answers: AnswersDep,
                 queries: QueriesDep) -> Response:
    """The published cells of an answer as CSV (UTF-8 with a byte order mark); withheld cells
    marked withheld with their reason."""
    shown = _kept(page, answers, queries, query_id)
    return Response(to_csv(shown, _labels()), media_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": _attachment(query_id, "csv")})


@router.get("/query/results/{query_id}.xlsx")
def download_xlsx(page: ConsumerPage, query_id: str, answers: AnswersDep,
                  queries: QueriesDep) -> Response:
    """The published cells of an answer as an Excel workbook; withheld cells marked withheld
    with their reason."""
    shown = _kept(page, answers, queries, query_id)
    return Response(
        to_xlsx(shown, _labels(), sheet=_("Answer")),
        media_type="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        headers={"Content-Disposition": _attachment(query_id, "xlsx")})


def _attachment(query_id: str, ext: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", query_id)[:64]
    return f'attachment; filename="answer-{safe}.{ext}"'


@router.get("/query/receipts/{seq}")
def receipt(page: ConsumerPage, seq: int, audit: AuditDep) -> Response:
    """A receipt's audit entry with its inclusion proof, and how to check it offline."""
    proof = audit.proof(page.context, seq, None)
    return render(page, "department/receipt.html", proof=proof,
                  key=audit.key(), checked=_checked_at(proof.checkpoint))


@router.get("/query/receipts/{seq}/proof.json")
def receipt_proof(page: ConsumerPage, seq: int, audit: AuditDep) -> Response:
    """The inclusion proof of a receipt, as ``broker audit check`` reads it."""
    proof = audit.proof(page.context, seq, None)
    return Response(json.dumps(proof.as_json(), ensure_ascii=False, indent=1),
                    media_type="application/json",
                    headers={"Content-Disposition": f'attachment; filename="proof-{seq}.json"'})


@router.get("/query/receipts/{seq}/receipt.json")
def receipt_file(page: ConsumerPage, seq: int, audit: AuditDep) -> Response:
    """The receipt itself ({seq, leaf_hash}), for ``broker audit check --receipt``."""
    proof = audit.proof(page.context, seq, None)
    body = json.dumps({"seq": proof.seq, "leaf_hash": proof.leaf_hash})
    return Response(body, media_type="application/json", headers={
        "Content-Disposition": f'attachment; filename="receipt-{seq}.json"'})


@router.get("/query/log.vkey", dependencies=[Depends(require(Role.CONSUMER))])
def log_key(audit: AuditDep) -> Response:
    """The public key that signs the log's checkpoints (``--pubkey`` of the check)."""
    return Response(audit.key().vkey + "\n", media_type="text/plain; charset=utf-8",
                    headers={"Content-Disposition": 'attachment; filename="log.vkey"'})


def _checked_at(note: str) -> str:
    """The first line of a signed checkpoint (the log's origin), for the page."""
    return note.splitlines()[0] if note else ""

