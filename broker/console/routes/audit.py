"""The auditor's pages: the log with filters and paging, one entry with its inclusion proof,
"verify now", the signed checkpoints and their outside copies, and charts of denials.

Every page calls the audit use cases with the logged-in principal's context, as
``/v1/audit/...`` does: the entry page serves a provider an entry about its own datasets and
answers 404 (audited) for any other, exactly as ``/v1/audit/entries/{seq}/proof``.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Depends, Path, Query
from starlette.responses import Response

from audit.entry import encode, format_ts
from audit.proofs import InclusionProof
from broker.console.deps import AuditDep
from broker.console.i18n import _
from broker.console.web import (
    AuditorPage,
    ConsoleRoute,
    Page,
    TrailPage,
    check_csrf,
    render,
    require,
)
from broker.domain.errors import InvalidInput, NotFound, PolicyDenied
from broker.domain.ports import AuditQuery
from broker.domain.principals import Role
from broker.services.audit import AuditItem, AuditService, Denials

router = APIRouter(route_class=ConsoleRoute, include_in_schema=False)


#: Entries per page of the log.
PAGE_SIZE = 50
#: Checkpoints per page.
CHECKPOINTS_PAGE = 20
#: The denial charts' window (days back from today, UTC) and the most entries they count.
CHART_DAYS = 30
CHART_CAP = 5000

ACTION = re.compile(r"^[a-z]+\.[a-z_]+$")
Text = Annotated[str, Query(max_length=256)]
Cursor = Annotated[str, Query(max_length=18, pattern=r"^[0-9]*$")]


def _day(value: str, field: str) -> date | None:
    if not value:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError as exc:
        raise InvalidInput(f"{field} is not a date (YYYY-MM-DD).", fields=[field]) from exc


def _midnight(day: date) -> str:
    return format_ts(datetime(day.year, day.month, day.day, tzinfo=UTC))


def audit_query(actor: Text = "", org: Text = "", dataset_id: Text = "", action: Text = "",
                decision: Text = "", since: Text = "", until: Text = "",
                cursor: Cursor = "",
                limit: Annotated[int, Query(ge=1, le=500)] = PAGE_SIZE) -> AuditQuery:
    """The filters of the log page as the use case takes them (``until`` is a whole day: up to
    the next midnight, UTC)."""
    if dataset_id:
        try:
            dataset_id = str(UUID(dataset_id))
        except ValueError as exc:
            raise InvalidInput("dataset_id is not a dataset id.", fields=["dataset_id"]) from exc
    if action and not ACTION.fullmatch(action):
        raise InvalidInput("action is not an action name, e.g. query.aggregate.",
                           fields=["action"])
    if decision not in ("", "allow", "deny"):
        raise InvalidInput("decision is allow or deny.", fields=["decision"])
    first, last = _day(since, "since"), _day(until, "until")
    return AuditQuery(
        actor=actor or None, org=org or None, dataset_ids=[dataset_id] if dataset_id else None,
        action=action or None,
        since=_midnight(first) if first else None,
        until=_midnight(last + timedelta(days=1)) if last else None,
        allowed=None if not decision else decision == "allow",
        after_seq=int(cursor) if cursor else 0, limit=limit)


QueryDep = Annotated[AuditQuery, Depends(audit_query)]


def row(item: AuditItem) -> dict[str, Any]:
    """What the log table shows of an entry: never more than the entry holds (no values)."""
    entry = item.entry
    actor = entry.get("actor") or {}
    resource = entry.get("resource") or {}
    decision = entry.get("decision") or {}
    disclosure = entry.get("disclosure")
    return {
        "seq": item.seq,
        "ts": entry.get("ts"),
        "sub": actor.get("sub"),
        "org": actor.get("org"),
        "roles": actor.get("roles") or [],
        "action": entry.get("action"),
        "resource": {k: _text(v) for k, v in resource.items()
                     if v is not None and k != "sources"},
        "sources": resource.get("sources") if isinstance(resource.get("sources"), list) else [],
        "purpose": entry.get("purpose"),
        "allowed": bool(decision.get("allowed")),
        "reasons": decision.get("reasons") or [],
        "disclosure": ({k: v if isinstance(v, int | float) and not isinstance(v, bool)
                        else _text(v) for k, v in disclosure.items() if v is not None}
                       if isinstance(disclosure, dict) else {}),
    }


def labels() -> dict[str, str]:
    """Names of an entry's resource and disclosure keys, translated."""
    return {"dataset_id": _("Dataset"), "version": _("Version"), "contract_id": _("Contract"),
            "fields": _("Fields"), "k": _("k (fewest entities per cell)"),
            "cells_published": _("Cells published"), "cells_suppressed": _("Cells withheld"),
            "result_digest": _("Result digest")}


