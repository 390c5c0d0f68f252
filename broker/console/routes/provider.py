"""The provider's pages: my datasets (upload, new versions, consented slices), contracts
(offer, sign, suspend, resume, revoke; the signed terms and their ODRL export) and the uses
of my data, each with its receipt.

Every page calls the same use cases as the API with the logged-in principal's context:
another organisation's dataset, contract or audit entry is the services' audited 404. Uploads
go through the API's streaming receiver (``broker.services.uploads``) under the same limit,
and a dataset whose file or declaration is refused leaves nothing stored.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import partial
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Depends, Query, Request
from pydantic import TypeAdapter, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response

from audit.entry import format_ts
from broker.console.deps import AuditDep, ContractsDep, DatasetsDep, OrgsDep, SettingsDep
from broker.console.i18n import _
from broker.console.web import (
    ConsoleRoute,
    Page,
    ProviderPage,
    TrailPage,
    UserDep,
    check_csrf,
    redirect,
    render,
)
from broker.domain.errors import BrokerError, InvalidInput
from broker.domain.organisations import OrgKind
from broker.domain.ports import AuditQuery
from broker.domain.principals import Role
from broker.services.audit import Access, AuditService
from broker.services.contracts import ContractService, ContractView
from broker.services.datasets import DatasetService, DatasetView, FileData
from broker.services.orgs import OrgService
from broker.services.provider_inputs import ContractIn, Signature, SliceIn, parse_dataset_meta
from broker.services.uploads import Upload, UploadRules, multipart_boundary, receive_multipart
from broker.settings import Settings
from contracts.model import ContractStatus, FieldForm
from contracts.odrl import to_odrl

router = APIRouter(route_class=ConsoleRoute, include_in_schema=False)


#: The declaration the upload form starts from: a valid one, to be edited.
META_SKELETON = {
    "name": "my-dataset",
    "entity_field": "uscc",
    "fields": [
        {"name": "uscc", "type": "string", "role": "entity", "sensitivity": "L2",
         "format": "uscc"},
        {"name": "town", "type": "string", "role": "dimension", "sensitivity": "L1"},
        {"name": "output", "type": "number", "role": "measure", "sensitivity": "L2",
         "scale": 2},
    ],
}
#: Accesses per page of "uses of my data", and how many the timeline counts at most.
USES_PAGE = 50
TIMELINE_LIMIT = 5000
#: How many entries one read of the log asks for while a purpose filter is applied.
SCAN_BATCH = 500
#: Series colours of the timeline (WCAG AA against white), in order.
PALETTE = ("#0b5cad", "#a4161a", "#1e6b34", "#7a4a00", "#5b2a86", "#00626f", "#6b3e26",
           "#3d4a5c")
FORMS = [form.value for form in FieldForm]
SIGNATURE: TypeAdapter[str] = TypeAdapter(Signature)


# -- shared ---------------------------------------------------------------------------------


def _me(page: Page) -> str:
    assert page.principal is not None  # noqa: S101 - the page dependencies guarantee it
    return page.principal.org


def _is_htmx(request: Request) -> bool:
    return request.headers.get("hx-request") == "true"


def _go(page: Page, request: Request, path: str) -> Response:
    """After a change: HTMX is told to load ``path``; a plain form post is redirected."""
    if _is_htmx(request):
        return Response(status_code=200, headers={"HX-Redirect": f"/console{path}"})
    return redirect(page, path)


def _rules(settings: Settings, datasets: DatasetService) -> UploadRules:
    """The API's upload rules: the same scratch directory, limit and formats."""
    return UploadRules(settings.uploads_dir, settings.max_upload_bytes, datasets.formats())


async def _receive(request: Request, rules: UploadRules, *, meta: bool) -> Upload[Any]:
    """The upload form's body, streamed by the API's receiver; the hidden ``csrf`` field is
    accepted beside the file (the token was checked from the header before)."""
    boundary = multipart_boundary(request.headers.get("content-type"))
    if boundary is None:
        raise HTTPException(415, "Send the upload as multipart/form-data.")
    try:
        return await receive_multipart(
            request.stream(), boundary, request.headers.get("content-length"), rules,
            parse_meta=parse_dataset_meta if meta else None, extra=("csrf",))
    except ClientDisconnect as exc:
        raise InvalidInput("The client went away before the upload was complete.") from exc


