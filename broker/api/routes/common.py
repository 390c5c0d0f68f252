"""OpenAPI declarations shared by the routers."""

from __future__ import annotations

from typing import Any

from broker.api.problems import PROBLEM_JSON, ProblemOut


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
