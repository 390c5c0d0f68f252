"""OpenAPI declarations shared by the routers."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from broker.api.deps import get_principal
from broker.api.problems import PROBLEM_JSON, ProblemOut
from broker.domain.errors import InvalidInput


def problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """Document ``statuses`` as problem+json responses."""
    text = {
        401: "Missing, malformed, expired or forged bearer token",
        403: "Role or policy does not permit this; `reasons` says why",
        404: "Not found, or not visible to the caller",
        409: "The object's state does not allow this",
        413: "Body or file over the limit",
        422: "Invalid input",
        429: "Over the caller's rate limit or in-flight cap; retry after `Retry-After` seconds",
        503: "A dependency failed; nothing was released",
    }
    declared: dict[int | str, dict[str, Any]] = {
        s: {"model": ProblemOut, "description": text[s], "content": {PROBLEM_JSON: {}}}
        for s in statuses
    }
    if 429 in declared:
        declared[429]["headers"] = {"Retry-After": {
            "description": "Seconds to wait before trying again",
            "schema": {"type": "integer", "minimum": 1}}}
    return declared


AUTHENTICATED = problems(401, 403, 422, 429, 503)


def _query_names(dependant: Dependant) -> set[str]:
    """The query parameters an operation takes, its dependencies' included."""
    names = {p.alias for p in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return names


def _needs_token(dependant: Dependant) -> bool:
    """Whether an operation authenticates its caller (depends on ``get_principal``)."""
    return dependant.call is get_principal or any(_needs_token(sub)
                                                   for sub in dependant.dependencies)


async def refuse_unknown_query(request: Request) -> None:
    """Refuse query parameters the operation does not declare (a router dependency).

    A filter misspelt (``?dataset=`` for ``?dataset_id=``) would otherwise be ignored and the
    answer silently cover more than was asked for. The names are the client's text and are
    not echoed."""
    route = request.scope.get("route")
    if not isinstance(route, APIRoute):
        return
    if getattr(request.state, "principal", None) is None and _needs_token(route.dependant):
        return  # the caller is not authenticated: the operation answers 401 first
    declared = _query_names(route.dependant)
    unknown = set(request.query_params) - declared
    if unknown:
        raise InvalidInput(f"The request has {len(unknown)} query parameter(s) this operation "
                           "does not take.")