@dataclass(frozen=True, slots=True)
class Failure:
    """A refused form, as the form shows it: the status, what went wrong and the details
    the service named (problems per column, invalid places, fields), never a value."""

    status: int
    detail: str
    problems: list[dict[str, Any]]
    errors: list[dict[str, str]]
    named: dict[str, list[str]]

    @classmethod
    def of(cls, exc: BrokerError) -> Failure:
        """What ``exc`` says, for the form."""
        ext = exc.extensions
        problems = [dict(p) for p in ext.get("problems", ())]
        errors = [{"loc": ".".join(str(x) for x in e.get("loc", ())), "msg": str(e.get("msg"))}
                  for e in ext.get("errors", ())]
        named = {key: [str(v) for v in value] for key, value in ext.items()
                 if key in ("fields", "purposes", "reasons", "formats", "sources")
                 and isinstance(value, list)}
        return cls(exc.status, exc.detail, problems, errors, named)

    @classmethod
    def invalid(cls, exc: ValidationError) -> Failure:
        """A form that does not match the request body it stands for."""
        errors = [{"loc": ".".join(str(x) for x in e["loc"]), "msg": e["msg"]}
                  for e in exc.errors()]
        return cls(422, _("A field of the form is missing or not valid."), [], errors, {})


def _own(views: Sequence[DatasetView], org: str) -> list[DatasetView]:
    return [v for v in views if v.dataset.owner_org == org]


# -- my datasets -----------------------------------------------------------------------------


@router.get("/datasets")
def list_datasets(page: ProviderPage, datasets: DatasetsDep) -> Response:
    """My datasets: name, version, rows and fields."""
    mine = _own(datasets.list(page.context), _me(page))
    return render(page, "provider/datasets.html", datasets=mine)


@router.get("/datasets/new")
def new_dataset(page: ProviderPage, datasets: DatasetsDep, settings: SettingsDep) -> Response:
    """The upload form of a new dataset: a file and its declaration."""
    return render(page, "provider/dataset_new.html", meta=json.dumps(META_SKELETON, indent=2),
                  formats=datasets.formats(), limit=settings.max_upload_bytes, failure=None)


@router.post("/datasets/new", dependencies=[Depends(check_csrf)])
async def upload_dataset(page: ProviderPage, request: Request, datasets: DatasetsDep,
                         settings: SettingsDep) -> Response:
    """Register a dataset from the form: the file is checked against its declaration and
    stored as version 1, or refused with its problems and nothing stored."""
    ctx = page.context
    await run_in_threadpool(datasets.authorize_register, ctx)  # before a byte is read
    try:
        upload = await _receive(request, _rules(settings, datasets), meta=True)
        with upload:
            meta = upload.meta
            view = await run_in_threadpool(partial(
                datasets.register, ctx, name=meta.name, entity_field=meta.entity_field,
                fields=[f.to_domain() for f in meta.fields],
                data=FileData(upload.path, upload.file_format)))
    except BrokerError as exc:
        if exc.status not in (409, 413, 422):
            raise
        return _upload_refused(page, request, Failure.of(exc))
    return _go(page, request, f"/datasets/{view.dataset.id}?uploaded=1")


def _upload_refused(page: Page, request: Request, failure: Failure) -> Response:
    """The upload's result region with what went wrong (the whole page without HTMX)."""
    if _is_htmx(request):  # swapped into the form's result region despite the status
        return render(page, "provider/_refused.html", status=failure.status, failure=failure,
                      headers={"X-Console-Fragment": "1"})
    return render(page, "provider/refused.html", status=failure.status, failure=failure)


@router.get("/datasets/{dataset_id:uuid}")
def show_dataset(page: ProviderPage, dataset_id: UUID, datasets: DatasetsDep,
                 settings: SettingsDep, uploaded: bool = False) -> Response:
    """One of my datasets: its fields, versions and slices, and a form for a new version."""
    ctx = page.context
    view = datasets.get(ctx, str(dataset_id))
    if view.dataset.owner_org != _me(page):
        # Visible (say, through a contract) but not mine: this page is the owner's.
        datasets.authorize_version(ctx, str(dataset_id))
    return render(page, "provider/dataset.html", view=view, dataset=view.dataset,
                  versions=list(reversed(datasets.versions(ctx, str(dataset_id)))),
                  slices=datasets.slices(ctx, str(dataset_id)), formats=datasets.formats(),
                  limit=settings.max_upload_bytes, uploaded=uploaded)


