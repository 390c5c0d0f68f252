"""RFC 9457 ``application/problem+json`` for every error the API can answer with."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from broker.domain import errors

PROBLEM_JSON = "application/problem+json"

HTTP_SLUGS = {
    400: ("bad-request", "Bad request"),
    401: ("unauthenticated", "Authentication required"),
    403: ("forbidden", "Forbidden"),
    404: ("not-found", "Not found"),
    405: ("method-not-allowed", "Method not allowed"),
    413: ("payload-too-large", "Payload too large"),
    415: ("unsupported-media-type", "Unsupported media type"),
}


#: The most items any list in a problem holds (field errors, dataset problems, names, ...). A
#: request can be made to have as many faults as it has parts; the document answering it stays
#: small, and ``omitted`` says how many items of each capped list were left out.
PROBLEM_LIST_LIMIT = 100


def cap_lists(extensions: dict[str, Any]) -> dict[str, Any]:
    """``extensions`` with every list cut to ``PROBLEM_LIST_LIMIT`` items and, when any was
    cut, ``omitted``: list name -> how many items were left out."""
    capped: dict[str, Any] = {}
    omitted: dict[str, int] = {}
    for key, value in extensions.items():
        if isinstance(value, list | tuple) and len(value) > PROBLEM_LIST_LIMIT:
            omitted[key] = len(value) - PROBLEM_LIST_LIMIT
            value = list(value[:PROBLEM_LIST_LIMIT])
        capped[key] = value
    if omitted:
        capped["omitted"] = omitted
    return capped


class ProblemOut(BaseModel):
    """An RFC 9457 problem; ``type`` is a stable slug, extensions follow per problem."""

    model_config = ConfigDict(extra="allow")

    type: str
    title: str
    status: int
    detail: str
    instance: str | None = None
    request_id: str | None = None
    reasons: list[str] | None = None
    omitted: dict[str, int] | None = Field(
        default=None, description="Per list member: how many items were left out of it (every "
        f"list holds at most {PROBLEM_LIST_LIMIT}).")


def problem(
    request: Request,
    status: int,
    slug: str,
    title: str,
    detail: str,
    extensions: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """Render one problem response; lists in ``extensions`` are capped (``cap_lists``)."""
    body = cap_lists(extensions or {})  # the RFC 9457 members below always win
    body |= {
        "type": slug,
        "title": title,
        "status": status,
        "detail": detail,
        "instance": request.url.path,
        "request_id": getattr(request.state, "request_id", None),
    }
    if status == 401:
        headers = {**(headers or {}), "WWW-Authenticate": 'Bearer realm="broker"'}
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def status_of(exc: errors.BrokerError) -> int:
    """HTTP status for a domain error: the nearest class in the tree that has one."""
    return type(exc).status


def _on_broker_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, errors.BrokerError)  # noqa: S101 - registered for this class only
    return problem(request, status_of(exc), exc.slug, exc.title, exc.detail, exc.extensions)


log = logging.getLogger(__name__)

#: The query routes whose refused bodies are audited, with the action each records.
AUDITED_QUERIES = {"/v1/queries/aggregate": "query.aggregate",
                   "/v1/queries/crosscheck": "query.crosscheck",
                   "/v1/policy/explain": "policy.explain"}


def _on_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)  # noqa: S101
    documented = _documented_methods(request)
    if documented is not None and request.method not in documented:
        # GET /v1/datasets/import reaches GET /v1/datasets/{dataset_id} and fails there as no
        # valid id; but the path is another operation's, which does not take the method.
        return _on_http_error(request, StarletteHTTPException(405, "Method Not Allowed"))
    action = AUDITED_QUERIES.get(request.url.path)
    ctx = getattr(request.state, "context", None)
    if action is not None and ctx is not None and request.method == "POST":
        # An authenticated caller's malformed query is a refused query: on the record.
        try:
            request.app.state.container.queries.record_invalid(ctx, action)
        except Exception:  # the refusal stands; the store's failure is logged
            log.exception("could not audit a refused query")
    # Only where and what: pydantic's "input" and "ctx" would echo the submitted values.
    issues = [
        {"loc": [str(p) for p in e.get("loc", ())], "msg": e.get("msg"), "type": e.get("type")}
        for e in exc.errors()
    ]
    return problem(request, 422, "invalid-input", "Invalid input",
                   "The request does not match the API schema.", {"errors": issues})


HTTP_METHODS = ("DELETE", "GET", "HEAD", "PATCH", "POST", "PUT")


def _allowed_methods(request: Request) -> str:
    """Every method some route serves at this path (Starlette names only the first route's).

    A path the API names literally (``/v1/datasets/import``) is that path's alone: a route
    with a parameter in its place (``GET /v1/datasets/{dataset_id}``) matches it too, but only
    to refuse it as no valid id, so its methods are not advertised there."""
    methods = [
        method
        for method in HTTP_METHODS
        if any(route.matches({**request.scope, "method": method})[0] is Match.FULL
               for route in request.app.router.routes)
    ]
    documented = _documented_methods(request)
    if documented is not None:
        methods = [m for m in methods if m in documented]
    return ", ".join(methods)


def _documented_methods(request: Request) -> set[str] | None:
    """The methods the API documents at this very path when an operation names it literally
    (not through a parameter), else None."""
    documented = request.app.openapi().get("paths", {}).get(request.url.path)
    if documented is None:
        return None
    return {m.upper() for m in documented} | ({"HEAD"} if "get" in documented else set())


def _on_http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)  # noqa: S101
    if exc.status_code == 400:
        # FastAPI's one 400: a body it could not parse (not UTF-8, or not JSON at all). It is
        # invalid input like any other, and answered as the 422 every operation declares.
        return problem(request, 422, "invalid-input", "Invalid input",
                       "The request body is not JSON in UTF-8.")
    slug, title = HTTP_SLUGS.get(exc.status_code, ("http-error", "HTTP error"))
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        headers["Allow"] = _allowed_methods(request)
    return problem(request, exc.status_code, slug, title, str(exc.detail), headers=headers)


def install(app: FastAPI) -> None:
    """Register the problem handlers on ``app``."""
    app.add_exception_handler(errors.BrokerError, _on_broker_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