def _text(value: object) -> str:
    """A value of an entry's resource or disclosure as one line of text."""
    if isinstance(value, list):
        return ", ".join(_text(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, ensure_ascii=False, sort_keys=True)
    return str(value)


@router.get("/audit")
def audit_log(page: AuditorPage, audit: AuditDep, query: QueryDep,
              actor: Text = "", org: Text = "", dataset_id: Text = "", action: Text = "",
              decision: Text = "", since: Text = "", until: Text = "") -> Response:
    """The audit log, oldest first, with filters and a cursor to the next page."""
    found = audit.entries(page.context, query)
    filters: dict[str, object] = {
        "actor": actor, "org": org, "dataset_id": dataset_id, "action": action,
        "decision": decision, "since": since, "until": until,
        "limit": query.limit if query.limit != PAGE_SIZE else None}
    next_url = (page.url("/audit", **filters, cursor=found.next_cursor)
                if found.next_cursor is not None else None)
    first_url = page.url("/audit", **filters) if query.after_seq else None
    return render(page, "audit/log.html", rows=[row(i) for i in found.items],
                  filters=filters, next_url=next_url, first_url=first_url,
                  page_size=query.limit, labels=labels())


Seq = Annotated[int, Path(ge=1, le=2**53)]


def prove(page: Page, audit: AuditService, seq: int) -> InclusionProof:
    """The inclusion proof of entry ``seq`` for the page's principal. An entry the principal
    may not see (another organisation's, or none) is answered as absent: the use case has
    already put the refusal on the record, and the page tells no more than that there is no
    such entry for this principal."""
    try:
        return audit.proof(page.context, seq, None)
    except PolicyDenied as exc:
        raise NotFound("No such audit entry.") from exc


@router.get("/audit/entries/{seq}")
def audit_entry(page: TrailPage, audit: AuditDep, seq: Seq) -> Response:
    """One entry in full (its canonical JSON) with its inclusion proof against the latest
    signed checkpoint, and how to check it offline."""
    proof = prove(page, audit, seq)
    assert proof.entry is not None  # noqa: S101 - the use case proves a stored entry
    return render(page, "audit/entry.html", proof=proof,
                  item=row(AuditItem(entry=proof.entry, leaf_hash=proof.leaf_hash)),
                  canonical=encode(proof.entry).decode(), key=audit.key(), labels=labels(),
                  document=json.dumps(proof.as_json(), indent=2, ensure_ascii=False))


@router.get("/audit/entries/{seq}/proof.json")
def audit_entry_proof(page: TrailPage, audit: AuditDep, seq: Seq) -> Response:
    """The entry's inclusion proof as the document ``broker audit check`` reads."""
    proof = prove(page, audit, seq)
    return Response(json.dumps(proof.as_json(), indent=2, ensure_ascii=False),
                    media_type="application/json", headers={
                        "Content-Disposition": f'attachment; filename="audit-proof-{seq}.json"'})


@router.get("/audit/key.txt", dependencies=[Depends(require(Role.AUDITOR, Role.PROVIDER))])
def audit_key(audit: AuditDep) -> Response:
    """The verifier key string that checks checkpoints' signatures (``--pubkey``)."""
    return Response(audit.key().vkey + "\n", media_type="text/plain", headers={
        "Content-Disposition": 'attachment; filename="audit-key.vkey"'})


@router.get("/audit/verify")
def verify_page(page: AuditorPage) -> Response:
    """The "verify now" page."""
    return render(page, "audit/verify.html", result=None)


@router.post("/audit/verify", dependencies=[Depends(check_csrf)])
def verify_now(page: AuditorPage, audit: AuditDep) -> Response:
    """Verify the whole log now: every leaf, the chain, the root at every signed checkpoint
    (stored and outside); the result, and the first fault if any (a fragment for HTMX)."""
    result = audit.verify(page.context)
    template = ("audit/verify_result.html" if page.request.headers.get("hx-request")
                else "audit/verify.html")
    return render(page, template, result=result, checked_at=datetime.now(UTC))


@router.get("/audit/checkpoints")
def checkpoints(page: AuditorPage, audit: AuditDep, before: Cursor = "") -> Response:
    """Signed checkpoints, newest first, with their copies outside the database and the
    public key that checks them."""
    found = audit.checkpoints(page.context, before=int(before) if before else None,
                              limit=CHECKPOINTS_PAGE)
    copies = audit.outside_copies(page.context, [c.size for c in found.items])
    by_size: dict[int, list[dict[str, Any]]] = {}
    for checkpoint in found.items:
        by_size[checkpoint.size] = [
            {"name": c.name, "same": c.root == checkpoint.root}
            for c in copies if c.size == checkpoint.size]
    unverified = [c.name for c in copies if not c.verifies]
    next_url = (page.url("/audit/checkpoints", before=found.next_cursor)
                if found.next_cursor is not None else None)
    return render(page, "audit/checkpoints.html", checkpoints=found.items, copies=by_size,
                  unverified=unverified, key=audit.key(),
                  next_url=next_url)


def chart(kind: str, days: list[str], series: dict[str, dict[str, int]],
          title: str) -> dict[str, Any]:
    """A stacked bar chart per day of ``days`` (every day of the window, so that time runs
    evenly along the axis), one dataset per series (Chart.js config)."""
    return {
        "type": kind,
        "data": {"labels": days, "datasets": [
            {"label": name, "data": [counts.get(d, 0) for d in days]}
            for name, counts in sorted(series.items())]},
        "options": {"plugins": {"title": {"display": True, "text": title}},
                    "scales": {"x": {"stacked": True},
                               "y": {"stacked": True, "beginAtZero": True,
                                     "ticks": {"precision": 0}}}},
    }


def series(counts: dict[tuple[str, str], int]) -> dict[str, dict[str, int]]:
    """``{(day, name): n}`` as ``{name: {day: n}}``."""
    out: dict[str, dict[str, int]] = {}
    for (day, name), n in counts.items():
        out.setdefault(name, {})[day] = n
    return out


@router.get("/audit/charts")
def denial_charts(page: AuditorPage, audit: AuditDep) -> Response:
    """Denials per day over the last ``CHART_DAYS`` days, by reason and by organisation; each
    chart with the same figures as a table."""
    today = datetime.now(UTC).date()
    first = today - timedelta(days=CHART_DAYS - 1)
    found: Denials = audit.denials(page.context, since=_midnight(first), cap=CHART_CAP)
    days = found.days
    window = [(first + timedelta(days=n)).isoformat() for n in range(CHART_DAYS)]
    by_reason, by_org = series(found.by_reason), series(found.by_org)
    return render(
        page, "audit/charts.html", denials=found, days=days, first=first, last=today,
        window=CHART_DAYS, by_reason=by_reason, by_org=by_org,
        reason_chart=chart("bar", window, by_reason, _("Denials by reason")),
        org_chart=chart("bar", window, by_org, _("Denials by organisation")))