@router.post("/datasets/{dataset_id:uuid}/versions", dependencies=[Depends(check_csrf)])
async def upload_version(page: ProviderPage, dataset_id: UUID, request: Request,
                         datasets: DatasetsDep, settings: SettingsDep) -> Response:
    """Store a new version of one of my datasets (same declaration), or show why not."""
    ctx = page.context
    await run_in_threadpool(datasets.authorize_version, ctx, str(dataset_id))
    try:
        upload = await _receive(request, _rules(settings, datasets), meta=False)
        with upload:
            await run_in_threadpool(datasets.add_version, ctx, str(dataset_id),
                                    FileData(upload.path, upload.file_format))
    except BrokerError as exc:
        if exc.status not in (409, 413, 422):
            raise
        return _upload_refused(page, request, Failure.of(exc))
    return _go(page, request, f"/datasets/{dataset_id}?uploaded=1")


# -- slices ------------------------------------------------------------------------------------


def _slice_form(page: Page, view: DatasetView, values: Mapping[str, Any],
                failure: Failure | None) -> Response:
    return render(page, "provider/slice_new.html", status=failure.status if failure else 200,
                  view=view, dataset=view.dataset, values=values, failure=failure)


def _owned_view(datasets: DatasetService, page: Page, dataset_id: str) -> DatasetView:
    """One of my datasets (another's is the service's audited 404)."""
    datasets.authorize_version(page.context, dataset_id)
    return datasets.get(page.context, dataset_id)


@router.get("/datasets/{dataset_id:uuid}/slices/new")
def new_slice(page: ProviderPage, dataset_id: UUID, datasets: DatasetsDep) -> Response:
    """The form publishing a consented slice of one of my datasets."""
    view = _owned_view(datasets, page, str(dataset_id))
    return _slice_form(page, view, {"predicate": "[]", "fields": []}, None)


def _utc(value: str) -> str:
    """A ``datetime-local`` value (read as UTC) as RFC 3339; other text as it is."""
    value = value.strip()
    if len(value) == 16 and value[10] == "T":  # 2026-01-05T08:00
        return value + ":00Z"
    if len(value) == 19 and value[10] == "T":  # with seconds
        return value + "Z"
    return value


@router.post("/datasets/{dataset_id:uuid}/slices", dependencies=[Depends(check_csrf)])
async def publish_slice(page: ProviderPage, dataset_id: UUID, request: Request,
                        datasets: DatasetsDep) -> Response:
    """Publish a consented slice: the fields and rows consented to, and the consent record."""
    ctx = page.context
    form = await request.form()
    values: dict[str, Any] = {"name": _text(form, "name"), "fields": form.getlist("fields"),
              "predicate": _text(form, "predicate") or "[]",
              "given_by": _text(form, "given_by"), "given_at": _text(form, "given_at"),
              "scope": _text(form, "scope"), "reference": _text(form, "reference")}

    async def again(failure: Failure) -> Response:
        view = await run_in_threadpool(_owned_view, datasets, page, str(dataset_id))
        return await run_in_threadpool(_slice_form, page, view, values, failure)

    try:
        predicate = json.loads(values["predicate"])
    except ValueError:
        return await again(Failure(422, _("The row predicate is not valid JSON."), [], [], {}))
    body = {"name": values["name"], "fields": values["fields"], "predicate": predicate,
            "consent": {"given_by": values["given_by"], "given_at": _utc(values["given_at"]),
                        "scope": values["scope"], "reference": values["reference"] or None}}
    try:
        item = SliceIn.model_validate(body)
        await run_in_threadpool(partial(
            datasets.publish_slice, ctx, str(dataset_id), name=item.name, fields=item.fields,
            predicate=[f.to_domain() for f in item.predicate], consent=item.consent_domain()))
    except ValidationError as exc:
        return await again(Failure.invalid(exc))
    except InvalidInput as exc:
        return await again(Failure.of(exc))
    return redirect(page, f"/datasets/{dataset_id}")


def _text(form: FormData, name: str) -> str:
    value = form.get(name)
    return value if isinstance(value, str) else ""


# -- contracts ---------------------------------------------------------------------------------


@router.get("/contracts")
def list_contracts(page: UserDep, contracts: ContractsDep) -> Response:
    """The contracts my organisation is a party to, by side: offered by us (provider) and
    offered to us (department), each with its state."""
    me = _me(page)
    found = list(contracts.list(page.context))
    return render(page, "provider/contracts.html",
                  offered=[v for v in found if v.contract.provider_org == me],
                  received=[v for v in found if v.contract.consumer_org == me],
                  provider=page.has(Role.PROVIDER), consumer=page.has(Role.CONSUMER),
                  labels=_status_labels())


