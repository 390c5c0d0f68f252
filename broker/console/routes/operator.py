"""The operator's pages: the organisations and their keys (and registering one, as
``POST /v1/orgs``), and how the broker is (policy revision, database, policy engine, the
audit checkpointer), as ``/readyz`` and the metrics report it, with no secret."""

from __future__ import annotations

import base64
import binascii
import hashlib
from typing import Annotated

from fastapi import APIRouter, Depends, Form
from starlette.responses import Response

from broker.console.deps import HealthDep, OrgsDep
from broker.console.routes.home import kinds
from broker.console.web import AdminPage, ConsoleRoute, check_csrf, redirect, render
from broker.domain.organisations import OrgKind

router = APIRouter(route_class=ConsoleRoute, include_in_schema=False)



def fingerprint(public_key: str | None) -> str | None:
    """An Ed25519 public key's fingerprint: SHA-256 of its 32 raw bytes, as OpenSSH writes it
    (``SHA256:`` and unpadded base64); None without a key."""
    if not public_key:
        return None
    try:
        raw = base64.b64decode(public_key, validate=True)
    except (binascii.Error, ValueError):
        return "?"
    digest = base64.b64encode(hashlib.sha256(raw).digest()).decode().rstrip("=")
    return f"SHA256:{digest}"


@router.get("/operator")
def organisations(page: AdminPage, orgs: OrgsDep, registered: str = "") -> Response:
    """The registered organisations with their kind, USCC and key fingerprint, and the form
    to register another."""
    found = sorted(orgs.list(page.context), key=lambda o: o.id)
    rows = [{"org": o, "fingerprint": fingerprint(o.public_key)} for o in found]
    return render(page, "operator/orgs.html", rows=rows, kinds=kinds(),
                  registered=registered if any(o.id == registered for o in found) else "")


@router.post("/operator/orgs", dependencies=[Depends(check_csrf)])
def register(page: AdminPage, orgs: OrgsDep,
             org_id: Annotated[str, Form(min_length=2, max_length=63)],
             name: Annotated[str, Form(min_length=1, max_length=200)],
             kind: Annotated[OrgKind, Form()],
             uscc: Annotated[str, Form(max_length=18)] = "",
             public_key: Annotated[str, Form(max_length=4096)] = "") -> Response:
    """Register an organisation (as ``POST /v1/orgs``), then back to the list."""
    org = orgs.register(page.context, org_id=org_id.strip(), name=name.strip(), kind=kind,
                        uscc=uscc.strip() or None, public_key=public_key.strip() or None)
    return redirect(page, f"/operator?registered={org.id}")


@router.get("/operator/health")
def health(page: AdminPage, service_: HealthDep) -> Response:
    """The policy revision, whether the database and the policy engine answer, the engine's
    kind and the audit checkpointer's lag."""
    return render(page, "operator/health.html", health=service_.report())