def _status_labels() -> dict[str, str]:
    return {ContractStatus.OFFERED.value: _("offered"), ContractStatus.ACTIVE.value: _("active"),
            ContractStatus.SUSPENDED.value: _("suspended"),
            ContractStatus.REVOKED.value: _("revoked"), ContractStatus.EXPIRED.value: _("expired")}


def _departments(page: Page, orgs: OrgService) -> list[tuple[str, str]]:
    return [(o.id, o.name) for o in orgs.list(page.context) if o.kind is OrgKind.DEPARTMENT]


def _offer_form(page: Page, *, datasets: DatasetService, contracts: ContractService,
                orgs: OrgService, dataset_id: str | None, values: Mapping[str, Any],
                failure: Failure | None) -> Response:
    ctx = page.context
    mine = _own(datasets.list(ctx), _me(page))
    chosen = next((v for v in mine if v.dataset.id == dataset_id), None)
    slices = datasets.slices(ctx, chosen.dataset.id) if chosen is not None else []
    return render(page, "provider/offer.html", status=failure.status if failure else 200,
                  mine=mine, chosen=chosen, slices=slices, departments=_departments(page, orgs),
                  purposes=sorted(contracts.purposes or ()), forms=FORMS, values=values,
                  failure=failure)


def _default_offer() -> dict[str, Any]:
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    return {"k_min": "5", "dominance_n": "2", "dominance_k": "85", "dominance_p": "0",
            "valid_from": now.strftime("%Y-%m-%dT%H:%M"),
            "valid_until": (now + timedelta(days=365)).strftime("%Y-%m-%dT%H:%M"),
            "max_queries_per_day": "100", "result_retention_days": "30", "purposes": [],
            "fields": {}, "consumer_org": "", "slice_id": "", "linkable": False}


@router.get("/contracts/offer")
def offer_form(page: ProviderPage, datasets: DatasetsDep, contracts: ContractsDep,
               orgs: OrgsDep,
               dataset_id: Annotated[UUID | None, Query()] = None) -> Response:
    """The form offering a contract over one of my datasets to a department."""
    return _offer_form(page, datasets=datasets, contracts=contracts, orgs=orgs,
                       dataset_id=str(dataset_id) if dataset_id else None,
                       values=_default_offer(), failure=None)


def _number(value: str, kind: type[int] | type[float]) -> Any:
    """A form's number as the API's strict field wants it (text that is not one stays text,
    so the check names its place)."""
    try:
        return kind(value)
    except ValueError:
        return value


@router.post("/contracts/offer", dependencies=[Depends(check_csrf)])
async def offer_contract(page: ProviderPage, request: Request, datasets: DatasetsDep,
                         contracts: ContractsDep, orgs: OrgsDep) -> Response:
    """Offer the terms of the form, checked as the API's ``POST /v1/contracts`` is; the form
    again with what is wrong, or the new contract."""
    form = await request.form()
    dataset_id = _text(form, "dataset_id")
    chosen = {key[len("form_"):]: value for key, value in form.multi_items()
              if key.startswith("form_") and isinstance(value, str) and value}
    values: dict[str, Any] = {key: _text(form, key) for key in (
        "consumer_org", "k_min", "dominance_n", "dominance_k", "dominance_p", "valid_from",
        "valid_until", "max_queries_per_day", "result_retention_days", "slice_id")}
    values.update(purposes=form.getlist("purposes"), fields=chosen,
                  linkable=_text(form, "linkable") == "on")
    body = {
        "dataset_id": dataset_id, "consumer_org": values["consumer_org"],
        "purposes": values["purposes"], "fields": chosen,
        "k_min": _number(values["k_min"], int),
        "dominance": {"n": _number(values["dominance_n"], int),
                      "k": _number(values["dominance_k"], float),
                      "p": _number(values["dominance_p"] or "0", float)},
        "valid_from": _utc(values["valid_from"]), "valid_until": _utc(values["valid_until"]),
        "max_queries_per_day": _number(values["max_queries_per_day"], int),
        "result_retention_days": _number(values["result_retention_days"], int),
        "slice_id": values["slice_id"] or None, "linkable": values["linkable"],
    }
    again = partial(_offer_form, page, datasets=datasets, contracts=contracts, orgs=orgs,
                    dataset_id=dataset_id, values=values)
    try:
        offer = ContractIn.model_validate(body)
        view = await run_in_threadpool(partial(contracts.offer, page.context, offer.to_domain(),
                                               consumer_org=offer.consumer_org))
    except ValidationError as exc:
        return await run_in_threadpool(partial(again, failure=Failure.invalid(exc)))
    except BrokerError as exc:
        if exc.status not in (409, 422):
            raise
        return await run_in_threadpool(partial(again, failure=Failure.of(exc)))
    return redirect(page, f"/contracts/{view.contract.id}")


@router.get("/contracts/{contract_id:uuid}")
def show_contract(page: UserDep, request: Request, contract_id: UUID, contracts: ContractsDep,
                  settings: SettingsDep) -> Response:
    """One contract: its state, signatures, the signed terms and their ODRL export, and (to
    its provider) what can be done with it."""
    ctx = page.context
    view, consented = contracts.with_slice(ctx, str(contract_id))
    terms = contracts.terms(ctx, str(contract_id))
    odrl = to_odrl(view.contract, base_iri=settings.public_url or str(request.base_url),
                   slice_fields=consented.fields if consented is not None else None)
    mine = page.has(Role.PROVIDER) and view.contract.provider_org == _me(page)
    return render(page, "provider/contract.html", view=view, contract=view.contract,
                  state=view.status.value, labels=_status_labels(), consented=consented,
                  terms=json.dumps(terms.model_dump(mode="json"), indent=2, ensure_ascii=False),
                  canonical=terms.canonical().decode("utf-8"), sha256=_sha256(terms.canonical()),
                  odrl=json.dumps(odrl, indent=2, ensure_ascii=False), mine=mine,
                  actions=_actions(view) if mine else [])


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _actions(view: ContractView) -> list[str]:
    """What the provider may do with the contract in its state."""
    return {ContractStatus.OFFERED: ["revoke"],
            ContractStatus.ACTIVE: ["suspend", "revoke"],
            ContractStatus.SUSPENDED: ["resume", "revoke"]}.get(view.status, [])


@router.post("/contracts/{contract_id:uuid}/suspend", dependencies=[Depends(check_csrf)])
def suspend_contract(page: ProviderPage, contract_id: UUID, contracts: ContractsDep
                     ) -> Response:
    """Pause an active contract over my data."""
    contracts.suspend(page.context, str(contract_id))
    return redirect(page, f"/contracts/{contract_id}")


@router.post("/contracts/{contract_id:uuid}/resume", dependencies=[Depends(check_csrf)])
def resume_contract(page: ProviderPage, contract_id: UUID, contracts: ContractsDep
                    ) -> Response:
    """Lift a suspension."""
    contracts.resume(page.context, str(contract_id))
    return redirect(page, f"/contracts/{contract_id}")


@router.post("/contracts/{contract_id:uuid}/revoke", dependencies=[Depends(check_csrf)])
def revoke_contract(page: ProviderPage, contract_id: UUID, contracts: ContractsDep
                    ) -> Response:
    """Revoke a contract over my data; effective for the next request."""
    contracts.revoke(page.context, str(contract_id))
    return redirect(page, f"/contracts/{contract_id}")


@router.post("/contracts/{contract_id:uuid}/sign", dependencies=[Depends(check_csrf)])
async def sign_contract(page: ProviderPage, contract_id: UUID, request: Request,
                        contracts: ContractsDep) -> Response:
    """Attach the offer signature made outside the broker (``broker contracts sign``)."""
    form = await request.form()
    signature = _text(form, "signature").strip()
    try:
        SIGNATURE.validate_python(signature)
    except ValidationError as exc:
        raise InvalidInput("The signature is not a base64 Ed25519 signature.") from exc
    await run_in_threadpool(contracts.sign, page.context, str(contract_id), signature)
    return redirect(page, f"/contracts/{contract_id}")


# -- uses of my data --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UsesFilter:
    """The filters of "uses of my data", as the form gives them."""

    consumer: str = ""
    purpose: str = ""
    decision: str = ""
    since: str = ""
    until: str = ""
    by: str = "consumer"

    def query(self, after: int, limit: int) -> AuditQuery:
        """The audit query for these filters (the purpose is matched on the entries read)."""
        return AuditQuery(
            org=self.consumer or None,
            allowed=None if not self.decision else self.decision == "allow",
            since=_day(self.since), until=_day(self.until, next_day=True),
            about_datasets=True, after_seq=after, limit=limit)

    def params(self) -> dict[str, str]:
        """The filters as query parameters (for paging links)."""
        return {"consumer": self.consumer, "purpose": self.purpose,
                "decision": self.decision, "since": self.since, "until": self.until,
                "by": self.by}


def _day(value: str, *, next_day: bool = False) -> str | None:
    if not value:
        return None
    try:
        day = date.fromisoformat(value)
    except ValueError as exc:
        raise InvalidInput("Dates are YYYY-MM-DD.") from exc
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    return format_ts(start + timedelta(days=1) if next_day else start)


def _scan(audit: AuditService, page: Page, filters: UsesFilter, after: int,
          want: int) -> tuple[list[Access], int | None]:
    """Up to ``want`` accesses matching ``filters`` after ``after``, and the cursor of the
    rest (None at the end). Without a purpose filter one read of the log answers; with one,
    reads go on (each audited) until ``want`` match or the log ends."""
    found: list[Access] = []
    cursor: int | None = after
    while cursor is not None and len(found) < want:
        batch = audit.accesses(page.context, filters.query(
            cursor, want - len(found) if not filters.purpose else SCAN_BATCH))
        for item in batch.items:
            if filters.purpose and item.purpose != filters.purpose:
                continue
            found.append(item)
            if len(found) == want:
                return found, (item.seq if batch.next_cursor is not None
                               or item is not batch.items[-1] else None)
        cursor = batch.next_cursor
    return found, None


def _timeline(accesses: Sequence[Access], by: str) -> tuple[list[str], dict[str, list[int]]]:
    """Accesses per day (UTC), one series per consumer organisation or per decision."""
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for a in accesses:
        key = (a.who.org or "-") if by == "consumer" else ("allow" if a.allowed else "deny")
        counts[key][a.ts[:10]] += 1
    days = sorted({d for c in counts.values() for d in c})
    return days, {k: [counts[k][d] for d in days] for k in sorted(counts)}


def _chart(days: list[str], series: Mapping[str, list[int]], labels: Mapping[str, str]
           ) -> dict[str, Any]:
    """The Chart.js configuration of the timeline: stacked bars per day."""
    return {
        "type": "bar",
        "data": {"labels": days, "datasets": [
            {"label": labels.get(name, name), "data": values,
             "backgroundColor": PALETTE[i % len(PALETTE)]}
            for i, (name, values) in enumerate(series.items())]},
        "options": {"scales": {"x": {"stacked": True},
                               "y": {"stacked": True, "beginAtZero": True,
                                     "ticks": {"precision": 0}}},
                    "plugins": {"legend": {"position": "bottom"}}},
    }


@router.get("/uses")
def uses(page: TrailPage, audit: AuditDep, datasets: DatasetsDep,
         consumer: Annotated[str, Query(max_length=64)] = "",
         purpose: Annotated[str, Query(max_length=64)] = "",
         decision: Annotated[str, Query(pattern=r"^(|allow|deny)$")] = "",
         since: Annotated[str, Query(max_length=10)] = "",
         until: Annotated[str, Query(max_length=10)] = "",
         by: Annotated[str, Query(pattern=r"^(consumer|decision)$")] = "consumer",
         cursor: Annotated[int, Query(ge=0, le=2**53)] = 0) -> Response:
    """Every access to my datasets: a table with filters and paging, a timeline per day by
    consumer or by decision (with the same figures as a table), and each access's receipt (the
    audit entry's page, with its inclusion proof)."""
    filters = UsesFilter(consumer, purpose, decision, since, until, by)
    rows, next_cursor = _scan(audit, page, filters, cursor, USES_PAGE)
    everything, more = _scan(audit, page, filters, 0, TIMELINE_LIMIT)
    days, series = _timeline(everything, by)
    decisions = {"allow": _("allowed"), "deny": _("denied")}
    names = {v.dataset.id: v.dataset.name for v in datasets.list(page.context)}
    return render(page, "provider/uses.html", rows=rows, next_cursor=next_cursor,
                  cursor=cursor, filters=filters, params=filters.params(), names=names,
                  days=days, series=series, decisions=decisions,
                  chart=_chart(days, series, decisions if by == "decision" else {}),
                  truncated=more is not None, timeline_limit=TIMELINE_LIMIT,
                  consumers=sorted({a.who.org for a in everything if a.who.org}),
                  purposes=sorted({a.purpose for a in everything if a.purpose}))
